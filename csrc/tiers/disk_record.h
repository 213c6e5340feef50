// The disk tier's index record: everything needed to put a block back into the index without
// reading its payload (docs/disk.md). Little-endian, fixed header then variable tail:
//
//   offset  size  field
//        0     4  magic "kvi1" (format version 1)
//        4     4  width: words per block (block_size tokens, or 2 for 64-bit block ids)
//        8     4  checksum of the payload (checksum.h)
//       12     4  payload length in bytes
//       16     8  last access, seconds since the Unix epoch (f64)
//       24     4  hits (LFU)
//       28     4  session length in bytes
//       32    32  namespace key
//       64    32  parent key (all zero for a prompt's first block)
//       96  4*w   the block's words
//   96+4*w     s  session (UTF-8)
//
// The block's own key is the record's LMDB key; it must equal chain_keys(namespace, parent, words).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/common.h"
#include "core/tree.h"

namespace kvtier {

inline constexpr char kRecordMagic[4] = {'k', 'v', 'i', '1'};
inline constexpr std::size_t kRecordHeader = 96;

struct DiskRecord {
  std::uint32_t width = 0;
  std::uint32_t checksum = 0;
  std::uint32_t length = 0;
  double wall_time = 0.0;
  std::uint32_t hits = 0;
  Key ns{};
  Key parent{};
  std::vector<Word> words;
  std::string session;
};

inline std::vector<std::uint8_t> encode_record(const DiskRecord& r) {
  std::vector<std::uint8_t> out(kRecordHeader + 4 * r.words.size() + r.session.size());
  std::uint8_t* p = out.data();
  const auto width = static_cast<std::uint32_t>(r.words.size());
  const auto slen = static_cast<std::uint32_t>(r.session.size());
  std::memcpy(p, kRecordMagic, 4);
  std::memcpy(p + 4, &width, 4);
  std::memcpy(p + 8, &r.checksum, 4);
  std::memcpy(p + 12, &r.length, 4);
  std::memcpy(p + 16, &r.wall_time, 8);
  std::memcpy(p + 24, &r.hits, 4);
  std::memcpy(p + 28, &slen, 4);
  std::memcpy(p + 32, r.ns.data(), 32);
  std::memcpy(p + 64, r.parent.data(), 32);
  if (width) std::memcpy(p + kRecordHeader, r.words.data(), 4 * width);
  if (slen) std::memcpy(p + kRecordHeader + 4 * width, r.session.data(), slen);
  return out;
}

// False if `data` is not a well-formed record.
inline bool decode_record(const std::uint8_t* p, std::size_t n, DiskRecord* r) {
  if (n < kRecordHeader || std::memcmp(p, kRecordMagic, 4) != 0) return false;
  std::uint32_t slen;
  std::memcpy(&r->width, p + 4, 4);
  std::memcpy(&r->checksum, p + 8, 4);
  std::memcpy(&r->length, p + 12, 4);
  std::memcpy(&r->wall_time, p + 16, 8);
  std::memcpy(&r->hits, p + 24, 4);
  std::memcpy(&slen, p + 28, 4);
  if (r->width == 0 || r->width > (1u << 20)) return false;
  if (n != kRecordHeader + 4ull * r->width + slen) return false;
  std::memcpy(r->ns.data(), p + 32, 32);
  std::memcpy(r->parent.data(), p + 64, 32);
  r->words.resize(r->width);
  std::memcpy(r->words.data(), p + kRecordHeader, 4ull * r->width);
  r->session.assign(reinterpret_cast<const char*>(p + kRecordHeader + 4ull * r->width), slen);
  return true;
}

}  // namespace kvtier
