// BLAKE3, portable scalar implementation written from the specification
// ("BLAKE3: one function, fast everywhere", version 2020-01-09; "the spec").
// See blake3.h for the interface. Section numbers below refer to the spec.
//
// Conventions: all words are 32-bit, all multi-byte quantities are
// little-endian (spec section 2.2), lengths are in bytes unless stated.

#include "blake3.h"

#include <algorithm>
#include <bit>
#include <cstring>

namespace kvtier::blake3 {
namespace {

// ---------------------------------------------------------------------------
// Constants (spec section 2.1, table 1 and section 2.2, table 3).
// ---------------------------------------------------------------------------

// IV: the same constants as SHA-256's initial hash value.
constexpr std::uint32_t kIV[8] = {
    0x6A09E667u, 0xBB67AE85u, 0x3C6EF372u, 0xA54FF53Au,
    0x510E527Fu, 0x9B05688Cu, 0x1F83D9ABu, 0x5BE0CD19u,
};

// Domain-separation flags, the `d` input of the compression function.
constexpr std::uint32_t kChunkStart = 1u << 0;
constexpr std::uint32_t kChunkEnd = 1u << 1;
constexpr std::uint32_t kParent = 1u << 2;
constexpr std::uint32_t kRoot = 1u << 3;
constexpr std::uint32_t kKeyedHash = 1u << 4;
constexpr std::uint32_t kDeriveKeyContext = 1u << 5;
constexpr std::uint32_t kDeriveKeyMaterial = 1u << 6;

constexpr int kRounds = 7;

// Message word permutation applied between rounds (spec section 2.2,
// table 2): after permuting, word i is the previous round's word kPerm[i].
constexpr std::uint8_t kPerm[16] = {2, 6,  3,  10, 7, 0,  4,  13,
                                    1, 11, 12, 5,  9, 14, 15, 8};

// Rather than physically permuting the 16 message words 6 times per
// compression, precompute which original word each round reads at each
// position: kSchedule[r][i] = index into the original block of the word used
// as m[i] in round r. Round 0 is the identity; round r applies kPerm once
// more on top of round r-1.
struct Schedule {
  std::uint8_t s[kRounds][16];
};

constexpr Schedule make_schedule() {
  Schedule sch{};
  for (int i = 0; i < 16; ++i) sch.s[0][i] = static_cast<std::uint8_t>(i);
  for (int r = 1; r < kRounds; ++r) {
    for (int i = 0; i < 16; ++i) sch.s[r][i] = sch.s[r - 1][kPerm[i]];
  }
  return sch;
}

constexpr Schedule kSchedule = make_schedule();

// Sanity checks of the schedule against the spec's permutation.
static_assert(kSchedule.s[1][0] == 2 && kSchedule.s[1][15] == 8);
static_assert(kSchedule.s[2][0] == 3 && kSchedule.s[2][1] == 4);

// ---------------------------------------------------------------------------
// Little-endian loads and stores (portable; compilers fuse these into single
// loads/stores on little-endian targets).
// ---------------------------------------------------------------------------

inline std::uint32_t load32(const std::uint8_t* p) {
  return static_cast<std::uint32_t>(p[0]) |
         (static_cast<std::uint32_t>(p[1]) << 8) |
         (static_cast<std::uint32_t>(p[2]) << 16) |
         (static_cast<std::uint32_t>(p[3]) << 24);
}

inline void store32(std::uint8_t* p, std::uint32_t w) {
  p[0] = static_cast<std::uint8_t>(w);
  p[1] = static_cast<std::uint8_t>(w >> 8);
  p[2] = static_cast<std::uint8_t>(w >> 16);
  p[3] = static_cast<std::uint8_t>(w >> 24);
}

// Reads a full 64-byte block as 16 message words.
inline void load_block(const std::uint8_t* p, std::uint32_t m[16]) {
  for (int i = 0; i < 16; ++i) m[i] = load32(p + 4 * i);
}

// Reads a block of `len` <= 64 bytes, zero-padded to 64 bytes (spec section
// 2.4: the last block of a chunk is padded with zeros; its true length is
// passed separately as the block length b).
inline void load_block_padded(const std::uint8_t* p, std::size_t len,
                              std::uint32_t m[16]) {
  std::uint8_t buf[kBlockLen] = {};
  if (len > 0) std::memcpy(buf, p, len);
  load_block(buf, m);
}

// Reads a 32-byte key or chaining value as 8 words.
inline void load_key(const std::uint8_t* p, std::uint32_t k[8]) {
  for (int i = 0; i < 8; ++i) k[i] = load32(p + 4 * i);
}

// ---------------------------------------------------------------------------
// Compression function (spec section 2.2).
// ---------------------------------------------------------------------------

// The quarter-round G: mixes one column or diagonal of the 4x4 state with two
// message words. Rotation distances 16, 12, 8, 7 (right rotations).
inline void g(std::uint32_t& a, std::uint32_t& b, std::uint32_t& c,
              std::uint32_t& d, std::uint32_t mx, std::uint32_t my) {
  a = a + b + mx;
  d = std::rotr(d ^ a, 16);
  c = c + d;
  b = std::rotr(b ^ c, 12);
  a = a + b + my;
  d = std::rotr(d ^ a, 8);
  c = c + d;
  b = std::rotr(b ^ c, 7);
}

// One round: G on the four columns, then on the four diagonals, with message
// words taken per the precomputed schedule for round R. R is a template
// parameter so all indices are compile-time constants and the state stays in
// registers.
template <int R>
inline void round_fn(std::uint32_t v[16], const std::uint32_t m[16]) {
  constexpr const std::uint8_t* s = kSchedule.s[R];
  // Columns.
  g(v[0], v[4], v[8], v[12], m[s[0]], m[s[1]]);
  g(v[1], v[5], v[9], v[13], m[s[2]], m[s[3]]);
  g(v[2], v[6], v[10], v[14], m[s[4]], m[s[5]]);
  g(v[3], v[7], v[11], v[15], m[s[6]], m[s[7]]);
  // Diagonals.
  g(v[0], v[5], v[10], v[15], m[s[8]], m[s[9]]);
  g(v[1], v[6], v[11], v[12], m[s[10]], m[s[11]]);
  g(v[2], v[7], v[8], v[13], m[s[12]], m[s[13]]);
  g(v[3], v[4], v[9], v[14], m[s[14]], m[s[15]]);
}

// Initializes the 16-word state and runs the 7 rounds; the caller applies the
// output feed-forward.
//   cv:        input chaining value h (8 words)
//   m:         message block (16 words)
//   counter:   t, 64-bit (chunk index, or output block index for the root)
//   block_len: b, number of meaningful bytes in the block, 0..64
//   flags:     d, the domain-separation flags
inline void compress_rounds(const std::uint32_t cv[8], const std::uint32_t m[16],
                            std::uint64_t counter, std::uint32_t block_len,
                            std::uint32_t flags, std::uint32_t v[16]) {
  v[0] = cv[0];
  v[1] = cv[1];
  v[2] = cv[2];
  v[3] = cv[3];
  v[4] = cv[4];
  v[5] = cv[5];
  v[6] = cv[6];
  v[7] = cv[7];
  v[8] = kIV[0];
  v[9] = kIV[1];
  v[10] = kIV[2];
  v[11] = kIV[3];
  v[12] = static_cast<std::uint32_t>(counter);
  v[13] = static_cast<std::uint32_t>(counter >> 32);
  v[14] = block_len;
  v[15] = flags;
  round_fn<0>(v, m);
  round_fn<1>(v, m);
  round_fn<2>(v, m);
  round_fn<3>(v, m);
  round_fn<4>(v, m);
  round_fn<5>(v, m);
  round_fn<6>(v, m);
}

// Compression truncated to 8 words, the new chaining value:
// cv'[i] = v[i] ^ v[i+8]. Updates `cv` in place.
inline void compress_in_place(std::uint32_t cv[8], const std::uint32_t m[16],
                              std::uint64_t counter, std::uint32_t block_len,
                              std::uint32_t flags) {
  std::uint32_t v[16];
  compress_rounds(cv, m, counter, block_len, flags, v);
  for (int i = 0; i < 8; ++i) cv[i] = v[i] ^ v[i + 8];
}

// Full 16-word compression output used for extendable output (spec section
// 2.6): out[i] = v[i] ^ v[i+8], out[i+8] = v[i+8] ^ cv[i], for i < 8.
inline void compress_xof(const std::uint32_t cv[8], const std::uint32_t m[16],
                         std::uint64_t counter, std::uint32_t block_len,
                         std::uint32_t flags, std::uint32_t out[16]) {
  std::uint32_t v[16];
  compress_rounds(cv, m, counter, block_len, flags, v);
  for (int i = 0; i < 8; ++i) {
    out[i] = v[i] ^ v[i + 8];
    out[i + 8] = v[i + 8] ^ cv[i];
  }
}

// ---------------------------------------------------------------------------
// Output of a node (a chunk's last block, or a parent node) whose role --
// interior node or root -- is not decided yet (spec sections 2.5, 2.6).
// ---------------------------------------------------------------------------
struct Output {
  std::uint32_t cv[8];   // input chaining value
  std::uint32_t m[16];   // block words (zero-padded)
  std::uint64_t counter; // chunk index (0 for parents)
  std::uint32_t block_len;
  std::uint32_t flags;   // without kRoot

