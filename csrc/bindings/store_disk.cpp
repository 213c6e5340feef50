// kvtier._core: the Store's disk-tier calls — the writer's protocol (take, wait, finish, make room, flush,
// persist), restoring and importing index records, the end of a load that read the folder. The folder's
// I/O runs in Python (kvtier.tiers.disk); every call here releases the GIL before the store lock.
#include "store_types.h"

namespace kvtier::bindings {
namespace {

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

}  // namespace

void bind_store_disk(py::module_& m) {
  auto cls = py::reinterpret_borrow<py::class_<PyStore>>(m.attr("Store"));
  cls      .def(
          "disk_finish_load",
          [](PyStore& s, PyPin& p, py::handle out, std::uint32_t good, const py::list& corrupt, const py::list& missing,
             bool promote, py::handle now, py::handle staged, std::vector<std::uint32_t> staged_blocks) {
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
          [](PyStore& s, const py::list& records, double wall_now, py::handle now,
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
          [](PyStore& s, std::uint64_t ns, py::handle tokens, std::size_t from, std::optional<py::bytes> parent) {
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
      });
}

}  // namespace kvtier::bindings
