// Payload checksums: CRC32C (Castagnoli) over four interleaved lanes, fused with the copy.
//
//   bytes  [w0 w1 w2 w3 | w4 w5 w6 w7 | ...]   8-byte little-endian words
//   lane j = CRC32C of words j, j+4, j+8, ...   (the last n % 32 bytes go to lane 0, byte-wise)
//   sum    = CRC32C of le32(lane0) le32(lane1) le32(lane2) le32(lane3) le64(n)
//
// Four independent lanes let the CPU overlap the CRC instruction's latency, so checking a block
// while copying it runs at memory speed. Each lane starts at 0xFFFFFFFF and is inverted at the end
// (standard CRC32C), so `crc32c` of one buffer matches every CRC32C implementation.
// Hardware CRC instructions are used where the CPU has them (SSE4.2), a table otherwise; both
// give the same value (tests check it).
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvtier {

// Standard CRC32C of `n` bytes (check value: crc32c("123456789") == 0xE3069283).
std::uint32_t crc32c(const std::uint8_t* p, std::size_t n);

// The block checksum described above.
std::uint32_t block_checksum(const std::uint8_t* p, std::size_t n);

// Copies `n` bytes from `src` to `dst` (not overlapping) and returns block_checksum of them.
std::uint32_t copy_with_checksum(std::uint8_t* dst, const std::uint8_t* src, std::size_t n);

// Forces the table implementation (tests compare it with the hardware path). Not thread-safe.
void checksum_force_portable(bool on);
bool checksum_hardware();

}  // namespace kvtier
