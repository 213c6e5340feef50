#include "tiers/device_tier.h"

namespace kvtier {

void DeviceTier::copy_in(const CopyIn& in) {
  std::vector<Run> runs;
  for (std::size_t i = 0; i < in.ticket->size(); ++i)
    add_block_in(runs, arena_->slot_address((*in.ticket)[i]), in.src.at(i, block_bytes_), block_bytes_);
  in.mover->run(runs, arena_->device());
}

void DeviceTier::copy_out(const CopyOut& out) {
  for (std::size_t i = 0; i < out.n; ++i)
    add_block_out(*out.runs, out.dst.at(i, block_bytes_), arena_->slot_address((*out.dslots)[i]), block_bytes_);
  if (out.load) {
    stats_.hits += out.n;
    stats_.bytes_read += out.n * block_bytes_;
  }
}

void DeviceTier::commit(const Commit& c) {
  NodePayload& p = *tree_.at(c.node).payload;
  const std::uint64_t nb = c.ticket->size();
  p.dslots = std::move(*c.ticket);
  c.ticket->clear();
  p.dirty = c.dirty;
  p.dstamp = c.op;
  link_before(c.node, kNil);
  used_ += nb;
  if (c.dirty) dirty_ += nb;
  (c.promoted ? stats_.promoted : stats_.inserted) += nb;
  stats_.bytes_written += nb * block_bytes_;
  ledger_.change(c.account, static_cast<std::int64_t>(nb * block_bytes_), c.now);
}

DeviceStats DeviceTier::stats() const {
  DeviceStats s = stats_;
  s.blocks = used_;
  s.dirty_blocks = dirty_;
  s.resident_bytes = used_ * block_bytes_;
  s.capacity_bytes = arena_ ? arena_->slots() * block_bytes_ : 0;
  return s;
}

void DeviceTier::check(std::uint64_t on_device) const {
  std::vector<bool> used(arena_->slots(), false);
  std::uint64_t listed = 0, dirty = 0;
  for (std::uint32_t id = head_, prev = kNil; id != kNil; prev = id, id = tree_.at(id).payload->dnext) {
    const Node& n = tree_.at(id);
    KVTIER_ASSERT(n.alive && n.parent != kNil && n.payload->dprev == prev);
    KVTIER_ASSERT(n.payload->dslots.size() == n.payload->slots.size());
    if (n.payload->dnext == kNil) KVTIER_ASSERT(tail_ == id);
    for (std::uint32_t d : n.payload->dslots) {
      KVTIER_ASSERT(arena_->in_use(d) && !used[d]);
      used[d] = true;
    }
    listed += n.payload->dslots.size();
    if (n.payload->dirty) dirty += n.payload->dslots.size();
  }
  KVTIER_ASSERT(listed == used_ && dirty == dirty_);
  KVTIER_ASSERT(arena_->free_slots() + used_ == arena_->slots());
  KVTIER_ASSERT(on_device == used_);  // every node with device slots is listed
}

}  // namespace kvtier
