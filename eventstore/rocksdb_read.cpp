// The RocksDB store's reads: scanning the log by position, reading one stream through its
// index, stream versions, idempotency records and checkpoints.
#include "eventstore/rocksdb_internal.h"

namespace atrium::eventstore::rocks_detail {

Result<uint64_t> RocksEventStore::scan(uint64_t after, uint64_t max_events,
                                       const EventVisitor& visit) const {
  return watched(guarded("scan", [&]() -> Result<uint64_t> {
    if (after == UINT64_MAX) return uint64_t{0};
    auto db_or = acquire();
    if (!db_or) return db_or.error();
    const Db& db = **db_or;
    rocksdb::ReadOptions ro;
    ro.verify_checksums = true;
    std::unique_ptr<rocksdb::Iterator> it(db.db->NewIterator(ro, db.events));
    BeKey start(after + 1);
    uint64_t expected = after + 1;
    uint64_t visited = 0;
    RecordedEvent e;  // reused: strings keep their capacity across events
    for (it->Seek(slice(start.view())); it->Valid(); it->Next()) {
      if (max_events != 0 && visited >= max_events) break;
      const rocksdb::Slice key = it->key();
      if (key.size() != 8) return corrupt("malformed event key");
      const uint64_t p = get_be64(key.data());
      if (p != expected) {
        return corrupt("gap in the log: expected position " + std::to_string(expected) +
                       ", found " + std::to_string(p));
      }
      if (!detail::decode_stored(view(it->value()), e) || e.position != p) {
        return corrupt("event at position " + std::to_string(p) + " is undecodable");
      }
      ++visited;
      ++expected;
      if (!visit(e)) break;
    }
    if (!it->status().ok()) return storage_error(it->status(), "scanning events");
    return visited;
  }));
}

Result<std::vector<RecordedEvent>> RocksEventStore::read_stream(std::string_view stream,
                                                                uint64_t after_version,
                                                                size_t limit) const {
  return watched(guarded("read_stream", [&]() -> Result<std::vector<RecordedEvent>> {
    std::vector<RecordedEvent> out;
    if (stream.empty() || stream.find('\0') != std::string_view::npos ||
        after_version == UINT64_MAX) {
      return out;
    }
    auto db_or = acquire();
    if (!db_or) return db_or.error();
    const Db& db = **db_or;
    SnapshotGuard snap(db.db, opts_.mode != OpenMode::secondary);
    rocksdb::ReadOptions ro;
    ro.snapshot = snap.get();
    const std::string prefix = stream_prefix(stream);
    std::unique_ptr<rocksdb::Iterator> it(db.db->NewIterator(ro, db.streams));
    uint64_t expected = after_version + 1;
    std::string value;
    for (it->Seek(slice(stream_key(stream, expected))); it->Valid(); it->Next()) {
      if (limit != 0 && out.size() >= limit) break;
      const std::string_view key = view(it->key());
      if (!key.starts_with(prefix)) break;
      if (key.size() != prefix.size() + 8 || it->value().size() != 8) {
        return corrupt("malformed stream index entry for '" + std::string(stream) + "'");
      }
      const uint64_t version = get_be64(key.data() + prefix.size());
      if (version != expected) {
        return corrupt("stream '" + std::string(stream) + "' skips from version " +
                       std::to_string(expected - 1) + " to " + std::to_string(version));
      }
      const uint64_t pos = get_be64(it->value().data());
      BeKey pk(pos);
      rocksdb::Status s = db.db->Get(ro, db.events, slice(pk.view()), &value);
      if (s.IsNotFound()) {
        return corrupt("stream '" + std::string(stream) + "' version " + std::to_string(version) +
                       " points to missing position " + std::to_string(pos));
      }
      if (!s.ok()) return storage_error(s, "reading a stream");
      RecordedEvent& e = out.emplace_back();
      if (!detail::decode_stored(value, e) || e.position != pos || e.stream != stream ||
          e.stream_version != version) {
        return corrupt("stream '" + std::string(stream) + "' version " + std::to_string(version) +
                       " does not match the event at position " + std::to_string(pos));
      }
      ++expected;
    }
    if (!it->status().ok()) return storage_error(it->status(), "reading a stream");
    return out;
  }));
}

Result<uint64_t> RocksEventStore::stream_version(std::string_view stream) const {
  return watched(guarded("stream_version", [&]() -> Result<uint64_t> {
    if (stream.empty() || stream.find('\0') != std::string_view::npos) return uint64_t{0};
    auto db_or = acquire();
    if (!db_or) return db_or.error();
    return cached_version(**db_or, stream);
  }));
}

Result<std::optional<std::string>> RocksEventStore::get_idempotency(std::string_view key) const {
  return watched(
      guarded("get_idempotency", [&] { return get(&Db::idempotency, key, "idempotency"); }));
}

Result<std::optional<std::string>> RocksEventStore::get_checkpoint(std::string_view name) const {
  return watched(
      guarded("get_checkpoint", [&] { return get(&Db::checkpoints, name, "checkpoint"); }));
}

Status RocksEventStore::scan_records(bool checkpoints, const RecordVisitor& visit) const {
  return guarded("scan_records", [&]() -> Status {
    auto db_or = acquire();
    if (!db_or) return db_or.error();
    const Db& db = **db_or;
    std::unique_ptr<rocksdb::Iterator> it(
        db.db->NewIterator(rocksdb::ReadOptions(), checkpoints ? db.checkpoints : db.idempotency));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      if (!visit(view(it->key()), view(it->value()))) break;
    }
    if (!it->status().ok()) return storage_error(it->status(), "listing records");
    return Status::Ok();
  });
}

Result<std::optional<std::string>> RocksEventStore::get(rocksdb::ColumnFamilyHandle* Db::*cf,
                                                        std::string_view key,
                                                        const char* what) const {
  auto db_or = acquire();
  if (!db_or) return db_or.error();
  const Db& db = **db_or;
  std::string value;
  rocksdb::Status s = db.db->Get(rocksdb::ReadOptions(), db.*cf, slice(key), &value);
  if (s.IsNotFound()) return std::optional<std::string>();
  if (!s.ok()) return storage_error(s, std::string("reading ") + what);
  return std::optional<std::string>(std::move(value));
}

}  // namespace atrium::eventstore::rocks_detail
