//! The Messages dialect against recorded Anthropic traffic (`tests/fixtures/providers/anthropic/`):
//! a recorded answer run through the Anthropic adapter into the internal format and back through
//! this dialect must be the answer Anthropic sent; and a Claude Code-shaped request run through
//! this dialect and the adapter must reach Anthropic as the client sent it.

use bytes::Bytes;
use llmux_providers::anthropic::request::build_body;
use llmux_providers::anthropic::response::translate;
use llmux_providers::anthropic::stream::AnthropicStreamDecoder;
use llmux_providers::{DecodedEvent, StreamDecoder};
use llmux_types::{ErrorKind, GatewayError, RawObject};
use serde_json::{json, Map, Value};

use super::*;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../../tests/fixtures/providers/anthropic/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn recorded_messages_survive_the_round_trip_through_the_internal_format() {
    for name in [
        "anthropic-text.json",
        "anthropic-json-tool.1.json",
        "anthropic-clear-thinking.1.json",
        "anthropic-refusal.json",
    ] {
        let original: Value = serde_json::from_str(&fixture(name)).unwrap();
        let internal = translate(fixture(name).as_bytes()).unwrap();
        let internal = serde_json::to_vec(&internal).unwrap();
        let back: Value = serde_json::from_slice(&message(&internal, None).unwrap()).unwrap();
        assert_eq!(back["type"], "message", "{name}");
        assert_eq!(back["role"], "assistant", "{name}");
        assert_eq!(back["id"], original["id"], "{name}");
        assert_eq!(back["model"], original["model"], "{name}");
        assert_eq!(back["stop_reason"], original["stop_reason"], "{name}");
        for field in [
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        ] {
            assert_eq!(
                back["usage"][field].as_u64().unwrap_or(0),
                original["usage"][field].as_u64().unwrap_or(0),
                "{name}: usage.{field}"
            );
        }
        let blocks = |m: &Value| -> Vec<Value> {
            m["content"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| match b["type"].as_str().unwrap() {
                    "text" => json!({"type": "text", "text": b["text"]}),
                    "thinking" => {
                        json!({"type": "thinking", "thinking": b["thinking"], "signature": b["signature"]})
                    }
                    "tool_use" => {
                        json!({"type": "tool_use", "id": b["id"], "name": b["name"], "input": b["input"]})
                    }
                    _ => b.clone(),
                })
                .collect()
        };
        assert_eq!(blocks(&back), blocks(&original), "{name}");
    }
}

/// What a client assembles from a Messages event stream: event names in order, and per block
/// its start and the concatenation of its deltas.
#[derive(Debug, Default, PartialEq)]
struct Assembled {
    events: Vec<String>,
    blocks: Vec<(Value, String, String, String)>,
    stop_reason: Value,
    output_tokens: Value,
}

fn assemble(events: &[Value]) -> Assembled {
    let mut out = Assembled::default();
    for e in events {
        let kind = e["type"].as_str().unwrap().to_owned();
        match kind.as_str() {
            "content_block_start" => {
                let start = &e["content_block"];
                let summary =
                    json!({"type": start["type"], "id": start["id"], "name": start["name"]});
                out.blocks
                    .push((summary, String::new(), String::new(), String::new()));
            }
            "content_block_delta" => {
                let i = e["index"].as_u64().unwrap() as usize;
                let block = &mut out.blocks[i];
                let d = &e["delta"];
                block.1.push_str(d["text"].as_str().unwrap_or(""));
                block.1.push_str(d["thinking"].as_str().unwrap_or(""));
                block.2.push_str(d["partial_json"].as_str().unwrap_or(""));
                block.3.push_str(d["signature"].as_str().unwrap_or(""));
            }
            "message_delta" => {
                out.stop_reason = e["delta"]["stop_reason"].clone();
                out.output_tokens = e["usage"]["output_tokens"].clone();
            }
            _ => {}
        }
        out.events.push(kind);
    }
    out
}

