// Store: construction, namespaces, the tree walk, inserts, eviction and expiry, replay, reporting.
// Lookups and loads are in lookup.cpp, the disk tier's half in disk.cpp, the device tier's in device.cpp.
#include "store/store.h"

#include <algorithm>
#include <cstring>

#include "core/checksum.h"

namespace kvtier {

Store::Store(const StoreSpec& spec)
    : spec_(spec),
      tree_(spec.width),
      host_(tree_, spec.host.policy, spec.block_bytes != 0 ? spec.host.capacity_bytes / spec.block_bytes : 0,
            spec.block_bytes) {  // 0 = unlimited
  validate(spec);
  std::size_t slots = host_.room().capacity;
  if (spec.disk.enabled) {
    const DiskSpec& d = spec.disk;
    // Blocks waiting for the writer keep their host slot: the arena has room for the queue too.
    slots += d.queue_blocks;
    disk_ = std::make_unique<DiskTier>(d.policy, d.capacity_bytes / spec.block_bytes, spec.block_bytes);
  }
  if (spec.remote.enabled) {
    // Evicted blocks waiting for the remote tier's writer keep their host slot too.
    slots += spec.remote.queue_blocks;
    remote_ = std::make_unique<RemoteDemotions>(spec.remote.queue_blocks, spec.block_bytes);
  }
  if (spec.device.enabled) {
    const DeviceSpec& d = spec.device;
    // Throws cuda::Unavailable naming what is missing, Error(kCapacity) when the GPU lacks the memory.
    device_ = std::make_unique<DeviceTier>(tree_, d.ordinal, d.capacity_bytes / spec.block_bytes, spec.block_bytes);
  }
  if (spec.payloads) {
    try {
      host_.open_arena(slots, /*checksums=*/disk_ != nullptr);
    } catch (const Error& e) {  // name the settings that sized it
      if (e.code() != Code::kCapacity || !disk_) throw;
      throw Error(Code::kCapacity, std::string(e.what()) + " (host.capacity_bytes holds " +
                                       std::to_string(host_.room().capacity) + " blocks, plus disk queue_blocks=" +
                                       std::to_string(spec.disk.queue_blocks) + " slots for queued writes)");
    }
  }
}

void Store::check_open() const {
  if (closed_) throw Error(Code::kClosed, "the store is closed");
}

bool Store::holds_nothing(std::uint32_t account) const {
  return host_.residency().bytes(account) == 0 && (!device_ || device_->residency().bytes(account) == 0) &&
         (!disk_ || disk_->residency().bytes(account) == 0) && (!remote_ || remote_->residency().bytes(account) == 0);
}

void Store::retire_account(std::uint32_t account) {
  const std::uint32_t ns = accounts_.ns(account);
  host_.residency().retire(account, ns);
  if (device_) device_->residency().retire(account, ns);
  if (disk_) disk_->residency().retire(account, ns);
  if (remote_) remote_->residency().retire(account, ns);
}

std::uint32_t Store::root_of(std::uint32_t ns) const {
  KVTIER_ASSERT(ns < roots_.size() && roots_[ns] != kNil);
  return roots_[ns];
}

std::uint32_t Store::slot_of(NsId id) const {
  const auto slot = static_cast<std::uint32_t>(id);
  if (slot >= roots_.size() || roots_[slot] == kNil || id_of(slot) != id)
    throw Error(Code::kNotFound, "unknown namespace id " + std::to_string(id));
  return slot;
}

NsId Store::add_namespace(const Key& ns_key) {
  std::lock_guard<std::mutex> lock(mu_);
  check_open();
  return id_of(add_namespace_locked(ns_key));
}

std::uint32_t Store::add_namespace_locked(const Key& ns_key, bool sweep) {
  auto it = ns_ids_.find(ns_key);
  if (it != ns_ids_.end()) return it->second;
  if (sweep && live_namespaces_ >= next_ns_sweep_) retire_idle_namespaces();
  ++live_namespaces_;
  std::uint32_t id;
  if (!free_ns_.empty()) {
    id = free_ns_.back();
    free_ns_.pop_back();
  } else {
    id = static_cast<std::uint32_t>(roots_.size());
    roots_.push_back(kNil);
    ns_keys_.emplace_back();
    ns_gen_.push_back(0);
    ns_born_.push_back(0);
    default_account_.push_back(kNil);
  }
  roots_[id] = tree_.add_root(id);
  ns_keys_[id] = ns_key;
  ns_born_[id] = ns_sweeps_;
  ns_ids_.emplace(ns_key, id);
  default_account_[id] = accounts_.find_or_add(id, std::string());
  return id;
}

void Store::retire_idle_namespaces() {
  accounts_.sweep([&](std::uint32_t a) { return holds_nothing(a); }, [&](std::uint32_t a) { retire_account(a); });
  std::vector<bool> busy(roots_.size(), false);
  accounts_.mark_busy(busy);
  if (disk_)
    for (std::uint32_t e = 0; e < disk_->index().slots(); ++e)
      if (disk_->index().at(e).state != DiskState::kFree) busy[disk_->index().at(e).ns] = true;
  if (remote_) remote_->for_each_block([&](const Demoted& d) { busy[accounts_.ns(d.account)] = true; });
  for (std::uint32_t ns = 0; ns < roots_.size(); ++ns) {
    const std::uint32_t root = roots_[ns];
    if (root == kNil || busy[ns] || ns_born_[ns] == ns_sweeps_ || tree_.at(root).num_children != 0) continue;
    retire_account(default_account_[ns]);
    host_.residency().retire_namespace(ns);
    if (device_) device_->residency().retire_namespace(ns);
    if (disk_) disk_->residency().retire_namespace(ns);
    if (remote_) remote_->residency().retire_namespace(ns);
    accounts_.remove(default_account_[ns]);
    default_account_[ns] = kNil;
    tree_.remove_root(root);
    roots_[ns] = kNil;
    ns_ids_.erase(ns_keys_[ns]);
    ns_keys_[ns] = Key{};
    retired_ns_.push_back(id_of(ns));
    ++ns_gen_[ns];
    free_ns_.push_back(ns);
    --live_namespaces_;
  }
  ++ns_sweeps_;
  next_ns_sweep_ = std::max(kNamespaceSweepFloor, 2 * live_namespaces_);
}

std::vector<NsId> Store::take_retired_namespaces() {
  std::lock_guard<std::mutex> lock(mu_);
  return std::exchange(retired_ns_, {});
}

std::vector<NsId> Store::namespaces() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<NsId> out;
  for (std::uint32_t ns = 0; ns < roots_.size(); ++ns)
    if (roots_[ns] != kNil) out.push_back(id_of(ns));
  return out;
}

