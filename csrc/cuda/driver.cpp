#include "cuda/driver.h"

#include <dlfcn.h>
#include <link.h>
#include <unistd.h>

namespace kvtier::cuda {

namespace {

template <class Fn>
bool bind(void* handle, const char* symbol, Fn& out) {
  out = reinterpret_cast<Fn>(dlsym(handle, symbol));
  return out != nullptr;
}

// cuGetProcAddress as CUDA 12 declares it (exported as cuGetProcAddress_v2).
using GetProcAddress = CUresult (*)(const char* symbol, void** pfn, int cuda_version, cuuint64_t flags,
                                    int* symbol_status);

constexpr int kBatchAbiVersion = 12080;  // the CUDA version whose cuMemcpyBatchAsync signature Api declares

}  // namespace

Driver::Driver(const std::string& library) : pid_(static_cast<long>(getpid())) {
  handle_ = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle_ == nullptr) {
    const char* err = dlerror();
    reason_ = library + " not found (is the NVIDIA driver installed?): " + (err ? err : "dlopen failed");
    return;
  }
  link_map* map = nullptr;
  if (dlinfo(handle_, RTLD_DI_LINKMAP, &map) == 0 && map != nullptr && map->l_name != nullptr)
    library_ = map->l_name;
  if (library_.empty()) library_ = library;

  struct Required {
    const char* symbol;
    bool ok;
  };
  const Required required[] = {
      {"cuInit", bind(handle_, "cuInit", api_.init)},
      {"cuDriverGetVersion", bind(handle_, "cuDriverGetVersion", api_.driver_get_version)},
      {"cuDeviceGetCount", bind(handle_, "cuDeviceGetCount", api_.device_get_count)},
      {"cuDeviceGet", bind(handle_, "cuDeviceGet", api_.device_get)},
      {"cuDeviceGetName", bind(handle_, "cuDeviceGetName", api_.device_get_name)},
      {"cuDevicePrimaryCtxRetain", bind(handle_, "cuDevicePrimaryCtxRetain", api_.primary_ctx_retain)},
      {"cuCtxSetCurrent", bind(handle_, "cuCtxSetCurrent", api_.ctx_set_current)},
      {"cuCtxGetCurrent", bind(handle_, "cuCtxGetCurrent", api_.ctx_get_current)},
      {"cuCtxGetDevice", bind(handle_, "cuCtxGetDevice", api_.ctx_get_device)},
      {"cuMemAlloc_v2", bind(handle_, "cuMemAlloc_v2", api_.mem_alloc)},
      {"cuMemFree_v2", bind(handle_, "cuMemFree_v2", api_.mem_free)},
      {"cuMemHostRegister_v2", bind(handle_, "cuMemHostRegister_v2", api_.mem_host_register)},
      {"cuMemHostUnregister", bind(handle_, "cuMemHostUnregister", api_.mem_host_unregister)},
      {"cuStreamCreate", bind(handle_, "cuStreamCreate", api_.stream_create)},
      {"cuStreamDestroy_v2", bind(handle_, "cuStreamDestroy_v2", api_.stream_destroy)},
      {"cuStreamSynchronize", bind(handle_, "cuStreamSynchronize", api_.stream_synchronize)},
      {"cuStreamQuery", bind(handle_, "cuStreamQuery", api_.stream_query)},
      {"cuMemcpyAsync", bind(handle_, "cuMemcpyAsync", api_.memcpy_async)},
      {"cuEventCreate", bind(handle_, "cuEventCreate", api_.event_create)},
      {"cuEventRecord", bind(handle_, "cuEventRecord", api_.event_record)},
      {"cuEventQuery", bind(handle_, "cuEventQuery", api_.event_query)},
      {"cuEventSynchronize", bind(handle_, "cuEventSynchronize", api_.event_synchronize)},
      {"cuEventDestroy_v2", bind(handle_, "cuEventDestroy_v2", api_.event_destroy)},
      {"cuGetErrorName", bind(handle_, "cuGetErrorName", api_.get_error_name)},
      {"cuGetErrorString", bind(handle_, "cuGetErrorString", api_.get_error_string)},
  };
  for (const Required& r : required) {
    if (!r.ok) {
      reason_ = library_ + " does not export " + r.symbol + "; it is not a CUDA driver library kvtier can use";
      api_ = Api{};
      return;
    }
  }
  bind(handle_, "cuMemHostGetFlags", api_.mem_host_get_flags);
  bind(handle_, "cuPointerGetAttribute", api_.pointer_get_attribute);

