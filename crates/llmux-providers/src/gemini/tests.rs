//! Gemini translation against recorded traffic (`tests/fixtures/providers/google/`).

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::request::{build_chat, build_embeddings, split_signature};
use super::response::translate_embeddings;
use super::stream::GeminiStreamDecoder;
use crate::{DecodedEvent, StreamDecoder};
use llmux_types::RawObject;

/// The translated answer as the client reads it, with its usage.
fn translate_chat(
    body: &[u8],
    model: &str,
) -> Result<(Value, Option<llmux_types::Usage>), llmux_types::GatewayError> {
    super::response::translate_chat(body, model).map(|c| {
        let usage = c.usage;
        (serde_json::to_value(&c).unwrap(), usage)
    })
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../../tests/fixtures/providers/google/{name}",
        std::env::var("CARGO_MANIFEST_DIR").unwrap()
    ))
    .unwrap()
}

fn chat(request: Value) -> Value {
    let bytes = serde_json::to_vec(&request).unwrap();
    build_chat(&RawObject::parse(&bytes).unwrap(), &Map::new(), false).unwrap()
}

#[test]
fn request_translates_roles_tools_signatures_and_config() {
    let out = chat(json!({
        "model": "g", "temperature": 0.1, "max_tokens": 50, "stop": ["x"], "reasoning_effort": "low",
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}},
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA="}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_0__thought__SIG", "type": "function", "function": {"name": "weather", "arguments": "{\"location\":\"SF\"}"}}]},
            {"role": "tool", "tool_call_id": "call_0__thought__SIG", "content": "{\"temp\": 20}"}
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "additionalProperties": false, "properties": {"location": {"type": "string"}}}}}],
        "tool_choice": {"type": "function", "function": {"name": "weather"}}
    }));
    assert_eq!(out["systemInstruction"]["parts"][0]["text"], "sys");
    assert_eq!(
        out["contents"][0]["parts"][1]["inlineData"],
        json!({"mimeType": "image/png", "data": "AAA="})
    );
    assert_eq!(out["contents"][1]["role"], "model");
    assert_eq!(
        out["contents"][1]["parts"][0]["functionCall"],
        json!({"name": "weather", "args": {"location": "SF"}})
    );
    assert_eq!(
        out["contents"][1]["parts"][0]["thoughtSignature"], "SIG",
        "the signature goes back to Gemini"
    );
    assert_eq!(
        out["contents"][2]["parts"][0]["functionResponse"],
        json!({"name": "weather", "response": {"temp": 20}})
    );
    let config = &out["generationConfig"];
    assert_eq!(
        (
            config["temperature"].as_f64(),
            config["maxOutputTokens"].as_u64()
        ),
        (Some(0.1), Some(50))
    );
    assert_eq!(config["stopSequences"], json!(["x"]));
    assert_eq!(config["responseMimeType"], "application/json");
    assert_eq!(config["thinkingConfig"]["thinkingBudget"], 1024);
    assert!(out["tools"][0]["functionDeclarations"][0]["parameters"]
        .get("additionalProperties")
        .is_none());
    assert_eq!(
        out["toolConfig"]["functionCallingConfig"],
        json!({"mode": "ANY", "allowedFunctionNames": ["weather"]})
    );
    assert_eq!(
        split_signature("call_1__thought__abc"),
        ("call_1", Some("abc"))
    );
}

