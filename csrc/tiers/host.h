// Host tier payload storage: one page-aligned arena of fixed-size block slots, allocated once.
// Where a CUDA driver is usable (cuda_driver.h), the whole arena is page-locked at construction
// (cuMemHostRegister, portable to every context), so host <-> device copies of its slots are DMA; the
// pages are then committed up front instead of on first touch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/common.h"

namespace kvtier {

class HostArena {
 public:
  // `slots` blocks of `block_bytes` each. Throws Error(kCapacity) if the memory cannot be had, or cannot be
  // page-locked where CUDA is present.
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

  std::uint8_t* slot_ptr(std::uint32_t slot) const { return base_.get() + static_cast<std::size_t>(slot) * block_bytes_; }

 private:
  struct Free {
    std::size_t bytes;
    void operator()(std::uint8_t* p) const;
  };
  std::size_t slots_;
  std::size_t block_bytes_;
  // The CUDA registration of the arena, undone (cuMemHostUnregister) before base_ is unmapped: declared
  // after base_, so destroyed before it.
  struct Pin {
    void* ptr = nullptr;      // registered address; null if the arena is not page-locked
    void* context = nullptr;  // the primary context (CUcontext) it was registered under
    Pin() = default;
    Pin(const Pin&) = delete;
    Pin& operator=(const Pin&) = delete;
    ~Pin();
  };
  std::unique_ptr<std::uint8_t, Free> base_;
  Pin pin_;
  std::vector<std::uint32_t> free_;  // stack of free slot numbers
};

}  // namespace kvtier
