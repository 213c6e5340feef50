// Store: the coordinator — the radix tree, policies, namespaces, pins and the clock behind one lock,
// driving the tier objects that own their state (slots, index, counters, residency) through the tier
// interface (tiers/tier.h: reserve, copy in/out, commit, coldest, room, stats, residency): the host, device
// and disk tiers (tiers/host_tier.h, device_tier.h, disk_tier.h).
//
// Every public call takes `now` in seconds (NaN: the clock's rule for that call, clock.h), locks the
// store, and may throw Error (see common.h) for user mistakes: kClosed after close(), kInvalidArgument
// for time going backwards or an unknown namespace/account, kStalePin for a released pin, kTypeError
// never (the bindings check types). Host payload copies run with the lock released, their blocks held
// (run_held: reserve, copy, commit), promotion copies from disk loads too; copies touching GPU memory still run under it.
// None runs under the Python GIL (the bindings release it before they lock).
#pragma once

#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "core/accounts.h"
#include "core/clock.h"
#include "core/common.h"
#include "tiers/device_tier.h"
#include "tiers/disk_tier.h"
#include "tiers/host_tier.h"
#include "tiers/remote_tier.h"
#include "tiers/tier.h"
#include "core/keys.h"
#include "core/policy.h"
#include "core/residency.h"
#include "core/spec.h"
#include "core/tree.h"

namespace kvtier {

// A namespace id: its slot (low 32 bits) and the slot's generation (high 32 bits). A namespace that
// leaves frees its slot for another under a new generation, so a stale id is refused (kNotFound),
// never taken for another tenant.
using NsId = std::uint64_t;
inline constexpr NsId kNoNamespace = ~NsId{0};

struct AccountResidency {
  NsId ns;                 // kNoNamespace: the namespaces that ended
  std::string session;
  bool ended;              // the namespace's sessions that ended (retired accounts, accounts.h)
  int tier;
  std::int64_t bytes;      // resident now
  double byte_seconds;     // integral up to `now`
};

// A pin: its record's index (low 32 bits) and that record's generation (high 32 bits). A released
// pin's record is reused under a new generation, so a stale or foreign handle is refused, never
// taken for another request's prefix.
using PinId = std::uint64_t;
inline constexpr PinId kNoPin = ~PinId{0};

struct MatchResult {
  std::uint32_t blocks = 0;       // leading full blocks found in the host tier
  std::uint32_t disk_blocks = 0;  // blocks found on disk after those
  std::uint32_t device_blocks = 0;  // of the host blocks, those also on the device tier
  std::vector<std::uint8_t> on_device;  // per host block, 1 if on the device (filled when a device tier exists)
  PinId pin = kNoPin;             // the pin (when asked and something matched)
  bool probe = false;             // the disk lookup stopped at a missing key: `probe_key` of
  Key probe_key{};                // block blocks + disk_blocks (another process may have stored it)
};

struct InsertResult {
  std::uint32_t matched = 0;   // blocks already present
  std::uint32_t inserted = 0;  // new blocks stored (fewer than asked when pinned blocks fill the tier)
};

// Array-encoded trace for Store::replay. Request r covers blocks [offsets[r], offsets[r+1]).
struct ReplayTrace {
  const std::uint64_t* offsets = nullptr;  // n_requests + 1
  const Word* words = nullptr;             // offsets[n] * width
  const double* times = nullptr;           // n_requests, non-decreasing seconds
  const std::vector<Key>* ns_keys = nullptr;  // the trace's namespaces (at least one)
  const std::uint32_t* ns_index = nullptr; // n_requests indices into ns_keys, or nullptr: all the first
  const std::uint32_t* sessions = nullptr; // n_requests indices into session_table, or nullptr: no session
  const std::vector<std::string>* session_table = nullptr;
  std::size_t n_requests = 0;
};

class Store {
 public:
  explicit Store(const StoreSpec& spec);  // throws Error(kInvalidArgument / kCapacity)
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  const StoreSpec& spec() const { return spec_; }

  // Registers a namespace (idempotent for the same key). Returns its id. Namespaces that hold nothing
  // (no block in any tier, no session account, no call in flight) leave once more than
  // kNamespaceSweepFloor are registered: their ids are never issued again (a call with one gets
  // kNotFound), and their residency joins the total of ended namespaces.
  NsId add_namespace(const Key& ns_key);
  static constexpr std::size_t kNamespaceSweepFloor = 1024;
  // Ids of namespaces that left since the last call (the facade forgets them).
  std::vector<NsId> take_retired_namespaces();
  std::vector<NsId> namespaces();  // the live ones
  Key namespace_key_of(NsId ns);

