// The disk tier: its index (disk_index.h), its capacity and counters, and the writer protocol's state — the
// write queue, the batch the writer has taken, the writes and deletes that failed (kept for the next flush),
// the keys being deleted and the log of keys that left, and its residency. It implements the tier interface
// (tiers/tier.h) for a tier whose I/O runs in Python: "copy in" queues a block for the writer thread, "commit"
// is the writer's report of a batch, "copy out" lists the folder reads a load must do (or plans the copy of a
// block still queued, from its host slot). The coordinator (Store) drives it under the store lock: it decides
// what is demoted, evicted and restored (the tree, policies, namespaces and accounts stay there). Nothing here
// locks or waits; the folder itself (LMDB) is the Python writer's (docs/disk.md).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "core/common.h"
#include "core/keys.h"
#include "core/policy.h"
#include "core/residency.h"
#include "tiers/disk_index.h"
#include "tiers/host.h"
#include "tiers/tier.h"

namespace kvtier {

struct DiskStats {
  std::uint64_t hits = 0;           // blocks matched on disk (beyond the host match)
  std::uint64_t misses = 0;         // full blocks found in neither tier
  std::uint64_t queued = 0;         // blocks put in the write queue
  std::uint64_t written = 0;        // blocks committed to the folder
  std::uint64_t bytes_written = 0;
  std::uint64_t bytes_read = 0;     // payload bytes loaded from the disk tier
  std::uint64_t evicted = 0;
  std::uint64_t expired = 0;
  std::uint64_t corrupted = 0;      // blocks whose payload failed its checksum (removed, never served)
  std::uint64_t missing = 0;        // blocks in the index whose payload was gone (another process removed it)
  std::uint64_t write_errors = 0;   // block writes a failed commit did not persist (each retry counts)
  std::uint64_t rejected = 0;       // demotions skipped: the disk was full of pinned or queued blocks
  std::uint64_t promoted = 0;       // disk hits copied back into the host tier
  std::uint64_t restored = 0;       // entries read from the folder at open or from other processes
  std::uint64_t pending = 0;        // blocks queued or being written now
  std::uint64_t blocks = 0;
  std::uint64_t resident_bytes = 0;
  std::uint64_t capacity_bytes = 0;
  std::uint64_t pinned_blocks = 0;
};

// One block handed to the writer: where its payload is and its index record.
struct WriteOut {
  Key key;
  std::vector<std::uint8_t> record;  // the index record (docs/disk.md)
  const std::uint8_t* payload;       // block_bytes, valid until disk_finish
};

// A committed disk block that a load must read from the folder.
struct DiskRead {
  std::uint32_t block;  // index in the prompt
  Key key;
  std::uint32_t checksum;
};

struct WriteBatch {
  std::vector<WriteOut> writes;
  std::vector<Key> deletes;  // apply before the writes
  bool closed = false;       // the store is closing: the writer should stop
};

class DiskTier {
 public:
  // Why a block left the disk tier (counted per cause).
  enum class Gone { kEvicted, kExpired, kCorrupt, kMissing, kFailed };
  static constexpr std::size_t kRemovedLog = 1 << 16;

  // ---- the tier interface's types (tier.h) ----
  struct Reserve {  // a new index entry
    Key key;
    Key parent;
    std::uint32_t ns;
    std::uint32_t account;
    DiskState state;              // kPending (its payload in host slot `slot`) or kCommitted (restored)
    std::uint32_t slot = kNil;
    std::uint32_t checksum = 0;   // a committed entry's (a pending one gets it at copy_in)
    std::uint64_t seq = 0;
    double last_access = 0.0;
    std::uint64_t hits = 0;
    double now;                   // charged from then on
  };
  struct Ticket {
    std::uint32_t entry = kNil;
    double at = 0.0;  // when it was reserved
  };
  struct CopyIn {  // queue for the writer
    Ticket ticket;
    std::vector<Word> words;  // the block's tokens, for its index record
    std::uint32_t checksum;   // of the payload in the entry's host slot (block_checksum)
  };
  struct CopyOut {  // block `block` of a load, from entry `entry`
    std::uint32_t entry;
    std::uint32_t block;
    Memory dst;                     // that block's destination
    const HostArena* arena;         // where a block still queued is (its entry's slot)
    std::vector<Run>* runs;         // a queued block's copy is appended here
    std::vector<DiskRead>* reads;   // a committed block's folder read here
  };
  struct Commit {  // the writer's report of the batch it took last
    bool ok;
    const std::string* error;
    std::uint64_t keep;                           // failed writes kept queued, at most
    std::function<void(std::uint32_t)> release;   // gives up a write's hold on a host slot
    std::function<void(std::uint32_t)> drop;      // removes an entry that failed and is not kept
  };

