// kvtier._core: the Store's remote-tier calls — the demoter's protocol (take the blocks the host tier evicted,
// copy them, finish) and its counters. The server's I/O runs in Python (kvtier.tiers.remote); every call here
// releases the GIL before the store lock.
#include "store_types.h"

namespace kvtier::bindings {

void bind_store_remote(py::module_& m) {
  auto cls = py::reinterpret_borrow<py::class_<PyStore>>(m.attr("Store"));
  cls.def(
         "remote_take",
         [](PyStore& s, std::size_t max_blocks, double timeout_s) {
           if (max_blocks == 0) raise(Code::kInvalidArgument, "max_blocks must be >= 1");
           if (!(timeout_s >= 0.0)) raise(Code::kInvalidArgument, "timeout_s must be >= 0");
           Store::RemoteBatch b;
           {
             py::gil_scoped_release nogil;
             b = s.store->remote_take(max_blocks, timeout_s);
           }
           const auto bb = static_cast<py::ssize_t>(s.store->spec().block_bytes);
           py::list blocks;
           for (std::size_t i = 0; i < b.blocks.size(); ++i) {
             const Demoted& d = b.blocks[i];
             blocks.append(py::make_tuple(key_bytes(d.ns), key_bytes(d.key), d.session, d.position,
                                          py::memoryview::from_memory(static_cast<const void*>(b.payloads[i]), bb)));
           }
           return py::make_tuple(b.closed, blocks);
         },
         py::arg("max_blocks"), py::arg("timeout_s"),
         "Blocks the host tier evicted for the remote tier: (closed, [(ns_key, key, session, position, payload)]); "
         "the payloads stay valid until remote_finish().")
      .def(
          "remote_finish",
          [](PyStore& s) {
            py::gil_scoped_release nogil;
            s.store->remote_finish();
          })
      .def("remote_stats", [](PyStore& s) {
        RemoteDemotionStats st;
        {
          py::gil_scoped_release nogil;
          st = s.store->remote_stats();
        }
        py::dict d;
        d["demoted"] = st.demoted;
        d["rejected"] = st.rejected;
        d["pending"] = st.pending;
        return d;
      });
}

}  // namespace kvtier::bindings
