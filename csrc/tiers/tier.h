// The one interface the coordinator (Store, store/store.h) drives every tier through. A tier is an object
// that owns its slots, its index, its counters and its residency; the coordinator owns the tree, the
// policies, the namespaces, the pins and the clock, decides what moves where and when, and calls these
// verbs. A move is two-phase:
//
//   reserve   (store lock)    room for n blocks: a Ticket naming the tier's slots (or index entries)
//   copy in   (no lock when   the payload into the ticket's slots; for a tier whose I/O runs in Python
//              the tier's      (disk today, the remote tier next) "copy in" queues the blocks for its
//              copy allows)    writer thread instead
//   commit    (store lock)    the blocks become the tier's (disk: the writer's report of a batch);
//   unreserve (store lock)    or the reservation is given back (a copy failed, or another thread stored
//                             the same blocks meanwhile)
//
//   copy out  (store lock)    plans the copies of the tier's blocks to a destination Memory as runs, which
//                             the coordinator runs where it may (Mover, outside the lock for host memory);
//                             for disk, the folder reads the facade must do
//   coldest   (store lock)    the first eviction candidate by the tier's policy (kNil: none); the
//                             coordinator decides whether to evict it (pins, demotion target)
//   room, stats, residency    what the tier holds: capacity and use in blocks, its counters, and bytes
//                             and byte-seconds per account (TierLedger); the coordinator sums the tiers
//
// The verbs are the same names on every tier; their argument types are the tier's own (T::Reserve,
// T::Ticket, T::CopyIn, T::CopyOut, T::Commit), so a host slot, a GPU slot and a disk entry are never
// confused. It is a concept, not a base class: the coordinator calls each tier directly and nothing on a
// per-block path is a virtual call. `static_assert(TierObject<T>)` in each tier's header checks it.
// Nothing here locks or waits; a copy in that runs outside the lock touches only its ticket's slots.
//
// A tier whose I/O runs in Python beside the core follows DiskTier: its Reserve is a block to write (key,
// account, the host slot holding the payload), copy_in queues it for the tier's writer thread, commit is the
// writer's report of a batch (failed writes kept or dropped), copy_out lists the reads the facade must do, and
// coldest() is kNil where the store behind it evicts by itself.
#pragma once

#include <concepts>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "core/common.h"
#include "core/residency.h"
#include "cuda/copy_engine.h"
#include "cuda/copy_plan.h"

namespace kvtier {

// Memory passed to the store: host memory (device -1) or CUDA memory of device `device`, blocks back to
// back from `data`. Or, with `nparts` > 0, blocks scattered in host memory: block b is `nparts` runs of
// block_bytes / nparts bytes each, run r at address parts[b * nparts + r] (`data` unused, device -1;
// the caller checked every run lies in memory it owns: kvtier._core.BlockRuns). A tier's own host slots,
// one run per block, are described the same way (HostTier::slot_memory).
struct Memory {
  std::uint8_t* data = nullptr;
  int device = -1;
  const std::uint64_t* parts = nullptr;
  std::uint32_t nparts = 0;
  // The same memory from block `b` on (`bb`: block_bytes).
  Memory at(std::size_t b, std::size_t bb) const {
    return nparts ? Memory{nullptr, -1, parts + b * nparts, nparts} : Memory{data + b * bb, device};
  }
};

inline std::uint64_t addr(const std::uint8_t* p) { return reinterpret_cast<std::uint64_t>(p); }

// Appends a copy, merged into the previous one when it continues it on both sides.
inline void add_run(std::vector<Run>& runs, std::uint64_t dst, std::uint64_t src, std::uint64_t bytes) {
  if (!runs.empty()) {
    Run& last = runs.back();
    if (last.dst + last.bytes == dst && last.src + last.bytes == src) {
      last.bytes += bytes;
      return;
    }
  }
  runs.push_back({dst, src, bytes});
}

// Appends the copies of one block (`bb` bytes at `src`) to block 0 of `to` (one run, or its parts).
inline void add_block_out(std::vector<Run>& runs, Memory to, std::uint64_t src, std::size_t bb) {
  if (!to.nparts) {
    add_run(runs, addr(to.data), src, bb);
    return;
  }
  const std::size_t part = bb / to.nparts;
  for (std::uint32_t r = 0; r < to.nparts; ++r) add_run(runs, to.parts[r], src + r * part, part);
}

// Appends the copies of block 0 of `from` (one run, or its parts) to `bb` bytes at `dst`.
inline void add_block_in(std::vector<Run>& runs, std::uint64_t dst, Memory from, std::size_t bb) {
  if (!from.nparts) {
    add_run(runs, dst, addr(from.data), bb);
    return;
  }
  const std::size_t part = bb / from.nparts;
  for (std::uint32_t r = 0; r < from.nparts; ++r) add_run(runs, dst + r * part, from.parts[r], part);
}

// Runs copy runs to completion: memcpy when `device` < 0 (host to host), else on device `device`'s stream
// of the copy engine (any direction: CUDA's unified addressing tells host from device pointers). The
// coordinator owns it and lends it to the tiers' copies. Host copies touch no member, so they may run
// outside the store lock; copies on a device run under it (the engine is created on first use).
class Mover {
 public:
  // Empties `runs`. Throws cuda::DriverError when a device copy fails.
  void run(std::vector<Run>& runs, int device) {
    if (runs.empty()) return;
    if (device < 0) {
      for (const Run& r : runs)
        std::memcpy(reinterpret_cast<void*>(r.dst), reinterpret_cast<const void*>(r.src), r.bytes);
      runs.clear();
      return;
    }
    CopyPlan plan;
    plan.unmerged = runs.size();
    for (const Run& r : runs) plan.bytes += r.bytes;
    plan.runs = std::move(runs);
    runs.clear();
    engine().submit(std::move(plan), device).completion->wait(-1.0);
  }
  // Ends the engine (every copy is complete: each call waits for its own).
  void close() { engine_.reset(); }

 private:
  CopyEngine& engine() {
    if (!engine_) {
      EngineOptions o;
      o.threads = 0;  // host-only copies never come here
      engine_ = std::make_unique<CopyEngine>(o);
    }
    return *engine_;
  }
  std::unique_ptr<CopyEngine> engine_;
};

// A tier's room, in blocks.
struct Room {
  std::uint64_t capacity = 0;  // 0 = unlimited
  std::uint64_t used = 0;      // blocks the tier holds
  std::uint64_t reserved = 0;  // blocks reserved by moves not yet committed
  // Blocks that can be reserved without evicting (0 when unlimited: the caller never asks then).
  std::uint64_t free() const { return capacity > used + reserved ? capacity - used - reserved : 0; }
};

template <class T>
concept TierObject = requires(T& t, const T& ct, const typename T::Reserve& r, typename T::Ticket& k,
                              const typename T::CopyIn& in, const typename T::CopyOut& out,
                              const typename T::Commit& c) {
  { ct.room() } -> std::same_as<Room>;
  { t.reserve(r) } -> std::same_as<typename T::Ticket>;
  t.unreserve(k);
  t.copy_in(in);
  t.copy_out(out);
  t.commit(c);
  { ct.coldest() } -> std::same_as<std::uint32_t>;
  ct.stats();
  { t.residency() } -> std::same_as<TierLedger&>;
  { ct.residency() } -> std::same_as<const TierLedger&>;
};

}  // namespace kvtier