std::uint32_t Store::account_locked(std::uint32_t ns, const std::string& session) {
  root_of(ns);
  if (accounts_.sweep_due())
    accounts_.sweep([&](std::uint32_t a) { return holds_nothing(a); }, [&](std::uint32_t a) { retire_account(a); });
  return accounts_.find_or_add(ns, session);
}

Key Store::namespace_key_of(NsId id) {
  std::lock_guard<std::mutex> lock(mu_);
  return ns_keys_[slot_of(id)];
}

// Fills path_ with the nodes matched along `words`; returns matched blocks. Stops before the first
// expired node; with `reclaim`, that node's subtree is removed (its descendants are expired too,
// because touching a node touches all its ancestors).
std::uint32_t Store::walk(std::uint32_t ns, const Word* words, std::size_t n, double now, bool reclaim) {
  path_.clear();
  const std::uint32_t width = spec_.width;
  std::uint32_t node = root_of(ns);
  std::size_t done = 0;
  while (done < n) {
    std::uint32_t child = tree_.find_child(node, words + done * width);
    if (child == kNil) break;
    if (expired(tree_.at(child), now)) {
      if (reclaim) remove_subtree(child, now);
      break;
    }
    std::uint32_t m = tree_.common_blocks(child, words + done * width, n - done);
    KVTIER_DASSERT(m > 0);
    path_.push_back({child, m});
    done += m;
    if (m < tree_.num_blocks(child)) break;
    node = child;
  }
  return static_cast<std::uint32_t>(done);
}

void Store::split_partial_end() {
  if (path_.empty()) return;
  Step& last = path_.back();
  if (last.blocks < tree_.num_blocks(last.node)) {
    const std::uint32_t lower = last.node;
    last.node = tree_.split(lower, last.blocks);
    // Both halves stay on the device, in the same place of its LRU list (dirty counts are per block).
    if (device_ && on_device(lower)) device_->link_before(last.node, lower);
  }
}

void Store::touch_path(double now, bool hit) {
  const std::uint64_t op = ++seq_;
  for (const Step& s : path_) {
    Node& n = tree_.at(s.node);
    n.seq = op;
    n.last_access = now;
    if (hit) ++n.hits;
    if (n.heap_pos != kNil) host_.candidates().update(s.node);
    if (device_ && on_device(s.node)) device_->touch(s.node, op);
  }
}

void Store::pin_path(std::int32_t delta) {
  for (const Step& s : path_) {
    Node& n = tree_.at(s.node);
    KVTIER_ASSERT(delta > 0 || n.pins > 0);
    n.pins += delta;
    refresh_candidate(s.node);
  }
}

