// kvtier._core: the one pybind11 module. Converts Python buffers to spans, releases the GIL around
// every call into the core, and maps kvtier::Error codes to the exception classes of kvtier.errors.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "../hash/blake3.h"
#include "../keys.h"
#include "../store.h"
#include "tokens.h"

namespace py = pybind11;

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "block ids are read as (low, high) 32-bit words");
using namespace kvtier;
using namespace kvtier::bindings;

namespace {

constexpr double kNoTime = std::numeric_limits<double>::quiet_NaN();


// `now` from Python: None means "the monotonic clock"; anything else must be a finite number.
double time_arg(const std::optional<double>& now) {
  if (!now) return kNoTime;
  if (!std::isfinite(*now)) raise(Code::kInvalidArgument, "now must be a finite number of seconds, got " + format_double(*now));
  return *now;
}

// A pinned prefix. Holds a reference to its store, so that the store outlives every pin (a pin can
// never be used on another store that happens to reuse the address).
struct PyPin {
  std::shared_ptr<Store> store;
  PinId pin;
  std::uint32_t blocks;  // host + disk
  bool active;
};

struct ByteView {
  std::uint8_t* data = nullptr;
  std::size_t bytes = 0;
  std::optional<py::buffer_info> info;
};

ByteView byte_view(py::handle obj, bool writable, const char* arg) {
  if (!PyObject_CheckBuffer(obj.ptr()))
    raise(Code::kTypeError, std::string(arg) + " must support the buffer protocol (a numpy array, bytearray or memoryview)");
  py::buffer buf = py::reinterpret_borrow<py::buffer>(obj);
  py::buffer_info info;
  try {
    info = buf.request(writable);
  } catch (py::error_already_set&) {
    raise(Code::kTypeError, std::string(arg) + (writable ? " must be writable" : " is not a readable buffer"));
  }
  const std::string fmt = info.format;
  if (fmt.find('O') != std::string::npos)
    raise(Code::kTypeError, std::string(arg) + " holds Python objects (dtype object); pass a numeric array");
  // C-contiguous check.
  py::ssize_t expect = info.itemsize;
  for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
    if (info.shape[d] > 1 && info.strides[d] != expect)
      raise(Code::kTypeError, std::string(arg) + " must be C-contiguous; pass numpy.ascontiguousarray(" + arg + ")");
    expect *= info.shape[d];
  }
  ByteView v;
  v.data = static_cast<std::uint8_t*>(info.ptr);
  v.bytes = static_cast<std::size_t>(info.size * info.itemsize);
  v.info.emplace(std::move(info));
  return v;
}

// Memory the facade describes from a caller's tensor (kvtier.kv_layout.as_tensor_view: CUDA memory, host
// tensors without the buffer protocol), holding the tensor for the call. A type of its own, so that no
// other Python object is ever taken for a raw address.
struct RawMemory {
  std::uint64_t address = 0;
  std::size_t bytes = 0;
  int device = -1;  // CUDA ordinal, -1 = host
};

// A payload or output argument: a buffer-protocol object or a RawMemory.
struct MemArg {
  Memory mem;
  std::size_t bytes = 0;
  ByteView view;  // keeps a host buffer alive
};

MemArg mem_arg(py::handle obj, bool writable, const char* arg) {
  MemArg m;
  if (py::isinstance<RawMemory>(obj)) {
    const RawMemory& r = obj.cast<const RawMemory&>();
    m.mem.data = reinterpret_cast<std::uint8_t*>(r.address);
    m.mem.device = r.device;
    m.bytes = r.bytes;
    return m;
  }
  m.view = byte_view(obj, writable, arg);
  m.mem.data = m.view.data;
  m.bytes = m.view.bytes;
  return m;
}

struct PyStore {
  std::shared_ptr<Store> store;
  bool ids;               // block ids instead of tokens
  std::uint64_t limit;    // exclusive bound on token ids

  Words words_of(py::handle tokens, const char* arg) const {
    Words w = ids ? id_words(tokens, arg) : token_words(tokens, limit, arg);
    return w;
  }
  std::size_t blocks_of(const Words& w) const { return w.count / store->spec().width; }
};

