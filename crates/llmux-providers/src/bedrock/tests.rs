//! Bedrock translation against recorded traffic (`tests/fixtures/providers/bedrock/`): the
//! stream fixtures are re-framed as AWS event-stream messages, exactly as ConverseStream sends
//! them, before they reach the decoder.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::embed::{self, Family};
use super::request::{build_converse, RESPONSE_FORMAT_TOOL};
use super::stream::BedrockStreamDecoder;
use crate::eventstream::{encode_event, encode_exception, EventStreamSplitter};
use crate::{DecodedEvent, StreamDecoder};
use llmux_types::{ErrorKind, RawObject};

const CLAUDE: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

/// The translated answer as the client reads it, with its usage.
fn translate(
    body: &[u8],
    model: &str,
) -> Result<(Value, llmux_types::Usage), llmux_types::GatewayError> {
    super::response::translate(body, model).map(|c| {
        let usage = c.usage.unwrap_or_default();
        (serde_json::to_value(&c).unwrap(), usage)
    })
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../../tests/fixtures/providers/bedrock/{name}",
        std::env::var("CARGO_MANIFEST_DIR").unwrap()
    ))
    .unwrap()
}

fn converse(request: Value) -> Value {
    let bytes = serde_json::to_vec(&request).unwrap();
    let obj = RawObject::parse(&bytes).unwrap();
    build_converse(&obj, CLAUDE, &Map::new(), false).unwrap()
}

/// Each fixture line (`{"<eventType>": payload}`) as the event-stream message that carried it.
fn framed(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for line in fixture(name).lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap();
        let (kind, payload) = v.as_object().unwrap().iter().next().unwrap();
        out.extend_from_slice(&encode_event(kind, &serde_json::to_vec(payload).unwrap()));
    }
    out
}

/// Run framed bytes through the splitter (in awkward 7-byte reads) and the decoder.
fn decode_all(bytes: &[u8]) -> Vec<DecodedEvent> {
    let mut splitter = EventStreamSplitter::new();
    let mut decoder = BedrockStreamDecoder::new(CLAUDE);
    let mut out = Vec::new();
    for piece in bytes.chunks(7) {
        splitter.push(piece);
        while let Some(message) = splitter.next_message().unwrap() {
            out.push(decoder.decode(message));
        }
    }
    assert!(!splitter.has_remainder());
    out
}

fn payloads(events: &[DecodedEvent]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|e| match e {
            DecodedEvent::Chunk { bytes, .. } => Some(bytes.clone()),
            _ => None,
        })
        .flat_map(|b| {
            String::from_utf8(b.to_vec())
                .unwrap()
                .split("\n\n")
                .filter_map(|e| e.strip_prefix("data: ").map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .filter(|d| d != "[DONE]")
        .map(|d| serde_json::from_str(&d).unwrap())
        .collect()
}

fn joined(chunks: &[Value], field: &str) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"][field].as_str())
        .collect()
}

#[test]
fn request_translates_system_images_tools_results_and_params() {
    let out = converse(json!({
        "model": "m", "temperature": 0.2, "top_p": 0.9, "max_tokens": 300, "stop": "END", "top_k": 5,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "What is this?", "cache_control": {"type": "ephemeral"}},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "tooluse_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "tooluse_1", "content": "sunny"},
            {"role": "user", "content": "thanks"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object"}}}],
        "tool_choice": "required"
    }));
    assert_eq!(out["system"], json!([{"text": "Be brief."}]));
    assert_eq!(
        out["inferenceConfig"],
        json!({"maxTokens": 300, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]})
    );
    assert_eq!(out["additionalModelRequestFields"], json!({"top_k": 5}));
    let messages = out["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "tool result and next user turn merge");
    assert_eq!(
        messages[0]["content"][1],
        json!({"cachePoint": {"type": "default"}})
    );
    assert_eq!(
        messages[0]["content"][2],
        json!({"image": {"format": "jpeg", "source": {"bytes": "/9j/4AAQ"}}})
    );
    assert_eq!(
        messages[1]["content"][0]["toolUse"],
        json!({"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}})
    );
    assert_eq!(
        messages[2]["content"][0]["toolResult"],
        json!({"toolUseId": "tooluse_1", "content": [{"text": "sunny"}]})
    );
    assert_eq!(messages[2]["content"][1], json!({"text": "thanks"}));
    assert_eq!(out["toolConfig"]["toolChoice"], json!({"any": {}}));
    assert_eq!(
        out["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"],
        json!({"json": {"type": "object"}})
    );
    assert!(out.get("model").is_none(), "the model is in the URL");
}

#[test]
fn request_maps_reasoning_json_schema_and_refuses_what_bedrock_lacks() {
    let out = converse(
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
        "reasoning_effort": "low", "max_tokens": 100,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}}}),
    );
    assert_eq!(
        out["additionalModelRequestFields"]["thinking"],
        json!({"type": "enabled", "budget_tokens": 1024})
    );
    assert!(out["inferenceConfig"]["maxTokens"].as_u64().unwrap() > 1024);
    assert_eq!(
        out["toolConfig"]["toolChoice"],
        json!({"tool": {"name": RESPONSE_FORMAT_TOOL}})
    );

    let bytes = serde_json::to_vec(&json!({"model": "m", "messages": [], "seed": 1})).unwrap();
    let obj = RawObject::parse(&bytes).unwrap();
    let err = build_converse(&obj, CLAUDE, &Map::new(), false).unwrap_err();
    assert_eq!(err.body.param.as_deref(), Some("seed"));
    assert!(build_converse(&obj, CLAUDE, &Map::new(), true).is_ok());

    let bytes = serde_json::to_vec(
        &json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}),
    )
    .unwrap();
    let obj = RawObject::parse(&bytes).unwrap();
    let err = build_converse(&obj, CLAUDE, &Map::new(), false).unwrap_err();
    assert_eq!(err.status, 400);
    assert!(err.message().contains("base64"));
}

