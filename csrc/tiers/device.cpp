#include "tiers/device.h"

#include <string>

namespace kvtier {

DeviceArena::DeviceArena(int device, std::size_t slots, std::size_t block_bytes, cuda::Driver& driver)
    : driver_(driver), device_(device), slots_(slots), block_bytes_(block_bytes) {
  if (slots == 0 || slots >= kNil) throw Error(Code::kInvalidArgument, "slots must be in [1, 2**32 - 1)");
  if (block_bytes == 0) throw Error(Code::kInvalidArgument, "block_bytes must be > 0");
  std::size_t bytes = 0;
  if (__builtin_mul_overflow(slots, block_bytes, &bytes))
    throw Error(Code::kInvalidArgument, "slots x block_bytes overflows");
  ctx_ = driver_.primary_context(device);  // throws cuda::Unavailable naming what is missing
  cuda::ContextGuard guard(driver_, ctx_);
  const cuda::CUresult r = driver_.api().mem_alloc(&base_, bytes);
  if (r == cuda::CUDA_ERROR_OUT_OF_MEMORY)
    throw Error(Code::kCapacity, "device tier: cannot allocate " + std::to_string(bytes) + " bytes on CUDA device " +
                                     std::to_string(device) + " (" + driver_.device_name(device) +
                                     "): out of memory; lower capacity_bytes");
  driver_.check(r, "cuMemAlloc");
  free_.resize(slots);
  for (std::size_t i = 0; i < slots; ++i) free_[i] = static_cast<std::uint32_t>(slots - 1 - i);
  in_use_.assign(slots, false);
}

DeviceArena::~DeviceArena() {
  if (!driver_.available()) return;  // a forked child: the allocation belongs to the parent's CUDA state
  try {
    cuda::ContextGuard guard(driver_, ctx_);
    driver_.api().mem_free(base_);
  } catch (...) {
  }
}

}  // namespace kvtier
