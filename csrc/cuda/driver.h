// The CUDA driver, found at run time: dlopen("libcuda.so.1") into a table of the few driver calls kvtier makes.
//
// No CUDA header or library is needed to build. The types and constants below are declared from the public
// driver API reference (the ABI of cuda.h, CUDA 12.x); the functions are looked up by their ABI names (the
// `_v2` variants where cuda.h maps a name onto one), and cuMemcpyBatchAsync, which only drivers >= 12.8 have,
// through cuGetProcAddress. Without the library, or without a device, everything here reports CUDA as
// unavailable with a sentence saying why; nothing aborts.
//
// Contexts: kvtier uses each device's *primary* context (the one the CUDA runtime, hence PyTorch, uses), so
// memory and streams are shared with PyTorch in the same process. A primary context is retained once and kept
// for the life of the process, like the runtime does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvtier::cuda {

// ------------------------------------------------------------------------------------------ driver API types
using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;  // CUdeviceptr_v2: 64 bits on every 64-bit platform
using cuuint64_t = std::uint64_t;
struct CUctx_st;
using CUcontext = CUctx_st*;
struct CUstream_st;
using CUstream = CUstream_st*;
struct CUevent_st;
using CUevent = CUevent_st*;

inline constexpr CUresult CUDA_SUCCESS = 0;
inline constexpr CUresult CUDA_ERROR_INVALID_VALUE = 1;
inline constexpr CUresult CUDA_ERROR_OUT_OF_MEMORY = 2;
inline constexpr CUresult CUDA_ERROR_NOT_INITIALIZED = 3;
inline constexpr CUresult CUDA_ERROR_NO_DEVICE = 100;
inline constexpr CUresult CUDA_ERROR_INVALID_CONTEXT = 201;
inline constexpr CUresult CUDA_ERROR_NOT_READY = 600;
inline constexpr CUresult CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED = 713;
inline constexpr CUresult CUDA_ERROR_NOT_SUPPORTED = 801;

inline constexpr unsigned CU_STREAM_NON_BLOCKING = 0x1;
inline constexpr unsigned CU_EVENT_DISABLE_TIMING = 0x2;
inline constexpr unsigned CU_MEMHOSTREGISTER_PORTABLE = 0x1;
inline constexpr int CU_POINTER_ATTRIBUTE_MEMORY_TYPE = 2;
inline constexpr int CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL = 9;
inline constexpr unsigned CU_MEMORYTYPE_HOST = 1;
inline constexpr unsigned CU_MEMORYTYPE_DEVICE = 2;
inline constexpr int CU_MEMCPY_SRC_ACCESS_ORDER_STREAM = 1;
inline constexpr int CU_GET_PROC_ADDRESS_SUCCESS = 0;

// CUmemLocation and CUmemcpyAttributes_v1 (CUDA 12.8).
struct MemLocation {
  int type;  // CUmemLocationType; 0 = invalid (no hint)
  int id;
};
struct MemcpyAttributes {
  int src_access_order;  // CUmemcpySrcAccessOrder
  MemLocation src_loc_hint;
  MemLocation dst_loc_hint;
  unsigned flags;  // CUmemcpyFlags
};
static_assert(sizeof(MemLocation) == 8 && sizeof(MemcpyAttributes) == 24, "CUmemcpyAttributes_v1 ABI");

