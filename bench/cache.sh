#!/usr/bin/env bash
# What a cache hit costs (issue 21): one llmux instance (release, pinned to core 0), governance
# on SQLite (a virtual key with budget and rpm, spend logs on), the in-process cache; llmux-mock
# (one thread) and oha share core 1. Measured, each for 10 s:
#   - hits at llmux's max rate, and at half of it: p50 / p99;
#   - the same body straight to the mock at that half rate (what a hit is compared with), and the
#     mock's own max rate (the generator's headroom: it must be well above llmux's);
#   - misses (`cache: {"no-cache": true}`: key, upstream call, store) at the same half rate;
#   - llmux's CPU per request for hits and for misses at a fixed rate.
# Usage: bash bench/cache.sh [connections] [fixed rate, req/s]
#   (build first: cargo build --release -p llmux-cli -p llmux-mock; oha from `cargo install oha`)
set -u
BIN=${CARGO_TARGET_DIR:-$HOME/.cache/llmux/target}/release
CONN=${1:-64}; FIXED=${2:-4000}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
cd "$DIR"
taskset -c 1 "$BIN/llmux-mock" --port 18501 --threads 1 >/dev/null 2>&1 &
MOCK=$!
cat > cfg.yaml <<YAML
model_list: [{model_name: m, litellm_params: {model: openai/m, api_base: "http://127.0.0.1:18501/v1", api_key: k, input_cost_per_token: 0.000001, output_cost_per_token: 0.000002}}]
router_settings: {num_retries: 0}
general_settings: {master_key: sk-m}
llmux_settings: {database_path: $DIR/llmux.db}
litellm_settings: {cache: true, cache_params: {type: local}}
YAML
LLMUX_LOG=warn taskset -c 0 "$BIN/llmux" serve --port 18500 --config cfg.yaml >llmux.log 2>&1 &
LL=$!
for _ in $(seq 50); do curl -sf localhost:18500/health/readiness >/dev/null && break; sleep 0.1; done
KEY=$(curl -s localhost:18500/key/generate -H 'authorization: Bearer sk-m' \
  -d '{"rpm_limit": 1000000000, "max_budget": 1000000000}' | python3 -c 'import sys,json;print(json.load(sys.stdin)["key"])')
HIT='{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5}'
MISS='{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"cache":{"no-cache":true}}'
load() { # url body oha-args...
  local url=$1 body=$2; shift 2
  taskset -c 1 oha "$@" -c "$CONN" --no-tui -m POST -H "authorization: Bearer $KEY" \
    -H 'content-type: application/json' -d "$body" "$url"
}
GW=http://127.0.0.1:18500/v1/chat/completions
UP=http://127.0.0.1:18501/v1/chat/completions
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
pct() { awk -v p="$1" '$1 == p {print $3}' "$2"; }
rate() { awk '/Requests\/sec/ {print $2}' "$1"; }
ok() { grep -E '\[200\]' "$1" | awk '{print $2}'; }
per() { python3 -c "print(f'{($2 - $1) / $HZ / max(int(\"${3:-0}\"), 1) * 1e6:.1f}')"; }

curl -s "$GW" -H "authorization: Bearer $KEY" -H 'content-type: application/json' -d "$HIT" >/dev/null
sleep 0.2
HEADER=$(curl -s -D - -o /dev/null "$GW" -H "authorization: Bearer $KEY" -H 'content-type: application/json' -d "$HIT" | grep -i '^x-litellm-cache-key' | tr -d '\r')
load "$GW" "$HIT" -z 3s >/dev/null 2>&1
B0=$(ticks "$LL"); load "$GW" "$HIT" -z 10s > hit-max.txt 2>&1; B1=$(ticks "$LL")
HALF=$(python3 -c "print(int(float('$(rate hit-max.txt)')/2))")
load "$UP" "$HIT" -z 10s > mock-max.txt 2>&1
load "$GW" "$HIT" -z 10s -q "$HALF" > hit-half.txt 2>&1
load "$UP" "$HIT" -z 10s -q "$HALF" > mock-half.txt 2>&1
load "$GW" "$MISS" -z 10s -q "$HALF" > miss-half.txt 2>&1
T0=$(ticks "$LL"); load "$GW" "$HIT" -z 10s -q "$FIXED" > hit-fixed.txt 2>&1; T1=$(ticks "$LL")
M0=$(ticks "$LL"); load "$GW" "$MISS" -z 10s -q "$FIXED" > miss-fixed.txt 2>&1; M1=$(ticks "$LL")
echo "hit header: $HEADER"
echo "hits: max $(printf %.0f "$(rate hit-max.txt)") req/s ($(ok hit-max.txt) ok), llmux's core busy $(python3 -c "print(f'{($B1 - $B0) / $HZ / 10 * 100:.0f}')")%; the mock alone: max $(printf %.0f "$(rate mock-max.txt)") req/s"
echo "at $HALF req/s: hit p50 $(pct 50.00% hit-half.txt) ms p99 $(pct 99.00% hit-half.txt) ms; mock direct p50 $(pct 50.00% mock-half.txt) ms p99 $(pct 99.00% mock-half.txt) ms; miss p50 $(pct 50.00% miss-half.txt) ms p99 $(pct 99.00% miss-half.txt) ms ($(ok miss-half.txt) ok)"
echo "at $FIXED req/s: llmux CPU per hit $(per "$T0" "$T1" "$(ok hit-fixed.txt)") us, per miss $(per "$M0" "$M1" "$(ok miss-fixed.txt)") us"
curl -s localhost:18500/metrics -H 'authorization: Bearer sk-m' | grep -E '^litellm_cache_(hits|misses)_metric_total' | awk '{s[$1 ~ /hits/ ? "hits" : "misses"] += $NF} END {print "metrics: hits", s["hits"], "misses", s["misses"]}'
kill "$LL" "$MOCK"; wait 2>/dev/null