py::dict stats_dict(const TierStats& s) {
  py::dict d;
  d["hits"] = s.hits;
  d["misses"] = s.misses;
  d["inserted"] = s.inserted;
  d["evicted"] = s.evicted;
  d["expired"] = s.expired;
  d["bytes_written"] = s.bytes_written;
  d["bytes_read"] = s.bytes_read;
  d["resident_bytes"] = s.resident_bytes;
  d["capacity_bytes"] = s.capacity_bytes;
  d["blocks"] = s.blocks;
  d["pinned_blocks"] = s.pinned_blocks;
  d["nodes"] = s.nodes;
  return d;
}

Key key_from(py::bytes b, const char* arg) {
  std::string s = b;
  if (s.size() != 32) raise(Code::kInvalidArgument, std::string(arg) + " must be 32 bytes, got " + std::to_string(s.size()));
  Key k;
  std::memcpy(k.data(), s.data(), 32);
  return k;
}

py::bytes key_bytes(const Key& k) { return py::bytes(reinterpret_cast<const char*>(k.data()), 32); }

py::dict disk_stats_dict(const DiskStats& s) {
  py::dict d;
  d["hits"] = s.hits;
  d["misses"] = s.misses;
  d["queued"] = s.queued;
  d["written"] = s.written;
  d["bytes_written"] = s.bytes_written;
  d["bytes_read"] = s.bytes_read;
  d["evicted"] = s.evicted;
  d["expired"] = s.expired;
  d["corrupted"] = s.corrupted;
  d["missing"] = s.missing;
  d["write_errors"] = s.write_errors;
  d["rejected"] = s.rejected;
  d["promoted"] = s.promoted;
  d["restored"] = s.restored;
  d["pending"] = s.pending;
  d["blocks"] = s.blocks;
  d["resident_bytes"] = s.resident_bytes;
  d["capacity_bytes"] = s.capacity_bytes;
  d["pinned_blocks"] = s.pinned_blocks;
  return d;
}

std::vector<Key> keys_from_list(const py::list& keys, const char* arg) {
  std::vector<Key> out;
  out.reserve(keys.size());
  for (py::handle k : keys) out.push_back(key_from(py::reinterpret_borrow<py::bytes>(k), arg));
  return out;
}

// The pin's own checks (another store's, released by this thread); the core checks the pin's
// generation under its lock, which catches a release by another thread racing this call.
PyPin& active_pin(PyStore& s, PyPin& p) {
  if (p.store != s.store) raise(Code::kStalePin, "this pin belongs to another store");
  if (!p.active) raise(Code::kStalePin, "this pin was already released: match(..., pin=True) again");
  return p;
}

py::array_t<std::uint8_t> keys_array(const std::vector<Key>& keys) {
  py::array_t<std::uint8_t> out({static_cast<py::ssize_t>(keys.size()), py::ssize_t{32}});
  if (!keys.empty()) std::memcpy(out.mutable_data(), keys.data(), keys.size() * 32);
  return out;
}

}  // namespace

void bind_disk_functions(py::module_& m);  // bindings/disk.cpp
void bind_copy(py::module_& m);  // csrc/bindings/copy.cpp

