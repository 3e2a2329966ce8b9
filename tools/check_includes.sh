#!/usr/bin/env bash
# Fails when an #include points outward. Layers, inner to outer:
#   common -> domain -> projections -> pipeline -> adapters -> api (-> main)
#   common -> eventstore (knows bytes, never the domain) -> projections ...
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A allowed=(
  [common]="common"
  [domain]="common domain"
  [eventstore]="common eventstore"
  [projections]="common domain eventstore projections"
  [pipeline]="common domain eventstore projections pipeline"
  [adapters]="common domain eventstore projections pipeline adapters"
  [api]="common domain eventstore projections pipeline adapters api"
)
bad=0
for layer in "${!allowed[@]}"; do
  [ -d "$layer" ] || continue
  while IFS= read -r line; do
    file=${line%%:*}
    inc=$(sed -E 's/.*#include "([^/"]+)\/.*/\1/' <<<"$line")
    case " ${allowed[$layer]} " in
      *" $inc "*) ;;
      *) echo "forbidden include in $file: $layer may not include $inc/"; bad=1 ;;
    esac
  done < <(grep -HE '^#include "[^/"]+/' "$layer"/*.h "$layer"/*.cpp 2>/dev/null || true)
done
# domain/ stays pure: no I/O or framework headers.
if grep -nE '#include <(rocksdb|pistache|libvirt|fstream|thread|filesystem|sodium)' domain/* ; then
  echo "domain/ must stay pure (no I/O, storage, HTTP, threads)"; bad=1
fi
exit $bad
