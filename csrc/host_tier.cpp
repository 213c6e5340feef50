#include "host_tier.h"

#include <sys/mman.h>

#include <string>

namespace kvtier {

void HostArena::Free::operator()(std::uint8_t* p) const {
  if (p != nullptr) munmap(p, bytes);
}

HostArena::HostArena(std::size_t slots, std::size_t block_bytes)
    : slots_(slots), block_bytes_(block_bytes), base_(nullptr, Free{slots * block_bytes}) {
  KVTIER_ASSERT(slots > 0 && slots < kNil && block_bytes > 0);
  const std::size_t bytes = slots * block_bytes;
  // Anonymous mmap: page-aligned, zero pages committed lazily, returned to the OS on close.
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    throw Error(Code::kCapacity, "host tier: cannot reserve " + std::to_string(bytes) +
                                     " bytes of memory; lower capacity_bytes");
  base_.reset(static_cast<std::uint8_t*>(p));
  free_.resize(slots);
  // Hand out low slots first, so a partly used arena touches few pages.
  for (std::size_t i = 0; i < slots; ++i) free_[i] = static_cast<std::uint32_t>(slots - 1 - i);
}

}  // namespace kvtier
