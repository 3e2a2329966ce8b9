// Snapshot checkpoints as Pipeline::rebuild() reads them: decode_snapshot() answers a state or
// an error, never an exception; a state it accepts encodes and decodes back to itself. The
// first byte picks the input form: 'j' parses the rest as JSON text and wraps it as a
// snapshot (so mutations reach deep into state_from_json), anything else is raw CBOR.
#include <string>
#include <string_view>

#include "api/json_input.h"
#include "fuzz/harness.h"
#include "pipeline/pipeline.h"

namespace atrium::fuzz {

int snapshot(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string bytes;
  if (data[0] == 'j') {
    // (Deep text would overflow the stack in to_cbor below, in this harness, not the broker.)
    std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
    if (api::json_depth(text) > 256) return 0;
    auto j = domain::Json::parse(reinterpret_cast<const char*>(data + 1),
                                 reinterpret_cast<const char*>(data + size), nullptr, false);
    if (j.is_discarded()) return 0;
    std::vector<uint8_t> cbor;
    try {
      cbor = domain::Json::to_cbor(j);
    } catch (const std::exception&) {
      return 0;
    }
    bytes.assign(cbor.begin(), cbor.end());
  } else {
    bytes.assign(reinterpret_cast<const char*>(data), size);
  }
  Result<domain::State> st = Error::make(Code::internal, "not decoded");
  try {
    st = pipeline::decode_snapshot(bytes);
  } catch (const std::exception& ex) {
    fail(std::string("decode_snapshot threw: ") + ex.what());
  }
  if (!st.ok()) return 0;
  domain::Json j;
  std::string again;
  try {
    j = domain::state_to_json(*st);
    again = pipeline::encode_snapshot(*st);
  } catch (const std::exception& ex) {
    fail(std::string("a decoded snapshot cannot be encoded: ") + ex.what());
  }
  auto back = pipeline::decode_snapshot(again);
  if (!back.ok()) fail("a snapshot written from a decoded one is refused: " + back.error().message);
  if (domain::state_to_json(*back) != j) fail("a snapshot does not decode back to the same state");
  return 0;
}

}  // namespace atrium::fuzz