// The driver calls kvtier uses. All required ones are non-null once a Driver is available(); `memcpy_batch`
// is null where the driver has no cuMemcpyBatchAsync (before 12.8), `mem_host_get_flags` and
// `pointer_get_attribute` are informational.
struct Api {
  CUresult (*init)(unsigned flags);
  CUresult (*driver_get_version)(int* version);
  CUresult (*device_get_count)(int* count);
  CUresult (*device_get)(CUdevice* device, int ordinal);
  CUresult (*device_get_name)(char* name, int len, CUdevice device);
  CUresult (*primary_ctx_retain)(CUcontext* ctx, CUdevice device);
  CUresult (*ctx_set_current)(CUcontext ctx);
  CUresult (*ctx_get_current)(CUcontext* ctx);
  CUresult (*ctx_get_device)(CUdevice* device);
  CUresult (*mem_alloc)(CUdeviceptr* ptr, std::size_t bytes);
  CUresult (*mem_free)(CUdeviceptr ptr);
  CUresult (*mem_host_register)(void* p, std::size_t bytes, unsigned flags);
  CUresult (*mem_host_unregister)(void* p);
  CUresult (*stream_create)(CUstream* stream, unsigned flags);
  CUresult (*stream_destroy)(CUstream stream);
  CUresult (*stream_synchronize)(CUstream stream);
  CUresult (*stream_query)(CUstream stream);
  CUresult (*memcpy_async)(CUdeviceptr dst, CUdeviceptr src, std::size_t bytes, CUstream stream);
  CUresult (*event_create)(CUevent* event, unsigned flags);
  CUresult (*event_record)(CUevent event, CUstream stream);
  CUresult (*event_query)(CUevent event);
  CUresult (*event_synchronize)(CUevent event);
  CUresult (*event_destroy)(CUevent event);
  CUresult (*get_error_name)(CUresult error, const char** name);
  CUresult (*get_error_string)(CUresult error, const char** text);
  // Optional.
  CUresult (*memcpy_batch)(CUdeviceptr* dsts, CUdeviceptr* srcs, std::size_t* sizes, std::size_t count,
                           MemcpyAttributes* attrs, std::size_t* attr_idxs, std::size_t num_attrs,
                           std::size_t* fail_idx, CUstream stream);
  CUresult (*mem_host_get_flags)(unsigned* flags, void* p);
  CUresult (*pointer_get_attribute)(void* data, int attribute, CUdeviceptr ptr);
};

// ------------------------------------------------------------------------------------------ errors
// CUDA is needed but cannot be used here; what() says what is missing. Mapped to kvtier.CudaUnavailableError.
class Unavailable : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A driver call failed; what() names the call, the driver's error name and its description. Mapped to
// kvtier.CudaError.
class DriverError : public std::runtime_error {
 public:
  DriverError(CUresult code, const std::string& message) : std::runtime_error(message), code_(code) {}
  CUresult code() const noexcept { return code_; }

 private:
  CUresult code_;
};

// ------------------------------------------------------------------------------------------ the driver
class Driver {
 public:
  // Loads `library` (a file name searched like dlopen does, or a path) and initialises CUDA. Never throws:
  // a failure leaves available() false and reason() saying why.
  explicit Driver(const std::string& library);
  ~Driver();  // keeps the library loaded (unloading a CUDA driver under live contexts is unsafe)
  Driver(const Driver&) = delete;
  Driver& operator=(const Driver&) = delete;

  // True when the library loaded, exports every required call, cuInit succeeded, at least one device is
  // present, and this is the process that initialised it (CUDA does not survive fork()).
  bool available() const;
  // Why available() is false ("" when it is true).
  std::string reason() const;
  const std::string& library() const { return library_; }  // the file actually loaded ("" if none)
  int version() const { return version_; }                  // e.g. 12080 for CUDA 12.8; 0 if unknown
  int device_count() const { return static_cast<int>(names_.size()); }
  const std::string& device_name(int ordinal) const { return names_.at(static_cast<std::size_t>(ordinal)); }
  bool has_batch() const { return api_.memcpy_batch != nullptr; }

  // Precondition: available().
  const Api& api() const { return api_; }

  // Throws Unavailable unless available() and 0 <= device < device_count(); the message names what is missing.
  void require(int device) const;

  // Throws DriverError("<call> failed: CUDA_ERROR_X (description)") unless r == CUDA_SUCCESS.
  void check(CUresult r, const char* call) const;
  std::string describe(CUresult r) const;  // "CUDA_ERROR_X (description)"

  // The device's primary context, retained on first use and kept for the life of the process.
  // Throws Unavailable / DriverError.
  CUcontext primary_context(int device);

 private:
  std::string library_;
  std::string reason_;
  void* handle_ = nullptr;
  Api api_{};
  int version_ = 0;
  long pid_ = 0;
  std::vector<std::string> names_;
  std::mutex mu_;
  std::vector<CUcontext> contexts_;  // per device; null until retained
};

// The process's driver, libcuda.so.1, loaded on first call (not at import). Never throws.
Driver& driver();

// Makes `ctx` current on the calling thread for the guard's scope and restores the previous context after, so
// kvtier never changes what PyTorch finds current. Throws DriverError if the context cannot be made current.
class ContextGuard {
 public:
  ContextGuard(const Driver& d, CUcontext ctx);
  ~ContextGuard();
  ContextGuard(const ContextGuard&) = delete;
  ContextGuard& operator=(const ContextGuard&) = delete;

 private:
  const Driver& d_;
  CUcontext previous_ = nullptr;
  bool restore_ = false;
};

}  // namespace kvtier::cuda
