"""The provider conformance suite through the official OpenAI Python SDK: every native adapter
(and the OpenAI-compatible baseline) answers text, streams, tools, streamed tools, vision, JSON
schema output and reasoning, embeds where the provider does, and turns each upstream failure into
the SDK's own exception class."""

import json
import urllib.request

import openai
import pytest

from conftest import MASTER_KEY, PROVIDERS

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
          "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
TEXT = "".join(f"tok{i} " for i in range(20))


@pytest.fixture
def client(gateway_url):
    return openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=MASTER_KEY, max_retries=0)


def set_mock_defaults(mock_url: str, knobs: dict) -> None:
    request = urllib.request.Request(f"{mock_url}/mock/defaults", data=json.dumps(knobs).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=5).read()


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_text_and_stream(client, provider):
    model = f"p-{provider}"
    r = client.chat.completions.create(model=model, messages=MESSAGES)
    assert r.choices[0].message.content == TEXT
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0

    text, usage = "", None
    for chunk in client.chat.completions.create(model=model, messages=MESSAGES, stream=True,
                                                stream_options={"include_usage": True}):
        for choice in chunk.choices:
            text += choice.delta.content or ""
        usage = chunk.usage or usage
    assert text == TEXT
    assert usage is not None and usage.completion_tokens > 0


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_tools_and_streamed_tools(client, provider):
    model = f"p-{provider}"
    r = client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS, tool_choice="required")
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris"}

    args, finish = "", None
    with client.chat.completions.stream(model=model, messages=MESSAGES, tools=TOOLS, tool_choice="required") as stream:
        for event in stream:
            pass
        final = stream.get_final_completion()
    args = final.choices[0].message.tool_calls[0].function.arguments
    finish = final.choices[0].finish_reason
    assert json.loads(args) == {"location": "Paris"}
    assert finish == "tool_calls"


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_vision_json_schema_and_reasoning(client, provider):
    model = f"p-{provider}"
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}])
    assert r.choices[0].message.content == TEXT

    schema = {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"],
              "additionalProperties": False}
    r = client.chat.completions.create(model=model, messages=MESSAGES, response_format={
        "type": "json_schema", "json_schema": {"name": "place", "strict": True, "schema": schema}})
    assert json.loads(r.choices[0].message.content) == {"location": "Paris"}
    assert r.choices[0].finish_reason == "stop"

    r = client.chat.completions.create(model=model, messages=MESSAGES, reasoning_effort="low")
    assert r.choices[0].message.model_extra.get("reasoning_content") == "Thinking it over."
    assert r.choices[0].message.content == TEXT


@pytest.mark.parametrize("provider", [p for p, (_, embed) in PROVIDERS.items() if embed is not None])
def test_embeddings(client, provider):
    r = client.embeddings.create(model=f"p-{provider}-embed", input=["a", "b"], encoding_format="float")
    assert [d.index for d in r.data] == [0, 1]
    assert len(r.data[1].embedding) > 1


ERRORS = [
    (400, "messages: field required", openai.BadRequestError),
    (401, "invalid credentials", openai.AuthenticationError),
    (403, "not allowed to use this model", openai.PermissionDeniedError),
    (429, "slow down", openai.RateLimitError),
    (500, "internal failure", openai.InternalServerError),
    (503, "overloaded, try later", openai.InternalServerError),
]


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_errors_raise_the_sdk_exceptions(client, mock_url, provider):
    try:
        for status, message, exception in ERRORS:
            body = json.dumps({"error": {"message": message, "type": "x", "param": None, "code": None}})
            set_mock_defaults(mock_url, {"status": status, "error_body": body})
            with pytest.raises(exception) as e:
                client.chat.completions.create(model=f"p-{provider}", messages=MESSAGES)
            assert e.value.status_code == status
            assert message in str(e.value)
        body = json.dumps({"error": {"message": "prompt is too long: 208310 tokens > 200000 maximum", "type": "x"}})
        set_mock_defaults(mock_url, {"status": 400, "error_body": body})
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=f"p-{provider}", messages=MESSAGES)
        assert e.value.code == "context_length_exceeded"
    finally:
        set_mock_defaults(mock_url, {})
