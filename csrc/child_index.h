// Child lookup for the radix tree: (parent node, fast hash of a block's content) -> child node.
//
// One open-addressing table for the whole tree (linear probing, backward-shift deletion), so a
// node needs no per-node map. The table stores only a 64-bit mixed key and the child id; the
// caller confirms a candidate by comparing the child's first block word-for-word, so a hash
// collision can never alias two prefixes (it only costs one extra comparison).
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"

namespace kvtier {

// Fast non-cryptographic 64-bit hash of `n` words (used only to find candidates).
inline std::uint64_t mix64(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

inline std::uint64_t hash_block(const Word* w, std::uint32_t n) {
  std::uint64_t h = 0x9E3779B97F4A7C15ULL ^ n;
  std::uint32_t i = 0;
  for (; i + 2 <= n; i += 2) {
    std::uint64_t v;
    std::memcpy(&v, w + i, sizeof v);
    h = (h ^ v) * 0x9FB21C651E98DF25ULL;
    h ^= h >> 29;
  }
  if (i < n) h = (h ^ w[i]) * 0x9FB21C651E98DF25ULL;
  return mix64(h);
}

inline std::uint64_t child_key(std::uint32_t parent, std::uint64_t block_hash) {
  return mix64(block_hash ^ (static_cast<std::uint64_t>(parent) * 0xD6E8FEB86659FD93ULL));
}

class ChildIndex {
 public:
  ChildIndex() { rehash(64); }

  // Calls `visit(child)` for each child whose mixed key equals `key`, until it returns true.
  // Returns the child for which it returned true, or kNil.
  template <class Visit>
  std::uint32_t find(std::uint64_t key, Visit&& visit) const {
    std::size_t i = key & mask_;
    while (slots_[i].child != kNil) {
      if (slots_[i].key == key && visit(slots_[i].child)) return slots_[i].child;
      i = (i + 1) & mask_;
    }
    return kNil;
  }

  void insert(std::uint64_t key, std::uint32_t child) {
    if ((size_ + 1) * 2 > slots_.size()) rehash(slots_.size() * 2);
    std::size_t i = key & mask_;
    while (slots_[i].child != kNil) i = (i + 1) & mask_;
    slots_[i] = {key, child};
    ++size_;
  }

  // Replaces the value of the entry (key, old_child). The entry must exist.
  void replace(std::uint64_t key, std::uint32_t old_child, std::uint32_t new_child) {
    std::size_t i = locate(key, old_child);
    slots_[i].child = new_child;
  }

  // Removes the entry (key, child). The entry must exist.
  void erase(std::uint64_t key, std::uint32_t child) {
    std::size_t hole = locate(key, child);
    // Backward-shift deletion: move later entries of the probe run into the hole.
    std::size_t i = (hole + 1) & mask_;
    while (slots_[i].child != kNil) {
      std::size_t home = slots_[i].key & mask_;
      // Entry at i may fill the hole if its home is not in the cyclic range (hole, i].
      bool movable = (i > hole) ? (home <= hole || home > i) : (home <= hole && home > i);
      if (movable) {
        slots_[hole] = slots_[i];
        hole = i;
      }
      i = (i + 1) & mask_;
    }
    slots_[hole] = {0, kNil};
    --size_;
  }

  // Makes room for `n` entries without a rehash.
  void reserve(std::size_t n) {
    std::size_t cap = slots_.size();
    while (cap < 2 * n) cap *= 2;
    if (cap != slots_.size()) rehash(cap);
  }

  std::size_t size() const { return size_; }

 private:
  struct Slot {
    std::uint64_t key;
    std::uint32_t child;
  };

  std::size_t locate(std::uint64_t key, std::uint32_t child) const {
    std::size_t i = key & mask_;
    while (true) {
      KVTIER_ASSERT(slots_[i].child != kNil);
      if (slots_[i].key == key && slots_[i].child == child) return i;
      i = (i + 1) & mask_;
    }
  }

  void rehash(std::size_t capacity) {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(capacity, Slot{0, kNil});
    mask_ = capacity - 1;
    size_ = 0;
    for (const Slot& s : old)
      if (s.child != kNil) insert(s.key, s.child);
  }

  std::vector<Slot> slots_;
  std::size_t mask_ = 0;
  std::size_t size_ = 0;
};

}  // namespace kvtier
