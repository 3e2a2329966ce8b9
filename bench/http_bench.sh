#!/usr/bin/env bash
# HTTP benchmark (issue 2): wrk with 64 connections against
#   (a) an authenticated GET /v1/users/{id} on atriumd,
#   (b) nginx serving a static JSON file of the same size, on the same machine, same run,
#   (c) a durable write (POST /v1/users without a password: no deliberate slow work),
# and prints (a)/(b) and (c) as a ratio to the single synced put rate from bench_core.
# and then (d) the GET of (a) as clients send it (no Connection header: HTTP/1.1 keeps the
# connection) and with an explicit `Connection: keep-alive`, for this build and, when
# ATRIUM_BENCH_COMPARE names another atriumd binary (e.g. one built from an older commit),
# for that one too, in the same run.
# Usage: bench/http_bench.sh [build-dir]   (needs wrk and nginx-light: tools/deps.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
dur=${ATRIUM_BENCH_SECONDS:-10}
port=18480; nport=18481
work=$(mktemp -d /tmp/atrium-http-bench.XXXXXX)
token=atr_http_bench_token_0123456789abcdef
cleanup() {
  [ -n "${apid:-}" ] && kill "$apid" 2>/dev/null || true
  [ -n "${kpid:-}" ] && kill "$kpid" 2>/dev/null || true
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  sleep 0.2; rm -rf "$work"
}
trap cleanup EXIT

ATRIUM_BOOTSTRAP_TOKEN=$token "$build/atriumd" serve --listen=127.0.0.1:$port \
  --data-dir="$work/data" --access-log=off --threads=${ATRIUM_BENCH_THREADS:-16} 2>"$work/atriumd.log" &
apid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
auth="Authorization: Bearer $token"
uid=$(curl -sf -H "$auth" -H 'Content-Type: application/json' -d '{"name":"bench-user"}' \
      "http://127.0.0.1:$port/v1/users" | sed -E 's/.*"id":"([^"]+)".*/\1/')
curl -sf -H "$auth" "http://127.0.0.1:$port/v1/users/$uid" > "$work/user.json"
size=$(stat -c %s "$work/user.json")

mkdir -p "$work/www"; cp "$work/user.json" "$work/www/user.json"
cat > "$work/nginx.conf" <<NGINX
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  server { listen 127.0.0.1:$nport; root $work/www; default_type application/json; }
}
NGINX
nginx -c "$work/nginx.conf"
sleep 0.3

rps() { awk '/Requests\/sec/ {print $2}'; }
echo "response size: $size bytes; wrk -t2 -c64 -d${dur}s"
a=$(wrk -t2 -c64 -d"${dur}s" -H "$auth" "http://127.0.0.1:$port/v1/users/$uid" | tee "$work/a.txt" | rps)
b=$(wrk -t2 -c64 -d"${dur}s" "http://127.0.0.1:$nport/user.json" | tee "$work/b.txt" | rps)
cat > "$work/post.lua" <<'LUA'
local counter = 0
local threads = {}
function setup(thread) thread:set("tid", #threads + 1); table.insert(threads, thread) end
function init(args) n = 0 end
request = function()
  n = n + 1
  local body = string.format('{"name":"w-%d-%d-%d"}', tid, n, math.random(1e9))
  return wrk.format("POST", "/v1/users", {["Content-Type"] = "application/json",
                    ["Authorization"] = os.getenv("AUTH")}, body)
end
response = function(status) if status ~= 201 then counter = counter + 1 end end
LUA
c=$(AUTH="Bearer $token" wrk -t2 -c64 -d"${dur}s" -s "$work/post.lua" "http://127.0.0.1:$port" | tee "$work/c.txt" | rps)
lat_a=$(awk '/Latency/ {print $2}' "$work/a.txt"); lat_c=$(awk '/Latency/ {print $2}' "$work/c.txt")
echo "GET /v1/users/{id} (authenticated): $a req/s (mean latency $lat_a)"
echo "nginx static file, same size:      $b req/s"
awk -v a="$a" -v b="$b" 'BEGIN { printf "ratio atriumd/nginx: %.2fx (target >= 0.3x)\n", a/b }'
echo "POST /v1/users (durable write):     $c req/s (mean latency $lat_c)"
non2xx=$(awk '/Non-2xx/ {print $5}' "$work/c.txt"); echo "non-2xx answers to the writes: ${non2xx:-0}"
positions=$(curl -sf "http://127.0.0.1:$port/readyz" | sed -E 's/.*"position":([0-9]+).*/\1/')
echo "events in the log after the run: $positions"

# (d) keep-alive: the same authenticated GET, without and with `Connection: keep-alive`.
kport=18482
keepalive_pair() {  # binary label
  rm -rf "$work/kdata"
  ATRIUM_BOOTSTRAP_TOKEN=$token "$1" serve --listen=127.0.0.1:$kport --data-dir="$work/kdata" \
    --access-log=off --threads=${ATRIUM_BENCH_THREADS:-16} 2>"$work/k.log" &
  kpid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$kport/readyz" >/dev/null && break; sleep 0.1; done
  local id
  id=$(curl -sf -H "$auth" -H 'Content-Type: application/json' -d '{"name":"bench-user"}' \
       "http://127.0.0.1:$kport/v1/users" | sed -E 's/.*"id":"([^"]+)".*/\1/')
  local plain kept
  plain=$(wrk -t2 -c64 -d"${dur}s" -H "$auth" "http://127.0.0.1:$kport/v1/users/$id" | rps)
  kept=$(wrk -t2 -c64 -d"${dur}s" -H "$auth" -H 'Connection: keep-alive' \
         "http://127.0.0.1:$kport/v1/users/$id" | rps)
  echo "$2: GET /v1/users/{id} no Connection header: $plain req/s; 'Connection: keep-alive': $kept req/s"
  kill "$kpid"; wait "$kpid" 2>/dev/null || true; kpid=
}
keepalive_pair "$build/atriumd" "this build"
if [ -n "${ATRIUM_BENCH_COMPARE:-}" ]; then keepalive_pair "$ATRIUM_BENCH_COMPARE" "compared"; fi
