// kvtier._core: token ids from Python objects (TokenSequence, integer buffers, lists) as 32-bit words,
// checked against the vocabulary. Shared by the binding files; header-only.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "core/common.h"

namespace kvtier::bindings {

namespace py = pybind11;

[[noreturn]] inline void raise(Code code, const std::string& msg) { throw Error(code, msg); }

// An append-only token buffer for a request in flight: engines extend it as tokens arrive, so a
// lookup never converts the whole prompt from a Python list again.
class TokenSequence {
 public:
  explicit TokenSequence(std::uint64_t limit) : limit_(limit) {}
  std::vector<Word> words;
  std::uint64_t limit() const { return limit_; }

 private:
  std::uint64_t limit_;
};

// A contiguous view of 32-bit words taken from a Python object; owns a converted copy when needed.
struct Words {
  const Word* data = nullptr;
  std::size_t count = 0;  // words
  std::vector<Word> owned;
  std::optional<py::buffer_info> info;  // released with the GIL held (destroyed before return)
  py::object keep;                      // an array whose memory `data` points into
};

// True if some p[i] >= limit (an unsigned compare, so negative int32 ids count as too large).
// Branch-free so it vectorises; an AVX2 clone is picked at load time on x86-64.
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("avx2", "default")))
#endif
inline bool any_at_or_above(const Word* p, std::size_t n, std::uint64_t limit) {
  if (limit > 0xFFFFFFFFull) return false;
  const Word lim = static_cast<Word>(limit);
  unsigned bad = 0;
  for (std::size_t i = 0; i < n; ++i) bad |= static_cast<unsigned>(p[i] >= lim);
  return bad != 0;
}

inline void check_value(long long v, std::size_t i, std::uint64_t limit, const char* arg) {
  if (v < 0)
    raise(Code::kInvalidArgument, std::string(arg) + "[" + std::to_string(i) + "] = " + std::to_string(v) +
                                      " is negative; ids must be >= 0");
  if (static_cast<unsigned long long>(v) >= limit)
    raise(Code::kInvalidArgument, std::string(arg) + "[" + std::to_string(i) + "] = " + std::to_string(v) +
                                      " is out of range: ids must be below " + std::to_string(limit) +
                                      " (vocab_size)");
}

template <class T>
inline void convert_tokens(const void* src, std::size_t n, std::uint64_t limit, const char* arg, Words& w) {
  const T* p = static_cast<const T*>(src);
  w.owned.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    if constexpr (sizeof(T) == 8 && !std::is_signed_v<T>)
      if (p[i] >= limit)
        raise(Code::kInvalidArgument, std::string(arg) + "[" + std::to_string(i) + "] = " + std::to_string(p[i]) +
                                          " is out of range: ids must be below " + std::to_string(limit) + " (vocab_size)");
    const long long v = static_cast<long long>(p[i]);
    if (v < 0 || static_cast<unsigned long long>(v) >= limit) check_value(v, i, limit, arg);
    w.owned[i] = static_cast<Word>(v);
  }
  w.data = w.owned.data();
  w.count = n;
}

// The buffer of `obj`, or a kvtier type error for one the buffer protocol cannot describe (numpy's
// datetime64 and timedelta64 arrays refuse it with a ValueError).
inline py::buffer_info request_buffer(py::handle obj, const char* arg) {
  try {
    return py::reinterpret_borrow<py::buffer>(obj).request();
  } catch (py::error_already_set& e) {
    raise(Code::kTypeError, std::string(arg) + " must hold integer ids; its buffer cannot be read (" + e.what() + ")");
  }
}

// bytes and bytearray hold raw bytes or encoded text, never token ids: refused rather than read as uint8 ids
// (str is refused by the converters themselves).
inline void refuse_bytes(py::handle obj, const char* arg, const char* expected) {
  if (PyBytes_Check(obj.ptr()) || PyByteArray_Check(obj.ptr()))
    raise(Code::kTypeError, std::string(arg) + " must be " + expected + ", got " + Py_TYPE(obj.ptr())->tp_name +
                                " (raw bytes are not ids; tokenize text first)");
}

