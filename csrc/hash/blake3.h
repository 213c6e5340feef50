// BLAKE3 cryptographic hash: portable C++20 implementation written from the
// public specification ("BLAKE3: one function, fast everywhere", O'Connor,
// Aumasson, Neves, Wilcox-O'Hearn, 2020; referred to below as "the spec").
//
// Supported:
//   * the three modes of the spec section 2.3 / table 3: hash, keyed_hash and
//     derive_key;
//   * arbitrary input lengths fed incrementally (1024-byte chunks, binary
//     tree of parent nodes, spec sections 2.1, 2.4 and 5.1.2);
//   * arbitrary output lengths (extendable output, spec section 2.6).
//
// This is a straightforward scalar implementation: one compression at a
// time, no SIMD and no multithreading. It is meant for short messages (the
// kvtier hot path is a keyed hash of ~100-byte messages, i.e. a single chunk
// of two 64-byte blocks) and for occasional longer inputs.
//
// Thread safety: a Hasher is a plain value type; distinct Hashers can be used
// concurrently, a single Hasher must not be updated concurrently.
// Heap: nothing here allocates.

#ifndef KVTIER_CSRC_HASH_BLAKE3_H_
#define KVTIER_CSRC_HASH_BLAKE3_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace kvtier::blake3 {

// Key length of keyed_hash mode, in bytes (spec section 2.3).
inline constexpr std::size_t kKeyLen = 32;
// Default output length, in bytes (256 bits). Longer or shorter outputs are
// available through Hasher::finalize; a shorter output is a prefix of a
// longer one (spec section 2.6).
inline constexpr std::size_t kOutLen = 32;
// Block length in bytes: the unit of one compression (spec section 2.2).
inline constexpr std::size_t kBlockLen = 64;
// Chunk length in bytes: the leaves of the hash tree (spec section 2.4).
inline constexpr std::size_t kChunkLen = 1024;

class Hasher {
 public:
  // Plain hash mode: the key words are the IV, no mode flag.
  Hasher();

  // keyed_hash mode. `key` points to exactly kKeyLen (32) bytes, read as
  // eight little-endian 32-bit words. The key is copied; the caller's buffer
  // need not outlive the call.
  static Hasher keyed(const std::uint8_t key[kKeyLen]);

  // derive_key mode (spec section 2.3). `context` is the application's
  // context string (should be hardcoded, globally unique and
  // application-specific; any bytes are accepted). It is hashed here with
  // the DERIVE_KEY_CONTEXT flag to form the context key; the key material is
  // then fed through update() and hashed with the DERIVE_KEY_MATERIAL flag.
  static Hasher derive_key(std::string_view context);

  // Absorbs `len` bytes at `data`. May be called any number of times with any
  // lengths (including 0; `data` may be null iff len == 0); the result only
  // depends on the concatenation of all inputs. Total input must stay below
  // 2^64 bytes (the chunk counter is 64-bit, spec section 2.2).
  void update(const void* data, std::size_t len);

  // Writes `out_len` bytes of output to `out` (extendable output: any length,
  // including 0 and lengths beyond 64 bytes). Does not modify the state, so
  // it may be called repeatedly and update() may continue afterwards.
  // `out` must point to at least `out_len` writable bytes.
  void finalize(std::uint8_t* out, std::size_t out_len) const;

  // Maximum depth of the chaining-value stack. Inputs are < 2^64 bytes, i.e.
  // < 2^54 chunks, and the stack holds one CV per set bit of the number of
  // completed chunks (spec section 5.1.2), hence 54 entries.
  static constexpr std::size_t kMaxDepth = 54;

 private:
  Hasher(const std::uint32_t key_words[8], std::uint32_t flags);

  // Compresses one complete block of the current chunk, read from `block`
  // (64 bytes), that is known not to be the chunk's last block.
  void compress_chunk_block(const std::uint8_t* block);
  // Absorbs `n` bytes into the current chunk; 0 < n <= kChunkLen - chunk_len().
  void chunk_update(const std::uint8_t* p, std::size_t n);
  // Pushes the CV of a completed chunk, merging subtrees first (the "lazy
  // merge" of spec section 5.1.2). `total_chunks` counts completed chunks
  // including this one.
  void push_chunk_cv(std::uint32_t cv[8], std::uint64_t total_chunks);
  // Number of input bytes absorbed by the current chunk so far.
  std::size_t chunk_len() const {
    return std::size_t{blocks_compressed_} * kBlockLen + block_len_;
  }

  // Key words: the IV, the user key, or the derived context key.
  std::uint32_t key_[8];
  // Mode flag: 0, KEYED_HASH or DERIVE_KEY_MATERIAL (and DERIVE_KEY_CONTEXT
  // internally while hashing the context string).
  std::uint32_t flags_;

  // --- State of the current chunk (spec section 2.4) ---
  std::uint32_t chunk_cv_[8];      // running chaining value within the chunk
  std::uint64_t chunk_counter_;    // index of the current chunk (t)
  std::uint8_t block_[kBlockLen];  // buffered, not-yet-compressed block bytes
  std::uint8_t block_len_;         // bytes used in block_, 0..64
  std::uint8_t blocks_compressed_; // full blocks of this chunk compressed, 0..15

  // --- Chaining-value stack of completed subtrees (spec section 5.1.2) ---
  std::uint8_t cv_stack_len_;
  std::uint32_t cv_stack_[kMaxDepth][8];
};

// One-shot keyed hash: out = BLAKE3-keyed_hash(key, data[0..len)), 32 bytes.
// `key` is kKeyLen bytes, `out` kOutLen writable bytes; `data` may be null iff
// len == 0. Inputs of up to one chunk (1024 bytes) take a fast path that never
// builds a full Hasher.
void keyed_hash(const std::uint8_t key[kKeyLen], const void* data,
                std::size_t len, std::uint8_t out[kOutLen]);

}  // namespace kvtier::blake3

#endif  // KVTIER_CSRC_HASH_BLAKE3_H_
