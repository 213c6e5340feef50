// Store: the coordinator's side of the disk tier — demotion, disk lookups, loads from the folder, promotion,
// restore and expiry, and the writer calls (disk_take / disk_finish / disk_flush ...) that lock the store and
// drive the tier's write queue. The tier's state (index, counters, the writer protocol's queue and batch) is
// DiskTier's (tiers/disk_tier.h). The folder itself (LMDB) is driven by the Python writer; everything here
// runs under the store lock.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <exception>
#include <limits>

#include "core/checksum.h"
#include "tiers/disk_record.h"
#include "store/store.h"

namespace kvtier {

// Makes room for one more disk block by evicting committed leaves by policy. False if none can go.
bool Store::disk_room(double now) {
  while (disk_->full()) {
    const std::uint32_t v = disk_->coldest();
    if (v == kNil) return false;
    disk_remove(v, now, disk_expired(disk_->index().at(v), now) ? Gone::kExpired : Gone::kEvicted);
  }
  return true;
}

// Queues block `block` of host node `node` for the disk. With `host_keeps` the host tree keeps the
// block too (write-through); otherwise the host's hold on the slot passes to the write (demotion).
void Store::queue_write(std::uint32_t node, std::uint32_t block, bool host_keeps, double now) {
  if (device_ && on_device(node)) dev_write_back(node);  // the writer reads the host slot
  const std::uint32_t slot = tree_.at(node).payload->slots[block];
  const Key key = node_keys(node)[block];
  const bool known = disk_->index().find(key) != kNil;  // already on disk or queued: same key, same payload
  if (known || !disk_room(now)) {
    if (!known) ++disk_->counters().rejected;
    if (!host_keeps) host_.unref(slot);
    return;
  }
  const Key parent = parent_key_of(node, block);
  const Node& nd = tree_.at(node);
  // The disk tier's reserve (an entry, charged) and copy in (queued for the writer, which reads the slot).
  const DiskTier::Ticket t = disk_->reserve({.key = key, .parent = parent, .ns = nd.ns, .account = nd.account,
                                             .state = DiskState::kPending, .slot = slot, .seq = nd.seq,
                                             .last_access = nd.last_access, .hits = nd.hits, .now = now});
  if (host_keeps) host_.ref(slot);
  const Word* w = nd.words.data() + static_cast<std::size_t>(block) * spec_.width;
  disk_->copy_in({t, std::vector<Word>(w, w + spec_.width), host_.checksum(slot)});
  cv_.notify_all();
}

// Whether blocks [host_blocks, to) of `words` are all on disk, following the host match of
// `host_blocks` blocks; `*last` becomes the key of block to - 1.
bool Store::disk_chain(std::uint32_t ns, const Word* words, std::size_t host_blocks, std::size_t to, double now,
                       Key* last) {
  walk(ns, words, host_blocks, now, /*reclaim=*/false);
  Key prev{};
  bool chained = false;
  if (host_blocks > 0) {
    if (path_.empty()) return false;
    prev = node_keys(path_.back().node)[path_.back().blocks - 1];
    chained = true;
  }
  for (std::size_t i = host_blocks; i < to; ++i) {
    Key k;
    chain_keys(ns_keys_[ns], chained ? &prev : nullptr, words + i * spec_.width, 1, spec_.width, nullptr, 0, &k);
    const std::uint32_t id = disk_->index().find(k);
    if (id == kNil || disk_expired(disk_->index().at(id), now)) return false;
    prev = k;
    chained = true;
  }
  *last = prev;
  return true;
}

// Queues blocks [from, to) of an insert straight for the disk, chained from `*prev` (zero: none),
// each in a free slot of the arena's queue reserve. Returns the blocks stored (already on disk or
// queued); stops early when the disk is full of pinned or queued blocks.
std::size_t Store::spill_locked(std::uint32_t ns, std::uint32_t account, const Word* words, std::size_t from,
                                std::size_t to, Memory payload, std::size_t payload_first, double now,
                                Key* prev) {
  const std::uint32_t width = spec_.width;
  const std::size_t bb = spec_.block_bytes;
  std::size_t i = from;
  for (; i < to; ++i) {
    Key key;
    const bool first = is_zero_key(*prev) && i == 0;
    chain_keys(ns_keys_[ns], first ? nullptr : prev, words + i * width, 1, width, nullptr, 0, &key);
    if (disk_->index().find(key) == kNil) {
      if (host_.arena()->free_slots() == 0) break;
      if (!disk_room(now)) {
        ++disk_->counters().rejected;
        break;
      }
      // A move into two tiers: reserve a host slot (from the arena's queue reserve, not the host tree's room)
      // and a disk entry; copy the payload into the slot (under the lock); commit by handing the slot to the
      // entry's queued write; or, when the copy fails, unreserve both.
      HostTier::Ticket ticket = host_.reserve(1);
      DiskTier::Ticket entry = disk_->reserve({.key = key, .parent = first ? Key{} : *prev, .ns = ns,
                                               .account = account, .state = DiskState::kPending,
                                               .slot = ticket.slots[0], .seq = ++seq_, .last_access = now,
                                               .now = now});
      try {
        host_copy_in(ticket, payload.at(i - payload_first, bb));
      } catch (...) {
        disk_->unreserve(entry);
        host_.unreserve(ticket);
        throw;
      }
      const std::uint32_t slot = host_.hand_over(ticket);
      disk_->copy_in({entry, std::vector<Word>(words + i * width, words + (i + 1) * width), host_.checksum(slot)});
    }
    *prev = key;
  }
  cv_.notify_all();
  return i - from;
}

std::uint64_t Store::disk_persist(std::size_t max_blocks, double now) {
  std::lock_guard<std::mutex> lock(mu_);
  check_open();
  if (!disk_) return 0;
  if (std::isnan(now)) now = clock_.latest();
  // Host blocks keep their slots while queued, so this needs no room in the queue's slot reserve.
  std::uint64_t queued = 0;
  std::exception_ptr failed;
  std::vector<std::uint32_t> todo;
  for (std::uint32_t root : roots_)
    if (root != kNil) todo.push_back(root);  // not a retired namespace
  while (!todo.empty() && queued < max_blocks) {
    const std::uint32_t id = todo.back();
    todo.pop_back();
    for (std::uint32_t c = tree_.at(id).first_child; c != kNil; c = tree_.at(c).next_sibling) todo.push_back(c);
    if (tree_.at(id).parent == kNil) continue;
    const std::vector<Key>& keys = node_keys(id);
    for (std::uint32_t b = 0; b < keys.size() && queued < max_blocks; ++b) {
      if (disk_->index().find(keys[b]) != kNil) continue;
      const std::uint64_t before = disk_->queued();
      try {
        queue_write(id, b, /*host_keeps=*/true, now);
      } catch (const cuda::DriverError&) {
        // A dirty device node could not be written back: persist every other node, then report it.
        if (!failed) failed = std::current_exception();
        break;
      }
      if (disk_->queued() == before) return queued;  // the disk is full of pinned or queued blocks
      ++queued;
    }
  }
  if (failed) std::rethrow_exception(failed);
  return queued;
}

void Store::disk_remove(std::uint32_t id, double now, Gone why) {
  DiskEntry& e = disk_->index().at(id);
  const std::uint64_t bb = spec_.block_bytes;
  KVTIER_ASSERT(e.state == DiskState::kCommitted || (why == Gone::kFailed && e.state == DiskState::kWriting));
  if (why == Gone::kExpired) {
    // Residency ends at the expiry instant, not at the (later) reclaim.
    const double expiry = e.last_access + spec_.disk.ttl();
    if (now > expiry) disk_->residency().refund(e.account, static_cast<double>(bb) * (now - expiry));
  }
  disk_->remove(id, why, now);
  cv_.notify_all();
}

std::uint64_t Store::disk_expire_locked(double now) {
  if (spec_.disk.ttl() <= 0.0) return 0;
  const std::uint64_t before = disk_->counters().expired;
  if (spec_.disk.policy != Policy::kLFU) {
    // The queue is in touch order, which is time order: expired leaves come first.
    for (std::uint32_t v = disk_->coldest(); v != kNil && disk_expired(disk_->index().at(v), now); v = disk_->coldest())
      disk_remove(v, now, Gone::kExpired);
  } else {
    // Parents are touched with their children, so expired leaves go first, then their parents.
    bool again = true;
    while (again) {
      again = false;
      for (std::uint32_t id = 0; id < disk_->index().slots(); ++id) {
        const DiskEntry& e = disk_->index().at(id);
        if (e.heap_pos != kNil && disk_expired(e, now)) {
          disk_remove(id, now, Gone::kExpired);
          again = true;
        }
      }
    }
  }
  return disk_->counters().expired - before;
}

// Continues a lookup past the host match (path_) on disk: computes each next block's key and finds
// it in the index. Returns the disk blocks found; their entries go to `ids`.
std::uint32_t Store::disk_walk(std::uint32_t ns, const Word* words, std::size_t n, double now, bool touch,
                               MatchResult* r, std::vector<std::uint32_t>* ids) {
  Key prev{};
  bool chained = false;
  if (!path_.empty()) {
    const Step& s = path_.back();
    prev = node_keys(s.node)[s.blocks - 1];
    chained = true;
  }
  const std::uint64_t op = touch ? ++seq_ : 0;
  const std::uint32_t width = spec_.width;
  std::size_t i = r->blocks;
  for (; i < n; ++i) {
    Key k;
    chain_keys(ns_keys_[ns], chained ? &prev : nullptr, words + i * width, 1, width, nullptr, 0, &k);
    const std::uint32_t id = disk_->index().find(k);
    if (id == kNil) {
      r->probe = true;
      r->probe_key = k;
      break;
    }
    DiskEntry& e = disk_->index().at(id);
    if (disk_expired(e, now)) break;
    ids->push_back(id);
    if (touch) {
      e.seq = op;
      e.last_access = now;
      ++e.hits;
      disk_->index().touched(id);
    }
    prev = k;
    chained = true;
  }
  return static_cast<std::uint32_t>(i - r->blocks);
}

std::uint32_t Store::disk_finish_load(PinId pin, Memory out, std::uint32_t good,
                                      const std::vector<Key>& corrupt, const std::vector<Key>& missing, bool promote,
                                      double now, const std::uint8_t* staged,
                                      const std::vector<std::uint32_t>& staged_blocks) {
  std::unique_lock<std::mutex> lock(mu_);
  check_open();
  pin_record(pin);  // throws for a pin released meanwhile, before anything changes
  if (staged != nullptr) {  // GPU `out`: the folder's blocks were read into host memory first
    KVTIER_ASSERT(out.nparts == 0);  // scattered host runs are written by the folder reader itself
    const std::size_t bb = spec_.block_bytes;
    std::vector<Run> runs;
    for (std::size_t k = 0; k < staged_blocks.size(); ++k)
      if (staged_blocks[k] < good)
        runs.push_back({reinterpret_cast<std::uint64_t>(out.data + staged_blocks[k] * bb),
                        reinterpret_cast<std::uint64_t>(staged + k * bb), bb});
    mover_.run(runs, out.device);
  }
  now = clock_.advance_or_latest(now);
  for (const auto* keys : {&corrupt, &missing}) {
    for (const Key& k : *keys) {
      const std::uint32_t id = disk_->index().find(k);
      if (id != kNil && disk_->index().at(id).state == DiskState::kCommitted)
        disk_remove(id, now, keys == &corrupt ? Gone::kCorrupt : Gone::kMissing);
    }
  }
  const PinRecord& rec = pin_record(pin);
  if (good <= rec.host_blocks) return good;
  const std::uint32_t from_disk = good - rec.host_blocks;
  disk_->counters().bytes_read += static_cast<std::uint64_t>(from_disk) * spec_.block_bytes;
  if (!promote) return good;
  // Copied out of the pin record: promotion's copies run with the lock released, when other threads may
  // release this pin or add others (pin_records_ may move).
  const std::vector<Word> words = rec.words;
  promote_from_disk(rec.ns, disk_->index().at(rec.disk[0]).account, words, rec.host_blocks, good, out, now, &lock);
  return good;
}

// The promotion rule, for a disk hit of any length: blocks [from, to) of the prompt `words`, loaded
// into `out` (blocks 0..to-1), are copied up into the host tier as far as room can be made there —
// free capacity, then host blocks evicted by policy (a block already on disk leaves at no cost; one that
// is not queues its write). It goes chunk by chunk and stops rather than wait: when the write queue
// cannot take another chunk's demotions, or the host tier is full of pinned blocks. Each chunk is an
// insert (reserve, copy, commit): its copy from `out` runs with `lock` released when it touches no GPU
// memory (insert_locked holds the prefix meanwhile). Precondition: `lock` holds the store lock, and the
// prefix [0, from) is pinned by the caller; `words` and `out` stay valid (the caller's, not the store's).
void Store::promote_from_disk(std::uint32_t ns, std::uint32_t account, const std::vector<Word>& words,
                              std::uint32_t from, std::uint32_t to, Memory out, double now,
                              std::unique_lock<std::mutex>* lock) {
  const std::uint64_t chunk = std::max<std::uint64_t>(1, spec_.disk.queue_blocks / 4);
  std::uint32_t done = from;
  std::uint64_t promoted = 0;
  while (done < to && disk_->queued() + chunk <= spec_.disk.queue_blocks) {
    const auto end = static_cast<std::uint32_t>(std::min<std::uint64_t>(to, done + chunk));
    const InsertResult r = insert_locked(ns, account, words.data(), end, out, 0, now, false, lock);
    promoted += r.inserted;
    if (r.matched + r.inserted < end) break;  // no more room without waiting
    done = end;
  }
  disk_->counters().promoted += promoted;
  if (device_ && promoted > 0) {  // and on up to the device, like the host blocks of a load
    walk(ns, words.data(), to, now, /*reclaim=*/false);
    dev_promote_path(now);
  }
}

bool Store::disk_wait(double timeout_s) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, std::chrono::duration<double>(timeout_s),
               [&] { return closed_ || (disk_ && disk_->has_work()); });
  return closed_;
}

