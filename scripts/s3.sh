#!/usr/bin/env bash
# Starts a throwaway S3-compatible server for the log sink tests (moto's server, from PyPI, in a
# venv under the test cache) and prints the URL to export as LLMUX_TEST_S3_URL; when it starts
# one it also prints LLMUX_TEST_S3_STARTED=1. Idempotent: reuses a running one.
# Usage: eval "$(bash scripts/s3.sh)"; bash scripts/s3.sh stop
set -euo pipefail
PORT="${LLMUX_TEST_S3_PORT:-59000}"
CACHE="${LLMUX_TEST_CACHE:-$HOME/.cache/llmux}"
VENV="$CACHE/s3-venv"
PIDFILE="/tmp/llmux-test-s3.pid"
if [ "${1:-}" = stop ]; then
  if [ -f "$PIDFILE" ]; then
    kill "$(cat "$PIDFILE")" 2>/dev/null || true
    rm -f "$PIDFILE"
  fi
  exit 0
fi
up() { curl -fsS -o /dev/null "http://127.0.0.1:$PORT/moto-api/" 2>/dev/null; }
if ! up; then
  if [ ! -x "$VENV/bin/moto_server" ]; then
    echo "installing moto (S3-compatible server) into $VENV" >&2
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==5.1.22" >&2
  fi
  nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >/tmp/llmux-test-s3.log 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 100); do up && break; sleep 0.1; done
  up || { echo "moto did not start; see /tmp/llmux-test-s3.log" >&2; exit 1; }
  echo "export LLMUX_TEST_S3_STARTED=1"
fi
echo "export LLMUX_TEST_S3_URL=http://127.0.0.1:$PORT"
