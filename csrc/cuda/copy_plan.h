// What to copy: the layout of an engine's paged KV cache, and the planner that turns a list of engine block ids
// into merged copy runs between that cache and a kvtier buffer. Pure arithmetic: no memory is touched here.
//
// A layout is a list of *regions*. A region is one contiguous run of bytes per engine block, found at
// `base + block_id * stride`: a layer's K cache, a layer's V cache, a layer's fused KV, or all layers of a
// block at once, depending on how the engine lays its cache out.
//
// A kvtier block's payload is the concatenation of the block's runs in region order, at the start of the
// block's slot in the kvtier buffer (bytes beyond the payload, up to the buffer's block stride, are untouched):
//
//   engine, per-layer [2, num_blocks, block_size, heads, dim] (2 regions per layer, K then V):
//     region 0  L0.K  | b0 | b1 | b2 | b3 | ...      base0 + id * stride0
//     region 1  L0.V  | b0 | b1 | b2 | b3 | ...      base1 + id * stride1
//     region 2  L1.K  | b0 | b1 | b2 | b3 | ...
//     ...
//   kvtier buffer, block i holds engine block ids[i]:
//     block i   | L0.K | L0.V | L1.K | L1.V | ... | L{n-1}.V | (unused up to block stride) |
//               0      r0     r0+r1                            payload_bytes               stride
//
// Runs are emitted block by block, regions in order, and a run that continues the previous one in both source
// and destination is merged into it. So "all layers of a block contiguous" becomes one run per block, and
// consecutive engine blocks of such a layout, copied to consecutive kvtier blocks, become a single run.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvtier {

// Bytes and addresses are byte units; addresses are process virtual addresses (host or CUDA unified).
struct Region {
  std::uint64_t base;    // address of block 0's run
  std::uint64_t stride;  // bytes from one engine block's run to the next's
  std::uint64_t bytes;   // bytes of the run (one block, this region)
};

class KVLayout {
 public:
  // `device`: the CUDA ordinal of the memory, or -1 for host memory.
  // Throws Error(kInvalidArgument) naming the region when a region is empty, has a null base, a stride shorter
  // than its run (blocks would overlap), wraps around the address space, or overlaps another region.
  KVLayout(std::vector<Region> regions, std::uint64_t num_blocks, int device);

  const std::vector<Region>& regions() const { return regions_; }
  std::uint64_t num_blocks() const { return num_blocks_; }
  int device() const { return device_; }
  std::uint64_t payload_bytes() const { return payload_bytes_; }  // sum of the regions' runs
  std::uint64_t offset(std::size_t region) const { return offsets_[region]; }  // within a kvtier block

 private:
  std::vector<Region> regions_;
  std::vector<std::uint64_t> offsets_;
  std::uint64_t num_blocks_;
  int device_;
  std::uint64_t payload_bytes_;
};

// Where kvtier block i lives: `slots[i]` if slots is set, else `base + i * stride`.
struct BlockBuffer {
  std::uint64_t base = 0;
  std::uint64_t stride = 0;
  const std::uint64_t* slots = nullptr;  // borrowed; one address per block
  int device = -1;                       // CUDA ordinal, or -1 for host memory
  std::uint64_t block(std::size_t i) const { return slots != nullptr ? slots[i] : base + i * stride; }
};

enum class Direction {
  kGather,   // engine -> kvtier buffer
  kScatter,  // kvtier buffer -> engine
};

struct Run {
  std::uint64_t dst;
  std::uint64_t src;
  std::uint64_t bytes;
};

struct CopyPlan {
  std::vector<Run> runs;       // merged, in emission order
  std::uint64_t bytes = 0;     // total
  std::uint64_t unmerged = 0;  // runs before merging (blocks x regions)
};

// Plans copying engine blocks `ids[0..n)` to (gather) or from (scatter) kvtier blocks 0..n of `buffer`.
// Throws Error(kInvalidArgument) naming the offender for an id >= layout.num_blocks(), a buffer stride below
// the payload (kvtier blocks would overlap), an address range that wraps, or, for a scatter, an engine block
// id given twice (two kvtier blocks would race to write it).
CopyPlan plan_copy(const KVLayout& layout, const std::uint64_t* ids, std::size_t n, const BlockBuffer& buffer,
                   Direction direction);

}  // namespace kvtier
