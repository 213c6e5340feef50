// Store: the coordinator's side of the device tier — what goes up to the GPU block slots above the host tier
// and what comes down, and the planning of every copy that may touch GPU memory (loads into it, inserts from
// it). The copies themselves are the tiers' (DeviceTier and HostTier copy_in / copy_out, tiers/tier.h).
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
#include "store/store.h"

namespace kvtier {

// ---- movement ----

// Copies a dirty node's device blocks down to its host slots (the device tier's copy out into the host
// tier's slots), then the host tier sums them again (for the disk).
void Store::dev_write_back(std::uint32_t id) {
  NodePayload& p = *tree_.at(id).payload;
  if (!p.dirty) return;
  std::vector<std::uint64_t> addrs;
  std::vector<Run> runs;
  device_->copy_out({&p.dslots, p.slots.size(), host_.slot_memory(p.slots, addrs), &runs, /*load=*/false});
  mover_.run(runs, darena()->device());
  host_.resum(p.slots);
  device_->cleaned(id);
}

// Takes node `id` off the device, writing dirty blocks back first when `write_back` (a node that is
// leaving the host tier too without going to disk needs no copy).
void Store::dev_evict(std::uint32_t id, bool write_back, double now) {
  KVTIER_ASSERT(on_device(id));
  if (write_back) dev_write_back(id);
  device_->evict(id, now);
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

// Copies host node `id` up to the device (promotion): reserve device slots, the device tier's copy in from
// the host tier's slots, commit. False if the device has no room for it.
bool Store::dev_place(std::uint32_t id, std::uint64_t guard, double now) {
  if (on_device(id)) return true;
  const std::size_t nb = tree_.num_blocks(id);
  if (!dev_make_room(nb, guard, now)) return false;
  DeviceTier::Ticket ticket = device_->reserve(nb);
  std::vector<std::uint64_t> addrs;
  try {
    device_->copy_in({&ticket, host_.slot_memory(tree_.at(id).payload->slots, addrs), &mover_});
  } catch (...) {
    device_->unreserve(ticket);
    throw;
  }
  device_->commit({id, &ticket, /*dirty=*/false, /*promoted=*/true, guard, tree_.at(id).account, now});
  return true;
}

void Store::dev_adopt(std::uint32_t child, DeviceTier::Ticket& ticket, double now) {
  device_->commit({child, &ticket, /*dirty=*/!spec_.device.write_through, /*promoted=*/false, seq_,
                   tree_.at(child).account, now});
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

// Plans the copies of the blocks of `steps` (node, leading blocks of it) to `out`, back to back: each node's
// from the device tier when it is there, else from the host tier (their copy out, which counts them as read).
// Precondition: the store lock is held.
Store::CopyRuns Store::plan_copy_out(const std::vector<Step>& steps, Memory out) {
  const std::size_t bb = spec_.block_bytes;
  CopyRuns c;
  c.device_ordinal = out.device >= 0 ? out.device : (darena() ? darena()->device() : 0);
  std::size_t copied = 0;
  for (const Step& s : steps) {
    const NodePayload& p = *tree_.at(s.node).payload;
    const Memory to = out.at(copied, bb);
    if (!p.dslots.empty()) {
      KVTIER_ASSERT(!out.nparts);  // scattered host runs (keys_lookup.h): the store has no device tier then
      device_->copy_out({&p.dslots, s.blocks, to, &c.device, /*load=*/true});
    } else {
      host_.copy_out({p.slots.data(), s.blocks, to, out.device < 0 ? &c.host : &c.device});
    }
    copied += s.blocks;
  }
  return c;
}

// Runs planned copies to completion (host runs by memcpy, the others on the device's stream).
void Store::run_copies(CopyRuns& c) {
  mover_.run(c.host, -1);
  mover_.run(c.device, c.device_ordinal);
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
