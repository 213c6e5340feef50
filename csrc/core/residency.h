// Exact residency accounting: the integral of resident bytes over time, per account, in one tier.
//
// Each tier object owns one TierLedger (tiers/tier.h: the `residency()` verb) and charges it at its state
// changes; the coordinator sums the tiers' ledgers to report and to tell whether an account holds anything.
// Every change of resident bytes first integrates the bytes held since the account's last change, so the
// integral is exact at event resolution (no sampling). Time is the caller's clock, seconds.
#pragma once

#include <cstdint>
#include <vector>

#include "core/common.h"

namespace kvtier {

inline constexpr int kNumTiers = 3;  // 0 device, 1 host, 2 disk (the ids the facade's Tier enum uses)
inline constexpr int kTierDevice = 0;
inline constexpr int kTierHost = 1;
inline constexpr int kTierDisk = 2;
inline constexpr int kTierRemote = 3;  // the core's part: blocks waiting for the remote tier's writer

struct ResidencyCounter {
  std::int64_t bytes = 0;       // resident now
  double byte_seconds = 0.0;    // integral up to `since`
  double since = 0.0;           // seconds
  bool started = false;
};

class TierLedger {
 public:
  // Adds `delta` bytes (negative to remove) to `account` at time `now`. Inline: every insert and eviction
  // of the replay loop comes here (bench/callgrind_gate.py).
  [[gnu::always_inline]] void change(std::uint32_t account, std::int64_t delta, double now) {
    ResidencyCounter& c = counter(account);
    if (c.started) c.byte_seconds += static_cast<double>(c.bytes) * (now - c.since);
    c.started = true;
    c.since = now;
    c.bytes += delta;
    KVTIER_ASSERT(c.bytes >= 0);
  }
  // Removes `bytes` x `seconds` from the integral: used when an expired block is reclaimed after its
  // expiry time, so that residency stops at the expiry instant.
  void refund(std::uint32_t account, double byte_seconds) { counter(account).byte_seconds -= byte_seconds; }
  // Byte-seconds of `account` up to `now` (>= the last change).
  double byte_seconds(std::uint32_t account, double now) const {
    if (account >= counters_.size()) return 0.0;
    const ResidencyCounter& c = counters_[account];
    return c.byte_seconds + (c.started ? static_cast<double>(c.bytes) * (now - c.since) : 0.0);
  }
  std::int64_t bytes(std::uint32_t account) const { return account < counters_.size() ? counters_[account].bytes : 0; }
  // An account that holds nothing in any tier leaves (accounts.h; the coordinator asks every tier first):
  // its integral moves to namespace `ns`'s total of ended sessions, so every sum stays exact, and its
  // counter is reset for reuse.
  void retire(std::uint32_t account, std::uint32_t ns) {
    KVTIER_ASSERT(bytes(account) == 0);
    if (account >= counters_.size()) return;
    if (ns >= ended_.size()) ended_.resize(ns + 1, 0.0);
    ended_[ns] += counters_[account].byte_seconds;
    counters_[account] = {};
  }
  // Byte-seconds of the sessions of namespace `ns` that ended (retired accounts).
  double ended(std::uint32_t ns) const { return ns < ended_.size() ? ended_[ns] : 0.0; }
  // A namespace that holds nothing leaves: its ended sessions join the total of ended namespaces.
  void retire_namespace(std::uint32_t ns) {
    if (ns >= ended_.size()) return;
    ended_namespaces_ += ended_[ns];
    ended_[ns] = 0.0;
  }
  double ended_namespaces() const { return ended_namespaces_; }

 private:
  ResidencyCounter& counter(std::uint32_t account) {
    if (account >= counters_.size()) [[unlikely]]
      grow(account);
    return counters_[account];
  }
  [[gnu::noinline]] void grow(std::uint32_t account) { counters_.resize(account + 1); }
  std::vector<ResidencyCounter> counters_;  // per account
  std::vector<double> ended_;               // per namespace
  double ended_namespaces_ = 0.0;
};

}  // namespace kvtier