  // Longest cached prefix of `n` blocks. touch: refresh recency, count hits/misses, split the last
  // node at the match end; pin: hold the matched prefix until unpin(result.node).
  MatchResult match(NsId ns, const Word* words, std::size_t n, double now, bool touch, bool pin);
  // Releases a pin. Releasing counts as an access of the prefix (recency refreshed, no hit): its
  // idle time, and so its TTL, starts now. NaN `now` means the latest time the store has seen.
  // Throws Error(kStalePin) for a pin that was released already or never issued by this store.
  void unpin(PinId pin, double now);

  // Stores the blocks of `words` not yet present. Payload mode: `payload` holds blocks
  // [payload_first, n) back to back (block_bytes each); blocks below payload_first must be present.
  // `payload` may be GPU memory: with a device tier on that GPU the new blocks go to the device tier
  // (device to device; their host slots are written only when the device evicts them), otherwise they
  // are copied to the host tier.
  // The new blocks are charged to residency account (ns, session); "" is the namespace's default.
  InsertResult insert(NsId ns, const std::string& session, const Word* words, std::size_t n,
                      Memory payload, std::size_t payload_first, double now);

  // Copies the payloads of pinned prefix `pin` (at most `max_blocks`) to `out`: host blocks and
  // disk blocks still in the write queue. Returns the blocks copied from the front; committed disk
  // blocks after them are listed in `reads` for the caller to read from the folder, verify and copy
  // (copy_with_checksum), then report with disk_finish_load.
  // `out` may be GPU memory. With a device tier that promotes, the host blocks read are copied up to it.
  std::uint32_t load_pinned(PinId pin, Memory out, std::size_t max_blocks, std::vector<DiskRead>* reads);
  // After a load's folder reads: `good` leading blocks of the prefix are in `out`; `bad` keys failed
  // their checksum (or were gone) and are removed. With `promote`, good disk blocks are copied into
  // the host tier when that needs no wait. Returns `good`.
  // When `out` is a tensor (GPU memory, or host memory the folder reader cannot write into) the caller
  // read the folder's blocks into host memory `staged` instead
  // (block staged_blocks[k] at staged + k * block_bytes); they are copied to `out` first.
  std::uint32_t disk_finish_load(PinId pin, Memory out, std::uint32_t good, const std::vector<Key>& corrupt,
                                 const std::vector<Key>& missing, bool promote, double now,
                                 const std::uint8_t* staged = nullptr,
                                 const std::vector<std::uint32_t>& staged_blocks = {});
  // Match (touching) and copy in one locked step. Returns blocks copied.
  std::uint32_t load(NsId ns, const Word* words, std::size_t n, Memory out, double now);
  // Chained keys of pinned prefix `pin` (payload mode).
  std::vector<Key> keys_pinned(PinId pin);

  // ---- disk tier: the writer side (one writer thread) ----
  // Takes at most `max_blocks` queued writes and every pending delete (without waiting: see
  // disk_wait). `wall_now` (seconds since the epoch) dates the index records.
  WriteBatch disk_take(std::size_t max_blocks, double wall_now);
  // Waits up to `timeout_s` until there is work for the writer; true once the store is closed.
  bool disk_wait(double timeout_s);
  // Ends the batch taken last: committed (`ok`), or not persisted (`error` says why). Blocks not
  // persisted stay queued (their host slots keep them readable) for the next disk_flush to retry, up
  // to the queue's room for a chunk of new writes; blocks beyond that are dropped. Counted per block.
  void disk_finish(bool ok, const std::string& error);
  // The folder's map is full: evicts up to `blocks` committed blocks and returns their keys (to
  // delete in a transaction of their own before retrying; they count as part of the open batch).
  std::vector<Key> disk_make_room(std::size_t blocks, double now);
  // Puts the writes that failed before back in the queue, then waits until every write queued so far
  // is committed or has failed again (or `timeout_s` passes: returns false); with `host`, queues the
  // host blocks not on disk first (disk_persist). `errors` becomes one line, empty when every block
  // is persisted: how many blocks are not (kept queued, dropped) and the first cause.
  bool disk_flush(double timeout_s, bool host, std::string* errors);
  // Index records read from the folder (at open, or found by a probe): entries become committed
  // disk blocks. Returns the keys of records that are damaged (to delete) in `bad`; records of
  // another block geometry are skipped and counted in `foreign`.
  // An import from a probe passes the delete_generation() read before its folder snapshot: if deletes
  // committed since, the snapshot may hold blocks this store removed, and nothing is imported.
  std::uint64_t disk_restore(const std::vector<std::pair<Key, std::string>>& records, double wall_now, double now,
                             std::vector<Key>* bad, std::uint64_t* foreign,
                             std::optional<std::uint64_t> generation = std::nullopt);
  std::uint64_t delete_generation();
  // Keys of blocks `from`.. of `words` chained from `parent` (nullptr: the first block).
  std::vector<Key> chain_keys_from(NsId ns, const Word* words, std::size_t n, std::size_t from,
                                   const Key* parent);
  // Queues up to `max_blocks` host blocks that are not on disk yet (a clean shutdown of a
  // write-back store persists its host tier this way; they keep their host slots meanwhile).
  // Returns the blocks queued.
  std::uint64_t disk_persist(std::size_t max_blocks, double now);
  // Keys of blocks that left the disk tier (evicted, expired, corrupt, missing, not persisted, cleared)
  // since the last call, oldest first; at most kRemovedLog are kept (older ones are dropped and
  // counted in *dropped). For KV events.
  std::vector<Key> disk_take_removed(std::uint64_t* dropped);
  static constexpr std::size_t kRemovedLog = DiskTier::kRemovedLog;
  DiskStats disk_stats();

