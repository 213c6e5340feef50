// Store: the device tier's half — GPU block slots above the host tier, and every copy that may touch
// GPU memory (loads into it, inserts from it).
//
// The device tier is inclusive of the host tier, as SGLang's HiCache keeps a host slot for every GPU
// node: a block on the device also holds a host slot. A block inserted from GPU memory goes to the
// device only and its host slot is "dirty" (stale) until the device evicts it or the disk needs it;
// then the device copies it down ("write-back", the demotion). A load copies the host blocks it reads
// up to the device (promotion), evicting the least recently used device nodes; a later load of them
// copies device to device. Residency is per tree node: all of a node's blocks are on the device or
// none, and a node larger than the whole device tier is never placed there.
//
//   tree node   host slots  [h0 h1 h2]      always held
//               dslots      [d0 d1 d2]      empty when the node is not on the device
//               dirty                       h* stale; d* the only copy
//   LRU list    coldest -> ... -> warmest   nodes on the device (dprev/dnext; DeviceTier, tiers/device_tier.h)
//
// Copies run under the store lock (never the GIL) and are synchronous: a call returns with its device
// copies complete, so no slot is ever read or reused by a copy still in flight.
#include <cstring>

#include "core/checksum.h"
#include "store/store.h"

namespace kvtier {
namespace {

// Appends a copy, merged into the previous one when it continues it on both sides.
void add_run(std::vector<Run>& runs, std::uint64_t dst, std::uint64_t src, std::uint64_t bytes) {
  if (!runs.empty()) {
    Run& last = runs.back();
    if (last.dst + last.bytes == dst && last.src + last.bytes == src) {
      last.bytes += bytes;
      return;
    }
  }
  runs.push_back({dst, src, bytes});
}

std::uint64_t addr(const std::uint8_t* p) { return reinterpret_cast<std::uint64_t>(p); }

}  // namespace

void add_block_out(std::vector<Run>& runs, Memory to, std::uint64_t src, std::size_t bb) {
  if (!to.nparts) {
    add_run(runs, addr(to.data), src, bb);
    return;
  }
  const std::size_t part = bb / to.nparts;
  for (std::uint32_t r = 0; r < to.nparts; ++r) add_run(runs, to.parts[r], src + r * part, part);
}

CopyEngine& Store::copier() {
  if (!copier_) {
    EngineOptions o;
    o.threads = 0;  // host-only copies never come here
    copier_ = std::make_unique<CopyEngine>(o);
  }
  return *copier_;
}

// Runs `runs` to completion: memcpy when `device` < 0 (host to host), else on device `device`'s stream
// (any direction: CUDA's unified addressing tells host from device pointers). Empties `runs`.
void Store::move_runs(std::vector<Run>& runs, int device) {
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
  copier().submit(std::move(plan), device).completion->wait(-1.0);  // throws cuda::DriverError on failure
}

// Copies blocks held in host memory or GPU memory (`src`, block_bytes each, back to back) into host
// slots, with their checksums when the disk tier needs them.
void Store::fill_host_slots(const std::vector<std::uint32_t>& slots, Memory src, bool checksum) {
  const std::size_t bb = spec_.block_bytes;
  if (src.nparts) {  // scattered runs: gathered into the slot, then summed there (still in cache for small runs)
    const std::size_t part = bb / src.nparts;
    for (std::size_t i = 0; i < slots.size(); ++i) {
      std::uint8_t* to = host_.arena()->slot_ptr(slots[i]);
      const std::uint64_t* runs = src.parts + i * src.nparts;
      for (std::uint32_t r = 0; r < src.nparts; ++r)
        std::memcpy(to + r * part, reinterpret_cast<const std::uint8_t*>(runs[r]), part);
      if (checksum) host_.checksum(slots[i]) = block_checksum(to, bb);
    }
    return;
  }
  if (src.device < 0) {
    for (std::size_t i = 0; i < slots.size(); ++i) {
      const std::uint8_t* from = src.data + i * bb;
      if (checksum)
        host_.checksum(slots[i]) = copy_with_checksum(host_.arena()->slot_ptr(slots[i]), from, bb);
      else
        std::memcpy(host_.arena()->slot_ptr(slots[i]), from, bb);
    }
    return;
  }
  std::vector<Run> runs;
  for (std::size_t i = 0; i < slots.size(); ++i) add_run(runs, addr(host_.arena()->slot_ptr(slots[i])), addr(src.data + i * bb), bb);
  move_runs(runs, src.device);
  if (checksum)
    for (std::uint32_t s : slots) host_.checksum(s) = block_checksum(host_.arena()->slot_ptr(s), bb);
}

// ---- movement ----

// Copies a dirty node's device blocks down to its host slots (and their checksums, for the disk).
void Store::dev_write_back(std::uint32_t id) {
  NodePayload& p = *tree_.at(id).payload;
  if (!p.dirty) return;
  const std::size_t bb = spec_.block_bytes;
  std::vector<Run> runs;
  for (std::size_t i = 0; i < p.slots.size(); ++i)
    add_run(runs, addr(host_.arena()->slot_ptr(p.slots[i])), darena()->slot_address(p.dslots[i]), bb);
  move_runs(runs, darena()->device());
  if (disk_)
    for (std::uint32_t s : p.slots) host_.checksum(s) = block_checksum(host_.arena()->slot_ptr(s), bb);
  device_->cleaned(id);
}

// Takes node `id` off the device, writing dirty blocks back first when `write_back` (a node that is
// leaving the host tier too without going to disk needs no copy).
void Store::dev_evict(std::uint32_t id, bool write_back, double now) {
  KVTIER_ASSERT(on_device(id));
  if (write_back) dev_write_back(id);
  const std::uint64_t nb = device_->evict(id);
  ledger_.change(kTierDevice, tree_.at(id).account, -static_cast<std::int64_t>(nb * spec_.block_bytes), now);
}

// Frees device slots until `blocks` are free, evicting the coldest nodes; never a node touched by
// operation `guard` (0: none). False if that is not enough.
bool Store::dev_make_room(std::uint64_t blocks, std::uint64_t guard, double now) {
  if (blocks > darena()->slots()) return false;
  // Enough evictable nodes first, so that nothing is written back for a placement that then fails.
  std::uint64_t could = darena()->free_slots();
  for (std::uint32_t id = device_->coldest(); id != kNil && could < blocks; id = device_->warmer(id)) {
    if (guard != 0 && tree_.at(id).payload->dstamp == guard) return false;
    could += tree_.at(id).payload->dslots.size();
  }
  if (could < blocks) return false;
  while (darena()->free_slots() < blocks) {
    const std::uint32_t victim = device_->coldest();
    if (victim == kNil || (guard != 0 && tree_.at(victim).payload->dstamp == guard)) return false;
    dev_evict(victim, /*write_back=*/true, now);
  }
  return true;
}

// Copies host node `id` up to the device (promotion). False if the device has no room for it.
bool Store::dev_place(std::uint32_t id, std::uint64_t guard, double now) {
  if (on_device(id)) return true;
  const std::size_t nb = tree_.num_blocks(id);
  if (!dev_make_room(nb, guard, now)) return false;
  std::vector<std::uint32_t> dslots(nb);
  for (auto& d : dslots) d = darena()->take();
  const NodePayload& p = *tree_.at(id).payload;
  const std::size_t bb = spec_.block_bytes;
  std::vector<Run> runs;
  for (std::size_t i = 0; i < nb; ++i) add_run(runs, darena()->slot_address(dslots[i]), addr(host_.arena()->slot_ptr(p.slots[i])), bb);
  try {
    move_runs(runs, darena()->device());
  } catch (...) {
    for (std::uint32_t d : dslots) darena()->give_back(d);
    throw;
  }
  device_->place(id, std::move(dslots), /*dirty=*/false, guard);
  device_->counters().promoted += nb;
  device_->counters().bytes_written += nb * bb;
  ledger_.change(kTierDevice, tree_.at(id).account, static_cast<std::int64_t>(nb * bb), now);
  return true;
}

void Store::dev_adopt(std::uint32_t child, std::uint64_t blocks, double now) {
  const std::uint64_t bb = spec_.block_bytes;
  Node& c = tree_.at(child);
  std::vector<std::uint32_t> dslots = std::move(c.payload->dslots);
  device_->place(child, std::move(dslots), /*dirty=*/!spec_.device.write_through, seq_);
  device_->counters().inserted += blocks;
  device_->counters().bytes_written += blocks * bb;
  ledger_.change(kTierDevice, c.account, static_cast<std::int64_t>(blocks * bb), now);
}

// After a load: the chain's nodes on the device become its most recent, and the others are copied up,
// root first, while the device has room for them without evicting this chain.
void Store::dev_promote_chain(const std::vector<std::uint32_t>& root_first, double now) {
  const std::uint64_t op = ++seq_;
  for (std::uint32_t id : root_first)
    if (on_device(id)) device_->touch(id, op);
  if (!spec_.device.promote) return;
  for (std::uint32_t id : root_first)
    if (!dev_place(id, op, now)) break;
}

// dev_promote_chain over the nodes of path_ (the last walk) that it matched whole.
void Store::dev_promote_path(double now) {
  std::vector<std::uint32_t> root_first;
  for (const Step& s : path_)
    if (s.blocks == tree_.num_blocks(s.node)) root_first.push_back(s.node);
  dev_promote_chain(root_first, now);
}

// Plans the copies of the blocks of `steps` (node, leading blocks of it) to `out`, back to back, each
// from the device when it is there, and counts them as read. Precondition: the store lock is held.
Store::CopyRuns Store::plan_copy_out(const std::vector<Step>& steps, Memory out) {
  const std::size_t bb = spec_.block_bytes;
  CopyRuns c;
  c.device_ordinal = out.device >= 0 ? out.device : (darena() ? darena()->device() : 0);
  std::uint64_t copied = 0, from_device = 0;
  for (const Step& s : steps) {
    const NodePayload& p = *tree_.at(s.node).payload;
    const bool dev = !p.dslots.empty();
    for (std::uint32_t i = 0; i < s.blocks; ++i, ++copied) {
      if (out.nparts) {  // scattered host runs (keys_lookup.h); the store has no device tier then
        KVTIER_ASSERT(!dev);
        add_block_out(c.host, out.at(copied, bb), addr(host_.arena()->slot_ptr(p.slots[i])), bb);
        continue;
      }
      const std::uint64_t dst = addr(out.data + copied * bb);
      if (dev) {
        add_run(c.device, dst, darena()->slot_address(p.dslots[i]), bb);
        ++from_device;
      } else {
        add_run(out.device < 0 ? c.host : c.device, dst, addr(host_.arena()->slot_ptr(p.slots[i])), bb);
      }
    }
  }
  if (from_device > 0) {
    device_->counters().hits += from_device;
    device_->counters().bytes_read += from_device * bb;
  }
  stats_.bytes_read += (copied - from_device) * bb;
  return c;
}

// Runs planned copies to completion (host runs by memcpy, the others on the device's stream).
void Store::run_copies(CopyRuns& c) {
  move_runs(c.host, -1);
  move_runs(c.device, c.device_ordinal);
}

std::uint64_t Store::evict_device(std::uint64_t bytes, double now) {
  std::lock_guard<std::mutex> lock(mu_);
  check_open();
  now = clock_.advance(now);
  if (!darena()) return 0;
  const std::uint64_t want = bytes / spec_.block_bytes + (bytes % spec_.block_bytes != 0 ? 1 : 0);
  std::uint64_t freed = 0;
  while (freed < want && device_->coldest() != kNil) {
    const std::uint32_t victim = device_->coldest();
    freed += tree_.num_blocks(victim);
    dev_evict(victim, /*write_back=*/true, now);
  }
  return freed * spec_.block_bytes;
}

DeviceStats Store::device_stats() {
  std::lock_guard<std::mutex> lock(mu_);
  return device_ ? device_->stats() : DeviceStats{};
}

}  // namespace kvtier
