"""The Anthropic Messages API (`/v1/messages`) through the official Anthropic Python SDK, in front
of every provider family: text, streams (the SDK's own event accumulation), tool use over two
turns, images, thinking, count_tokens, and each failure as the SDK's own exception class."""

import json
import urllib.request

import anthropic
import pytest

from conftest import MASTER_KEY, PROVIDERS

TEXT = "".join(f"tok{i} " for i in range(20))
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
TOOLS = [{"name": "get_weather", "description": "weather",
          "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}]
SYSTEM = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def client(gateway_url):
    # The SDK appends /v1/messages to the base URL, as Claude Code does with ANTHROPIC_BASE_URL.
    return anthropic.Anthropic(base_url=gateway_url, api_key=MASTER_KEY, max_retries=0)


def set_mock_defaults(mock_url: str, knobs: dict) -> None:
    request = urllib.request.Request(f"{mock_url}/mock/defaults", data=json.dumps(knobs).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=5).read()


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_text_stream_tools_images_and_thinking(client, provider):
    model = f"p-{provider}"
    m = client.messages.create(model=model, max_tokens=256, system=SYSTEM, messages=HELLO)
    assert m.type == "message" and m.role == "assistant"
    assert m.content[0].type == "text" and m.content[0].text == TEXT
    assert m.stop_reason == "end_turn"
    assert m.usage.input_tokens > 0 and m.usage.output_tokens > 0

    with client.messages.stream(model=model, max_tokens=256, system=SYSTEM, messages=HELLO) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == TEXT
    assert final.content[0].text == TEXT
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0

    m = client.messages.create(model=model, max_tokens=256, messages=[{"role": "user", "content": "Weather in Paris?"}],
                               tools=TOOLS, tool_choice={"type": "any"})
    assert m.stop_reason == "tool_use"
    call = next(b for b in m.content if b.type == "tool_use")
    assert call.name == "get_weather" and call.input == {"location": "Paris"}
    follow = client.messages.create(model=model, max_tokens=256, tools=TOOLS, messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": m.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny"}]},
    ])
    assert follow.content[0].text == TEXT

    with client.messages.stream(model=model, max_tokens=256, messages=[{"role": "user", "content": "Weather?"}],
                                tools=TOOLS, tool_choice={"type": "any"}) as stream:
        final = stream.get_final_message()
    call = next(b for b in final.content if b.type == "tool_use")
    assert call.input == {"location": "Paris"}, "the SDK assembled the streamed input JSON"
    assert final.stop_reason == "tool_use"

    m = client.messages.create(model=model, max_tokens=256, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]}])
    assert m.content[0].text == TEXT

    m = client.messages.create(model=model, max_tokens=2048, messages=HELLO,
                               thinking={"type": "enabled", "budget_tokens": 1024})
    assert m.content[0].type == "thinking" and m.content[0].thinking == "Thinking it over."
    assert m.content[1].text == TEXT

    counted = client.messages.count_tokens(model=model, messages=HELLO, system=SYSTEM, tools=TOOLS)
    assert counted.input_tokens > 0


def test_errors_raise_the_sdk_classes(client, gateway_url, mock_url):
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="no-such-model", max_tokens=10, messages=HELLO)
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=gateway_url, api_key="sk-wrong", max_retries=0).messages.create(
            model="p-openai", max_tokens=10, messages=HELLO)
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model="p-openai", max_tokens=10, messages=[{"role": "system", "content": "x"}])
    assert "role" in e.value.message
    cases = [(429, anthropic.RateLimitError), (403, anthropic.PermissionDeniedError),
             (400, anthropic.BadRequestError), (500, anthropic.InternalServerError)]
    try:
        for status, error in cases:
            set_mock_defaults(mock_url, {"status": status})
            with pytest.raises(error) as e:
                client.messages.create(model="p-anthropic", max_tokens=10, messages=HELLO)
            assert e.value.status_code == status
            set_mock_defaults(mock_url, {"status": status})
            with pytest.raises(error):
                client.messages.create(model="p-openai", max_tokens=10, messages=HELLO)
    finally:
        set_mock_defaults(mock_url, {})


def test_auth_by_bearer_token_as_claude_code_sends_it(gateway_url):
    # ANTHROPIC_AUTH_TOKEN: the SDK sends `Authorization: Bearer`, with the beta query Claude Code adds.
    client = anthropic.Anthropic(base_url=gateway_url, auth_token=MASTER_KEY, max_retries=0)
    m = client.beta.messages.create(model="p-openai", max_tokens=64, messages=HELLO,
                                    betas=["interleaved-thinking-2025-05-14"])
    assert m.content[0].text == TEXT


def test_a_cached_answer_streams_to_the_anthropic_sdk(client):
    """A Messages request in front of an OpenAI deployment is cached like a chat request; the
    repeat, streamed, is the SDK's own accumulated message with the same text."""
    import time
    import uuid

    messages = [{"role": "user", "content": f"cache {uuid.uuid4()}"}]
    extra = {"cache": {"use-cache": True}}
    first = client.messages.create(model="gpt-test", max_tokens=64, messages=messages, extra_body=extra)
    time.sleep(0.2)
    raw = client.messages.with_raw_response.create(model="gpt-test", max_tokens=64, messages=messages, extra_body=extra)
    assert len(raw.headers["x-litellm-cache-key"]) == 64
    assert raw.parse().content[0].text == first.content[0].text
    with client.messages.stream(model="gpt-test", max_tokens=64, messages=messages, extra_body=extra) as s:
        final = s.get_final_message()
    assert final.content[0].text == first.content[0].text
    assert final.stop_reason == first.stop_reason
