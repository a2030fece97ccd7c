#!/usr/bin/env bash
# Starts a throwaway PostgreSQL for the test suite (installing Debian's package when missing)
# and prints the URL to export as LLMUX_TEST_POSTGRES_URL. Idempotent: reuses a running one; when
# it starts one it also prints LLMUX_TEST_POSTGRES_STARTED=1, so the caller knows to stop it.
# Usage: eval "$(bash scripts/postgres.sh)"; bash scripts/postgres.sh stop
set -euo pipefail
PORT="${LLMUX_TEST_POSTGRES_PORT:-55432}"
# Outside $HOME: the postgres account cannot enter root's home.
ROOTDIR="${LLMUX_TEST_POSTGRES_DIR:-/var/tmp/llmux-postgres-$(id -u)}"
DATA="$ROOTDIR/data"
SOCK="$ROOTDIR/sock"

as_pg() {
  # PostgreSQL refuses to run as root; use its own account then.
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ "${1:-}" = stop ]; then
  BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  if [ -n "$BIN" ] && [ -f "$DATA/PG_VERSION" ]; then
    as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null 2>&1 || true
  fi
  exit 0
fi

if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  echo "installing postgresql" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >&2
fi
BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"

mkdir -p "$DATA" "$SOCK"
chmod 700 "$DATA"
if [ "$(id -u)" = 0 ]; then
  chmod 755 "$ROOTDIR"
  chown postgres "$DATA" "$SOCK"
fi
if [ ! -f "$DATA/PG_VERSION" ]; then
  as_pg "$BIN/initdb" -D "$DATA" -U llmux --auth=trust -E UTF8 >/dev/null
fi
if ! as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  mkdir -p "$SOCK"
  as_pg "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 \
    -o "-p $PORT -k $SOCK -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=400" start >/dev/null
  echo "export LLMUX_TEST_POSTGRES_STARTED=1"
fi
echo "export LLMUX_TEST_POSTGRES_URL=postgres://llmux@127.0.0.1:$PORT/postgres"
