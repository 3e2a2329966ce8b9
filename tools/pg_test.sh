#!/usr/bin/env bash
# A throwaway PostgreSQL for tests and benchmarks, on 127.0.0.1 in a directory of its own.
# PostgreSQL refuses to run as root: as root the server runs as the unprivileged `postgres`
# user (created by Debian's postgresql package; created here if missing), otherwise as the
# caller. Trust authentication on loopback only; fsync and synchronous_commit stay on.
#
#   tools/pg_test.sh check                                exit 0 when the server binaries exist
#   tools/pg_test.sh start DIR PORT [-c name=value ...]   initdb (once) and start; prints PORT
#   tools/pg_test.sh standby PRIMARY_DIR PRIMARY_PORT DIR PORT [-c ...]
#                                       a streaming standby of that primary (pg_basebackup -R)
#                                       that the primary waits for (synchronous_standby_names)
#   tools/pg_test.sh stop DIR [fast|immediate]            stop (immediate: like a crash)
#   tools/pg_test.sh promote DIR                          promote a standby to primary
#   tools/pg_test.sh psql DIR PORT [psql args ...]        psql as the superuser `postgres`
#
# DIR holds the cluster (DIR/data), its Unix socket and its log (DIR/log).
set -euo pipefail

bindir=""
if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
  bindir=$(pg_config --bindir)
fi
if [ -z "$bindir" ]; then
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
fi
[ -x "$bindir/initdb" ] || { echo "pg_test.sh: no PostgreSQL server binaries (apt-get install postgresql)" >&2; exit 3; }

# Runs a server binary as the unprivileged user when we are root.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

own_dir() {
  mkdir -p "$1"
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$1"; fi
  chmod 0700 "$1"
}

start_server() {  # DIR PORT [-c ...]
  local dir=$1 port=$2; shift 2
  local opts="-p $port -k $dir -c listen_addresses=127.0.0.1"
  while [ $# -gt 0 ]; do
    case $1 in
      -c) opts+=" -c $2"; shift 2 ;;
      *) echo "pg_test.sh: unexpected argument $1" >&2; exit 2 ;;
    esac
  done
  as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 -o "$opts" start >/dev/null
  echo "$port"
}

cmd=${1:-}
shift || true
case $cmd in
  check)
    exit 0
    ;;
  start)
    dir=$1 port=$2; shift 2
    own_dir "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      as_pg "$bindir/initdb" -D "$dir/data" -U postgres -A trust --no-sync -E UTF8 \
        --locale=C >/dev/null
      cat >>"$dir/data/postgresql.conf" <<EOF
# tools/pg_test.sh
max_connections = 200
wal_level = replica
max_wal_senders = 4
fsync = on
synchronous_commit = on
log_min_messages = warning
EOF
      echo "host replication postgres 127.0.0.1/32 trust" >>"$dir/data/pg_hba.conf"
    fi
    start_server "$dir" "$port" "$@"
    ;;
  standby)
    pdir=$1 pport=$2 dir=$3 port=$4; shift 4
    own_dir "$dir"
    # application_name goes into the primary_conninfo that -R writes: the name the primary
    # waits for.
    as_pg "$bindir/pg_basebackup" -d "host=127.0.0.1 port=$pport user=postgres application_name=standby1" \
      -D "$dir/data" -R -X stream >/dev/null
    # The primary waits for this standby's flush before it answers a commit.
    as_pg "$bindir/psql" -h 127.0.0.1 -p "$pport" -U postgres -d postgres -qAt -c \
      "ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 (standby1)'" >/dev/null
    as_pg "$bindir/psql" -h 127.0.0.1 -p "$pport" -U postgres -d postgres -qAt -c \
      "SELECT pg_reload_conf()" >/dev/null
    start_server "$dir" "$port" "$@"
    ;;
  stop)
    dir=$1 mode=${2:-fast}
    [ -f "$dir/data/postmaster.pid" ] || exit 0
    as_pg "$bindir/pg_ctl" -D "$dir/data" -m "$mode" -w -t 60 stop >/dev/null 2>&1 || true
    ;;
  promote)
    dir=$1
    as_pg "$bindir/pg_ctl" -D "$dir/data" -w -t 60 promote >/dev/null
    ;;
  psql)
    dir=$1 port=$2; shift 2
    as_pg "$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1 "$@"
    ;;
  *)
    sed -n '2,17p' "$0" >&2
    exit 2
    ;;
esac