// Keeps the eviction queue equal to the set of unpinned, non-empty leaves.
void Store::refresh_candidate(std::uint32_t id) {
  const Node& n = tree_.at(id);
  const bool want =
      n.alive && n.parent != kNil && n.num_children == 0 && n.pins == 0 && !n.words.empty() && id != shielded_;
  const bool have = n.heap_pos != kNil;
  if (want && !have)
    host_.candidates().push(id);
  else if (!want && have)
    host_.candidates().erase(id);
}

// Removes the last `count` blocks of leaf `id` (all of them removes the node). Accounts the bytes,
// returns the slots, and counts each block as expired or evicted.
void Store::drop_blocks(std::uint32_t id, std::uint32_t count, double now) {
  Node& n = tree_.at(id);
  const std::uint32_t have = tree_.num_blocks(id);
  KVTIER_ASSERT(count > 0 && count <= have && n.pins == 0 && n.num_children == 0);
  const bool is_expired = expired(n, now);  // the same test as lookups use: never both hit and expired
  const double expiry = n.last_access + spec_.host.ttl();
  std::uint64_t device_blocks = 0;
  if (device_ && on_device(id)) {
    // The node leaves the device with its host blocks. Dirty blocks are written back first when they
    // stay in the host (a partial drop) or go on to the disk; otherwise they are simply gone. First,
    // so that a failed copy leaves the node as it was.
    device_blocks = tree_.num_blocks(id);
    dev_evict(id, /*write_back=*/count < have || ((disk_ || remote_) && demote_), now);
  }
  const std::uint64_t bytes = static_cast<std::uint64_t>(count) * spec_.block_bytes;
  host_.dropped(n.account, count, now);
  if (is_expired) {
    // Residency ends at the expiry instant, not at the (later) reclaim.
    if (now > expiry) {
      host_.residency().refund(n.account, static_cast<double>(bytes) * (now - expiry));
      if (device_blocks > 0)
        device_->residency().refund(n.account, static_cast<double>(device_blocks * spec_.block_bytes) * (now - expiry));
    }
    host_.counters().expired += count;
  } else {
    host_.counters().evicted += count;
  }
  if (host_.arena()) {
    for (std::uint32_t i = have - count; i < have; ++i) {
      if (disk_ && demote_)
        queue_write(id, i, /*host_keeps=*/false, now);  // the write takes over the slot (or releases it)
      else if (remote_ && demote_)
        demote_remote(id, i, now);  // the same for the remote tier's writer
      else
        host_.unref(tree_.at(id).payload->slots[i]);
    }
  }
  if (count < have) {
    tree_.trim_tail(id, count);
    return;
  }
  const std::uint32_t parent = n.parent;
  if (n.heap_pos != kNil) host_.candidates().erase(id);
  tree_.remove_leaf(id);
  refresh_candidate(parent);
}

// Removes node `id` and everything below it. Precondition: no node of the subtree is pinned.
void Store::remove_subtree(std::uint32_t id, double now) {
  stack_.clear();
  stack_.push_back(id);
  while (!stack_.empty()) {
    const std::uint32_t top = stack_.back();
    const Node& n = tree_.at(top);
    KVTIER_ASSERT(n.pins == 0);
    if (n.num_children > 0) {
      stack_.push_back(n.first_child);
      continue;
    }
    stack_.pop_back();
    drop_blocks(top, tree_.num_blocks(top), now);
  }
}

std::uint64_t Store::evict_blocks(std::uint64_t count, double now) {
  std::uint64_t freed = 0;
  for (std::uint32_t victim = host_.coldest(); freed < count && victim != kNil; victim = host_.coldest()) {
    const std::uint64_t have = tree_.num_blocks(victim);
    const auto take = static_cast<std::uint32_t>(std::min<std::uint64_t>(have, count - freed));
    drop_blocks(victim, take, now);
    freed += take;
  }
  return freed;
}

std::uint64_t Store::expire_locked(double now) {
  if (spec_.host.ttl() <= 0.0) return 0;
  const std::uint64_t before = host_.counters().expired;
  if (spec_.host.policy != Policy::kLFU) {
    // The queue is in touch order, which is time order: expired leaves come first.
    for (std::uint32_t v = host_.coldest(); v != kNil && expired(tree_.at(v), now); v = host_.coldest())
      drop_blocks(v, tree_.num_blocks(v), now);
  } else {
    for (std::uint32_t root : roots_) {
      if (root == kNil) continue;  // a retired namespace
      // Expired children of live nodes; descendants of an expired node are expired too.
      std::vector<std::uint32_t> todo{root};
      while (!todo.empty()) {
        const std::uint32_t id = todo.back();
        todo.pop_back();
        for (std::uint32_t c = tree_.at(id).first_child; c != kNil;) {
          const std::uint32_t next = tree_.at(c).next_sibling;
          if (expired(tree_.at(c), now))
            remove_subtree(c, now);
          else
            todo.push_back(c);
          c = next;
        }
      }
    }
  }
  return host_.counters().expired - before;
}

