// The host tier: its block slots (HostArena; none in a metadata-only store), its room, its eviction
// candidates (the policy's queue of the tree's unpinned leaves), its counters and its residency, and per
// slot its holders and its payload's checksum. A slot is held by the host tree, by a queued disk write
// (which may outlive the host block: demotion) and by copies running outside the store lock (holds); it
// goes back to the arena when the last holder lets go. It implements the tier interface (tiers/tier.h):
// the coordinator (Store) decides what is stored and evicted and calls these under the store lock, except
// copy_in, which an insert runs with the lock released on the slots it reserved.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/common.h"
#include "core/policy.h"
#include "core/residency.h"
#include "core/tree.h"
#include "tiers/host.h"
#include "tiers/tier.h"

namespace kvtier {

struct TierStats {
  std::uint64_t hits = 0;           // blocks matched
  std::uint64_t misses = 0;         // full blocks asked for and not matched
  std::uint64_t inserted = 0;       // blocks stored
  std::uint64_t evicted = 0;        // blocks removed to make room or by evict()
  std::uint64_t expired = 0;        // blocks removed because their TTL ran out
  std::uint64_t bytes_written = 0;  // payload bytes copied in
  std::uint64_t bytes_read = 0;     // payload bytes copied out
  std::uint64_t resident_bytes = 0;
  std::uint64_t capacity_bytes = 0; // 0 = unlimited
  std::uint64_t blocks = 0;
  // The coordinator's part (Store::stats): the tree and the accounts.
  std::uint64_t pinned_blocks = 0;
  std::uint64_t nodes = 0;
  std::uint64_t accounts = 0;       // residency accounts (namespace, session) tracked now (accounts.h)
  std::uint64_t namespaces = 0;     // namespaces registered and not retired
};

class HostTier {
 public:
  // ---- the tier interface's types (tier.h) ----
  using Reserve = std::uint64_t;  // blocks
  struct Ticket {
    std::vector<std::uint32_t> slots;  // taken from the arena (none in a metadata-only store)
    std::uint64_t blocks = 0;
  };
  struct CopyIn {
    const Ticket* ticket;
    Memory src;     // the ticket's blocks, in order
    bool checksum;  // keep each slot's checksum (the disk tier writes it to the index record)
    Mover* mover;   // for a source in GPU memory
  };
  struct CopyOut {
    const std::uint32_t* slots;  // host slots, in order
    std::size_t n;
    Memory dst;                  // block 0 of the destination
    std::vector<Run>* runs;      // appended
  };
  struct Commit {
    Ticket* ticket;                     // emptied
    std::vector<std::uint32_t>* slots;  // receives the ticket's slots (the node's payload); unused without an arena
    bool payload_written;  // the ticket's slots were copied into (not: a device insert left them dirty)
    std::uint32_t account;              // charged from `now` on
    double now;
  };

  // `capacity_blocks`: 0 = unlimited. `tree` is the coordinator's; `policy` orders its leaves for eviction.
  HostTier(RadixTree& tree, Policy policy, std::uint64_t capacity_blocks, std::uint64_t block_bytes)
      : candidates_(policy, tree), capacity_blocks_(capacity_blocks), block_bytes_(block_bytes) {}
  HostTier(const HostTier&) = delete;
  HostTier& operator=(const HostTier&) = delete;

  // Allocates `slots` payload slots (throws as HostArena does); `checksums`: keep each slot's checksum
  // (the disk tier writes it to the index record).
  void open_arena(std::size_t slots, bool checksums) {
    arena_ = std::make_unique<HostArena>(slots, block_bytes_);
    refs_.assign(slots, 0);
    if (checksums) crc_.assign(slots, 0);
  }
  // The slots; nullptr in a metadata-only store or once closed.
  HostArena* arena() const { return arena_.get(); }
  void close() { arena_.reset(); }

  // ---- room (blocks) ----
  Room room() const { return {capacity_blocks_, used_, reserved_}; }
  // Room and slots for `blocks` an insert copies, until it commits or unreserves. Precondition: the arena
  // has that many free slots (the coordinator evicted first).
  Ticket reserve(std::uint64_t blocks) {
    Ticket t;
    t.blocks = blocks;
    if (arena_) take_slots(t);
    reserved_ += blocks;
    return t;
  }
  // Gives the reservation back (a failed copy).
  void unreserve(Ticket& t) { unreserve_front(t, t.blocks); }
  // Gives back the first `k` blocks of the reservation (another thread stored them meanwhile).
  void unreserve_front(Ticket& t, std::uint64_t k);
  // `blocks` of `account` left the tree at `now` (evicted, expired, cleared); the coordinator unrefs their
  // slots (or passes them to the disk's write queue).
  void dropped(std::uint32_t account, std::uint64_t blocks, double now) {
    used_ -= blocks;
    ledger_.change(account, -static_cast<std::int64_t>(blocks * block_bytes_), now);
  }