  if (CUresult r = api_.init(0); r != CUDA_SUCCESS) {
    reason_ = "cuInit failed: " + describe(r);
    return;
  }
  api_.driver_get_version(&version_);
  int count = 0;
  if (CUresult r = api_.device_get_count(&count); r != CUDA_SUCCESS) {
    reason_ = "cuDeviceGetCount failed: " + describe(r);
    return;
  }
  if (count <= 0) {
    reason_ = "the CUDA driver (" + library_ + ") sees no device";
    return;
  }
  for (int i = 0; i < count; ++i) {
    CUdevice dev = 0;
    char name[256] = {0};
    if (api_.device_get(&dev, i) != CUDA_SUCCESS || api_.device_get_name(name, sizeof(name) - 1, dev) != CUDA_SUCCESS)
      names_.push_back("device " + std::to_string(i));
    else
      names_.emplace_back(name);
  }
  contexts_.assign(names_.size(), nullptr);

  // cuMemcpyBatchAsync: drivers >= 12.8 only, looked up with the ABI version Api declares.
  GetProcAddress get_proc = nullptr;
  if (version_ >= kBatchAbiVersion && bind(handle_, "cuGetProcAddress_v2", get_proc)) {
    void* fn = nullptr;
    int status = -1;
    if (get_proc("cuMemcpyBatchAsync", &fn, kBatchAbiVersion, 0, &status) == CUDA_SUCCESS &&
        status == CU_GET_PROC_ADDRESS_SUCCESS && fn != nullptr)
      api_.memcpy_batch = reinterpret_cast<decltype(api_.memcpy_batch)>(fn);
  }
}

Driver::~Driver() = default;

bool Driver::available() const {
  return reason_.empty() && static_cast<long>(getpid()) == pid_;
}

std::string Driver::reason() const {
  if (!reason_.empty()) return reason_;
  if (static_cast<long>(getpid()) != pid_)
    return "CUDA was initialised in a parent process before fork(); a forked child cannot use it "
           "(start worker processes with the 'spawn' method)";
  return "";
}

void Driver::require(int device) const {
  if (!available()) throw Unavailable("CUDA is not available: " + reason());
  if (device < 0 || device >= device_count())
    throw Unavailable("CUDA device " + std::to_string(device) + " does not exist: the driver sees " +
                      std::to_string(device_count()) + " device(s)");
}

std::string Driver::describe(CUresult r) const {
  const char* name = nullptr;
  const char* text = nullptr;
  if (api_.get_error_name == nullptr || api_.get_error_name(r, &name) != CUDA_SUCCESS || name == nullptr)
    return "CUDA error " + std::to_string(r);
  std::string out = name;
  if (api_.get_error_string(r, &text) == CUDA_SUCCESS && text != nullptr) out += std::string(" (") + text + ")";
  return out;
}

void Driver::check(CUresult r, const char* call) const {
  if (r != CUDA_SUCCESS) throw DriverError(r, std::string(call) + " failed: " + describe(r));
}

CUcontext Driver::primary_context(int device) {
  require(device);
  std::lock_guard<std::mutex> lock(mu_);
  CUcontext& ctx = contexts_[static_cast<std::size_t>(device)];
  if (ctx == nullptr) {
    CUdevice dev = 0;
    check(api_.device_get(&dev, device), "cuDeviceGet");
    check(api_.primary_ctx_retain(&ctx, dev), "cuDevicePrimaryCtxRetain");
  }
  return ctx;
}

Driver& driver() {
  // Never destroyed: arenas and streams may still be released while the process exits.
  static Driver* const d = new Driver("libcuda.so.1");
  return *d;
}

ContextGuard::ContextGuard(const Driver& d, CUcontext ctx) : d_(d) {
  d_.check(d_.api().ctx_get_current(&previous_), "cuCtxGetCurrent");
  if (previous_ != ctx) {
    d_.check(d_.api().ctx_set_current(ctx), "cuCtxSetCurrent");
    restore_ = true;
  }
}

ContextGuard::~ContextGuard() {
  if (restore_) d_.api().ctx_set_current(previous_);
}

}  // namespace kvtier::cuda