InsertResult Store::insert(NsId ns_id, const std::string& session, const Word* words, std::size_t n,
                           Memory payload, std::size_t payload_first, double now) {
  std::unique_lock<std::mutex> lock(mu_);
  check_open();
  const std::uint32_t ns = slot_of(ns_id);
  now = clock_.advance(now);
  const std::uint32_t account = account_locked(ns, session);
  // The account is in use until the insert returns (its copies may release the lock meanwhile); at the
  // end it may hold nothing (every block was there already), and a later sweep retires it.
  struct InUse {
    AccountTable& t;
    std::uint32_t a;
    ~InUse() { t.done(a); }  // the lock is held again by then (run_unlocked relocks)
  } in_use{(accounts_.use(account), accounts_), account};
  if (!disk_ && !remote_) return insert_locked(ns, account, words, n, payload, payload_first, now, false, &lock);
  if (!disk_) return insert_demoting(ns, account, words, n, payload, payload_first, now, lock);
  // With a disk tier, an insert may queue writes (write-through, or demotions of the blocks it
  // evicts). It runs in chunks, each waiting for room in the write queue first (back-pressure).
  // Blocks that the host tier cannot take (it is full of this prompt's own prefix or of pinned
  // blocks) go straight to the disk queue ("spill").
  const std::uint64_t chunk = std::max<std::uint64_t>(1, spec_.disk.queue_blocks / 4);
  InsertResult total;
  bool started = false, spilling = false;
  Key prev{};
  std::size_t from = 0;
  std::size_t end = std::min<std::size_t>(n, payload_first + chunk);
  while (true) {
    wait_queue_room(lock, chunk);
    check_open();
    now = clock_.catch_up(now);  // other calls may have run while this one waited
    if (!spilling) {
      const InsertResult r = insert_locked(ns, account, words, end, payload, payload_first, now, false, &lock);
      if (!started && (r.matched < end || end == n)) {
        total.matched = r.matched;
        started = true;
      }
      total.inserted += r.inserted;
      if (r.matched < payload_first) {
        // Blocks below start_block are not all in the host tier: if the disk holds the rest of them,
        // the new blocks chain on from there (to the disk); otherwise there is a gap and nothing to do.
        if (!disk_chain(ns, words, r.matched, payload_first, now, &prev)) break;
        total.matched = static_cast<std::uint32_t>(payload_first);
        spilling = true;
        from = payload_first;
      } else {
        from = r.matched + r.inserted;
      }
      if (!spilling && from < end) {
        spilling = true;
        if (from > 0) {  // the key the spilled blocks chain from: the last host block's
          walk(ns, words, from, now, /*reclaim=*/false);
          KVTIER_ASSERT(!path_.empty());
          prev = node_keys(path_.back().node)[path_.back().blocks - 1];
        }
      }
    }
    if (spilling) {
      const std::size_t stored = spill_locked(ns, account, words, from, end, payload, payload_first, now, &prev);
      total.inserted += static_cast<std::uint32_t>(stored);
      if (from + stored < end) break;
      from = end;
    }
    if (end == n) break;
    end = std::min<std::size_t>(n, end + chunk);
  }
  return total;
}

// An insert into a store whose host evictions go to the remote tier's demotion queue: in chunks, each waiting
// for room in the queue first (back-pressure, as for the disk's write queue), so that a large insert does not
// evict more blocks at once than the queue takes. No spill: blocks the host tier cannot take are not stored.
InsertResult Store::insert_demoting(std::uint32_t ns, std::uint32_t account, const Word* words, std::size_t n,
                                   Memory payload, std::size_t payload_first, double now,
                                   std::unique_lock<std::mutex>& lock) {
  const std::uint64_t chunk = std::max<std::uint64_t>(1, spec_.remote.queue_blocks / 4);
  InsertResult total;
  bool started = false;
  std::size_t end = std::min<std::size_t>(n, payload_first + chunk);
  while (true) {
    wait_remote_room(lock, chunk);
    check_open();
    now = clock_.catch_up(now);
    const InsertResult r = insert_locked(ns, account, words, end, payload, payload_first, now, false, &lock);
    if (!started && (r.matched < end || end == n)) {
      total.matched = r.matched;
      started = true;
    }
    total.inserted += r.inserted;
    if (r.matched < payload_first || r.matched + r.inserted < end || end == n) break;
    end = std::min<std::size_t>(n, end + chunk);
  }
  return total;
}

// Waits until the remote demotion queue has room for `blocks`, for at most kRemoteRoomWait seconds (the
// demoter thread drains it without waiting for the server; past that, blocks the queue cannot take are not
// demoted and are counted as rejected: never a hang when no demoter runs).
void Store::wait_remote_room(std::unique_lock<std::mutex>& lock, std::uint64_t blocks) {
  cv_.wait_for(lock, std::chrono::duration<double>(kRemoteRoomWait),
               [&] { return closed_ || remote_->room().free() >= blocks; });
}

