// kvtier._core: the copy engine, the CUDA driver probe, the device arena and page-locked host buffers.
// bind_copy() is called once from module.cpp. Arguments arrive already shaped by the Python facade
// (python/kvtier/kv_layout.py, copy_engine.py, device.py), which reads tensors' interfaces; this file checks what
// C++ needs and releases the GIL around every plan, copy, wait and allocation (module.cpp maps cuda::Unavailable
// and cuda::DriverError to kvtier.errors.CudaUnavailableError and CudaError).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cuda/copy_engine.h"
#include "cuda/copy_plan.h"
#include "cuda/driver.h"
#include "tiers/device.h"
#include "tiers/host.h"

namespace py = pybind11;
using namespace kvtier;

namespace {

[[noreturn]] void raise(Code code, const std::string& msg) { throw Error(code, msg); }

using U64Array = py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast>;

// A 1-D array of non-negative integers (block ids, slot numbers) as uint64. The facade passes numpy arrays.
std::vector<std::uint64_t> index_array(py::handle obj, const char* arg) {
  py::array arr = py::array::ensure(obj);
  if (!arr) raise(Code::kTypeError, std::string(arg) + " must be a 1-D array of integers");
  const char kind = arr.dtype().kind();
  if (kind != 'i' && kind != 'u')
    raise(Code::kTypeError, std::string(arg) + " must hold integers, got dtype " + std::string(py::str(arr.dtype())));
  if (arr.ndim() != 1) raise(Code::kTypeError, std::string(arg) + " must be 1-D, got " + std::to_string(arr.ndim()) + " dimensions");
  const auto n = static_cast<std::size_t>(arr.shape(0));
  std::vector<std::uint64_t> out(n);
  if (kind == 'i') {
    auto a = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(arr);
    const std::int64_t* p = a.data();
    for (std::size_t i = 0; i < n; ++i) {
      if (p[i] < 0)
        raise(Code::kInvalidArgument, std::string(arg) + "[" + std::to_string(i) + "] = " + std::to_string(p[i]) +
                                          " is negative");
      out[i] = static_cast<std::uint64_t>(p[i]);
    }
  } else {
    auto a = U64Array::ensure(arr);
    std::copy(a.data(), a.data() + n, out.begin());
  }
  return out;
}

py::array_t<std::uint64_t> runs_array(const std::vector<Run>& runs) {
  py::array_t<std::uint64_t> out({static_cast<py::ssize_t>(runs.size()), py::ssize_t{3}});
  auto m = out.mutable_unchecked<2>();
  for (std::size_t i = 0; i < runs.size(); ++i) {
    m(i, 0) = runs[i].dst;
    m(i, 1) = runs[i].src;
    m(i, 2) = runs[i].bytes;
  }
  return out;
}

// The kvtier side of a copy: a strided buffer (base + i * stride) or explicit slot addresses.
struct BufferArg {
  BlockBuffer buffer;
  std::vector<std::uint64_t> slots;
};

BufferArg buffer_arg(std::uint64_t base, std::uint64_t stride, int device, py::handle slots, std::size_t n) {
  BufferArg b;
  b.buffer.base = base;
  b.buffer.stride = stride;
  b.buffer.device = device;
  if (!slots.is_none()) {
    b.slots = index_array(slots, "slots");
    if (b.slots.size() != n)
      raise(Code::kInvalidArgument, "slots has " + std::to_string(b.slots.size()) + " addresses for " +
                                        std::to_string(n) + " block ids");
    b.buffer.slots = b.slots.data();
  }
  return b;
}

// A submitted copy. Keeps the Python objects whose memory it touches alive until it is done; dropping an
// unfinished handle waits for it (a copy must never write into freed memory).
struct PyCopyHandle {
  std::shared_ptr<Completion> completion;
  Path path = Path::kInline;
  std::uint64_t bytes = 0;
  std::uint64_t runs = 0;
  std::uint64_t unmerged = 0;
  py::object keep;