  DiskTier(Policy policy, std::uint64_t capacity_blocks, std::uint64_t block_bytes);
  DiskTier(const DiskTier&) = delete;
  DiskTier& operator=(const DiskTier&) = delete;

  DiskIndex& index() { return index_; }
  const DiskIndex& index() const { return index_; }

  // ---- room (blocks): used = committed, reserved = queued or being written ----
  Room room() const { return {capacity_blocks_, index_.live() - queued_, queued_}; }
  bool full() const { return index_.live() >= capacity_blocks_; }
  // A new entry, charged to its account. Precondition: !full() and find(key) == kNil.
  Ticket reserve(const Reserve& r);
  // Removes a pending entry reserved and never queued (its residency ends at the ticket's time: the caller
  // unreserves in the same locked step that reserved it).
  void unreserve(Ticket& t);

  // ---- copies ----
  // Queues a pending entry for the writer (its payload in its host slot).
  void copy_in(const CopyIn& in) {
    index_.at(in.ticket.entry).checksum = in.checksum;
    writes_.push_back({in.ticket.entry, in.words});
    ++queued_;
    ++stats_.queued;
  }
  // A queued block's copy from its host slot, or a committed block's folder read.
  // Precondition: the entry is not removed.
  void copy_out(const CopyOut& out) {
    const DiskEntry& e = index_.at(out.entry);
    KVTIER_ASSERT(e.state != DiskState::kRemoved);
    if (e.slot != kNil)
      add_block_out(*out.runs, out.dst, addr(out.arena->slot_ptr(e.slot)), block_bytes_);
    else
      out.reads->push_back({out.block, e.key, e.checksum});
  }
  // Ends the batch taken last (see finish).
  void commit(const Commit& c) { finish(c.ok, *c.error, c.keep, c.release, c.drop); }

  // ---- eviction candidates: committed, unpinned entries without children, by the disk policy ----
  std::uint32_t coldest() const { return index_.queue().empty() ? kNil : index_.queue().top(); }

  // ---- stats and residency ----
  DiskStats& counters() { return stats_; }  // the coordinator counts hits, misses, rejections, promotions
  DiskStats stats() const;                  // counters plus what is resident, pending and pinned now
  TierLedger& residency() { return ledger_; }
  const TierLedger& residency() const { return ledger_; }

  // ---- the write queue ----
  std::uint64_t queued() const { return queued_; }  // entries pending or writing
  bool batch_open() const { return batch_open_; }
  bool has_work() const { return (!writes_.empty() || !deletes_.empty()) && !batch_open_; }
  // Every write queued so far is committed or failed (kept for the next flush), every delete handed out.
  bool settled() const { return queued_ == failed_.size() && deletes_.empty() && !batch_open_; }

  // Removes entry `id` from the index for `why` at `now`: ends its residency, counts it, queues the folder
  // delete of a committed block, logs its key. The coordinator has settled its host slot.
  void remove(std::uint32_t id, Gone why, double now);
  // Whether `key` was removed here and its folder delete has not committed (an import must skip it).
  bool deleting(const Key& key) const { return deleting_.count(key) != 0; }

  // ---- the writer protocol ----
  // Hands out every pending delete and at most `max_blocks` queued writes, marking them kWriting;
  // `encode(entry, words)` makes each write's WriteOut.
  template <class Encode>
  WriteBatch take(std::size_t max_blocks, Encode&& encode);
  // Ends the batch taken last. `release(slot)` gives up the write's hold on a host slot; `drop(id)` removes
  // an entry that failed and is not kept (the coordinator settles its residency, then calls remove).
  // `keep` failed writes at most stay queued for the next flush.
  template <class Release, class Drop>
  void finish(bool ok, const std::string& error, std::uint64_t keep, Release&& release, Drop&& drop);
  // The deletes queued since (map full: evicted to make room): handed out as part of the open batch.
  std::vector<Key> take_room_deletes();
  // A flush's retry: the writes that failed go back to the front of the queue, the deletes that failed are
  // queued again (unless the key was stored again since). Returns whether the writer has new work.
  bool retry_failed();
  // After a flush's wait: the report line (empty when every block is persisted) — see Store::disk_flush.
  void flush_report(bool waited, std::string* errors);
  std::uint64_t delete_generation() const { return delete_generation_; }
  std::vector<Key> take_removed(std::uint64_t* dropped);