PYBIND11_MODULE(_core, m) {
  m.doc() = "kvtier's C++ core. Private: use the kvtier package.";
  bind_disk_functions(m);
  bind_copy(m);

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      const char* cls = "InvalidArgumentError";
      switch (e.code()) {
        case Code::kInvalidArgument: cls = "InvalidArgumentError"; break;
        case Code::kTypeError: cls = "KvtierTypeError"; break;
        case Code::kClosed: cls = "StoreClosedError"; break;
        case Code::kNotFound: cls = "UnknownNamespaceError"; break;
        case Code::kCapacity: cls = "CapacityError"; break;
        case Code::kStalePin: cls = "PinError"; break;
      }
      py::object exc = py::module_::import("kvtier.errors").attr(cls);
      PyErr_SetString(exc.ptr(), e.what());
    }
  });

  m.def(
      "blake3",
      [](py::bytes data, std::optional<py::bytes> key, std::optional<std::string> context, std::size_t out_len) {
        std::string d = data;
        if (key && context) raise(Code::kInvalidArgument, "give key or context, not both");
        std::string out(out_len, '\0');
        {
          py::gil_scoped_release nogil;
          blake3::Hasher h;
          if (key) {
            std::string k = *key;
            if (k.size() != blake3::kKeyLen) raise(Code::kInvalidArgument, "key must be 32 bytes");
            h = blake3::Hasher::keyed(reinterpret_cast<const std::uint8_t*>(k.data()));
          } else if (context) {
            h = blake3::Hasher::derive_key(*context);
          }
          h.update(d.data(), d.size());
          h.finalize(reinterpret_cast<std::uint8_t*>(out.data()), out_len);
        }
        return py::bytes(out);
      },
      py::arg("data"), py::kw_only(), py::arg("key") = py::none(), py::arg("context") = py::none(),
      py::arg("out_len") = 32);

  m.def(
      "namespace_key", [](const std::vector<std::string>& fields) {
        Key k = namespace_key(fields);
        return py::bytes(reinterpret_cast<const char*>(k.data()), 32);
      },
      py::arg("fields"));

  m.def(
      "block_keys",
      [](py::bytes ns_key, py::handle tokens, std::uint32_t block_size, std::uint64_t limit, py::bytes extra,
         std::optional<py::bytes> parent) {
        if (block_size == 0) raise(Code::kInvalidArgument, "block_size must be > 0");
        Key ns = key_from(ns_key, "namespace key");
        std::optional<Key> par;
        if (parent) par = key_from(*parent, "parent");
        std::string ex = extra;
        Words w = token_words(tokens, limit, "tokens");
        const std::size_t n = w.count / block_size;
        std::vector<Key> keys(n);
        {
          py::gil_scoped_release nogil;
          chain_keys(ns, par ? &*par : nullptr, w.data, n, block_size,
                     reinterpret_cast<const std::uint8_t*>(ex.data()), ex.size(), keys.data());
        }
        return keys_array(keys);
      },
      py::arg("ns_key"), py::arg("tokens"), py::arg("block_size"), py::arg("limit"), py::arg("extra"),
      py::arg("parent") = py::none());

  py::class_<TokenSequence>(m, "TokenSequence")
      .def(py::init<std::uint64_t>(), py::arg("limit"))
      .def(
          "extend",
          [](TokenSequence& s, py::handle tokens) {
            Words w = token_words(tokens, s.limit(), "tokens");
            s.words.insert(s.words.end(), w.data, w.data + w.count);
          },
          py::arg("tokens"))
      .def("clear", [](TokenSequence& s) { s.words.clear(); })
      .def("truncate", [](TokenSequence& s, std::size_t n) {
        if (n > s.words.size()) raise(Code::kInvalidArgument, "n is larger than the sequence");
        s.words.resize(n);
      }, py::arg("n"))
      .def("__len__", [](const TokenSequence& s) { return s.words.size(); })
      .def_property_readonly("limit", &TokenSequence::limit)
      .def("numpy", [](const TokenSequence& s) {
        py::array_t<std::int32_t> a(static_cast<py::ssize_t>(s.words.size()));
        if (!s.words.empty()) std::memcpy(a.mutable_data(), s.words.data(), s.words.size() * 4);
        return a;
      });

  py::class_<RawMemory>(m, "Memory")
      .def(py::init([](std::uint64_t address, std::size_t bytes, int device) {
             if (device < -1) raise(Code::kInvalidArgument, "device must be a CUDA ordinal or -1 (host)");
             if (address == 0 && bytes > 0) raise(Code::kInvalidArgument, "address must not be null");
             return RawMemory{address, bytes, device};
           }),
           py::arg("address"), py::arg("bytes"), py::arg("device"))
      .def_readonly("address", &RawMemory::address)
      .def_readonly("bytes", &RawMemory::bytes)
      .def_readonly("device", &RawMemory::device);

  py::class_<PyPin>(m, "Pin")
      .def_readonly("blocks", &PyPin::blocks)
      .def_readonly("active", &PyPin::active);

  py::class_<PyStore>(m, "Store")
      .def(py::init([](std::uint32_t block_size, bool ids, std::uint64_t block_bytes, bool payloads,
                       std::uint64_t capacity_bytes, int policy, double ttl_s, std::uint64_t limit,
                       std::uint64_t disk_capacity_bytes, int disk_policy, double disk_ttl_s, bool write_through,
                       std::uint32_t queue_blocks, std::uint64_t device_capacity_bytes, int device,
                       bool device_promote, bool device_write_through) {
             if (policy < 0 || policy > 2) raise(Code::kInvalidArgument, "policy must be 0 (lru), 1 (lfu) or 2 (ttl)");
             if (disk_policy < 0 || disk_policy > 2)
               raise(Code::kInvalidArgument, "disk policy must be 0 (lru), 1 (lfu) or 2 (ttl)");
             StoreSpec spec;
             spec.block_size = block_size;
             spec.width = ids ? 2 : block_size;
             spec.block_bytes = block_bytes;
             spec.payloads = payloads;
             spec.host.capacity_bytes = capacity_bytes;
             spec.host.policy = static_cast<Policy>(policy);
             spec.host.ttl_s = ttl_s;
             if (disk_capacity_bytes > 0) {
               spec.disk.enabled = true;
               spec.disk.capacity_bytes = disk_capacity_bytes;
               spec.disk.policy = static_cast<Policy>(disk_policy);
               spec.disk.ttl_s = disk_ttl_s;
               spec.disk.write_through = write_through;
               spec.disk.queue_blocks = queue_blocks;
             }
             if (device_capacity_bytes > 0) {
               spec.device.enabled = true;
               spec.device.capacity_bytes = device_capacity_bytes;
               spec.device.ordinal = device;
               spec.device.promote = device_promote;
               spec.device.write_through = device_write_through;
             }
             auto s = std::make_unique<PyStore>();
             {
               py::gil_scoped_release nogil;
               s->store = std::make_shared<Store>(spec);
             }
             s->ids = ids;
             s->limit = limit;
             return s;
           }),
           py::kw_only(), py::arg("block_size"), py::arg("ids"), py::arg("block_bytes"), py::arg("payloads"),
           py::arg("capacity_bytes"), py::arg("policy"), py::arg("ttl_s"), py::arg("limit"),
           py::arg("disk_capacity_bytes") = 0, py::arg("disk_policy") = 0, py::arg("disk_ttl_s") = 0.0,
           py::arg("write_through") = false, py::arg("queue_blocks") = 64, py::arg("device_capacity_bytes") = 0,
           py::arg("device") = 0, py::arg("device_promote") = true, py::arg("device_write_through") = false)
      // Every call into the store releases the GIL before it takes the store lock: a thread holding
      // the lock may be waiting for the GIL (a copy from a Python buffer never does, but a writer may).
      .def("add_namespace", [](PyStore& s, py::bytes key) {
             const Key k = key_from(key, "namespace key");
             py::gil_scoped_release nogil;
             return s.store->add_namespace(k);
           })
      .def("account", [](PyStore& s, std::uint32_t ns, const std::string& session) {
             py::gil_scoped_release nogil;
             return s.store->account(ns, session);
           })
      .def("namespace_key_of", [](PyStore& s, std::uint32_t ns) {
             Key k;
             {
               py::gil_scoped_release nogil;
               k = s.store->namespace_key_of(ns);
             }
             return key_bytes(k);
           })
      .def(
          "match",
          [](PyStore& s, std::uint32_t ns, py::handle tokens, std::optional<double> now, bool touch, bool pin) {
            Words w = s.words_of(tokens, "tokens");
            MatchResult r;
            {
              py::gil_scoped_release nogil;
              r = s.store->match(ns, w.data, s.blocks_of(w), time_arg(now), touch, pin);
            }
            py::object handle = py::none();
            if (pin && r.pin != kNoPin) handle = py::cast(PyPin{s.store, r.pin, r.blocks + r.disk_blocks, true});
            py::object probe = r.probe ? py::object(key_bytes(r.probe_key)) : py::object(py::none());
            py::object on_device = py::none();  // per host block, 1 if also on the device tier
            if (s.store->spec().device.enabled)
              on_device = py::bytes(reinterpret_cast<const char*>(r.on_device.data()), r.on_device.size());
            return py::make_tuple(r.blocks, r.disk_blocks, handle, probe, on_device);
          },
          py::arg("ns"), py::arg("tokens"), py::arg("now"), py::arg("touch"), py::arg("pin"))
      .def("unpin",
           [](PyStore& s, PyPin& p, std::optional<double> now) {
             active_pin(s, p);
             const double t = time_arg(now);
             // Claim the pin while the GIL is held, so two threads can never both release it.
             p.active = false;
             try {
               py::gil_scoped_release nogil;
               s.store->unpin(p.pin, t);
             } catch (...) {
               p.active = true;  // nothing was released (e.g. time went backwards)
               throw;
             }
           }, py::arg("pin"), py::arg("now") = py::none())
      .def(
          "insert",
          [](PyStore& s, std::uint32_t ns, std::uint32_t account, py::handle tokens, py::handle payload,
             std::size_t payload_first, std::optional<double> now) {
            Words w = s.words_of(tokens, "tokens");
            const std::size_t n = s.blocks_of(w);
            Memory data;
            MemArg v;
            if (!payload.is_none()) {
              if (!s.store->spec().payloads)
                raise(Code::kInvalidArgument, "payloads given to a metadata-only store");
              if (payload_first > n)
                raise(Code::kInvalidArgument, "start_block=" + std::to_string(payload_first) + " is beyond the " +
                                                  std::to_string(n) + " full blocks of tokens");
              v = mem_arg(payload, false, "payloads");
              const std::size_t want = (n - payload_first) * s.store->spec().block_bytes;
              if (v.bytes != want)
                raise(Code::kInvalidArgument, "payloads has " + std::to_string(v.bytes) + " bytes; expected " +
                                                  std::to_string(want) + " (" + std::to_string(n - payload_first) +
                                                  " blocks x block_bytes=" +
                                                  std::to_string(s.store->spec().block_bytes) + ")");
              data = v.mem;
            } else if (s.store->spec().payloads) {
              raise(Code::kInvalidArgument, "payloads are required: this store keeps KV payloads "
                                            "(use metadata_only=True for a store without them)");
            }
            InsertResult r;
            {
              py::gil_scoped_release nogil;
              r = s.store->insert(ns, account, w.data, n, data, payload_first, time_arg(now));
            }
            return py::make_tuple(r.matched, r.inserted, n);
          },
          py::arg("ns"), py::arg("account"), py::arg("tokens"), py::arg("payload"), py::arg("payload_first"),
          py::arg("now"))
      .def(
          "load",
          [](PyStore& s, std::uint32_t ns, py::handle tokens, py::handle out, std::optional<double> now) {
            Words w = s.words_of(tokens, "tokens");
            const std::size_t n = s.blocks_of(w);
            MemArg v = mem_arg(out, true, "out");
            const std::size_t bb = s.store->spec().block_bytes;
            if (v.bytes < n * bb)
              raise(Code::kInvalidArgument, "out has " + std::to_string(v.bytes) + " bytes; it must hold " +
                                                std::to_string(n) + " blocks x block_bytes=" + std::to_string(bb));
            py::gil_scoped_release nogil;
            return s.store->load(ns, w.data, n, v.mem, time_arg(now));
          },
          py::arg("ns"), py::arg("tokens"), py::arg("out"), py::arg("now"))
      .def(
          "load_pinned",
          [](PyStore& s, PyPin& p, py::handle out) {
            active_pin(s, p);
            MemArg v = mem_arg(out, true, "out");
            const std::size_t bb = s.store->spec().block_bytes;
            if (v.bytes < static_cast<std::size_t>(p.blocks) * bb)
              raise(Code::kInvalidArgument, "out has " + std::to_string(v.bytes) + " bytes; it must hold " +
                                                std::to_string(p.blocks) + " blocks x block_bytes=" + std::to_string(bb));
            std::vector<DiskRead> reads;
            std::uint32_t planned;
            {
              py::gil_scoped_release nogil;
              planned = s.store->load_pinned(p.pin, v.mem, p.blocks, &reads);
            }
            py::list r;
            for (const DiskRead& d : reads) r.append(py::make_tuple(d.block, key_bytes(d.key), d.checksum));
            return py::make_tuple(planned, r);
          },
          py::arg("pin"), py::arg("out"))
      .def(
          "disk_finish_load",
          [](PyStore& s, PyPin& p, py::handle out, std::uint32_t good, const py::list& corrupt, const py::list& missing,
             bool promote, std::optional<double> now, py::handle staged, std::vector<std::uint32_t> staged_blocks) {
            active_pin(s, p);
            MemArg v = mem_arg(out, true, "out");
            const std::size_t bb = s.store->spec().block_bytes;
            if (good > p.blocks || v.bytes < static_cast<std::size_t>(good) * bb)
              raise(Code::kInvalidArgument, "good blocks out of range");
            MemArg st;
            if (!staged.is_none()) {
              st = mem_arg(staged, false, "staged");
              if (st.mem.device >= 0 || st.bytes < staged_blocks.size() * bb)
                raise(Code::kInvalidArgument, "staged must be host memory holding every staged block");
              for (std::uint32_t b : staged_blocks)
                if (b >= p.blocks) raise(Code::kInvalidArgument, "staged block out of range");
            }
            const std::vector<Key> bad = keys_from_list(corrupt, "corrupt"), gone = keys_from_list(missing, "missing");
            const double t = time_arg(now);
            py::gil_scoped_release nogil;
            return s.store->disk_finish_load(p.pin, v.mem, good, bad, gone, promote, t, st.mem.data, staged_blocks);
          },
          py::arg("pin"), py::arg("out"), py::arg("good"), py::arg("corrupt"), py::arg("missing"), py::arg("promote"),
          py::arg("now") = py::none(), py::arg("staged") = py::none(),
          py::arg("staged_blocks") = std::vector<std::uint32_t>{})
      .def(
          "disk_take",
          [](PyStore& s, std::size_t max_blocks, double wall_now) {
            WriteBatch b;
            {
              py::gil_scoped_release nogil;
              b = s.store->disk_take(max_blocks, wall_now);
            }
            const std::size_t bb = s.store->spec().block_bytes;
            py::list writes, deletes;
            for (const WriteOut& w : b.writes)
              writes.append(py::make_tuple(
                  key_bytes(w.key), py::bytes(reinterpret_cast<const char*>(w.record.data()), w.record.size()),
                  py::memoryview::from_memory(static_cast<const void*>(w.payload), static_cast<py::ssize_t>(bb))));
            for (const Key& k : b.deletes) deletes.append(key_bytes(k));
            return py::make_tuple(b.closed, writes, deletes);
          },
          py::arg("max_blocks"), py::arg("wall_now"))
      .def("disk_wait", [](PyStore& s, double timeout_s) {
             py::gil_scoped_release nogil;
             return s.store->disk_wait(timeout_s);
           }, py::arg("timeout_s"))
      .def("disk_finish", [](PyStore& s, bool ok, const std::string& error) {
             py::gil_scoped_release nogil;
             s.store->disk_finish(ok, error);
           }, py::arg("ok"), py::arg("error") = "")
      .def("disk_make_room", [](PyStore& s, std::size_t blocks) {
             std::vector<Key> keys;
             {
               py::gil_scoped_release nogil;
               keys = s.store->disk_make_room(blocks, std::numeric_limits<double>::quiet_NaN());
             }
             py::list out;
             for (const Key& k : keys) out.append(key_bytes(k));
             return out;
           }, py::arg("blocks"))
      .def("disk_flush", [](PyStore& s, std::optional<double> timeout_s, bool host) {
             std::string errors;
             bool ok;
             {
               py::gil_scoped_release nogil;
               ok = s.store->disk_flush(timeout_s ? *timeout_s : -1.0, host, &errors);
             }
             return py::make_tuple(ok, errors);
           }, py::arg("timeout_s") = py::none(), py::arg("host") = false)
      .def(
          "disk_restore",
          [](PyStore& s, const py::list& records, double wall_now, std::optional<double> now,
             std::optional<std::uint64_t> generation) {
            std::vector<std::pair<Key, std::string>> recs;
            recs.reserve(records.size());
            for (py::handle item : records) {
              auto t = py::reinterpret_borrow<py::tuple>(item);
              recs.emplace_back(key_from(t[0].cast<py::bytes>(), "record key"), t[1].cast<std::string>());
            }
            std::vector<Key> bad;
            std::uint64_t foreign = 0, restored;
            const double t = time_arg(now);
            {
              py::gil_scoped_release nogil;
              restored = s.store->disk_restore(recs, wall_now, t, &bad, &foreign, generation);
            }
            py::list bad_keys;
            for (const Key& k : bad) bad_keys.append(key_bytes(k));
            return py::make_tuple(restored, bad_keys, foreign);
          },
          py::arg("records"), py::arg("wall_now"), py::arg("now") = py::none(), py::arg("generation") = py::none())
      .def("delete_generation", [](PyStore& s) {
             py::gil_scoped_release nogil;
             return s.store->delete_generation();
           })
      .def(
          "chain_keys_from",
          [](PyStore& s, std::uint32_t ns, py::handle tokens, std::size_t from, std::optional<py::bytes> parent) {
            Words w = s.words_of(tokens, "tokens");
            std::optional<Key> par;
            if (parent) par = key_from(*parent, "parent");
            std::vector<Key> keys;
            {
              py::gil_scoped_release nogil;
              keys = s.store->chain_keys_from(ns, w.data, s.blocks_of(w), from, par ? &*par : nullptr);
            }
            return keys_array(keys);
          },
          py::arg("ns"), py::arg("tokens"), py::arg("from_block"), py::arg("parent") = py::none())
      .def("disk_persist", [](PyStore& s, std::size_t max_blocks) {
             py::gil_scoped_release nogil;
             return s.store->disk_persist(max_blocks, std::numeric_limits<double>::quiet_NaN());
           }, py::arg("max_blocks"))
      .def("disk_take_removed", [](PyStore& s) {
             std::vector<Key> keys;
             std::uint64_t dropped = 0;
             {
               py::gil_scoped_release nogil;
               keys = s.store->disk_take_removed(&dropped);
             }
             py::list out;
             for (const Key& k : keys) out.append(key_bytes(k));
             return py::make_tuple(out, dropped);
           })
      .def("disk_stats", [](PyStore& s) {
        DiskStats st;
        {
          py::gil_scoped_release nogil;
          st = s.store->disk_stats();
        }
        return disk_stats_dict(st);
      })
      .def("keys_pinned",
           [](PyStore& s, PyPin& p) {
             active_pin(s, p);
             std::vector<Key> keys;
             {
               py::gil_scoped_release nogil;
               keys = s.store->keys_pinned(p.pin);
             }
             keys.resize(std::min<std::size_t>(keys.size(), p.blocks));
             return keys_array(keys);
           })
      .def("evict", [](PyStore& s, std::uint64_t bytes, std::optional<double> now) {
             py::gil_scoped_release nogil;
             return s.store->evict(bytes, time_arg(now));
           }, py::arg("bytes"), py::arg("now"))
      .def("evict_device", [](PyStore& s, std::uint64_t bytes, std::optional<double> now) {
             py::gil_scoped_release nogil;
             return s.store->evict_device(bytes, time_arg(now));
           }, py::arg("bytes"), py::arg("now"))
      .def("device_stats", [](PyStore& s) {
        DeviceStats st;
        {
          py::gil_scoped_release nogil;
          st = s.store->device_stats();
        }
        py::dict d;
        d["hits"] = st.hits;
        d["inserted"] = st.inserted;
        d["promoted"] = st.promoted;
        d["evicted"] = st.evicted;
        d["written_back"] = st.written_back;
        d["bytes_written"] = st.bytes_written;
        d["bytes_read"] = st.bytes_read;
        d["blocks"] = st.blocks;
        d["dirty_blocks"] = st.dirty_blocks;
        d["resident_bytes"] = st.resident_bytes;
        d["capacity_bytes"] = st.capacity_bytes;
        return d;
      })
      .def("expire", [](PyStore& s, std::optional<double> now) {
             py::gil_scoped_release nogil;
             return s.store->expire(time_arg(now));
           }, py::arg("now"))
      .def("clear", [](PyStore& s, std::optional<double> now) {
             py::gil_scoped_release nogil;
             return s.store->clear(time_arg(now));
           }, py::arg("now"))
      .def(
          "replay",
          [](PyStore& s, py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast> offsets, py::handle blocks,
             py::array_t<double, py::array::c_style | py::array::forcecast> times,
             std::optional<py::array_t<std::uint32_t, py::array::c_style | py::array::forcecast>> ns,
             std::optional<py::array_t<std::uint32_t, py::array::c_style | py::array::forcecast>> accounts) {
            if (offsets.ndim() != 1 || offsets.shape(0) < 1)
              raise(Code::kInvalidArgument, "offsets must be 1-D with n_requests + 1 entries");
            const auto n_req = static_cast<std::size_t>(offsets.shape(0) - 1);
            Words w = s.words_of(blocks, "blocks");
            const std::uint32_t width = s.store->spec().width;
            const std::uint64_t* off = offsets.data();
            if (off[0] != 0) raise(Code::kInvalidArgument, "offsets[0] must be 0");
            for (std::size_t i = 0; i < n_req; ++i)
              if (off[i + 1] < off[i]) raise(Code::kInvalidArgument, "offsets must be non-decreasing (at " + std::to_string(i + 1) + ")");
            if (off[n_req] * width != w.count)
              raise(Code::kInvalidArgument, "offsets[-1] = " + std::to_string(off[n_req]) + " blocks does not match " +
                                                std::to_string(w.count / width) + " blocks given");
            if (static_cast<std::size_t>(times.size()) != n_req)
              raise(Code::kInvalidArgument, "timestamps must have one entry per request (" + std::to_string(n_req) + ")");
            const double* t = times.data();
            for (std::size_t i = 0; i < n_req; ++i) {
              if (!std::isfinite(t[i])) raise(Code::kInvalidArgument, "timestamps[" + std::to_string(i) + "] is not finite");
              if (i > 0 && t[i] < t[i - 1])
                raise(Code::kInvalidArgument, "timestamps must be non-decreasing (timestamps[" + std::to_string(i) + "] < timestamps[" + std::to_string(i - 1) + "])");
            }
            ReplayTrace tr;
            tr.offsets = off;
            tr.words = w.data;
            tr.times = t;
            tr.n_requests = n_req;
            if (ns) {
              if (static_cast<std::size_t>(ns->size()) != n_req) raise(Code::kInvalidArgument, "namespaces must have one entry per request");
              tr.ns = ns->data();
            }
            if (accounts) {
              if (static_cast<std::size_t>(accounts->size()) != n_req) raise(Code::kInvalidArgument, "accounts must have one entry per request");
              tr.accounts = accounts->data();
            }
            py::array_t<std::int32_t> hits(static_cast<py::ssize_t>(n_req));
            std::int32_t* out = hits.mutable_data();
            {
              py::gil_scoped_release nogil;
              s.store->replay(tr, out);
            }
            return hits;
          },
          py::arg("offsets"), py::arg("blocks"), py::arg("times"), py::arg("ns") = py::none(),
          py::arg("accounts") = py::none())
      .def("stats", [](PyStore& s) {
        TierStats st;
        {
          py::gil_scoped_release nogil;
          if (s.store->closed()) raise(Code::kClosed, "the store is closed");
          st = s.store->stats();
        }
        return stats_dict(st);
      })
      .def("residency", [](PyStore& s, std::optional<double> now) {
             std::vector<AccountResidency> rows;
             {
               py::gil_scoped_release nogil;
               rows = s.store->residency(time_arg(now));
             }
             py::list out;
             for (const auto& r : rows) out.append(py::make_tuple(r.ns, r.session, r.tier, r.bytes, r.byte_seconds));
             return out;
           }, py::arg("now"))
      .def("clock", [](PyStore& s) {
             py::gil_scoped_release nogil;
             return s.store->clock_now();
           })
      .def("close", [](PyStore& s) {
        py::gil_scoped_release nogil;
        s.store->close();
      })
      .def_property_readonly("closed", [](PyStore& s) {
             py::gil_scoped_release nogil;
             return s.store->closed();
           })
      .def("check_invariants", [](PyStore& s) {
        py::gil_scoped_release nogil;
        s.store->check_invariants();
      });
}
