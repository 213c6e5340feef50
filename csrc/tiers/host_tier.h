// The host tier: its block slots (HostArena; none in a metadata-only store), its capacity and the blocks
// stored or reserved against it, and per slot its holders and its payload's checksum. A slot is held by
// the host tree, by a queued disk write (which may outlive the host block: demotion) and by copies
// running outside the store lock (holds); it goes back to the arena when the last holder lets go. The
// coordinator (Store) decides what is stored and evicted and calls these under the store lock. Nothing
// here locks or copies.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/common.h"
#include "tiers/host.h"

namespace kvtier {

class HostTier {
 public:
  // `capacity_blocks`: 0 = unlimited.
  explicit HostTier(std::uint64_t capacity_blocks) : capacity_blocks_(capacity_blocks) {}
  HostTier(const HostTier&) = delete;
  HostTier& operator=(const HostTier&) = delete;

  // Allocates `slots` payload slots (throws as HostArena does); `checksums`: keep each slot's checksum
  // (the disk tier writes it to the index record).
  void open_arena(std::size_t slots, std::size_t block_bytes, bool checksums) {
    arena_ = std::make_unique<HostArena>(slots, block_bytes);
    refs_.assign(slots, 0);
    if (checksums) crc_.assign(slots, 0);
  }
  // The slots; nullptr in a metadata-only store or once closed.
  HostArena* arena() const { return arena_.get(); }
  void close() { arena_.reset(); }

  // ---- room (blocks) ----
  std::uint64_t capacity_blocks() const { return capacity_blocks_; }
  std::uint64_t used_blocks() const { return used_; }
  // Blocks that can be stored without evicting: capacity less stored and reserved (0 when unlimited).
  std::uint64_t free_blocks() const {
    const std::uint64_t taken = used_ + reserved_;
    return capacity_blocks_ > taken ? capacity_blocks_ - taken : 0;
  }
  void stored(std::uint64_t blocks) { used_ += blocks; }
  void dropped(std::uint64_t blocks) { used_ -= blocks; }
  // Room held for blocks an insert copies outside the lock, until it commits.
  void reserve(std::uint64_t blocks) { reserved_ += blocks; }
  void unreserve(std::uint64_t blocks) { reserved_ -= blocks; }

  // ---- slots ----
  // A slot taken from the arena gets its first holder.
  void own(std::uint32_t slot) { refs_[slot] = 1; }
  void ref(std::uint32_t slot) { ++refs_[slot]; }
  // Drops one holder; the last one gives the slot back to the arena.
  void unref(std::uint32_t slot) {
    KVTIER_ASSERT(refs_[slot] > 0);
    if (--refs_[slot] == 0) arena_->give_back(slot);
  }
  std::uint32_t refs(std::uint32_t slot) const { return refs_[slot]; }
  std::uint32_t& checksum(std::uint32_t slot) { return crc_[slot]; }  // block_checksum of its payload

 private:
  std::unique_ptr<HostArena> arena_;
  std::uint64_t capacity_blocks_;
  std::uint64_t used_ = 0;                 // blocks in the host tree
  std::uint64_t reserved_ = 0;             // blocks reserved by inserts copying outside the lock
  std::vector<std::uint32_t> refs_;        // holders of each slot
  std::vector<std::uint32_t> crc_;         // per slot, with a disk tier
};

}  // namespace kvtier
