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

#include <cmath>
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

// Whether `s` is well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, at most U+10FFFF).
inline bool valid_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  for (std::size_t i = 0; i < n;) {
    const unsigned c = p[i];
    std::size_t len;
    unsigned lo = 0x80, hi = 0xBF;  // the range of the second byte
    if (c < 0x80) len = 1;
    else if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (std::size_t k = 1; k < len; ++k) {
      const unsigned b = p[i + k];
      if (b < (k == 1 ? lo : 0x80u) || b > (k == 1 ? hi : 0xBFu)) return false;
    }
    i += len;
  }
  return true;
}

// False if `data` is not a well-formed record (a session that is not UTF-8 text, a time that is not finite).
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
  return std::isfinite(r->wall_time) && valid_utf8(r->session);
}

}  // namespace kvtier