#[test]
fn litellm_param_defaults_apply() {
    let bytes = serde_json::to_vec(
        &json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 1}),
    )
    .unwrap();
    let obj = RawObject::parse(&bytes).unwrap();
    let mut defaults = Map::new();
    defaults.insert("temperature".into(), json!(0.1));
    defaults.insert("max_tokens".into(), json!(77));
    let out = build_converse(&obj, CLAUDE, &defaults, false).unwrap();
    assert_eq!(out["inferenceConfig"]["temperature"], 1, "the request wins");
    assert_eq!(out["inferenceConfig"]["maxTokens"], 77);
}

#[test]
fn responses_translate_text_reasoning_and_tools() {
    let (v, usage) = translate(fixture("amazon-bedrock-text.json").as_bytes(), CLAUDE).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("**3**"));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (22, 57, 79)
    );

    let (v, _) = translate(fixture("amazon-bedrock-reasoning.json").as_bytes(), CLAUDE).unwrap();
    let message = &v["choices"][0]["message"];
    assert!(message["reasoning_content"]
        .as_str()
        .unwrap()
        .starts_with("Let me count"));
    assert!(message["content"]
        .as_str()
        .unwrap()
        .starts_with("There are **3**"));
    assert!(message["thinking_blocks"][0]["signature"]
        .as_str()
        .unwrap()
        .starts_with("EvYB"));

    let (v, usage) = translate(
        fixture("issue-11363-stop-sequence-null-tool-use.json").as_bytes(),
        CLAUDE,
    )
    .unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["id"], "tooluse_rTk04lpyTTTvtXcoOyVT6p");
    assert_eq!(call["function"]["name"], "weather");
    assert_eq!(
        serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
        json!({"location": "Seattle"})
    );
    assert_eq!(usage.prompt_tokens, 407);

    let (v, _) = translate(
        fixture("amazon-bedrock-tool-call.1.json").as_bytes(),
        CLAUDE,
    )
    .unwrap();
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["id"],
        "tool-use-id"
    );
}

#[test]
fn cache_tokens_and_stop_reasons_map() {
    let body = json!({"output": {"message": {"role": "assistant", "content": [{"text": "x"}]}},
        "stopReason": "guardrail_intervened",
        "usage": {"inputTokens": 10, "outputTokens": 2, "totalTokens": 112, "cacheReadInputTokens": 60, "cacheWriteInputTokens": 40}});
    let (v, usage) = translate(body.to_string().as_bytes(), CLAUDE).unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(usage.prompt_tokens, 110);
    assert_eq!(usage.cached_tokens(), 60);
    let body = json!({"output": {"message": {"role": "assistant", "content": [{"text": "x"}]}}, "stopReason": "max_tokens", "usage": {}});
    let (v, _) = translate(body.to_string().as_bytes(), CLAUDE).unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

#[test]
fn recorded_text_stream_decodes() {
    let events = decode_all(&framed("amazon-bedrock-text.chunks.txt"));
    let chunks = payloads(&events);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text = joined(&chunks, "content");
    assert!(text.starts_with("Let me count the \""), "{text}");
    assert!(text.ends_with("'s in \"strawberry.\""), "{text}");
    let finish: Vec<_> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, ["stop"]);
    let last = events.last().unwrap();
    let DecodedEvent::Chunk { bytes, usage } = last else {
        panic!("{last:?}")
    };
    assert!(bytes.ends_with(b"data: [DONE]\n\n"));
    let usage = usage.as_ref().unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (22, 55));
}

