// A read-only walk of RocksDB's write-ahead log files, to say what recovery would drop.
//
// RocksDB decides how to recover (eventstore/rocksdb_event_store.cpp); this walk only
// describes: where the first record that does not read back is (file and byte offset), and
// which intact records, and which event positions in them, follow it. That is what tells a
// torn tail (a last write cut short: nothing intact after it) from damage in the middle of
// the log (acknowledged writes after it, which point-in-time recovery would silently drop).
//
// The format is RocksDB's documented log format (db/log_format.h): 32 KiB blocks of
// physical records, each `masked crc32c (4) | length (2, LE) | type (1) | payload`, with an
// extra 4-byte log number in the recyclable types; a logical record (one WriteBatch) is one
// FULL record or FIRST, MIDDLE..., LAST fragments; fewer than 7 bytes at a block's end are
// padding. The checksum covers the type byte (and log number) and the payload. CRC32C comes
// from RocksDB's own public checksum generator; WriteBatches are decoded by RocksDB.
#include <rocksdb/file_checksum.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <optional>

#include "eventstore/event_store.h"
#include "eventstore/internal.h"

namespace atrium::eventstore::detail {
namespace {

constexpr size_t kBlock = 32768;
constexpr size_t kHeader = 7;
constexpr size_t kRecyclableHeader = 11;
constexpr uint32_t kMaskDelta = 0xa282ead8u;

enum Type : uint8_t {
  kZero = 0,
  kFull = 1,
  kFirst = 2,
  kMiddle = 3,
  kLast = 4,
  kRecyclableFull = 5,
  kRecyclableLast = 8,
  kSetCompression = 9,
};

uint32_t le32(const char* p) {
  return static_cast<uint32_t>(static_cast<uint8_t>(p[0])) |
         static_cast<uint32_t>(static_cast<uint8_t>(p[1])) << 8 |
         static_cast<uint32_t>(static_cast<uint8_t>(p[2])) << 16 |
         static_cast<uint32_t>(static_cast<uint8_t>(p[3])) << 24;
}

uint32_t crc32c(std::string_view a, std::string_view b) {
  static const std::shared_ptr<rocksdb::FileChecksumGenFactory> factory =
      rocksdb::GetFileChecksumGenCrc32cFactory();
  rocksdb::FileChecksumGenContext ctx;
  auto gen = factory->CreateFileChecksumGenerator(ctx);
  gen->Update(a.data(), a.size());
  gen->Update(b.data(), b.size());
  gen->Finalize();
  const std::string c = gen->GetChecksum();  // big-endian bytes
  return static_cast<uint32_t>(static_cast<uint8_t>(c[0])) << 24 |
         static_cast<uint32_t>(static_cast<uint8_t>(c[1])) << 16 |
         static_cast<uint32_t>(static_cast<uint8_t>(c[2])) << 8 |
         static_cast<uint32_t>(static_cast<uint8_t>(c[3]));
}

uint32_t unmask(uint32_t masked) {
  const uint32_t rot = masked - kMaskDelta;
  return (rot >> 17) | (rot << 15);
}

// Event positions in one WriteBatch: Puts whose key is 8 bytes and whose value decodes as a
// stored event at that position (the events column family; no other family has such pairs).
class PositionCollector : public rocksdb::WriteBatch::Handler {
 public:
  rocksdb::Status PutCF(uint32_t, const rocksdb::Slice& key, const rocksdb::Slice& value) override {
    if (key.size() != 8) return rocksdb::Status::OK();
    const uint64_t pos = get_be64(key.data());
    if (decode_stored(std::string_view(value.data(), value.size()), e_) && e_.position == pos) {
      first = first == 0 ? pos : std::min(first, pos);
      last = std::max(last, pos);
    }
    return rocksdb::Status::OK();
  }
  uint64_t first = 0;
  uint64_t last = 0;

