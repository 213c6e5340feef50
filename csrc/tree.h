// Path-compressed radix tree over fixed-width blocks.
//
//   root(ns) ── [b0 b1 b2 b3] ──┬── [b4 b5]          a node holds a run of blocks; it is split
//                               └── [b4' b5' b6']    where two prefixes diverge
//
// Every block is `width` words (a block of tokens, or an engine's block id). Children are found
// through ChildIndex by a fast hash of their first block and confirmed by exact comparison. The tree
// knows only structure; policy state (recency, pins, heap position) lives in the node but is driven
// by Store. Node ids are stable for a node's lifetime; freed ids are reused.
#pragma once

#include <array>
#include <memory>
#include <cstdint>
#include <vector>

#include "child_index.h"
#include "common.h"

namespace kvtier {

using Key = std::array<std::uint8_t, 32>;

// Per-block data that only stores with payloads need; kept out of Node so that a metadata-only
// tree pays 8 bytes per node for it.
struct NodePayload {
  std::vector<std::uint32_t> slots;  // host slot per block
  std::vector<Key> keys;             // chained key per block, filled lazily (empty until asked)
};

struct Node {
  // First cache line: what a lookup reads and touches (walk, compare, recency, eviction queue).
  std::vector<Word> words;        // num_blocks * width, block-major
  std::uint32_t parent = kNil;
  std::uint32_t heap_pos = kNil;  // position in the eviction heap, kNil if not a candidate
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
  explicit RadixTree(std::uint32_t width) : width_(width) {}

  std::uint32_t width() const { return width_; }
  Node& at(std::uint32_t id) { return nodes_[id]; }
  const Node& at(std::uint32_t id) const { return nodes_[id]; }
  std::uint32_t num_blocks(std::uint32_t id) const {
    return static_cast<std::uint32_t>(nodes_[id].words.size() / width_);
  }

  // A new root (no blocks) for namespace `ns`.
  std::uint32_t add_root(std::uint32_t ns);

  // The child of `parent` whose first block equals `block` (width words), or kNil.
  std::uint32_t find_child(std::uint32_t parent, const Word* block) const;

  // Number of leading blocks of node `id` equal to `blocks` (at most `n` blocks compared).
  std::uint32_t common_blocks(std::uint32_t id, const Word* blocks, std::size_t n) const;

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

  // Makes room for `n` more nodes without moving the node array or rehashing the child index.
  void reserve(std::size_t n) {
    nodes_.reserve(nodes_.size() + n);
    index_.reserve(index_.size() + n);
  }

  std::size_t live_nodes() const { return nodes_.size() - free_.size(); }

 private:
  std::uint64_t key_of(std::uint32_t parent, const Word* first_block) const {
    return child_key(parent, hash_block(first_block, width_));
  }
  void link(std::uint32_t parent, std::uint32_t child);
  void unlink(std::uint32_t child);
  std::uint32_t alloc();

  std::uint32_t width_;
  std::vector<Node> nodes_;
  std::vector<std::uint32_t> free_;
  ChildIndex index_;
};

}  // namespace kvtier
