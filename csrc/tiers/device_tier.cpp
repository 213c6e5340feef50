#include "tiers/device_tier.h"

namespace kvtier {

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