fn sse_events(bytes: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(bytes).unwrap();
    let mut out = Vec::new();
    for event in text.split("\n\n").filter(|e| !e.trim().is_empty()) {
        let mut name = "";
        let mut data = "";
        for line in event.lines() {
            if let Some(n) = line.strip_prefix("event: ") {
                name = n;
            }
            if let Some(d) = line.strip_prefix("data: ") {
                data = d;
            }
        }
        let value: Value = serde_json::from_str(data).unwrap();
        assert_eq!(value["type"], name, "the event name is the payload's type");
        out.push(value);
    }
    out
}

#[test]
fn recorded_streams_survive_the_round_trip_through_the_internal_format() {
    for name in [
        "anthropic-text.chunks.txt",
        "anthropic-json-tool.1.chunks.txt",
        "anthropic-clear-thinking.1.chunks.txt",
    ] {
        let original: Vec<Value> = fixture(name)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let mut decoder = AnthropicStreamDecoder::default();
        let mut translator = StreamTranslator::new();
        let mut out = Vec::new();
        for event in &original {
            let sse = format!(
                "event: {}\ndata: {event}\n\n",
                event["type"].as_str().unwrap()
            );
            match decoder.decode(Bytes::from(sse)) {
                DecodedEvent::Chunk { bytes, .. } | DecodedEvent::Done(bytes) => {
                    // Fed in two halves: events may arrive split.
                    let mid = bytes.len() / 2;
                    out.extend_from_slice(&translator.feed(&bytes[..mid]));
                    out.extend_from_slice(&translator.feed(&bytes[mid..]));
                }
                DecodedEvent::KeepAlive(_) => {}
                DecodedEvent::Error(e) => panic!("{name}: {e}"),
            }
        }
        out.extend_from_slice(&translator.finish());
        let ours = assemble(&sse_events(&out));
        let theirs = assemble(&original);
        assert_eq!(ours.blocks, theirs.blocks, "{name}");
        assert_eq!(ours.stop_reason, theirs.stop_reason, "{name}");
        assert_eq!(ours.output_tokens, theirs.output_tokens, "{name}");
        assert_eq!(
            ours.events.first().map(String::as_str),
            Some("message_start")
        );
        assert_eq!(ours.events.get(1).map(String::as_str), Some("ping"));
        assert_eq!(
            ours.events[ours.events.len() - 2..],
            ["message_delta".to_owned(), "message_stop".to_owned()],
            "{name}"
        );
        let theirs_without_pings: Vec<&String> =
            theirs.events.iter().filter(|e| *e != "ping").collect();
        let ours_without_pings: Vec<&String> =
            ours.events.iter().filter(|e| *e != "ping").collect();
        assert_eq!(
            ours_without_pings
                .iter()
                .filter(|e| e.as_str() == "content_block_start")
                .count(),
            theirs_without_pings
                .iter()
                .filter(|e| e.as_str() == "content_block_start")
                .count(),
            "{name}"
        );
    }
}

/// The shape Claude Code sends: system blocks with `cache_control`, many tools (the last with
/// `cache_control`), thinking, earlier turns with thinking (signed), tool use and tool results
/// (one an error, one with an image), streaming.
fn claude_code_request() -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "stream": true,
        "temperature": 1,
        "metadata": {"user_id": "user_abc_account_def_session_ghi"},
        "system": [
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Working directory: /repo", "cache_control": {"type": "ephemeral"}}
        ],
        "tools": [
            {"name": "Bash", "description": "Run a command", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}},
            {"name": "Read", "description": "Read a file", "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}},
            {"name": "Edit", "description": "Edit a file", "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}, "old_string": {"type": "string"}, "new_string": {"type": "string"}}}, "cache_control": {"type": "ephemeral"}}
        ],
        "thinking": {"type": "enabled", "budget_tokens": 10000},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "<system-reminder>ctx</system-reminder>"}, {"type": "text", "text": "fix the bug"}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Let me look.", "signature": "EqQBCgIYAhIM1gbcDa"},
                {"type": "text", "text": "I'll read the file."},
                {"type": "tool_use", "id": "toolu_01", "name": "Read", "input": {"file_path": "/repo/a.rs"}},
                {"type": "tool_use", "id": "toolu_02", "name": "Bash", "input": {"command": "ls"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "fn main() {}"},
                {"type": "tool_result", "tool_use_id": "toolu_02", "content": [{"type": "text", "text": "a.rs"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}], "cache_control": {"type": "ephemeral"}}
            ]},
            {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "EmwKAhgBEgy3va"}, {"type": "text", "text": "Done."}]},
            {"role": "user", "content": "thanks"}
        ]
    })
}

