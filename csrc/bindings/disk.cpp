// kvtier._core: the disk tier's free functions — checksums, the verified copy of blocks read from
// the folder (GIL released), index-record decoding for `kvtier fsck`, and the structural check of an LMDB
// data file (tiers/lmdb_pages.h).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/checksum.h"
#include "core/common.h"
#include "tiers/disk_record.h"
#include "tiers/lmdb_pages.h"
#include "core/keys.h"
#include "block_runs.h"

namespace py = pybind11;
using namespace kvtier;

namespace {

struct Span {
  const std::uint8_t* data;
  std::size_t bytes;
};

// A readable, C-contiguous buffer (bytes, memoryview from LMDB, numpy array).
Span read_span(py::handle obj, std::vector<py::buffer_info>& keep, const char* arg) {
  if (!PyObject_CheckBuffer(obj.ptr())) throw Error(Code::kTypeError, std::string(arg) + " must be a bytes-like object");
  keep.push_back(py::reinterpret_borrow<py::buffer>(obj).request());
  const py::buffer_info& info = keep.back();
  py::ssize_t expect = info.itemsize;
  for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
    if (info.shape[d] > 1 && info.strides[d] != expect)
      throw Error(Code::kTypeError, std::string(arg) + " must be C-contiguous");
    expect *= info.shape[d];
  }
  return {static_cast<const std::uint8_t*>(info.ptr), static_cast<std::size_t>(info.size * info.itemsize)};
}

// One payload read from the folder for block `block` of the destination, with the checksum its record holds.
struct VerifiedRead {
  std::size_t block;
  Span src;
  std::uint32_t checksum;
};

// copy_verified's `reads`: (block, payload buffer, checksum) tuples, each block below `n_blocks`.
std::vector<VerifiedRead> parse_reads(const py::list& reads, std::size_t n_blocks, std::vector<py::buffer_info>& keep) {
  keep.reserve(reads.size());
  std::vector<VerifiedRead> jobs;
  for (py::handle item : reads) {
    auto t = py::reinterpret_borrow<py::tuple>(item);
    const auto block = t[0].cast<std::size_t>();
    if (block >= n_blocks) throw Error(Code::kInvalidArgument, "block " + std::to_string(block) + " does not fit in out");
    jobs.push_back({block, read_span(t[1], keep, "payload"), t[2].cast<std::uint32_t>()});
  }
  return jobs;
}

// Runs `copy` (true: the payload checked out) for each read without the GIL; one bool per read.
template <typename Copy>
py::list copy_reads(const std::vector<VerifiedRead>& jobs, std::size_t block_bytes, Copy copy) {
  std::vector<char> ok(jobs.size(), 0);
  {
    py::gil_scoped_release nogil;
    for (std::size_t i = 0; i < jobs.size(); ++i) ok[i] = jobs[i].src.bytes == block_bytes && copy(jobs[i]);
  }
  py::list result;
  for (char c : ok) result.append(py::bool_(c != 0));
  return result;
}

py::list copy_verified(py::handle out, std::size_t block_bytes, const py::list& reads) {
  std::vector<py::buffer_info> keep;
  if (py::isinstance<kvtier::bindings::BlockRuns>(out)) {
    // Into BlockRuns: each payload is verified in place (the folder's mapped page), then copied into its
    // block's runs only if its checksum holds.
    const auto& runs = out.cast<const kvtier::bindings::BlockRuns&>();
    if (runs.block_bytes != block_bytes || !runs.writable)
      throw Error(Code::kInvalidArgument, "out runs must be writable and made for block_bytes=" + std::to_string(block_bytes));
    const std::size_t part = runs.part_bytes();
    return copy_reads(parse_reads(reads, runs.n, keep), block_bytes, [&](const VerifiedRead& j) {
      if (block_checksum(j.src.data, block_bytes) != j.checksum) return false;
      const std::uint64_t* to = runs.block(j.block);
      for (std::uint32_t r = 0; r < runs.parts; ++r)
        std::memcpy(reinterpret_cast<std::uint8_t*>(to[r]), j.src.data + r * part, part);
      return true;
    });
  }
  if (!PyObject_CheckBuffer(out.ptr())) throw Error(Code::kTypeError, "out must be a writable buffer");
  py::buffer_info dst = py::reinterpret_borrow<py::buffer>(out).request(true);
  const std::size_t out_bytes = static_cast<std::size_t>(dst.size * dst.itemsize);
  auto* base = static_cast<std::uint8_t*>(dst.ptr);
  return copy_reads(parse_reads(reads, block_bytes ? out_bytes / block_bytes : 0, keep), block_bytes,
                    [&](const VerifiedRead& j) {
                      return copy_with_checksum(base + j.block * block_bytes, j.src.data, block_bytes) == j.checksum;
                    });
}

}  // namespace

