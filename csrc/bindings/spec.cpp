// kvtier._core: the configuration structs (spec.h) as Python classes. kvtier.config builds one StoreSpec
// from its dataclasses and validates it here, so the rules and the defaults live only in spec.h/spec.cpp.
#include <pybind11/native_enum.h>

#include "core/spec.h"
#include "store_types.h"

namespace kvtier::bindings {

void bind_spec(py::module_& m) {
  py::native_enum<Policy>(m, "Policy", "enum.Enum", "A tier's eviction policy.")
      .value("LRU", Policy::kLRU)
      .value("LFU", Policy::kLFU)
      .value("TTL", Policy::kTTL)
      .finalize();

  py::class_<TierSpec>(m, "TierSpec")
      .def(py::init<>())
      .def_readwrite("capacity_bytes", &TierSpec::capacity_bytes)
      .def_readwrite("policy", &TierSpec::policy)
      .def_readwrite("ttl_s", &TierSpec::ttl_s);

  py::class_<DiskSpec, TierSpec>(m, "DiskSpec")
      .def(py::init<>())
      .def_readwrite("enabled", &DiskSpec::enabled)
      .def_readwrite("write_through", &DiskSpec::write_through)
      .def_readwrite("queue_blocks", &DiskSpec::queue_blocks);

  py::class_<DeviceSpec>(m, "DeviceSpec")
      .def(py::init<>())
      .def_readwrite("enabled", &DeviceSpec::enabled)
      .def_readwrite("capacity_bytes", &DeviceSpec::capacity_bytes)
      .def_readwrite("ordinal", &DeviceSpec::ordinal)
      .def_readwrite("promote", &DeviceSpec::promote)
      .def_readwrite("write_through", &DeviceSpec::write_through);

  py::class_<RemoteSpec>(m, "RemoteSpec")
      .def(py::init<>())
      .def_readwrite("enabled", &RemoteSpec::enabled)
      .def_readwrite("queue_blocks", &RemoteSpec::queue_blocks);

  py::class_<StoreSpec>(m, "StoreSpec")
      .def(py::init<>())
      .def_readwrite("block_size", &StoreSpec::block_size)
      .def_readwrite("width", &StoreSpec::width)
      .def_readwrite("block_bytes", &StoreSpec::block_bytes)
      .def_readwrite("payloads", &StoreSpec::payloads)
      .def_readwrite("host", &StoreSpec::host)
      .def_readwrite("disk", &StoreSpec::disk)
      .def_readwrite("device", &StoreSpec::device)
      .def_readwrite("remote", &StoreSpec::remote);

  m.def(
      "validate_tier", [](const TierSpec& tier, const std::string& name) { validate(tier, name); }, py::arg("tier"),
      py::arg("name"));
  m.def("validate_spec", [](const StoreSpec& spec) { validate(spec); }, py::arg("spec"));
}

}  // namespace kvtier::bindings
