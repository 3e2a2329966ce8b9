#!/usr/bin/env bash
# Installs dependencies, builds everything, and runs the whole test suite with ctest.
# ATRIUM_SANITIZE="address;undefined" builds and tests a sanitizer build in build-asan.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/deps.sh
tools/check_includes.sh
tools/check_pitfalls.sh
dir=build
args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo)
if [ -n "${ATRIUM_SANITIZE:-}" ]; then
  dir=build-asan
  args+=("-DATRIUM_SANITIZE=${ATRIUM_SANITIZE}")
fi
# End-to-end tests on a real libvirtd + QEMU run when one can be started here; they skip
# with a message otherwise.
if [ -x tools/start_libvirtd.sh ] && [ "${ATRIUM_SKIP_LIBVIRTD:-}" != 1 ]; then
  tools/start_libvirtd.sh || echo "note: no local libvirtd; QEMU end-to-end tests will skip"
fi
cmake -S . -B "$dir" -G Ninja "${args[@]}" >/dev/null
if [ -n "${ATRIUM_SANITIZE:-}" ]; then
  cmake --build "$dir" --target atriumd atrium_tests  # benchmarks are not run sanitized
else
  cmake --build "$dir"
fi
cd "$dir"
ctest --output-on-failure -j2 --timeout 900
