// The disk tier's in-memory index: one entry per block stored (or being stored) in the disk folder.
//
// Disk blocks are found by chained key (keys.h), not by tokens: a lookup that runs past the host
// tree computes the next block's key and looks it up here. Entries know their parent by key, so a
// block's children are counted whether the parent arrived before or after them (write-back demotes
// leaves first; a restart reads entries in any order). Eviction is leaf-first: only an entry with no
// child on disk is a candidate, so a parent never leaves the disk before its children.
//
//   state    kPending: queued for the writer (payload still in a host slot, readable)
//            kWriting: taken by the writer, not yet committed
//            kCommitted: durable in the folder
//            kRemoved: gone from lookups, kept only while a pin holds it
#pragma once

#include <cstdint>
#include <cstring>
#include <unordered_map>
#include <vector>

#include "core/common.h"
#include "core/keys.h"
#include "core/policy.h"
#include "core/tree.h"

namespace kvtier {

enum class DiskState : std::uint8_t { kFree, kPending, kWriting, kCommitted, kRemoved };

struct DiskEntry {
  Key key{};
  Key parent{};  // all zero for the first block of a prompt
  std::uint32_t ns = 0;
  std::uint32_t account = 0;
  std::uint64_t seq = 0;          // operation sequence of the last touch (LRU order)
  double last_access = 0.0;       // seconds, the store's clock
  std::uint32_t hits = 0;
  std::uint32_t heap_pos = kNil;  // owned by the disk eviction queue
  std::uint32_t pins = 0;
  std::uint32_t num_children = 0; // entries whose parent is this key
  std::uint32_t checksum = 0;     // block_checksum of the payload
  std::uint32_t slot = kNil;      // host slot holding the payload until committed
  DiskState state = DiskState::kFree;
};

struct KeyHash {
  std::size_t operator()(const Key& k) const noexcept {
    std::uint64_t v;
    std::memcpy(&v, k.data(), sizeof v);  // keys are uniformly random already
    return static_cast<std::size_t>(v);
  }
};

class DiskIndex {
 public:
  explicit DiskIndex(Policy policy) : queue_(policy, *this) {}
  DiskIndex(const DiskIndex&) = delete;
  DiskIndex& operator=(const DiskIndex&) = delete;

  DiskEntry& at(std::uint32_t id) { return entries_[id]; }
  const DiskEntry& at(std::uint32_t id) const { return entries_[id]; }

  // The live entry with `key`, or kNil.
  std::uint32_t find(const Key& key) const {
    auto it = by_key_.find(key);
    return it == by_key_.end() ? kNil : it->second;
  }

  // A new entry (state set by the caller, then refresh()). Precondition: find(key) == kNil.
  std::uint32_t add(const Key& key, const Key& parent, std::uint32_t ns, DiskState state) {
    std::uint32_t id;
    if (!free_.empty()) {
      id = free_.back();
      free_.pop_back();
      entries_[id] = DiskEntry{};
    } else {
      KVTIER_ASSERT(entries_.size() < kNil - 1);
      id = static_cast<std::uint32_t>(entries_.size());
      entries_.emplace_back();
    }
    DiskEntry& e = entries_[id];
    e.key = key;
    e.parent = parent;
    e.ns = ns;
    e.state = state;
    by_key_.emplace(key, id);
    auto orphan = orphans_.find(key);
    if (orphan != orphans_.end()) {
      e.num_children = orphan->second;
      orphans_.erase(orphan);
    }
    add_child_count(parent, +1);
    return id;
  }

  // Takes the entry out of lookups. It is freed now, or at its last unpin.
  void remove(std::uint32_t id) {
    DiskEntry& e = entries_[id];
    KVTIER_ASSERT(e.state != DiskState::kFree && e.state != DiskState::kRemoved);
    if (e.heap_pos != kNil) queue_.erase(id);
    by_key_.erase(e.key);
    if (e.num_children > 0) orphans_[e.key] += e.num_children;  // children now wait for a new parent
    e.num_children = 0;
    const Key parent = e.parent;
    if (e.pins > 0) {
      e.state = DiskState::kRemoved;
    } else {
      e.state = DiskState::kFree;
      free_.push_back(id);
    }
    add_child_count(parent, -1);
  }