void Store::wait_queue_room(std::unique_lock<std::mutex>& lock, std::uint64_t blocks) {
  const std::uint64_t limit = spec_.disk.queue_blocks;
  cv_.wait(lock, [&] { return closed_ || disk_->queued() + blocks <= limit; });
}

// The commit of an insert: a new leaf under `attach` holding the ticket's blocks (words from block
// r->matched on), charged to `account`. Returns it.
std::uint32_t Store::add_leaf(std::uint32_t attach, std::uint32_t account, const Word* words, HostTier::Ticket& ticket,
                              bool payload_written, double now, InsertResult* r) {
  const std::uint64_t want = ticket.blocks;
  const std::uint32_t child =
      tree_.add_child(attach, words + static_cast<std::size_t>(r->matched) * spec_.width, want);
  Node& c = tree_.at(child);
  c.account = account;
  c.seq = seq_;
  c.last_access = now;
  // Chained keys are computed lazily (keys_pinned), off the insert path.
  if (host_.arena()) c.payload = std::make_unique<NodePayload>();
  host_.commit({&ticket, c.payload ? &c.payload->slots : nullptr, payload_written, account, now});
  refresh_candidate(child);
  refresh_candidate(attach);
  r->inserted = static_cast<std::uint32_t>(want);
  return child;
}

// Insert in three steps. Reserve (locked): walk, make room, take slots, hold the prefix. Copy: the
// payload into the new slots, with `lock` released when one is given and the copy touches no GPU
// memory. Commit (locked): walk again (other threads may have stored some of the blocks meanwhile:
// their slots go back), then attach the rest as a new leaf.
InsertResult Store::insert_locked(std::uint32_t ns, std::uint32_t account, const Word* words, std::size_t n,
                                  Memory payload, std::size_t payload_first, double now, bool as_hit,
                                  std::unique_lock<std::mutex>* lock) {
  InsertResult r;
  r.matched = walk(ns, words, n, now, /*reclaim=*/true);
  split_partial_end();
  touch_path(now, as_hit);
  if (as_hit) {
    host_.counters().hits += r.matched;
    host_.counters().misses += n - r.matched;
  }
  if (r.matched >= n) return r;
  if (spec_.payloads && r.matched < payload_first) return r;  // a gap: no payload for the missing blocks

  std::uint32_t attach = path_.empty() ? roots_[ns] : path_.back().node;
  std::uint64_t want = n - r.matched;
  if (host_.room().capacity != 0) {
    const std::uint64_t free_now = host_.room().free();
    if (want > free_now) {
      // Making room must never evict our own prefix. Only `attach` can become an eviction candidate
      // (every other node of the path has a child on the path), so shielding it is enough.
      shielded_ = attach;
      refresh_candidate(attach);
      struct Unshield {  // also when an eviction's copy throws
        Store* s;
        std::uint32_t attach;
        ~Unshield() {
          s->shielded_ = kNil;
          s->refresh_candidate(attach);
        }
      } unshield{this, attach};
      evict_blocks(want - free_now, now);
      want = std::min<std::uint64_t>(want, host_.room().free());
    }
  }
  // Blocks demoted to the disk keep their slots until written. The write queue's back-pressure keeps
  // enough slots free for a chunk, but blocks evicted by other threads while an insert waited come
  // back as more than a chunk: never take more slots than are free.
  if (host_.arena()) want = std::min<std::uint64_t>(want, host_.arena()->free_slots());
  if (want == 0) return r;
  if (!host_.arena()) {  // metadata-only: no payload to copy, so the reservation commits at once
    HostTier::Ticket ticket = host_.reserve(want);
    add_leaf(attach, account, words, ticket, /*payload_written=*/false, now, &r);
    return r;
  }
  insert_payload(ns, account, words, payload, payload_first, now, lock, attach, want, &r);
  return r;
}

