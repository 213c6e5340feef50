// Lookups by key over Store's public calls (keys_lookup.h).
#include "store/keys_lookup.h"

#include <algorithm>
#include <cstring>
#include <limits>

namespace kvtier::keys {
namespace {

// A key's bytes as the 8 words of its one-block prompt.
struct KeyWords {
  Word w[kKeyWords];
  explicit KeyWords(const Key& k) { std::memcpy(w, k.data(), sizeof(w)); }
};

constexpr double kNoTime = std::numeric_limits<double>::quiet_NaN();  // the store's clock

std::size_t held(const MatchResult& r) { return std::size_t{r.blocks} + r.disk_blocks; }

}  // namespace

Leading leading(Store& s, NsId ns, const Key* keys, std::size_t n, std::size_t from, double now, bool touch) {
  Leading out;
  for (std::size_t i = from; i < n; ++i) {
    const KeyWords kw(keys[i]);
    MatchResult r = s.match(ns, kw.w, 1, now, touch, false);
    if (held(r) == 0) {
      out.probe = r.probe;
      out.probe_key = r.probe_key;
      break;
    }
    ++out.found;
  }
  return out;
}

std::vector<std::uint8_t> present(Store& s, NsId ns, const Key* keys, std::size_t n, double now) {
  std::vector<std::uint8_t> out(n, 0);
  for (std::size_t i = 0; i < n; ++i) {
    const KeyWords kw(keys[i]);
    out[i] = held(s.match(ns, kw.w, 1, now, false, false)) > 0;
  }
  return out;
}

std::vector<Key> block_keys(Store& s, NsId ns, const Key* keys, std::size_t n) {
  std::vector<Key> out;
  out.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    const KeyWords kw(keys[i]);
    std::vector<Key> k = s.chain_keys_from(ns, kw.w, 1, 0, nullptr);
    KVTIER_ASSERT(k.size() == 1);
    out.push_back(k[0]);
  }
  return out;
}

std::vector<std::uint8_t> insert(Store& s, NsId ns, const std::string& session, const Key* keys, std::size_t n,
                                 const std::uint8_t* payload, double now) {
  const std::size_t bb = s.spec().block_bytes;
  std::vector<std::uint8_t> out(n, 0);
  for (std::size_t i = 0; i < n; ++i) {
    const KeyWords kw(keys[i]);
    Memory m;
    m.data = payload == nullptr ? nullptr : const_cast<std::uint8_t*>(payload + i * bb);  // read only
    const InsertResult r = s.insert(ns, session, kw.w, 1, m, 0, now);
    out[i] = r.matched + r.inserted > 0;
  }
  return out;
}

void load_release(Store& s, Load& load, double now) {
  // Every pin is released even if one release throws (time going backwards is checked by the first).
  std::vector<PinId> pins;
  pins.swap(load.pins);
  for (std::size_t i = 0; i < pins.size(); ++i) {
    try {
      s.unpin(pins[i], now);
    } catch (...) {
      for (std::size_t j = i + 1; j < pins.size(); ++j) s.unpin(pins[j], kNoTime);
      throw;
    }
  }
}

Load load_begin(Store& s, NsId ns, const Key* keys, std::size_t n, std::uint8_t* out, double now) {
  const std::size_t bb = s.spec().block_bytes;
  Load load;
  try {
    for (std::size_t i = 0; i < n; ++i) {
      const KeyWords kw(keys[i]);
      MatchResult r = s.match(ns, kw.w, 1, now, true, true);
      if (held(r) == 0) {
        load.probe = r.probe;
        load.probe_key = r.probe_key;
        break;
      }
      load.pins.push_back(r.pin);
      std::vector<DiskRead> reads;
      // 1 (copied, or listed in reads), or 0: its disk entry was found damaged by another load meanwhile.
      const std::uint32_t planned = s.load_pinned(r.pin, Memory{out + i * bb, -1}, 1, &reads);
      KVTIER_ASSERT(planned <= 1 && reads.size() <= planned);
      if (planned == 0) break;
      ++load.planned;
      for (DiskRead& d : reads) {
        d.block = static_cast<std::uint32_t>(i);
        load.reads.push_back(d);
      }
    }
  } catch (...) {
    load_release(s, load, kNoTime);
    throw;
  }
  return load;
}

std::size_t load_finish(Store& s, Load& load, std::uint8_t* out, std::size_t good, const std::vector<Key>& corrupt,
                        const std::vector<Key>& missing, bool promote, double now) {
  const std::size_t bb = s.spec().block_bytes;
  good = std::min(good, load.planned);
  try {
    for (const DiskRead& d : load.reads) {
      const auto in = [&](const std::vector<Key>& v) { return std::find(v.begin(), v.end(), d.key) != v.end(); };
      std::vector<Key> bad_c, bad_m;
      if (in(corrupt)) bad_c.push_back(d.key);
      if (in(missing)) bad_m.push_back(d.key);
      const std::uint32_t ok = d.block < good && bad_c.empty() && bad_m.empty();
      s.disk_finish_load(load.pins[d.block], Memory{out + std::size_t{d.block} * bb, -1}, ok, bad_c, bad_m,
                         promote, now);
    }
  } catch (...) {
    load_release(s, load, kNoTime);
    throw;
  }
  load_release(s, load, now);
  return good;
}

}  // namespace kvtier::keys
