// Fuzz harnesses (issue 10, "keep finding them"). Each takes arbitrary bytes, drives one input
// path of the broker the way the daemon does, and checks invariants, calling fail() when one
// breaks. The same functions run under libFuzzer (fuzz/entry.cpp, -DATRIUM_FUZZ=ON with clang)
// and, in the normal suite, over every committed corpus and regression input
// (tests/fuzz/corpus_test.cpp), so a crash once found stays a test.
//
// A harness may return early on input it cannot use; it never throws anything but Violation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace atrium::fuzz {

// An invariant broke. Deliberately not a std::exception: the code under test catches those.
struct Violation {
  std::string what;
};
[[noreturn]] inline void fail(std::string what) {
  throw Violation{std::move(what)};
}

// parse_object() and BodyReader (api/json_input.h) on a request body.
int json_body(const uint8_t* data, size_t size);
// The stored event envelope (eventstore decode_stored/encode_stored), then the JSON data
// decode (projections::decode) and evolve() into a state.
int event_envelope(const uint8_t* data, size_t size);
// The snapshot decoder (pipeline::decode_snapshot) and the state codec behind it.
int snapshot(const uint8_t* data, size_t size);
// Random command sequences through every module's decide() and evolve(), with the
// cross-entity invariants checked after each command, and replay and the snapshot codec at
// the end.
int deciders(const uint8_t* data, size_t size);
// HTTP requests (method, target, headers, body) through Api::handle with every route, an
// in-memory store and the real pipeline: never a 500, always a well-formed answer.
int http(const uint8_t* data, size_t size);

}  // namespace atrium::fuzz
