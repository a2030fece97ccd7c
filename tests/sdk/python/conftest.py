"""Starts llmux-mock and llmux (the real binaries) on free ports for the SDK conformance tests.

Binaries come from LLMUX_BIN / LLMUX_MOCK_BIN, else from the cargo target directory.
"""

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
MASTER_KEY = "sk-llmux-test"


def _binary(env_name: str, name: str) -> str:
    if os.environ.get(env_name):
        return os.environ[env_name]
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return str(target / "debug" / name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen) -> None:
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not become ready")


# One deployment per native adapter (and an embeddings deployment where the provider embeds),
# all pointed at the mock's emulation of that provider's wire format.
PROVIDERS = {
    "openai": ({"model": "openai/gpt-mock", "api_key": "k"}, "same"),
    "azure": ({"model": "azure/dep", "api_key": "k", "api_version": "2024-10-21"}, "same"),
    "azure-entra": ({"model": "azure/dep", "api_version": "2024-10-21", "tenant_id": "t1", "client_id": "app", "client_secret": "s3cret"}, "same"),
    "anthropic": ({"model": "anthropic/claude-mock", "api_key": "k"}, None),
    "gemini": ({"model": "gemini/gemini-mock", "api_key": "k"}, "same"),
    "vertex-gemini": ({"model": "vertex_ai/gemini-mock", "vertex_project": "p1", "vertex_credentials": "{sa}"},
                      {"model": "vertex_ai/text-embedding-005", "vertex_project": "p1", "vertex_credentials": "{sa}"}),
    "vertex-claude": ({"model": "vertex_ai/claude-mock@1", "vertex_project": "p1", "vertex_location": "us-east5", "vertex_credentials": "{sa}"}, None),
    "bedrock": ({"model": "bedrock/anthropic.claude-mock-v1:0", "aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "s", "aws_region_name": "us-west-2"},
                {"model": "bedrock/cohere.embed-english-v3", "aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "s", "aws_region_name": "us-west-2"}),
    "cohere": ({"model": "cohere/command-mock", "api_key": "k"}, "same"),
}


def provider_deployments(root: str) -> list:
    sa = json.loads((ROOT / "tests/fixtures/credentials/vertex-service-account.json").read_text())
    sa["token_uri"] = f"{root}/token"
    out = []
    for name, (params, embed) in PROVIDERS.items():
        base = {"api_base": f"{root}/v1"} if name in ("openai", "anthropic") else {"api_base": root}
        fill = lambda p: {**base, **{k: (json.dumps(sa) if v == "{sa}" else v) for k, v in p.items()}}
        out.append({"model_name": f"p-{name}", "litellm_params": fill(params)})
        if embed is not None:
            out.append({"model_name": f"p-{name}-embed", "litellm_params": fill(params if embed == "same" else embed)})
    return out


@pytest.fixture(scope="session")
def mock_url(gateway):
    return gateway[1]


@pytest.fixture(scope="session")
def gateway_url(gateway):
    return gateway[0]


@pytest.fixture(scope="session")
def gateway():
    mock_port, port = _free_port(), _free_port()
    mock = subprocess.Popen([_binary("LLMUX_MOCK_BIN", "llmux-mock"), "--port", str(mock_port)],
                            stderr=subprocess.DEVNULL)
    upstream = f"http://127.0.0.1:{mock_port}/v1"
    root = f"http://127.0.0.1:{mock_port}"
    config = {
        "model_list": [
            {"model_name": "gpt-test", "litellm_params": {"model": "openai/mock-gpt", "api_base": upstream, "api_key": "sk-up"}},
            {"model_name": "embed", "litellm_params": {"model": "openai/mock-embed", "api_base": upstream, "api_key": "sk-up"}},
            {"model_name": "demo", "litellm_params": {"model": "mock/demo"}},
            {"model_name": "claude", "litellm_params": {"model": "anthropic/claude-mock", "api_base": upstream, "api_key": "sk-ant"}},
            {"model_name": "dead", "litellm_params": {"model": "openai/x", "api_base": "http://127.0.0.1:9/v1", "api_key": "k"}},
            *provider_deployments(root),
        ],
        "environment_variables": {"AZURE_AUTHORITY_HOST": root},
        "general_settings": {"master_key": MASTER_KEY},
        # Virtual keys and spend live in a throwaway SQLite file.
        "llmux_settings": {"database_path": os.path.join(tempfile.mkdtemp(prefix="llmux-sdk-"), "llmux.db")},
        # The SDK's own error handling is under test here, not the router's retries.
        "router_settings": {"num_retries": 0, "disable_cooldowns": True},
        # A response cache only requests that ask use (`cache: {"use-cache": true}`).
        "litellm_settings": {"cache": True, "cache_params": {"type": "local", "mode": "default_off"}},
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        json.dump(config, f)  # JSON is YAML
        config_path = f.name
    server = subprocess.Popen(
        [_binary("LLMUX_BIN", "llmux"), "serve", "--host", "127.0.0.1", "--port", str(port), "--config", config_path],
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_ready(f"http://127.0.0.1:{mock_port}/v1/models", mock)
        _wait_ready(f"http://127.0.0.1:{port}/health/readiness", server)
        yield f"http://127.0.0.1:{port}", root
    finally:
        for p in (server, mock):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        os.unlink(config_path)