// Token ids from a TokenSequence, a 1-D integer buffer (numpy array, memoryview, array.array) or a
// list/tuple of ints. Checks every id against [0, limit).
inline Words token_words(py::handle obj, std::uint64_t limit, const char* arg) {
  Words w;
  refuse_bytes(obj, arg, "a 1-D integer array, a list of ints or a TokenSequence");
  if (py::isinstance<TokenSequence>(obj)) {
    auto& seq = obj.cast<TokenSequence&>();
    if (seq.limit() > limit)
      raise(Code::kInvalidArgument, std::string(arg) + ": this TokenSequence allows ids up to " +
                                        std::to_string(seq.limit()) + ", above this store's vocab_size");
    w.data = seq.words.data();
    w.count = seq.words.size();
    return w;
  }
  if (PyObject_CheckBuffer(obj.ptr())) {
    py::buffer_info info = request_buffer(obj, arg);
    if (info.ndim != 1)
      raise(Code::kTypeError, std::string(arg) + " must be 1-D, got " + std::to_string(info.ndim) + " dimensions");
    if (info.shape[0] > 1 && info.strides[0] != info.itemsize)
      raise(Code::kTypeError, std::string(arg) + " must be contiguous; pass numpy.ascontiguousarray(" + arg + ")");
    const std::string fmt = info.format;
    const char f = fmt.empty() ? '?' : fmt.back();
    const auto n = static_cast<std::size_t>(info.shape[0]);
    if (fmt.size() == 2 && (fmt[0] == '>' || fmt[0] == '!'))
      raise(Code::kTypeError, std::string(arg) + " is big-endian (format '" + fmt + "'); pass " + arg +
                                  ".astype(numpy.int32) in native byte order");
    const bool is_int = std::string("bBhHiIlLqQ").find(f) != std::string::npos && fmt.size() <= 2;
    if (!is_int)
      raise(Code::kTypeError, std::string(arg) + " must hold integer token ids, got buffer format '" + fmt + "'" +
                                  (f == 'f' || f == 'd' || f == 'e' ? " (floating point)" : ""));
    if ((f == 'i' || f == 'I' || ((f == 'l' || f == 'L') && info.itemsize == 4)) && info.itemsize == 4) {
      // Zero-copy path: check the range in one pass, report the first offender.
      const Word* p = static_cast<const Word*>(info.ptr);
      const bool is_signed = (f == 'i' || f == 'l');
      // Signed ids: negative values read as >= 2**31 unsigned, so the bound is at most 2**31.
      const std::uint64_t bound = is_signed ? std::min<std::uint64_t>(limit, 1ull << 31) : limit;
      if (any_at_or_above(p, n, bound)) {
        for (std::size_t i = 0; i < n; ++i)
          if (p[i] >= bound)
            check_value(is_signed ? static_cast<long long>(static_cast<std::int32_t>(p[i])) : p[i], i, limit, arg);
      }
      w.data = p;
      w.count = n;
      w.info.emplace(std::move(info));
      return w;
    }
    switch (info.itemsize) {
      case 1: (f == 'b') ? convert_tokens<std::int8_t>(info.ptr, n, limit, arg, w)
                         : convert_tokens<std::uint8_t>(info.ptr, n, limit, arg, w); break;
      case 2: (f == 'h') ? convert_tokens<std::int16_t>(info.ptr, n, limit, arg, w)
                         : convert_tokens<std::uint16_t>(info.ptr, n, limit, arg, w); break;
      case 8: (f == 'l' || f == 'q') ? convert_tokens<std::int64_t>(info.ptr, n, limit, arg, w)
                                     : convert_tokens<std::uint64_t>(info.ptr, n, limit, arg, w); break;
      default: raise(Code::kTypeError, std::string(arg) + ": unsupported integer size");
    }
    return w;
  }
  if (py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj)) {
    py::sequence seq = py::reinterpret_borrow<py::sequence>(obj);
    const std::size_t n = py::len(seq);
    w.owned.resize(n);
    PyObject* const* items = py::isinstance<py::list>(obj) ? PySequence_Fast_ITEMS(obj.ptr())
                                                            : PySequence_Fast_ITEMS(obj.ptr());
    for (std::size_t i = 0; i < n; ++i) {
      PyObject* it = items[i];
      if (PyBool_Check(it) || PyFloat_Check(it) || !PyIndex_Check(it))
        raise(Code::kTypeError, std::string(arg) + "[" + std::to_string(i) + "] must be an int, got " +
                                    Py_TYPE(it)->tp_name);
      int overflow = 0;
      long long v;
      if (PyLong_Check(it)) {
        v = PyLong_AsLongLongAndOverflow(it, &overflow);
      } else {  // numpy integers and other __index__ types
        py::object as_int = py::reinterpret_steal<py::object>(PyNumber_Index(it));
        if (!as_int) throw py::error_already_set();
        v = PyLong_AsLongLongAndOverflow(as_int.ptr(), &overflow);
      }
      if (overflow != 0) raise(Code::kInvalidArgument, std::string(arg) + "[" + std::to_string(i) + "] is out of range");
      if (v < 0 || static_cast<unsigned long long>(v) >= limit) check_value(v, i, limit, arg);
      w.owned[i] = static_cast<Word>(v);
    }
    w.data = w.owned.data();
    w.count = n;
    return w;
  }
  raise(Code::kTypeError, std::string(arg) + " must be a 1-D integer array, a list of ints or a TokenSequence, got " +
                              std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
}

