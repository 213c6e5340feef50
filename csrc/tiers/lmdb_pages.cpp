#include "tiers/lmdb_pages.h"

#include <cstring>

namespace kvtier::lmdb_pages {
namespace {

constexpr std::uint16_t kBranch = 0x01, kLeaf = 0x02, kOverflow = 0x04;
constexpr std::uint16_t kIgnored = 0x10 | 0x4000 | 0x8000;  // P_DIRTY, P_LOOSE, P_KEEP: never meaningful on disk
constexpr std::uint16_t kBigData = 0x01, kSubData = 0x02, kDupData = 0x04;
constexpr std::size_t kHeader = 16;    // PAGEHDRSZ
constexpr std::size_t kNode = 8;       // NODESIZE
constexpr std::size_t kDbRecord = 48;  // sizeof(MDB_db)
constexpr std::size_t kDbRoot = 40;    // MDB_db.md_root
constexpr int kMaxDepth = 32;          // LMDB's CURSOR_STACK
constexpr std::uint64_t kNone = ~std::uint64_t{0};
constexpr int kMain = -1, kFree = -2;

std::uint16_t u16(const std::uint8_t* p) {
  std::uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
std::uint32_t u32(const std::uint8_t* p) {
  std::uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
std::uint64_t u64(const std::uint8_t* p) {
  std::uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

class Walker {
 public:
  Walker(const std::uint8_t* file, std::size_t size, std::size_t psize, std::uint64_t last_pg,
         const std::vector<std::string>& names, bool collect)
      : file_(file), size_(size), psize_(psize), last_(last_pg), names_(names), collect_(collect),
        owner_(last_pg + 1, 0) {}

  // Every tree of the environment: the main one and the named ones it lists first, so that the free
  // database's page lists can be checked against every page in use.
  Walk run(std::uint64_t free_root, std::uint64_t main_root) {
    tree(main_root, kMain);
    for (const auto& [root, db] : named_) tree(root, db);
    tree(free_root, kFree);
    for (const auto& [offset, length] : free_lists_) free_list(offset, length);
    return std::move(out_);
  }

 private:
  void damage(const std::string& what, std::uint64_t pg) {
    if (out_.damaged++ == 0) out_.first = what + " (page " + std::to_string(pg) + ")";
  }

  // Marks pages [pg, pg + n) as used once; false (damage) if any is out of the file or used already.
  bool claim(std::uint64_t pg, std::uint64_t n, const char* what) {
    if (pg < 2 || n == 0 || pg > last_ || n > last_ - pg + 1 || (pg + n) > size_ / psize_) {
      damage(std::string(what) + " points outside the file", pg);
      return false;
    }
    for (std::uint64_t i = pg; i < pg + n; ++i) {
      if (owner_[i]) {
        damage(std::string(what) + " points at a page already in use", i);
        for (std::uint64_t j = pg; j < i; ++j) owner_[j] = 0;
        return false;
      }
      owner_[i] = 1;
    }
    return true;
  }

  void tree(std::uint64_t root, int db) {
    if (root == kNone) return;
    std::vector<std::pair<std::uint64_t, int>> stack{{root, 0}};
    while (!stack.empty()) {
      auto [pg, depth] = stack.back();
      stack.pop_back();
      if (depth >= kMaxDepth) {
        damage("a tree deeper than LMDB reads", pg);
        continue;
      }
      if (!claim(pg, 1, "a branch reference")) continue;
      page(pg, depth, db, stack);
    }
  }

  void page(std::uint64_t pg, int depth, int db, std::vector<std::pair<std::uint64_t, int>>& stack) {
    const std::uint8_t* p = file_ + pg * psize_;
    ++out_.pages;
    const std::uint16_t flags = u16(p + 10) & static_cast<std::uint16_t>(~kIgnored);
    const std::size_t lower = u16(p + 12), upper = u16(p + 14);
    if (u64(p) != pg || (flags != kBranch && flags != kLeaf) || lower < kHeader || lower > upper ||
        upper > psize_ || (lower - kHeader) % 2 != 0 || (flags == kBranch && lower == kHeader)) {
      damage("a page with a damaged header", pg);
      return;
    }
    const std::size_t n = (lower - kHeader) / 2;
    for (std::size_t i = 0; i < n; ++i) {  // the whole page is checked before anything in it is used
      const std::size_t off = u16(p + kHeader + 2 * i);
      if (off < upper || off + kNode > psize_ || off + kNode + u16(p + off + 6) > psize_) {
        damage("a node outside its page", pg);
        return;
      }
    }
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint8_t* node = p + u16(p + kHeader + 2 * i);
      const std::uint64_t lo = u16(node), hi = u16(node + 2), nflags = u16(node + 4);
      const std::size_t ksize = u16(node + 6);
      if (flags == kBranch) {
        stack.push_back({lo | (hi << 16) | (nflags << 32), depth + 1});
        continue;
      }
      const std::uint64_t dsize = lo | (hi << 16);
      const std::uint8_t* data = node + kNode + ksize;
      const std::size_t in_page = static_cast<std::size_t>(data - p);
      std::uint64_t offset = pg * psize_ + in_page;
      if (nflags & kBigData) {
        const std::uint64_t ov = in_page + 8 <= psize_ ? u64(data) : 0;
        const std::uint64_t pages = (kHeader - 1 + dsize) / psize_ + 1;  // OVPAGES
        if (in_page + 8 > psize_ || !claim(ov, pages, "an overflow value")) {
          if (in_page + 8 > psize_) damage("a node outside its page", pg);
          continue;
        }
        // LMDB frees an overflow run by the page number and count in its first page's header: damaged, a
        // delete would hand out pages other records still use. (A run rewritten in place with a shorter value
        // keeps its longer count.)
        const std::uint8_t* op = file_ + ov * psize_;
        const std::uint64_t run = u32(op + 12);
        if (u64(op) != ov || (u16(op + 10) & static_cast<std::uint16_t>(~kIgnored)) != kOverflow || run < pages ||
            (run > pages && !claim(ov + pages, run - pages, "an overflow run"))) {
          damage("an overflow value with a damaged header", ov);
          continue;
        }
        offset = ov * psize_ + kHeader;
      } else if (in_page + dsize > psize_) {
        damage("a value outside its page", pg);
        continue;
      }
      leaf(db, node + kNode, ksize, nflags, offset, dsize, pg);
    }
  }

  void leaf(int db, const std::uint8_t* key, std::size_t ksize, std::uint64_t nflags, std::uint64_t offset,
            std::uint64_t length, std::uint64_t pg) {
    if (db == kFree) {
      free_lists_.push_back({offset, length});
      return;
    }
    if (db == kMain) {  // a named database: its name and its MDB_db record
      const std::string name(reinterpret_cast<const char*>(key), ksize);
      int index = -1;
      for (std::size_t i = 0; i < names_.size(); ++i)
        if (names_[i] == name) index = static_cast<int>(i);
      if (index < 0 || !(nflags & kSubData) || (nflags & kBigData) || length != kDbRecord) {
        damage("a damaged database record in the main database", pg);
        return;
      }
      named_.push_back({u64(file_ + offset + kDbRoot), index});
      return;
    }
    if (nflags & (kSubData | kDupData)) {  // kvtier's databases hold plain values
      damage("a record with sub-database flags", pg);
      return;
    }
    if (collect_) out_.records.push_back({db, std::string(reinterpret_cast<const char*>(key), ksize), offset, length});
  }

  // A free-list record: a count, then as many page numbers in descending order (LMDB's IDLs), none of them
  // in use by a tree or named by another record: LMDB would hand such a page out twice.
  void free_list(std::uint64_t offset, std::uint64_t length) {
    const std::uint8_t* ids = file_ + offset;
    if (length < 8 || u64(ids) > length / 8 - 1) {
      damage("a damaged free-page list", offset / psize_);
      return;
    }
    std::uint64_t previous = kNone;
    for (std::uint64_t i = 1, count = u64(ids); i <= count; ++i) {
      const std::uint64_t pg = u64(ids + 8 * i);
      if (pg < 2 || pg > last_ || pg >= previous || owner_[pg]) {
        damage("a free-page list naming a page in use, twice, out of order or outside the file", offset / psize_);
        return;
      }
      owner_[pg] = 2;
      previous = pg;
    }
  }

  const std::uint8_t* file_;
  std::size_t size_, psize_;
  std::uint64_t last_;
  const std::vector<std::string>& names_;
  bool collect_;
  std::vector<std::uint8_t> owner_;
  std::vector<std::pair<std::uint64_t, int>> named_;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> free_lists_;
  Walk out_;
};

}  // namespace

Walk walk(const std::uint8_t* file, std::size_t size, std::size_t psize, std::uint64_t last_pg,
          std::uint64_t free_root, std::uint64_t main_root, const std::vector<std::string>& names, bool collect) {
  if (psize < 512 || size < 2 * psize || last_pg >= size / psize) {
    Walk w;
    w.damaged = 1;
    w.first = "the file does not hold the pages its meta page names";
    return w;
  }
  return Walker(file, size, psize, last_pg, names, collect).run(free_root, main_root);
}

}  // namespace kvtier::lmdb_pages
