// kvtier._core: the one pybind11 module. Each binding file adds one concern (store_types.h lists them);
// this file maps kvtier::Error codes and the CUDA driver's errors to the exception classes of kvtier.errors,
// once (the module's one exception translator).
#include "cuda/driver.h"
#include "store_types.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "block ids are read as (low, high) 32-bit words");

void bind_disk_functions(pybind11::module_& m);  // bindings/disk.cpp
void bind_copy(pybind11::module_& m);            // bindings/copy.cpp
namespace kvtier::bindings {
void bind_store_keys(pybind11::module_& m);      // bindings/store_keys.cpp: lookups by key
}

PYBIND11_MODULE(_core, m) {
  using namespace kvtier;
  namespace py = pybind11;
  m.doc() = "kvtier's C++ core. Private: use the kvtier package.";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const cuda::Unavailable& e) {
      py::object exc = py::module_::import("kvtier.errors").attr("CudaUnavailableError");
      PyErr_SetString(exc.ptr(), e.what());
    } catch (const cuda::DriverError& e) {
      py::object exc = py::module_::import("kvtier.errors").attr("CudaError");
      PyErr_SetString(exc.ptr(), e.what());
    } catch (const Error& e) {
      const char* cls = "InvalidArgumentError";
      switch (e.code()) {
        case Code::kInvalidArgument: cls = "InvalidArgumentError"; break;
        case Code::kTypeError: cls = "KvtierTypeError"; break;
        case Code::kClosed: cls = "StoreClosedError"; break;
        case Code::kNotFound: cls = "UnknownNamespaceError"; break;
        case Code::kCapacity: cls = "CapacityError"; break;
        case Code::kStalePin: cls = "PinError"; break;
      }
      py::object exc = py::module_::import("kvtier.errors").attr(cls);
      PyErr_SetString(exc.ptr(), e.what());
    }
  });

  bind_disk_functions(m);
  bind_copy(m);
  bindings::bind_keys(m);
  bindings::bind_spec(m);
  bindings::bind_store(m);
  bindings::bind_store_disk(m);
  bindings::bind_store_remote(m);
  bindings::bind_store_keys(m);
}
