// kvtier._core: what the store's binding files share — the Python-side store and pin objects, memory
// arguments (buffers and raw tensors' addresses), `now`, keys. Header-only; only csrc/bindings/ sees it.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "store/store.h"
#include "tokens.h"

namespace kvtier::bindings {

namespace py = pybind11;

inline constexpr double kNoTime = std::numeric_limits<double>::quiet_NaN();

// `now` from Python: None means "the store's clock decides" (NaN for the core); anything else must be a
// finite int or float (not bool, not str). Call with the GIL held, before releasing it.
inline double time_arg(py::handle now) {
  if (now.is_none()) return kNoTime;
  if (PyBool_Check(now.ptr()) || !(PyFloat_Check(now.ptr()) || PyLong_Check(now.ptr())))
    raise(Code::kTypeError, std::string("now must be a number of seconds or None, got ") + Py_TYPE(now.ptr())->tp_name);
  const double t = PyFloat_AsDouble(now.ptr());
  if (t == -1.0 && PyErr_Occurred()) {
    PyErr_Clear();  // an int too large for a double
    raise(Code::kInvalidArgument, "now must be a finite number of seconds, got an int beyond a double's range");
  }
  if (!std::isfinite(t)) raise(Code::kInvalidArgument, "now must be a finite number of seconds, got " + format_double(t));
  return t;
}

// A pinned prefix. Holds a reference to its store, so that the store outlives every pin (a pin can
// never be used on another store that happens to reuse the address).
struct PyPin {
  std::shared_ptr<Store> store;
  PinId pin;
  std::uint32_t blocks;  // host + disk
  bool active;
};

struct ByteView {
  std::uint8_t* data = nullptr;
  std::size_t bytes = 0;
  std::optional<py::buffer_info> info;
};

inline ByteView byte_view(py::handle obj, bool writable, const char* arg) {
  if (!PyObject_CheckBuffer(obj.ptr()))
    raise(Code::kTypeError, std::string(arg) + " must support the buffer protocol (a numpy array, bytearray or memoryview)");
  py::buffer buf = py::reinterpret_borrow<py::buffer>(obj);
  py::buffer_info info;
  try {
    info = buf.request(writable);
  } catch (py::error_already_set&) {
    raise(Code::kTypeError, std::string(arg) + (writable ? " must be writable" : " is not a readable buffer"));
  }
  const std::string fmt = info.format;
  if (fmt.find('O') != std::string::npos)
    raise(Code::kTypeError, std::string(arg) + " holds Python objects (dtype object); pass a numeric array");
  // C-contiguous check.
  py::ssize_t expect = info.itemsize;
  for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
    if (info.shape[d] > 1 && info.strides[d] != expect)
      raise(Code::kTypeError, std::string(arg) + " must be C-contiguous; pass numpy.ascontiguousarray(" + arg + ")");
    expect *= info.shape[d];
  }
  ByteView v;
  v.data = static_cast<std::uint8_t*>(info.ptr);
  v.bytes = static_cast<std::size_t>(info.size * info.itemsize);
  v.info.emplace(std::move(info));
  return v;
}

// Memory the facade describes from a caller's tensor (kvtier.kv_layout.as_tensor_view: CUDA memory, host
// tensors without the buffer protocol), holding the tensor for the call. A type of its own, so that no
// other Python object is ever taken for a raw address.
struct RawMemory {
  std::uint64_t address = 0;
  std::size_t bytes = 0;
  int device = -1;  // CUDA ordinal, -1 = host
};

// A payload or output argument: a buffer-protocol object or a RawMemory.
struct MemArg {
  Memory mem;
  std::size_t bytes = 0;
  ByteView view;  // keeps a host buffer alive
};

inline MemArg mem_arg(py::handle obj, bool writable, const char* arg) {
  MemArg m;
  if (py::isinstance<RawMemory>(obj)) {
    const RawMemory& r = obj.cast<const RawMemory&>();
    m.mem.data = reinterpret_cast<std::uint8_t*>(r.address);
    m.mem.device = r.device;
    m.bytes = r.bytes;
    return m;
  }
  m.view = byte_view(obj, writable, arg);
  m.mem.data = m.view.data;
  m.bytes = m.view.bytes;
  return m;
}

struct PyStore {
  std::shared_ptr<Store> store;
  bool ids;               // block ids instead of tokens
  std::uint64_t limit;    // exclusive bound on token ids

  Words words_of(py::handle tokens, const char* arg) const {
    Words w = ids ? id_words(tokens, arg) : token_words(tokens, limit, arg);
    return w;
  }
  std::size_t blocks_of(const Words& w) const { return w.count / store->spec().width; }
};

inline Key key_from(py::bytes b, const char* arg) {
  std::string s = b;
  if (s.size() != 32) raise(Code::kInvalidArgument, std::string(arg) + " must be 32 bytes, got " + std::to_string(s.size()));
  Key k;
  std::memcpy(k.data(), s.data(), 32);
  return k;
}

inline py::bytes key_bytes(const Key& k) { return py::bytes(reinterpret_cast<const char*>(k.data()), 32); }

inline std::vector<Key> keys_from_list(const py::list& keys, const char* arg) {
  std::vector<Key> out;
  out.reserve(keys.size());
  for (py::handle k : keys) out.push_back(key_from(py::reinterpret_borrow<py::bytes>(k), arg));
  return out;
}

// The pin's own checks (another store's, released by this thread); the core checks the pin's
// generation under its lock, which catches a release by another thread racing this call.
inline PyPin& active_pin(PyStore& s, PyPin& p) {
  if (p.store != s.store) raise(Code::kStalePin, "this pin belongs to another store");
  if (!p.active) raise(Code::kStalePin, "this pin was already released: match(..., pin=True) again");
  return p;
}

inline py::array_t<std::uint8_t> keys_array(const std::vector<Key>& keys) {
  py::array_t<std::uint8_t> out({static_cast<py::ssize_t>(keys.size()), py::ssize_t{32}});
  if (!keys.empty()) std::memcpy(out.mutable_data(), keys.data(), keys.size() * 32);
  return out;
}


// The binding files' parts of the module (module.cpp calls them in this order).
void bind_keys(py::module_& m);        // keys.cpp: BLAKE3, namespace and block keys, TokenSequence
void bind_spec(py::module_& m);        // spec.cpp: Policy and the spec structs
void bind_store(py::module_& m);       // store.cpp: Memory, Pin, Store (lookups, payloads, reporting)
void bind_store_disk(py::module_& m);  // store_disk.cpp: Store's disk-tier protocol calls
void bind_store_remote(py::module_& m);  // store_remote.cpp: the remote tier's demoter calls

}  // namespace kvtier::bindings
