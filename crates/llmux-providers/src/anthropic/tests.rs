//! Anthropic translation against recorded traffic (`tests/fixtures/providers/anthropic/`)
//! and documented request shapes.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::request::{build_body, DEFAULT_MAX_TOKENS, RESPONSE_FORMAT_TOOL};
use super::stream::AnthropicStreamDecoder;
use crate::{DecodedEvent, StreamDecoder};
use llmux_types::RawObject;

/// The translated answer as the client reads it, with its usage.
fn translate(body: &[u8]) -> Result<(Value, llmux_types::Usage), llmux_types::GatewayError> {
    super::response::translate(body).map(|c| {
        let usage = c.usage.unwrap_or_default();
        (serde_json::to_value(&c).unwrap(), usage)
    })
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../../tests/fixtures/providers/anthropic/{name}",
        std::env::var("CARGO_MANIFEST_DIR").unwrap()
    ))
    .unwrap()
}

fn body(request: Value) -> Value {
    let bytes = serde_json::to_vec(&request).unwrap();
    let obj = RawObject::parse(&bytes).unwrap();
    build_body(&obj, "claude-sonnet-4-5", &Map::new(), false).unwrap()
}

#[test]
fn request_translates_system_images_tools_and_results() {
    let out = body(json!({
        "model": "claude", "temperature": 0.2, "stop": "END", "user": "u1",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
            {"role": "user", "content": "thanks"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object"}}}],
        "tool_choice": "required", "parallel_tool_calls": false
    }));
    assert_eq!(out["system"], "Be brief.");
    assert_eq!(out["max_tokens"], DEFAULT_MAX_TOKENS);
    assert_eq!(out["stop_sequences"], json!(["END"]));
    assert_eq!(out["metadata"]["user_id"], "u1");
    let messages = out["messages"].as_array().unwrap();
    assert_eq!(
        messages.len(),
        3,
        "tool result and the next user turn merge into one user message"
    );
    assert_eq!(
        messages[0]["content"][1]["source"],
        json!({"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="})
    );
    assert_eq!(messages[0]["content"][2]["source"]["type"], "url");
    assert_eq!(
        messages[1]["content"][0],
        json!({"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}})
    );
    assert_eq!(messages[2]["content"][0]["type"], "tool_result");
    assert_eq!(messages[2]["content"][1]["text"], "thanks");
    assert_eq!(out["tools"][0]["input_schema"], json!({"type": "object"}));
    assert_eq!(
        out["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
}

#[test]
fn request_maps_reasoning_json_schema_and_refuses_unsupported_params() {
    let out = body(
        json!({"model": "c", "messages": [{"role": "user", "content": "x"}], "reasoning_effort": "low", "max_tokens": 100}),
    );
    assert_eq!(
        out["thinking"],
        json!({"type": "enabled", "budget_tokens": 1024})
    );
    assert!(
        out["max_tokens"].as_u64().unwrap() > 1024,
        "max_tokens must exceed the thinking budget"
    );
    let out = body(
        json!({"model": "c", "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "number"}}}}}}),
    );
    assert_eq!(out["tool_choice"]["name"], RESPONSE_FORMAT_TOOL);
    let out = body(
        json!({"model": "c", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}),
    );
    assert_eq!(
        out["tool_choice"]["name"], RESPONSE_FORMAT_TOOL,
        "JSON mode"
    );
    assert_eq!(out["tools"][0]["input_schema"], json!({"type": "object"}));
    let bytes = serde_json::to_vec(&json!({"model": "c", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 1}})).unwrap();
    let obj = RawObject::parse(&bytes).unwrap();
    let e = build_body(&obj, "c", &Map::new(), false).unwrap_err();
    assert_eq!(e.body.param.as_deref(), Some("logit_bias"));
    assert!(build_body(&obj, "c", &Map::new(), true)
        .unwrap()
        .get("logit_bias")
        .is_none());
}

#[test]
fn recorded_responses_translate() {
    let (out, usage) = translate(fixture("anthropic-text.json").as_bytes()).unwrap();
    assert!(out["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("Hello! I'm doing well"));
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (12, 29, 41)
    );

    let (out, _) = translate(fixture("anthropic-json-tool.1.json").as_bytes()).unwrap();
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    let call = &out["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args.is_object());

    let (out, _) = translate(fixture("anthropic-clear-thinking.1.json").as_bytes()).unwrap();
    assert_eq!(
        out["choices"][0]["message"]["reasoning_content"],
        "925 divided by 5 = 185"
    );
    assert_eq!(out["choices"][0]["message"]["content"], "925 ÷ 5 = 185");

    let (out, _) = translate(fixture("anthropic-refusal.json").as_bytes()).unwrap();
    assert_eq!(out["choices"][0]["finish_reason"], "content_filter");
}

/// Run a recorded stream through the decoder; returns (content, reasoning, tool args, finish,
/// usage) as the client would assemble them.
fn replay(
    name: &str,
) -> (
    String,
    String,
    String,
    Option<String>,
    Option<llmux_types::Usage>,
    bool,
) {
    let mut decoder = AnthropicStreamDecoder::default();
    let (mut content, mut reasoning, mut args, mut finish, mut usage, mut done) = (
        String::new(),
        String::new(),
        String::new(),
        None,
        None,
        false,
    );
    for line in fixture(name).lines().filter(|l| !l.trim().is_empty()) {
        let kind = serde_json::from_str::<Value>(line).unwrap()["type"]
            .as_str()
            .unwrap()
            .to_owned();
        let event = Bytes::from(format!("event: {kind}\ndata: {line}\n\n"));
        match decoder.decode(event) {
            DecodedEvent::Chunk { bytes, usage: u } => {
                let text = std::str::from_utf8(&bytes).unwrap();
                let v: Value =
                    serde_json::from_str(text.strip_prefix("data: ").unwrap().trim_end()).unwrap();
                assert_eq!(v["object"], "chat.completion.chunk");
                let delta = &v["choices"][0]["delta"];
                content.push_str(delta["content"].as_str().unwrap_or(""));
                reasoning.push_str(delta["reasoning_content"].as_str().unwrap_or(""));
                if let Some(calls) = delta["tool_calls"].as_array() {
                    args.push_str(calls[0]["function"]["arguments"].as_str().unwrap_or(""));
                }
                if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
                    finish = Some(f.to_owned());
                }
                if u.is_some() {
                    usage = u;
                }
            }
            DecodedEvent::Done(_) => done = true,
            DecodedEvent::KeepAlive(_) => {}
            DecodedEvent::Error(e) => panic!("{name}: {e}"),
        }
    }
    (content, reasoning, args, finish, usage, done)
}

#[test]
fn recorded_streams_translate() {
    let (content, _, _, finish, usage, done) = replay("anthropic-text.chunks.txt");
    assert!(!content.is_empty());
    assert_eq!(finish.as_deref(), Some("stop"));
    assert!(usage.unwrap().completion_tokens > 0);
    assert!(done);

    let (_, _, args, finish, usage, _) = replay("anthropic-json-tool.1.chunks.txt");
    let parsed: Value = serde_json::from_str(&args).unwrap();
    assert_eq!(parsed["elements"][0]["location"], "San Francisco");
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    let usage = usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (849, 47));

    let (content, reasoning, _, finish, _, _) = replay("anthropic-clear-thinking.1.chunks.txt");
    assert!(
        !reasoning.is_empty(),
        "thinking deltas become reasoning_content"
    );
    assert!(!content.is_empty());
    assert_eq!(finish.as_deref(), Some("stop"));

    let (_, _, _, finish, _, _) = replay("anthropic-refusal.chunks.txt");
    assert_eq!(finish.as_deref(), Some("content_filter"));
}

#[test]
fn stream_error_events_become_errors() {
    let mut decoder = AnthropicStreamDecoder::default();
    let event = Bytes::from_static(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
    let DecodedEvent::Error(e) = decoder.decode(event) else {
        panic!("expected an error")
    };
    assert_eq!(e.kind, llmux_types::ErrorKind::UpstreamUnavailable);
}
