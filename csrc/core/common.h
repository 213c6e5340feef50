// Shared vocabulary of the core: word type, sentinels, typed errors and assertions.
// Nothing here includes Python headers; the bindings map `Error::code` to exception classes.
#pragma once

#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace kvtier {

// One 32-bit unit of block content: a token id, or a 32-bit piece of an engine block id.
using Word = std::uint32_t;

inline constexpr std::uint32_t kNil = 0xFFFFFFFFu;

// What kind of user mistake an Error is. The bindings map each to one Python exception class.
enum class Code {
  kInvalidArgument,  // a value out of range or inconsistent      -> ValueError
  kTypeError,        // wrong dtype, not contiguous, wrong kind   -> TypeError
  kClosed,           // the store was closed                       -> RuntimeError
  kNotFound,         // an unknown namespace, handle or key        -> KeyError
  kCapacity,         // a request that cannot fit the tier         -> MemoryError-like (ValueError)
  kStalePin,         // a pin already released, or not this store's -> PinError (ValueError)
};

// The one exception type thrown by the core for user errors. Internal bugs abort (KVTIER_ASSERT).
class Error : public std::runtime_error {
 public:
  Error(Code code, const std::string& message) : std::runtime_error(message), code_(code) {}
  Code code() const noexcept { return code_; }

 private:
  Code code_;
};

// Shortest text that reads back as `v` ("1.5", "1e+300", "nan", "inf"). Uses std::to_chars, not iostreams or
// printf: no locale is consulted, so a module that links libstdc++ statically never touches another copy's facets.
inline std::string format_double(double v) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

[[noreturn]] inline void assert_fail(const char* expr, const char* file, int line) {
  std::fprintf(stderr, "kvtier: internal invariant violated: %s (%s:%d)\n", expr, file, line);
  std::abort();
}

}  // namespace kvtier

// Always-on check of a cheap invariant. A failure is a bug in kvtier, never a user error.
#define KVTIER_ASSERT(expr) \
  ((expr) ? static_cast<void>(0) : ::kvtier::assert_fail(#expr, __FILE__, __LINE__))

// Debug-only check of an expensive invariant.
#ifdef KVTIER_DEBUG
#define KVTIER_DASSERT(expr) KVTIER_ASSERT(expr)
#else
#define KVTIER_DASSERT(expr) static_cast<void>(0)
#endif
