//! Bedrock translation against recorded traffic (`tests/fixtures/providers/bedrock/`): the
//! stream fixtures are re-framed as AWS event-stream messages, exactly as ConverseStream sends
//! them, before they reach the decoder.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::embed::{self, Family};
use super::request::{build_converse, RESPONSE_FORMAT_TOOL};
use super::response::translate;
use super::stream::BedrockStreamDecoder;
use crate::eventstream::{encode_event, encode_exception, EventStreamSplitter};
use crate::{DecodedEvent, StreamDecoder};
use llmux_types::{ErrorKind, RawObject};

const CLAUDE: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

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
