//! The Responses dialect: requests into the internal chat request, and recorded OpenAI chat
//! traffic (`tests/fixtures/providers/openai/`) out as a Response object and its typed events.

use serde_json::{json, Value};

use super::*;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../../tests/fixtures/providers/openai/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn items_instructions_tools_and_formats_become_the_chat_request() {
    let history = vec![
        json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]}),
        json!({"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}),
        json!({"type": "function_call", "id": "fc_2", "call_id": "call_2", "name": "get_time", "arguments": "{}"}),
    ];
    let body = json!({
        "model": "m",
        "instructions": "Be brief.",
        "input": [
            {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
            {"type": "function_call_output", "call_id": "call_2", "output": "noon"},
            {"role": "user", "content": [{"type": "input_text", "text": "And this?"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}]}
        ],
        "tools": [{"type": "function", "name": "get_weather", "description": "w", "parameters": {"type": "object"}, "strict": true}],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "text": {"format": {"type": "json_schema", "name": "place", "schema": {"type": "object"}, "strict": true}},
        "reasoning": {"effort": "low"},
        "max_output_tokens": 500,
        "temperature": 0.2,
        "metadata": {"k": "v"},
        "store": false,
        "stream": true
    });
    let r = chat_request(body.to_string().as_bytes(), &history).unwrap();
    assert!(r.stream && !r.store);
    assert_eq!(r.input_items.len(), 3);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    let roles: Vec<&str> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["system", "user", "assistant", "tool", "tool", "user"]
    );
    assert_eq!(
        v["messages"][2]["tool_calls"].as_array().unwrap().len(),
        2,
        "one turn's calls in one message"
    );
    assert_eq!(v["messages"][3]["tool_call_id"], "call_1");
    assert_eq!(v["messages"][5]["content"][1]["image_url"]["detail"], "low");
    assert_eq!(v["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(v["tools"][0]["function"]["strict"], true);
    assert_eq!(
        v["tool_choice"],
        json!({"type": "function", "function": {"name": "get_weather"}})
    );
    assert_eq!(v["response_format"]["json_schema"]["name"], "place");
    assert_eq!(v["reasoning_effort"], "low");
    assert_eq!(v["max_completion_tokens"], 500);
    assert_eq!(v["stream_options"]["include_usage"], true);
    assert!(v.get("metadata").is_none(), "echoed, not sent upstream");
    assert_eq!(r.echo["metadata"], json!({"k": "v"}));
}

#[test]
fn bad_requests_are_refused_clearly() {
    for (body, says) in [
        (json!({"input": "hi"}), "model"),
        (json!({"model": "m"}), "input"),
        (json!({"model": "m", "input": 5}), "input"),
        (
            json!({"model": "m", "input": "hi", "tools": [{"type": "web_search"}]}),
            "web_search",
        ),
        (
            json!({"model": "m", "input": [{"type": "computer_call"}]}),
            "computer_call",
        ),
        (
            json!({"model": "m", "input": [{"role": "tool", "content": "x"}]}),
            "role",
        ),
        (
            json!({"model": "m", "input": "hi", "max_output_tokens": 0}),
            "max_output_tokens",
        ),
    ] {
        let e = chat_request(body.to_string().as_bytes(), &[]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRequest, "{body}");
        assert!(e.message().contains(says), "{body}: {}", e.message());
    }
}

fn shell() -> Shell {
    let r = chat_request(
        br#"{"model": "gpt-4o", "input": "hi", "metadata": {"a": "b"}}"#,
        &[],
    )
    .unwrap();
    Shell::new(&r)
}

#[test]
fn a_chat_answer_becomes_a_response_object() {
    let chat = json!({"id": "chatcmpl-1", "model": "gpt-4o", "choices": [{"index": 0, "finish_reason": "tool_calls",
        "message": {"role": "assistant", "content": "Let me check.", "reasoning_content": "thinking",
            "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "prompt_tokens_details": {"cached_tokens": 4}}});
    let shell = shell();
    let (body, output) = response(chat.to_string().as_bytes(), &shell, None).unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "response");
    assert_eq!(v["id"], json!(shell.id));
    assert!(v["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(v["status"], "completed");
    assert_eq!(v["metadata"], json!({"a": "b"}));
    let kinds: Vec<&str> = v["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["reasoning", "message", "function_call"]);
    assert_eq!(v["output"][1]["content"][0]["text"], "Let me check.");
    assert_eq!(v["output"][2]["call_id"], "call_9");
    assert_eq!(v["output"][2]["arguments"], "{\"city\":\"Paris\"}");
    assert_eq!(v["usage"]["input_tokens"], 10);
    assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 4);
    assert_eq!(v["usage"]["output_tokens"], 5);
    assert_eq!(output.len(), 3);

    let cut = json!({"choices": [{"finish_reason": "length", "message": {"content": "par"}}]});
    let (body, _) = response(cut.to_string().as_bytes(), &shell, None).unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["status"], "incomplete");
    assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
}

fn events(bytes: &[u8]) -> Vec<Value> {
    std::str::from_utf8(bytes)
        .unwrap()
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap();
            let data: Value =
                serde_json::from_str(e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap())
                    .unwrap();
            assert_eq!(data["type"], name);
            data
        })
        .collect()
}

/// A recorded OpenAI stream (text, then a tool call, then usage) as Responses events: the
/// documented order, ids consistent from `added` to `done` to `completed`, sequence numbers
/// counting up, and the text and arguments the chat stream carried.
#[test]
fn a_recorded_chat_stream_becomes_typed_events() {
    let mut t = StreamTranslator::new(shell());
    let mut out = Vec::new();
    let mut text = String::new();
    let mut args = String::new();
    for line in fixture("issue-15789-step-1.chunks.txt")
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let chunk: Value = serde_json::from_str(line).unwrap();
        text.push_str(
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or(""),
        );
        if let Some(calls) = chunk["choices"][0]["delta"]["tool_calls"].as_array() {
            args.push_str(calls[0]["function"]["arguments"].as_str().unwrap_or(""));
        }
        out.extend_from_slice(&t.feed(format!("data: {line}\n\n").as_bytes()));
    }
    out.extend_from_slice(&t.feed(b"data: [DONE]\n\n"));
    out.extend_from_slice(&t.finish());
    let events = events(&out);
    let names: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        names
            .iter()
            .filter(|n| !n.ends_with(".delta"))
            .copied()
            .collect::<Vec<_>>(),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], i as u64);
    }
    let streamed: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, text);
    let done = &events[events.len() - 1]["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["id"], events[0]["response"]["id"]);
    assert_eq!(
        done["output"][0]["id"], events[2]["item"]["id"],
        "the message item keeps its id"
    );
    assert_eq!(done["output"][0]["content"][0]["text"], json!(text));
    assert_eq!(done["output"][1]["arguments"], json!(args));
    assert_eq!(
        done["output"][1]["call_id"],
        "call_NZa7xqfefoaMI2YYHowVXVlU"
    );
    assert!(done["usage"]["output_tokens"].as_u64().unwrap() > 0);
    assert_eq!(t.output().len(), 2);
}

#[test]
fn a_stream_that_fails_ends_failed_and_crlf_framing_is_read() {
    let mut t = StreamTranslator::new(shell());
    let mut out = Vec::new();
    out.extend_from_slice(
        &t.feed(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\r\n\r\n"),
    );
    out.extend_from_slice(&t.feed(
        b"data: {\"error\":{\"message\":\"upstream went away\",\"code\":\"server_error\"}}\r\n\r\n",
    ));
    out.extend_from_slice(&t.finish());
    let events = events(
        &String::from_utf8(out)
            .unwrap()
            .replace("\r\n", "\n")
            .into_bytes(),
    );
    let names: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "error",
            "response.failed"
        ]
    );
    let failed = &events[6]["response"];
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["message"], "upstream went away");
    assert!(!t.completed(), "a failed stream is not stored or continued");
}

#[test]
fn streamed_reasoning_becomes_a_reasoning_item_as_in_the_json_answer() {
    let mut t = StreamTranslator::new(shell());
    let mut out = Vec::new();
    for delta in [
        json!({"reasoning_content": "Think"}),
        json!({"reasoning_content": "ing."}),
        json!({"content": "Answer"}),
    ] {
        let chunk = json!({"choices": [{"index": 0, "delta": delta}]});
        out.extend_from_slice(&t.feed(format!("data: {chunk}\n\n").as_bytes()));
    }
    out.extend_from_slice(&t.feed(b"data: [DONE]\n\n"));
    let events = events(&out);
    let done = &events.last().unwrap()["response"];
    assert_eq!(done["output"][0]["type"], "reasoning");
    assert_eq!(done["output"][0]["summary"][0]["text"], "Thinking.");
    assert_eq!(done["output"][1]["content"][0]["text"], "Answer");
    let added: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "response.output_item.added")
        .collect();
    assert_eq!(added[0]["item"]["id"], done["output"][0]["id"]);
    assert_eq!(added[1]["output_index"], 1);
}