  // ---- remote tier: blocks the host tier evicts (no disk tier), for its writer (one demoter thread) ----
  struct RemoteBatch {
    std::vector<Demoted> blocks;
    std::vector<const std::uint8_t*> payloads;  // block_bytes each, valid until remote_finish
    bool closed = false;                        // the store is closing: the demoter should stop
  };
  // Waits up to `timeout_s` for evicted blocks, then hands out at most `max_blocks` of them (none while a
  // batch is out). Their host slots stay held until remote_finish.
  RemoteBatch remote_take(std::size_t max_blocks, double timeout_s);
  void remote_finish();  // the batch taken last was copied: its slots go back
  RemoteDemotionStats remote_stats();

  std::uint64_t evict(std::uint64_t bytes, double now);  // host: frees at least `bytes` (demoting to disk)
  std::uint64_t evict_device(std::uint64_t bytes, double now);  // device: frees at least `bytes` (to the host)
  std::uint64_t expire(double now);                      // reclaims expired blocks; returns blocks
  std::uint64_t clear(double now);                       // removes every unpinned block, every tier
  // Returns the namespace id of each of trace.ns_keys (registered if needed; none leaves meanwhile).
  std::vector<NsId> replay(const ReplayTrace& trace, std::int32_t* hits_out);

  TierStats stats();
  DeviceStats device_stats();
  std::vector<AccountResidency> residency(double now);
  double clock_now();  // the store's notion of now (last time seen, or the monotonic clock)
  void close();  // waits for a writer batch in flight; wakes the writer
  bool closed();

  // Checks every structural invariant (tests). Throws nothing; aborts on violation.
  void check_invariants();