#[test]
fn a_claude_code_request_becomes_the_internal_request() {
    let converted = chat_request(claude_code_request().to_string().as_bytes(), None).unwrap();
    assert!(converted.stream);
    assert_eq!(converted.model, "claude-sonnet-4-5");
    let v: Value = serde_json::from_slice(&converted.body).unwrap();
    assert_eq!(v["stream_options"]["include_usage"], true);
    assert_eq!(v["max_tokens"], 32000);
    assert_eq!(v["user"], "user_abc_account_def_session_ghi");
    assert_eq!(v["reasoning_effort"], "high");
    assert_eq!(v["thinking"]["budget_tokens"], 10000);
    let messages = v["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        [
            "system",
            "user",
            "assistant",
            "tool",
            "tool",
            "assistant",
            "user"
        ]
    );
    assert_eq!(
        messages[0]["content"][1]["cache_control"]["type"],
        "ephemeral"
    );
    let calls = messages[2]["tool_calls"].as_array().unwrap();
    assert_eq!(calls[1]["function"]["name"], "Bash");
    assert_eq!(
        serde_json::from_str::<Value>(calls[1]["function"]["arguments"].as_str().unwrap()).unwrap(),
        json!({"command": "ls"})
    );
    assert_eq!(
        messages[2]["thinking_blocks"][0]["signature"],
        "EqQBCgIYAhIM1gbcDa"
    );
    assert_eq!(messages[3]["tool_call_id"], "toolu_01");
    assert_eq!(messages[3]["content"], "fn main() {}");
    assert_eq!(messages[4]["content"][1]["type"], "image_url");
    assert_eq!(v["tools"][2]["function"]["name"], "Edit");
    assert_eq!(v["tools"][2]["cache_control"]["type"], "ephemeral");
}

#[test]
fn a_claude_code_request_reaches_an_anthropic_deployment_as_sent() {
    let original = claude_code_request();
    let converted = chat_request(original.to_string().as_bytes(), None).unwrap();
    let obj = RawObject::parse(&converted.body).unwrap();
    let upstream = build_body(&obj, "claude-sonnet-4-5-20250929", &Map::new(), false).unwrap();
    assert_eq!(upstream["system"], original["system"]);
    assert_eq!(upstream["tools"], original["tools"]);
    assert_eq!(upstream["thinking"], original["thinking"]);
    assert_eq!(upstream["max_tokens"], original["max_tokens"]);
    assert_eq!(
        upstream["metadata"]["user_id"],
        original["metadata"]["user_id"]
    );
    // User text parts may be joined or kept; everything else is block for block the same.
    let sent = original["messages"].as_array().unwrap();
    let got = upstream["messages"].as_array().unwrap();
    assert_eq!(got.len(), sent.len());
    assert_eq!(got[1], sent[1], "thinking (signed), text and tool use");
    assert_eq!(
        got[2], sent[2],
        "tool results, one with an image and cache_control"
    );
    assert_eq!(got[3], sent[3], "redacted thinking");
}

