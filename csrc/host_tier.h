// Host tier payload storage: one page-aligned arena of fixed-size block slots, allocated once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "common.h"

namespace kvtier {

class HostArena {
 public:
  // `slots` blocks of `block_bytes` each. Throws Error(kCapacity) if the memory cannot be had.
  HostArena(std::size_t slots, std::size_t block_bytes);
  HostArena(const HostArena&) = delete;
  HostArena& operator=(const HostArena&) = delete;

  std::size_t slots() const { return slots_; }
  std::size_t free_slots() const { return free_.size(); }

  // Takes a free slot. Precondition: free_slots() > 0 (the caller evicts first).
  std::uint32_t take() {
    KVTIER_ASSERT(!free_.empty());
    std::uint32_t s = free_.back();
    free_.pop_back();
    return s;
  }
  void give_back(std::uint32_t slot) { free_.push_back(slot); }

  std::uint8_t* slot_ptr(std::uint32_t slot) { return base_.get() + static_cast<std::size_t>(slot) * block_bytes_; }

 private:
  struct Free {
    std::size_t bytes;
    void operator()(std::uint8_t* p) const;
  };
  std::size_t slots_;
  std::size_t block_bytes_;
  std::unique_ptr<std::uint8_t, Free> base_;
  std::vector<std::uint32_t> free_;  // stack of free slot numbers
};

}  // namespace kvtier
