// Device tier payload storage: one pool of fixed-size block slots in one GPU's memory, allocated once with
// cuMemAlloc on the device's primary context (so it is shared with PyTorch's allocations, not a second context).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/common.h"
#include "cuda/driver.h"

namespace kvtier {

class DeviceArena {
 public:
  // `slots` blocks of `block_bytes` each on CUDA device `device`.
  // Throws cuda::Unavailable when CUDA or the device is missing, Error(kCapacity) when the device has not that
  // much free memory, cuda::DriverError for any other driver failure.
  DeviceArena(int device, std::size_t slots, std::size_t block_bytes, cuda::Driver& driver = cuda::driver());
  ~DeviceArena();  // cuMemFree; the caller has waited for every copy that touches the arena
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;

  int device() const { return device_; }
  std::size_t slots() const { return slots_; }
  std::size_t block_bytes() const { return block_bytes_; }
  std::size_t free_slots() const { return free_.size(); }
  cuda::CUdeviceptr base() const { return base_; }

  // Takes a free slot. Precondition: free_slots() > 0 (the caller evicts first).
  std::uint32_t take() {
    KVTIER_ASSERT(!free_.empty());
    const std::uint32_t s = free_.back();
    free_.pop_back();
    in_use_[s] = true;
    return s;
  }
  // Precondition: in_use(slot).
  void give_back(std::uint32_t slot) {
    KVTIER_ASSERT(in_use(slot));
    in_use_[slot] = false;
    free_.push_back(slot);
  }
  bool in_use(std::uint32_t slot) const { return slot < slots_ && in_use_[slot]; }
  // Device address of a slot. Precondition: slot < slots().
  cuda::CUdeviceptr slot_address(std::uint32_t slot) const {
    KVTIER_DASSERT(slot < slots_);
    return base_ + static_cast<cuda::CUdeviceptr>(slot) * block_bytes_;
  }

 private:
  cuda::Driver& driver_;
  int device_;
  std::size_t slots_;
  std::size_t block_bytes_;
  cuda::CUcontext ctx_ = nullptr;
  cuda::CUdeviceptr base_ = 0;
  std::vector<std::uint32_t> free_;  // stack of free slot numbers
  std::vector<bool> in_use_;
};

}  // namespace kvtier
