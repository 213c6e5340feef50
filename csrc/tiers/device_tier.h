// The device tier: its GPU block slots (DeviceArena), the LRU list of the tree nodes on it (coldest first),
// how many blocks are on it and how many of those are dirty (the device holds their only copy), and its
// counters. Residency is per tree node: the list links and a node's device slots live in its NodePayload
// (tree.h), which this tier owns the device fields of. The coordinator (Store) decides what goes up and
// what comes down, runs the copies and charges residency; it calls these under the store lock. Nothing
// here locks or copies.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/common.h"
#include "core/tree.h"
#include "tiers/device.h"

namespace kvtier {

struct DeviceStats {
  std::uint64_t hits = 0;           // blocks loaded from the device tier
  std::uint64_t inserted = 0;       // blocks stored from GPU memory straight into the device tier
  std::uint64_t promoted = 0;       // host blocks copied up to the device
  std::uint64_t evicted = 0;        // blocks that left the device (LRU, evict(), or with their host block)
  std::uint64_t written_back = 0;   // device-only blocks copied down to their host slot (demotion, disk)
  std::uint64_t bytes_written = 0;  // payload bytes copied into device slots
  std::uint64_t bytes_read = 0;     // payload bytes copied out of device slots
  std::uint64_t blocks = 0;
  std::uint64_t dirty_blocks = 0;   // blocks whose only copy is on the device
  std::uint64_t resident_bytes = 0;
  std::uint64_t capacity_bytes = 0;
};

class DeviceTier {
 public:
  // `slots` blocks of `block_bytes` on CUDA device `device` (throws as DeviceArena does); `tree` is the
  // coordinator's, whose nodes this tier lists.
  DeviceTier(RadixTree& tree, int device, std::size_t slots, std::size_t block_bytes)
      : tree_(tree), arena_(std::make_unique<DeviceArena>(device, slots, block_bytes)), block_bytes_(block_bytes) {}
  DeviceTier(const DeviceTier&) = delete;
  DeviceTier& operator=(const DeviceTier&) = delete;

  // The slots; nullptr once closed.
  DeviceArena* arena() const { return arena_.get(); }
  // Frees the GPU memory (the caller has waited for every copy). Counters stay readable.
  void close() { arena_.reset(); }

  // ---- the LRU list (coldest first) ----
  std::uint32_t coldest() const { return head_; }
  std::uint32_t warmer(std::uint32_t id) const { return tree_.at(id).payload->dnext; }
  // Links `id` in front of `next` (kNil: at the warm end).
  void link_before(std::uint32_t id, std::uint32_t next) {
    NodePayload& p = *tree_.at(id).payload;
    const std::uint32_t prev = next == kNil ? tail_ : tree_.at(next).payload->dprev;
    p.dprev = prev;
    p.dnext = next;
    (prev == kNil ? head_ : tree_.at(prev).payload->dnext) = id;
    (next == kNil ? tail_ : tree_.at(next).payload->dprev) = id;
  }
  // Node `id`, on the device, was used by operation `op`: it becomes the warmest.
  void touch(std::uint32_t id, std::uint64_t op) {
    tree_.at(id).payload->dstamp = op;
    if (tail_ == id) return;
    unlink(id);
    link_before(id, kNil);
  }

  // ---- accounting ----
  // Node `id` now holds `dslots` (its blocks' device copies); `dirty`: its host slots are stale.
  void place(std::uint32_t id, std::vector<std::uint32_t> dslots, bool dirty, std::uint64_t op) {
    NodePayload& p = *tree_.at(id).payload;
    const std::uint64_t nb = dslots.size();
    p.dslots = std::move(dslots);
    p.dirty = dirty;
    p.dstamp = op;
    link_before(id, kNil);
    used_ += nb;
    if (dirty) dirty_ += nb;
  }
  // Node `id`'s dirty blocks were copied down to its host slots.
  void cleaned(std::uint32_t id) {
    NodePayload& p = *tree_.at(id).payload;
    p.dirty = false;
    dirty_ -= p.slots.size();
    stats_.written_back += p.slots.size();
    stats_.bytes_read += p.slots.size() * block_bytes_;
  }
  // Takes node `id` off the device (its slots freed, dirty blocks dropped). Returns its blocks.
  std::uint64_t evict(std::uint32_t id) {
    NodePayload& p = *tree_.at(id).payload;
    KVTIER_ASSERT(!p.dslots.empty());
    const std::uint64_t nb = p.dslots.size();
    if (p.dirty) {
      dirty_ -= nb;
      p.dirty = false;
    }
    for (std::uint32_t d : p.dslots) arena_->give_back(d);
    p.dslots.clear();
    unlink(id);
    used_ -= nb;
    stats_.evicted += nb;
    return nb;
  }
  DeviceStats& counters() { return stats_; }  // the coordinator counts hits, inserts, promotions, bytes
  DeviceStats stats() const;
  // Aborts unless the list holds exactly the nodes with device slots (`on_device`: their blocks, counted
  // by the coordinator's walk), each slot used once, and the counts agree.
  void check(std::uint64_t on_device) const;

 private:
  void unlink(std::uint32_t id) {
    NodePayload& p = *tree_.at(id).payload;
    (p.dprev == kNil ? head_ : tree_.at(p.dprev).payload->dnext) = p.dnext;
    (p.dnext == kNil ? tail_ : tree_.at(p.dnext).payload->dprev) = p.dprev;
    p.dprev = p.dnext = kNil;
  }

  RadixTree& tree_;
  std::unique_ptr<DeviceArena> arena_;
  std::uint64_t block_bytes_;
  DeviceStats stats_;
  std::uint32_t head_ = kNil;  // coldest
  std::uint32_t tail_ = kNil;  // warmest
  std::uint64_t used_ = 0;     // device blocks in use
  std::uint64_t dirty_ = 0;    // of those, dirty
};

}  // namespace kvtier
