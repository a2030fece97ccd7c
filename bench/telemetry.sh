#!/usr/bin/env bash
# What telemetry costs (issue 20): one llmux instance (release, pinned to core 0) with
# governance on SQLite, a virtual key with budget and rpm, spend logs on, Prometheus always on;
# `off` has no callbacks, `on` sends OpenTelemetry traces (OTLP/HTTP) and a log sink
# (`generic_api`) to a receiver, with message logging on. llmux-mock (one thread), the
# receiver and oha share core 1.
# Usage: bash bench/telemetry.sh off|on [connections] [fixed rate, req/s]
#   (build first: cargo build --release -p llmux-cli -p llmux-mock; oha from `cargo install oha`)
set -u
BIN=${CARGO_TARGET_DIR:-$HOME/.cache/llmux/target}/release
MODE=$1; CONN=${2:-64}; FIXED=${3:-6000}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
cd "$DIR"
taskset -c 1 "$BIN/llmux-mock" --port 18401 --threads 1 >/dev/null 2>&1 &
MOCK=$!
# A receiver that reads each POST and answers 200 (OTLP/HTTP and the generic sink), counting
# what it got.
cat > receiver.py <<'PY'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    posts = 0; bytes = 0
    def do_POST(self):
        n = int(self.headers.get("content-length", 0)); self.rfile.read(n)
        H.posts += 1; H.bytes += n
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def do_GET(self):
        body = f"{H.posts} {H.bytes}".encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", 18402), H).serve_forever()
PY
taskset -c 1 python3 receiver.py &
RECV=$!
sleep 0.5
CALLBACKS=""
if [ "$MODE" = on ]; then
  CALLBACKS='litellm_settings: {callbacks: ["otel", "generic_api"]}
environment_variables:
  OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:18402"
  GENERIC_LOGGER_ENDPOINT: "http://127.0.0.1:18402/logs"'
fi
cat > cfg.yaml <<YAML
model_list: [{model_name: m, litellm_params: {model: openai/m, api_base: "http://127.0.0.1:18401/v1", api_key: k, input_cost_per_token: 0.000001, output_cost_per_token: 0.000002}}]
router_settings: {num_retries: 0}
general_settings: {master_key: sk-m}
llmux_settings: {database_path: $DIR/llmux.db}
$CALLBACKS
YAML
LLMUX_LOG=warn taskset -c 0 "$BIN/llmux" serve --port 18400 --config cfg.yaml >llmux.log 2>&1 &
LL=$!
for _ in $(seq 50); do curl -sf localhost:18400/health/readiness >/dev/null && break; sleep 0.1; done
KEY=$(curl -s localhost:18400/key/generate -H 'authorization: Bearer sk-m' \
  -d '{"rpm_limit": 1000000000, "max_budget": 1000000000}' | python3 -c 'import sys,json;print(json.load(sys.stdin)["key"])')
BODY='{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5}'
load() {
  taskset -c 1 oha "$@" -c "$CONN" --no-tui -m POST -H "authorization: Bearer $KEY" \
    -H 'content-type: application/json' -d "$BODY" http://127.0.0.1:18400/v1/chat/completions
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
load -z 3s >/dev/null 2>&1
T0=$(ticks "$LL")
load -z 10s > max.txt 2>&1
T1=$(ticks "$LL")
RATE=$(awk '/Requests\/sec/ {print $2}' max.txt)
DONE=$(grep -E '\[200\]' max.txt | awk '{print $2}')
HALF=$(python3 -c "print(int(float('$RATE')/2))")
load -z 10s -q "$HALF" > half.txt 2>&1
FT0=$(ticks "$LL")
load -z 10s -q "$FIXED" > fixed.txt 2>&1
FT1=$(ticks "$LL")
FIXED_DONE=$(grep -E '\[200\]' fixed.txt | awk '{print $2}')
pct() { awk -v p="$1" '$1 == p {print $3}' "$2"; }
per() { python3 -c "print(f'{($2 - $1) / $HZ / max(int(\"${3:-0}\"), 1) * 1e6:.1f}')"; }
echo "$MODE: max $(printf %.0f "$RATE") req/s, llmux $(per "$T0" "$T1" "$DONE") us CPU/request; at $HALF req/s: p50 $(pct 50.00% half.txt) ms, p99 $(pct 99.00% half.txt) ms; at $FIXED req/s: llmux $(per "$FT0" "$FT1" "$FIXED_DONE") us CPU/request; $(grep -E '\[200\]' max.txt | tr -s ' ')"
if [ "$MODE" = on ]; then
  sleep 2
  echo "on: receiver got (posts, bytes): $(curl -s localhost:18402/)"
  curl -s localhost:18400/metrics -H 'authorization: Bearer sk-m' | grep '^llmux_log_sink_records_total'
fi
kill "$LL" "$MOCK" "$RECV"; wait 2>/dev/null
