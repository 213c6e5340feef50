// Eviction policies and the queue of eviction candidates.
//
// Candidates are the unpinned leaves of the tree (leaf-first eviction: a parent never leaves before
// its children). They sit in one indexed binary min-heap ordered by the policy's priority:
//   LRU, TTL: (last-touch sequence)          oldest touch first
//   LFU:      (hits, last-touch sequence)    fewest hits first, ties by age
// Touching a node re-keys it in O(log n); nothing is ever rebuilt.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "common.h"
#include "tree.h"

namespace kvtier {

enum class Policy : std::uint8_t { kLRU = 0, kLFU = 1, kTTL = 2 };

struct Priority {
  std::uint64_t major;
  std::uint64_t minor;
  bool operator<(const Priority& o) const { return major != o.major ? major < o.major : minor < o.minor; }
};

// `Item` is anything with `hits` and `seq` (a tree node, a disk-index entry).
template <class Item>
Priority priority_of(Policy p, const Item& n) {
  if (p == Policy::kLFU) return {n.hits, n.seq};
  return {n.seq, 0};
}

// `Table::at(id)` gives an item with `hits`, `seq` and a `heap_pos` this queue owns.
template <class Table>
class BasicEvictionQueue {
 public:
  BasicEvictionQueue(Policy policy, Table& tree) : policy_(policy), tree_(tree) {}

  bool empty() const { return heap_.empty(); }
  std::size_t size() const { return heap_.size(); }
  std::uint32_t top() const { return heap_.front().node; }
  bool contains(std::uint32_t node) const { return tree_.at(node).heap_pos != kNil; }

  void push(std::uint32_t node) {
    KVTIER_ASSERT(!contains(node));
    heap_.push_back({priority_of(policy_, tree_.at(node)), node});
    place(heap_.size() - 1);
    sift_up(heap_.size() - 1);
  }
  void erase(std::uint32_t node) {
    std::size_t i = tree_.at(node).heap_pos;
    KVTIER_ASSERT(i < heap_.size());
    tree_.at(node).heap_pos = kNil;
    if (i + 1 == heap_.size()) {
      heap_.pop_back();
      return;
    }
    heap_[i] = heap_.back();
    heap_.pop_back();
    place(i);
    sift_down(sift_up(i));
  }
  // Re-reads the node's priority after a touch.
  void update(std::uint32_t node) {
    std::size_t i = tree_.at(node).heap_pos;
    KVTIER_ASSERT(i < heap_.size());
    heap_[i].prio = priority_of(policy_, tree_.at(node));
    sift_down(sift_up(i));
  }

 private:
  struct Entry {
    Priority prio;
    std::uint32_t node;
  };
  void place(std::size_t i) { tree_.at(heap_[i].node).heap_pos = static_cast<std::uint32_t>(i); }
  // Hole-based sifts: each moved entry is written once, and only the nodes that move are told.
  std::size_t sift_up(std::size_t i) {
    const Entry e = heap_[i];
    while (i > 0) {
      const std::size_t p = (i - 1) / 2;
      if (!(e.prio < heap_[p].prio)) break;
      heap_[i] = heap_[p];
      place(i);
      i = p;
    }
    heap_[i] = e;
    place(i);
    return i;
  }
  void sift_down(std::size_t i) {
    const std::size_t n = heap_.size();
    const Entry e = heap_[i];
    while (true) {
      const std::size_t l = 2 * i + 1;
      if (l >= n) break;
      const std::size_t r = l + 1;
      const std::size_t m = (r < n && heap_[r].prio < heap_[l].prio) ? r : l;
      if (!(heap_[m].prio < e.prio)) break;
      heap_[i] = heap_[m];
      place(i);
      i = m;
    }
    heap_[i] = e;
    place(i);
  }

  Policy policy_;
  Table& tree_;
  std::vector<Entry> heap_;
};

using EvictionQueue = BasicEvictionQueue<RadixTree>;

}  // namespace kvtier
