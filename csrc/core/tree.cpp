#include "core/tree.h"

#include <cstring>

namespace kvtier {

std::uint32_t RadixTree::alloc() {
  std::uint32_t id;
  if (!free_.empty()) {
    id = free_.back();
    free_.pop_back();
    nodes_[id] = Node{};
  } else {
    KVTIER_ASSERT(nodes_.size() < kNil - 1);
    id = static_cast<std::uint32_t>(nodes_.size());
    nodes_.emplace_back();
  }
  nodes_[id].alive = true;
  return id;
}

std::uint32_t RadixTree::add_root(std::uint32_t ns) {
  std::uint32_t id = alloc();
  nodes_[id].ns = ns;
  return id;
}

void RadixTree::fill(WordRun& run, const Word* w, std::uint32_t blocks) {
  KVTIER_ASSERT(run.words_ == 0 && blocks > 0 && std::uint64_t{blocks} * width_ <= WordPool::kMaxWords);
  const std::uint32_t words = blocks * width_;
  run.base_ = pool_.take(words);
  std::memcpy(run.base_, w, static_cast<std::size_t>(words) * sizeof(Word));
  run.blocks_ = blocks;
  run.words_ = words;
}

void RadixTree::release(WordRun& run) {
  if (run.words_ != 0) pool_.give_back(run.base_, run.words_);
  run = WordRun{};
}

std::uint32_t RadixTree::first_difference(const Word* a, const Word* b, std::size_t limit) const {
  std::size_t i = 0;
  if (width_ == 2) {  // block ids: one 64-bit compare per block
    for (; i < limit; ++i) {
      std::uint64_t x, y;
      std::memcpy(&x, a + 2 * i, sizeof x);
      std::memcpy(&y, b + 2 * i, sizeof y);
      if (x != y) break;
    }
    return static_cast<std::uint32_t>(i);
  }
  const std::size_t bytes = width_ * sizeof(Word);
  while (i < limit && std::memcmp(a + i * width_, b + i * width_, bytes) == 0) ++i;
  return static_cast<std::uint32_t>(i);
}

void RadixTree::link(std::uint32_t parent, std::uint32_t child) {
  Node& p = nodes_[parent];
  Node& c = nodes_[child];
  c.parent = parent;
  c.prev_sibling = kNil;
  c.next_sibling = p.first_child;
  if (p.first_child != kNil) nodes_[p.first_child].prev_sibling = child;
  p.first_child = child;
  ++p.num_children;
}

void RadixTree::unlink(std::uint32_t child) {
  Node& c = nodes_[child];
  Node& p = nodes_[c.parent];
  if (c.prev_sibling != kNil)
    nodes_[c.prev_sibling].next_sibling = c.next_sibling;
  else
    p.first_child = c.next_sibling;
  if (c.next_sibling != kNil) nodes_[c.next_sibling].prev_sibling = c.prev_sibling;
  c.prev_sibling = c.next_sibling = kNil;
  KVTIER_ASSERT(p.num_children > 0);
  --p.num_children;
}

std::uint32_t RadixTree::split(std::uint32_t id, std::uint32_t at) {
  KVTIER_ASSERT(at > 0 && at < num_blocks(id));
  std::uint32_t up = alloc();  // may reallocate nodes_: take references only after this
  Node& u = nodes_[up];
  Node& n = nodes_[id];
  const std::uint32_t parent = n.parent;

  u.ns = n.ns;
  u.account = n.account;
  u.depth = n.depth;
  u.pins = n.pins;
  u.hits = n.hits;
  u.seq = n.seq;
  u.last_access = n.last_access;
  u.tag = n.tag;  // the upper half starts with the same block
  // The upper half keeps the buffer (its first `at` blocks); the lower half gets a copy of the rest.
  const std::uint32_t blocks = n.words.blocks_;
  u.words = n.words;
  u.words.blocks_ = at;
  n.words = WordRun{};
  fill(n.words, u.words.data() + static_cast<std::size_t>(at) * width_, blocks - at);
  n.tag = block_tag(n.words.data(), width_);
  if (n.payload) {
    u.payload = std::make_unique<NodePayload>();
    auto& from = *n.payload;
    auto& to = *u.payload;
    to.slots.assign(from.slots.begin(), from.slots.begin() + at);
    from.slots.erase(from.slots.begin(), from.slots.begin() + at);
    if (!from.keys.empty()) {
      to.keys.assign(from.keys.begin(), from.keys.begin() + at);
      from.keys.erase(from.keys.begin(), from.keys.begin() + at);
    }
    if (!from.dslots.empty()) {  // both halves stay on the device; the store links `up` into its list
      to.dslots.assign(from.dslots.begin(), from.dslots.begin() + at);
      from.dslots.erase(from.dslots.begin(), from.dslots.begin() + at);
      to.dirty = from.dirty;
      to.dstamp = from.dstamp;
    }
  }
  n.depth += at;

  // `up` takes `id`'s place under the parent (same first block, same index entry).
  index_.replace(parent, u.tag, id, up);
  // Splice `up` into the parent's child list where `id` was.
  u.parent = parent;
  u.prev_sibling = n.prev_sibling;
  u.next_sibling = n.next_sibling;
  if (u.prev_sibling != kNil)
    nodes_[u.prev_sibling].next_sibling = up;
  else
    nodes_[parent].first_child = up;
  if (u.next_sibling != kNil) nodes_[u.next_sibling].prev_sibling = up;
  n.prev_sibling = n.next_sibling = kNil;
  u.first_child = kNil;
  u.num_children = 0;
  link(up, id);
  index_.insert(up, n.tag, id);
  return up;
}

std::uint32_t RadixTree::add_child(std::uint32_t parent, const Word* blocks, std::size_t n) {
  KVTIER_ASSERT(n > 0 && n <= WordPool::kMaxWords);  // fill() checks the words
  std::uint32_t id = alloc();
  Node& c = nodes_[id];
  const Node& p = nodes_[parent];
  c.ns = p.ns;
  c.depth = p.depth + p.words.blocks();
  fill(c.words, blocks, static_cast<std::uint32_t>(n));
  c.tag = block_tag(blocks, width_);
  link(parent, id);
  index_.insert(parent, c.tag, id);
  return id;
}

void RadixTree::trim_tail(std::uint32_t id, std::uint32_t n) {
  Node& node = nodes_[id];
  KVTIER_ASSERT(node.num_children == 0 && n < num_blocks(id));
  node.words.blocks_ -= n;  // the buffer stays as it is: released whole with the node
  if (node.payload) {
    node.payload->slots.resize(node.payload->slots.size() - n);
    if (!node.payload->keys.empty()) node.payload->keys.resize(node.payload->keys.size() - n);
    KVTIER_ASSERT(node.payload->dslots.empty());  // the store takes the blocks off the device first
  }
}

void RadixTree::remove_root(std::uint32_t id) {
  Node& node = nodes_[id];
  KVTIER_ASSERT(node.alive && node.num_children == 0 && node.parent == kNil);
  node.payload.reset();
  node.alive = false;
  free_.push_back(id);
}

void RadixTree::remove_leaf(std::uint32_t id) {
  Node& node = nodes_[id];
  KVTIER_ASSERT(node.alive && node.num_children == 0 && node.parent != kNil);
  index_.erase(node.parent, node.tag, id);
  unlink(id);
  // The rest of the node is reset when alloc() hands the id out again.
  release(node.words);
  node.payload.reset();
  node.parent = kNil;
  node.alive = false;
  free_.push_back(id);
}

}  // namespace kvtier