  void unpin(std::uint32_t id) {
    DiskEntry& e = entries_[id];
    KVTIER_ASSERT(e.pins > 0);
    --e.pins;
    if (e.state == DiskState::kRemoved && e.pins == 0) {
      e.state = DiskState::kFree;
      free_.push_back(id);
      return;
    }
    refresh(id);
  }

  // Keeps the eviction queue equal to the set of committed, unpinned entries without children.
  void refresh(std::uint32_t id) {
    const DiskEntry& e = entries_[id];
    const bool want = e.state == DiskState::kCommitted && e.pins == 0 && e.num_children == 0;
    const bool have = e.heap_pos != kNil;
    if (want && !have)
      queue_.push(id);
    else if (!want && have)
      queue_.erase(id);
  }
  void touched(std::uint32_t id) {
    if (entries_[id].heap_pos != kNil) queue_.update(id);
  }

  BasicEvictionQueue<DiskIndex>& queue() { return queue_; }
  const BasicEvictionQueue<DiskIndex>& queue() const { return queue_; }
  std::size_t live() const { return by_key_.size(); }
  std::size_t slots() const { return entries_.size(); }
  void reserve(std::size_t n) {
    entries_.reserve(n);
    by_key_.reserve(n);
  }

  // Checks the child counts and the queue against a recount (tests). Aborts on violation.
  void check() const {
    std::unordered_map<Key, std::uint32_t, KeyHash> kids;
    std::size_t live = 0, candidates = 0;
    for (const DiskEntry& e : entries_) {
      if (e.state == DiskState::kFree || e.state == DiskState::kRemoved) continue;
      ++live;
      if (!is_zero_key(e.parent)) ++kids[e.parent];
    }
    KVTIER_ASSERT(live == by_key_.size());
    for (std::uint32_t id = 0; id < entries_.size(); ++id) {
      const DiskEntry& e = entries_[id];
      if (e.state == DiskState::kFree || e.state == DiskState::kRemoved) continue;
      KVTIER_ASSERT(find(e.key) == id);
      auto it = kids.find(e.key);
      KVTIER_ASSERT(e.num_children == (it == kids.end() ? 0u : it->second));
      if (it != kids.end()) kids.erase(it);
      const bool want = e.state == DiskState::kCommitted && e.pins == 0 && e.num_children == 0;
      KVTIER_ASSERT(want == (e.heap_pos != kNil));
      candidates += want;
    }
    for (const auto& [key, n] : kids) {
      auto it = orphans_.find(key);
      KVTIER_ASSERT(it != orphans_.end() && it->second == n);
    }
    std::size_t orphan_count = 0;
    for (const auto& kv : orphans_) orphan_count += kv.second > 0;
    KVTIER_ASSERT(orphan_count == kids.size());
    KVTIER_ASSERT(candidates == queue_.size());
  }

 private:
  void add_child_count(const Key& parent, int delta) {
    if (is_zero_key(parent)) return;
    const std::uint32_t p = find(parent);
    if (p != kNil) {
      DiskEntry& pe = entries_[p];
      KVTIER_ASSERT(delta > 0 || pe.num_children > 0);
      pe.num_children += delta;
      refresh(p);
      return;
    }
    auto& n = orphans_[parent];
    KVTIER_ASSERT(delta > 0 || n > 0);
    n += delta;
    if (n == 0) orphans_.erase(parent);
  }

  std::vector<DiskEntry> entries_;
  std::vector<std::uint32_t> free_;
  std::unordered_map<Key, std::uint32_t, KeyHash> by_key_;
  std::unordered_map<Key, std::uint32_t, KeyHash> orphans_;  // parent key not on disk -> children
  BasicEvictionQueue<DiskIndex> queue_;
};

}  // namespace kvtier
