#include "checksum.h"

#include <array>
#include <cstring>

namespace kvtier {
namespace {

constexpr std::uint32_t kPoly = 0x82F63B78u;  // CRC32C, reflected

struct Tables {
  std::array<std::array<std::uint32_t, 256>, 8> t{};  // slicing-by-8
  Tables() {
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ ((c & 1u) ? kPoly : 0u);
      t[0][i] = c;
    }
    for (std::uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFFu];
  }
};
const Tables& tables() {
  static const Tables t;
  return t;
}

inline std::uint64_t load64(const std::uint8_t* p) {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

inline std::uint32_t sw_byte(std::uint32_t c, std::uint8_t b) {
  return (c >> 8) ^ tables().t[0][(c ^ b) & 0xFFu];
}
inline std::uint32_t sw_word(std::uint32_t c, std::uint64_t w) {
  const auto& t = tables().t;
  const std::uint64_t x = w ^ c;
  return t[7][x & 0xFF] ^ t[6][(x >> 8) & 0xFF] ^ t[5][(x >> 16) & 0xFF] ^ t[4][(x >> 24) & 0xFF] ^
         t[3][(x >> 32) & 0xFF] ^ t[2][(x >> 40) & 0xFF] ^ t[1][(x >> 48) & 0xFF] ^ t[0][x >> 56];
}

struct Portable {
  static std::uint32_t word(std::uint32_t c, std::uint64_t w) { return sw_word(c, w); }
  static std::uint32_t byte(std::uint32_t c, std::uint8_t b) { return sw_byte(c, b); }
};

#if defined(__x86_64__) && defined(__GNUC__)
#define KVTIER_HW_CRC 1
struct Hardware {
  __attribute__((target("sse4.2"))) static std::uint32_t word(std::uint32_t c, std::uint64_t w) {
    return static_cast<std::uint32_t>(__builtin_ia32_crc32di(c, w));
  }
  __attribute__((target("sse4.2"))) static std::uint32_t byte(std::uint32_t c, std::uint8_t b) {
    return __builtin_ia32_crc32qi(c, b);
  }
};
#endif

// One pass over `src`: four lanes of 8-byte words, optionally storing each word to `dst`.
template <class Crc, bool kCopy>
#if defined(KVTIER_HW_CRC)
__attribute__((target("sse4.2")))
#endif
std::uint32_t lanes(std::uint8_t* dst, const std::uint8_t* src, std::size_t n) {
  std::uint32_t c0 = 0xFFFFFFFFu, c1 = c0, c2 = c0, c3 = c0;
  std::size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const std::uint64_t w0 = load64(src + i), w1 = load64(src + i + 8), w2 = load64(src + i + 16),
                        w3 = load64(src + i + 24);
    if constexpr (kCopy) {
      std::memcpy(dst + i, &w0, 8);
      std::memcpy(dst + i + 8, &w1, 8);
      std::memcpy(dst + i + 16, &w2, 8);
      std::memcpy(dst + i + 24, &w3, 8);
    }
    c0 = Crc::word(c0, w0);
    c1 = Crc::word(c1, w1);
    c2 = Crc::word(c2, w2);
    c3 = Crc::word(c3, w3);
  }
  for (; i < n; ++i) {
    if constexpr (kCopy) dst[i] = src[i];
    c0 = Crc::byte(c0, src[i]);
  }
  std::uint8_t tail[24];
  const std::uint32_t lane[4] = {~c0, ~c1, ~c2, ~c3};
  std::memcpy(tail, lane, 16);
  const std::uint64_t len = n;
  std::memcpy(tail + 16, &len, 8);
  std::uint32_t c = 0xFFFFFFFFu;
  for (int k = 0; k < 3; ++k) c = Crc::word(c, load64(tail + 8 * k));
  return ~c;
}

bool g_portable = false;

bool have_hw() {
#if defined(KVTIER_HW_CRC)
  static const bool has = __builtin_cpu_supports("sse4.2");
  return has && !g_portable;
#else
  return false;
#endif
}

}  // namespace

std::uint32_t crc32c(const std::uint8_t* p, std::size_t n) {
  std::uint32_t c = 0xFFFFFFFFu;
  std::size_t i = 0;
#if defined(KVTIER_HW_CRC)
  if (have_hw()) {
    for (; i + 8 <= n; i += 8) c = Hardware::word(c, load64(p + i));
    for (; i < n; ++i) c = Hardware::byte(c, p[i]);
    return ~c;
  }
#endif
  for (; i + 8 <= n; i += 8) c = sw_word(c, load64(p + i));
  for (; i < n; ++i) c = sw_byte(c, p[i]);
  return ~c;
}

std::uint32_t block_checksum(const std::uint8_t* p, std::size_t n) {
#if defined(KVTIER_HW_CRC)
  if (have_hw()) return lanes<Hardware, false>(nullptr, p, n);
#endif
  return lanes<Portable, false>(nullptr, p, n);
}

std::uint32_t copy_with_checksum(std::uint8_t* dst, const std::uint8_t* src, std::size_t n) {
#if defined(KVTIER_HW_CRC)
  if (have_hw()) return lanes<Hardware, true>(dst, src, n);
#endif
  return lanes<Portable, true>(dst, src, n);
}

void checksum_force_portable(bool on) { g_portable = on; }
bool checksum_hardware() { return have_hw(); }

}  // namespace kvtier