// An insert's reserve (the new blocks' room and slots in the host tier, and the device tier's for GPU memory),
// copy (outside the lock when `lock` is given and the copy touches no GPU memory), and commit (a new leaf under
// `attach`, for `want` blocks after r->matched). Payloads are copied before the node exists, so a failed
// (device) copy leaves the tree as it was. With the copy outside the lock the prefix stays held until the
// commit is done. What is not committed goes back when this returns, under the lock (run_unlocked relocks),
// also on a throw.
void Store::insert_payload(std::uint32_t ns, std::uint32_t account, const Word* words, Memory payload,
                           std::size_t payload_first, double now, std::unique_lock<std::mutex>* lock,
                           std::uint32_t attach, std::uint64_t want, InsertResult* r) {
  struct Reserved {
    Store* s;
    HostTier::Ticket host;
    DeviceTier::Ticket device;
    Hold hold;
    bool held = false;
    ~Reserved() {
      if (held) s->release_hold(hold);
      if (host.blocks > 0) s->host_.unreserve(host);
      if (!device.empty()) s->device_->unreserve(device);
    }
  } res{this, host_.reserve(want), {}, {}};
  const std::size_t bb = spec_.block_bytes;
  const Memory src = payload.at(r->matched - payload_first, bb);
  const bool unlocked = lock != nullptr && copies_unlocked(src);  // never with a device tier
  // GPU memory on the device tier's GPU goes to the device tier, if it has room without evicting the
  // prefix this insert extends; the host slots stay dirty until the device evicts the blocks.
  const bool to_device = device_ && src.device == darena()->device() && dev_make_room(want, seq_, now);
  if (to_device) {
    KVTIER_ASSERT(src.nparts == 0);  // scattered runs are host memory
    res.device = device_->reserve(want);
    device_->copy_in({&res.device, src, &mover_});
    if (spec_.device.write_through) host_copy_in(res.host, src);
  } else if (unlocked) {
    // The prefix is held so it can neither be evicted nor expire under us; the slots and their room are ours.
    if (!path_.empty()) res.hold.deepest = path_.back().node;
    take_hold(res.hold);
    res.held = true;
    run_unlocked(*lock, [&] { host_copy_in(res.host, src); });
    // Other threads may have stored some of these blocks (or more) while the lock was free.
    now = clock_.catch_up(now);
    // Reclaim as the first walk did: a child that expired meanwhile must go before a new one takes its place.
    const std::uint32_t m = walk(ns, words, r->matched + want, now, /*reclaim=*/true);
    KVTIER_ASSERT(m >= r->matched);  // the prefix was held (pinned, so never expired)
    const std::uint64_t dup = m - r->matched;
    if (dup >= want) {
      r->matched = m;  // another thread stored them all
      return;
    }
    if (dup > 0) {
      host_.unreserve_front(res.host, dup);
      r->matched = m;
    }
    split_partial_end();
    attach = path_.empty() ? roots_[ns] : path_.back().node;
  } else {
    host_copy_in(res.host, src);
  }
  const std::uint32_t child = add_leaf(attach, account, words, res.host, /*payload_written=*/!to_device, now, r);
  if (to_device) dev_adopt(child, res.device, now);
  if (disk_ && spec_.disk.write_through)
    for (std::uint32_t i = 0; i < r->inserted; ++i) queue_write(child, i, /*host_keeps=*/true, now);
}

std::uint64_t Store::evict(std::uint64_t bytes, double now) {
  std::unique_lock<std::mutex> lock(mu_);
  check_open();
  now = clock_.advance(now);
  const std::uint64_t blocks = bytes / spec_.block_bytes + (bytes % spec_.block_bytes != 0 ? 1 : 0);
  if (!remote_) return evict_blocks(blocks, now) * spec_.block_bytes;
  // Evicted blocks go to the remote tier's demotion queue: in chunks, each waiting for room in it.
  const std::uint64_t chunk = std::max<std::uint64_t>(1, spec_.remote.queue_blocks / 4);
  std::uint64_t freed = 0;
  while (freed < blocks) {
    wait_remote_room(lock, chunk);
    check_open();
    now = clock_.catch_up(now);
    const std::uint64_t n = evict_blocks(std::min(chunk, blocks - freed), now);
    freed += n;
    if (n == 0) break;  // nothing left to evict
  }
  return freed * spec_.block_bytes;
}

std::uint64_t Store::expire(double now) {
  std::lock_guard<std::mutex> lock(mu_);
  check_open();
  now = clock_.advance(now);
  const std::uint64_t host = expire_locked(now);
  return host + (disk_ ? disk_expire_locked(now) : 0);
}

std::uint64_t Store::clear(double now) {
  std::lock_guard<std::mutex> lock(mu_);
  check_open();
  now = clock_.advance(now);
  demote_ = false;
  std::uint64_t n = evict_blocks(~std::uint64_t{0}, now);
  demote_ = true;
  if (disk_) {
    for (std::uint32_t v = disk_->coldest(); v != kNil; v = disk_->coldest()) {
      disk_remove(v, now, Gone::kEvicted);
      ++n;
    }
  }
  return n;
}

