// The remote tier's half in the core: the blocks the host tier evicted (a store without a disk tier) that wait
// for the remote tier's writer, each holding its host slot until the writer has copied it. The server is the
// tier's index and its I/O (Redis) runs in Python (kvtier.tiers.remote), so this is all the core keeps: a
// bounded queue, the batch the writer has taken, counters, and the residency of the blocks waiting (host memory
// held for the remote tier; the Python tier charges them again once the server acknowledged them). It is a tier
// object behind the interface of tiers/tier.h; the coordinator (Store, store/remote.cpp) drives it under the
// store lock. Nothing here locks, waits or copies a payload.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <vector>

#include "core/common.h"
#include "core/keys.h"
#include "core/residency.h"
#include "tiers/host.h"
#include "tiers/tier.h"

namespace kvtier {

// One evicted block: whose it is (namespace key, account and its session), its chained key, its place in its
// prompt (the server's bounds drop a prompt's tail first) and the host slot holding its payload.
struct Demoted {
  Key ns;
  Key key;
  std::uint32_t account = 0;
  std::string session;
  std::uint32_t position = 0;
  std::uint32_t slot = kNil;
};

struct RemoteDemotionStats {
  std::uint64_t demoted = 0;   // evicted blocks handed to the writer
  std::uint64_t rejected = 0;  // evicted while the queue was full: dropped without reaching the server
  std::uint64_t pending = 0;   // queued or being copied now
};

class RemoteDemotions {
 public:
  // ---- the tier interface's types (tier.h) ----
  struct Reserve {  // room for one evicted block of `account`, charged from `now`
    std::uint32_t account;
    double now;
  };
  struct Ticket {
    bool granted = false;  // false: the queue is full (the block is not demoted; counted as rejected)
    std::uint32_t account = 0;
    double at = 0.0;
  };
  struct CopyIn {  // queue the block: its host slot's hold passes to the queue
    Ticket ticket;
    Demoted block;
  };
  struct CopyOut {  // the writer's next batch: the blocks and their payloads (valid until commit)
    std::size_t max_blocks;
    const HostArena* arena;
    std::vector<Demoted>* blocks;
    std::vector<const std::uint8_t*>* payloads;
  };
  struct Commit {  // the writer copied the batch: each slot goes back, residency ends at `now`
    double now;
    std::function<void(std::uint32_t)> release;
  };

  RemoteDemotions(std::uint32_t limit, std::uint64_t block_bytes) : limit_(limit), block_bytes_(block_bytes) {}
  RemoteDemotions(const RemoteDemotions&) = delete;
  RemoteDemotions& operator=(const RemoteDemotions&) = delete;

  // ---- room (blocks): used = queued or taken by the writer; the arena has `limit` slots beyond the host's ----
  Room room() const { return {limit_, queue_.size() + batch_.size(), reserved_}; }
  Ticket reserve(const Reserve& r) {
    if (room().free() == 0) {
      ++stats_.rejected;
      return {};
    }
    ++reserved_;
    ledger_.change(r.account, static_cast<std::int64_t>(block_bytes_), r.now);
    return {true, r.account, r.now};
  }
  void unreserve(Ticket& t) {
    if (!t.granted) return;
    --reserved_;
    ledger_.change(t.account, -static_cast<std::int64_t>(block_bytes_), t.at);
    t.granted = false;
  }

  // ---- copies ----
  void copy_in(const CopyIn& in) {
    KVTIER_ASSERT(in.ticket.granted && reserved_ > 0);
    --reserved_;
    queue_.push_back(in.block);
    ++stats_.demoted;
  }
  // Hands out at most max_blocks queued blocks (none while a batch is out); their slots stay held until commit.
  void copy_out(const CopyOut& out) {
    if (!batch_.empty()) return;
    while (!queue_.empty() && batch_.size() < out.max_blocks) {
      batch_.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    for (const Demoted& d : batch_) {
      out.blocks->push_back(d);
      out.payloads->push_back(out.arena->slot_ptr(d.slot));
    }
  }
  void commit(const Commit& c) {
    for (const Demoted& d : batch_) {
      c.release(d.slot);
      ledger_.change(d.account, -static_cast<std::int64_t>(block_bytes_), c.now);
    }
    batch_.clear();
  }
  bool has_work() const { return !queue_.empty() && batch_.empty(); }
  bool batch_open() const { return !batch_.empty(); }
  // The store closes: what is queued is dropped (the facade's close took it out first), `release(slot)` each.
  void clear(double now, const std::function<void(std::uint32_t)>& release) {
    for (const Demoted& d : queue_) {
      release(d.slot);
      ledger_.change(d.account, -static_cast<std::int64_t>(block_bytes_), now);
    }
    queue_.clear();
  }

  // ---- eviction candidates: none; the server evicts its own blocks (TTL, bounds, maxmemory) ----
  std::uint32_t coldest() const { return kNil; }

  // ---- stats and residency ----
  RemoteDemotionStats stats() const {
    RemoteDemotionStats s = stats_;
    s.pending = queue_.size() + batch_.size();
    return s;
  }
  TierLedger& residency() { return ledger_; }
  const TierLedger& residency() const { return ledger_; }
  template <class F>
  void for_each_block(F&& f) const {
    for (const Demoted& d : queue_) f(d);
    for (const Demoted& d : batch_) f(d);
  }

 private:
  std::uint32_t limit_;
  std::uint64_t block_bytes_;
  std::uint64_t reserved_ = 0;
  std::deque<Demoted> queue_;
  std::vector<Demoted> batch_;
  RemoteDemotionStats stats_;
  TierLedger ledger_;
};

static_assert(TierObject<RemoteDemotions>);

}  // namespace kvtier
