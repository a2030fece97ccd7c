#!/usr/bin/env bash
# Spend durability throughput (issue 17): llmux (release, pinned to core 0) with governance on
# SQLite or PostgreSQL and a virtual key with a budget; llmux-mock (one thread) and oha on core 1.
# Usage: bash bench/durability.sh batched|sync sqlite|postgres
#   (build first: cargo build --release -p llmux-cli -p llmux-mock; PostgreSQL from
#    `eval "$(bash scripts/postgres.sh)"` for the postgres case; oha from `cargo install oha`)
set -u
BIN=${CARGO_TARGET_DIR:-$HOME/.cache/llmux/target}/release
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
cd "$DIR"
MODE=$1; DB=$2
taskset -c 1 $BIN/llmux-mock --port 18101 --threads 1 >/dev/null 2>&1 &
MOCK=$!
sleep 0.5
if [ "$DB" = postgres ]; then
  PGURL="postgres://llmux@127.0.0.1:55432/dur_$RANDOM"
  psql "postgres://llmux@127.0.0.1:55432/postgres" -qc "CREATE DATABASE ${PGURL##*/}" >/dev/null 2>&1
  GEN="general_settings: {master_key: sk-m, database_url: \"$PGURL\"}"
else
  GEN="general_settings: {master_key: sk-m}"
fi
cat > cfg.yaml <<YAML
model_list: [{model_name: m, litellm_params: {model: openai/m, api_base: "http://127.0.0.1:18101/v1", api_key: k, input_cost_per_token: 0.000001, output_cost_per_token: 0.000002}}]
$GEN
llmux_settings: {database_path: $PWD/llmux.db, spend_log_durability: $MODE}
YAML
LLMUX_LOG=warn taskset -c 0 $BIN/llmux serve --port 18100 --config cfg.yaml >llmux.log 2>&1 &
LL=$!
for i in $(seq 50); do curl -sf localhost:18100/health/readiness >/dev/null && break; sleep 0.1; done
KEY=$(curl -s localhost:18100/key/generate -H 'authorization: Bearer sk-m' -d '{"max_budget": 1000000, "rpm_limit": 100000000}' | python3 -c 'import sys,json;print(json.load(sys.stdin)["key"])')
BODY='{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5}'
taskset -c 1 oha -z 3s -c 64 --no-tui -m POST -H "authorization: Bearer $KEY" -H 'content-type: application/json' -d "$BODY" http://127.0.0.1:18100/v1/chat/completions >/dev/null 2>&1
taskset -c 1 oha -z 10s -c 64 --no-tui -m POST -H "authorization: Bearer $KEY" -H 'content-type: application/json' -d "$BODY" http://127.0.0.1:18100/v1/chat/completions > out_${MODE}_${DB}.txt 2>&1
echo "$MODE $DB: $(grep -E 'Requests/sec' out_${MODE}_${DB}.txt | tr -s ' ')  p50 $(grep -E '50.00%' out_${MODE}_${DB}.txt | tr -s ' ' | cut -d' ' -f4,5) p99 $(grep -E '99.00%' out_${MODE}_${DB}.txt | tr -s ' ' | cut -d' ' -f4,5) success $(grep -E '\[200\]' out_${MODE}_${DB}.txt | tr -s ' ')"
kill $LL $MOCK; wait 2>/dev/null
