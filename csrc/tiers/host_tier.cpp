#include "tiers/host_tier.h"

#include <algorithm>
#include <cstring>

#include "core/checksum.h"

namespace kvtier {

void HostTier::take_slots(Ticket& t) {
  t.slots.resize(t.blocks);
  for (auto& s : t.slots) s = arena_->take();
}

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
// Locals throughout: the copies' stores may alias anything the compiler cannot see, and it would reload
// each member and argument field after every memcpy.
void HostTier::copy_in(const CopyIn& in) {
  const std::size_t bb = block_bytes_;
  const std::vector<std::uint32_t>& slots = in.ticket->slots;
  const std::uint32_t* slot = slots.data();
  const std::size_t n = slots.size();
  HostArena* const arena = arena_.get();
  std::uint32_t* const crc = in.checksum ? crc_.data() : nullptr;  // kept only with a disk tier
  const Memory src = in.src;
  if (src.nparts) {  // scattered runs: gathered into the slot, then summed there (still in cache for small runs)
    const std::size_t part = bb / src.nparts;
    for (std::size_t i = 0; i < n; ++i) {
      std::uint8_t* to = arena->slot_ptr(slot[i]);
      const std::uint64_t* runs = src.parts + i * src.nparts;
      for (std::uint32_t r = 0; r < src.nparts; ++r)
        std::memcpy(to + r * part, reinterpret_cast<const std::uint8_t*>(runs[r]), part);
      if (crc) crc[slot[i]] = block_checksum(to, bb);
    }
    return;
  }
  if (src.device < 0) {
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint8_t* from = src.data + i * bb;
      if (crc)
        crc[slot[i]] = copy_with_checksum(arena->slot_ptr(slot[i]), from, bb);
      else
        std::memcpy(arena->slot_ptr(slot[i]), from, bb);
    }
    return;
  }
  std::vector<Run> runs;
  for (std::size_t i = 0; i < n; ++i) add_run(runs, addr(arena->slot_ptr(slot[i])), addr(src.data + i * bb), bb);
  in.mover->run(runs, src.device);
  if (crc) resum(slots);
}

void HostTier::resum(const std::vector<std::uint32_t>& slots) {
  if (crc_.empty()) return;
  for (std::uint32_t s : slots) crc_[s] = block_checksum(arena_->slot_ptr(s), block_bytes_);
}

}  // namespace kvtier
