// Block keys: the chained, namespace-keyed hash that names a block across processes and nodes.
//
//   ns_key  = BLAKE3-derive_key("kvtier namespace v1", fields)          (32 bytes)
//   key_i   = BLAKE3-keyed(ns_key, key_{i-1} || le32(len(extra)) || extra || le32(token) * block_size)
//   key_{-1} = 32 zero bytes
//
// `fields` is the concatenation, in the fixed order tenant, model, revision, tokenizer, kv_dtype,
// kv_layout, block_size (decimal), of le32(len(utf8)) || utf8. docs/keys.md has golden vectors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/common.h"
#include "core/tree.h"

namespace kvtier {

inline constexpr const char* kNamespaceContext = "kvtier namespace v1";

// True for the all-zero key (the "parent" of a prompt's first block).
inline bool is_zero_key(const Key& k) {
  for (std::uint8_t b : k)
    if (b) return false;
  return true;
}

// The 32-byte namespace key of the given fields (in the order documented above).
Key namespace_key(const std::vector<std::string>& fields);

// Keys of `n_blocks` consecutive blocks of `width` words each, chained from `parent`
// (nullptr for the first block of a prompt). Writes n_blocks keys to `out`.
void chain_keys(const Key& ns_key, const Key* parent, const Word* words, std::size_t n_blocks,
                std::uint32_t width, const std::uint8_t* extra, std::size_t extra_len, Key* out);

}  // namespace kvtier
