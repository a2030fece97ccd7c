#!/usr/bin/env python3
"""What telemetry costs per request (issue 20): user-space instructions per chat request of llmux
under callgrind (deterministic, so a busy machine does not move it), governance on (master key,
spend logs on SQLite), Prometheus always on, with:

  off                   no callbacks
  otel                  OpenTelemetry traces (OTLP/HTTP protobuf), message logging on
  otel, 10% sampled     the same with OTEL_TRACES_SAMPLER=traceidratio, ARG 0.1
  otel + generic_api    traces and a log sink (the standard payload as JSON), message logging on
  otel + generic_api, message logging off

Both exporters send to a local receiver that reads and discards. The count covers the request
path and the sinks' work (serialization, export) done on the same thread: the harness waits
after the load so every batch is sent inside the measurement.
Usage: python3 bench/telemetry.py [requests]  (release build of llmux-cli and llmux-mock first;
valgrind and oha installed)."""

import http.server
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as harness  # noqa: E402

REQUESTS = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
BODY = {"model": "m", "messages": [{"role": "user", "content": "Hello! How are you today?"}], "max_tokens": 20}


class Receiver(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    posts = 0

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        Receiver.posts += 1
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    target = harness.TARGET / "release"
    llmux, mock = target / "llmux", target / "llmux-mock"
    work = Path(tempfile.mkdtemp(prefix="llmux-telemetry-"))
    procs = harness.Procs()
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    sink = f"http://127.0.0.1:{receiver.server_address[1]}"
    mock_port = harness.free_port()
    try:
        procs.start([str(mock), "--port", str(mock_port), "--threads", "1"], harness.LOAD_CORE)
        upstream = f"http://127.0.0.1:{mock_port}/v1"
        harness.wait_http(f"{upstream}/models")
        base = {
            "model_list": [{"model_name": "m", "litellm_params": {
                "model": "openai/gpt-mock", "api_base": upstream, "api_key": "k",
                "input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}}],
            "router_settings": {"num_retries": 0},
            "general_settings": {"master_key": "sk-m"},
            "environment_variables": {"OTEL_EXPORTER_OTLP_ENDPOINT": sink, "GENERIC_LOGGER_ENDPOINT": f"{sink}/logs"},
        }
        tenth = {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
        cases = [
            ("off", {}, {}),
            ("otel", {"callbacks": ["otel"]}, {}),
            ("otel, 10% sampled", {"callbacks": ["otel"]}, tenth),
            ("otel + generic_api", {"callbacks": ["otel", "generic_api"]}, {}),
            ("otel + generic_api, no messages", {"callbacks": ["otel", "generic_api"], "turn_off_message_logging": True}, {}),
        ]
        counts = {}
        for name, litellm_settings, env in cases:
            config = work / f"{len(counts)}.yaml"
            config.write_text(json.dumps(dict(base, litellm_settings=litellm_settings,
                                              environment_variables=dict(base["environment_variables"], **env),
                                              llmux_settings={"database_path": str(work / f"{len(counts)}.db")})))
            port = harness.free_port()
            cmd = [str(llmux), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--config", str(config)]
            posts = Receiver.posts
            counts[name] = harness.callgrind_instructions(
                cmd, f"http://127.0.0.1:{port}/health/readiness", f"http://127.0.0.1:{port}/v1/chat/completions",
                BODY, REQUESTS, ["authorization: Bearer sk-m"], dict(os.environ, LLMUX_LOG="warn"))
            harness.log(f"{name:34} {counts[name]:>10,.0f} instructions per request ({Receiver.posts - posts} exports)")
        print(json.dumps(counts, indent=1))
        off = counts["off"]
        for name, count in counts.items():
            print(f"{name}: {count / off - 1:+.1%} vs off")
    finally:
        procs.stop_all()
        receiver.shutdown()


if __name__ == "__main__":
    main()