 private:
  RecordedEvent e_;
};

struct Physical {
  enum Kind { ok, bad, incomplete, padding, old } kind = ok;
  uint8_t type = 0;
  std::string_view payload;
  size_t size = 0;  // header + payload
  std::string problem;
};

// Reads the physical record at `off` of `data` (within its block).
Physical read_physical(std::string_view data, size_t off, uint32_t log_number) {
  Physical p;
  const size_t block_left = kBlock - off % kBlock;
  const size_t file_left = data.size() - off;
  const size_t left = std::min(block_left, file_left);
  if (block_left < kHeader) {
    p.kind = Physical::padding;
    p.size = left;
    return p;
  }
  if (file_left < kHeader) {
    p.kind = Physical::incomplete;
    p.problem = "incomplete record header at the end of the file";
    p.size = left;
    return p;
  }
  const char* h = data.data() + off;
  const uint32_t stored = le32(h);
  const size_t length = static_cast<uint8_t>(h[4]) | static_cast<size_t>(static_cast<uint8_t>(h[5]))
                                                         << 8;
  p.type = static_cast<uint8_t>(h[6]);
  if (p.type == kZero && length == 0) {
    p.kind = Physical::padding;  // preallocated, never written: RocksDB skips the block
    p.size = left;
    return p;
  }
  const bool recyclable = p.type >= kRecyclableFull && p.type <= kRecyclableLast;
  const size_t header = recyclable ? kRecyclableHeader : kHeader;
  if (p.type > kSetCompression) {
    p.kind = Physical::bad;
    p.problem = "unknown record type " + std::to_string(p.type);
    p.size = left;
    return p;
  }
  if (header + length > left) {
    p.kind = header + length > block_left ? Physical::bad : Physical::incomplete;
    p.problem =
        p.kind == Physical::bad ? "bad record length" : "incomplete record at the end of the file";
    p.size = left;
    return p;
  }
  if (recyclable && le32(h + 7) != log_number) {
    p.kind = Physical::old;  // left over from a recycled file's previous life: its end
    p.size = left;
    return p;
  }
  p.payload = std::string_view(h + header, length);
  p.size = header + length;
  const uint32_t actual = crc32c(std::string_view(h + 6, header - 6), p.payload);
  if (unmask(stored) != actual) {
    p.kind = Physical::bad;
    p.problem = "checksum mismatch";
  }
  return p;
}

// The next offset after `from` (in the same block, then block starts) where an intact
// physical record starts, if any: how the walk finds intact records after damage, even
// when the damage hit a length field.
std::optional<size_t> resync(std::string_view data, size_t from, uint32_t log_number) {
  for (size_t off = from; off + kHeader <= data.size();) {
    const size_t block_left = kBlock - off % kBlock;
    if (block_left < kHeader) {
      off += block_left;
      continue;
    }
    const uint8_t type = static_cast<uint8_t>(data[off + 6]);
    if (type >= kFull && type <= kRecyclableLast) {
      Physical p = read_physical(data, off, log_number);
      if (p.kind == Physical::ok) return off;
    }
    ++off;
  }
  return std::nullopt;
}

struct WalFile {
  std::filesystem::path path;
  uint64_t number = 0;
  uint64_t size = 0;
};

}  // namespace

Result<WalReport> scan_wal_files(const std::string& dir) {
  namespace fs = std::filesystem;
  WalReport out;
  std::vector<WalFile> files;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() < 5 || !name.ends_with(".log")) continue;
    const std::string digits = name.substr(0, name.size() - 4);
    if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      continue;
    }
    files.push_back({it->path(), std::stoull(digits), 0});
  }
  if (ec) {
    return Error::make(Code::unavailable, "cannot list " + dir + ": " + ec.message(),
                       "storage_unavailable");
  }
  std::sort(files.begin(), files.end(),
            [](const WalFile& a, const WalFile& b) { return a.number < b.number; });

  bool damaged = false;
  for (const WalFile& f : files) {
    std::ifstream in(f.path, std::ios::binary);
    if (!in) continue;  // removed since the listing (a running store deleted it)
    std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ++out.files;
    out.bytes += data.size();
    const uint32_t log_number = static_cast<uint32_t>(f.number);

    std::string logical;
    size_t logical_start = 0;
    bool in_fragment = false;
    auto damage = [&](size_t off, const std::string& problem) {
      if (!damaged) {
        damaged = true;
        out.damaged = true;
        out.file = f.path.string();
        out.offset = off;
        out.problem = problem;
        out.dropped_bytes = data.size() - off;
      }
      in_fragment = false;
      logical.clear();
    };
    auto finish = [&](std::string_view batch) {
      if (batch.size() < 12) return;  // a WriteBatch has an 8-byte sequence and a count
      PositionCollector pc;
      rocksdb::WriteBatch wb{std::string(batch)};
      (void)wb.Iterate(&pc);
      if (damaged) {
        ++out.records_after;
        if (pc.last != 0) {
          out.first_position_after = out.first_position_after == 0
                                         ? pc.first
                                         : std::min(out.first_position_after, pc.first);
          out.last_position_after = std::max(out.last_position_after, pc.last);
        }
      } else {
        ++out.records;
        out.last_position_before = std::max(out.last_position_before, pc.last);
      }
    };

    for (size_t off = 0; off < data.size();) {
      Physical p = read_physical(data, off, log_number);
      if (p.kind == Physical::padding) {
        if (in_fragment) damage(logical_start, "fragmented record without its end");
        off += p.size;
        continue;
      }
      if (p.kind == Physical::old) break;
      if (p.kind == Physical::bad || p.kind == Physical::incomplete) {
        damage(in_fragment ? logical_start : off, p.problem);
        auto next = resync(data, off + 1, log_number);
        if (!next) break;
        off = *next;
        continue;
      }
      switch (p.type) {
        case kFull:
        case kRecyclableFull:
          if (in_fragment) damage(logical_start, "fragmented record without its end");
          finish(p.payload);
          break;
        case kFirst:
        case kFirst + 4:
          if (in_fragment) damage(logical_start, "fragmented record without its end");
          logical.assign(p.payload);
          logical_start = off;
          in_fragment = true;
          break;
        case kMiddle:
        case kMiddle + 4:
          if (!in_fragment) {
            if (!damaged) damage(off, "fragment without its start");
          } else {
            logical.append(p.payload);
          }
          break;
        case kLast:
        case kRecyclableLast:
          if (!in_fragment) {
            if (!damaged) damage(off, "fragment without its start");
          } else {
            logical.append(p.payload);
            in_fragment = false;
            finish(logical);
          }
          break;
        case kSetCompression:
          // A compressed WAL (not written by this store): its records cannot be decoded here.
          return Error::make(Code::internal, f.path.string() + " is a compressed WAL",
                             "unsupported_wal");
        default:
          break;
      }
      off += p.size;
    }
    if (in_fragment) damage(logical_start, "incomplete record at the end of the file");
    if (damaged && out.file != f.path.string()) out.later_bytes += data.size();
  }
  return out;
}

}  // namespace atrium::eventstore::detail
