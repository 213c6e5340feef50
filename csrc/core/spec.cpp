// The rules of a valid configuration (spec.h): each checked here and nowhere else.
#include "core/spec.h"

#include <cmath>

namespace kvtier {
namespace {

[[noreturn]] void invalid(const std::string& message) { throw Error(Code::kInvalidArgument, message); }

std::string field(const std::string& tier, const char* name) { return tier.empty() ? name : tier + "." + name; }

// Throws unless a tier of `bytes` holds at least one block.
void check_holds_a_block(const std::string& what, std::uint64_t bytes, std::uint64_t block_bytes) {
  if (bytes < block_bytes)
    invalid(what + "=" + std::to_string(bytes) + " is smaller than one block (block_bytes=" +
            std::to_string(block_bytes) + ")");
}

}  // namespace

void validate(const TierSpec& tier, const std::string& name) {
  if (tier.policy != Policy::kLRU && tier.policy != Policy::kLFU && tier.policy != Policy::kTTL)
    invalid(field(name, "policy") + " must be one of ['lfu', 'lru', 'ttl']");
  if (tier.ttl_s && !(std::isfinite(*tier.ttl_s) && *tier.ttl_s > 0.0))
    invalid(field(name, "ttl_s") + " must be a finite number of seconds > 0, got " + format_double(*tier.ttl_s));
  if (tier.policy == Policy::kTTL && !tier.ttl_s)
    invalid("policy 'ttl' needs " + field(name, "ttl_s") + " (maximum idle seconds)");
}

void validate(const StoreSpec& spec) {
  if (spec.block_size == 0) invalid("block_size must be >= 1, got 0");
  if (spec.width == 0) invalid("block width must be >= 1, got 0");
  if (spec.block_bytes == 0) invalid("block_bytes must be >= 1, got 0");
  validate(spec.host, "host");
  const std::uint64_t bb = spec.block_bytes;
  if (spec.host.capacity_bytes == 0) {
    if (spec.payloads) invalid("host.capacity_bytes=None (unlimited) needs metadata_only=True");
  } else {
    check_holds_a_block("host.capacity_bytes", spec.host.capacity_bytes, bb);
    if (spec.host.capacity_bytes / bb >= kNil)
      invalid("host.capacity_bytes / block_bytes must be below 2**32 - 1 blocks, got " +
              std::to_string(spec.host.capacity_bytes / bb));
  }
  if (spec.disk.enabled) {
    const DiskSpec& d = spec.disk;
    if (!spec.payloads) invalid("a disk tier stores payloads: it needs metadata_only=False");
    validate(d, "disk");
    check_holds_a_block("disk.capacity_bytes", d.capacity_bytes, bb);
    if (d.queue_blocks == 0) invalid("disk queue_blocks must be >= 1, got 0");
  }
  if (spec.remote.enabled) {
    if (!spec.payloads) invalid("a remote tier stores payloads: it needs metadata_only=False");
    if (spec.disk.enabled) invalid("remote demotion from the host tier is for stores without a disk tier");
    if (spec.remote.queue_blocks == 0) invalid("remote queue_blocks must be >= 1, got 0");
  }
  if (spec.device.enabled) {
    const DeviceSpec& d = spec.device;
    if (!spec.payloads) invalid("a device tier stores payloads: it needs metadata_only=False");
    check_holds_a_block("device.capacity_bytes", d.capacity_bytes, bb);
    if (d.capacity_bytes / bb > spec.host.capacity_bytes / bb)
      invalid("device.capacity_bytes=" + std::to_string(d.capacity_bytes) + " exceeds host.capacity_bytes=" +
              std::to_string(spec.host.capacity_bytes) + ": every device block keeps a host slot to be written back to");
    if (d.ordinal < 0) invalid("device must be >= 0, got " + std::to_string(d.ordinal));
  }
}

}  // namespace kvtier
