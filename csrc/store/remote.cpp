// Store: the remote tier's half in the core. With no disk tier, a block the host tier evicts passes to the
// remote tier's writer (kvtier.tiers.remote, through its demoter thread) with its host slot, instead of being
// dropped; the writer copies the batch out of the slots and sends it to the server. Cleared blocks are not
// demoted (demote_ is false meanwhile), and a full queue drops the block (counted as rejected), never waits.
#include "store/store.h"

namespace kvtier {

// Queues block `block` of host node `node` (being evicted) for the remote tier: the host's hold on its slot
// passes to the queue, or is released when the queue is full.
void Store::demote_remote(std::uint32_t node, std::uint32_t block) {
  const std::uint32_t slot = tree_.at(node).payload->slots[block];
  if (!remote_->room()) {
    remote_->reject();
    host_.unref(slot);
    return;
  }
  const Key key = node_keys(node)[block];
  const Node& nd = tree_.at(node);
  remote_->push(Demoted{ns_keys_[nd.ns], key, accounts_.session(nd.account), nd.depth + block, slot});
  cv_.notify_all();
}

Store::RemoteBatch Store::remote_take(std::size_t max_blocks, double timeout_s) {
  std::unique_lock<std::mutex> lock(mu_);
  RemoteBatch b;
  if (!remote_) return b;
  cv_.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] { return closed_ || remote_->has_work(); });
  if (closed_) {
    b.closed = true;
    return b;
  }
  if (remote_->batch_open()) return b;  // another caller's batch is out
  b.blocks = remote_->take(max_blocks);
  b.payloads.reserve(b.blocks.size());
  for (const Demoted& d : b.blocks) b.payloads.push_back(host_.arena()->slot_ptr(d.slot));
  return b;
}

void Store::remote_finish() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!remote_) return;
  remote_->finish([&](std::uint32_t slot) { host_.unref(slot); });
  cv_.notify_all();  // close() may be waiting for the batch
}

RemoteDemotionStats Store::remote_stats() {
  std::lock_guard<std::mutex> lock(mu_);
  return remote_ ? remote_->stats() : RemoteDemotionStats{};
}

}  // namespace kvtier
