// Residency accounts: one per (namespace, session), the unit GB-hours are reported by.
//
// An account lives while something may still be charged to it. A session that holds nothing in any
// tier and has no call in flight is "ended": once the table has grown past its sweep threshold, ended
// accounts are retired — their slot and session string are freed and reused, and the caller folds
// their residency into the namespace's total of ended sessions (residency.h) — so a store that sees a
// new session per request keeps memory for the live ones only. The threshold doubles with the live
// count (amortised O(1) per new account). A namespace's default account (session "") is never retired.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/common.h"

namespace kvtier {

class AccountTable {
 public:
  // Sweeps run once more than this many accounts are live (and at twice the survivors after each).
  static constexpr std::size_t kSweepFloor = 1024;

  // The account of (ns, session), created if needed (reusing a retired slot). Does not sweep.
  std::uint32_t find_or_add(std::uint32_t ns, const std::string& session) {
    const auto it = ids_.find(Name{ns, session});
    if (it != ids_.end()) return it->second;
    std::uint32_t a;
    if (!free_.empty()) {
      a = free_.back();
      free_.pop_back();
    } else {
      a = static_cast<std::uint32_t>(slots_.size());
      slots_.emplace_back();
    }
    slots_[a] = Slot{ns, session, 0, true};
    ids_.emplace(Name{ns, session}, a);
    return a;
  }

  bool live(std::uint32_t a) const { return a < slots_.size() && slots_[a].live; }
  std::uint32_t ns(std::uint32_t a) const { return slot(a).ns; }
  const std::string& session(std::uint32_t a) const { return slot(a).session; }
  std::size_t live_count() const { return ids_.size(); }
  std::size_t slots() const { return slots_.size(); }  // live and retired (upper bound of ids)

  // A call charging the account is in flight (it may release the store lock): not retired meanwhile.
  void use(std::uint32_t a) { ++slot(a).users; }
  void done(std::uint32_t a) {
    KVTIER_ASSERT(slot(a).users > 0);
    --slot(a).users;
  }

  bool sweep_due() const { return ids_.size() > next_sweep_; }
  // Retires every account that `ended(a)` says holds nothing, that has no call in flight and is not a
  // default account; `retire(a)` runs first for each (to fold its residency). Returns accounts retired.
  std::size_t sweep(const std::function<bool(std::uint32_t)>& ended, const std::function<void(std::uint32_t)>& retire) {
    std::size_t n = 0;
    for (std::uint32_t a = 0; a < slots_.size(); ++a) {
      const Slot& s = slots_[a];
      if (!s.live || s.users != 0 || s.session.empty() || !ended(a)) continue;
      retire(a);
      remove(a);
      ++n;
    }
    next_sweep_ = std::max(kSweepFloor, 2 * ids_.size());
    return n;
  }
  // Frees account `a` (a namespace's default account when the namespace leaves).
  void remove(std::uint32_t a) {
    Slot& s = slot(a);
    KVTIER_ASSERT(s.users == 0);
    ids_.erase(Name{s.ns, s.session});
    s = Slot{};
    free_.push_back(a);
  }
  // Namespaces with an account other than their default, or with a call in flight (flags by namespace id).
  void mark_busy(std::vector<bool>& busy) const {
    for (const Slot& s : slots_)
      if (s.live && (!s.session.empty() || s.users != 0)) busy[s.ns] = true;
  }

 private:
  struct Slot {
    std::uint32_t ns = 0;
    std::string session;
    std::uint32_t users = 0;
    bool live = false;
  };
  struct Name {
    std::uint32_t ns;
    std::string session;
    bool operator==(const Name& o) const { return ns == o.ns && session == o.session; }
  };
  struct NameHash {
    std::size_t operator()(const Name& n) const {
      return std::hash<std::string>()(n.session) ^ (static_cast<std::size_t>(n.ns) * 0x9E3779B97F4A7C15ull);
    }
  };
  const Slot& slot(std::uint32_t a) const {
    KVTIER_ASSERT(live(a));
    return slots_[a];
  }
  Slot& slot(std::uint32_t a) {
    KVTIER_ASSERT(live(a));
    return slots_[a];
  }

  std::vector<Slot> slots_;
  std::vector<std::uint32_t> free_;
  std::unordered_map<Name, std::uint32_t, NameHash> ids_;
  std::size_t next_sweep_ = kSweepFloor;
};

}  // namespace kvtier
