#include "cuda/copy_plan.h"

#include <algorithm>
#include <numeric>
#include <string>

#include "core/common.h"

namespace kvtier {

namespace {

[[noreturn]] void invalid(const std::string& msg) { throw Error(Code::kInvalidArgument, msg); }

std::string region_name(std::size_t r) { return "region " + std::to_string(r); }

// a + b * c, or false if it does not fit in 64 bits.
bool mul_add(std::uint64_t a, std::uint64_t b, std::uint64_t c, std::uint64_t& out) {
  std::uint64_t prod = 0;
  if (__builtin_mul_overflow(b, c, &prod)) return false;
  return !__builtin_add_overflow(a, prod, &out);
}

}  // namespace

KVLayout::KVLayout(std::vector<Region> regions, std::uint64_t num_blocks, int device)
    : regions_(std::move(regions)), num_blocks_(num_blocks), device_(device), payload_bytes_(0) {
  if (regions_.empty()) invalid("a KV layout needs at least one region");
  if (num_blocks_ == 0) invalid("num_blocks must be > 0");
  if (device_ < -1) invalid("device must be a CUDA ordinal >= 0, or -1 for host memory");
  const std::size_t n = regions_.size();
  std::vector<std::uint64_t> end(n);  // one past the last byte of the region's last block
  offsets_.resize(n);
  for (std::size_t r = 0; r < n; ++r) {
    const Region& g = regions_[r];
    if (g.bytes == 0) invalid(region_name(r) + " has a run of 0 bytes");
    if (g.base == 0) invalid(region_name(r) + " has a null base address");
    if (num_blocks_ > 1 && g.stride < g.bytes)
      invalid(region_name(r) + ": block stride " + std::to_string(g.stride) + " is shorter than its run of " +
              std::to_string(g.bytes) + " bytes, so consecutive blocks would overlap");
    std::uint64_t last = 0;
    if (!mul_add(g.base, num_blocks_ - 1, g.stride, last) || __builtin_add_overflow(last, g.bytes, &end[r]))
      invalid(region_name(r) + " runs past the end of the address space");
    offsets_[r] = payload_bytes_;
    if (__builtin_add_overflow(payload_bytes_, g.bytes, &payload_bytes_)) invalid("the payload size overflows");
  }
  // Regions must not share a byte. Sweep them by start address; a pair whose extents intersect is accepted
  // only if both have the same block stride and their runs sit side by side within each stride (the
  // "all layers of a block in one tensor" layouts).
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return regions_[a].base < regions_[b].base; });
  for (std::size_t x = 0; x < n; ++x) {
    const std::size_t a = order[x];
    for (std::size_t y = x + 1; y < n && regions_[order[y]].base < end[a]; ++y) {
      const std::size_t b = order[y];
      const Region& ra = regions_[a];
      const Region& rb = regions_[b];
      const std::uint64_t d = rb.base - ra.base;
      bool disjoint = false;
      if (num_blocks_ > 1 && ra.stride == rb.stride) {
        const std::uint64_t o = d % ra.stride;
        disjoint = o >= ra.bytes && o + rb.bytes <= ra.stride;
      }
      if (!disjoint)
        invalid(region_name(a) + " and " + region_name(b) + " overlap" +
                (num_blocks_ > 1 && ra.stride != rb.stride ? " (they interleave with different block strides)" : ""));
    }
  }
}

CopyPlan plan_copy(const KVLayout& layout, const std::uint64_t* ids, std::size_t n, const BlockBuffer& buffer,
                   Direction direction) {
  const std::uint64_t payload = layout.payload_bytes();
  const std::uint64_t blocks = layout.num_blocks();
  for (std::size_t i = 0; i < n; ++i)
    if (ids[i] >= blocks)
      invalid("block_ids[" + std::to_string(i) + "] = " + std::to_string(ids[i]) + " is out of range: the layout has " +
              std::to_string(blocks) + " blocks");
  if (direction == Direction::kScatter && n > 1) {
    std::vector<std::uint64_t> seen((blocks + 63) / 64, 0);
    for (std::size_t i = 0; i < n; ++i) {
      std::uint64_t& w = seen[ids[i] / 64];
      const std::uint64_t bit = std::uint64_t{1} << (ids[i] % 64);
      if (w & bit)
        invalid("block_ids[" + std::to_string(i) + "] = " + std::to_string(ids[i]) +
                " appears twice; a scatter would write that engine block from two kvtier blocks");
      w |= bit;
    }
  }
  if (n > 0) {
    if (buffer.slots == nullptr) {
      if (buffer.base == 0) invalid("the kvtier buffer has a null address");
      if (n > 1 && buffer.stride < payload)
        invalid("block_bytes=" + std::to_string(buffer.stride) + " is smaller than the layout's payload of " +
                std::to_string(payload) + " bytes per block");
      std::uint64_t last = 0;
      std::uint64_t end = 0;
      if (!mul_add(buffer.base, n - 1, buffer.stride, last) || __builtin_add_overflow(last, payload, &end))
        invalid("the kvtier buffer runs past the end of the address space");
    } else {
      for (std::size_t i = 0; i < n; ++i) {
        std::uint64_t end = 0;
        if (buffer.slots[i] == 0 || __builtin_add_overflow(buffer.slots[i], payload, &end))
          invalid("slot address " + std::to_string(i) + " is null or wraps around the address space");
      }
      if (direction == Direction::kGather) {  // writes: no two slots may share a byte
        std::vector<std::uint64_t> sorted(buffer.slots, buffer.slots + n);
        std::sort(sorted.begin(), sorted.end());
        for (std::size_t i = 1; i < n; ++i)
          if (sorted[i] - sorted[i - 1] < payload) invalid("two destination slots overlap");
      }
    }
  }

  CopyPlan plan;
  const auto& regions = layout.regions();
  plan.runs.reserve(std::min<std::size_t>(n * regions.size(), std::size_t{1} << 20));
  const bool gather = direction == Direction::kGather;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t kv_block = buffer.block(i);
    for (std::size_t r = 0; r < regions.size(); ++r) {
      const Region& g = regions[r];
      const std::uint64_t engine = g.base + ids[i] * g.stride;
      const std::uint64_t kv = kv_block + layout.offset(r);
      const std::uint64_t dst = gather ? kv : engine;
      const std::uint64_t src = gather ? engine : kv;
      if (!plan.runs.empty()) {
        Run& last = plan.runs.back();
        if (last.src + last.bytes == src && last.dst + last.bytes == dst) {
          last.bytes += g.bytes;
          continue;
        }
      }
      plan.runs.push_back(Run{dst, src, g.bytes});
    }
  }
  plan.unmerged = static_cast<std::uint64_t>(n) * regions.size();
  plan.bytes = static_cast<std::uint64_t>(n) * payload;
  return plan;
}

}  // namespace kvtier
