#include "tree.h"

#include <cstring>

namespace kvtier {

std::uint32_t RadixTree::alloc() {
  std::uint32_t id;
  if (!free_.empty()) {
    id = free_.back();
    free_.pop_back();
    // A freed node keeps its (empty) word buffer, so a new node of similar size needs no allocation.
    std::vector<Word> buffer = std::move(nodes_[id].words);
    nodes_[id] = Node{};
    nodes_[id].words = std::move(buffer);
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

std::uint32_t RadixTree::find_child(std::uint32_t parent, const Word* block) const {
  const std::size_t bytes = width_ * sizeof(Word);
  return index_.find(key_of(parent, block), [&](std::uint32_t c) {
    const Node& n = nodes_[c];
    return n.parent == parent && std::memcmp(n.words.data(), block, bytes) == 0;
  });
}

std::uint32_t RadixTree::common_blocks(std::uint32_t id, const Word* blocks, std::size_t n) const {
  const Node& node = nodes_[id];
  const std::size_t have = node.words.size() / width_;
  const std::size_t limit = have < n ? have : n;
  // Fast path: the whole overlap is equal (the common case for a returning prefix).
  if (std::memcmp(node.words.data(), blocks, limit * width_ * sizeof(Word)) == 0)
    return static_cast<std::uint32_t>(limit);
  std::size_t i = 0;
  const std::size_t bytes = width_ * sizeof(Word);
  while (i < limit && std::memcmp(node.words.data() + i * width_, blocks + i * width_, bytes) == 0) ++i;
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
  const std::size_t cut = static_cast<std::size_t>(at) * width_;

  u.ns = n.ns;
  u.account = n.account;
  u.depth = n.depth;
  u.pins = n.pins;
  u.hits = n.hits;
  u.seq = n.seq;
  u.last_access = n.last_access;
  u.words.assign(n.words.begin(), n.words.begin() + static_cast<std::ptrdiff_t>(cut));
  n.words.erase(n.words.begin(), n.words.begin() + static_cast<std::ptrdiff_t>(cut));
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
  }
  n.depth += at;

  // `up` takes `id`'s place under the parent (same first block, same index key).
  index_.replace(key_of(parent, u.words.data()), id, up);
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
  index_.insert(key_of(up, n.words.data()), id);
  return up;
}

std::uint32_t RadixTree::add_child(std::uint32_t parent, const Word* blocks, std::size_t n) {
  KVTIER_ASSERT(n > 0);
  std::uint32_t id = alloc();
  Node& c = nodes_[id];
  const Node& p = nodes_[parent];
  c.ns = p.ns;
  c.depth = p.depth + static_cast<std::uint32_t>(p.words.size() / width_);
  c.words.assign(blocks, blocks + n * width_);
  link(parent, id);
  index_.insert(key_of(parent, blocks), id);
  return id;
}

void RadixTree::trim_tail(std::uint32_t id, std::uint32_t n) {
  Node& node = nodes_[id];
  KVTIER_ASSERT(node.num_children == 0 && n < num_blocks(id));
  node.words.resize(node.words.size() - static_cast<std::size_t>(n) * width_);
  if (node.payload) {
    node.payload->slots.resize(node.payload->slots.size() - n);
    if (!node.payload->keys.empty()) node.payload->keys.resize(node.payload->keys.size() - n);
  }
}

void RadixTree::remove_leaf(std::uint32_t id) {
  Node& node = nodes_[id];
  KVTIER_ASSERT(node.alive && node.num_children == 0 && node.parent != kNil);
  index_.erase(key_of(node.parent, node.words.data()), id);
  unlink(id);
  std::vector<Word> buffer = std::move(node.words);
  buffer.clear();
  node = Node{};
  node.words = std::move(buffer);  // kept for reuse by alloc()
  free_.push_back(id);
}

}  // namespace kvtier
