#include "tiers/disk_tier.h"

namespace kvtier {

DiskTier::DiskTier(Policy policy, std::uint64_t capacity_blocks, std::uint64_t block_bytes)
    : index_(policy), capacity_blocks_(capacity_blocks), block_bytes_(block_bytes) {
  stats_.capacity_bytes = capacity_blocks * block_bytes;
}

DiskStats DiskTier::stats() const {
  DiskStats s = stats_;
  s.blocks = index_.live();
  s.resident_bytes = s.blocks * block_bytes_;
  s.pending = queued_;
  std::uint64_t pinned = 0;
  for (std::uint32_t id = 0; id < index_.slots(); ++id) {
    const DiskEntry& e = index_.at(id);
    pinned += e.pins > 0 && e.state != DiskState::kRemoved && e.state != DiskState::kFree;
  }
  s.pinned_blocks = pinned;
  return s;
}

DiskTier::Ticket DiskTier::reserve(const Reserve& r) {
  KVTIER_ASSERT(!full());
  const std::uint32_t id = index_.add(r.key, r.parent, r.ns, r.state);
  DiskEntry& e = index_.at(id);
  e.account = r.account;
  e.seq = r.seq;
  e.last_access = r.last_access;
  e.hits = r.hits;
  e.checksum = r.checksum;
  e.slot = r.slot;
  if (r.state == DiskState::kCommitted) index_.refresh(id);
  ledger_.change(r.account, static_cast<std::int64_t>(block_bytes_), r.now);
  return {id, r.now};
}

void DiskTier::unreserve(Ticket& t) {
  DiskEntry& e = index_.at(t.entry);
  KVTIER_ASSERT(e.state == DiskState::kPending);
  ledger_.change(e.account, -static_cast<std::int64_t>(block_bytes_), t.at);
  e.slot = kNil;  // the slot is the caller's to give back
  index_.remove(t.entry);
  t.entry = kNil;
}

void DiskTier::remove(std::uint32_t id, Gone why, double now) {
  DiskEntry& e = index_.at(id);
  ledger_.change(e.account, -static_cast<std::int64_t>(block_bytes_), now);
  switch (why) {
    case Gone::kExpired: ++stats_.expired; break;
    case Gone::kEvicted: ++stats_.evicted; break;
    case Gone::kCorrupt: ++stats_.corrupted; break;
    case Gone::kMissing: ++stats_.missing; break;
    case Gone::kFailed: ++stats_.write_errors; break;
  }
  if (e.state == DiskState::kCommitted) {
    deletes_.push_back(e.key);
    deleting_.insert(e.key);
  }
  if (removed_log_.size() == kRemovedLog) {
    removed_log_.pop_front();
    ++removed_dropped_;
  }
  removed_log_.push_back(e.key);
  index_.remove(id);
}

std::vector<Key> DiskTier::take_room_deletes() {
  std::vector<Key> out = std::move(deletes_);
  deletes_.clear();
  batch_deletes_.insert(batch_deletes_.end(), out.begin(), out.end());
  return out;
}

bool DiskTier::retry_failed() {
  bool work = false;
  if (!failed_.empty()) {
    if (failed_dropped_ == 0) first_error_.clear();  // the cause to report is the retry's
    for (auto it = failed_.rbegin(); it != failed_.rend(); ++it) writes_.push_front(std::move(*it));
    failed_.clear();
    work = true;
  }
  for (const Key& k : failed_deletes_) {
    if (index_.find(k) == kNil)
      deletes_.push_back(k);
    else
      deleting_.erase(k);  // stored again since: deleting it now would lose the new block
  }
  work = work || !failed_deletes_.empty();
  failed_deletes_.clear();
  return work;
}

void DiskTier::flush_report(bool waited, std::string* errors) {
  errors->clear();
  const std::uint64_t failed = failed_.size() + failed_dropped_;
  if (failed > 0 && (waited || failed_dropped_ > 0)) {
    *errors = std::to_string(failed) + " blocks not persisted (" + std::to_string(failed_.size()) +
              " kept queued: the next flush() retries them; " + std::to_string(failed_dropped_) +
              " dropped): " + first_error_;
    failed_dropped_ = 0;
  }
}

std::vector<Key> DiskTier::take_removed(std::uint64_t* dropped) {
  std::vector<Key> out(removed_log_.begin(), removed_log_.end());
  removed_log_.clear();
  *dropped = removed_dropped_;
  removed_dropped_ = 0;
  return out;
}

}  // namespace kvtier
