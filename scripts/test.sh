#!/usr/bin/env bash
# Runs every test llmux has, installing what they need: formatting, lints, the Rust unit,
# integration and doc tests, and the official OpenAI SDK conformance suites (Python and Node)
# against the real binaries. Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${LLMUX_TEST_CACHE:-$HOME/.cache/llmux}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
export CARGO_TERM_COLOR=never
mkdir -p "$CACHE"

step() { printf '\n==> %s\n' "$*"; }

step "rustfmt"
cargo fmt --all --check

step "clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --bins --locked

step "postgresql (for the store tests on both backends)"
eval "$(bash scripts/postgres.sh)"
export LLMUX_TEST_POSTGRES_URL

step "rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
cargo test --workspace --doc --locked

export LLMUX_BIN="$CARGO_TARGET_DIR/debug/llmux"
export LLMUX_MOCK_BIN="$CARGO_TARGET_DIR/debug/llmux-mock"

step "python SDK conformance (openai)"
if [ ! -x "$CACHE/venv/bin/python" ]; then
  python3 -m venv "$CACHE/venv"
fi
"$CACHE/venv/bin/pip" install --quiet --disable-pip-version-check -r tests/sdk/python/requirements.txt
"$CACHE/venv/bin/python" -m pytest -q -p no:cacheprovider tests/sdk/python

step "node SDK conformance (openai)"
(
  cd tests/sdk/node
  npm ci --no-audit --no-fund --loglevel=error
  node --test
)

step "benchmark smoke test (bench/run.py --quick: nginx and oha are installed if missing)"
python3 bench/run.py --quick --no-update > /dev/null

step "all tests passed"
