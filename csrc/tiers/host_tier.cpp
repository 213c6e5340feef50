#include "tiers/host_tier.h"

#include <algorithm>
#include <cstring>

#include "core/checksum.h"

namespace kvtier {

void HostTier::unreserve_front(Ticket& t, std::uint64_t k) {
  KVTIER_ASSERT(k <= t.blocks);
  const std::size_t give = std::min<std::size_t>(k, t.slots.size());
  for (std::size_t i = 0; i < give; ++i) arena_->give_back(t.slots[i]);
  t.slots.erase(t.slots.begin(), t.slots.begin() + static_cast<std::ptrdiff_t>(give));
  t.blocks -= k;
  reserved_ -= k;
}

// Host memory is copied (and summed) block by block: the sum reads the block while it is still in cache.
// GPU memory goes on the device's stream, then the slots are summed.
void HostTier::copy_in(const CopyIn& in) {
  const std::size_t bb = block_bytes_;
  const std::vector<std::uint32_t>& slots = in.ticket->slots;
  const Memory src = in.src;
  if (src.nparts) {  // scattered runs: gathered into the slot, then summed there (still in cache for small runs)
    const std::size_t part = bb / src.nparts;
    for (std::size_t i = 0; i < slots.size(); ++i) {
      std::uint8_t* to = arena_->slot_ptr(slots[i]);
      const std::uint64_t* runs = src.parts + i * src.nparts;
      for (std::uint32_t r = 0; r < src.nparts; ++r)
        std::memcpy(to + r * part, reinterpret_cast<const std::uint8_t*>(runs[r]), part);
      if (in.checksum) crc_[slots[i]] = block_checksum(to, bb);
    }
    return;
  }
  if (src.device < 0) {
    for (std::size_t i = 0; i < slots.size(); ++i) {
      const std::uint8_t* from = src.data + i * bb;
      if (in.checksum)
        crc_[slots[i]] = copy_with_checksum(arena_->slot_ptr(slots[i]), from, bb);
      else
        std::memcpy(arena_->slot_ptr(slots[i]), from, bb);
    }
    return;
  }
  std::vector<Run> runs;
  for (std::size_t i = 0; i < slots.size(); ++i) add_run(runs, addr(arena_->slot_ptr(slots[i])), addr(src.data + i * bb), bb);
  in.mover->run(runs, src.device);
  if (in.checksum) resum(slots);  // kept only with a disk tier
}

void HostTier::resum(const std::vector<std::uint32_t>& slots) {
  if (crc_.empty()) return;
  for (std::uint32_t s : slots) crc_[s] = block_checksum(arena_->slot_ptr(s), block_bytes_);
}

}  // namespace kvtier
