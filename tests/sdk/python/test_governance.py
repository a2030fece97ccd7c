"""A LiteLLM user's key-management script, unchanged, against llmux: create a key with the
management API, use it with the OpenAI SDK, read its spend, and hit its limits."""

import json
import time
import urllib.error
import urllib.request

import openai
import pytest

from conftest import MASTER_KEY


def admin(gateway_url: str, path: str, body=None, method=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{gateway_url}{path}", data=data, method=method or ("POST" if data else "GET"),
        headers={"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


def test_generate_use_and_inspect_a_key(gateway_url):
    key = admin(gateway_url, "/key/generate", {"models": ["gpt-test"], "key_alias": "sdk-script",
                                               "max_budget": 100, "metadata": {"owner": "ci"}})["key"]
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().choices[0].message.content.startswith("tok0")
    cost = float(raw.headers["x-litellm-response-cost"])
    assert cost >= 0

    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}])

    info = admin(gateway_url, f"/key/info?key={key}")
    assert info["info"]["key_alias"] == "sdk-script"
    assert info["info"]["metadata"] == {"owner": "ci"}
    assert info["info"]["models"] == ["gpt-test"]

    deadline = time.time() + 5
    while True:
        logs = admin(gateway_url, f"/spend/logs?api_key={key}")
        if logs or time.time() > deadline:
            break
        time.sleep(0.1)
    assert len(logs) == 1 and logs[0]["model_group"] == "gpt-test"

    listed = admin(gateway_url, "/key/list?key_alias=sdk-script")
    assert listed["total_count"] == 1
    assert admin(gateway_url, "/key/delete", {"keys": [key]})["deleted_keys"] == [key]
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])


def test_budget_and_rate_limit_errors_are_the_sdk_exceptions(gateway_url):
    key = admin(gateway_url, "/key/generate", {"max_budget": 0, "key_alias": "broke"})["key"]
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["type"] == "budget_exceeded"

    key = admin(gateway_url, "/key/generate", {"rpm_limit": 1})["key"]
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=key, max_retries=0)
    client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert e.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_users_teams_and_viewers(gateway_url):
    team = admin(gateway_url, "/team/new", {"team_alias": "sdk-team", "max_budget": 10})
    user = admin(gateway_url, "/user/new", {"user_id": "sdk-viewer", "user_role": "proxy_admin_viewer"})
    viewer = user["key"]
    request = urllib.request.Request(f"{gateway_url}/key/generate", data=b"{}", method="POST",
                                     headers={"Authorization": f"Bearer {viewer}", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=10)
    assert e.value.code == 403
    request = urllib.request.Request(f"{gateway_url}/team/info?team_id={team['team_id']}",
                                     headers={"Authorization": f"Bearer {viewer}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        assert json.loads(r.read())["team_info"]["team_alias"] == "sdk-team"