  // ---- copies ----
  // The payload into the ticket's slots (and their checksums). Runs with the store lock released for a
  // host source: it touches only the ticket's slots.
  void copy_in(const CopyIn& in);
  // Plans the copies of `n` slots to `dst`, counted as read.
  void copy_out(const CopyOut& out) {
    for (std::size_t i = 0; i < out.n; ++i)
      add_block_out(*out.runs, out.dst.at(i, block_bytes_), addr(arena_->slot_ptr(out.slots[i])), block_bytes_);
    stats_.bytes_read += out.n * block_bytes_;
  }
  // The reserved blocks are stored: their slots get their first holder (the tree), their bytes are charged.
  void commit(const Commit& c) {
    Ticket& t = *c.ticket;
    const std::uint64_t blocks = t.blocks;
    if (!t.slots.empty()) {
      std::uint32_t* refs = refs_.data();  // a local: the loop's stores cannot move the vector
      for (const std::uint32_t* s = t.slots.data(), *e = s + t.slots.size(); s != e; ++s) refs[*s] = 1;
      *c.slots = std::move(t.slots);
    }
    used_ += blocks;
    reserved_ -= blocks;
    stats_.inserted += blocks;
    if (arena_ && c.payload_written) stats_.bytes_written += blocks * block_bytes_;
    ledger_.change(c.account, static_cast<std::int64_t>(blocks * block_bytes_), c.now);
    t.slots.clear();
    t.blocks = 0;
  }
  // The one reserved block goes to a queued disk write instead of the tree (an insert's block that the host
  // tier cannot keep, spilled to the disk): its slot gets the write as first holder; nothing is stored or
  // charged here. Returns the slot.
  std::uint32_t hand_over(Ticket& t) {
    KVTIER_ASSERT(t.blocks == 1 && t.slots.size() == 1);
    const std::uint32_t slot = t.slots[0];
    own(slot);
    reserved_ -= 1;
    stats_.bytes_written += block_bytes_;
    t = Ticket{};
    return slot;
  }
  // `slots` were written from elsewhere (a device write-back): their checksums are computed again, when
  // the tier keeps them.
  void resum(const std::vector<std::uint32_t>& slots);
  // `slots` as Memory (one host run per block, addresses kept in `addrs`), a copy's source or destination.
  Memory slot_memory(const std::vector<std::uint32_t>& slots, std::vector<std::uint64_t>& addrs) const {
    addrs.resize(slots.size());
    for (std::size_t i = 0; i < slots.size(); ++i) addrs[i] = addr(arena_->slot_ptr(slots[i]));
    return Memory{nullptr, -1, addrs.data(), 1};
  }

  // ---- eviction candidates ----
  // The coordinator keeps the queue equal to the set of unpinned, non-empty leaves (Store::refresh_candidate);
  // the queue orders them by the host policy.
  EvictionQueue& candidates() { return candidates_; }
  const EvictionQueue& candidates() const { return candidates_; }
  std::uint32_t coldest() const { return candidates_.empty() ? kNil : candidates_.top(); }

  // ---- stats and residency ----
  TierStats& counters() { return stats_; }  // the coordinator counts hits, misses, evictions, expiries
  TierStats stats() const {
    TierStats s = stats_;
    s.blocks = used_;
    s.resident_bytes = used_ * block_bytes_;
    s.capacity_bytes = capacity_blocks_ * block_bytes_;
    return s;
  }
  TierLedger& residency() { return ledger_; }
  const TierLedger& residency() const { return ledger_; }

  // ---- slot holders ----
  // A slot taken from the arena gets its first holder.
  void own(std::uint32_t slot) { refs_[slot] = 1; }
  void ref(std::uint32_t slot) { ++refs_[slot]; }
  // Drops one holder; the last one gives the slot back to the arena.
  void unref(std::uint32_t slot) {
    KVTIER_ASSERT(refs_[slot] > 0);
    if (--refs_[slot] == 0) arena_->give_back(slot);
  }
  std::uint32_t refs(std::uint32_t slot) const { return refs_[slot]; }
  std::uint32_t& checksum(std::uint32_t slot) { return crc_[slot]; }  // block_checksum of its payload

 private:
  void take_slots(Ticket& t);

  std::unique_ptr<HostArena> arena_;
  EvictionQueue candidates_;
  std::uint64_t capacity_blocks_;
  std::uint64_t block_bytes_;
  std::uint64_t used_ = 0;                 // blocks in the host tree
  std::uint64_t reserved_ = 0;             // blocks reserved by inserts not yet committed
  TierStats stats_;
  TierLedger ledger_;
  std::vector<std::uint32_t> refs_;        // holders of each slot
  std::vector<std::uint32_t> crc_;         // per slot, with a disk tier
};

static_assert(TierObject<HostTier>);

}  // namespace kvtier
