#!/usr/bin/env python3
"""What a cache hit costs in CPU (issue 21): user-space instructions per request of llmux under
callgrind (deterministic), governance on (master key, spend logs on SQLite), the in-process
cache, for:

  off           no cache configured (the baseline every request pays today)
  miss          cache on, `cache: {"no-cache": true}`: the key computed, the upstream called, the
                answer stored
  hit           cache on, the same request answered from the cache
  stream miss / stream hit   the same as a 4-chunk stream (a hit is a replay of the JSON answer)

Usage: python3 bench/cache.py [requests]  (release build of llmux-cli and llmux-mock first;
valgrind and oha installed)."""

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as harness  # noqa: E402

REQUESTS = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
BODY = {"model": "m", "messages": [{"role": "user", "content": "Hello! How are you today?"}], "max_tokens": 20}
STREAM = dict(BODY, stream=True, mock_options={"chunks": 4})


def main():
    target = harness.TARGET / "release"
    llmux, mock = target / "llmux", target / "llmux-mock"
    work = Path(tempfile.mkdtemp(prefix="llmux-cache-bench-"))
    procs = harness.Procs()
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
        }
        cached = {"cache": True, "cache_params": {"type": "local"}}
        fresh = {"cache": {"no-cache": True}}
        cases = [
            ("off", {}, BODY),
            ("miss", cached, dict(BODY, **fresh)),
            ("hit", cached, BODY),
            ("stream off", {}, STREAM),
            ("stream miss", cached, dict(STREAM, **fresh)),
            ("stream hit", cached, STREAM),
        ]
        counts = {}
        for name, litellm_settings, body in cases:
            config = work / f"{len(counts)}.yaml"
            config.write_text(json.dumps(dict(base, litellm_settings=litellm_settings,
                                              llmux_settings={"database_path": str(work / f"{len(counts)}.db")})))
            port = harness.free_port()
            cmd = [str(llmux), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--config", str(config)]
            counts[name] = harness.callgrind_instructions(
                cmd, f"http://127.0.0.1:{port}/health/readiness", f"http://127.0.0.1:{port}/v1/chat/completions",
                body, REQUESTS, ["authorization: Bearer sk-m"], dict(os.environ, LLMUX_LOG="warn"))
            harness.log(f"{name:12} {counts[name]:>10,.0f} instructions per request")
        print(json.dumps(counts, indent=1))
        for kind in ("", "stream "):
            off = counts[f"{kind}off"]
            for case in ("miss", "hit"):
                print(f"{kind}{case}: {counts[kind + case] / off - 1:+.1%} vs {kind}off")
    finally:
        procs.stop_all()
        import shutil
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
