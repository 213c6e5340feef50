#include "core/checksum.h"

#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define KVTIER_AVX2_SUM 1
#endif

namespace kvtier {
namespace {

constexpr std::uint64_t kSeed[8] = {
    0x9E3779B185EBCA87ull, 0xC2B2AE3D27D4EB4Full, 0x165667B19E3779F9ull, 0x85EBCA77C2B2AE63ull,
    0x27D4EB2F165667C5ull, 0xD6E8FEB86659FD93ull, 0xA0761D6478BD642Full, 0xE7037ED1A0B428DBull,
};
constexpr std::uint64_t kP1 = 0x8EBC6AF09C88C6E3ull;
constexpr std::uint64_t kP2 = 0x589965CC75374CC3ull;
constexpr std::uint64_t kP3 = 0x1D8E4E27C47D124Full;
constexpr std::size_t kStripe = 64;
constexpr std::size_t kChunk = 4096;  // copy chunk: a multiple of kStripe that stays in L1

inline std::uint64_t load64(const std::uint8_t* p) {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// Accumulates `n` bytes (a multiple of kStripe): the portable path.
void accumulate_scalar(std::uint64_t* acc, const std::uint8_t* p, std::size_t n) {
  std::uint64_t a[8];
  for (int j = 0; j < 8; ++j) a[j] = acc[j];
  for (std::size_t i = 0; i < n; i += kStripe) {
    for (int j = 0; j < 8; ++j) {
      const std::uint64_t w = load64(p + i + 8 * j);
      const std::uint64_t x = w ^ kSeed[j];
      a[j] += static_cast<std::uint64_t>(static_cast<std::uint32_t>(x)) * static_cast<std::uint32_t>(x >> 32);
      a[j ^ 1] += w;
    }
  }
  for (int j = 0; j < 8; ++j) acc[j] = a[j];
}

#if defined(KVTIER_AVX2_SUM)
// The same arithmetic, four lanes per instruction.
__attribute__((target("avx2"))) void accumulate_avx2(std::uint64_t* acc, const std::uint8_t* p, std::size_t n) {
  __m256i a0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc));
  __m256i a1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + 4));
  const __m256i k0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kSeed));
  const __m256i k1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kSeed + 4));
  for (std::size_t i = 0; i < n; i += kStripe) {
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 32));
    const __m256i x0 = _mm256_xor_si256(w0, k0), x1 = _mm256_xor_si256(w1, k1);
    a0 = _mm256_add_epi64(a0, _mm256_mul_epu32(x0, _mm256_srli_epi64(x0, 32)));
    a1 = _mm256_add_epi64(a1, _mm256_mul_epu32(x1, _mm256_srli_epi64(x1, 32)));
    // acc[j ^ 1] += w[j]: swap the two 64-bit words of each 128-bit half.
    a0 = _mm256_add_epi64(a0, _mm256_shuffle_epi32(w0, 0x4E));
    a1 = _mm256_add_epi64(a1, _mm256_shuffle_epi32(w1, 0x4E));
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc), a0);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + 4), a1);
}

// Copies and accumulates in one pass. Large copies use streaming stores (no read of the destination
// lines before writing them, and no eviction of the caller's cache for data it reads later), as
// memcpy does at these sizes. `n` is a multiple of kStripe.
__attribute__((target("avx2"))) void copy_accumulate_avx2(std::uint64_t* acc, std::uint8_t* dst,
                                                          const std::uint8_t* src, std::size_t n) {
  __m256i a0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc));
  __m256i a1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + 4));
  const __m256i k0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kSeed));
  const __m256i k1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kSeed + 4));
  const bool stream = n >= (256u << 10) && (reinterpret_cast<std::uintptr_t>(dst) & 31) == 0;
  for (std::size_t i = 0; i < n; i += kStripe) {
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 32));
    if (stream) {
      _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i), w0);
      _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i + 32), w1);
    } else {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), w0);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i + 32), w1);
    }
    const __m256i x0 = _mm256_xor_si256(w0, k0), x1 = _mm256_xor_si256(w1, k1);
    a0 = _mm256_add_epi64(a0, _mm256_mul_epu32(x0, _mm256_srli_epi64(x0, 32)));
    a1 = _mm256_add_epi64(a1, _mm256_mul_epu32(x1, _mm256_srli_epi64(x1, 32)));
    a0 = _mm256_add_epi64(a0, _mm256_shuffle_epi32(w0, 0x4E));
    a1 = _mm256_add_epi64(a1, _mm256_shuffle_epi32(w1, 0x4E));
  }
  if (stream) _mm_sfence();
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc), a0);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + 4), a1);
}
#endif

bool have_avx2() {
#if defined(KVTIER_AVX2_SUM)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  return avx2;
#else
  return false;
#endif
}

void accumulate(std::uint64_t* acc, const std::uint8_t* p, std::size_t n) {
#if defined(KVTIER_AVX2_SUM)
  if (have_avx2()) return accumulate_avx2(acc, p, n);
#endif
  accumulate_scalar(acc, p, n);
}

inline std::uint64_t mix(std::uint64_t v) { return ((v ^ (v >> 33)) * kP3) ^ (v >> 29); }

std::uint32_t finish(std::uint64_t* acc, const std::uint8_t* tail, std::size_t tail_n, std::size_t n) {
  if (tail_n) {
    std::uint8_t last[kStripe] = {};
    std::memcpy(last, tail, tail_n);
    accumulate(acc, last, kStripe);
  }
  std::uint64_t h = static_cast<std::uint64_t>(n) * kP1;
  for (int j = 0; j < 8; ++j) h = (h ^ mix(acc[j])) * kP2;
  return static_cast<std::uint32_t>(h ^ (h >> 29));
}

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the checksum reads words little-endian");

}  // namespace

std::uint32_t block_checksum(const std::uint8_t* p, std::size_t n) {
  std::uint64_t acc[8];
  std::memcpy(acc, kSeed, sizeof acc);
  const std::size_t body = n - n % kStripe;
  accumulate(acc, p, body);
  return finish(acc, p + body, n - body, n);
}

std::uint32_t block_checksum_portable(const std::uint8_t* p, std::size_t n) {
  std::uint64_t acc[8];
  std::memcpy(acc, kSeed, sizeof acc);
  const std::size_t body = n - n % kStripe;
  accumulate_scalar(acc, p, body);
  if (n > body) {
    std::uint8_t last[kStripe] = {};
    std::memcpy(last, p + body, n - body);
    accumulate_scalar(acc, last, kStripe);
  }
  return finish(acc, nullptr, 0, n);
}

std::uint32_t copy_with_checksum(std::uint8_t* dst, const std::uint8_t* src, std::size_t n) {
  std::uint64_t acc[8];
  std::memcpy(acc, kSeed, sizeof acc);
  const std::size_t body = n - n % kStripe;
#if defined(KVTIER_AVX2_SUM)
  if (have_avx2()) {
    copy_accumulate_avx2(acc, dst, src, body);
    if (n > body) std::memcpy(dst + body, src + body, n - body);
    return finish(acc, src + body, n - body, n);
  }
#endif
  for (std::size_t i = 0; i < body; i += kChunk) {
    const std::size_t len = body - i < kChunk ? body - i : kChunk;
    std::memcpy(dst + i, src + i, len);
    accumulate(acc, dst + i, len);
  }
  if (n > body) std::memcpy(dst + body, src + body, n - body);
  return finish(acc, src + body, n - body, n);
}

}  // namespace kvtier
