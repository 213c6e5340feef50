#include "tiers/host.h"

#include <sys/mman.h>
#include <unistd.h>

#include <string>

#include "cuda/driver.h"

namespace kvtier {

namespace {

// The ordinal of the device whose context is current on this thread (PyTorch's, typically), or 0.
int current_device(const cuda::Driver& d) {
  cuda::CUcontext cur = nullptr;
  cuda::CUdevice handle = 0;
  if (d.api().ctx_get_current(&cur) != cuda::CUDA_SUCCESS || cur == nullptr) return 0;
  if (d.api().ctx_get_device(&handle) != cuda::CUDA_SUCCESS) return 0;
  for (int i = 0; i < d.device_count(); ++i) {
    cuda::CUdevice h = 0;
    if (d.api().device_get(&h, i) == cuda::CUDA_SUCCESS && h == handle) return i;
  }
  return 0;
}

}  // namespace

void HostArena::Free::operator()(std::uint8_t* p) const {
  if (p != nullptr) munmap(p, bytes);
}

HostArena::Pin::~Pin() {
  if (ptr == nullptr) return;
  cuda::Driver& d = cuda::driver();
  if (!d.available()) return;  // a forked child: the registration belongs to the parent's CUDA state
  try {
    cuda::ContextGuard guard(d, static_cast<cuda::CUcontext>(context));
    d.api().mem_host_unregister(ptr);
  } catch (const cuda::DriverError&) {
    // The context could not be made current: nothing left to undo in this process.
  }
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

  cuda::Driver& d = cuda::driver();
  if (d.available()) {
    // Registered under the primary context of the current device (device 0 if none is current), as portable
    // memory: every context sees it as page-locked.
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    const std::size_t locked = (bytes + page - 1) / page * page;
    cuda::CUcontext ctx = nullptr;
    cuda::CUresult r = cuda::CUDA_SUCCESS;
    try {
      ctx = d.primary_context(current_device(d));
      cuda::ContextGuard guard(d, ctx);
      r = d.api().mem_host_register(p, locked, cuda::CU_MEMHOSTREGISTER_PORTABLE);
    } catch (const cuda::DriverError& e) {
      throw Error(Code::kCapacity, std::string("host tier: cannot page-lock the arena for CUDA: ") + e.what());
    }
    if (r != cuda::CUDA_SUCCESS)
      throw Error(Code::kCapacity, "host tier: cannot page-lock " + std::to_string(bytes) +
                                       " bytes for CUDA: cuMemHostRegister failed: " + d.describe(r) +
                                       "; lower capacity_bytes");
    pin_.ptr = p;
    pin_.context = ctx;
  }

  free_.resize(slots);
  // Hand out low slots first, so a partly used arena touches few pages.
  for (std::size_t i = 0; i < slots; ++i) free_[i] = static_cast<std::uint32_t>(slots - 1 - i);
}

}  // namespace kvtier
