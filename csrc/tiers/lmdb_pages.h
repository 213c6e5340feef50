// A structural check of an LMDB data file, page by page, before LMDB reads it.
//
// LMDB trusts the page numbers and offsets it finds in its pages: a damaged branch pointer makes it read
// past the end of the file (SIGBUS) or past its map (SIGSEGV), a damaged node offset makes it read past
// its page. kvtier walks every branch and leaf page of every database from the newest meta page, checking
// each reference and offset against the file, before the environment is handed to LMDB; a folder that
// fails is rebuilt from the records reachable through sound pages (python/kvtier/tiers/disk_folder.py).
//
// Layout (lmdb.h and mdb.c of LMDB 0.9, 64-bit): a page starts with its page number (8 bytes), padding (2),
// flags (2) and lower/upper free-space bounds (2 + 2), then the node offsets (2 bytes each). A node is
// lo (2), hi (2), flags (2), key size (2), key, data: a branch node's child page number is lo | hi << 16 |
// flags << 32; a leaf node's data size is lo | hi << 16, its data inline or, with F_BIGDATA, the number of
// its first overflow page. A named database is a leaf of the main database whose data is an MDB_db (48
// bytes, root page at 40). The free database's records are page lists: a count, then the pages.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kvtier::lmdb_pages {

// One record reachable through sound pages: its database (an index into the names walked), key, and where
// its value lies in the file.
struct Record {
  int db;
  std::string key;
  std::uint64_t offset;
  std::uint64_t length;
};

struct Walk {
  std::uint64_t pages = 0;    // branch and leaf pages checked
  std::uint64_t damaged = 0;  // pages, references and records found damaged (what they lead to is skipped)
  std::string first;          // the first damage, described
  std::vector<Record> records;  // with collect: every record of the named databases reached
};

// Walks the trees of the main database (root main_root), of the named databases it lists among `names`,
// and of the free database (root free_root), in `file` (`size` bytes, pages of `psize` bytes, the newest
// meta page's last page `last_pg`). A root of ~0 is an empty tree.
Walk walk(const std::uint8_t* file, std::size_t size, std::size_t psize, std::uint64_t last_pg,
          std::uint64_t free_root, std::uint64_t main_root, const std::vector<std::string>& names, bool collect);

}  // namespace kvtier::lmdb_pages
