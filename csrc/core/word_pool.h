// Memory for the radix tree's block runs (tree.h): buffers of a few size classes carved from large
// slabs, with one free list per class. Adding and removing nodes takes and returns buffers without
// calling malloc once the pool has grown to the tree's size, runs of neighbouring nodes share cache
// lines and pages, and a tree is freed in a few calls.
//
//   class sizes (words)   2 4 6 ... 16 | 18 20 ... 32 | 36 40 ... 64 | 72 80 ... 128 | ...
//                         step 2       | then 8 steps per power of two: a buffer wastes < 12.5%
//
// A freed buffer waits on its class's free list for the next run of that class; the pool gives its
// memory back when it is destroyed. Not copyable (it owns the slabs).
#pragma once

#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "core/common.h"

namespace kvtier {

class WordPool {
 public:
  WordPool() = default;
  WordPool(const WordPool&) = delete;
  WordPool& operator=(const WordPool&) = delete;

  // Largest buffer a run may ask for (words).
  static constexpr std::uint32_t kMaxWords = std::uint32_t{1} << 31;

  // The buffer size (words) that a run of `words` words gets: its class size. 0 < words <= kMaxWords.
  static std::uint32_t class_size(std::uint32_t words) {
    if (words <= 16) return (words + 1) & ~1u;
    const std::uint32_t step = std::uint32_t{1} << (std::bit_width(words - 1) - 4);  // 2^p < words <= 2^(p+1): 2^(p-3)
    return (words + step - 1) & ~(step - 1);
  }

  // A buffer of class_size(words) words.
  Word* take(std::uint32_t words) {
    KVTIER_ASSERT(words > 0 && words <= kMaxWords);
    const std::uint32_t size = class_size(words);
    Word*& head = free_[class_of(size)];
    if (head != nullptr) {
      Word* p = head;
      std::memcpy(&head, p, sizeof head);  // a free buffer holds the next one's address
      return p;
    }
    if (size > left_) {
      if (size > kSlabWords / 4) return carve(size);  // a large run gets a slab of its own
      next_ = carve(kSlabWords);
      left_ = kSlabWords;
    }
    Word* p = next_;
    next_ += size;
    left_ -= size;
    return p;
  }

  // Returns a buffer that take(words) handed out.
  void give_back(Word* p, std::uint32_t words) {
    Word*& head = free_[class_of(class_size(words))];
    std::memcpy(p, &head, sizeof head);
    head = p;
  }

 private:
  static constexpr std::uint32_t kSlabWords = std::uint32_t{1} << 16;  // 256 KiB
  static constexpr unsigned kClasses = 8 + 28 * 8;                     // up to kMaxWords

  // Index of the class of size `size` (a class_size() value).
  static unsigned class_of(std::uint32_t size) {
    if (size <= 16) return size / 2 - 1;
    const unsigned p = std::bit_width(size - 1) - 1;  // 2^p < size <= 2^(p+1), p >= 4
    return 8 + (p - 4) * 8 + ((size >> (p - 3)) - 9);
  }

  Word* carve(std::uint32_t words) {
    slabs_.push_back(std::make_unique_for_overwrite<Word[]>(words));
    return slabs_.back().get();
  }

  std::array<Word*, kClasses> free_{};
  std::vector<std::unique_ptr<Word[]>> slabs_;
  Word* next_ = nullptr;  // unused part of the newest slab
  std::uint32_t left_ = 0;
};

}  // namespace kvtier