 private:
  struct PinRecord {
    std::uint32_t node = kNil;             // deepest pinned host node
    std::uint32_t host_blocks = 0;
    std::uint32_t ns = 0;
    std::vector<std::uint32_t> disk;       // pinned disk entries, in prompt order
    std::vector<Word> words;               // the prompt's blocks up to the end of `disk` (promotion)
    std::uint32_t generation = 0;          // bumped at every release
    bool alive = false;
  };
  // Blocks held for a copy that runs outside the lock: the path from the root down to `deepest` (each
  // node pinned once more) and host slots of queued disk writes (one more reference each). Taken and
  // released under the lock, walking parents both times (another thread may split a held node meanwhile:
  // both halves carry the pin); while any hold is out, close() waits.
  struct Hold {
    std::uint32_t deepest = kNil;  // kNil: no tree node
    std::vector<std::uint32_t> slots;
  };
  void take_hold(Hold& h);
  void release_hold(Hold& h);
  struct Step {
    std::uint32_t node;
    std::uint32_t blocks;  // blocks of this node matched (the last step may be partial)
  };
  void check_open() const;
  // Residency, summed over the tiers' ledgers (tier.h: each tier charges its own).
  bool holds_nothing(std::uint32_t account) const;
  void retire_account(std::uint32_t account);
  std::uint32_t root_of(std::uint32_t ns) const;  // by slot
  std::uint32_t slot_of(NsId id) const;           // throws Error(kNotFound) for an unknown or stale id
  NsId id_of(std::uint32_t slot) const { return (NsId{ns_gen_[slot]} << 32) | slot; }
  bool expired(const Node& n, double now) const {
    return spec_.host.ttl() > 0.0 && n.pins == 0 && now - n.last_access > spec_.host.ttl();
  }
  bool disk_expired(const DiskEntry& e, double now) const {
    return spec_.disk.ttl() > 0.0 && e.pins == 0 && e.state == DiskState::kCommitted &&
           now - e.last_access > spec_.disk.ttl();
  }
  std::uint32_t add_namespace_locked(const Key& ns_key, bool sweep = true);
  void retire_idle_namespaces();
  // The account of (ns, session), created if needed; first retires ended accounts when a sweep is due.
  std::uint32_t account_locked(std::uint32_t ns, const std::string& session);
  PinId new_pin();
  PinRecord& pin_record(PinId pin);  // throws Error(kStalePin)
  void unpin_disk(PinRecord& rec);
  const std::vector<Key>& node_keys(std::uint32_t id);
  Key parent_key_of(std::uint32_t node, std::uint32_t block);
  std::uint32_t disk_walk(std::uint32_t ns, const Word* words, std::size_t n, double now, bool touch,
                          MatchResult* r, std::vector<std::uint32_t>* ids);
  bool disk_room(double now);
  void demote_remote(std::uint32_t node, std::uint32_t block, double now);
  void queue_write(std::uint32_t node, std::uint32_t block, bool host_keeps, double now);
  using Gone = DiskTier::Gone;
  void disk_remove(std::uint32_t entry, double now, Gone why);
  std::uint64_t disk_expire_locked(double now);
  void wait_queue_room(std::unique_lock<std::mutex>& lock, std::uint64_t blocks);
  static constexpr double kRemoteRoomWait = 2.0;  // seconds an eviction waits for the demotion queue
  void wait_remote_room(std::unique_lock<std::mutex>& lock, std::uint64_t blocks);
  InsertResult insert_demoting(std::uint32_t ns, std::uint32_t account, const Word* words, std::size_t n,
                               Memory payload, std::size_t payload_first, double now,
                               std::unique_lock<std::mutex>& lock);
  void promote_from_disk(std::uint32_t ns, std::uint32_t account, const std::vector<Word>& words, std::uint32_t from,
                         std::uint32_t to, Memory out, double now, std::unique_lock<std::mutex>* lock);
  bool disk_chain(std::uint32_t ns, const Word* words, std::size_t host_blocks, std::size_t to, double now, Key* last);
  std::size_t spill_locked(std::uint32_t ns, std::uint32_t account, const Word* words, std::size_t from, std::size_t to,
                           Memory payload, std::size_t payload_first, double now, Key* prev);
  // ---- device tier (store/device.cpp) ----
  bool on_device(std::uint32_t id) const { return !tree_.at(id).payload->dslots.empty(); }
  // The device tier's slots; nullptr without a device tier or once closed.
  DeviceArena* darena() const { return device_ ? device_->arena() : nullptr; }
  bool dev_make_room(std::uint64_t blocks, std::uint64_t guard, double now);
  bool dev_place(std::uint32_t id, std::uint64_t guard, double now);
  void dev_write_back(std::uint32_t id);
  void dev_evict(std::uint32_t id, bool write_back, double now);
  void dev_promote_chain(const std::vector<std::uint32_t>& root_first, double now);
  void dev_promote_path(double now);
  // An insert's new leaf `child` whose blocks were copied into the device slots of `ticket` (out of line:
  // kept off the host insert path's code).
  [[gnu::noinline]] void dev_adopt(std::uint32_t child, DeviceTier::Ticket& ticket, double now);
  struct CopyRuns {
    std::vector<Run> host;    // host to host (memcpy)
    std::vector<Run> device;  // on device_ordinal's stream
    int device_ordinal = 0;
  };
  CopyRuns plan_copy_out(const std::vector<Step>& steps, Memory out);
  void run_copies(CopyRuns& c);
  // Runs `copy` with the store lock released, `hold` keeping its blocks from eviction meanwhile (the one
  // way a payload copy leaves the lock). Precondition: `lock` is held; it is held again on return, also
  // when `copy` throws.
  template <class Copy>
  void run_held(std::unique_lock<std::mutex>& lock, Hold& hold, Copy&& copy) {
    take_hold(hold);
    struct Release {
      Store* s;
      Hold& hold;
      ~Release() { s->release_hold(hold); }  // after the relock below
    } release{this, hold};
    run_unlocked(lock, copy);
  }
  // Runs `copy` with `lock` released; it is held again on return, also when `copy` throws. The caller
  // holds what `copy` touches (take_hold) for as long as it relies on it: an insert keeps its prefix held
  // until its commit, or the prefix could expire in between.
  template <class Copy>
  static void run_unlocked(std::unique_lock<std::mutex>& lock, Copy&& copy) {
    struct Relock {
      std::unique_lock<std::mutex>& lock;
      ~Relock() { lock.lock(); }
    } relock{lock};
    lock.unlock();
    copy();
  }
  // The host tier's copy in of `ticket` from `src`, with its checksums when the disk tier needs them.
  void host_copy_in(const HostTier::Ticket& ticket, Memory src) {
    host_.copy_in({&ticket, src, disk_ != nullptr, &mover_});
  }

