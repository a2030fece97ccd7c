"""The official OpenAI Python SDK against llmux: every call it makes must just work, and every
error must surface as the SDK's own exception class."""

import asyncio
import json

import openai
import pytest

from conftest import MASTER_KEY

MESSAGES = [{"role": "user", "content": "Say something"}]
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}]


@pytest.fixture
def client(gateway_url):
    return openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=MASTER_KEY, max_retries=0)


@pytest.fixture
def aclient(gateway_url):
    return openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key=MASTER_KEY, max_retries=0)


def test_sync_chat(client):
    r = client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.startswith("tok0 tok1")
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > 0


def test_chat_response_headers(client):
    raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
    assert raw.headers["x-llmux-model-group"] == "gpt-test"
    assert raw.headers["x-litellm-model-group"] == "gpt-test"
    assert raw.headers["x-ratelimit-remaining-requests"] == "9999"
    assert float(raw.headers["x-llmux-overhead-ms"]) >= 0
    assert raw.parse().choices[0].message.content


def test_in_process_demo_model(client):
    r = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "ping"}])
    assert r.choices[0].message.content.endswith("You said: ping")


def test_async_chat(aclient):
    async def run():
        results = await asyncio.gather(*[
            aclient.chat.completions.create(model="gpt-test", messages=MESSAGES) for _ in range(10)
        ])
        return [r.choices[0].message.content for r in results]

    texts = asyncio.run(run())
    assert len(texts) == 10 and all(t.startswith("tok0") for t in texts)


def test_streaming_with_usage(client):
    stream = client.chat.completions.create(
        model="gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
        extra_body={"mock_options": {"chunks": 50}},
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == "".join(f"tok{i} " for i in range(50))
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 50


def test_long_stream(client):
    stream = client.chat.completions.create(
        model="gpt-test", messages=MESSAGES, stream=True, extra_body={"mock_options": {"chunks": 2000}},
    )
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) == 2000
    assert pieces[-1] == "tok1999 "


def test_async_streaming(aclient):
    async def run():
        stream = await aclient.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
        text = ""
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
        return text

    assert asyncio.run(run()).startswith("tok0 tok1")


def test_stream_helper_accumulates(client):
    with client.chat.completions.stream(model="gpt-test", messages=MESSAGES) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content.startswith("tok0")


def test_tools(client):
    r = client.chat.completions.create(model="gpt-test", messages=MESSAGES, tools=TOOLS, tool_choice="required")
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris"}


def test_streamed_tool_calls(client):
    stream = client.chat.completions.create(model="gpt-test", messages=MESSAGES, tools=TOOLS, tool_choice="required", stream=True)
    name, args, finish = None, "", None
    for chunk in stream:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                name = tc.function.name or name
                args += tc.function.arguments or ""
            finish = choice.finish_reason or finish
    assert name == "get_weather"
    assert json.loads(args) == {"location": "Paris"}
    assert finish == "tool_calls"


def test_tool_result_round_trip_passes_through(client):
    messages = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    r = client.chat.completions.create(model="gpt-test", messages=messages, tools=TOOLS)
    assert r.choices[0].message.content


def test_response_format_and_logprobs_and_images_pass_through(client):
    r = client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ]}],
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        logprobs=True, top_logprobs=2, n=1, seed=7,
    )
    assert r.choices[0].message.content


def test_completions(client):
    r = client.completions.create(model="gpt-test", prompt="Say hi", max_tokens=5)
    assert r.choices[0].text.startswith("tok0")


def test_embeddings_default_base64_is_decoded(client):
    r = client.embeddings.create(model="embed", input="hello")
    assert len(r.data) == 1
    assert len(r.data[0].embedding) == 4
    assert all(isinstance(x, float) for x in r.data[0].embedding)


def test_embeddings_float_and_batches(client):
    r = client.embeddings.create(model="embed", input=["a", "b", "c"], encoding_format="float")
    assert [d.index for d in r.data] == [0, 1, 2]
    r = client.embeddings.create(model="embed", input=[[1, 2, 3], [4, 5]])
    assert len(r.data) == 2
    r = client.embeddings.create(model="demo", input="in-process")
    assert len(r.data[0].embedding) == 8


def test_models(client):
    ids = [m.id for m in client.models.list()]
    assert {"gpt-test", "embed", "demo"} <= set(ids)
    assert client.models.retrieve("gpt-test").id == "gpt-test"


def test_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert e.value.status_code == 404
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_authentication_error(gateway_url):
    bad = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert e.value.status_code == 401


def test_rate_limit_error(client):
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES, extra_body={"mock_options": {"status": 429, "retry_after": "3"}})
    assert e.value.status_code == 429
    assert e.value.response.headers["retry-after"] == "3"
    assert e.value.code == "rate_limit_exceeded"


def test_bad_request_error(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-test", messages=[])
    assert e.value.status_code == 400
    assert e.value.param == "messages"
    body = '{"error":{"message":"maximum context length exceeded","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}'
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES, extra_body={"mock_options": {"status": 400, "error_body": body}})
    assert e.value.code == "context_length_exceeded"


def test_server_errors_are_api_status_errors(client):
    for status in (500, 503):
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model="gpt-test", messages=MESSAGES, extra_body={"mock_options": {"status": status}})
        assert e.value.status_code == status
        assert isinstance(e.value, openai.InternalServerError)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="dead", messages=MESSAGES)
    assert e.value.status_code == 502


def test_error_event_inside_a_stream_raises(client):
    stream = client.chat.completions.create(
        model="gpt-test", messages=MESSAGES, stream=True, extra_body={"mock_options": {"error_event_after": 3}},
    )
    received = []
    with pytest.raises(openai.APIError) as e:
        for chunk in stream:
            for choice in chunk.choices:
                received.append(choice.delta.content or "")
    assert "mock error inside the stream" in str(e.value)
    assert "".join(received) == "tok0 tok1 tok2 "


def test_anthropic_deployment_through_the_openai_sdk(client):
    r = client.chat.completions.create(model="claude", messages=MESSAGES)
    assert r.choices[0].message.content.startswith("tok0")
    stream = client.chat.completions.create(model="claude", messages=MESSAGES, tools=TOOLS, tool_choice="required", stream=True)
    args, finish = "", None
    for chunk in stream:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                args += tc.function.arguments or ""
            finish = choice.finish_reason or finish
    assert json.loads(args) == {"location": "Paris"}
    assert finish == "tool_calls"


def test_cached_answers_reach_the_sdk_as_json_and_as_a_replayed_stream(client):
    """A repeat answered by the gateway's cache (opted into per request) reads as a live answer,
    and a cached JSON answer replayed as a stream reads as a live stream, usage chunk included."""
    import time
    import uuid

    prompt = [{"role": "user", "content": f"cache me {uuid.uuid4()}"}]
    extra = {"cache": {"use-cache": True}}
    first = client.chat.completions.with_raw_response.create(model="gpt-test", messages=prompt, extra_body=extra)
    assert "x-litellm-cache-key" not in first.headers
    answer = first.parse()
    time.sleep(0.2)
    again = client.chat.completions.with_raw_response.create(model="gpt-test", messages=prompt, extra_body=extra)
    assert len(again.headers["x-litellm-cache-key"]) == 64
    assert again.headers["x-litellm-response-cost"] == "0"
    assert again.parse().choices[0].message.content == answer.choices[0].message.content
    stream = client.chat.completions.create(model="gpt-test", messages=prompt, extra_body=extra, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.choices[0].message.content
    assert chunks[-1].usage.total_tokens == answer.usage.total_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