#[test]
fn recorded_responses_translate() {
    let (out, usage) = translate_chat(fixture("google-text.json").as_bytes(), "gemini").unwrap();
    assert!(out["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("strawberry"));
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    let usage = usage.unwrap();
    assert_eq!(
        (usage.prompt_tokens, usage.completion_tokens),
        (9, 28 + 244)
    );
    assert_eq!(usage.reasoning_tokens(), 244);

    let (out, _) = translate_chat(fixture("google-tool-call.json").as_bytes(), "gemini").unwrap();
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    let call = &out["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "weather");
    assert_eq!(
        serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
        json!({"location": "San Francisco"})
    );
    assert!(
        call["id"].as_str().unwrap().contains("__thought__"),
        "the thought signature is kept for the next turn"
    );

    let (out, usage) =
        translate_chat(fixture("google-reasoning.json").as_bytes(), "gemini").unwrap();
    assert!(usage.unwrap().reasoning_tokens() > 0);
    assert!(out["choices"][0]["message"]["content"].as_str().is_some());

    let (out, _) = translate_chat(
        fixture("issue-19758-prompt-block.json").as_bytes(),
        "gemini",
    )
    .unwrap();
    assert_eq!(out["choices"][0]["finish_reason"], "content_filter");
    assert!(out["choices"][0]["message"]["refusal"]
        .as_str()
        .unwrap()
        .contains("PROHIBITED_CONTENT"));
}

fn replay(name: &str) -> (String, String, Vec<(String, String)>, Option<String>, bool) {
    let mut d = GeminiStreamDecoder::new("gemini");
    let (mut content, mut reasoning, mut calls, mut finish, mut done) =
        (String::new(), String::new(), Vec::new(), None, false);
    for line in fixture(name).lines().filter(|l| !l.trim().is_empty()) {
        match d.decode(Bytes::from(format!("data: {line}\r\n\r\n"))) {
            DecodedEvent::Chunk { bytes, .. } => {
                for event in std::str::from_utf8(&bytes)
                    .unwrap()
                    .split("\n\n")
                    .filter(|e| !e.is_empty())
                {
                    let data = event.strip_prefix("data: ").unwrap();
                    if data == "[DONE]" {
                        done = true;
                        continue;
                    }
                    let v: Value = serde_json::from_str(data).unwrap();
                    let delta = &v["choices"][0]["delta"];
                    content.push_str(delta["content"].as_str().unwrap_or(""));
                    reasoning.push_str(delta["reasoning_content"].as_str().unwrap_or(""));
                    for c in delta["tool_calls"].as_array().into_iter().flatten() {
                        calls.push((
                            c["function"]["name"].as_str().unwrap().to_owned(),
                            c["function"]["arguments"].as_str().unwrap().to_owned(),
                        ));
                    }
                    if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
                        finish = Some(f.to_owned());
                    }
                }
            }
            DecodedEvent::KeepAlive(_) => {}
            other => panic!("{name}: {other:?}"),
        }
    }
    (content, reasoning, calls, finish, done)
}

#[test]
fn recorded_streams_translate() {
    let (content, _, _, finish, done) = replay("google-text.chunks.txt");
    assert!(content.contains("strawberry"));
    assert_eq!(finish.as_deref(), Some("stop"));
    assert!(done);

    let (_, _, calls, finish, _) = replay("google-tool-call.chunks.txt");
    assert_eq!(
        calls,
        vec![(
            "weather".to_owned(),
            "{\"location\":\"San Francisco\"}".to_owned()
        )]
    );
    assert_eq!(finish.as_deref(), Some("tool_calls"));

    let (_, reasoning, calls, _, _) = replay("google-stream-no-args-tool-call.chunks.txt");
    assert!(
        !reasoning.is_empty(),
        "thought summaries become reasoning_content"
    );
    let names: Vec<&str> = calls.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        vec!["read_theme", "read_screen", "read_screen", "read_screen"]
    );
    let ids: Vec<Value> = calls[1..]
        .iter()
        .map(|(_, a)| serde_json::from_str::<Value>(a).unwrap()["id"].clone())
        .collect();
    assert_eq!(
        ids,
        vec![json!("A"), json!("B"), json!("C")],
        "partialArgs are assembled per call"
    );
}

#[test]
fn embeddings_translate_both_ways() {
    let bytes =
        serde_json::to_vec(&json!({"model": "e", "input": ["a", "b"], "dimensions": 8})).unwrap();
    let req = build_embeddings(&RawObject::parse(&bytes).unwrap(), "text-embedding-004").unwrap();
    assert_eq!(req["requests"].as_array().unwrap().len(), 2);
    assert_eq!(req["requests"][0]["model"], "models/text-embedding-004");
    assert_eq!(req["requests"][1]["outputDimensionality"], 8);
    let out = translate_embeddings(
        br#"{"embeddings":[{"values":[0.1,0.2]},{"values":[0.3,0.4]}]}"#,
        "e",
        false,
    )
    .unwrap();
    assert_eq!(out["data"][1]["embedding"], json!([0.3, 0.4]));
    assert_eq!(out["data"][1]["index"], 1);
}
