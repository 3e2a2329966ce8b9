#!/usr/bin/env bash
# Fails on code patterns that have bitten this project (cheap text checks, run by tools/test.sh).
#  - A range-for over a member of a temporary JSON, e.g.
#      for (const auto& m : b.call(...).json()["items"])
#    The temporary the operator[] result points into dies before the loop body runs (C++20 does
#    not extend its lifetime): heap-use-after-free, found by AddressSanitizer twice. Bind the
#    JSON to a named variable first.
set -euo pipefail
cd "$(dirname "$0")/.."
if grep -rnE 'for \([^;]*:[^;]*\)\s*\[' --include=*.cpp --include=*.h \
    common domain eventstore projections pipeline adapters api tests bench fuzz tools main.cpp |
    grep -E '\.json\(\)|parse\(' ; then
  echo "check_pitfalls: range-for over a member of a temporary JSON (see the comment in $0)"
  exit 1
fi
