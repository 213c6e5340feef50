// Eviction policies and the queue of eviction candidates.
//
// Candidates are the unpinned leaves of the tree (leaf-first eviction: a parent never leaves before
// its children), ordered by the policy's priority:
//   LRU, TTL: (last-touch sequence)          oldest touch first
//   LFU:      (hits, last-touch sequence)    fewest hits first, ties by age
//
// LFU keeps them in an indexed binary min-heap: touching a node re-keys it in O(log n).
// LRU and TTL keep them in touch order. A touch gives a node the newest sequence, so it moves to
// the back of a list in O(1), and a new leaf is pushed there too. A push that comes out of order
// (chiefly a parent that becomes a leaf when its last child leaves: it keeps its older sequence)
// goes to a side heap instead (the same indexed heap, usually near empty). The oldest candidate is
// the older of the list's front and the heap's top:
//
//   list  (non-decreasing seq)   front [12]-[40]-[41]-[57] back    push with seq >= back's: append
//   heap  (the rest)             {20, 33}                          otherwise: heap
//   top = the older of 12 and 20
//
// Nothing is ever rebuilt. A candidate's heap_pos is kInList or its index in the heap. The queue is
// generic over the table it orders (the radix tree's nodes, the disk index's entries): items have
// `seq`, `hits` and a `heap_pos` the queue owns.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "core/common.h"
#include "core/spec.h"
#include "core/tree.h"

namespace kvtier {


// heap_pos of a candidate kept in the touch-order list (LRU, TTL).
inline constexpr std::uint32_t kInList = kNil - 1;

struct Priority {
  std::uint64_t major;
  std::uint64_t minor;
  bool operator<(const Priority& o) const { return major != o.major ? major < o.major : minor < o.minor; }
};

template <class Item>
Priority priority_of(Policy p, const Item& n) {
  if (p == Policy::kLFU) return {n.hits, n.seq};
  return {n.seq, 0};
}

// `Table::at(id)` gives an item with `hits`, `seq` and the `heap_pos` this queue owns.
template <class Table>
class BasicEvictionQueue {
 public:
  BasicEvictionQueue(Policy policy, Table& tree) : policy_(policy), by_touch_(policy != Policy::kLFU), tree_(tree) {}

  bool empty() const { return listed_ == 0 && heap_.empty(); }
  std::size_t size() const { return listed_ + heap_.size(); }
  std::uint32_t top() const {
    if (heap_.empty()) return front_;
    if (listed_ == 0 || heap_.front().prio.major < tree_.at(front_).seq) return heap_.front().node;
    return front_;
  }
  bool contains(std::uint32_t node) const { return tree_.at(node).heap_pos != kNil; }

  void push(std::uint32_t node) {
    KVTIER_ASSERT(!contains(node));
    if (by_touch_ && (listed_ == 0 || tree_.at(node).seq >= tree_.at(back_).seq))
      append(node);
    else
      heap_push(node);
  }
  void erase(std::uint32_t node) {
    const std::uint32_t pos = tree_.at(node).heap_pos;
    if (pos == kInList)
      unlink(node);
    else
      heap_erase(pos);
    tree_.at(node).heap_pos = kNil;
  }
  // Re-reads the node's priority after a touch.
  void update(std::uint32_t node) {
    if (by_touch_) {  // a touch gives the newest sequence: to the back of the list
      erase(node);
      push(node);
      return;
    }
    const std::size_t i = tree_.at(node).heap_pos;
    KVTIER_ASSERT(i < heap_.size());
    heap_[i].prio = priority_of(policy_, tree_.at(node));
    sift_down(sift_up(i));
  }

 private:
  struct Link {
    std::uint32_t prev = kNil;
    std::uint32_t next = kNil;
  };
  struct Entry {
    Priority prio;
    std::uint32_t node;
  };

  // ---- the touch-order list (links_ is indexed by node id: moving a node writes its neighbours'
  // links, not their nodes)
  void append(std::uint32_t node) {
    if (node >= links_.size()) links_.resize(std::max<std::size_t>(node + 1, 2 * links_.size()));
    links_[node] = {back_, kNil};
    if (back_ != kNil)
      links_[back_].next = node;
    else
      front_ = node;
    back_ = node;
    ++listed_;
    tree_.at(node).heap_pos = kInList;
  }
  void unlink(std::uint32_t node) {
    const Link l = links_[node];
    if (l.prev != kNil)
      links_[l.prev].next = l.next;
    else
      front_ = l.next;
    if (l.next != kNil)
      links_[l.next].prev = l.prev;
    else
      back_ = l.prev;
    --listed_;
  }

  // ---- the indexed heap (LFU: every candidate; LRU, TTL: the out-of-order ones)
  void heap_push(std::uint32_t node) {
    heap_.push_back({priority_of(policy_, tree_.at(node)), node});
    sift_up(heap_.size() - 1);
  }
  void heap_erase(std::size_t i) {
    KVTIER_ASSERT(i < heap_.size());
    if (i + 1 == heap_.size()) {
      heap_.pop_back();
      return;
    }
    heap_[i] = heap_.back();
    heap_.pop_back();
    place(i);
    sift_down(sift_up(i));
  }
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
  bool by_touch_;  // LRU, TTL: the touch-order list is used
  Table& tree_;
  std::vector<Entry> heap_;
  std::vector<Link> links_;
  std::uint32_t front_ = kNil;  // oldest listed candidate
  std::uint32_t back_ = kNil;   // newest listed candidate
  std::size_t listed_ = 0;
};

using EvictionQueue = BasicEvictionQueue<RadixTree>;

}  // namespace kvtier