#[test]
fn recorded_reasoning_and_tool_streams_decode() {
    let chunks = payloads(&decode_all(&framed("amazon-bedrock-reasoning.chunks.txt")));
    assert!(joined(&chunks, "reasoning_content").contains("strawberry"));
    assert!(!joined(&chunks, "content").is_empty());

    let chunks = payloads(&decode_all(&framed(
        "amazon-bedrock-redacted-content.chunks.txt",
    )));
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(calls[0]["id"], "call_61f8fcbe423a58699163c53e076f1a06");
    assert_eq!(calls[0]["function"]["name"], "propose");
    let args: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert!(serde_json::from_str::<Value>(&args).is_ok(), "{args}");
    assert!(calls.iter().all(|c| c["index"] == 0));
    let finish: Vec<_> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, ["tool_calls"]);

    let chunks = payloads(&decode_all(&framed(
        "amazon-bedrock-tool-call.1.chunks.txt",
    )));
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert!(serde_json::from_str::<Value>(&args).is_ok(), "{args}");
}

#[test]
fn stream_exceptions_become_classified_errors() {
    let mut decoder = BedrockStreamDecoder::new(CLAUDE);
    let cases = [
        ("throttlingException", ErrorKind::RateLimited),
        ("validationException", ErrorKind::InvalidRequest),
        (
            "serviceUnavailableException",
            ErrorKind::UpstreamUnavailable,
        ),
        ("modelStreamErrorException", ErrorKind::UpstreamError),
    ];
    for (name, kind) in cases {
        let message = encode_exception(name, br#"{"message":"it broke"}"#);
        let DecodedEvent::Error(e) = decoder.decode(message) else {
            panic!("{name}")
        };
        assert_eq!(e.kind, kind, "{name}");
        assert_eq!(e.message(), "it broke");
    }
    let DecodedEvent::Error(e) = decoder.decode(Bytes::from_static(&[
        0, 0, 0, 16, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8,
    ])) else {
        panic!("corrupt message")
    };
    assert_eq!(e.kind, ErrorKind::UpstreamError);
}

#[test]
fn embeddings_translate_for_titan_and_cohere() {
    assert_eq!(
        embed::family("amazon.titan-embed-text-v2:0"),
        Some(Family::Titan)
    );
    assert_eq!(
        embed::family("cohere.embed-english-v3"),
        Some(Family::Cohere)
    );
    assert_eq!(embed::family(CLAUDE), None);

    let bytes =
        serde_json::to_vec(&json!({"model": "m", "input": "hello", "dimensions": 256})).unwrap();
    let obj = RawObject::parse(&bytes).unwrap();
    assert_eq!(
        embed::build(Family::Titan, &obj).unwrap(),
        json!({"inputText": "hello", "dimensions": 256})
    );
    let bytes = serde_json::to_vec(&json!({"model": "m", "input": ["a", "b"]})).unwrap();
    let obj = RawObject::parse(&bytes).unwrap();
    let err = embed::build(Family::Titan, &obj).unwrap_err();
    assert_eq!(err.status, 400);
    assert_eq!(
        embed::build(Family::Cohere, &obj).unwrap(),
        json!({"texts": ["a", "b"], "input_type": "search_document"})
    );

    let (v, usage) = embed::translate(
        Family::Titan,
        br#"{"embedding":[0.1,0.2],"inputTextTokenCount":3}"#,
        "t",
    )
    .unwrap();
    assert_eq!(v["data"][0]["embedding"], json!([0.1, 0.2]));
    assert_eq!(usage.unwrap().prompt_tokens, 3);
    let (v, _) = embed::translate(Family::Cohere, br#"{"embeddings":[[1.0],[2.0]],"id":"x","response_type":"embeddings_floats","texts":["a","b"]}"#, "c").unwrap();
    assert_eq!(v["data"][1]["embedding"], json!([2.0]));
    assert_eq!(v["data"][1]["index"], 1);
    let (v, _) =
        embed::translate(Family::Cohere, br#"{"embeddings":{"float":[[3.0]]}}"#, "c").unwrap();
    assert_eq!(v["data"][0]["embedding"], json!([3.0]));
}

#[test]
fn parallel_tool_calls_stream_with_their_own_indices_and_json_mode_is_a_forced_tool() {
    let mut bytes = Vec::new();
    for (kind, payload) in [
        ("messageStart", json!({"role": "assistant"})),
        (
            "contentBlockStart",
            json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "t1", "name": "a"}}}),
        ),
        (
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": "{\"x\":1}"}}}),
        ),
        ("contentBlockStop", json!({"contentBlockIndex": 0})),
        (
            "contentBlockStart",
            json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t2", "name": "b"}}}),
        ),
        (
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"y\":2}"}}}),
        ),
        ("contentBlockStop", json!({"contentBlockIndex": 1})),
        ("messageStop", json!({"stopReason": "tool_use"})),
    ] {
        bytes.extend_from_slice(&encode_event(kind, payload.to_string().as_bytes()));
    }
    let chunks = payloads(&decode_all(&bytes));
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["id"], "t1");
    assert_eq!(calls[1]["function"]["arguments"], "{\"x\":1}");
    assert_eq!(calls[2]["index"], 1);
    assert_eq!(calls[2]["id"], "t2");
    assert_eq!(calls[3]["index"], 1);

    let out = converse(
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_object"}}),
    );
    assert_eq!(
        out["toolConfig"]["toolChoice"],
        json!({"tool": {"name": RESPONSE_FORMAT_TOOL}})
    );
    assert_eq!(
        out["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"],
        json!({"type": "object"})
    );
}

