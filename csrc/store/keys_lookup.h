// Lookups by key: blocks found by a 32-byte key an engine computed (SGLang's chained page hash) instead
// of by a token chain. Each key is a one-block prompt whose 8 words are the key's bytes (little-endian
// uint32) in a namespace whose content kind is "keys" (its namespace key binds `content=keys`, so such
// blocks can never be confused with token blocks). Blocks are therefore children of the namespace's root:
// the same tiers, policies, residency, checksums and disk records as any block; a lookup can start at
// any key (an engine's keys already identify the whole prefix).
//
// Everything here loops over Store's public calls (no access to the tree): each call locks the store
// itself and copies payloads outside the lock. Call without the GIL. Errors are Store's (store.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "store/store.h"

namespace kvtier::keys {

inline constexpr std::size_t kKeyWords = 8;  // words of a key block; the store's width must be this

// The leading run of keys[from..n) held in some tier (host, or disk as this process knows the folder).
struct Leading {
  std::size_t found = 0;   // keys from `from` on, before the first miss
  bool probe = false;      // the miss's disk lookup stopped at `probe_key`: another process may hold it
  Key probe_key{};
};
// touch: refresh recency and count a hit per key found (and a miss for the first missing key).
Leading leading(Store& s, NsId ns, const Key* keys, std::size_t n, std::size_t from, double now, bool touch);

// Per key: 1 if held in some tier. Nothing is touched or counted.
std::vector<std::uint8_t> present(Store& s, NsId ns, const Key* keys, std::size_t n, double now);

// The disk keys of the key blocks (H(namespace, key words), docs/keys.md): what the folder's index holds.
std::vector<Key> block_keys(Store& s, NsId ns, const Key* keys, std::size_t n);

// Stores keys[i] with payload i (payload + i * block_bytes), for the keys not held yet; a key already
// held costs a lookup and no copy. Per key: 1 if it is held after the call (0: the host tier was full
// of pinned blocks). `payload` is host memory of n blocks.
std::vector<std::uint8_t> insert(Store& s, NsId ns, const std::string& session, const Key* keys, std::size_t n,
                                 const std::uint8_t* payload, double now);

// A load in two steps around the folder reads (which the disk tier does outside the core):
// begin pins the leading run of held keys and copies what is in memory to out + i * block_bytes; the
// blocks to read from the folder are in `reads` (DiskRead::block = the key's index). finish reports the
// folder reads (`good`: keys before it were read and verified; corrupt and missing keys are dropped
// from the store), promotes good disk blocks when `promote`, releases the pins and returns the keys
// loaded from the front. release only releases the pins (the caller gave up).
struct Load {
  std::vector<PinId> pins;       // one per key of the leading run
  std::size_t planned = 0;       // keys from the front copied to `out` or listed in `reads`
  std::vector<DiskRead> reads;   // blocks to read from the folder, in key order
  bool probe = false;            // the run stopped at a key the folder may hold (see Leading)
  Key probe_key{};
};
Load load_begin(Store& s, NsId ns, const Key* keys, std::size_t n, std::uint8_t* out, double now);
std::size_t load_finish(Store& s, Load& load, std::uint8_t* out, std::size_t good, const std::vector<Key>& corrupt,
                        const std::vector<Key>& missing, bool promote, double now);
void load_release(Store& s, Load& load, double now);

}  // namespace kvtier::keys
