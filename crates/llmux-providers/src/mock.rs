//! The in-process `mock/` provider (LiteLLM's `mock_response`): answers without any network, in
//! the OpenAI wire format, so a fresh install has a working model and the relay is exercised by
//! exactly the bytes an OpenAI-compatible upstream would send.

use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};

use llmux_types::raw::write_json_string;
use llmux_types::{ErrorEnvelope, ErrorKind, RawObject, Usage};

use crate::Operation;

/// What the mock "upstream" answers.
#[derive(Debug, Clone, PartialEq)]
pub enum MockOutput {
    /// A complete HTTP response body with its status.
    Json { status: u16, body: Bytes },
    /// SSE events, in order, each terminated by a blank line.
    Stream(Vec<Bytes>),
}

/// LiteLLM's `mock_response` error names, so configs written for LiteLLM's mock behave the same.
fn mock_error(text: &str) -> Option<(u16, ErrorKind, &'static str)> {
    Some(match text {
        "litellm.RateLimitError" => (429, ErrorKind::RateLimited, "mock rate limit"),
        "litellm.InternalServerError" => {
            (500, ErrorKind::UpstreamError, "mock internal server error")
        }
        "litellm.ServiceUnavailableError" => (
            503,
            ErrorKind::UpstreamUnavailable,
            "mock service unavailable",
        ),
        "litellm.ContextWindowExceededError" => (
            400,
            ErrorKind::ContextLengthExceeded,
            "mock context window exceeded",
        ),
        "litellm.ContentPolicyViolationError" => (
            400,
            ErrorKind::ContentFiltered,
            "mock content policy violation",
        ),
        "litellm.AuthenticationError" => {
            (401, ErrorKind::Authentication, "mock authentication error")
        }
        "litellm.BadRequestError" => (400, ErrorKind::InvalidRequest, "mock bad request"),
        "litellm.Timeout" => (408, ErrorKind::Timeout, "mock timeout"),
        _ => return None,
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Rough token estimate for mock usage: one token per four bytes, at least one.
fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4).max(1)
}

fn last_user_text(request: &RawObject<'_>) -> String {
    let messages: Vec<Value> = request
        .decode("messages")
        .ok()
        .flatten()
        .unwrap_or_default();
    messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        })
        .unwrap_or_default()
}

/// Answer `request` as the mock model `model`. `configured` is the deployment's `mock_response`;
/// a `mock_response` in the request body takes precedence.
pub fn respond(
    op: Operation,
    request: &RawObject<'_>,
    model: &str,
    configured: Option<&Value>,
) -> MockOutput {
    let requested: Option<Value> = request.decode("mock_response").ok().flatten();
    let mock = requested.as_ref().or(configured);
    if let Some(Value::String(s)) = mock {
        if let Some((status, kind, message)) = mock_error(s) {
            let body = ErrorEnvelope::new(kind, message).to_json_bytes();
            return MockOutput::Json {
                status,
                body: Bytes::from(body),
            };
        }
    }
    match op {
        Operation::Embeddings => embeddings(request, model),
        Operation::Rerank => rerank(request, model),
        Operation::Chat | Operation::Completions => {
            let prompt_text = match op {
                Operation::Chat => last_user_text(request),
                _ => request
                    .decode::<Value>("prompt")
                    .ok()
                    .flatten()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
            };
            let text = match mock {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => format!("Hi! I am llmux's demo model `{model}`. You said: {prompt_text}"),
            };
            let usage = Usage::new(estimate_tokens(&prompt_text), estimate_tokens(&text));
            let stream = request
                .decode::<bool>("stream")
                .ok()
                .flatten()
                .unwrap_or(false);
            if stream {
                let include_usage = request
                    .decode::<Value>("stream_options")
                    .ok()
                    .flatten()
                    .and_then(|o| o.get("include_usage").and_then(Value::as_bool))
                    .unwrap_or(false);
                MockOutput::Stream(stream_events(
                    op,
                    model,
                    &text,
                    include_usage.then_some(usage),
                ))
            } else {
                MockOutput::Json {
                    status: 200,
                    body: json_body(op, model, &text, usage),
                }
            }
        }
    }
}

