// The remote tier's state in the core: the blocks the host tier evicted (a store without a disk tier) that wait
// for the remote tier's writer, each holding its host slot until the writer has copied it. The server is the
// tier's index and its I/O (Redis) runs in Python (kvtier.tiers.remote), so this is all the core keeps: a
// bounded queue, the batch the writer has taken, and counters. The coordinator (Store) queues and hands out
// under the store lock; nothing here locks, waits or touches a payload.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "core/common.h"
#include "core/keys.h"

namespace kvtier {

// One evicted block: whose it is (namespace key, session), its chained key, its place in its prompt (the
// server's bounds drop a prompt's tail first) and the host slot holding its payload.
struct Demoted {
  Key ns;
  Key key;
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
  explicit RemoteDemotions(std::uint32_t limit) : limit_(limit) {}
  RemoteDemotions(const RemoteDemotions&) = delete;
  RemoteDemotions& operator=(const RemoteDemotions&) = delete;

  // Whether another block fits (the arena has `limit` slots beyond the host tier's capacity for them).
  bool room() const { return queue_.size() + batch_.size() < limit_; }
  void push(Demoted d) {
    queue_.push_back(std::move(d));
    ++stats_.demoted;
  }
  void reject() { ++stats_.rejected; }
  bool has_work() const { return !queue_.empty() && batch_.empty(); }
  bool batch_open() const { return !batch_.empty(); }

  // Hands out at most `max_blocks` queued blocks; their slots stay held until finish().
  const std::vector<Demoted>& take(std::size_t max_blocks) {
    KVTIER_ASSERT(batch_.empty());
    while (!queue_.empty() && batch_.size() < max_blocks) {
      batch_.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    return batch_;
  }
  // Ends the batch: `release(slot)` gives each block's slot back.
  template <class Release>
  void finish(Release&& release) {
    for (const Demoted& d : batch_) release(d.slot);
    batch_.clear();
  }
  // Drops everything queued (the store closes): `release(slot)` for each.
  template <class Release>
  void clear(Release&& release) {
    for (const Demoted& d : queue_) release(d.slot);
    queue_.clear();
  }
  template <class F>
  void for_each_slot(F&& f) const {
    for (const Demoted& d : queue_) f(d.slot);
    for (const Demoted& d : batch_) f(d.slot);
  }
  RemoteDemotionStats stats() const {
    RemoteDemotionStats s = stats_;
    s.pending = queue_.size() + batch_.size();
    return s;
  }

 private:
  std::uint32_t limit_;
  std::deque<Demoted> queue_;
  std::vector<Demoted> batch_;
  RemoteDemotionStats stats_;
};

}  // namespace kvtier
