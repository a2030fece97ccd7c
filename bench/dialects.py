#!/usr/bin/env python3
"""What the agent dialects cost per request (issue 19): user-space instructions per request of
llmux under callgrind (deterministic, so a busy machine does not move it), for the same short
answer asked four ways:

  chat -> openai      /v1/chat/completions to an OpenAI-compatible deployment (the baseline)
  chat -> anthropic   /v1/chat/completions to an Anthropic deployment (translated by the adapter)
  messages -> anthropic   /v1/messages to an Anthropic deployment (passed through)
  messages -> openai      /v1/messages to an OpenAI-compatible deployment (translated twice)
  responses -> openai     /v1/responses to an OpenAI-compatible deployment (translated)

Targets: messages -> anthropic within 10% of chat -> anthropic (both reach the same upstream
API; the dialect adds its pass-through), messages -> openai within 25% of chat -> openai.
llmux-mock answers every upstream (its OpenAI and Anthropic emulations). No governance, one
worker thread. Usage: python3 bench/dialects.py [requests]  (release build of llmux-cli and
llmux-mock first; valgrind and oha installed)."""

import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as harness  # noqa: E402

REQUESTS = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
HELLO = [{"role": "user", "content": "Hello! How are you today?"}]
CASES = [
    ("chat -> openai", "/v1/chat/completions", {"model": "openai", "messages": HELLO, "max_tokens": 20}),
    ("chat -> anthropic", "/v1/chat/completions", {"model": "anthropic", "messages": HELLO, "max_tokens": 20}),
    ("messages -> anthropic", "/v1/messages", {"model": "anthropic", "messages": HELLO, "max_tokens": 20}),
    ("messages -> openai", "/v1/messages", {"model": "openai", "messages": HELLO, "max_tokens": 20}),
    ("responses -> openai", "/v1/responses", {"model": "openai", "input": "Hello! How are you today?",
                                              "max_output_tokens": 20, "store": False}),
]


def main():
    target = harness.TARGET / "release"
    llmux, mock = target / "llmux", target / "llmux-mock"
    work = Path(tempfile.mkdtemp(prefix="llmux-dialects-"))
    mock_port = harness.free_port()
    procs = harness.Procs()
    try:
        procs.start([str(mock), "--port", str(mock_port), "--threads", "1"], harness.LOAD_CORE)
        upstream = f"http://127.0.0.1:{mock_port}/v1"
        harness.wait_http(f"{upstream}/models")
        config = work / "config.yaml"
        config.write_text(json.dumps({"model_list": [
            {"model_name": "openai", "litellm_params": {"model": "openai/gpt-mock", "api_base": upstream, "api_key": "k"}},
            {"model_name": "anthropic", "litellm_params": {"model": "anthropic/claude-mock", "api_base": upstream, "api_key": "k"}},
        ], "router_settings": {"num_retries": 0}}))
        # Every case must answer 200 first: a failing request is cheap, and would pass for a
        # fast one under callgrind.
        port = harness.free_port()
        plain = procs.start([str(llmux), "serve", "--host", "127.0.0.1", "--port", str(port), "--config", str(config)],
                            harness.CONTENDER_CORE)
        harness.wait_http(f"http://127.0.0.1:{port}/health/readiness")
        for name, path, body in CASES:
            request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                             headers={"content-type": "application/json"}, method="POST")
            with urllib.request.urlopen(request, timeout=10) as r:
                assert r.status == 200, f"{name}: {r.status}"
        procs.stop(plain)
        counts = {}
        for name, path, body in CASES:
            port = harness.free_port()
            cmd = [str(llmux), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--config", str(config)]
            counts[name] = harness.callgrind_instructions(
                cmd, f"http://127.0.0.1:{port}/health/readiness", f"http://127.0.0.1:{port}{path}", body, REQUESTS,
                ["anthropic-version: 2023-06-01"], dict(os.environ, LLMUX_LOG="warn"))
            harness.log(f"{name:24} {counts[name]:>10,.0f} instructions per request")
        base_openai, base_anthropic = counts["chat -> openai"], counts["chat -> anthropic"]
        print(json.dumps(counts, indent=1))
        print(f"messages -> anthropic vs chat -> anthropic: {counts['messages -> anthropic'] / base_anthropic - 1:+.1%} (target <= +10%)")
        print(f"messages -> openai vs chat -> openai: {counts['messages -> openai'] / base_openai - 1:+.1%} (target <= +25%)")
        print(f"responses -> openai vs chat -> openai: {counts['responses -> openai'] / base_openai - 1:+.1%}")
    finally:
        procs.stop_all()
        subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
