// kvtier._core: the Store — construction from a StoreSpec, namespaces and accounts, lookups, pins,
// payloads in and out, maintenance, reporting. Each call converts its arguments with the GIL held, then
// releases the GIL before the core takes the store lock.
#include "store_types.h"

namespace kvtier::bindings {
namespace {

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
  d["accounts"] = s.accounts;
  d["namespaces"] = s.namespaces;
  return d;
}

py::dict device_stats_dict(const DeviceStats& st) {
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
}

// Store.replay: a whole array-encoded trace in one call (kvtier.ReplayTrace checked its shapes).
// Per-request indices into a table of `table` entries (namespaces, sessions), checked.
using Indices = std::optional<py::array_t<std::uint32_t, py::array::c_style | py::array::forcecast>>;
const std::uint32_t* table_indices(const Indices& idx, std::size_t n_req, std::size_t table, const char* name,
                                   const char* table_name) {
  if (!idx) return nullptr;
  if (static_cast<std::size_t>(idx->size()) != n_req)
    raise(Code::kInvalidArgument, std::string(name) + " must have one entry per request");
  const std::uint32_t* p = idx->data();
  for (std::size_t i = 0; i < n_req; ++i)
    if (p[i] >= table)
      raise(Code::kInvalidArgument, std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(p[i]) +
                                        " is not an index into " + table_name + " (" + std::to_string(table) +
                                        " entries)");
  return p;
}

// Returns (hits per request, the namespace id of each of `ns_keys`).
py::tuple replay_trace(PyStore& s, py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast> offsets, py::handle blocks,
             py::array_t<double, py::array::c_style | py::array::forcecast> times, const py::list& ns_keys,
             const Indices& ns_index, const Indices& sessions, const std::vector<std::string>& session_table) {
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
            const std::vector<Key> keys = keys_from_list(ns_keys, "namespace key");
            if (keys.empty()) raise(Code::kInvalidArgument, "ns_keys must name at least one namespace");
            tr.ns_keys = &keys;
            tr.ns_index = table_indices(ns_index, n_req, keys.size(), "namespaces", "namespace_table");
            tr.sessions = table_indices(sessions, n_req, session_table.size(), "sessions", "session_table");
            tr.session_table = &session_table;
            py::array_t<std::int32_t> hits(static_cast<py::ssize_t>(n_req));
            std::int32_t* out = hits.mutable_data();
            std::vector<NsId> ids;
            {
              py::gil_scoped_release nogil;
              ids = s.store->replay(tr, out);
            }
            return py::make_tuple(hits, ids);
          }

// Construction, namespaces and accounts, lifetime.
void bind_store_class(py::module_& m) {
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
      .def(py::init([](const StoreSpec& spec, bool ids, std::uint64_t limit) {
             auto s = std::make_unique<PyStore>();
             {
               py::gil_scoped_release nogil;
               s->store = std::make_shared<Store>(spec);  // validates the spec (spec.h)
             }
             s->ids = ids;
             s->limit = limit;
             return s;
           }),
           py::arg("spec"), py::kw_only(), py::arg("ids"), py::arg("limit"))
      .def("add_namespace", [](PyStore& s, py::bytes key) {
             const Key k = key_from(key, "namespace key");
             py::gil_scoped_release nogil;
             return s.store->add_namespace(k);
           })
      .def("take_retired_namespaces", [](PyStore& s) {
             py::gil_scoped_release nogil;
             return s.store->take_retired_namespaces();
           })
      .def("namespaces", [](PyStore& s) {
             py::gil_scoped_release nogil;
             return s.store->namespaces();
           })
      .def("namespace_key_of", [](PyStore& s, std::uint32_t ns) {
             Key k;
             {
               py::gil_scoped_release nogil;
               k = s.store->namespace_key_of(ns);
             }
             return key_bytes(k);
           })
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

// Lookups, pins, payloads in and out.
void bind_store_io(py::module_& m) {
  auto cls = py::reinterpret_borrow<py::class_<PyStore>>(m.attr("Store"));
  cls
      .def(
          "match",
          [](PyStore& s, std::uint64_t ns, py::handle tokens, py::handle now, bool touch, bool pin) {
            Words w = s.words_of(tokens, "tokens");
            MatchResult r;
            const double t = time_arg(now);
            {
              py::gil_scoped_release nogil;
              r = s.store->match(ns, w.data, s.blocks_of(w), t, touch, pin);
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
           [](PyStore& s, PyPin& p, py::handle now) {
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
          [](PyStore& s, std::uint64_t ns, const std::string& session, py::handle tokens, py::handle payload,
             std::size_t payload_first, py::handle now) {
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
            const double t = time_arg(now);
            {
              py::gil_scoped_release nogil;
              r = s.store->insert(ns, session, w.data, n, data, payload_first, t);
            }
            return py::make_tuple(r.matched, r.inserted, n);
          },
          py::arg("ns"), py::arg("session"), py::arg("tokens"), py::arg("payload"), py::arg("payload_first"),
          py::arg("now"))
      .def(
          "load",
          [](PyStore& s, std::uint64_t ns, py::handle tokens, py::handle out, py::handle now) {
            Words w = s.words_of(tokens, "tokens");
            const std::size_t n = s.blocks_of(w);
            MemArg v = mem_arg(out, true, "out");
            const std::size_t bb = s.store->spec().block_bytes;
            if (v.bytes < n * bb)
              raise(Code::kInvalidArgument, "out has " + std::to_string(v.bytes) + " bytes; it must hold " +
                                                std::to_string(n) + " blocks x block_bytes=" + std::to_string(bb));
            const double t = time_arg(now);
            py::gil_scoped_release nogil;
            return s.store->load(ns, w.data, n, v.mem, t);
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
           });
}

// Maintenance and reporting.
void bind_store_reporting(py::module_& m) {
  auto cls = py::reinterpret_borrow<py::class_<PyStore>>(m.attr("Store"));
  cls
      .def("evict", [](PyStore& s, std::uint64_t bytes, py::handle now) {
             const double t = time_arg(now);
             py::gil_scoped_release nogil;
             return s.store->evict(bytes, t);
           }, py::arg("bytes"), py::arg("now"))
      .def("evict_device", [](PyStore& s, std::uint64_t bytes, py::handle now) {
             const double t = time_arg(now);
             py::gil_scoped_release nogil;
             return s.store->evict_device(bytes, t);
           }, py::arg("bytes"), py::arg("now"))
      .def("device_stats", [](PyStore& s) {
        DeviceStats st;
        {
          py::gil_scoped_release nogil;
          st = s.store->device_stats();
        }
        return device_stats_dict(st);
      })
      .def("expire", [](PyStore& s, py::handle now) {
             const double t = time_arg(now);
             py::gil_scoped_release nogil;
             return s.store->expire(t);
           }, py::arg("now"))
      .def("clear", [](PyStore& s, py::handle now) {
             const double t = time_arg(now);
             py::gil_scoped_release nogil;
             return s.store->clear(t);
           }, py::arg("now"))
      .def("replay", &replay_trace,
          py::arg("offsets"), py::arg("blocks"), py::arg("times"), py::arg("ns_keys"), py::arg("ns_index") = py::none(),
          py::arg("sessions") = py::none(), py::arg("session_table") = std::vector<std::string>{})
      .def("stats", [](PyStore& s) {
        TierStats st;
        {
          py::gil_scoped_release nogil;
          if (s.store->closed()) raise(Code::kClosed, "the store is closed");
          st = s.store->stats();
        }
        return stats_dict(st);
      })
      .def("residency", [](PyStore& s, py::handle now) {
             std::vector<AccountResidency> rows;
             const double t = time_arg(now);
             {
               py::gil_scoped_release nogil;
               rows = s.store->residency(t);
             }
             py::list out;
             // Ended sessions (retired accounts) come as session None; ended namespaces as namespace None.
             for (const auto& r : rows)
               out.append(py::make_tuple(r.ns == kNoNamespace ? py::object(py::none()) : py::object(py::int_(r.ns)), r.ended ? py::object(py::none()) : py::object(py::str(r.session)), r.tier,
                                         r.bytes, r.byte_seconds));
             return out;
           }, py::arg("now"));
}

}  // namespace

void bind_store(py::module_& m) {
  bind_store_class(m);
  bind_store_io(m);
  bind_store_reporting(m);
}

}  // namespace kvtier::bindings