#[test]
fn malformed_requests_get_a_clear_invalid_request_error() {
    for (body, says) in [
        (json!({"max_tokens": 10, "messages": []}), "model"),
        (json!({"model": "m", "messages": []}), "max_tokens"),
        (
            json!({"model": "m", "max_tokens": 0, "messages": []}),
            "max_tokens",
        ),
        (json!({"model": "m", "max_tokens": 10}), "messages"),
        (
            json!({"model": "m", "max_tokens": 10, "messages": [{"role": "system", "content": "x"}]}),
            "role",
        ),
        (
            json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "video"}]}]}),
            "video",
        ),
        (
            json!({"model": "m", "max_tokens": 10, "messages": [], "tool_choice": {"type": "maybe"}}),
            "tool_choice",
        ),
        (
            json!({"model": "m", "max_tokens": 10, "messages": [], "thinking": {"type": "enabled"}}),
            "budget_tokens",
        ),
        (
            json!({"model": "m", "max_tokens": 10, "messages": [], "stop_sequences": "END"}),
            "stop_sequences",
        ),
        (json!([1, 2]), "object"),
    ] {
        let e = chat_request(body.to_string().as_bytes(), None).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRequest, "{body}");
        assert!(e.message().contains(says), "{body}: {}", e.message());
        let wire: Value = serde_json::from_slice(&error_body(&e)).unwrap();
        assert_eq!(wire["type"], "error");
        assert_eq!(wire["error"]["type"], "invalid_request_error");
    }
    assert!(chat_request(b"{not json", None).is_err());
}

#[test]
fn errors_take_anthropic_types() {
    for (kind, status, expected) in [
        (ErrorKind::Authentication, 401, "authentication_error"),
        (ErrorKind::PermissionDenied, 403, "permission_error"),
        (ErrorKind::NotFound, 404, "not_found_error"),
        (ErrorKind::RateLimited, 429, "rate_limit_error"),
        (ErrorKind::BudgetExceeded, 400, "invalid_request_error"),
        (ErrorKind::UpstreamUnavailable, 529, "overloaded_error"),
        (ErrorKind::UpstreamError, 500, "api_error"),
        (ErrorKind::Internal, 500, "api_error"),
    ] {
        let mut e = GatewayError::new(kind, "x");
        e.status = status;
        assert_eq!(error_type(&e), expected, "{kind:?}");
    }
}

#[test]
fn an_error_mid_stream_becomes_an_error_event() {
    let mut t = StreamTranslator::new();
    let mut out = BytesMut::new();
    out.extend_from_slice(&t.feed(b"data: {\"id\":\"chatcmpl-1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n"));
    out.extend_from_slice(&t.feed(
        b"data: {\"error\":{\"message\":\"upstream went away\",\"type\":\"api_error\"}}\n\n",
    ));
    out.extend_from_slice(&t.finish());
    let events = sse_events(&out);
    let names: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "error"
        ]
    );
    assert_eq!(events[4]["error"]["message"], "upstream went away");
}

