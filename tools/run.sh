#!/usr/bin/env bash
# Installs dependencies, builds, and runs the broker on its embedded defaults:
# RocksDB in ./data, HTTP on 127.0.0.1:8080, libvirt test:///default.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build --target atriumd
exec build/atriumd serve "$@"
