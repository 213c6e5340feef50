// What a store is made of: block geometry and one spec per tier. These structs are the whole
// configuration that crosses from Python (bound as kvtier._core.StoreSpec and friends); their
// defaults are the only defaults of these fields, and validate() is the only place their values and
// combinations are checked (kvtier.config calls it at construction, the Store constructor again).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "core/common.h"

namespace kvtier {

enum class Policy : std::uint8_t { kLRU = 0, kLFU = 1, kTTL = 2 };

struct TierSpec {
  std::uint64_t capacity_bytes = 0;   // payload bytes; 0 = unlimited (metadata-only stores' host tier only)
  Policy policy = Policy::kLRU;
  std::optional<double> ttl_s;        // maximum idle seconds; none = no TTL
  double ttl() const { return ttl_s.value_or(0.0); }  // 0 = no TTL
};

// The disk tier's shape. The folder itself (LMDB) is driven from Python; the core keeps the index,
// the queue and the policies.
struct DiskSpec : TierSpec {
  bool enabled = false;
  bool write_through = false;         // false: write-back (host evictions demote)
  std::uint32_t queue_blocks = 64;    // blocks queued for the writer before inserts wait
};

// The device tier's shape: a pool of GPU block slots above the host tier. It is inclusive: every
// device block also holds a host slot, written when the device evicts it.
struct DeviceSpec {
  bool enabled = false;
  std::uint64_t capacity_bytes = 0;   // at most the host tier's capacity
  int ordinal = 0;                    // CUDA device
  bool promote = true;                // loads copy the host blocks they read up to the device
  bool write_through = false;         // inserts from GPU memory write the host slots at once too
};

// The remote tier's part in the core: with no disk tier, blocks the host tier evicts are handed to the remote
// tier's writer (demotion) instead of being dropped. The tier's I/O (Redis) runs in Python
// (kvtier.tiers.remote); the core only queues the evicted slots (tiers/remote_tier.h).
struct RemoteSpec {
  bool enabled = false;               // host evictions go to the remote tier (needs payloads, no disk tier)
  std::uint32_t queue_blocks = 64;    // evicted blocks waiting for the writer (extra host slots); more are not demoted
};

struct StoreSpec {
  std::uint32_t block_size = 16;      // tokens per block (reported as matched tokens)
  std::uint32_t width = 16;           // words compared per block: block_size for tokens, 2 for u64 ids
  std::uint64_t block_bytes = 0;      // payload bytes per block (also the accounting size)
  bool payloads = true;               // false = metadata-only (no arena, no keys)
  TierSpec host;
  DiskSpec disk;
  DeviceSpec device;
  RemoteSpec remote;
};

// Throws Error(kInvalidArgument) naming the field (as kvtier.config names it) and what to change.
// `name` prefixes the tier's fields ("" for the host tier's own TierConfig, "disk" ...).
void validate(const TierSpec& tier, const std::string& name);
void validate(const StoreSpec& spec);

}  // namespace kvtier
