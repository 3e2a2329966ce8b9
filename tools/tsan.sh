#!/usr/bin/env bash
# ThreadSanitizer build (build-tsan/, only atrium_tests and the atriumd it runs) and the
# tests where threads meet: the pipeline (one writer, many submitters, snapshots), the API over
# real HTTP (Pistache workers, SSE, the daemon as a child process), the host reconciler
# (workers, scan thread, libvirt's event loop) and the libvirt adapter (call workers, event
# callbacks, close from any thread). A TSan report fails the test that printed it
# (exit code 66). Only proven false positives are suppressed, in tools/tsan.supp.
#   tools/tsan.sh [ctest -R regex]
# ATRIUM_TSAN_EXCLUDE: a ctest regex of tests to leave out (none by default).
set -euo pipefail
cd "$(dirname "$0")/.."
select=${1:-'^test_(pipeline_|api_|adapters_(host_reconciler|libvirt_hypervisor)$)'}
cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DATRIUM_SANITIZE=thread >/dev/null
cmake --build build-tsan --target atrium_tests
cd build-tsan
exclude=${ATRIUM_TSAN_EXCLUDE:-}
skip=()
[ -n "$exclude" ] && skip=(-E "$exclude")
TSAN_OPTIONS="suppressions=$PWD/../tools/tsan.supp second_deadlock_stack=1 history_size=4" \
  ctest -R "$select" "${skip[@]}" --output-on-failure -j2 --timeout 1500
