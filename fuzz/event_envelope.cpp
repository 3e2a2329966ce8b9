// Stored events as the stores read them back: a sequence of values, each a 4-byte big-endian
// length and the bytes RocksDB would hold. decode_stored() must accept exactly what
// encode_stored() writes; a decoded event's JSON data goes through projections::decode() and
// evolve() as replay does (an exception there stops replay with an error: allowed, and the
// end of this input). Whatever state the fold reached must be writable as a snapshot.
#include <string>
#include <string_view>

#include "eventstore/internal.h"
#include "fuzz/harness.h"
#include "projections/views.h"

namespace atrium::fuzz {

int event_envelope(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  domain::State state;
  eventstore::RecordedEvent e;
  std::string back;
  while (in.size() >= 4) {
    uint32_t n = (uint32_t{static_cast<uint8_t>(in[0])} << 24) |
                 (uint32_t{static_cast<uint8_t>(in[1])} << 16) |
                 (uint32_t{static_cast<uint8_t>(in[2])} << 8) |
                 uint32_t{static_cast<uint8_t>(in[3])};
    in.remove_prefix(4);
    if (n > in.size()) n = static_cast<uint32_t>(in.size());
    std::string_view value = in.substr(0, n);
    in.remove_prefix(n);
    if (!eventstore::detail::decode_stored(value, e)) continue;
    eventstore::detail::encode_stored(e, back);
    if (back != value) fail("decode_stored accepted a value that encode_stored does not write");
    auto ev = projections::decode(e);
    if (!ev.ok()) {
      if (ev.error().code != Code::invalid_argument) fail("decode failed without invalid_argument");
      continue;
    }
    try {
      domain::evolve(state, *ev, {e.position, e.stream_version, e.recorded_at_ms});
    } catch (const std::exception&) {
      return 0;  // replay stops here with "event N could not be applied"
    }
  }
  // The snapshot thread would die on a state it cannot write. (Reading it back is not
  // checked here: a log no decider wrote, e.g. two VMs imported with one uuid, folds into
  // states whose derived indexes differ from a rebuild; fuzz/deciders.cpp checks the codec
  // on every state the deciders can reach.)
  try {
    (void)domain::state_to_json(state);
  } catch (const std::exception& ex) {
    fail(std::string("state_to_json threw on a folded state: ") + ex.what());
  }
  return 0;
}

}  // namespace atrium::fuzz