std::vector<NsId> Store::replay(const ReplayTrace& t, std::int32_t* hits_out) {
  std::lock_guard<std::mutex> lock(mu_);
  check_open();
  if (spec_.payloads) throw Error(Code::kInvalidArgument, "replay needs a metadata-only store (it has no payloads)");
  const std::uint32_t width = spec_.width;
  if (t.n_requests > 0)
    clock_.check_not_before(t.times[0], "timestamps[0]", "replay a trace into a store whose clock is not past it");
  // A request adds at most two nodes (a split and a new leaf); with a capacity, evictions bound the tree.
  const std::uint64_t cap = host_.room().capacity;
  const std::size_t bound = cap != 0 ? std::min<std::uint64_t>(cap, t.n_requests) : t.n_requests;
  tree_.reserve(std::min<std::size_t>(2 * bound, std::size_t{1} << 24));
  std::vector<std::uint32_t> ids;  // registered without a sweep: each stays until the replay ends
  for (const Key& k : *t.ns_keys) ids.push_back(add_namespace_locked(k, /*sweep=*/false));
  for (std::size_t r = 0; r < t.n_requests; ++r) {
    const double now = clock_.advance(t.times[r]);
    const std::uint32_t ns = ids[t.ns_index ? t.ns_index[r] : 0];
    // The whole replay runs under the lock: an account is resolved per request (no sweep can retire it
    // between its resolution and its use).
    const std::uint32_t acc =
        t.sessions ? account_locked(ns, (*t.session_table)[t.sessions[r]]) : default_account_[ns];
    if (spec_.host.ttl() > 0.0) expire_locked(now);
    const std::uint64_t begin = t.offsets[r], end = t.offsets[r + 1];
    const InsertResult res =
        insert_locked(ns, acc, t.words + begin * width, end - begin, Memory{}, 0, now, /*as_hit=*/true);
    hits_out[r] = static_cast<std::int32_t>(res.matched);
  }
  std::vector<NsId> out;
  for (std::uint32_t slot : ids) out.push_back(id_of(slot));
  return out;
}

TierStats Store::stats() {
  std::lock_guard<std::mutex> lock(mu_);
  TierStats s = host_.stats();
  s.nodes = tree_.live_nodes() - live_namespaces_;
  s.accounts = accounts_.live_count();
  s.namespaces = live_namespaces_;
  std::uint64_t pinned = 0;
  for (std::uint32_t root : roots_) {
    if (root == kNil) continue;  // a retired namespace
    std::vector<std::uint32_t> todo{root};
    while (!todo.empty()) {
      const std::uint32_t id = todo.back();
      todo.pop_back();
      for (std::uint32_t c = tree_.at(id).first_child; c != kNil; c = tree_.at(c).next_sibling) {
        if (tree_.at(c).pins > 0) {
          pinned += tree_.num_blocks(c);
          todo.push_back(c);
        }
      }
    }
  }
  s.pinned_blocks = pinned;
  return s;
}

std::vector<AccountResidency> Store::residency(double now) {
  std::lock_guard<std::mutex> lock(mu_);
  check_open();
  now = clock_.advance(now);
  expire_locked(now);
  if (disk_) disk_expire_locked(now);
  std::vector<AccountResidency> out;
  // Each tier's ledger, in tier order (the facade's Tier ids).
  const std::pair<int, const TierLedger*> ledgers[] = {
      {kTierDevice, darena() ? &device_->residency() : nullptr},
      {kTierHost, &host_.residency()},
      {kTierDisk, disk_ ? &disk_->residency() : nullptr},
      {kTierRemote, remote_ ? &remote_->residency() : nullptr}};  // blocks waiting for the remote tier's writer
  for (const auto& [tier, ledger] : ledgers) {
    if (!ledger) continue;
    for (std::uint32_t a = 0; a < accounts_.slots(); ++a)
      if (accounts_.live(a))
        out.push_back({id_of(accounts_.ns(a)), accounts_.session(a), false, tier, ledger->bytes(a),
                       ledger->byte_seconds(a, now)});
    for (std::uint32_t ns = 0; ns < roots_.size(); ++ns)
      if (const double ended = ledger->ended(ns); roots_[ns] != kNil && ended != 0.0)
        out.push_back({id_of(ns), {}, true, tier, 0, ended});
    if (const double gone = ledger->ended_namespaces(); gone != 0.0)
      out.push_back({kNoNamespace, {}, true, tier, 0, gone});
  }
  return out;
}

double Store::clock_now() {
  std::lock_guard<std::mutex> lock(mu_);
  return clock_.peek();
}

void Store::close() {
  std::unique_lock<std::mutex> lock(mu_);
  // The writer may be reading slots, and copies outside the lock may be running.
  cv_.wait(lock, [&] {
    return !(disk_ && disk_->batch_open()) && !(remote_ && remote_->batch_open()) && holds_out_ == 0;
  });
  closed_ = true;
  if (remote_) remote_->clear(clock_.latest(), [&](std::uint32_t slot) { host_.unref(slot); });
  cv_.notify_all();
  mover_.close();  // its copies are complete: every call waits for its own
  if (device_) device_->close();
  host_.close();
}