  PyCopyHandle() = default;
  PyCopyHandle(const PyCopyHandle&) = delete;
  PyCopyHandle& operator=(const PyCopyHandle&) = delete;
  ~PyCopyHandle() {
    if (!completion) return;
    bool done = false;
    try {
      done = completion->poll();
    } catch (const std::exception&) {
      done = true;  // failed: nothing is in flight any more
    }
    if (!done) {
      py::gil_scoped_release nogil;
      try {
        completion->wait(-1.0);
      } catch (const std::exception&) {
      }
    }
    completion.reset();
  }
};

struct PyCopyEngine {
  std::unique_ptr<CopyEngine> engine;
  CopyEngine& get() {
    if (!engine) raise(Code::kClosed, "the copy engine is closed");
    return *engine;
  }
};

struct PyDeviceArena {
  std::unique_ptr<DeviceArena> arena;
  DeviceArena& get() {
    if (!arena) raise(Code::kClosed, "the device arena is closed");
    return *arena;
  }
};

// Page-aligned host memory, page-locked where CUDA is present: a HostArena of one slot.
struct HostBuffer {
  std::unique_ptr<HostArena> arena;
  std::size_t bytes;
  std::uint8_t* data() const { return arena->slot_ptr(0); }
};

py::dict stats_dict(const CopyStats& s) {
  py::dict d;
  d["submits"] = s.submits;
  d["inline_submits"] = s.inline_submits;
  d["host_submits"] = s.host_submits;
  d["device_submits"] = s.device_submits;
  d["batch_calls"] = s.batch_calls;
  d["copy_calls"] = s.copy_calls;
  d["batch_fallbacks"] = s.batch_fallbacks;
  d["runs"] = s.runs;
  d["bytes"] = s.bytes;
  d["last_batch_error"] = s.last_batch_error;
  return d;
}

// The driver probe and pointer queries.
void bind_cuda_driver(py::module_& m) {
  m.def("cuda_probe", [] {
    cuda::Driver* d = nullptr;
    {
      py::gil_scoped_release nogil;
      d = &cuda::driver();
    }
    std::vector<std::string> names;
    const bool ok = d->available();
    if (ok)
      for (int i = 0; i < d->device_count(); ++i) names.push_back(d->device_name(i));
    return py::make_tuple(ok, d->reason(), d->library(), d->version(), names, ok && d->has_batch());
  });

  m.def(
      "pointer_info",
      [](std::uint64_t address) {
        cuda::Driver& d = cuda::driver();
        d.require(0);
        if (d.api().pointer_get_attribute == nullptr)
          throw cuda::Unavailable("this CUDA driver has no cuPointerGetAttribute; pass a kvtier.TensorView with device=");
        py::gil_scoped_release nogil;
        unsigned type = 0;
        int ordinal = -1;
        auto query = [&] {
          cuda::CUresult r = d.api().pointer_get_attribute(&type, cuda::CU_POINTER_ATTRIBUTE_MEMORY_TYPE, address);
          if (r == cuda::CUDA_SUCCESS && type != cuda::CU_MEMORYTYPE_HOST &&
              d.api().pointer_get_attribute(&ordinal, cuda::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, address) !=
                  cuda::CUDA_SUCCESS)
            ordinal = -1;
          return r;
        };
        cuda::CUresult r = query();
        if (r == cuda::CUDA_ERROR_INVALID_CONTEXT) {  // some drivers want a current context for the query
          cuda::ContextGuard guard(d, d.primary_context(0));
          r = query();
        }
        if (r != cuda::CUDA_SUCCESS) return std::make_pair(0, -1);  // not memory CUDA knows (plain host memory)
        return std::make_pair(static_cast<int>(type), ordinal);
      },
      py::arg("address"));

  m.def(
      "is_page_locked",
      [](std::uint64_t address) {
        cuda::Driver& d = cuda::driver();
        if (!d.available() || d.api().mem_host_get_flags == nullptr) return false;
        unsigned flags = 0;
        py::gil_scoped_release nogil;
        cuda::ContextGuard guard(d, d.primary_context(0));
        return d.api().mem_host_get_flags(&flags, reinterpret_cast<void*>(address)) == cuda::CUDA_SUCCESS;
      },
      py::arg("address"));
}

// KV layouts of an engine's cache and copy plans over them.
void bind_layout(py::module_& m) {
  py::class_<KVLayout>(m, "KVLayout")
      .def(py::init([](U64Array regions, std::uint64_t num_blocks, int device) {
             if (regions.ndim() != 2 || regions.shape(1) != 3)
               raise(Code::kInvalidArgument, "regions must be an array of shape (n, 3): base, stride, bytes");
             std::vector<Region> rs(static_cast<std::size_t>(regions.shape(0)));
             auto r = regions.unchecked<2>();
             for (std::size_t i = 0; i < rs.size(); ++i) rs[i] = Region{r(i, 0), r(i, 1), r(i, 2)};
             py::gil_scoped_release nogil;
             return std::make_unique<KVLayout>(std::move(rs), num_blocks, device);
           }),
           py::arg("regions"), py::arg("num_blocks"), py::arg("device"))
      .def_property_readonly("num_blocks", &KVLayout::num_blocks)
      .def_property_readonly("device", &KVLayout::device)
      .def_property_readonly("payload_bytes", &KVLayout::payload_bytes)
      .def_property_readonly("regions", [](const KVLayout& l) {
        py::array_t<std::uint64_t> out({static_cast<py::ssize_t>(l.regions().size()), py::ssize_t{3}});
        auto w = out.mutable_unchecked<2>();
        for (std::size_t i = 0; i < l.regions().size(); ++i) {
          w(i, 0) = l.regions()[i].base;
          w(i, 1) = l.regions()[i].stride;
          w(i, 2) = l.regions()[i].bytes;
        }
        return out;
      });

  m.def(
      "plan_copy",
      [](const KVLayout& layout, py::handle block_ids, bool scatter, std::uint64_t buffer_base,
         std::uint64_t buffer_stride, py::handle slots) {
        const std::vector<std::uint64_t> ids = index_array(block_ids, "block_ids");
        BufferArg b = buffer_arg(buffer_base, buffer_stride, -1, slots, ids.size());
        CopyPlan plan;
        {
          py::gil_scoped_release nogil;
          plan = plan_copy(layout, ids.data(), ids.size(), b.buffer, scatter ? Direction::kScatter : Direction::kGather);
        }
        return py::make_tuple(runs_array(plan.runs), plan.unmerged, plan.bytes);
      },
      py::arg("layout"), py::arg("block_ids"), py::arg("scatter"), py::arg("buffer_base"), py::arg("buffer_stride"),
      py::arg("slots"));
}

// The copy engine and its completion handles.
void bind_copy_engine(py::module_& m) {
  py::class_<PyCopyHandle>(m, "CopyHandle")
      .def("poll", [](PyCopyHandle& h) {
        py::gil_scoped_release nogil;
        return h.completion->poll();
      })
      .def(
          "wait",
          [](PyCopyHandle& h, std::optional<double> timeout) {
            if (timeout && !(*timeout >= 0.0 && std::isfinite(*timeout)))
              raise(Code::kInvalidArgument, "timeout must be a finite number of seconds >= 0, or None");
            py::gil_scoped_release nogil;
            return h.completion->wait(timeout ? *timeout : -1.0);
          },
          py::arg("timeout") = py::none())
      .def_property_readonly("path", [](const PyCopyHandle& h) { return std::string(path_name(h.path)); })
      .def_property_readonly("nbytes", [](const PyCopyHandle& h) { return h.bytes; })
      .def_property_readonly("runs", [](const PyCopyHandle& h) { return h.runs; })
      .def_property_readonly("unmerged_runs", [](const PyCopyHandle& h) { return h.unmerged; });

  py::class_<PyCopyEngine>(m, "CopyEngine")
      .def(py::init([](unsigned threads, std::uint64_t inline_bytes, int batch) {
             if (batch < 0 || batch > 2) raise(Code::kInvalidArgument, "batch must be 0 (auto), 1 (off) or 2 (require)");
             EngineOptions o;
             o.threads = threads;
             o.inline_bytes = inline_bytes;
             o.batch = static_cast<BatchMode>(batch);
             auto e = std::make_unique<PyCopyEngine>();
             py::gil_scoped_release nogil;
             e->engine = std::make_unique<CopyEngine>(o);
             return e;
           }),
           py::kw_only(), py::arg("threads"), py::arg("inline_bytes"), py::arg("batch"))
      .def(
          "submit",
          [](PyCopyEngine& self, const KVLayout& layout, py::handle block_ids, bool scatter, std::uint64_t buffer_base,
             std::uint64_t buffer_stride, int buffer_device, py::handle slots, py::object keep) {
            CopyEngine& engine = self.get();
            const std::vector<std::uint64_t> ids = index_array(block_ids, "block_ids");
            BufferArg b = buffer_arg(buffer_base, buffer_stride, buffer_device, slots, ids.size());
            if (layout.device() >= 0 && buffer_device >= 0 && layout.device() != buffer_device)
              raise(Code::kInvalidArgument, "the layout is on CUDA device " + std::to_string(layout.device()) +
                                                " but the kvtier buffer is on device " + std::to_string(buffer_device));
            const int device = std::max(layout.device(), buffer_device);
            auto h = std::make_unique<PyCopyHandle>();
            h->keep = std::move(keep);
            {
              py::gil_scoped_release nogil;
              CopyPlan plan = plan_copy(layout, ids.data(), ids.size(), b.buffer,
                                        scatter ? Direction::kScatter : Direction::kGather);
              h->bytes = plan.bytes;
              h->runs = plan.runs.size();
              h->unmerged = plan.unmerged;
              CopyEngine::Submitted s = engine.submit(std::move(plan), device);
              h->completion = std::move(s.completion);
              h->path = s.path;
            }
            return h;
          },
          py::arg("layout"), py::arg("block_ids"), py::arg("scatter"), py::arg("buffer_base"), py::arg("buffer_stride"),
          py::arg("buffer_device"), py::arg("slots"), py::arg("keep"))
      .def("stats", [](PyCopyEngine& self) { return stats_dict(self.get().stats()); })
      .def_property_readonly("threads", [](PyCopyEngine& self) { return self.get().options().threads; })
      .def_property_readonly("closed", [](const PyCopyEngine& self) { return !self.engine; })
      .def("close", [](PyCopyEngine& self) {
        std::unique_ptr<CopyEngine> e = std::move(self.engine);
        py::gil_scoped_release nogil;
        e.reset();  // finishes queued host copies, joins the workers
      });
}

// Block memory: the device arena and page-locked host buffers.
void bind_block_memory(py::module_& m) {
  py::class_<PyDeviceArena>(m, "DeviceArena")
      .def(py::init([](int device, std::size_t slots, std::size_t block_bytes) {
             auto a = std::make_unique<PyDeviceArena>();
             py::gil_scoped_release nogil;
             a->arena = std::make_unique<DeviceArena>(device, slots, block_bytes);
             return a;
           }),
           py::kw_only(), py::arg("device"), py::arg("slots"), py::arg("block_bytes"))
      .def(
          "take",
          [](PyDeviceArena& self, std::size_t count) {
            DeviceArena& a = self.get();
            if (count > a.free_slots())
              raise(Code::kCapacity, "the device arena has " + std::to_string(a.free_slots()) + " free slots; " +
                                         std::to_string(count) + " were asked for");
            py::array_t<std::uint32_t> out(static_cast<py::ssize_t>(count));
            std::uint32_t* o = out.mutable_data();
            for (std::size_t i = 0; i < count; ++i) o[i] = a.take();
            return out;
          },
          py::arg("count"))
      .def(
          "give_back",
          [](PyDeviceArena& self, py::handle slots) {
            DeviceArena& a = self.get();
            const std::vector<std::uint64_t> s = index_array(slots, "slots");
            std::vector<bool> seen(a.slots(), false);
            for (std::size_t i = 0; i < s.size(); ++i) {  // all checked before any is returned
              if (s[i] >= a.slots() || !a.in_use(static_cast<std::uint32_t>(s[i])) || seen[s[i]])
                raise(Code::kInvalidArgument, "slots[" + std::to_string(i) + "] = " + std::to_string(s[i]) +
                                                  " is not a slot taken from this arena");
              seen[s[i]] = true;
            }
            for (std::uint64_t x : s) a.give_back(static_cast<std::uint32_t>(x));
          },
          py::arg("slots"))
      .def(
          "addresses",
          [](PyDeviceArena& self, py::handle slots) {
            DeviceArena& a = self.get();
            const std::vector<std::uint64_t> s = index_array(slots, "slots");
            py::array_t<std::uint64_t> out(static_cast<py::ssize_t>(s.size()));
            std::uint64_t* o = out.mutable_data();
            for (std::size_t i = 0; i < s.size(); ++i) {
              if (!a.in_use(static_cast<std::uint32_t>(s[i])) || s[i] >= a.slots())
                raise(Code::kInvalidArgument, "slots[" + std::to_string(i) + "] = " + std::to_string(s[i]) +
                                                  " is not a slot taken from this arena");
              o[i] = a.slot_address(static_cast<std::uint32_t>(s[i]));
            }
            return out;
          },
          py::arg("slots"))
      .def_property_readonly("device", [](PyDeviceArena& self) { return self.get().device(); })
      .def_property_readonly("slots", [](PyDeviceArena& self) { return self.get().slots(); })
      .def_property_readonly("free_slots", [](PyDeviceArena& self) { return self.get().free_slots(); })
      .def_property_readonly("block_bytes", [](PyDeviceArena& self) { return self.get().block_bytes(); })
      .def_property_readonly("base", [](PyDeviceArena& self) { return self.get().base(); })
      .def_property_readonly("closed", [](const PyDeviceArena& self) { return !self.arena; })
      .def("close", [](PyDeviceArena& self) {
        std::unique_ptr<DeviceArena> a = std::move(self.arena);
        py::gil_scoped_release nogil;
        a.reset();
      });

  py::class_<HostBuffer>(m, "HostBuffer", py::buffer_protocol())
      .def(py::init([](std::size_t nbytes) {
             if (nbytes == 0) raise(Code::kInvalidArgument, "nbytes must be > 0");
             auto b = std::make_unique<HostBuffer>();
             b->bytes = nbytes;
             py::gil_scoped_release nogil;
             b->arena = std::make_unique<HostArena>(1, nbytes);
             const std::uint32_t slot = b->arena->take();
             KVTIER_ASSERT(slot == 0);
             return b;
           }),
           py::arg("nbytes"))
      .def_buffer([](HostBuffer& b) {
        return py::buffer_info(b.data(), 1, py::format_descriptor<std::uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(b.bytes)}, {py::ssize_t{1}});
      })
      .def_property_readonly("address", [](const HostBuffer& b) { return reinterpret_cast<std::uintptr_t>(b.data()); })
      .def_property_readonly("nbytes", [](const HostBuffer& b) { return b.bytes; });
}

}  // namespace

void bind_copy(py::module_& m) {
  bind_cuda_driver(m);
  bind_layout(m);
  bind_copy_engine(m);
  bind_block_memory(m);
}