WriteBatch Store::disk_take(std::size_t max_blocks, double wall_now) {
  std::lock_guard<std::mutex> lock(mu_);
  KVTIER_ASSERT(disk_ && !disk_->batch_open());
  if (closed_) {
    WriteBatch b;
    b.closed = true;
    return b;
  }
  const double store_now = clock_.latest();
  return disk_->take(max_blocks, [&](std::uint32_t id, const std::vector<Word>& words) {
    const DiskEntry& e = disk_->index().at(id);
    DiskRecord rec;
    rec.width = spec_.width;
    rec.checksum = e.checksum;
    rec.length = static_cast<std::uint32_t>(spec_.block_bytes);
    rec.wall_time = wall_now - std::max(0.0, store_now - e.last_access);
    rec.hits = e.hits;
    rec.ns = ns_keys_[e.ns];
    rec.parent = e.parent;
    rec.words = words;
    rec.session = accounts_.session(e.account);
    return WriteOut{e.key, encode_record(rec), host_.arena()->slot_ptr(e.slot)};
  });
}

void Store::disk_finish(bool ok, const std::string& error) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!disk_ || !disk_->batch_open()) return;
  const double now = clock_.latest();
  // Failed blocks stay queued while an insert waiting for a chunk of queue room (wait_queue_room)
  // can still get it once the live queue drains; the rest are dropped.
  const std::uint64_t limit = spec_.disk.queue_blocks;
  const std::uint64_t keep = limit - std::min<std::uint64_t>(limit, std::max<std::uint64_t>(1, limit / 4));
  disk_->commit({ok, &error, keep, [&](std::uint32_t slot) { host_.unref(slot); },
                 [&](std::uint32_t id) { disk_remove(id, now, Gone::kFailed); }});
  cv_.notify_all();
}

