// Store: the remote tier's half in the core. With no disk tier, a block the host tier evicts passes to the
// remote tier's writer (kvtier.tiers.remote, through its demoter thread) with its host slot, instead of being
// dropped; the writer copies the batch out of the slots and sends it to the server. Cleared blocks are not
// demoted (demote_ is false meanwhile), and a full queue drops the block (counted as rejected), never waits.
#include "store/store.h"

namespace kvtier {

// Queues block `block` of host node `node` (being evicted) for the remote tier: the host's hold on its slot
// passes to the queue, or is released when the queue is full.
void Store::demote_remote(std::uint32_t node, std::uint32_t block, double now) {
  const std::uint32_t slot = tree_.at(node).payload->slots[block];
  const std::uint32_t account = tree_.at(node).account;
  RemoteDemotions::Ticket t = remote_->reserve({account, now});
  if (!t.granted) {  // counted as rejected
    host_.unref(slot);
    return;
  }
  const Key key = node_keys(node)[block];
  const Node& nd = tree_.at(node);
  remote_->copy_in({t, Demoted{ns_keys_[nd.ns], key, account, accounts_.session(account), nd.depth + block, slot}});
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
  remote_->copy_out({max_blocks, host_.arena(), &b.blocks, &b.payloads});  // nothing while a batch is out
  return b;
}

void Store::remote_finish() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!remote_) return;
  remote_->commit({clock_.latest(), [&](std::uint32_t slot) { host_.unref(slot); }});
  cv_.notify_all();  // close() may be waiting for the batch
}

RemoteDemotionStats Store::remote_stats() {
  std::lock_guard<std::mutex> lock(mu_);
  return remote_ ? remote_->stats() : RemoteDemotionStats{};
}

}  // namespace kvtier
