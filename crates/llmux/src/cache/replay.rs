//! Converting between the forms a cached answer takes: a relayed stream assembled into the JSON
//! answer it amounts to, a JSON answer replayed as an OpenAI stream (a first chunk with the
//! whole message, a last one with the finish reasons, the usage chunk when asked for), and
//! embedding answers split into one entry per input and joined back. Answers with parts a
//! replay cannot carry faithfully (log probabilities, audio) are not converted: the request
//! goes upstream instead.

use bytes::Bytes;
use llmux_providers::Operation;
use llmux_types::Usage;
use serde_json::{json, Map, Value};

/// Message members a replayed chunk carries; an answer with others is not replayed.
const REPLAYABLE_MESSAGE: &[&str] = &[
    "role",
    "content",
    "tool_calls",
    "function_call",
    "reasoning_content",
    "refusal",
    "annotations",
];

/// The JSON answer a delivered stream amounts to, or `None` when it cannot be rebuilt
/// faithfully (an error event, log probabilities, nothing parsable).
pub(crate) fn assemble(op: Operation, events: &[Bytes], usage: Option<Usage>) -> Option<Bytes> {
    let mut head: Option<Map<String, Value>> = None;
    let mut choices: Vec<(u64, Map<String, Value>)> = Vec::new();
    let mut stream_usage: Option<Value> = None;
    for event in events {
        for data in sse_data(event) {
            if data == b"[DONE]" {
                continue;
            }
            let Value::Object(mut chunk) = serde_json::from_slice::<Value>(data).ok()? else {
                return None;
            };
            if chunk.contains_key("error") {
                return None;
            }
            if let Some(u) = chunk.remove("usage").filter(|u| !u.is_null()) {
                stream_usage = Some(u);
            }
            let parts = match chunk.remove("choices") {
                Some(Value::Array(parts)) => parts,
                _ => Vec::new(),
            };
            if head.is_none() && chunk.contains_key("id") {
                head = Some(chunk);
            }
            for part in parts {
                let Value::Object(part) = part else {
                    return None;
                };
                if part.get("logprobs").is_some_and(|l| !l.is_null()) {
                    return None;
                }
                let index = part.get("index").and_then(Value::as_u64).unwrap_or(0);
                let slot = match choices.iter().position(|(i, _)| *i == index) {
                    Some(at) => &mut choices[at].1,
                    None => {
                        choices.push((index, Map::new()));
                        &mut choices.last_mut()?.1
                    }
                };
                merge_choice(op, slot, part)?;
            }
        }
    }
    let mut answer = head?;
    // A stream that ended without saying why each choice finished was cut short.
    if choices.is_empty()
        || choices
            .iter()
            .any(|(_, c)| c.get("finish_reason").is_none())
    {
        return None;
    }
    choices.sort_by_key(|(i, _)| *i);
    let object = match op {
        Operation::Chat => "chat.completion",
        Operation::Completions => "text_completion",
        Operation::Embeddings | Operation::Rerank => return None,
    };
    answer.insert("object".into(), json!(object));
    answer.insert(
        "choices".into(),
        Value::Array(
            choices
                .into_iter()
                .map(|(index, mut c)| {
                    c.insert("index".into(), json!(index));
                    c.entry("finish_reason").or_insert(Value::Null);
                    c.insert("logprobs".into(), Value::Null);
                    if op == Operation::Chat {
                        let message = c
                            .entry("message")
                            .or_insert_with(|| json!({"role": "assistant", "content": null}));
                        if let Some(m) = message.as_object_mut() {
                            m.entry("content").or_insert(Value::Null);
                        }
                    }
                    Value::Object(c)
                })
                .collect(),
        ),
    );
    let usage = stream_usage.or_else(|| usage.and_then(|u| serde_json::to_value(u).ok()));
    if let Some(u) = usage {
        answer.insert("usage".into(), u);
    }
    serde_json::to_vec(&answer).ok().map(Bytes::from)
}

