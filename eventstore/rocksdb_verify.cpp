// The RocksDB store's verification: the whole log re-hashed and checked against the stream
// index (both ways), and latching the first corruption a read or verify ran into.
#include "eventstore/rocksdb_internal.h"

namespace atrium::eventstore::rocks_detail {

Result<VerifyReport> RocksEventStore::verify() const {
  auto r = verify_impl();
  if (r.ok() && !r->ok)
    note_corruption("verify: position " + std::to_string(r->first_bad_position) + ": " +
                    r->problem);
  return watched(std::move(r));
}

Result<VerifyReport> RocksEventStore::verify_impl() const {
  return guarded("verify", [&]() -> Result<VerifyReport> {
    VerifyReport r;
    auto fail = [&r](uint64_t position, std::string problem) {
      r.ok = false;
      r.first_bad_position = position;
      r.problem = std::move(problem);
      return r;
    };
    auto db_or = acquire();
    if (!db_or) return db_or.error();
    const Db& db = **db_or;
    SnapshotGuard snap(db.db, opts_.mode != OpenMode::secondary);
    rocksdb::ReadOptions ro;
    ro.snapshot = snap.get();
    ro.verify_checksums = true;
    // The events walk is sequential and read once: keep it out of the block cache. Index
    // lookups jump between streams and do reuse blocks: cache them.
    rocksdb::ReadOptions walk = ro;
    walk.fill_cache = false;

    std::unordered_map<std::string, uint64_t, StringHash, std::equal_to<>> stream_last;
    std::unique_ptr<rocksdb::Iterator> it(db.db->NewIterator(walk, db.events));
    Hash prev{};
    uint64_t expected = 1;
    RecordedEvent e;
    std::string canonical;
    std::string index_value;
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      if (it->key().size() != 8) return fail(expected, "malformed event key");
      const uint64_t p = get_be64(it->key().data());
      if (p != expected) {
        return fail(expected, "position gap: expected " + std::to_string(expected) + ", found " +
                                  std::to_string(p));
      }
      if (!detail::decode_stored(view(it->value()), e)) {
        return fail(p, "event bytes are undecodable");
      }
      if (e.position != p) {
        return fail(p, "event under key " + std::to_string(p) + " claims position " +
                           std::to_string(e.position));
      }
      detail::encode_canonical(e, canonical);
      const Hash h = detail::chain_hash_bytes(prev, canonical);
      if (h != e.hash) {
        return fail(p, "hash mismatch: stored " + to_hex(e.hash) + ", recomputed " + to_hex(h));
      }
      auto [sit, inserted] = stream_last.try_emplace(e.stream, 0);
      if (e.stream_version != sit->second + 1) {
        return fail(p, "stream '" + e.stream + "' version " + std::to_string(e.stream_version) +
                           " follows version " + std::to_string(sit->second));
      }
      sit->second = e.stream_version;
      rocksdb::Status s =
          db.db->Get(ro, db.streams, slice(stream_key(e.stream, e.stream_version)), &index_value);
      if (s.IsNotFound()) {
        return fail(p, "no stream index entry for '" + e.stream + "' version " +
                           std::to_string(e.stream_version));
      }
      if (s.IsCorruption()) return fail(p, "stream index unreadable: " + s.ToString());
      if (!s.ok()) return storage_error(s, "verifying the stream index");
      if (index_value.size() != 8 || get_be64(index_value.data()) != p) {
        return fail(p, "stream index for '" + e.stream + "' version " +
                           std::to_string(e.stream_version) + " does not point here");
      }
      prev = e.hash;
      ++r.events_checked;
      ++expected;
    }
    if (!it->status().ok()) {
      if (it->status().IsCorruption()) {
        return fail(expected, "storage corruption: " + it->status().ToString());
      }
      return storage_error(it->status(), "verifying events");
    }

    // Every index entry must belong to an event seen above (no orphans).
    std::unique_ptr<rocksdb::Iterator> idx(db.db->NewIterator(walk, db.streams));
    for (idx->SeekToFirst(); idx->Valid(); idx->Next()) {
      const std::string_view key = view(idx->key());
      const size_t nul = key.find('\0');
      const uint64_t pos = idx->value().size() == 8 ? get_be64(idx->value().data()) : 0;
      if (nul == std::string_view::npos || key.size() != nul + 9) {
        return fail(pos, "malformed stream index key");
      }
      const uint64_t version = get_be64(key.data() + nul + 1);
      auto sit = stream_last.find(key.substr(0, nul));
      if (sit == stream_last.end() || version > sit->second) {
        return fail(pos, "stream index entry '" + std::string(key.substr(0, nul)) + "' version " +
                             std::to_string(version) + " has no event");
      }
    }
    if (!idx->status().ok()) {
      if (idx->status().IsCorruption()) {
        return fail(0, "stream index corruption: " + idx->status().ToString());
      }
      return storage_error(idx->status(), "verifying the stream index");
    }
    return r;
  });
}

void RocksEventStore::note_corruption(const std::string& what) const {
  {
    std::lock_guard<std::mutex> lk(corrupt_mu_);
    if (!corruption_.empty()) return;
    corruption_ = what.empty() ? "corruption" : what;
  }
  storage_->warn("CORRUPTION: " + corruption_);
}

}  // namespace atrium::eventstore::rocks_detail
