//! Cohere translation against recorded traffic (`tests/fixtures/providers/cohere/`).

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::stream::CohereStreamDecoder;
use super::{build_chat, build_embeddings, translate_embeddings};
use crate::{DecodedEvent, StreamDecoder};
use llmux_types::RawObject;

/// The translated answer as the client reads it, with its usage.
fn translate_chat(body: &[u8]) -> Result<(Value, llmux_types::Usage), llmux_types::GatewayError> {
    super::translate_chat(body).map(|c| {
        let usage = c.usage.unwrap_or_default();
        (serde_json::to_value(&c).unwrap(), usage)
    })
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../../tests/fixtures/providers/cohere/{name}",
        std::env::var("CARGO_MANIFEST_DIR").unwrap()
    ))
    .unwrap()
}

#[test]
fn request_maps_parameters_and_tools() {
    let bytes = serde_json::to_vec(&json!({
        "model": "x", "top_p": 0.5, "max_tokens": 9, "stop": "END", "tool_choice": "required",
        "messages": [{"role": "developer", "content": "sys"}, {"role": "user", "content": "hi", "name": "bob"}],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}}
    }))
    .unwrap();
    let body = build_chat(
        &RawObject::parse(&bytes).unwrap(),
        "command-a",
        &Map::new(),
        false,
    )
    .unwrap();
    assert_eq!(body["model"], "command-a");
    assert_eq!(body["p"], 0.5);
    assert_eq!(body["max_tokens"], 9);
    assert_eq!(body["stop_sequences"], json!(["END"]));
    assert_eq!(body["tool_choice"], "REQUIRED");
    assert_eq!(body["messages"][0]["role"], "system");
    assert!(body["messages"][1].get("name").is_none());
    assert_eq!(body["tools"][0]["function"]["name"], "weather");
    assert_eq!(
        body["response_format"]["json_schema"],
        json!({"type": "object"})
    );
}

#[test]
fn recorded_responses_translate() {
    let (out, usage) = translate_chat(fixture("cohere-text.json").as_bytes()).unwrap();
    assert_eq!(
        out["choices"][0]["message"]["content"],
        "The capital of France is Paris."
    );
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_tokens()
        ),
        (507, 10, 448)
    );

    let (out, _) = translate_chat(fixture("cohere-tool-call.json").as_bytes()).unwrap();
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    let calls = out["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap();
    assert_eq!(calls.len(), 2, "parallel tool calls");
    assert!(
        out["choices"][0]["message"]["reasoning_content"]
            .as_str()
            .is_some(),
        "tool_plan is surfaced as reasoning"
    );

    let (out, _) = translate_chat(fixture("cohere-reasoning.json").as_bytes()).unwrap();
    assert_eq!(out["choices"][0]["message"]["content"], "2 + 2 = 4");
    assert!(out["choices"][0]["message"]["reasoning_content"]
        .as_str()
        .unwrap()
        .starts_with("Okay"));
}

fn replay(
    name: &str,
) -> (
    String,
    String,
    Vec<String>,
    Option<String>,
    Option<llmux_types::Usage>,
) {
    let mut d = CohereStreamDecoder::new("command-a");
    let (mut content, mut reasoning, mut args, mut finish, mut usage) = (
        String::new(),
        String::new(),
        Vec::<String>::new(),
        None,
        None,
    );
    for line in fixture(name).lines().filter(|l| !l.trim().is_empty()) {
        let kind = serde_json::from_str::<Value>(line).unwrap()["type"]
            .as_str()
            .unwrap()
            .to_owned();
        if let DecodedEvent::Chunk { bytes, usage: u } =
            d.decode(Bytes::from(format!("event: {kind}\ndata: {line}\n\n")))
        {
            usage = u.or(usage);
            for event in std::str::from_utf8(&bytes)
                .unwrap()
                .split("\n\n")
                .filter(|e| !e.is_empty())
            {
                let data = event.strip_prefix("data: ").unwrap();
                if data == "[DONE]" {
                    continue;
                }
                let v: Value = serde_json::from_str(data).unwrap();
                let delta = &v["choices"][0]["delta"];
                content.push_str(delta["content"].as_str().unwrap_or(""));
                reasoning.push_str(delta["reasoning_content"].as_str().unwrap_or(""));
                for c in delta["tool_calls"].as_array().into_iter().flatten() {
                    let i = c["index"].as_u64().unwrap() as usize;
                    if args.len() <= i {
                        args.resize(i + 1, String::new());
                    }
                    args[i].push_str(c["function"]["arguments"].as_str().unwrap_or(""));
                }
                if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
                    finish = Some(f.to_owned());
                }
            }
        }
    }
    (content, reasoning, args, finish, usage)
}

#[test]
fn recorded_streams_translate() {
    let (content, _, _, finish, usage) = replay("cohere-text.chunks.txt");
    assert!(!content.is_empty());
    assert_eq!(finish.as_deref(), Some("stop"));
    assert!(usage.unwrap().prompt_tokens > 0);

    let (_, reasoning, args, finish, usage) = replay("cohere-tool-call.chunks.txt");
    assert!(reasoning.starts_with("I will use the weather tool"));
    assert_eq!(
        serde_json::from_str::<Value>(&args[0]).unwrap(),
        json!({"location": "San Francisco"})
    );
    assert_eq!(
        serde_json::from_str::<Value>(&args[1]).unwrap(),
        json!({"city": "San Francisco"})
    );
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    assert_eq!(usage.unwrap().cached_tokens(), 1504);

    let (content, reasoning, _, _, _) = replay("cohere-reasoning.chunks.txt");
    assert!(reasoning.starts_with("The user"));
    assert!(!content.is_empty());
}

#[test]
fn embeddings_translate_both_ways() {
    let bytes = serde_json::to_vec(&json!({"model": "e", "input": ["a", "b"]})).unwrap();
    let req = build_embeddings(&RawObject::parse(&bytes).unwrap(), "embed-v4.0").unwrap();
    assert_eq!(req["input_type"], "search_document");
    assert_eq!(req["texts"], json!(["a", "b"]));
    let (out, _) =
        translate_embeddings(fixture("cohere-embedding.json").as_bytes(), "embed-v4.0").unwrap();
    assert_eq!(out["data"].as_array().unwrap().len(), 2);
    assert_eq!(out["data"][1]["embedding"][0], -0.04660034);
}