/// Events an Anthropic deployment sent (marked by the adapter in native mode) go out as they
/// are, whatever the feed's splits; an upstream that closes after its `message_delta` gets only
/// the `message_stop` added (not a second, wrong `message_delta`); and a stream that falls over
/// to another provider mid-way continues in translation with the next block index.
#[test]
fn native_events_pass_as_sent_and_endings_are_not_doubled() {
    let mark = |e: &Value| format!("{}{e}\n\n", llmux_providers::anthropic::stream::NATIVE_MARK);
    let only = |e: &Value| {
        format!(
            "{}{e}\n\n",
            llmux_providers::anthropic::stream::NATIVE_ONLY_MARK
        )
    };
    let start = json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": [], "usage": {"input_tokens": 9, "output_tokens": 1}}});
    let block = json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}});
    let delta = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}});
    let stop = json!({"type": "content_block_stop", "index": 0});
    let end = json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": null}, "usage": {"output_tokens": 7}});
    let translated = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n";
    let stream = [
        mark(&start) + "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n",
        only(&json!({"type": "ping"})),
        only(&block),
        mark(&delta) + translated,
        only(&stop),
        mark(&end)
            + "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
    ]
    .concat();
    let mut t = StreamTranslator::new();
    let mut out = BytesMut::new();
    for piece in stream.as_bytes().chunks(7) {
        out.extend_from_slice(&t.feed(piece));
    }
    out.extend_from_slice(&t.finish());
    let events = sse_events(&out);
    let sent = [
        start,
        json!({"type": "ping"}),
        block,
        delta,
        stop,
        end,
        json!({"type": "message_stop"}),
    ];
    assert_eq!(events, sent, "as sent, with only the stop added");

    // Falling over mid-way: native events, then translated chunks from another provider.
    let mut t = StreamTranslator::new();
    let mut out = BytesMut::new();
    out.extend_from_slice(&t.feed(mark(&sent[0]).as_bytes()));
    out.extend_from_slice(&t.feed(only(&sent[2]).as_bytes()));
    out.extend_from_slice(&t.feed(mark(&sent[3]).as_bytes()));
    out.extend_from_slice(
        &t.feed(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n"),
    );
    out.extend_from_slice(
        &t.feed(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" there\"}}]}\n\n"),
    );
    out.extend_from_slice(&t.feed(b"data: [DONE]\n\n"));
    out.extend_from_slice(&t.finish());
    let events = sse_events(&out);
    let names: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ],
        "{events:?}"
    );
    assert_eq!(events[4]["index"], 1, "the next block index");
    assert_eq!(events[5]["delta"]["text"], " there");
}

/// Answers from providers other than Anthropic, in the shapes they take: content as an array
/// of parts or null, tool arguments that are not an object (a model may write broken JSON; the
/// client still sees it under `_raw`), a `null` usage and error; and a stream whose chunks carry
/// escaped text and a null `error` is translated, not ended.
#[test]
fn unusual_openai_answers_become_valid_messages() {
    let chat = json!({
        "id": "chatcmpl-9", "model": "m", "usage": null,
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
            "content": [{"type": "text", "text": "line \"one\"\n"}, {"type": "text", "text": "two"}],
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "a", "arguments": " {\"x\": [1, 2]}"}},
                {"id": "call_2", "type": "function", "function": {"name": "b", "arguments": "{\"x\": "}},
                {"id": "call_3", "type": "function", "function": {"name": "c", "arguments": "[1]"}},
                {"id": "call_4", "type": "function", "function": {"name": "d", "arguments": ""}}]}}]
    });
    let out: Value =
        serde_json::from_slice(&message(chat.to_string().as_bytes(), None).unwrap()).unwrap();
    assert_eq!(out["id"], "msg_9");
    assert_eq!(out["stop_reason"], "tool_use");
    assert_eq!(
        out["content"][0],
        json!({"type": "text", "text": "line \"one\"\n"})
    );
    assert_eq!(out["content"][1], json!({"type": "text", "text": "two"}));
    assert_eq!(out["content"][2]["input"], json!({"x": [1, 2]}));
    assert_eq!(out["content"][3]["input"], json!({"_raw": "{\"x\": "}));
    assert_eq!(out["content"][4]["input"], json!({"_raw": "[1]"}));
    assert_eq!(out["content"][5]["input"], json!({}));
    assert_eq!(out["content"][5]["type"], "tool_use");
    assert_eq!(out["usage"]["input_tokens"], 0);

    let null_content =
        json!({"id": "x", "choices": [{"message": {"content": null}, "finish_reason": "length"}]});
    let out: Value =
        serde_json::from_slice(&message(null_content.to_string().as_bytes(), None).unwrap())
            .unwrap();
    assert_eq!(out["content"], json!([]));
    assert_eq!(out["stop_reason"], "max_tokens");
    assert!(message(b"[1, 2]", None).is_err(), "not a chat completion");

    let mut t = StreamTranslator::new();
    let mut out = BytesMut::new();
    out.extend_from_slice(&t.feed(b"data: {\"id\":\"c\",\"model\":\"m\",\"error\":null,\"usage\":null,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"say \\\"hi\\\"\\n\"}}]}\n\n"));
    out.extend_from_slice(&t.feed(b"data: [DONE]\n\n"));
    let events = sse_events(&out);
    let names: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(events[3]["delta"]["text"], "say \"hi\"\n");
}