bool Store::closed() {
  std::lock_guard<std::mutex> lock(mu_);
  return closed_;
}

void Store::check_invariants() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return holds_out_ == 0; });  // a quiescent state: no copy outside the lock
  if (closed_) return;  // the arena is gone; nothing is served any more
  std::uint64_t blocks = 0;
  std::size_t candidates = 0;
  for (std::uint32_t root : roots_) {
    if (root == kNil) continue;  // a retired namespace
    std::vector<std::uint32_t> todo{root};
    while (!todo.empty()) {
      const std::uint32_t id = todo.back();
      todo.pop_back();
      const Node& n = tree_.at(id);
      KVTIER_ASSERT(n.alive);
      std::uint32_t kids = 0;
      for (std::uint32_t c = n.first_child; c != kNil; c = tree_.at(c).next_sibling) {
        const Node& ch = tree_.at(c);
        KVTIER_ASSERT(ch.parent == id);
        KVTIER_ASSERT(!ch.words.empty());
        KVTIER_ASSERT(ch.depth == n.depth + tree_.num_blocks(id));
        KVTIER_ASSERT(ch.pins <= n.pins || n.parent == kNil);  // a pin holds the whole prefix
        KVTIER_ASSERT(tree_.find_child(id, ch.words.data()) == c);
        KVTIER_ASSERT(accounts_.live(ch.account) && accounts_.ns(ch.account) == ch.ns);
        KVTIER_ASSERT((host_.arena() != nullptr) == static_cast<bool>(ch.payload));
        if (ch.payload) {
          KVTIER_ASSERT(ch.payload->slots.size() == tree_.num_blocks(c));
          KVTIER_ASSERT(ch.payload->keys.empty() || ch.payload->keys.size() == tree_.num_blocks(c));
        }
        ++kids;
        todo.push_back(c);
      }
      KVTIER_ASSERT(kids == n.num_children);
      if (n.parent != kNil) blocks += tree_.num_blocks(id);
      const bool want = n.parent != kNil && n.num_children == 0 && n.pins == 0;
      KVTIER_ASSERT(want == (n.heap_pos != kNil));
      candidates += want ? 1 : 0;
    }
  }
  const Room room = host_.room();
  KVTIER_ASSERT(blocks == room.used && room.reserved == 0);
  KVTIER_ASSERT(candidates == host_.candidates().size());
  KVTIER_ASSERT(room.capacity == 0 || room.used <= room.capacity);
  if (!host_.arena()) return;
  // Every slot's holders: host blocks and queued writes.
  std::vector<std::uint32_t> refs(host_.arena()->slots(), 0);
  std::uint64_t on_device = 0;  // device blocks held by tree nodes
  for (std::uint32_t root : roots_) {
    if (root == kNil) continue;  // a retired namespace
    std::vector<std::uint32_t> todo{root};
    while (!todo.empty()) {
      const std::uint32_t id = todo.back();
      todo.pop_back();
      for (std::uint32_t c = tree_.at(id).first_child; c != kNil; c = tree_.at(c).next_sibling) {
        const NodePayload& p = *tree_.at(c).payload;
        for (std::uint32_t s : p.slots) ++refs[s];
        KVTIER_ASSERT(!p.dirty || !p.dslots.empty());
        on_device += p.dslots.size();
        todo.push_back(c);
      }
    }
  }
  if (disk_) {
    disk_->index().check();
    std::uint64_t queued = 0;
    for (std::uint32_t id = 0; id < disk_->index().slots(); ++id) {
      const DiskEntry& e = disk_->index().at(id);
      const bool in_queue = e.state == DiskState::kPending || e.state == DiskState::kWriting;
      queued += in_queue;
      KVTIER_ASSERT(in_queue == (e.slot != kNil));
      if (in_queue) ++refs[e.slot];
      if (in_queue || e.state == DiskState::kCommitted) KVTIER_ASSERT(accounts_.live(e.account));
    }
    KVTIER_ASSERT(queued == disk_->queued());
    KVTIER_ASSERT(disk_->index().live() <= disk_->room().capacity);
  }
  if (remote_)
    remote_->for_each_block([&](const Demoted& d) {
      ++refs[d.slot];
      KVTIER_ASSERT(accounts_.live(d.account));
    });
  std::size_t free_slots = 0;
  for (std::size_t s = 0; s < refs.size(); ++s) {
    KVTIER_ASSERT(refs[s] == host_.refs(static_cast<std::uint32_t>(s)));
    free_slots += refs[s] == 0;
  }
  KVTIER_ASSERT(free_slots == host_.arena()->free_slots());
  if (!darena()) return;
  device_->check(on_device);  // the LRU list holds exactly the nodes with device slots; slots are used once
}

}  // namespace kvtier
