"""The OpenAI Responses API (`/v1/responses`) through the official OpenAI Python SDK, in front of
every provider family: text, streams (the SDK's own event accumulation, which checks ids and
order), function calls and their outputs over `previous_response_id`, JSON schema output,
reasoning effort, stored responses (retrieve, input items, delete), and the error classes."""

import json

import openai
import pytest

from conftest import MASTER_KEY, PROVIDERS
from test_governance import admin

TEXT = "".join(f"tok{i} " for i in range(20))
TOOLS = [{"type": "function", "name": "get_weather", "description": "weather",
          "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}]


@pytest.fixture
def client(gateway_url):
    return openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=MASTER_KEY, max_retries=0)


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_text_stream_tools_schema_and_chains(client, provider):
    model = f"p-{provider}"
    r = client.responses.create(model=model, input="Hello", instructions="Be brief.")
    assert r.status == "completed"
    assert r.output_text == TEXT
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0

    with client.responses.stream(model=model, input="Hello") as stream:
        deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert deltas == TEXT
    assert final.output_text == TEXT and final.status == "completed"

    r = client.responses.create(model=model, input="Weather in Paris?", tools=TOOLS, tool_choice="required")
    call = next(o for o in r.output if o.type == "function_call")
    assert call.name == "get_weather" and json.loads(call.arguments) == {"location": "Paris"}
    follow = client.responses.create(model=model, previous_response_id=r.id, tools=TOOLS,
                                     input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}])
    assert follow.output_text == TEXT
    assert follow.previous_response_id == r.id

    with client.responses.stream(model=model, input="Weather?", tools=TOOLS, tool_choice="required") as stream:
        final = stream.get_final_response()
    call = next(o for o in final.output if o.type == "function_call")
    assert json.loads(call.arguments) == {"location": "Paris"}

    r = client.responses.create(model=model, input="Where?", text={"format": {
        "type": "json_schema", "name": "place", "strict": True,
        "schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"],
                   "additionalProperties": False}}})
    assert json.loads(r.output_text) == {"location": "Paris"}

    r = client.responses.create(model=model, input="Hello", reasoning={"effort": "low"})
    assert r.output_text == TEXT
    assert r.output[0].type == "reasoning"
    assert r.output[0].summary[0].text == "Thinking it over."
    if provider in ("openai", "azure", "azure-entra"):
        # The mock streams reasoning deltas on its OpenAI emulation.
        with client.responses.stream(model=model, input="Hello", reasoning={"effort": "low"}) as stream:
            final = stream.get_final_response()
        assert final.output_text == TEXT
        assert final.output[0].type == "reasoning"
        assert final.output[0].summary[0].text == "Thinking it over."


def test_stored_responses_chain_and_belong_to_their_key(client, gateway_url):
    first = client.responses.create(model="p-openai", input="My name is Ada.")
    again = client.responses.retrieve(first.id)
    assert again.id == first.id and again.output_text == TEXT
    items = client.responses.input_items.list(first.id)
    assert [i.type for i in items.data] == ["message"]
    assert items.data[0].content[0].text == "My name is Ada."
    second = client.responses.create(model="p-openai", input="What is my name?", previous_response_id=first.id)
    assert second.output_text == TEXT

    key = admin(gateway_url, "/key/generate", {})["key"]
    other = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model="p-openai", input="hi", previous_response_id=first.id)
    mine = other.responses.create(model="p-openai", input="hi")
    assert other.responses.retrieve(mine.id).id == mine.id

    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    unstored = client.responses.create(model="p-openai", input="hi", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_errors_raise_the_sdk_classes(client):
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="hi")
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="p-openai", input="hi", tools=[{"type": "web_search"}])
    assert "web_search" in e.value.message
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="p-openai", input="hi", previous_response_id="resp_missing")
