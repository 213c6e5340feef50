// Store: lookups and loads — match and pins, copies out of the host tier, chained keys of pinned
// prefixes. The disk tier's part of a lookup is in disk.cpp.
#include <algorithm>
#include <cstring>

#include "store/store.h"

namespace kvtier {

PinId Store::new_pin() {
  std::uint32_t id;
  if (!free_pins_.empty()) {
    id = free_pins_.back();
    free_pins_.pop_back();
  } else {
    id = static_cast<std::uint32_t>(pin_records_.size());
    pin_records_.emplace_back();
  }
  PinRecord& rec = pin_records_[id];
  rec.node = kNil;
  rec.host_blocks = 0;
  rec.disk.clear();
  rec.words.clear();
  rec.alive = true;
  return (static_cast<PinId>(rec.generation) << 32) | id;
}

Store::PinRecord& Store::pin_record(PinId pin) {
  const auto id = static_cast<std::uint32_t>(pin);
  const auto generation = static_cast<std::uint32_t>(pin >> 32);
  if (id >= pin_records_.size() || !pin_records_[id].alive || pin_records_[id].generation != generation)
    throw Error(Code::kStalePin, "this pin was already released (or is not this store's): match(..., pin=True) again");
  return pin_records_[id];
}

void Store::take_hold(Hold& h) {
  for (std::uint32_t id = h.deepest; id != kNil && tree_.at(id).parent != kNil; id = tree_.at(id).parent) {
    ++tree_.at(id).pins;
    refresh_candidate(id);
  }
  for (std::uint32_t slot : h.slots) host_.ref(slot);
  ++holds_out_;
}

void Store::release_hold(Hold& h) {
  for (std::uint32_t id = h.deepest; id != kNil && tree_.at(id).parent != kNil; id = tree_.at(id).parent) {
    Node& n = tree_.at(id);
    KVTIER_ASSERT(n.alive && n.pins > 0);
    --n.pins;
    refresh_candidate(id);
  }
  for (std::uint32_t slot : h.slots) host_.unref(slot);
  h.deepest = kNil;
  h.slots.clear();
  KVTIER_ASSERT(holds_out_ > 0);
  if (--holds_out_ == 0) cv_.notify_all();
}

MatchResult Store::match(NsId ns_id, const Word* words, std::size_t n, double now, bool touch, bool pin) {
  std::lock_guard<std::mutex> lock(mu_);
  check_open();
  const std::uint32_t ns = slot_of(ns_id);
  now = clock_.advance(now);
  MatchResult r;
  r.blocks = walk(ns, words, n, now, /*reclaim=*/touch);
  if (touch || pin) split_partial_end();
  if (touch) {
    touch_path(now, /*hit=*/true);
    host_.counters().hits += r.blocks;
    host_.counters().misses += n - r.blocks;
  }
  if (device_) {
    r.on_device.reserve(r.blocks);
    for (const Step& s : path_) {
      const bool dev = on_device(s.node);
      r.on_device.insert(r.on_device.end(), s.blocks, dev ? 1 : 0);
      r.device_blocks += dev ? s.blocks : 0;
    }
  }
  std::vector<std::uint32_t> disk_ids;
  if (disk_ && r.blocks < n) {
    r.disk_blocks = disk_walk(ns, words, n, now, touch, &r, &disk_ids);
    if (touch) {
      disk_->counters().hits += r.disk_blocks;
      disk_->counters().misses += n - r.blocks - r.disk_blocks;
    }
  }
  if (pin && (r.blocks > 0 || r.disk_blocks > 0)) {
    r.pin = new_pin();
    PinRecord& rec = pin_record(r.pin);
    rec.ns = ns;
    rec.host_blocks = r.blocks;
    if (!path_.empty()) {
      rec.node = path_.back().node;
      pin_path(+1);
    }
    if (!disk_ids.empty()) {
      for (std::uint32_t id : disk_ids) {
        ++disk_->index().at(id).pins;
        disk_->index().refresh(id);
      }
      rec.disk = std::move(disk_ids);
      rec.words.assign(words, words + static_cast<std::size_t>(r.blocks + r.disk_blocks) * spec_.width);
    }
  }
  return r;
}

void Store::unpin(PinId pin, double now) {
  std::lock_guard<std::mutex> lock(mu_);
  check_open();  // close() released every hold; there is nothing left to release
  PinRecord& rec = pin_record(pin);
  now = clock_.advance_or_latest(now);
  const std::uint64_t op = ++seq_;
  for (std::uint32_t id = rec.node; id != kNil && tree_.at(id).parent != kNil; id = tree_.at(id).parent) {
    Node& n = tree_.at(id);
    KVTIER_ASSERT(n.alive && n.pins > 0);
    --n.pins;
    n.seq = op;
    n.last_access = now;
    if (n.heap_pos != kNil) host_.candidates().update(id);
    refresh_candidate(id);
    if (device_ && on_device(id)) device_->touch(id, op);
  }
  for (std::uint32_t id : rec.disk) {
    DiskEntry& e = disk_->index().at(id);
    if (e.state != DiskState::kRemoved) {
      e.seq = op;
      e.last_access = now;
      disk_->index().touched(id);
    }
    disk_->index().unpin(id);
  }
  rec.alive = false;
  ++rec.generation;
  rec.disk.clear();
  rec.words.clear();
  free_pins_.push_back(static_cast<std::uint32_t>(pin));
}

std::uint32_t Store::load_pinned(PinId pin, Memory out, std::size_t max_blocks, std::vector<DiskRead>* reads) {
  std::unique_lock<std::mutex> lock(mu_);
  check_open();
  if (!host_.arena()) throw Error(Code::kInvalidArgument, "this store is metadata-only: it holds no payloads");
  const PinRecord& rec = pin_record(pin);
  // The chain root..node, copied in order.
  std::vector<std::uint32_t> chain;
  for (std::uint32_t id = rec.node; id != kNil && tree_.at(id).parent != kNil; id = tree_.at(id).parent) {
    KVTIER_ASSERT(tree_.at(id).pins > 0);
    chain.push_back(id);
  }
  std::reverse(chain.begin(), chain.end());
  const std::size_t bb = spec_.block_bytes;
  std::vector<Step> steps;
  std::size_t copied = 0;
  for (auto it = chain.begin(); it != chain.end() && copied < max_blocks; ++it) {
    const auto take = static_cast<std::uint32_t>(std::min<std::size_t>(tree_.num_blocks(*it), max_blocks - copied));
    steps.push_back({*it, take});
    copied += take;
  }
  CopyRuns runs = plan_copy_out(steps, out);
  Hold hold;
  hold.deepest = rec.node;
  if (copied >= rec.host_blocks) {
    for (std::size_t k = 0; k < rec.disk.size() && copied < max_blocks; ++k, ++copied) {
      const DiskEntry& e = disk_->index().at(rec.disk[k]);
      if (e.state == DiskState::kRemoved) break;  // found damaged by another load meanwhile
      // Still in the write queue: its host slot has it (held while the copy runs); else a folder read.
      if (e.slot != kNil) hold.slots.push_back(e.slot);
      disk_->copy_out({rec.disk[k], static_cast<std::uint32_t>(copied), out.at(copied, bb), host_.arena(),
                       out.device < 0 ? &runs.host : &runs.device, reads});
    }
  }
  if (!copies_unlocked(out)) {
    run_copies(runs);
    if (device_) dev_promote_chain(chain, clock_.latest());
  } else {
    run_held(lock, hold, [&] { run_copies(runs); });
  }
  return static_cast<std::uint32_t>(copied);
}

std::uint32_t Store::load(NsId ns_id, const Word* words, std::size_t n, Memory out, double now) {
  std::unique_lock<std::mutex> lock(mu_);
  check_open();
  const std::uint32_t ns = slot_of(ns_id);
  if (!host_.arena()) throw Error(Code::kInvalidArgument, "this store is metadata-only: it holds no payloads");
  now = clock_.advance(now);
  const std::uint32_t m = walk(ns, words, n, now, /*reclaim=*/true);
  split_partial_end();
  touch_path(now, /*hit=*/true);
  host_.counters().hits += m;
  host_.counters().misses += n - m;
  CopyRuns runs = plan_copy_out(path_, out);
  if (!copies_unlocked(out)) {
    run_copies(runs);
    if (device_) dev_promote_path(now);  // split_partial_end: every step is a whole node
    return m;
  }
  Hold hold;
  if (!path_.empty()) hold.deepest = path_.back().node;
  run_held(lock, hold, [&] { run_copies(runs); });
  return m;
}

std::vector<Key> Store::keys_pinned(PinId pin) {
  std::lock_guard<std::mutex> lock(mu_);
  check_open();
  if (!host_.arena()) throw Error(Code::kInvalidArgument, "this store is metadata-only: it keeps no keys");
  const PinRecord& rec = pin_record(pin);
  std::vector<std::uint32_t> chain;
  for (std::uint32_t id = rec.node; id != kNil && tree_.at(id).parent != kNil; id = tree_.at(id).parent)
    chain.push_back(id);
  std::vector<Key> keys;
  if (rec.node != kNil) node_keys(rec.node);  // computes the whole chain's keys
  for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
    const std::vector<Key>& nk = tree_.at(*it).payload->keys;
    keys.insert(keys.end(), nk.begin(), nk.end());
  }
  for (std::uint32_t id : rec.disk) keys.push_back(disk_->index().at(id).key);
  return keys;
}

