#!/usr/bin/env bash
# Shared limits and budgets (issue 18): one llmux instance (release, pinned to core 0) with
# governance on SQLite and a virtual key with rpm and tpm limits and a budget, counting them in
# process (`local`) or through Redis (`redis`); llmux-mock (one thread), Redis and oha on core 1.
# Usage: bash bench/fleet.sh local|redis [connections] [fixed rate, req/s]
#   (build first: cargo build --release -p llmux-cli -p llmux-mock; redis-server from
#    `bash scripts/redis.sh`'s install; oha from `cargo install oha`)
set -u
BIN=${CARGO_TARGET_DIR:-$HOME/.cache/llmux/target}/release
MODE=$1; CONN=${2:-64}; FIXED=${3:-6000}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
cd "$DIR"
taskset -c 1 "$BIN/llmux-mock" --port 18301 --threads 1 >/dev/null 2>&1 &
MOCK=$!
REDIS_LINE=""
if [ "$MODE" = redis ]; then
  taskset -c 1 redis-server --port 18379 --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
  REDIS=$!
  REDIS_LINE="  redis_url: redis://127.0.0.1:18379"
fi
sleep 0.5
cat > cfg.yaml <<YAML
model_list: [{model_name: m, litellm_params: {model: openai/m, api_base: "http://127.0.0.1:18301/v1", api_key: k, input_cost_per_token: 0.000001, output_cost_per_token: 0.000002}}]
router_settings:
  num_retries: 0
$REDIS_LINE
general_settings: {master_key: sk-m}
llmux_settings: {database_path: $PWD/llmux.db}
YAML
LLMUX_LOG=warn taskset -c 0 "$BIN/llmux" serve --port 18300 --config cfg.yaml >llmux.log 2>&1 &
LL=$!
for _ in $(seq 50); do curl -sf localhost:18300/health/readiness >/dev/null && break; sleep 0.1; done
KEY=$(curl -s localhost:18300/key/generate -H 'authorization: Bearer sk-m' \
  -d '{"rpm_limit": 1000000000, "tpm_limit": 1000000000000, "max_budget": 1000000000}' | python3 -c 'import sys,json;print(json.load(sys.stdin)["key"])')
BODY='{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5}'
load() {
  taskset -c 1 oha "$@" -c "$CONN" --no-tui -m POST -H "authorization: Bearer $KEY" \
    -H 'content-type: application/json' -d "$BODY" http://127.0.0.1:18300/v1/chat/completions
}
# CPU time (user + system, clock ticks) a process has used so far.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
load -z 3s >/dev/null 2>&1
LL_T0=$(ticks "$LL"); REDIS_T0=0
[ "$MODE" = redis ] && REDIS_T0=$(ticks "$REDIS")
load -z 10s > max.txt 2>&1
LL_T1=$(ticks "$LL"); REDIS_T1=0
[ "$MODE" = redis ] && REDIS_T1=$(ticks "$REDIS")
RATE=$(awk '/Requests\/sec/ {print $2}' max.txt)
DONE=$(grep -E '\[200\]' max.txt | awk '{print $2}')
HZ=$(getconf CLK_TCK)
# CPU per answered request: what each process needs, whoever else shares its core. 1e6 / llmux's
# figure is the rate llmux would reach with a core to itself and Redis and the generator
# elsewhere (the production layout).
CPU_LINE=$(python3 -c "
hz, done = $HZ, max(int('${DONE:-0}'), 1)
ll = ($LL_T1 - $LL_T0) / hz / done * 1e6
rd = ($REDIS_T1 - $REDIS_T0) / hz / done * 1e6
print(f'llmux {ll:.1f} us CPU/request (capacity on its own core: {1e6/ll:,.0f} req/s)' + (f'; redis {rd:.1f} us/request' if rd else ''))")
HALF=$(python3 -c "print(int(float('$RATE')/2))")
load -z 10s -q "$HALF" > half.txt 2>&1
# The same fixed rate in both modes (one both reach): what llmux spends per request at equal
# load, without the difference in how busy each run kept it (an idle-then-woken process pays
# more per request than a saturated one).
FT0=$(ticks "$LL")
load -z 10s -q "$FIXED" > fixed.txt 2>&1
FT1=$(ticks "$LL")
FIXED_DONE=$(grep -E '\[200\]' fixed.txt | awk '{print $2}')
FIXED_LINE=$(python3 -c "print(f'at a fixed {int(\"$FIXED\"):,} req/s: llmux {($FT1 - $FT0) / $HZ / max(int(\"${FIXED_DONE:-0}\"), 1) * 1e6:.1f} us CPU/request')")
pct() { awk -v p="$1" '$1 == p {print $3}' "$2"; }
echo "$MODE: max $(printf %.0f "$RATE") req/s (p50 $(pct 50.00% max.txt) ms); at $HALF req/s: p50 $(pct 50.00% half.txt) ms, p99 $(pct 99.00% half.txt) ms; $(grep -E '\[200\]' max.txt | tr -s ' ')"
echo "$MODE: $CPU_LINE"
echo "$MODE: $FIXED_LINE"
if [ "$MODE" = redis ]; then
  echo "redis fallbacks: $(curl -s localhost:18300/metrics -H 'authorization: Bearer sk-m' | grep '^llmux_redis_fallbacks' )"
  kill "$REDIS"
fi
kill "$LL" "$MOCK"; wait 2>/dev/null
