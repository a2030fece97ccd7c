#!/usr/bin/env bash
# Starts a throwaway Redis for the test suite (installing Debian's package when missing) and
# prints the URL to export as LLMUX_TEST_REDIS_URL; when it starts one it also prints
# LLMUX_TEST_REDIS_STARTED=1. Idempotent: reuses a running one.
# Usage: eval "$(bash scripts/redis.sh)"; bash scripts/redis.sh stop
set -euo pipefail
PORT="${LLMUX_TEST_REDIS_PORT:-56379}"
if [ "${1:-}" = stop ]; then
  redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true
  exit 0
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >&2
fi
if ! redis-cli -p "$PORT" ping >/dev/null 2>&1; then
  redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --logfile /tmp/llmux-test-redis.log >/dev/null
  for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  echo "export LLMUX_TEST_REDIS_STARTED=1"
fi
echo "export LLMUX_TEST_REDIS_URL=redis://127.0.0.1:$PORT"
