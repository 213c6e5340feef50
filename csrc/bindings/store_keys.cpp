// kvtier._core: Store's lookups by key (store/keys_lookup.h) for stores whose content kind is "keys".
// One call per batch of keys; each releases the GIL before the store lock. The facade
// (kvtier.store_keys) checks the arguments' kinds and reads the folder between load_begin and finish.
#include "block_runs.h"
#include "store/keys_lookup.h"
#include "store_types.h"

namespace kvtier::bindings {
namespace {

// A batch of keys: a C-contiguous uint8 buffer of n x 32 bytes.
struct KeyArg {
  const Key* keys = nullptr;
  std::size_t n = 0;
  ByteView view;
};

KeyArg key_arg(const PyStore& s, py::handle keys) {
  if (s.store->spec().width != keys::kKeyWords)
    raise(Code::kInvalidArgument, "lookups by key need a store whose content is 'keys'");
  KeyArg a;
  a.view = byte_view(keys, false, "keys");
  if (a.view.bytes % sizeof(Key))
    raise(Code::kInvalidArgument, "keys must be n x 32 bytes, got " + std::to_string(a.view.bytes) + " bytes");
  a.keys = reinterpret_cast<const Key*>(a.view.data);
  a.n = a.view.bytes / sizeof(Key);
  return a;
}

// A host buffer of n blocks (block i at i * block_bytes).
ByteView blocks_arg(const PyStore& s, py::handle obj, std::size_t n, bool writable, const char* arg) {
  ByteView v = byte_view(obj, writable, arg);
  const std::size_t bb = s.store->spec().block_bytes;
  if (v.bytes != n * bb)
    raise(Code::kInvalidArgument, std::string(arg) + " has " + std::to_string(v.bytes) + " bytes; expected " +
                                      std::to_string(n) + " keys x block_bytes=" + std::to_string(bb));
  return v;
}

// Block runs for this store's calls on n keys (`what`: "payloads" or "out").
const BlockRuns& runs_arg(const PyStore& s, py::handle obj, std::size_t n, bool writable, const char* what) {
  const auto& r = obj.cast<const BlockRuns&>();
  if (r.block_bytes != s.store->spec().block_bytes)
    raise(Code::kInvalidArgument, std::string(what) + " runs were made for block_bytes=" +
                                      std::to_string(r.block_bytes) + "; this store's is " +
                                      std::to_string(s.store->spec().block_bytes));
  if (r.n != n)
    raise(Code::kInvalidArgument, std::string(what) + " runs describe " + std::to_string(r.n) +
                                      " blocks for " + std::to_string(n) + " keys");
  if (writable && !r.writable) raise(Code::kInvalidArgument, "out runs must be made writable (writable=True)");
  if (s.store->spec().device.enabled)
    raise(Code::kInvalidArgument, "block runs need a store without a device tier");
  return r;
}

py::array_t<std::uint8_t> flags(const std::vector<std::uint8_t>& v) {
  py::array_t<std::uint8_t> out(static_cast<py::ssize_t>(v.size()));
  if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size());
  return out;
}

py::object probe_of(bool probe, const Key& k) { return probe ? py::object(key_bytes(k)) : py::object(py::none()); }

// A load between load_begin and finish: holds its pins (released by finish, release or the destructor),
// its store and its output buffer.
struct KeyLoad {
  std::shared_ptr<Store> store;
  keys::Load load;
  py::object out;            // the caller's buffer or BlockRuns, kept alive
  Memory memory;             // where block i goes: memory.at(i)
  ~KeyLoad() {
    if (!load.pins.empty() && store) {
      py::gil_scoped_release nogil;
      try {
        keys::load_release(*store, load, kNoTime);
      } catch (...) {  // a closed store released every pin already
      }
    }
  }
};

}  // namespace