  // As an interior node: the 8-word chaining value, no ROOT flag.
  void chaining_value(std::uint32_t out[8]) const {
    std::copy(cv, cv + 8, out);
    compress_in_place(out, m, counter, block_len, flags);
  }

  // As the root: `out_len` bytes of extendable output. The root node is
  // compressed with ROOT set and the counter t replaced by the output block
  // index 0, 1, 2, ...; each compression yields 64 output bytes.
  void root_bytes(std::uint8_t* out, std::size_t out_len) const {
    std::uint64_t block_index = 0;
    std::uint32_t words[16];
    while (out_len > 0) {
      compress_xof(cv, m, block_index, block_len, flags | kRoot, words);
      const std::size_t take = std::min(out_len, kBlockLen);
      if (take == kBlockLen) {
        for (int i = 0; i < 16; ++i) store32(out + 4 * i, words[i]);
      } else {
        std::uint8_t buf[kBlockLen];
        for (int i = 0; i < 16; ++i) store32(buf + 4 * i, words[i]);
        std::memcpy(out, buf, take);
      }
      out += take;
      out_len -= take;
      ++block_index;
    }
  }
};

// A parent node (spec section 2.5): block = left CV || right CV, key words as
// the input chaining value, counter 0, block length 64, PARENT flag.
Output parent_output(const std::uint32_t left[8], const std::uint32_t right[8],
                     const std::uint32_t key[8], std::uint32_t mode_flags) {
  Output o;
  std::copy(key, key + 8, o.cv);
  std::copy(left, left + 8, o.m);
  std::copy(right, right + 8, o.m + 8);
  o.counter = 0;
  o.block_len = static_cast<std::uint32_t>(kBlockLen);
  o.flags = mode_flags | kParent;
  return o;
}

}  // namespace

// ---------------------------------------------------------------------------
// Hasher
// ---------------------------------------------------------------------------

Hasher::Hasher() : Hasher(kIV, 0) {}

Hasher::Hasher(const std::uint32_t key_words[8], std::uint32_t flags)
    : key_{},
      flags_(flags),
      chunk_cv_{},
      chunk_counter_(0),
      block_{},
      block_len_(0),
      blocks_compressed_(0),
      cv_stack_len_(0),
      cv_stack_{} {
  std::copy(key_words, key_words + 8, key_);
  std::copy(key_words, key_words + 8, chunk_cv_);
}

Hasher Hasher::keyed(const std::uint8_t key[kKeyLen]) {
  std::uint32_t k[8];
  load_key(key, k);
  return Hasher(k, kKeyedHash);
}

Hasher Hasher::derive_key(std::string_view context) {
  // Spec section 2.3: context key = hash(context string) with the IV as key
  // and DERIVE_KEY_CONTEXT; then key material is hashed with the context key
  // as key and DERIVE_KEY_MATERIAL.
  Hasher ctx(kIV, kDeriveKeyContext);
  ctx.update(context.data(), context.size());
  std::uint8_t context_key[kKeyLen];
  ctx.finalize(context_key, kKeyLen);
  std::uint32_t k[8];
  load_key(context_key, k);
  return Hasher(k, kDeriveKeyMaterial);
}

void Hasher::compress_chunk_block(const std::uint8_t* block) {
  // Spec section 2.4: every block of chunk number t uses counter t; the first
  // block of a chunk carries CHUNK_START. Called only for non-final blocks,
  // so CHUNK_END is never set here.
  std::uint32_t m[16];
  load_block(block, m);
  const std::uint32_t flags =
      flags_ | (blocks_compressed_ == 0 ? kChunkStart : 0u);
  compress_in_place(chunk_cv_, m, chunk_counter_,
                    static_cast<std::uint32_t>(kBlockLen), flags);
  ++blocks_compressed_;
}

void Hasher::chunk_update(const std::uint8_t* p, std::size_t n) {
  // Invariant: a block is compressed only once we know more bytes follow in
  // the same chunk, because the chunk's last block needs CHUNK_END (and
  // possibly ROOT). So up to 64 bytes (even a full block) stay buffered.
  if (block_len_ > 0) {
    const std::size_t fill = std::min(kBlockLen - block_len_, n);
    std::memcpy(block_ + block_len_, p, fill);
    block_len_ = static_cast<std::uint8_t>(block_len_ + fill);
    p += fill;
    n -= fill;
    if (n == 0) return;  // buffered block may still be the last one
    // The buffer is full and more bytes follow: it is not the last block.
    compress_chunk_block(block_);
    block_len_ = 0;
  }
  // Buffer empty: compress full blocks straight from the input while more
  // than one block remains, then buffer the tail (1..64 bytes).
  while (n > kBlockLen) {
    compress_chunk_block(p);
    p += kBlockLen;
    n -= kBlockLen;
  }
  std::memcpy(block_, p, n);
  block_len_ = static_cast<std::uint8_t>(n);
}

void Hasher::push_chunk_cv(std::uint32_t cv[8], std::uint64_t total_chunks) {
  // Spec section 5.1.2: after completing chunk number total_chunks-1, merge
  // one completed subtree from the stack for every trailing zero bit of
  // total_chunks (each such bit means two equal-sized subtrees are now
  // adjacent), then push the result. The stack length thus always equals
  // popcount(total_chunks). Merging is lazy: it happens only when a chunk is
  // completed *and* more input follows, so the rightmost path of the tree is
  // never merged prematurely (the root must get the ROOT flag instead).
  while ((total_chunks & 1) == 0) {
    --cv_stack_len_;
    parent_output(cv_stack_[cv_stack_len_], cv, key_, flags_)
        .chaining_value(cv);
    total_chunks >>= 1;
  }
  std::copy(cv, cv + 8, cv_stack_[cv_stack_len_]);
  ++cv_stack_len_;
}

void Hasher::update(const void* data, std::size_t len) {
  if (len == 0) return;
  const auto* in = static_cast<const std::uint8_t*>(data);
  while (len > 0) {
    if (chunk_len() == kChunkLen) {
      // The current chunk is complete and more input follows, so it is not
      // the root: finish it (its buffered 16th block gets CHUNK_END), push
      // its CV, and start chunk number chunk_counter_+1.
      std::uint32_t m[16];
      load_block(block_, m);
      std::uint32_t cv[8];
      std::copy(chunk_cv_, chunk_cv_ + 8, cv);
      compress_in_place(cv, m, chunk_counter_,
                        static_cast<std::uint32_t>(kBlockLen),
                        flags_ | kChunkEnd);
      const std::uint64_t total_chunks = chunk_counter_ + 1;
      push_chunk_cv(cv, total_chunks);
      std::copy(key_, key_ + 8, chunk_cv_);
      chunk_counter_ = total_chunks;
      block_len_ = 0;
      blocks_compressed_ = 0;
    }
    const std::size_t take = std::min(kChunkLen - chunk_len(), len);
    chunk_update(in, take);
    in += take;
    len -= take;
  }
}

void Hasher::finalize(std::uint8_t* out, std::size_t out_len) const {
  // Output of the current (last) chunk: its buffered final block, zero-padded,
  // with CHUNK_END, plus CHUNK_START if it is also the first block. This also
  // covers empty input: one empty block with both flags (spec section 2.4).
  Output o;
  std::copy(chunk_cv_, chunk_cv_ + 8, o.cv);
  load_block_padded(block_, block_len_, o.m);
  o.counter = chunk_counter_;
  o.block_len = block_len_;
  o.flags = flags_ | kChunkEnd | (blocks_compressed_ == 0 ? kChunkStart : 0u);
  // Fold the stack from the top (most recent, smallest subtree) down to the
  // bottom: each step makes the running output the right child of a parent
  // node. The final node is the root (spec section 5.1.2).
  for (std::size_t i = cv_stack_len_; i > 0; --i) {
    std::uint32_t right[8];
    o.chaining_value(right);
    o = parent_output(cv_stack_[i - 1], right, key_, flags_);
  }
  o.root_bytes(out, out_len);
}

// ---------------------------------------------------------------------------
// One-shot keyed hash.
// ---------------------------------------------------------------------------

void keyed_hash(const std::uint8_t key[kKeyLen], const void* data,
                std::size_t len, std::uint8_t out[kOutLen]) {
  if (len > kChunkLen) {
    Hasher h = Hasher::keyed(key);
    h.update(data, len);
    h.finalize(out, kOutLen);
    return;
  }
  // Fast path: the whole input is a single chunk (counter 0), which is then
  // also the root. The first 32 bytes of root output (output block 0) equal
  // the truncated compression of the last block with ROOT set.
  std::uint32_t cv[8];
  load_key(key, cv);
  const auto* p = static_cast<const std::uint8_t*>(data);
  std::uint32_t m[16];
  std::uint32_t start = kChunkStart;
  while (len > kBlockLen) {
    load_block(p, m);
    compress_in_place(cv, m, 0, static_cast<std::uint32_t>(kBlockLen),
                      kKeyedHash | start);
    start = 0;
    p += kBlockLen;
    len -= kBlockLen;
  }
  if (len == kBlockLen) {
    load_block(p, m);
  } else {
    load_block_padded(p, len, m);
  }
  compress_in_place(cv, m, 0, static_cast<std::uint32_t>(len),
                    kKeyedHash | start | kChunkEnd | kRoot);
  for (int i = 0; i < 8; ++i) store32(out + 4 * i, cv[i]);
}

}  // namespace kvtier::blake3