// Engine block ids (64-bit) as pairs of words, little-endian.
inline Words id_words(py::handle obj, const char* arg) {
  Words w;
  refuse_bytes(obj, arg, "a 1-D array of integer block ids");
  if (py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj)) {
    // Element by element: numpy would turn a list mixing ids below and above 2**63 into float64.
    py::sequence seq = py::reinterpret_borrow<py::sequence>(obj);
    const std::size_t n = py::len(seq);
    w.owned.resize(2 * n);
    for (std::size_t i = 0; i < n; ++i) {
      PyObject* it = PySequence_Fast_ITEMS(obj.ptr())[i];
      if (PyBool_Check(it) || PyFloat_Check(it) || !PyIndex_Check(it))
        raise(Code::kTypeError, std::string(arg) + "[" + std::to_string(i) + "] must be an int, got " + Py_TYPE(it)->tp_name);
      py::object v = py::reinterpret_steal<py::object>(PyNumber_Index(it));
      if (!v) throw py::error_already_set();
      if (PyObject_RichCompareBool(v.ptr(), py::int_(0).ptr(), Py_LT) == 1)
        raise(Code::kInvalidArgument, std::string(arg) + "[" + std::to_string(i) + "] = " +
                                          std::string(py::str(v)) + " is negative; block ids must be >= 0");
      const unsigned long long u = PyLong_AsUnsignedLongLong(v.ptr());
      if (PyErr_Occurred()) {
        PyErr_Clear();
        raise(Code::kInvalidArgument, std::string(arg) + "[" + std::to_string(i) + "] = " + std::string(py::str(v)) +
                                          " does not fit in 64 bits");
      }
      w.owned[2 * i] = static_cast<Word>(u);
      w.owned[2 * i + 1] = static_cast<Word>(u >> 32);
    }
    w.data = w.owned.data();
    w.count = 2 * n;
    return w;
  }
  py::array arr;
  if (py::isinstance<py::array>(obj)) {
    arr = py::reinterpret_borrow<py::array>(obj);
  } else if (PyObject_CheckBuffer(obj.ptr())) {
    arr = py::array::ensure(obj);
    if (!arr) raise(Code::kTypeError, std::string(arg) + " must be a 1-D array of integer block ids");
  } else {
    raise(Code::kTypeError, std::string(arg) + " must be a 1-D array of integer block ids");
  }
  const char kind = arr.dtype().kind();
  if (kind != 'i' && kind != 'u')
    raise(Code::kTypeError, std::string(arg) + " must hold integer block ids, got dtype " +
                                std::string(py::str(arr.dtype())));
  if (arr.ndim() != 1) raise(Code::kTypeError, std::string(arg) + " must be 1-D");
  const auto n = static_cast<std::size_t>(arr.shape(0));
  py::array_t<std::int64_t, py::array::forcecast> as64;
  if (kind == 'i') {
    as64 = py::array_t<std::int64_t, py::array::forcecast>::ensure(arr);
    const std::int64_t* p = as64.data();
    for (std::size_t i = 0; i < n; ++i)
      if (p[i] < 0)
        raise(Code::kInvalidArgument, std::string(arg) + "[" + std::to_string(i) + "] = " + std::to_string(p[i]) +
                                          " is negative; block ids must be >= 0");
  }
  // A contiguous 64-bit array (checked non-negative above) is used in place: on a little-endian
  // machine each id already is the (low, high) pair of words the tree compares.
  auto u = py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast>::ensure(arr);
  w.data = reinterpret_cast<const Word*>(u.data());
  w.count = 2 * n;
  w.keep = std::move(u);
  return w;
}

}  // namespace kvtier::bindings
