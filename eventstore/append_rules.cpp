// Append validation shared by the RocksDB and in-memory stores, so both enforce the same
// contract with the same messages.
#include <limits>

#include "eventstore/internal.h"

namespace atrium::eventstore::detail {
namespace {

constexpr size_t kMaxField = std::numeric_limits<uint32_t>::max();

bool too_long(const std::string& s) { return s.size() > kMaxField; }

}  // namespace

Status validate_request(const AppendRequest& req) {
  for (size_t w = 0; w < req.writes.size(); ++w) {
    const StreamWrite& sw = req.writes[w];
    if (sw.stream.empty()) {
      return invalid("write " + std::to_string(w) + ": stream name is empty", "empty_stream");
    }
    if (sw.stream.find('\0') != std::string::npos) {
      return invalid("write " + std::to_string(w) + ": stream name contains a NUL byte",
                     "invalid_stream");
    }
    if (too_long(sw.stream)) {
      return Error::make(Code::too_large, "write " + std::to_string(w) + ": stream name too long",
                         "stream_too_long");
    }
    for (size_t i = 0; i < sw.events.size(); ++i) {
      const NewEvent& e = sw.events[i];
      if (e.type.empty()) {
        return invalid("stream '" + sw.stream + "' event " + std::to_string(i) +
                           ": event type is empty",
                       "empty_type");
      }
      if (too_long(e.type) || too_long(e.data) || too_long(e.actor) ||
          too_long(e.correlation_id) || too_long(e.causation_id) ||
          too_long(e.idempotency_key)) {
        return Error::make(Code::too_large,
                           "stream '" + sw.stream + "' event " + std::to_string(i) +
                               ": a field exceeds 4 GiB",
                           "event_too_large");
      }
    }
  }
  for (const auto& r : req.idempotency) {
    if (r.key.empty()) return invalid("idempotency key is empty", "empty_idempotency_key");
  }
  for (const auto& [name, value] : req.checkpoints) {
    if (name.empty()) return invalid("checkpoint name is empty", "empty_checkpoint_name");
  }
  return Status::Ok();
}

Status check_expected(std::string_view stream, const ExpectedVersion& expected,
                      uint64_t current) {
  std::string want;
  switch (expected.kind) {
    case ExpectedVersion::Kind::any:
      return Status::Ok();
    case ExpectedVersion::Kind::no_stream:
      if (current == 0) return Status::Ok();
      want = "no stream";
      break;
    case ExpectedVersion::Kind::stream_exists:
      if (current > 0) return Status::Ok();
      want = "an existing stream";
      break;
    case ExpectedVersion::Kind::exact:
      if (current == expected.version) return Status::Ok();
      want = "version " + std::to_string(expected.version);
      break;
  }
  std::string msg = "stream '" + std::string(stream) + "': expected " + want + ", but ";
  msg += current == 0 ? std::string("the stream does not exist")
                      : "the stream is at version " + std::to_string(current);
  return Error::make(Code::conflict, std::move(msg), "wrong_expected_version");
}

}  // namespace atrium::eventstore::detail
