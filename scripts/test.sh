#!/usr/bin/env bash
# Runs every test llmux has, installing what they need: formatting, lints, the Rust unit,
# integration and doc tests, and the official OpenAI SDK conformance suites (Python and Node)
# against the real binaries. Every step runs even when an earlier one failed; the script exits
# non-zero if any did, and stops the PostgreSQL it started. Usage: bash scripts/test.sh
set -uo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"

# Tests read nothing outside the clone. Where this runs as root with unshare (CI does), the whole
# run happens in a private mount namespace in which the team's shared folder beside the clone, if present, is an
# empty read-only directory, so a test that still reads it fails here rather than on a user's clone.
SHARED="$(dirname "$REPO")/shared"
if [ -z "${LLMUX_TEST_ISOLATED:-}" ] && [ -d "$SHARED" ] && [ "$(id -u)" = 0 ] \
  && command -v unshare >/dev/null 2>&1 \
  && unshare --mount --propagation private true 2>/dev/null; then
  export LLMUX_TEST_ISOLATED=1
  exec unshare --mount --propagation private bash -c \
    'mount -t tmpfs -o ro,size=4k llmux-no-shared "$1" && exec bash "$2"' _ "$SHARED" "$0"
fi

CACHE="${LLMUX_TEST_CACHE:-$HOME/.cache/llmux}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
export CARGO_TERM_COLOR=never
mkdir -p "$CACHE"

FAILED=()
step() { printf '\n==> %s\n' "$*"; CURRENT="$*"; }
fail() { printf '!!! step failed: %s\n' "$CURRENT"; FAILED+=("$CURRENT"); }
run() { "$@" || fail; }

cleanup() {
  if [ "${LLMUX_TEST_POSTGRES_STARTED:-}" = 1 ]; then
    bash scripts/postgres.sh stop
  fi
  if [ "${LLMUX_TEST_REDIS_STARTED:-}" = 1 ]; then
    bash scripts/redis.sh stop
  fi
  if [ "${LLMUX_TEST_S3_STARTED:-}" = 1 ]; then
    bash scripts/s3.sh stop
  fi
}
trap cleanup EXIT

step "no test reads outside the clone"
if [ "${LLMUX_TEST_ISOLATED:-}" = 1 ]; then
  echo "running with $SHARED hidden"
else
  echo "not root or no unshare: relying on the source check alone"
fi
# Paths that climb out of the repository from a crate (../../../) or name the team's folder.
if git grep -n -E '\.\./\.\./\.\./|\.\./shared/(fixtures|specs)' -- \
  'crates/**.rs' 'tests/**.py' 'tests/**.mjs' 'bench/*.py' 'scripts/*.sh' ':!scripts/test.sh'; then
  echo "the lines above read files outside the repository; copy the fixture into tests/fixtures/"
  fail
fi

step "rustfmt"
run cargo fmt --all --check

step "clippy (warnings are errors)"
run cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
run cargo build --workspace --bins --locked

step "postgresql (for the store tests on both backends)"
if PG_ENV="$(bash scripts/postgres.sh)"; then
  eval "$PG_ENV"
  export LLMUX_TEST_POSTGRES_URL
else
  fail
fi

step "redis (for the fleet tests: shared rate limits)"
if REDIS_ENV="$(bash scripts/redis.sh)"; then
  eval "$REDIS_ENV"
  export LLMUX_TEST_REDIS_URL
else
  fail
fi

step "S3-compatible server (moto, for the s3 log sink tests)"
if S3_ENV="$(bash scripts/s3.sh)"; then
  eval "$S3_ENV"
  export LLMUX_TEST_S3_URL
else
  fail
fi

step "promtool (the metrics tests check the exposition with it)"
if ! command -v promtool >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      $SUDO apt-get install -y -qq --no-install-recommends prometheus; } >&2 || fail
fi
command -v promtool || fail

step "rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  run cargo nextest run --workspace --locked --no-fail-fast
else
  run cargo test --workspace --locked --no-fail-fast
fi
run cargo test --workspace --doc --locked

step "fuzz: the parsers, adapters, config loader and management API, by property at scale"
run env LLMUX_FUZZ_CASES=5000 cargo test --locked -p llmux-providers --test fuzz
run env LLMUX_FUZZ_CASES=1000 cargo test --locked -p llmux-config --test fuzz
run env LLMUX_FUZZ_CASES=5000 cargo test --locked -p llmux-server --test fuzz

export LLMUX_BIN="$CARGO_TARGET_DIR/debug/llmux"
export LLMUX_MOCK_BIN="$CARGO_TARGET_DIR/debug/llmux-mock"

step "python SDK conformance (openai, anthropic)"
if [ ! -x "$CACHE/venv/bin/python" ]; then
  python3 -m venv "$CACHE/venv" || fail
fi
run "$CACHE/venv/bin/pip" install --quiet --disable-pip-version-check -r tests/sdk/python/requirements.txt
run "$CACHE/venv/bin/python" -m pytest -q -p no:cacheprovider tests/sdk/python

step "node SDK conformance (openai, anthropic)"
(
  cd tests/sdk/node
  npm ci --no-audit --no-fund --loglevel=error && node --test
) || fail

step "benchmark smoke test (bench/run.py --quick: nginx and oha are installed if missing)"
run bash -c 'python3 bench/run.py --quick --no-update > /dev/null'

if [ "${#FAILED[@]}" -ne 0 ]; then
  printf '\n==> %d step(s) failed:\n' "${#FAILED[@]}"
  printf '    %s\n' "${FAILED[@]}"
  exit 1
fi
step "all tests passed"