/// Every gateway control (`GATEWAY_PARAMS`) set on a Messages request reaches the internal
/// request, whichever reading ran: the one-pass typed reading, or the member-by-member one (a
/// repeated key sends a request there); both readings give the same internal request.
#[test]
fn gateway_controls_survive_both_readings() {
    let mut body =
        json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    for (i, param) in llmux_providers::GATEWAY_PARAMS
        .iter()
        .filter(|p| **p != llmux_providers::NATIVE_ANTHROPIC)
        .enumerate()
    {
        body[*param] = json!([format!("v{i}")]);
    }
    let typed = chat_request(body.to_string().as_bytes(), None).unwrap();
    let typed: Value = serde_json::from_slice(&typed.body).unwrap();
    for (i, param) in llmux_providers::GATEWAY_PARAMS
        .iter()
        .filter(|p| **p != llmux_providers::NATIVE_ANTHROPIC)
        .enumerate()
    {
        assert_eq!(typed[*param], json!([format!("v{i}")]), "{param}");
    }
    // A repeated key: serde's derive refuses it, the checked reading keeps the last value.
    let text = body.to_string();
    let repeated = format!("{{\"model\":\"first\",{}", &text[1..]);
    let checked = chat_request(repeated.as_bytes(), None).unwrap();
    assert_eq!(checked.model, "m");
    let mut checked: Value = serde_json::from_slice(&checked.body).unwrap();
    checked[llmux_providers::NATIVE_ANTHROPIC] = typed[llmux_providers::NATIVE_ANTHROPIC].clone();
    assert_eq!(checked, typed);
}

/// An OpenAI-compatible server that sends a surprising type in one field does not cost the
/// chunk or the answer: a null usage counter, `choices: null`, content as an array in a delta,
/// tool arguments sent as an object (kept as their JSON text), and the finish reason still
/// reaches the client as `stop_reason`.
#[test]
fn surprising_field_types_cost_only_that_field() {
    let mut t = StreamTranslator::new();
    let mut out = BytesMut::new();
    out.extend_from_slice(&t.feed(b"data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":[{\"type\":\"text\",\"text\":\"x\"}],\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"function\":{\"name\":\"f\",\"arguments\":{\"a\":1}}}]}}]}\n\n"));
    out.extend_from_slice(&t.feed(b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}],\"usage\":{\"prompt_tokens\":null,\"completion_tokens\":3}}\n\n"));
    out.extend_from_slice(&t.feed(b"data: {\"id\":\"c\",\"choices\":null,\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":3,\"total_tokens\":7}}\n\n"));
    out.extend_from_slice(&t.feed(b"data: [DONE]\n\n"));
    let events = sse_events(&out);
    let json_delta = events
        .iter()
        .find(|e| e["delta"]["type"] == "input_json_delta")
        .unwrap();
    assert_eq!(json_delta["delta"]["partial_json"], "{\"a\":1}");
    let end = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .unwrap();
    assert_eq!(end["delta"]["stop_reason"], "tool_use");
    assert_eq!(end["usage"]["output_tokens"], 3);
    assert_eq!(end["usage"]["input_tokens"], 4);

    let answer = json!({"id": "x", "choices": null});
    let m: Value =
        serde_json::from_slice(&message(answer.to_string().as_bytes(), None).unwrap()).unwrap();
    assert_eq!(m["content"], json!([]));
}
