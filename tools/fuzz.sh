#!/usr/bin/env bash
# Builds the libFuzzer targets (build-fuzz/, clang, ASan + UBSan) and runs each for SECONDS on
# its committed corpus fuzz/corpus/<target>. New inputs go to build-fuzz/corpus/<target> (the
# committed corpus is only read), crashes to build-fuzz/artifacts/<target>/. Exits 1 when a
# target crashed, leaked, timed out or broke an invariant.
#
#   tools/fuzz.sh [SECONDS] [TARGET ...]     e.g. tools/fuzz.sh 3600 deciders http
#   ATRIUM_FUZZ_MERGE=1 tools/fuzz.sh 600    also merge what grew coverage into fuzz/corpus
#
# Targets: json_body event_envelope snapshot deciders http (fuzz/harness.h says what each checks).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(json_body event_envelope snapshot deciders http)
cxx=${ATRIUM_FUZZ_CXX:-$(command -v clang++-14 || command -v clang++ || echo clang++)}
CXX=$cxx cmake -S . -B build-fuzz -G Ninja -DATRIUM_FUZZ=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz --target $(printf 'fuzz_%s ' "${targets[@]}")
dict_of() {
  case "$1" in
    json_body) echo "-dict=fuzz/json.dict" ;;
    http) echo "-dict=fuzz/http.dict" ;;
  esac
}
failed=0
for t in "${targets[@]}"; do
  work=build-fuzz/corpus/$t
  art=build-fuzz/artifacts/$t/
  mkdir -p "$work" "$art"
  log=build-fuzz/fuzz-$t.log
  # detect_leaks=0: the daemon's code does not free some process-wide singletons (libvirt,
  # prometheus registries) on purpose; leaks are not what these targets look for.
  if ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
      build-fuzz/fuzz/fuzz_$t -max_total_time="$seconds" -timeout=20 -rss_limit_mb=3072 \
      -print_final_stats=1 -artifact_prefix="$art" $(dict_of "$t") "$work" "fuzz/corpus/$t" \
      > "$log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed=1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1 || true)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1 || true)
  cov=$( (grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" || true) | tail -n 1)
  echo "fuzz $t: $status, ${execs:-?} runs in ${seconds} s (${rate:-?} exec/s), ${cov:-no coverage line}"
  if [ "$status" != ok ]; then
    (grep -E 'INVARIANT VIOLATED|ERROR: |SUMMARY: |Test unit written|ParseDictionaryFile' "$log" || true) |
      head -n 20
    echo "  log: $log; reproduce: build-fuzz/fuzz/fuzz_$t <crash file>"
  fi
  if [ "${ATRIUM_FUZZ_MERGE:-}" = 1 ]; then
    # Edge coverage only (no hit counters, no value profile): a corpus of hundreds, not thousands.
    build-fuzz/fuzz/fuzz_$t -merge=1 -use_counters=0 -use_value_profile=0 "fuzz/corpus/$t" "$work" \
      > "build-fuzz/merge-$t.log" 2>&1 || true
  fi
done
exit $failed
