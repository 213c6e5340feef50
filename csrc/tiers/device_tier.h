// The device tier: its GPU block slots (DeviceArena), the LRU list of the tree nodes on it (coldest first),
// how many blocks are on it and how many of those are dirty (the device holds their only copy), and its
// counters. Residency is per tree node: the list links and a node's device slots live in its NodePayload
// (tree.h), which this tier owns the device fields of. It implements the tier interface (tiers/tier.h):
// the coordinator (Store) decides what goes up and what comes down and calls these under the store lock
// (copies that touch GPU memory run under it); the tier does the copies and charges its residency.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/common.h"
#include "core/tree.h"
#include "tiers/device.h"
#include "tiers/tier.h"

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
  // ---- the tier interface's types (tier.h) ----
  using Reserve = std::uint64_t;              // blocks
  using Ticket = std::vector<std::uint32_t>;  // GPU slots, one per block
  struct CopyIn {
    const Ticket* ticket;
    Memory src;    // the ticket's blocks, in order: host memory (a host tier's slots, slot_memory) or GPU memory
    Mover* mover;
  };
  struct CopyOut {
    const std::vector<std::uint32_t>* dslots;  // a node's GPU slots
    std::size_t n;                             // its first n blocks
    Memory dst;                                // block 0 of the destination
    std::vector<Run>* runs;                    // appended (run on this tier's device)
    bool load;                                 // counted as hits (not: a write-back, counted by cleaned)
  };
  struct Commit {
    std::uint32_t node;  // the tree node the blocks are now part of
    Ticket* ticket;      // emptied
    bool dirty;          // the node's host slots are stale
    bool promoted;       // copied up from the host tier (not: inserted from GPU memory)
    std::uint64_t op;    // the operation placing it (its LRU stamp)
    std::uint32_t account;
    double now;
  };

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

  // ---- room (blocks) ----
  // Reserved: slots taken by reserve() and not yet committed.
  Room room() const {
    if (!arena_) return {0, used_, 0};
    return {arena_->slots(), used_, arena_->slots() - arena_->free_slots() - used_};
  }
  // Takes `blocks` GPU slots. Precondition: that many are free (the coordinator evicted first).
  Ticket reserve(std::uint64_t blocks) {
    Ticket t(blocks);
    for (auto& d : t) d = arena_->take();
    return t;
  }
  void unreserve(Ticket& t) {
    for (std::uint32_t d : t) arena_->give_back(d);
    t.clear();
  }

  // ---- copies (on the device's stream, complete on return) ----
  void copy_in(const CopyIn& in);
  void copy_out(const CopyOut& out);
  // The ticket's slots become node `c.node`'s device copies, charged to its account.
  void commit(const Commit& c);

  // ---- the LRU list (coldest first): eviction candidates ----
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
  // Node `id`'s dirty blocks were copied down to its host slots.
  void cleaned(std::uint32_t id) {
    NodePayload& p = *tree_.at(id).payload;
    p.dirty = false;
    dirty_ -= p.slots.size();
    stats_.written_back += p.slots.size();
    stats_.bytes_read += p.slots.size() * block_bytes_;
  }
  // Takes node `id` off the device at `now` (its slots freed, dirty blocks dropped, its residency ended).
  // Returns its blocks.
  std::uint64_t evict(std::uint32_t id, double now) {
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
    ledger_.change(tree_.at(id).account, -static_cast<std::int64_t>(nb * block_bytes_), now);
    return nb;
  }
  DeviceStats stats() const;
  TierLedger& residency() { return ledger_; }
  const TierLedger& residency() const { return ledger_; }
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
  TierLedger ledger_;
  std::uint32_t head_ = kNil;  // coldest
  std::uint32_t tail_ = kNil;  // warmest
  std::uint64_t used_ = 0;     // device blocks in use
  std::uint64_t dirty_ = 0;    // of those, dirty
};

static_assert(TierObject<DeviceTier>);

}  // namespace kvtier