  std::uint32_t walk(std::uint32_t ns, const Word* words, std::size_t n, double now, bool reclaim);
  void split_partial_end();
  void touch_path(double now, bool hit);
  void pin_path(std::int32_t delta);
  void refresh_candidate(std::uint32_t id);
  void drop_blocks(std::uint32_t id, std::uint32_t count, double now);
  void remove_subtree(std::uint32_t id, double now);
  std::uint64_t evict_blocks(std::uint64_t count, double now);
  std::uint64_t expire_locked(double now);
  // With `lock`, host payload copies run with it released (the prefix and the new slots held);
  // without, everything runs under the caller's lock.
  InsertResult insert_locked(std::uint32_t ns, std::uint32_t account, const Word* words, std::size_t n,
                             Memory payload, std::size_t payload_first, double now, bool as_hit,
                             std::unique_lock<std::mutex>* lock = nullptr);
  void insert_payload(std::uint32_t ns, std::uint32_t account, const Word* words, Memory payload,
                      std::size_t payload_first, double now, std::unique_lock<std::mutex>* lock, std::uint32_t attach,
                      std::uint64_t want, InsertResult* r);
  // Inline: both insert paths (payloads, metadata-only replay) commit through it.
  [[gnu::always_inline]] std::uint32_t add_leaf(std::uint32_t attach, std::uint32_t account, const Word* words,
                                                HostTier::Ticket& ticket, bool payload_written, double now,
                                                InsertResult* r);
  // Whether a copy to or from `mem` runs outside the lock: host memory, no device tier. Copies that
  // touch GPU memory still run under it (a slot's device copy could be evicted meanwhile).
  bool copies_unlocked(Memory mem) const { return !darena() && mem.device < 0; }

  StoreSpec spec_;
  std::mutex mu_;
  bool closed_ = false;
  Clock clock_;  // the one clock (clock.h)
  RadixTree tree_;
  HostTier host_;  // its slots, room, eviction candidates, slot holders, counters, residency (tiers/host_tier.h)
  std::uint64_t seq_ = 0;
  std::uint32_t shielded_ = kNil;     // a node kept out of the eviction queue while its insert makes room
  std::vector<std::uint32_t> roots_;  // per namespace slot; kNil for a free slot
  std::vector<std::uint32_t> default_account_;  // per namespace: its (ns, "") account
  AccountTable accounts_;
  std::vector<Key> ns_keys_;                    // per slot; all zero for a free slot
  std::vector<std::uint32_t> ns_gen_;           // per slot: generation, bumped when its namespace leaves
  std::vector<std::uint64_t> ns_born_;          // per slot: sweeps before its namespace came (newer ones are spared once)
  std::vector<std::uint32_t> free_ns_;          // free slots
  std::size_t live_namespaces_ = 0;
  std::size_t next_ns_sweep_ = kNamespaceSweepFloor;
  std::uint64_t ns_sweeps_ = 0;
  std::vector<NsId> retired_ns_;                // take_retired_namespaces
  std::map<Key, std::uint32_t> ns_ids_;  // key -> slot
  // Disk tier (spec_.disk.enabled): its index, counters and writer protocol (tiers/disk_tier.h).
  std::unique_ptr<DiskTier> disk_;
  // Remote tier (spec_.remote.enabled, no disk tier): host evictions waiting for its writer (tiers/remote_tier.h).
  std::unique_ptr<RemoteDemotions> remote_;
  bool demote_ = true;                    // host evictions go to disk or remote (false while clearing)
  std::condition_variable cv_;            // queue changes: writer work, room, flush
  std::vector<PinRecord> pin_records_;
  std::uint64_t holds_out_ = 0;           // holds taken and not released (copies outside the lock)
  std::vector<std::uint32_t> free_pins_;

  // Device tier (spec_.device.enabled): its slots, LRU list and counters (tiers/device_tier.h).
  std::unique_ptr<DeviceTier> device_;
  Mover mover_;  // runs the tiers' copies: memcpy, or the copy engine's device stream (created on first use)

  std::vector<Step> path_;           // scratch for walk()
  std::vector<std::uint32_t> stack_; // scratch for subtree walks
};

}  // namespace kvtier