// The chained keys of node `id`'s blocks, computing (and caching) them and its ancestors' as needed.
const std::vector<Key>& Store::node_keys(std::uint32_t id) {
  std::vector<std::uint32_t> todo;
  for (std::uint32_t x = id; tree_.at(x).parent != kNil && tree_.at(x).payload->keys.empty(); x = tree_.at(x).parent)
    todo.push_back(x);
  for (auto it = todo.rbegin(); it != todo.rend(); ++it) {
    Node& n = tree_.at(*it);
    const Node& p = tree_.at(n.parent);
    const Key* parent = p.parent == kNil ? nullptr : &p.payload->keys.back();
    const std::uint32_t nb = tree_.num_blocks(*it);
    n.payload->keys.resize(nb);
    chain_keys(ns_keys_[n.ns], parent, n.words.data(), nb, spec_.width, nullptr, 0, n.payload->keys.data());
  }
  return tree_.at(id).payload->keys;
}

// The key block `block` of node `node` chains from (zero for a prompt's first block).
Key Store::parent_key_of(std::uint32_t node, std::uint32_t block) {
  const std::vector<Key>& keys = node_keys(node);
  if (block > 0) return keys[block - 1];
  const Node& p = tree_.at(tree_.at(node).parent);
  return p.parent == kNil ? Key{} : p.payload->keys.back();
}

}  // namespace kvtier
