// Path-compressed radix tree over fixed-width blocks.
//
//   root(ns) ── [b0 b1 b2 b3] ──┬── [b4 b5]          a node holds a run of blocks; it is split
//                               └── [b4' b5' b6']    where two prefixes diverge
//
// Every block is `width` words (a block of tokens, or an engine's block id). Children are found
// through ChildIndex by their first block (see child_index.h: exact for block ids). The tree
// knows only structure; policy state (recency, pins, heap position) lives in the node but is driven
// by Store. Node ids are stable for a node's lifetime; freed ids are reused.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "core/child_index.h"
#include "core/common.h"
#include "core/word_pool.h"

namespace kvtier {

using Key = std::array<std::uint8_t, 32>;

// Per-block data that only stores with payloads need; kept out of Node so that a metadata-only
// tree pays 8 bytes per node for it.
struct NodePayload {
  std::vector<std::uint32_t> slots;  // host slot per block
  std::vector<Key> keys;             // chained key per block, filled lazily (empty until asked)
  // Device tier (store_device.cpp): a GPU slot per block when the node is on the device, else empty.
  std::vector<std::uint32_t> dslots;
  bool dirty = false;                // the host slots are stale: the device holds the only copy
  std::uint32_t dprev = kNil;        // the device tier's LRU list (Store owns its ends)
  std::uint32_t dnext = kNil;
  std::uint64_t dstamp = 0;          // operation that last touched the node on the device
};

// A node's run of blocks: blocks() blocks of the tree's width, block-major, in a buffer of the
// tree's WordPool. Only the tree changes it; the pool owns the memory.
class WordRun {
 public:
  const Word* data() const { return base_; }
  bool empty() const { return blocks_ == 0; }
  std::uint32_t blocks() const { return blocks_; }

 private:
  friend class RadixTree;
  Word* base_ = nullptr;
  std::uint32_t blocks_ = 0;
  std::uint32_t words_ = 0;  // asked of the pool for base_ (0: no buffer)
};

struct Node {
  // First cache line: what a lookup reads and touches (walk, compare, recency, eviction queue).
  WordRun words;                  // num_blocks * width, block-major
  std::uint64_t tag = 0;          // child-index tag of the first block (child_index.h)
  std::uint32_t parent = kNil;
  std::uint32_t heap_pos = kNil;  // the node's place in the eviction queue, kNil if not a candidate
  std::uint64_t seq = 0;          // operation sequence of the last touch (LRU order)
  double last_access = 0.0;       // seconds, the caller's clock
  std::uint32_t pins = 0;         // requests in flight holding this node
  std::uint32_t hits = 0;         // matches that covered this node (LFU)
  std::uint32_t num_children = 0;
  std::uint32_t account = 0;      // residency account (namespace, session)
  // Structure, read on inserts and removals.
  std::uint32_t first_child = kNil;
  std::uint32_t next_sibling = kNil;
  std::uint32_t prev_sibling = kNil;
  std::uint32_t ns = 0;           // namespace id
  std::uint32_t depth = 0;        // blocks between the root and this node's first block
  bool alive = false;
  std::unique_ptr<NodePayload> payload;  // payload mode only
};

class RadixTree {
 public:
  explicit RadixTree(std::uint32_t width) : width_(width), exact_(exact_tag(width)) {}

  std::uint32_t width() const { return width_; }
  Node& at(std::uint32_t id) { return nodes_[id]; }
  const Node& at(std::uint32_t id) const { return nodes_[id]; }
  std::uint32_t num_blocks(std::uint32_t id) const { return nodes_[id].words.blocks(); }

  // A new root (no blocks) for namespace `ns`.
  std::uint32_t add_root(std::uint32_t ns);

  // The child of `parent` whose first block equals `block` (width words), or kNil.
  std::uint32_t find_child(std::uint32_t parent, const Word* block) const {
    const std::uint64_t tag = block_tag(block, width_);
    return index_.find(parent, tag, [&](std::uint32_t c) {
      const Node& n = nodes_[c];
      return n.parent == parent && n.tag == tag &&
             (exact_ || std::memcmp(n.words.data(), block, width_ * sizeof(Word)) == 0);
    });
  }

  // Number of leading blocks of node `id` equal to `blocks` (at most `n` blocks compared).
  std::uint32_t common_blocks(std::uint32_t id, const Word* blocks, std::size_t n) const {
    const WordRun& run = nodes_[id].words;
    const std::size_t limit = run.blocks() < n ? run.blocks() : n;
    // Fast path: the whole overlap is equal (the common case for a returning prefix).
    if (std::memcmp(run.data(), blocks, limit * width_ * sizeof(Word)) == 0) return static_cast<std::uint32_t>(limit);
    return first_difference(run.data(), blocks, limit);
  }

  // Splits node `id` after `at` blocks (0 < at < num_blocks). A new node takes the first `at`
  // blocks and the place of `id` under its parent; `id` keeps the rest and becomes its only child,
  // so ids held by callers (pins) still name the deepest part. Returns the new upper node.
  std::uint32_t split(std::uint32_t id, std::uint32_t at);

  // A new leaf under `parent` holding `n` blocks copied from `blocks`. The caller sets policy fields.
  std::uint32_t add_child(std::uint32_t parent, const Word* blocks, std::size_t n);

  // Drops the last `n` blocks of leaf `id`; the leaf must keep at least one block.
  void trim_tail(std::uint32_t id, std::uint32_t n);

  // Unlinks and frees leaf `id` (no children). Its id may be reused.
  void remove_leaf(std::uint32_t id);
  void remove_root(std::uint32_t id);  // a namespace's root without children

  // Makes room for `n` more nodes without moving the node array. The child index is left to grow
  // with the live tree: sized for the worst case it would be mostly empty, and every probe a miss.
  void reserve(std::size_t n) { nodes_.reserve(nodes_.size() + n); }

  std::size_t live_nodes() const { return nodes_.size() - free_.size(); }

 private:
  // The first of `limit` blocks of `a` and `b` that differ (`limit` if none does).
  std::uint32_t first_difference(const Word* a, const Word* b, std::size_t limit) const;
  // Gives `run` a fresh buffer holding `blocks` blocks copied from `w`; `run` must have none.
  void fill(WordRun& run, const Word* w, std::uint32_t blocks);
  void release(WordRun& run);  // returns its buffer to the pool
  void link(std::uint32_t parent, std::uint32_t child);
  void unlink(std::uint32_t child);
  std::uint32_t alloc();

  std::uint32_t width_;
  bool exact_;  // blocks are their own child-index tags (no word comparison to confirm a child)
  std::vector<Node> nodes_;
  std::vector<std::uint32_t> free_;
  ChildIndex index_;
  WordPool pool_;  // the runs' buffers
};

}  // namespace kvtier
