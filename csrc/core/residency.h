// Exact residency accounting: the integral of resident bytes over time, per tier and account.
//
// Every change of resident bytes first integrates the bytes held since the account's last change,
// so the integral is exact at event resolution (no sampling). Time is the caller's clock, seconds.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "core/common.h"

namespace kvtier {

inline constexpr int kNumTiers = 3;  // 0 device, 1 host, 2 disk
inline constexpr int kTierDevice = 0;
inline constexpr int kTierHost = 1;
inline constexpr int kTierDisk = 2;

struct ResidencyCounter {
  std::int64_t bytes = 0;       // resident now
  double byte_seconds = 0.0;    // integral up to `since`
  double since = 0.0;           // seconds
  bool started = false;
};

class ResidencyLedger {
 public:
  // Adds `delta` bytes (negative to remove) to (tier, account) at time `now`.
  void change(int tier, std::uint32_t account, std::int64_t delta, double now) {
    ResidencyCounter& c = counter(tier, account);
    if (c.started) c.byte_seconds += static_cast<double>(c.bytes) * (now - c.since);
    c.started = true;
    c.since = now;
    c.bytes += delta;
    KVTIER_ASSERT(c.bytes >= 0);
  }
  // Removes `bytes` x `seconds` from the integral: used when an expired block is reclaimed after its
  // expiry time, so that residency stops at the expiry instant.
  void refund(int tier, std::uint32_t account, double byte_seconds) {
    counter(tier, account).byte_seconds -= byte_seconds;
  }
  // Byte-seconds of (tier, account) up to `now` (>= the last change).
  double byte_seconds(int tier, std::uint32_t account, double now) const {
    if (account >= counters_.size()) return 0.0;
    const ResidencyCounter& c = counters_[account][tier];
    return c.byte_seconds + (c.started ? static_cast<double>(c.bytes) * (now - c.since) : 0.0);
  }
  std::int64_t bytes(int tier, std::uint32_t account) const {
    return account < counters_.size() ? counters_[account][tier].bytes : 0;
  }
  // Whether the account holds nothing in any tier.
  bool empty(std::uint32_t account) const {
    if (account >= counters_.size()) return true;
    for (const ResidencyCounter& c : counters_[account])
      if (c.bytes != 0) return false;
    return true;
  }
  // An account that holds nothing leaves (accounts.h): its integral moves to namespace `ns`'s total
  // of ended sessions, so every per-tier sum stays exact, and its counters are reset for reuse.
  void retire(std::uint32_t account, std::uint32_t ns) {
    KVTIER_ASSERT(empty(account));
    if (account >= counters_.size()) return;
    if (ns >= ended_.size()) ended_.resize(ns + 1);
    for (int tier = 0; tier < kNumTiers; ++tier) ended_[ns][tier] += counters_[account][tier].byte_seconds;
    counters_[account] = {};
  }
  // Byte-seconds of the sessions of namespace `ns` that ended (retired accounts), in `tier`.
  double ended(int tier, std::uint32_t ns) const { return ns < ended_.size() ? ended_[ns][tier] : 0.0; }
  // A namespace that holds nothing leaves: its ended sessions join the total of ended namespaces.
  void retire_namespace(std::uint32_t ns) {
    if (ns >= ended_.size()) return;
    for (int tier = 0; tier < kNumTiers; ++tier) ended_namespaces_[tier] += ended_[ns][tier];
    ended_[ns] = {};
  }
  double ended_namespaces(int tier) const { return ended_namespaces_[tier]; }

 private:
  ResidencyCounter& counter(int tier, std::uint32_t account) {
    if (account >= counters_.size()) counters_.resize(account + 1);
    return counters_[account][tier];
  }
  std::vector<std::array<ResidencyCounter, kNumTiers>> counters_;
  std::vector<std::array<double, kNumTiers>> ended_;  // per namespace
  std::array<double, kNumTiers> ended_namespaces_{};
};

}  // namespace kvtier