void bind_disk_functions(py::module_& m) {
  m.def(
      "block_checksum",
      [](py::handle data, bool portable) {
        std::vector<py::buffer_info> keep;
        const Span s = read_span(data, keep, "data");
        py::gil_scoped_release nogil;
        return portable ? block_checksum_portable(s.data, s.bytes) : block_checksum(s.data, s.bytes);
      },
      py::arg("data"), py::kw_only(), py::arg("portable") = false);

  // Copies block payloads read from the folder into `out` (block i at i * block_bytes), checking each
  // against its checksum on the way. `reads` is a list of (block, payload buffer, checksum).
  // Returns one bool per read: False for a payload of the wrong length or checksum (nothing of it is
  // to be used). Runs without the GIL.
  m.def(
      "copy_verified", &copy_verified,
      py::arg("out"), py::arg("block_bytes"), py::arg("reads"));

  // An index record as a dict (fsck), or None if malformed. `key_ok` says whether the record's own key
  // is the chained key of its namespace, parent and words.
  m.def(
      "decode_record",
      [](py::bytes key, py::bytes record) -> py::object {
        const std::string k = key, r = record;
        DiskRecord rec;
        if (k.size() != 32 || !decode_record(reinterpret_cast<const std::uint8_t*>(r.data()), r.size(), &rec))
          return py::none();
        Key want, got;
        std::memcpy(got.data(), k.data(), 32);
        chain_keys(rec.ns, is_zero_key(rec.parent) ? nullptr : &rec.parent, rec.words.data(), 1, rec.width, nullptr, 0,
                   &want);
        py::dict d;
        d["width"] = rec.width;
        d["checksum"] = rec.checksum;
        d["length"] = rec.length;
        d["wall_time"] = rec.wall_time;
        d["hits"] = rec.hits;
        d["namespace"] = py::bytes(reinterpret_cast<const char*>(rec.ns.data()), 32);
        d["parent"] = py::bytes(reinterpret_cast<const char*>(rec.parent.data()), 32);
        d["first_block"] = is_zero_key(rec.parent);
        d["session"] = rec.session;
        d["key_ok"] = want == got;
        return d;
      },
      py::arg("key"), py::arg("record"));

  // The structural walk of an LMDB data file (tiers/lmdb_pages.h), without the GIL. Returns (pages checked,
  // damage found, the first damage described, records): records are (database index into `names`, key, value
  // offset in the file, value length), listed only with `collect`.
  m.def(
      "lmdb_walk",
      [](py::handle file, std::size_t psize, std::uint64_t last_pg, std::uint64_t free_root, std::uint64_t main_root,
         const std::vector<std::string>& names, bool collect) {
        std::vector<py::buffer_info> keep;
        const Span s = read_span(file, keep, "file");
        lmdb_pages::Walk w;
        {
          py::gil_scoped_release nogil;
          w = lmdb_pages::walk(s.data, s.bytes, psize, last_pg, free_root, main_root, names, collect);
        }
        py::list records;
        for (const auto& r : w.records)
          records.append(py::make_tuple(r.db, py::bytes(r.key), r.offset, r.length));
        return py::make_tuple(w.pages, w.damaged, w.first, records);
      },
      py::arg("file"), py::arg("psize"), py::arg("last_pg"), py::arg("free_root"), py::arg("main_root"),
      py::arg("names"), py::kw_only(), py::arg("collect") = false);
}
