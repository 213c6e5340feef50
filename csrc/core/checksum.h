// Payload checksums ("kvtier block checksum v1"), fast enough to verify every block read from disk
// while copying it (a CRC instruction chain is not: it runs slower than memory).
//
//   the payload is read as 64-byte stripes of eight little-endian u64 words w[0..7]
//   (the last, partial stripe is zero-padded); for each stripe and lane j:
//       x       = w[j] XOR K[j]
//       acc[j] += (x mod 2^32) * (x div 2^32)       (a 32 x 32 -> 64-bit product)
//       acc[j XOR 1] += w[j]                        (the word itself, so no input is lost to x = 0)
//   acc starts as K; the result folds the eight accumulators and the length:
//       h = len * P1;  for j: h = (h XOR mix(acc[j])) * P2;  return (h XOR h >> 29) mod 2^32
//   with mix(v) = (v XOR v >> 33) * P3 XOR (v >> 29), and K, P1..P3 the odd constants in checksum.cpp.
//
// The accumulate step is the one of XXH3 (a public design); the constants and the fold are ours.
// It detects corruption (bit flips, torn or shifted writes, zeroed pages), not tampering. Loops are
// written so the compiler vectorises them (an AVX2 clone is picked at load time on x86-64); every
// path computes the same value.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvtier {

// The block checksum described above.
std::uint32_t block_checksum(const std::uint8_t* p, std::size_t n);

// The same value computed without SIMD (tests compare the two paths).
std::uint32_t block_checksum_portable(const std::uint8_t* p, std::size_t n);

// Copies `n` bytes from `src` to `dst` (not overlapping) and returns block_checksum of them. The copy
// runs in chunks that stay in the L1 cache and the checksum reads them back from there, so memory
// is read and written once.
std::uint32_t copy_with_checksum(std::uint8_t* dst, const std::uint8_t* src, std::size_t n);

}  // namespace kvtier