std::vector<Key> Store::disk_make_room(std::size_t blocks, double now) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!disk_) return {};
  if (std::isnan(now)) now = clock_.latest();
  for (std::size_t k = 0; k < blocks && disk_->coldest() != kNil; ++k)
    disk_remove(disk_->coldest(), now, Gone::kEvicted);
  return disk_->take_room_deletes();
}

bool Store::disk_flush(double timeout_s, bool host, std::string* errors) {
  errors->clear();
  if (!disk_) return true;  // nothing is ever queued
  if (host) disk_persist(~std::size_t{0}, std::numeric_limits<double>::quiet_NaN());
  std::unique_lock<std::mutex> lock(mu_);
  // A retry: the writes (and deletes) that failed before go first (the writer thread takes them).
  if (disk_->retry_failed()) cv_.notify_all();
  const auto done = [&] { return closed_ || disk_->settled(); };
  bool ok = true;
  if (timeout_s < 0.0)
    cv_.wait(lock, done);
  else
    ok = cv_.wait_for(lock, std::chrono::duration<double>(timeout_s), done);
  disk_->flush_report(ok, errors);
  return ok;
}

std::uint64_t Store::disk_restore(const std::vector<std::pair<Key, std::string>>& records, double wall_now,
                                  double now, std::vector<Key>* bad, std::uint64_t* foreign,
                                  std::optional<std::uint64_t> generation) {
  std::lock_guard<std::mutex> lock(mu_);
  check_open();
  if (generation && *generation != (disk_ ? disk_->delete_generation() : 0)) return 0;
  // Restored blocks are dated like any call's changes, and the clock moves with them: at `now`, or (none
  // given) the latest time seen, or the monotonic clock at open. A caller who drives the store with its
  // own clock passes its time to the Store constructor (which sets the clock even for an empty folder).
  if (records.empty() && std::isnan(now)) return 0;  // nothing dated, no time given: the clock is not touched
  now = clock_.advance_or_latest(now);
  struct Parsed {
    const Key* key;
    DiskRecord rec;
  };
  std::vector<Parsed> parsed;
  parsed.reserve(records.size());
  for (const auto& [key, bytes] : records) {
    Parsed p{&key, {}};
    if (!decode_record(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size(), &p.rec)) {
      bad->push_back(key);
      continue;
    }
    if (p.rec.width != spec_.width || p.rec.length != spec_.block_bytes) {
      ++*foreign;  // another block geometry: never served here, left for its own stores (and fsck)
      continue;
    }
    Key check;
    chain_keys(p.rec.ns, is_zero_key(p.rec.parent) ? nullptr : &p.rec.parent, p.rec.words.data(), 1, spec_.width,
               nullptr, 0, &check);
    if (check != key) {
      bad->push_back(key);
      continue;
    }
    parsed.push_back(std::move(p));
  }
  // Oldest first, so that the LRU order survives the restart.
  std::stable_sort(parsed.begin(), parsed.end(),
                   [](const Parsed& a, const Parsed& b) { return a.rec.wall_time < b.rec.wall_time; });
  disk_->index().reserve(disk_->index().slots() + parsed.size());
  std::uint64_t restored = 0;
  for (Parsed& p : parsed) {
    if (disk_->index().find(*p.key) != kNil || disk_->deleting(*p.key)) continue;
    if (!disk_room(now)) break;
    const std::uint32_t ns = add_namespace_locked(p.rec.ns);
    const std::uint32_t account = account_locked(ns, p.rec.session);
    // Reserved as committed: the folder holds it already.
    disk_->reserve({.key = *p.key, .parent = p.rec.parent, .ns = ns, .account = account,
                    .state = DiskState::kCommitted, .slot = kNil, .checksum = p.rec.checksum, .seq = ++seq_,
                    .last_access = now - std::max(0.0, wall_now - p.rec.wall_time), .hits = p.rec.hits,
                    .now = now});
    ++restored;
  }
  disk_->counters().restored += restored;
  return restored;
}

std::uint64_t Store::delete_generation() {
  std::lock_guard<std::mutex> lock(mu_);
  return disk_ ? disk_->delete_generation() : 0;
}

std::vector<Key> Store::chain_keys_from(NsId ns, const Word* words, std::size_t n, std::size_t from,
                                        const Key* parent) {
  Key ns_key;
  {
    std::lock_guard<std::mutex> lock(mu_);
    check_open();
    ns_key = ns_keys_[slot_of(ns)];
  }
  std::vector<Key> keys(n > from ? n - from : 0);
  if (!keys.empty()) chain_keys(ns_key, parent, words + from * spec_.width, keys.size(), spec_.width, nullptr, 0, keys.data());
  return keys;
}

std::vector<Key> Store::disk_take_removed(std::uint64_t* dropped) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!disk_) {
    *dropped = 0;
    return {};
  }
  return disk_->take_removed(dropped);
}

DiskStats Store::disk_stats() {
  std::lock_guard<std::mutex> lock(mu_);
  return disk_ ? disk_->stats() : DiskStats{};
}

}  // namespace kvtier
