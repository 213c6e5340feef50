// kvtier._core: hashing and tokens — BLAKE3, namespace and block keys (docs/keys.md), TokenSequence.
#include "hash/blake3.h"
#include "core/keys.h"
#include "store_types.h"

namespace kvtier::bindings {

void bind_keys(py::module_& m) {
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

}

}  // namespace kvtier::bindings