fn completion_id() -> String {
    format!("chatcmpl-mock{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded per process and per instance: enough for unique mock ids.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

fn json_body(op: Operation, model: &str, text: &str, usage: Usage) -> Bytes {
    let value = match op {
        Operation::Chat => json!({
            "id": completion_id(), "object": "chat.completion", "created": unix_now(), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null},
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": usage,
        }),
        _ => json!({
            "id": completion_id(), "object": "text_completion", "created": unix_now(), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": "stop"}],
            "usage": usage,
        }),
    };
    Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
}

/// Words of `text`, each keeping its trailing whitespace, so the pieces concatenate back exactly.
fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            out.push(&text[start..i]);
            start = i;
            in_space = false;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

fn sse(value: &Value) -> Bytes {
    let mut out = b"data: ".to_vec();
    out.extend_from_slice(&serde_json::to_vec(value).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn stream_events(op: Operation, model: &str, text: &str, usage: Option<Usage>) -> Vec<Bytes> {
    let id = completion_id();
    let created = unix_now();
    let (object, chat) = match op {
        Operation::Chat => ("chat.completion.chunk", true),
        _ => ("text_completion", false),
    };
    let chunk = |delta: Value, finish: Value| {
        let choice = if chat {
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")), "logprobs": null, "finish_reason": finish})
        };
        let mut c = json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]});
        if usage.is_some() {
            c["usage"] = Value::Null;
        }
        sse(&c)
    };
    let mut events = Vec::new();
    if chat {
        events.push(chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        ));
    }
    for piece in pieces(text) {
        events.push(chunk(json!({"content": piece}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    if let Some(usage) = usage {
        events.push(sse(&json!({"id": id, "object": object, "created": created, "model": model, "choices": [], "usage": usage})));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

fn embeddings(request: &RawObject<'_>, model: &str) -> MockOutput {
    let input: Value = request
        .decode("input")
        .ok()
        .flatten()
        .unwrap_or(Value::Null);
    let items: Vec<String> = match &input {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) if a.iter().all(Value::is_number) && !a.is_empty() => {
            vec![input.to_string()]
        }
        Value::Array(a) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect(),
        _ => {
            let body = ErrorEnvelope::new(
                ErrorKind::InvalidRequest,
                "`input` must be a string, an array of strings, or token arrays",
            )
            .to_json_bytes();
            return MockOutput::Json {
                status: 400,
                body: Bytes::from(body),
            };
        }
    };
    let dimensions = request
        .decode::<u64>("dimensions")
        .ok()
        .flatten()
        .unwrap_or(8)
        .clamp(1, 4096) as usize;
    let base64 = request
        .decode::<String>("encoding_format")
        .ok()
        .flatten()
        .as_deref()
        == Some("base64");
    let mut prompt_tokens = 0;
    let data: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(index, text)| {
            prompt_tokens += estimate_tokens(text);
            let vector = pseudo_embedding(text, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let mut body = br#"{"object":"list","data":"#.to_vec();
    body.extend_from_slice(&serde_json::to_vec(&data).unwrap_or_default());
    body.extend_from_slice(b",\"model\":");
    write_json_string(&mut body, model);
    body.extend_from_slice(
        format!(
            ",\"usage\":{{\"prompt_tokens\":{prompt_tokens},\"total_tokens\":{prompt_tokens}}}}}"
        )
        .as_bytes(),
    );
    MockOutput::Json {
        status: 200,
        body: Bytes::from(body),
    }
}

/// Rank documents by how many query words they contain (ties keep their order): a stable,
/// explainable answer in Cohere's rerank shape.
fn rerank(request: &RawObject<'_>, model: &str) -> MockOutput {
    let query: String = request.decode("query").ok().flatten().unwrap_or_default();
    let documents: Vec<Value> = request
        .decode("documents")
        .ok()
        .flatten()
        .unwrap_or_default();
    let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
    let mut scored: Vec<(usize, f64)> = documents
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let text = d
                .as_str()
                .map(str::to_owned)
                .or_else(|| d.get("text").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| d.to_string())
                .to_lowercase();
            let hits = words.iter().filter(|w| text.contains(w.as_str())).count();
            (
                i,
                if words.is_empty() {
                    0.0
                } else {
                    hits as f64 / words.len() as f64
                },
            )
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let top_n = request
        .decode::<usize>("top_n")
        .ok()
        .flatten()
        .unwrap_or(scored.len());
    let results: Vec<Value> = scored
        .into_iter()
        .take(top_n)
        .map(|(index, score)| json!({"index": index, "relevance_score": score}))
        .collect();
    let body = json!({"id": format!("rerank-{}", rand_u64()), "results": results, "meta": {"billed_units": {"search_units": 1}}, "model": model});
    MockOutput::Json {
        status: 200,
        body: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
    }
}

/// A deterministic unit vector derived from the text (FNV-1a seeded xorshift).
fn pseudo_embedding(text: &str, dimensions: usize) -> Vec<f32> {
    let mut state: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        state ^= u64::from(b);
        state = state.wrapping_mul(0x100000001b3);
    }
    let mut v: Vec<f32> = (0..dimensions)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai_compat::{inspect_event, StreamEvent};

    #[test]
    fn chat_json_echoes_and_reports_usage() {
        let body = br#"{"model":"demo","messages":[{"role":"user","content":"ping"}]}"#;
        let obj = RawObject::parse(body).unwrap();
        let MockOutput::Json { status, body } = respond(Operation::Chat, &obj, "demo", None) else {
            panic!()
        };
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .ends_with("You said: ping"));
        assert_eq!(v["usage"]["prompt_tokens"], 1);
    }

    #[test]
    fn stream_reassembles_the_text_and_ends_with_usage_and_done() {
        let body = br#"{"model":"demo","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}]}"#;
        let obj = RawObject::parse(body).unwrap();
        let text = "héllo  wörld, this is\nmock";
        let MockOutput::Stream(events) = respond(Operation::Chat, &obj, "demo", Some(&json!(text)))
        else {
            panic!()
        };
        let mut content = String::new();
        let mut saw_usage = false;
        for e in &events[..events.len() - 1] {
            let data = &e[6..e.len() - 2];
            let v: Value = serde_json::from_slice(data).unwrap();
            if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                content.push_str(c);
            }
            if let StreamEvent::Data { usage: Some(_) } = inspect_event(e) {
                saw_usage = true;
            }
        }
        assert_eq!(content, text);
        assert!(saw_usage);
        assert_eq!(inspect_event(events.last().unwrap()), StreamEvent::Done);
    }

    #[test]
    fn litellm_error_names_produce_errors() {
        let obj = RawObject::parse(
            br#"{"model":"m","messages":[],"mock_response":"litellm.RateLimitError"}"#,
        )
        .unwrap();
        let MockOutput::Json { status, .. } = respond(Operation::Chat, &obj, "m", None) else {
            panic!()
        };
        assert_eq!(status, 429);
    }

    #[test]
    fn embeddings_are_deterministic_and_support_base64() {
        let obj = RawObject::parse(br#"{"model":"e","input":["a","b"],"dimensions":4}"#).unwrap();
        let MockOutput::Json { body, .. } = respond(Operation::Embeddings, &obj, "e", None) else {
            panic!()
        };
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 4);
        let obj = RawObject::parse(
            br#"{"model":"e","input":"a","dimensions":4,"encoding_format":"base64"}"#,
        )
        .unwrap();
        let MockOutput::Json { body, .. } = respond(Operation::Embeddings, &obj, "e", None) else {
            panic!()
        };
        let b: Value = serde_json::from_slice(&body).unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        let first = f32::from_le_bytes(raw[..4].try_into().unwrap());
        assert_eq!(first, v["data"][0]["embedding"][0].as_f64().unwrap() as f32);
        let obj = RawObject::parse(br#"{"model":"e","input":[[1,2],[3]]}"#).unwrap();
        let MockOutput::Json { body, .. } = respond(Operation::Embeddings, &obj, "e", None) else {
            panic!()
        };
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
    }
}