/// Claude's own stream through InvokeModelWithResponseStream: recorded Anthropic events
/// (`tests/fixtures/providers/anthropic/`), each base64-wrapped in a `chunk` message as Bedrock
/// sends them, come out of the native decoder exactly as the Anthropic decoder marks them from
/// Anthropic's own SSE, and an exception message is a classified error.
#[test]
fn invoke_streams_unwrap_to_anthropic_events() {
    use base64::Engine as _;

    use super::stream::InvokeStreamDecoder;
    use crate::anthropic::stream::AnthropicStreamDecoder;

    let recorded = std::fs::read_to_string(format!(
        "{}/../../tests/fixtures/providers/anthropic/anthropic-clear-thinking.1.chunks.txt",
        std::env::var("CARGO_MANIFEST_DIR").unwrap()
    ))
    .unwrap();
    let mut framed = Vec::new();
    let mut direct = AnthropicStreamDecoder::native();
    let mut expected = Vec::new();
    for line in recorded.lines().filter(|l| !l.trim().is_empty()) {
        let bytes = base64::engine::general_purpose::STANDARD.encode(line);
        let payload = json!({"bytes": bytes, "p": "abcdefghijklmnopq"}).to_string();
        framed.extend_from_slice(&encode_event("chunk", payload.as_bytes()));
        let kind = serde_json::from_str::<Value>(line).unwrap()["type"]
            .as_str()
            .unwrap()
            .to_owned();
        expected.push(direct.decode(Bytes::from(format!("event: {kind}\ndata: {line}\n\n"))));
    }
    let mut splitter = EventStreamSplitter::new();
    let mut decoder = InvokeStreamDecoder::new(AnthropicStreamDecoder::native());
    let mut got = Vec::new();
    for piece in framed.chunks(5) {
        splitter.push(piece);
        while let Some(message) = splitter.next_message().unwrap() {
            got.push(decoder.decode(message));
        }
    }
    assert_eq!(got.len(), expected.len());
    // Chunk ids and timestamps are made per decoder; the marked Anthropic events must match.
    let marks = |events: &[DecodedEvent]| -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                DecodedEvent::Chunk { bytes, .. }
                | DecodedEvent::KeepAlive(bytes)
                | DecodedEvent::Done(bytes) => bytes,
                DecodedEvent::Error(e) => panic!("{e}"),
            })
            .flat_map(|b| {
                String::from_utf8(b.to_vec())
                    .unwrap()
                    .lines()
                    .filter(|l| l.starts_with(": llmux-anthropic"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let (got_marks, expected_marks) = (marks(&got), marks(&expected));
    assert_eq!(
        got_marks.len(),
        recorded.lines().filter(|l| !l.trim().is_empty()).count()
    );
    assert_eq!(got_marks, expected_marks);
    let usage = |events: &[DecodedEvent]| {
        events
            .iter()
            .filter_map(|e| match e {
                DecodedEvent::Chunk { usage, .. } => *usage,
                _ => None,
            })
            .last()
    };
    assert!(usage(&got).is_some());
    assert_eq!(usage(&got), usage(&expected));
    assert!(matches!(got.last(), Some(DecodedEvent::Done(_))));

    let throttled = encode_exception(
        "throttlingException",
        br#"{"message":"Too many requests, please wait before trying again."}"#,
    );
    let mut splitter = EventStreamSplitter::new();
    splitter.push(&throttled);
    let message = splitter.next_message().unwrap().unwrap();
    let DecodedEvent::Error(e) =
        InvokeStreamDecoder::new(AnthropicStreamDecoder::native()).decode(message)
    else {
        panic!("an exception is an error")
    };
    assert_eq!(e.kind, ErrorKind::RateLimited);
}

/// A client's own Messages body for Claude on Bedrock: no `model` or `stream`, Bedrock's
/// `anthropic_version`, the client's betas Bedrock accepts as an `anthropic_beta` list (Claude
/// Code's first-party betas dropped: Bedrock refuses them), everything else as sent and in the
/// client's order; InvokeModel's URLs.
#[test]
fn native_messages_bodies_go_through_invoke_model() {
    use crate::{Provider, RequestContext, NATIVE_ANTHROPIC};
    let client = r#"{"model":"claude","stream":true,"max_tokens":8,"messages":[{"role":"user","content":[{"type":"text","text":"hi","cache_control":{"type":"ephemeral"}}]}],"thinking":{"type":"enabled","budget_tokens":1024}}"#;
    let internal = format!(
        r#"{{"model":"c","stream":true,"messages":[{{"role":"user","content":"hi"}}],"{NATIVE_ANTHROPIC}":{{"body":{client},"beta":"claude-code-20250219, interleaved-thinking-2025-05-14,oauth-2025-04-20,context-1m-2025-08-07"}}}}"#
    );
    let yaml = "model_list:\n  - model_name: c\n    litellm_params: {model: bedrock/us.anthropic.claude-sonnet-4-5-v1:0, aws_access_key_id: AK, aws_secret_access_key: s, aws_region_name: us-east-1}\n";
    let env = std::collections::HashMap::<String, String>::new();
    let config = llmux_config::load_str(yaml, &env).unwrap().config;
    let mut diags = Vec::new();
    let target = super::BedrockTarget::new(
        "us.anthropic.claude-sonnet-4-5-v1:0",
        &config.deployments[0],
        &config,
        &env,
        &mut diags,
    )
    .unwrap();
    assert!(target.speaks_anthropic());
    let ctx = RequestContext {
        wildcard: None,
        drop_params: false,
    };
    let sent = target
        .build_request(
            crate::Operation::Chat,
            &RawObject::parse(internal.as_bytes()).unwrap(),
            ctx,
        )
        .unwrap();
    assert_eq!(
        sent.url,
        "https://bedrock-runtime.us-east-1.amazonaws.com/model/us.anthropic.claude-sonnet-4-5-v1%3A0/invoke-with-response-stream"
    );
    assert_eq!(
        std::str::from_utf8(&sent.body).unwrap(),
        r#"{"max_tokens":8,"messages":[{"role":"user","content":[{"type":"text","text":"hi","cache_control":{"type":"ephemeral"}}]}],"thinking":{"type":"enabled","budget_tokens":1024},"anthropic_version":"bedrock-2023-05-31","anthropic_beta":["interleaved-thinking-2025-05-14","context-1m-2025-08-07"]}"#
    );
    // Without the carried body (another dialect) the same deployment speaks Converse.
    let plain = r#"{"model":"c","messages":[{"role":"user","content":"hi"}]}"#;
    let sent = target
        .build_request(
            crate::Operation::Chat,
            &RawObject::parse(plain.as_bytes()).unwrap(),
            ctx,
        )
        .unwrap();
    assert!(sent.url.ends_with("/converse"), "{}", sent.url);
    // A Llama model is not Claude: it never takes Anthropic's body.
    let mut diags = Vec::new();
    let llama = super::BedrockTarget::new(
        "meta.llama3-70b-instruct-v1:0",
        &config.deployments[0],
        &config,
        &env,
        &mut diags,
    )
    .unwrap();
    assert!(!llama.speaks_anthropic());
}