/// Add one chunk's choice to the assembled choice.
fn merge_choice(
    op: Operation,
    into: &mut Map<String, Value>,
    part: Map<String, Value>,
) -> Option<()> {
    for (name, value) in part {
        match name.as_str() {
            "index" | "logprobs" => {}
            "finish_reason" if !value.is_null() => {
                into.insert(name, value);
            }
            "text" if op == Operation::Completions => append(into, "text", &value),
            "delta" if op == Operation::Chat => {
                let Value::Object(delta) = value else {
                    continue;
                };
                let message = into
                    .entry("message")
                    .or_insert_with(|| json!({"role": "assistant"}))
                    .as_object_mut()?;
                for (field, v) in delta {
                    match field.as_str() {
                        "content" | "reasoning_content" | "refusal" => {
                            if !v.is_null() {
                                append(message, &field, &v);
                            }
                        }
                        "tool_calls" => merge_tool_calls(message, v)?,
                        "role" => {
                            message.insert(field, v);
                        }
                        _ if v.is_null() => {}
                        // Something a replay could not carry back (audio, ...).
                        _ => return None,
                    }
                }
            }
            _ => {}
        }
    }
    Some(())
}

/// Append a text fragment to `map[field]`.
fn append(map: &mut Map<String, Value>, field: &str, fragment: &Value) {
    let Some(fragment) = fragment.as_str() else {
        return;
    };
    match map.get_mut(field) {
        Some(Value::String(text)) => text.push_str(fragment),
        _ => {
            map.insert(field.to_owned(), Value::String(fragment.to_owned()));
        }
    }
}

/// Tool-call deltas: each `index` is one call; its id, type and name arrive once, its
/// arguments in fragments.
fn merge_tool_calls(message: &mut Map<String, Value>, deltas: Value) -> Option<()> {
    let Value::Array(deltas) = deltas else {
        return Some(());
    };
    let calls = message
        .entry("tool_calls")
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()?;
    for delta in deltas {
        let Value::Object(delta) = delta else {
            return None;
        };
        let index = delta.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        // Calls arrive in order: an index past the next one is not a stream to rebuild (and
        // must not make the gateway allocate up to it).
        if index > calls.len() {
            return None;
        }
        if index == calls.len() {
            calls.push(
                json!({"id": null, "type": "function", "function": {"name": "", "arguments": ""}}),
            );
        }
        let call = calls[index].as_object_mut()?;
        for (field, v) in delta {
            match field.as_str() {
                "index" => {}
                "function" => {
                    let Value::Object(f) = v else { continue };
                    let function = call.get_mut("function")?.as_object_mut()?;
                    for (k, fragment) in f {
                        append(function, &k, &fragment);
                    }
                }
                _ if v.is_null() => {}
                _ => {
                    call.insert(field, v);
                }
            }
        }
    }
    Some(())
}

/// The `data:` payloads of one or more SSE events.
fn sse_data(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    event.split(|b| *b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let data = line.strip_prefix(b"data:")?;
        Some(data.strip_prefix(b" ").unwrap_or(data))
    })
}

/// A cached JSON answer as an OpenAI stream's SSE events, or `None` when it holds what a stream
/// cannot carry the same way.
pub(crate) fn to_stream(op: Operation, body: &[u8], include_usage: bool) -> Option<Vec<Bytes>> {
    let Value::Object(answer) = serde_json::from_slice::<Value>(body).ok()? else {
        return None;
    };
    let (object, field) = match op {
        Operation::Chat => ("chat.completion.chunk", "message"),
        Operation::Completions => ("text_completion", "text"),
        Operation::Embeddings | Operation::Rerank => return None,
    };
    let mut head = Map::new();
    for name in [
        "id",
        "created",
        "model",
        "system_fingerprint",
        "service_tier",
    ] {
        if let Some(v) = answer.get(name) {
            head.insert(name.into(), v.clone());
        }
    }
    head.insert("object".into(), json!(object));
    let choices = answer.get("choices")?.as_array()?;
    let mut first = Vec::with_capacity(choices.len());
    let mut last = Vec::with_capacity(choices.len());
    for choice in choices {
        let choice = choice.as_object()?;
        if choice.get("logprobs").is_some_and(|l| !l.is_null()) {
            return None;
        }
        let index = choice.get("index").cloned().unwrap_or(json!(0));
        let finish = choice.get("finish_reason").cloned().unwrap_or(Value::Null);
        if op == Operation::Chat {
            let message = choice.get(field)?.as_object()?;
            if message
                .iter()
                .any(|(k, v)| !v.is_null() && !REPLAYABLE_MESSAGE.contains(&k.as_str()))
            {
                return None;
            }
            let mut delta = message.clone();
            if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
                for (i, call) in calls.iter_mut().enumerate() {
                    if let Some(call) = call.as_object_mut() {
                        call.insert("index".into(), json!(i));
                    }
                }
            }
            first.push(json!({"index": index, "delta": delta, "finish_reason": null}));
            last.push(json!({"index": index, "delta": {}, "finish_reason": finish}));
        } else {
            let text = choice.get("text").cloned().unwrap_or(json!(""));
            first.push(
                json!({"index": index, "text": text, "finish_reason": null, "logprobs": null}),
            );
            last.push(
                json!({"index": index, "text": "", "finish_reason": finish, "logprobs": null}),
            );
        }
    }
    let mut events = Vec::with_capacity(4);
    for parts in [first, last] {
        let mut chunk = head.clone();
        chunk.insert("choices".into(), Value::Array(parts));
        events.push(event(&Value::Object(chunk))?);
    }
    if include_usage {
        if let Some(usage) = answer.get("usage") {
            let mut chunk = head;
            chunk.insert("choices".into(), json!([]));
            chunk.insert("usage".into(), usage.clone());
            events.push(event(&Value::Object(chunk))?);
        }
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    Some(events)
}

