// Child lookup for the radix tree: (parent node, first block of the child) -> child node.
//
// One open-addressing table for the whole tree (linear probing, backward-shift deletion), so a
// node needs no per-node map. A slot is 8 bytes, so the table of a large tree stays in cache:
//
//   slot = { key: u32, child: u32 }      key = hash of (parent, tag); child == kNil: empty slot
//
// The tag of a block is the block itself when it fits in 64 bits (one or two words: an engine's
// u64 block id, or a one-token block), else a fast hash of it. A candidate is confirmed on the
// node (its parent and tag; for a hashed tag, its first block word for word), which the caller
// reads next anyway: a collision costs one extra comparison, it can never alias two prefixes.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "core/common.h"

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

// True when a block of `width` words is its own tag (equal tags: equal blocks).
inline constexpr bool exact_tag(std::uint32_t width) { return width <= 2; }

// The tag of a block of `width` words: the block itself when exact_tag(width), else its hash.
inline std::uint64_t block_tag(const Word* block, std::uint32_t width) {
  if (width == 2) {
    std::uint64_t v;
    std::memcpy(&v, block, sizeof v);
    return v;
  }
  if (width == 1) return block[0];
  return hash_block(block, width);
}

class ChildIndex {
 public:
  ChildIndex() { rehash(64); }

  // The child of `parent` tagged `tag` for which `is_child(child)` returns true, or kNil.
  // Candidates share the slot key of (parent, tag); `is_child` must check parent and tag (and,
  // for a hashed tag, the block itself) on the node.
  template <class IsChild>
  std::uint32_t find(std::uint32_t parent, std::uint64_t tag, IsChild&& is_child) const {
    const std::uint32_t key = key_of(parent, tag);
    std::size_t i = home(key);
    while (true) {
      const Slot& s = slots_[i];
      if (s.child == kNil) return kNil;
      if (s.key == key && is_child(s.child)) return s.child;
      i = (i + 1) & mask_;
    }
  }

  void insert(std::uint32_t parent, std::uint64_t tag, std::uint32_t child) {
    if ((size_ + 1) * 2 > slots_.size()) rehash(slots_.size() * 2);
    place({key_of(parent, tag), child});
    ++size_;
  }

  // Gives the entry (parent, tag, old_child) the child `new_child`. The entry must exist.
  void replace(std::uint32_t parent, std::uint64_t tag, std::uint32_t old_child, std::uint32_t new_child) {
    slots_[locate(key_of(parent, tag), old_child)].child = new_child;
  }

  // Removes the entry (parent, tag, child). The entry must exist.
  void erase(std::uint32_t parent, std::uint64_t tag, std::uint32_t child) {
    std::size_t hole = locate(key_of(parent, tag), child);
    // Backward-shift deletion: move later entries of the probe run into the hole.
    std::size_t i = (hole + 1) & mask_;
    while (slots_[i].child != kNil) {
      const std::size_t h = home(slots_[i].key);
      // Entry at i may fill the hole if its home is not in the cyclic range (hole, i].
      const bool movable = (i > hole) ? (h <= hole || h > i) : (h <= hole && h > i);
      if (movable) {
        slots_[hole] = slots_[i];
        hole = i;
      }
      i = (i + 1) & mask_;
    }
    slots_[hole] = Slot{0, kNil};
    --size_;
  }

  std::size_t size() const { return size_; }

 private:
  struct Slot {
    std::uint32_t key;    // key_of(parent, tag)
    std::uint32_t child;  // kNil: empty
  };

  // Fibonacci hashing of (parent, tag): the top 32 bits of one multiply, so consecutive block ids
  // (the usual engine ids) spread over the table. The top bits of the key pick the home slot.
  static std::uint32_t key_of(std::uint32_t parent, std::uint64_t tag) {
    const std::uint64_t x = tag ^ (static_cast<std::uint64_t>(parent) * 0xD6E8FEB86659FD93ULL);
    return static_cast<std::uint32_t>((x * 0x9E3779B97F4A7C15ULL) >> 32);
  }
  std::size_t home(std::uint32_t key) const { return key >> shift_; }

  void place(const Slot& s) {
    std::size_t i = home(s.key);
    while (slots_[i].child != kNil) i = (i + 1) & mask_;
    slots_[i] = s;
  }

  std::size_t locate(std::uint32_t key, std::uint32_t child) const {
    std::size_t i = home(key);
    while (true) {
      KVTIER_ASSERT(slots_[i].child != kNil);
      if (slots_[i].child == child && slots_[i].key == key) return i;
      i = (i + 1) & mask_;
    }
  }

  // capacity: a power of two, 64 <= capacity <= 2**32.
  void rehash(std::size_t capacity) {
    KVTIER_ASSERT(capacity <= (std::size_t{1} << 32));
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(capacity, Slot{0, kNil});
    mask_ = capacity - 1;
    shift_ = 32;
    for (std::size_t c = capacity; c > 1; c >>= 1) --shift_;
    for (const Slot& s : old)
      if (s.child != kNil) place(s);
  }

  std::vector<Slot> slots_;
  std::size_t mask_ = 0;
  unsigned shift_ = 32;  // 32 - log2(capacity)
  std::size_t size_ = 0;
};

}  // namespace kvtier
