// Store: the radix tree, its tiers, policies and residency ledger behind one lock.
//
// Every public call takes `now` in seconds (NaN = read the monotonic clock), locks the store, and
// may throw Error (see common.h) for user mistakes: kClosed after close(), kInvalidArgument for
// time going backwards or an unknown namespace/account, kTypeError never (the bindings check types).
// Payload copies run under the store lock but never under the Python GIL (the bindings release it).
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common.h"
#include "host_tier.h"
#include "keys.h"
#include "policy.h"
#include "residency.h"
#include "tree.h"

namespace kvtier {

struct TierSpec {
  std::uint64_t capacity_bytes = 0;  // 0 = unlimited (metadata-only stores only)
  Policy policy = Policy::kLRU;
  double ttl_s = 0.0;                // max idle seconds; 0 = no TTL
};

struct StoreSpec {
  std::uint32_t block_size = 16;   // tokens per block (reported as matched tokens)
  std::uint32_t width = 16;        // words compared per block: block_size for tokens, 2 for u64 ids
  std::uint64_t block_bytes = 0;   // payload bytes per block (also the accounting size)
  bool payloads = true;            // false = metadata-only (no arena, no keys)
  TierSpec host;
};

struct TierStats {
  std::uint64_t hits = 0;           // blocks matched
  std::uint64_t misses = 0;         // full blocks asked for and not matched
  std::uint64_t inserted = 0;       // blocks stored
  std::uint64_t evicted = 0;        // blocks removed to make room or by evict()
  std::uint64_t expired = 0;        // blocks removed because their TTL ran out
  std::uint64_t bytes_written = 0;  // payload bytes copied in
  std::uint64_t bytes_read = 0;     // payload bytes copied out
  std::uint64_t resident_bytes = 0;
  std::uint64_t capacity_bytes = 0; // 0 = unlimited
  std::uint64_t blocks = 0;
  std::uint64_t pinned_blocks = 0;
  std::uint64_t nodes = 0;
};

struct AccountResidency {
  std::uint32_t ns;
  std::string session;
  int tier;
  std::int64_t bytes;      // resident now
  double byte_seconds;     // integral up to `now`
};

struct MatchResult {
  std::uint32_t blocks = 0;   // leading full blocks found
  std::uint32_t node = kNil;  // deepest matched node (pinned when asked)
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
  const std::uint32_t* ns = nullptr;       // n_requests namespace ids, or nullptr for namespace 0
  const std::uint32_t* accounts = nullptr; // n_requests account ids, or nullptr for the namespace's default
  std::size_t n_requests = 0;
};

class Store {
 public:
  explicit Store(const StoreSpec& spec);  // throws Error(kInvalidArgument / kCapacity)
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  const StoreSpec& spec() const { return spec_; }

  // Registers a namespace (idempotent for the same key). Returns its id.
  std::uint32_t add_namespace(const Key& ns_key);
  // The residency account of (namespace, session); "" is the namespace's default account.
  std::uint32_t account(std::uint32_t ns, const std::string& session);
  Key namespace_key_of(std::uint32_t ns);

  // Longest cached prefix of `n` blocks. touch: refresh recency, count hits/misses, split the last
  // node at the match end; pin: hold the matched prefix until unpin(result.node).
  MatchResult match(std::uint32_t ns, const Word* words, std::size_t n, double now, bool touch, bool pin);
  // Releases a pin. Releasing counts as an access of the prefix (recency refreshed, no hit): its
  // idle time, and so its TTL, starts now. NaN `now` means the latest time the store has seen.
  void unpin(std::uint32_t node, double now);

  // Stores the blocks of `words` not yet present. Payload mode: `payload` holds blocks
  // [payload_first, n) back to back (block_bytes each); blocks below payload_first must be present.
  InsertResult insert(std::uint32_t ns, std::uint32_t account, const Word* words, std::size_t n,
                      const std::uint8_t* payload, std::size_t payload_first, double now);

  // Copies the payloads of the pinned prefix ending at `node` (at most `max_blocks`) to `out`.
  // Returns blocks copied. Caller holds the pin.
  std::uint32_t load_pinned(std::uint32_t node, std::uint8_t* out, std::size_t max_blocks);
  // Match (touching) and copy in one locked step. Returns blocks copied.
  std::uint32_t load(std::uint32_t ns, const Word* words, std::size_t n, std::uint8_t* out, double now);
  // Chained keys of the pinned prefix ending at `node` (payload mode).
  std::vector<Key> keys_pinned(std::uint32_t node);

  std::uint64_t evict(std::uint64_t bytes, double now);  // frees at least `bytes` if unpinned blocks allow
  std::uint64_t expire(double now);                      // reclaims expired blocks; returns blocks
  std::uint64_t clear(double now);                       // removes every unpinned block
  void replay(const ReplayTrace& trace, std::int32_t* hits_out);

  TierStats stats();
  std::vector<AccountResidency> residency(double now);
  double clock_now();  // the store's notion of now (last time seen, or the monotonic clock)
  void close();
  bool closed();

  // Checks every structural invariant (tests). Throws nothing; aborts on violation.
  void check_invariants();

 private:
  struct Step {
    std::uint32_t node;
    std::uint32_t blocks;  // blocks of this node matched (the last step may be partial)
  };
  void check_open() const;
  double resolve_now(double now);
  std::uint32_t root_of(std::uint32_t ns) const;
  bool expired(const Node& n, double now) const {
    return spec_.host.ttl_s > 0.0 && n.pins == 0 && now - n.last_access > spec_.host.ttl_s;
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
  InsertResult insert_locked(std::uint32_t ns, std::uint32_t account, const Word* words, std::size_t n,
                             const std::uint8_t* payload, std::size_t payload_first, double now, bool as_hit);
  std::uint64_t capacity_blocks() const { return capacity_blocks_; }

  StoreSpec spec_;
  std::mutex mu_;
  bool closed_ = false;
  double last_now_ = -INFINITY;
  RadixTree tree_;
  EvictionQueue queue_;
  std::unique_ptr<HostArena> arena_;
  ResidencyLedger ledger_;
  TierStats stats_;
  std::uint64_t capacity_blocks_ = 0;  // 0 = unlimited
  std::uint64_t used_blocks_ = 0;
  std::uint64_t seq_ = 0;
  std::uint32_t shielded_ = kNil;     // a node kept out of the eviction queue while its insert makes room
  std::vector<std::uint32_t> roots_;  // per namespace
  std::vector<std::uint32_t> default_account_;  // per namespace: its (ns, "") account
  std::vector<Key> ns_keys_;
  std::map<Key, std::uint32_t> ns_ids_;
  std::vector<std::pair<std::uint32_t, std::string>> accounts_;  // account -> (ns, session)
  std::map<std::pair<std::uint32_t, std::string>, std::uint32_t> account_ids_;
  std::vector<Step> path_;           // scratch for walk()
  std::vector<std::uint32_t> stack_; // scratch for subtree walks
};

}  // namespace kvtier