 private:
  struct WriteItem {
    std::uint32_t entry;
    std::vector<Word> words;  // the block's tokens, for its index record
  };

  DiskIndex index_;
  std::uint64_t capacity_blocks_;
  std::uint64_t block_bytes_;
  DiskStats stats_;
  TierLedger ledger_;
  std::deque<WriteItem> writes_;          // queued for the writer
  std::vector<WriteItem> batch_;          // taken by the writer, not yet finished
  std::deque<WriteItem> failed_;          // not persisted: kept queued (pending) for the next flush
  std::vector<Key> deletes_;              // keys to delete from the folder
  std::vector<Key> batch_deletes_;        // deletes handed to the writer, not yet finished
  std::vector<Key> failed_deletes_;       // deletes whose commit failed: the next flush retries them
  // Keys removed here whose delete has not committed yet: the folder still has them, and an import
  // (a restore from a probe) must not bring them back.
  std::unordered_set<Key, KeyHash> deleting_;
  std::uint64_t delete_generation_ = 0;   // writer batches with deletes finished so far
  std::deque<Key> removed_log_;           // take_removed
  std::uint64_t removed_dropped_ = 0;
  bool batch_open_ = false;
  std::uint64_t queued_ = 0;              // entries pending or writing
  std::uint64_t failed_dropped_ = 0;      // blocks not persisted and dropped, since the last flush
  std::string first_error_;               // the first cause since the last flush
};

static_assert(TierObject<DiskTier>);

template <class Encode>
WriteBatch DiskTier::take(std::size_t max_blocks, Encode&& encode) {
  KVTIER_ASSERT(!batch_open_);
  WriteBatch b;
  b.deletes = deletes_;
  batch_deletes_ = std::move(deletes_);
  deletes_.clear();
  while (!writes_.empty() && b.writes.size() < max_blocks) {
    WriteItem item = std::move(writes_.front());
    writes_.pop_front();
    DiskEntry& e = index_.at(item.entry);
    KVTIER_ASSERT(e.state == DiskState::kPending && e.slot != kNil);
    e.state = DiskState::kWriting;
    b.writes.push_back(encode(item.entry, item.words));
    batch_.push_back(std::move(item));
  }
  batch_open_ = !b.writes.empty() || !b.deletes.empty();
  return b;
}

template <class Release, class Drop>
void DiskTier::finish(bool ok, const std::string& error, std::uint64_t keep, Release&& release, Drop&& drop) {
  if (!batch_open_) return;
  for (WriteItem& item : batch_) {
    const std::uint32_t id = item.entry;
    DiskEntry& e = index_.at(id);
    KVTIER_ASSERT(e.state == DiskState::kWriting);
    if (ok) {
      release(e.slot);
      e.slot = kNil;
      e.state = DiskState::kCommitted;
      ++stats_.written;
      stats_.bytes_written += block_bytes_;
      index_.refresh(id);
      --queued_;
    } else if (failed_.size() < keep) {
      e.state = DiskState::kPending;  // still readable from its slot
      ++stats_.write_errors;
      failed_.push_back(std::move(item));
    } else {
      release(e.slot);
      e.slot = kNil;
      drop(id);
      ++failed_dropped_;
      --queued_;
    }
  }
  if (!ok && !batch_.empty() && first_error_.empty()) first_error_ = error.empty() ? "unknown error" : error;
  batch_.clear();
  // Deletes that did not commit are kept (and stay in deleting_) for the next flush to retry, like failed
  // writes: the folder still holds those blocks, and a later open would bring them back.
  for (const Key& k : batch_deletes_) {
    if (ok)
      deleting_.erase(k);
    else
      failed_deletes_.push_back(k);
  }
  if (!batch_deletes_.empty()) ++delete_generation_;
  batch_deletes_.clear();
  batch_open_ = false;
}

}  // namespace kvtier
