#include "core/keys.h"

#include <cstring>

#include "hash/blake3.h"

namespace kvtier {
namespace {

void put_le32(std::uint8_t* p, std::uint32_t v) {
  p[0] = static_cast<std::uint8_t>(v);
  p[1] = static_cast<std::uint8_t>(v >> 8);
  p[2] = static_cast<std::uint8_t>(v >> 16);
  p[3] = static_cast<std::uint8_t>(v >> 24);
}

}  // namespace

Key namespace_key(const std::vector<std::string>& fields) {
  blake3::Hasher h = blake3::Hasher::derive_key(kNamespaceContext);
  for (const std::string& f : fields) {
    std::uint8_t len[4];
    put_le32(len, static_cast<std::uint32_t>(f.size()));
    h.update(len, 4);
    h.update(f.data(), f.size());
  }
  Key out;
  h.finalize(out.data(), out.size());
  return out;
}

void chain_keys(const Key& ns_key, const Key* parent, const Word* words, std::size_t n_blocks,
                std::uint32_t width, const std::uint8_t* extra, std::size_t extra_len, Key* out) {
  // Nothing to hash: no buffer either (its size follows `width`, which a caller may set to any
  // block size; 2**31 tokens would otherwise allocate 8 GiB to hash zero blocks).
  if (n_blocks == 0) return;
  // One message buffer reused for every block: parent || le32(extra_len) || extra || tokens.
  std::vector<std::uint8_t> msg(32 + 4 + extra_len + static_cast<std::size_t>(width) * 4);
  std::uint8_t* p = msg.data();
  if (parent != nullptr)
    std::memcpy(p, parent->data(), 32);
  else
    std::memset(p, 0, 32);
  put_le32(p + 32, static_cast<std::uint32_t>(extra_len));
  if (extra_len != 0) std::memcpy(p + 36, extra, extra_len);
  std::uint8_t* tok = p + 36 + extra_len;
  for (std::size_t b = 0; b < n_blocks; ++b) {
    const Word* w = words + b * width;
    for (std::uint32_t i = 0; i < width; ++i) put_le32(tok + 4 * i, w[i]);
    blake3::keyed_hash(ns_key.data(), msg.data(), msg.size(), out[b].data());
    std::memcpy(p, out[b].data(), 32);
  }
}

}  // namespace kvtier