void bind_store_keys(py::module_& m) {
  py::class_<BlockRuns>(m, "BlockRuns")
      .def(py::init([](py::handle runs, const py::sequence& buffers, std::size_t block_bytes, bool writable) {
             return BlockRuns::make(runs, buffers, block_bytes, writable);
           }),
           py::arg("runs"), py::arg("buffers"), py::arg("block_bytes"), py::arg("writable"))
      .def("tail", [](const BlockRuns& r, std::size_t first) { return r.tail(first); }, py::arg("first"))
      .def("slice", [](const BlockRuns& r, std::size_t first, std::size_t count) { return r.slice(first, count); },
           py::arg("first"), py::arg("count"))
      .def(
          "gather",
          [](const BlockRuns& r, py::handle out) {
            // The blocks' bytes back to back into a writable host buffer of exactly n x block_bytes bytes.
            ByteView v = byte_view(out, true, "out");
            if (v.bytes != r.n * r.block_bytes)
              raise(Code::kInvalidArgument, "out has " + std::to_string(v.bytes) + " bytes; gather needs " +
                                                std::to_string(r.n) + " blocks x block_bytes=" +
                                                std::to_string(r.block_bytes));
            py::gil_scoped_release nogil;
            r.gather(v.data);
          },
          py::arg("out"))
      .def("__len__", [](const BlockRuns& r) { return r.n; })
      .def_property_readonly("parts", [](const BlockRuns& r) { return r.parts; })
      .def_property_readonly("block_bytes", [](const BlockRuns& r) { return r.block_bytes; })
      .def_property_readonly("writable", [](const BlockRuns& r) { return r.writable; });

  py::class_<KeyLoad>(m, "KeyLoad")
      .def_property_readonly("planned", [](const KeyLoad& l) { return l.load.planned; })
      .def_property_readonly("reads", [](const KeyLoad& l) {
        py::list r;
        for (const DiskRead& d : l.load.reads) r.append(py::make_tuple(d.block, key_bytes(d.key), d.checksum));
        return r;
      })
      .def_property_readonly("probe", [](const KeyLoad& l) { return probe_of(l.load.probe, l.load.probe_key); });

  auto cls = py::reinterpret_borrow<py::class_<PyStore>>(m.attr("Store"));
  cls.def(
         "keys_leading",
         [](PyStore& s, std::uint64_t ns, py::handle keys, std::size_t from, py::handle now, bool touch) {
           KeyArg a = key_arg(s, keys);
           const double t = time_arg(now);
           keys::Leading r;
           {
             py::gil_scoped_release nogil;
             r = keys::leading(*s.store, ns, a.keys, a.n, std::min(from, a.n), t, touch);
           }
           return py::make_tuple(r.found, probe_of(r.probe, r.probe_key));
         },
         py::arg("ns"), py::arg("keys"), py::arg("start"), py::arg("now"), py::arg("touch"))
      .def(
          "keys_present",
          [](PyStore& s, std::uint64_t ns, py::handle keys, py::handle now) {
            KeyArg a = key_arg(s, keys);
            const double t = time_arg(now);
            std::vector<std::uint8_t> r;
            {
              py::gil_scoped_release nogil;
              r = keys::present(*s.store, ns, a.keys, a.n, t);
            }
            return flags(r);
          },
          py::arg("ns"), py::arg("keys"), py::arg("now"))
      .def(
          "keys_block_keys",
          [](PyStore& s, std::uint64_t ns, py::handle keys) {
            KeyArg a = key_arg(s, keys);
            std::vector<Key> r;
            {
              py::gil_scoped_release nogil;
              r = keys::block_keys(*s.store, ns, a.keys, a.n);
            }
            return keys_array(r);
          },
          py::arg("ns"), py::arg("keys"))
      .def(
          "keys_insert",
          [](PyStore& s, std::uint64_t ns, const std::string& session, py::handle keys, py::handle payload,
             py::handle now) {
            KeyArg a = key_arg(s, keys);
            Memory data;
            ByteView v;
            if (s.store->spec().payloads) {
              if (payload.is_none())
                raise(Code::kInvalidArgument, "payloads are required: this store keeps KV payloads");
              if (py::isinstance<BlockRuns>(payload)) {
                data = runs_arg(s, payload, a.n, false, "payloads").memory();
              } else {
                v = blocks_arg(s, payload, a.n, false, "payloads");
                data.data = v.data;
              }
            } else if (!payload.is_none()) {
              raise(Code::kInvalidArgument, "payloads given to a metadata-only store");
            }
            const double t = time_arg(now);
            std::vector<std::uint8_t> r;
            {
              py::gil_scoped_release nogil;
              r = keys::insert(*s.store, ns, session, a.keys, a.n, data, t);
            }
            return flags(r);
          },
          py::arg("ns"), py::arg("session"), py::arg("keys"), py::arg("payloads"), py::arg("now"))
      .def(
          "keys_load_begin",
          [](PyStore& s, std::uint64_t ns, py::handle keys, py::handle out, py::handle now) {
            if (!s.store->spec().payloads) raise(Code::kInvalidArgument, "a metadata-only store holds no payloads");
            KeyArg a = key_arg(s, keys);
            auto l = std::make_unique<KeyLoad>();
            if (py::isinstance<BlockRuns>(out)) {
              l->memory = runs_arg(s, out, a.n, true, "out").memory();
            } else {
              ByteView v = blocks_arg(s, out, a.n, true, "out");
              l->memory.data = v.data;
            }
            const double t = time_arg(now);
            l->store = s.store;
            l->out = py::reinterpret_borrow<py::object>(out);
            {
              py::gil_scoped_release nogil;
              l->load = keys::load_begin(*s.store, ns, a.keys, a.n, l->memory, t);
            }
            return l;
          },
          py::arg("ns"), py::arg("keys"), py::arg("out"), py::arg("now"))
      .def(
          "keys_load_finish",
          [](PyStore& s, KeyLoad& l, std::size_t good, const py::list& corrupt, const py::list& missing, bool promote,
             py::handle now) {
            if (l.store != s.store) raise(Code::kStalePin, "this load belongs to another store");
            const std::vector<Key> bad = keys_from_list(corrupt, "corrupt"), gone = keys_from_list(missing, "missing");
            const double t = time_arg(now);
            py::gil_scoped_release nogil;
            return keys::load_finish(*s.store, l.load, l.memory, good, bad, gone, promote, t);
          },
          py::arg("load"), py::arg("good"), py::arg("corrupt"), py::arg("missing"), py::arg("promote"),
          py::arg("now"))
      .def(
          "keys_load_release",
          [](PyStore& s, KeyLoad& l, py::handle now) {
            if (l.store != s.store) raise(Code::kStalePin, "this load belongs to another store");
            const double t = time_arg(now);
            py::gil_scoped_release nogil;
            keys::load_release(*s.store, l.load, t);
          },
          py::arg("load"), py::arg("now"));
}

}  // namespace kvtier::bindings