fn event(chunk: &Value) -> Option<Bytes> {
    let mut out = b"data: ".to_vec();
    serde_json::to_writer(&mut out, chunk).ok()?;
    out.extend_from_slice(b"\n\n");
    Some(Bytes::from(out))
}

/// An embeddings answer as one entry per input (`{"embedding", "model", "prompt_tokens"}`, the
/// answer's tokens shared out evenly), in input order; empty when it does not hold `inputs`
/// vectors.
pub(crate) fn split_embeddings(body: &[u8], inputs: usize) -> Vec<Bytes> {
    let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let Some(Value::Array(data)) = answer.get("data") else {
        return Vec::new();
    };
    if data.len() != inputs || inputs == 0 {
        return Vec::new();
    }
    let mut items: Vec<(u64, &Value)> = Vec::with_capacity(data.len());
    for (i, item) in data.iter().enumerate() {
        let index = item
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(i as u64);
        let Some(vector) = item.get("embedding") else {
            return Vec::new();
        };
        items.push((index, vector));
    }
    items.sort_by_key(|(i, _)| *i);
    let model = answer.get("model").cloned().unwrap_or(Value::Null);
    let total = answer
        .get("usage")
        .and_then(|u| u.get("prompt_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let share = total / inputs as u64;
    let extra = total % inputs as u64;
    items
        .into_iter()
        .enumerate()
        .filter_map(|(i, (_, vector))| {
            let tokens = share + u64::from((i as u64) < extra);
            serde_json::to_vec(
                &json!({"embedding": vector, "model": model, "prompt_tokens": tokens}),
            )
            .ok()
            .map(Bytes::from)
        })
        .collect()
}

/// Per-input entries joined into an embeddings answer (in this order), with their usage.
pub(crate) fn join_embeddings(entries: &[Bytes]) -> Option<(Bytes, Usage)> {
    let mut data = Vec::with_capacity(entries.len());
    let mut model = Value::Null;
    let mut tokens = 0u64;
    for (index, entry) in entries.iter().enumerate() {
        let Value::Object(mut item) = serde_json::from_slice::<Value>(entry).ok()? else {
            return None;
        };
        tokens += item
            .get("prompt_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if model.is_null() {
            model = item.remove("model").unwrap_or(Value::Null);
        }
        data.push(
            json!({"object": "embedding", "index": index, "embedding": item.remove("embedding")?}),
        );
    }
    let usage = Usage {
        prompt_tokens: tokens,
        completion_tokens: 0,
        total_tokens: tokens,
        ..Default::default()
    };
    let body = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    serde_json::to_vec(&body)
        .ok()
        .map(|b| (Bytes::from(b), usage))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sse(chunks: &[Value]) -> Vec<Bytes> {
        let mut events: Vec<Bytes> = chunks.iter().map(|c| event(c).unwrap()).collect();
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        events
    }

    #[test]
    fn a_stream_assembles_into_its_answer_and_replays_as_an_equivalent_stream() {
        let head = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m"});
        let with = |choices: Value| {
            let mut c = head.clone();
            c["choices"] = choices;
            c
        };
        let events = sse(&[
            with(
                json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
            ),
            with(json!([{"index": 0, "delta": {"content": "Hel"}, "finish_reason": null}])),
            with(
                json!([{"index": 0, "delta": {"content": "lo", "tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\""}}]}, "finish_reason": null}]),
            ),
            with(
                json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}, "finish_reason": "tool_calls"}]),
            ),
        ]);
        let usage = Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
            total_tokens: 5,
            ..Default::default()
        };
        let answer: Value =
            serde_json::from_slice(&assemble(Operation::Chat, &events, Some(usage)).unwrap())
                .unwrap();
        assert_eq!(answer["object"], "chat.completion");
        assert_eq!(answer["id"], "chatcmpl-1");
        let message = &answer["choices"][0]["message"];
        assert_eq!(message["content"], "Hello");
        assert_eq!(message["tool_calls"][0]["id"], "call_1");
        assert_eq!(
            message["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(answer["usage"]["total_tokens"], 5);

        // Replayed, it assembles to the same answer.
        let body = serde_json::to_vec(&answer).unwrap();
        let replayed = to_stream(Operation::Chat, &body, true).unwrap();
        assert!(replayed.last().unwrap().starts_with(b"data: [DONE]"));
        let again: Value =
            serde_json::from_slice(&assemble(Operation::Chat, &replayed, None).unwrap()).unwrap();
        assert_eq!(again, answer);
        // Without include_usage there is no usage chunk.
        let quiet = to_stream(Operation::Chat, &body, false).unwrap();
        assert_eq!(quiet.len(), replayed.len() - 1);
    }

    #[test]
    fn what_cannot_be_replayed_faithfully_is_not() {
        let errored = vec![Bytes::from_static(
            b"data: {\"error\":{\"message\":\"x\"}}\n\n",
        )];
        assert!(assemble(Operation::Chat, &errored, None).is_none());
        let logprobs = sse(&[
            json!({"id": "a", "choices": [{"index": 0, "delta": {"content": "x"}, "logprobs": {"content": []}}]}),
        ]);
        assert!(assemble(Operation::Chat, &logprobs, None).is_none());
        // Cut short: no choice says why it finished.
        let cut = sse(&[
            json!({"id": "a", "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": null}]}),
        ]);
        assert!(assemble(Operation::Chat, &cut, None).is_none());
        // A tool call far past the next index is refused, not allocated up to.
        let far = sse(&[
            json!({"id": "a", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 4_000_000_000u64, "function": {"arguments": "x"}}]}, "finish_reason": "tool_calls"}]}),
        ]);
        assert!(assemble(Operation::Chat, &far, None).is_none());
        let audio = br#"{"id":"a","choices":[{"index":0,"message":{"role":"assistant","audio":{"id":"x"}},"finish_reason":"stop"}]}"#;
        assert!(to_stream(Operation::Chat, audio, false).is_none());
    }

    #[test]
    fn completions_assemble_and_replay() {
        let events = sse(&[
            json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m", "choices": [{"index": 0, "text": "a", "finish_reason": null}]}),
            json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m", "choices": [{"index": 0, "text": "b", "finish_reason": "length"}]}),
        ]);
        let answer: Value =
            serde_json::from_slice(&assemble(Operation::Completions, &events, None).unwrap())
                .unwrap();
        assert_eq!(answer["choices"][0]["text"], "ab");
        assert_eq!(answer["choices"][0]["finish_reason"], "length");
        let replayed = to_stream(
            Operation::Completions,
            &serde_json::to_vec(&answer).unwrap(),
            false,
        )
        .unwrap();
        let again: Value =
            serde_json::from_slice(&assemble(Operation::Completions, &replayed, None).unwrap())
                .unwrap();
        assert_eq!(again["choices"], answer["choices"]);
    }

    #[test]
    fn embeddings_split_per_input_and_join_back() {
        let body = br#"{"object":"list","model":"e","data":[{"object":"embedding","index":1,"embedding":[0.5]},{"object":"embedding","index":0,"embedding":[0.25]}],"usage":{"prompt_tokens":5,"total_tokens":5}}"#;
        let parts = split_embeddings(body, 2);
        assert_eq!(parts.len(), 2);
        let (joined, usage) = join_embeddings(&[parts[1].clone(), parts[0].clone()]).unwrap();
        let joined: Value = serde_json::from_slice(&joined).unwrap();
        assert_eq!(joined["data"][0]["embedding"], json!([0.5]));
        assert_eq!(joined["data"][1]["embedding"], json!([0.25]));
        assert_eq!(joined["data"][1]["index"], 1);
        assert_eq!(joined["model"], "e");
        assert_eq!(usage.prompt_tokens, 5);
        assert!(
            split_embeddings(body, 3).is_empty(),
            "a count that does not match is not kept"
        );
    }
}
