// kvtier._core.BlockRuns: blocks scattered in a caller's host buffers — per block, the addresses of its
// `parts` runs of block_bytes / parts bytes each (an engine's page whose K and V halves, or layers, lie
// apart in its pool). Checked once, when made: every run lies inside one of the buffers given, which the
// object keeps exported (alive and unmoved) for as long as it lives. The store copies between its tiers
// and the runs directly (tiers/tier.h, Memory::parts); the folder reader writes disk hits into them.
#pragma once

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "store_types.h"

namespace kvtier::bindings {

struct BlockRuns {
  std::vector<std::uint64_t> addrs;  // n x parts, row-major
  std::size_t n = 0;
  std::uint32_t parts = 0;
  std::size_t block_bytes = 0;
  bool writable = false;
  std::vector<std::shared_ptr<ByteView>> buffers;  // exported while this lives

  std::size_t part_bytes() const { return block_bytes / parts; }
  // Blocks first..n as store memory (the caller keeps this object alive while the store uses it).
  Memory memory(std::size_t first = 0) const {
    return Memory{nullptr, -1, addrs.data() + first * parts, parts};
  }
  // A block's runs, in order.
  const std::uint64_t* block(std::size_t b) const { return addrs.data() + b * parts; }

  // runs: an int64 / uint64 array of shape (n, parts); buffers: host buffers (buffer protocol) that hold
  // every run; block_bytes divisible by parts. Raises InvalidArgumentError / KvtierTypeError naming what.
  static std::unique_ptr<BlockRuns> make(py::handle runs, const py::sequence& buffers, std::size_t block_bytes,
                                         bool writable) {
    if (!py::isinstance<py::array>(runs))
      raise(Code::kTypeError, "runs must be a numpy int64 or uint64 array of shape (blocks, parts)");
    auto a = py::reinterpret_borrow<py::array>(runs);
    const char kind = a.dtype().kind();
    if ((kind != 'i' && kind != 'u') || a.itemsize() != 8)
      raise(Code::kTypeError, "runs must be int64 or uint64 addresses, got dtype " +
                                  std::string(py::str(a.dtype())));
    if (a.ndim() != 2)
      raise(Code::kInvalidArgument, "runs must have shape (blocks, parts), got " + std::to_string(a.ndim()) +
                                        " dimensions");
    auto out = std::make_unique<BlockRuns>();
    out->n = static_cast<std::size_t>(a.shape(0));
    const auto parts = static_cast<std::size_t>(a.shape(1));
    if (parts == 0 || block_bytes % parts != 0)
      raise(Code::kInvalidArgument, "runs has " + std::to_string(parts) + " parts per block; block_bytes=" +
                                        std::to_string(block_bytes) + " must be a positive multiple of it");
    out->parts = static_cast<std::uint32_t>(parts);
    out->block_bytes = block_bytes;
    out->writable = writable;
    // The buffers' ranges, sorted by start, to find each run's buffer by binary search.
    std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
    for (py::handle b : buffers) {
      auto v = std::make_shared<ByteView>(byte_view(b, writable, "buffers[i]"));
      const auto lo = reinterpret_cast<std::uint64_t>(v->data);
      ranges.emplace_back(lo, lo + v->bytes);
      out->buffers.push_back(std::move(v));
    }
    if (ranges.empty() && out->n > 0) raise(Code::kInvalidArgument, "runs need at least one buffer that holds them");
    std::sort(ranges.begin(), ranges.end());
    const std::uint64_t part = block_bytes / parts;
    out->addrs.resize(out->n * parts);
    const auto* row = static_cast<const std::uint8_t*>(a.data());
    const py::ssize_t s0 = a.strides(0), s1 = a.strides(1);
    for (std::size_t i = 0; i < out->n; ++i) {
      for (std::size_t r = 0; r < parts; ++r) {
        std::uint64_t x;
        std::memcpy(&x, row + static_cast<py::ssize_t>(i) * s0 + static_cast<py::ssize_t>(r) * s1, 8);
        // The buffers starting at or before x, nearest first (buffers may overlap: views of one pool).
        auto it = std::upper_bound(ranges.begin(), ranges.end(), std::make_pair(x, ~std::uint64_t{0}));
        bool inside = false;
        while (!inside && it != ranges.begin()) {
          --it;
          inside = x <= it->second && part <= it->second - x;
        }
        if (!inside)
          raise(Code::kInvalidArgument, "runs[" + std::to_string(i) + ", " + std::to_string(r) + "] = " +
                                            std::to_string(x) + ": its " + std::to_string(part) +
                                            " bytes are not inside one of the buffers given");
        out->addrs[i * parts + r] = x;
      }
    }
    return out;
  }

  // Blocks first..n, sharing the buffers.
  std::unique_ptr<BlockRuns> tail(std::size_t first) const { return slice(first, n); }

  // Blocks first..min(first + count, n), sharing the buffers.
  std::unique_ptr<BlockRuns> slice(std::size_t first, std::size_t count) const {
    auto t = std::make_unique<BlockRuns>();
    first = std::min(first, n);
    t->n = std::min(count, n - first);
    t->parts = parts;
    t->block_bytes = block_bytes;
    t->writable = writable;
    t->buffers = buffers;
    const auto at = addrs.begin() + static_cast<std::ptrdiff_t>(first * parts);
    t->addrs.assign(at, at + static_cast<std::ptrdiff_t>(t->n * parts));
    return t;
  }

  // Copies every block's runs, in order, to `to` (n x block_bytes bytes: block i at i * block_bytes).
  // Call without the GIL; the buffers stay exported while this lives.
  void gather(std::uint8_t* to) const {
    const std::size_t part = part_bytes();
    for (std::size_t i = 0; i < n; ++i)
      for (std::uint32_t r = 0; r < parts; ++r)
        std::memcpy(to + i * block_bytes + r * part, reinterpret_cast<const std::uint8_t*>(addrs[i * parts + r]), part);
  }
};

}  // namespace kvtier::bindings
