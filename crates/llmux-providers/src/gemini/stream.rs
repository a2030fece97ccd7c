//! Gemini `streamGenerateContent?alt=sse` → OpenAI chunks (pure, stateful per stream).
//!
//! Each Gemini event is a partial response. Function calls arrive whole, or (Vertex, Gemini 3)
//! spread over events as `partialArgs` with `willContinue`; those are assembled and emitted as one
//! complete tool-call delta when the call ends. Gemini has no end-of-stream event, so `[DONE]`
//! follows the chunk that carries the finish reason.

use bytes::Bytes;
use llmux_types::{ErrorKind, GatewayError, Usage};
use serde_json::{json, Map, Value};

use super::response::{finish_reason, tool_call, usage};
use crate::completion::Delta;
use crate::sse::parse_fields;
use crate::{DecodedEvent, StreamDecoder};

#[derive(Debug, Default)]
pub struct GeminiStreamDecoder {
    model: String,
    id: String,
    created: u64,
    started: bool,
    tool_calls: usize,
    /// A function call being assembled from `partialArgs`: (part with name/signature, args).
    pending: Option<(Value, Map<String, Value>)>,
    usage: Option<Usage>,
}

impl GeminiStreamDecoder {
    pub fn new(model: &str) -> Self {
        GeminiStreamDecoder {
            model: model.to_owned(),
            ..GeminiStreamDecoder::default()
        }
    }

    fn chunk(&self, delta: &Delta<'_>, finish: Option<&str>, usage: Option<&Usage>) -> Vec<u8> {
        crate::completion::chat_chunk(&self.id, self.created, &self.model, delta, finish, usage)
    }

    fn emit_call(&mut self, part: &Value, out: &mut Vec<u8>) {
        let call = tool_call(self.tool_calls, part);
        let delta = Delta::tool_call(
            self.tool_calls as u32,
            &call.id,
            &call.function.name,
            &call.function.arguments,
        );
        self.tool_calls += 1;
        out.extend(self.chunk(&delta, None, None));
    }
}

fn apply_partial(args: &mut Map<String, Value>, partial: &Value) {
    let Some(path) = partial.get("jsonPath").and_then(Value::as_str) else {
        return;
    };
    let key = path.trim_start_matches("$.").to_owned();
    if let Some(s) = partial.get("stringValue").and_then(Value::as_str) {
        let entry = args.entry(key).or_insert(json!(""));
        if let Value::String(existing) = entry {
            existing.push_str(s);
        }
    } else if let Some(v) = partial
        .get("numberValue")
        .or_else(|| partial.get("boolValue"))
    {
        args.insert(key, v.clone());
    } else if partial.get("nullValue").is_some() {
        args.insert(key, Value::Null);
    }
}

impl StreamDecoder for GeminiStreamDecoder {
    fn decode(&mut self, event: Bytes) -> DecodedEvent {
        let fields = parse_fields(&event);
        if !fields.has_data {
            return DecodedEvent::KeepAlive(Bytes::new());
        }
        let Ok(v) = serde_json::from_slice::<Value>(&fields.data) else {
            return DecodedEvent::Error(GatewayError::new(
                ErrorKind::UpstreamError,
                "gemini sent a malformed stream event",
            ));
        };
        if v.get("error").is_some() {
            return DecodedEvent::Error(crate::errors::error_from_body(500, &fields.data, false));
        }
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            self.id = v
                .get("responseId")
                .and_then(Value::as_str)
                .map(|id| format!("chatcmpl-{id}"))
                .unwrap_or_default();
            if let Some(m) = v.get("modelVersion").and_then(Value::as_str) {
                self.model = m.to_owned();
            }
            self.created = crate::completion::unix_now();
            out.extend(self.chunk(&Delta::start(), None, None));
        }
        if let Some(u) = v.get("usageMetadata").and_then(usage) {
            self.usage = Some(u);
        }
        let candidate = v.pointer("/candidates/0").cloned().unwrap_or_default();
        for part in candidate
            .pointer("/content/parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(call) = part.get("functionCall") {
                let partials = call.get("partialArgs").and_then(Value::as_array);
                let continues = call.get("willContinue").and_then(Value::as_bool) == Some(true);
                if call.get("name").is_some() && continues && partials.is_none() {
                    self.pending = Some((part.clone(), Map::new()));
                } else if let Some(partials) = partials {
                    if let Some((_, args)) = self.pending.as_mut() {
                        partials.iter().for_each(|p| apply_partial(args, p));
                    }
                } else if call.as_object().is_some_and(|o| o.is_empty())
                    || (!continues && call.get("name").is_none())
                {
                    if let Some((mut head, args)) = self.pending.take() {
                        head["functionCall"]["args"] = Value::Object(args);
                        self.emit_call(&head, &mut out);
                    }
                } else {
                    self.emit_call(part, &mut out);
                }
            } else if let Some(text) = part
                .get("text")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                let delta = if part.get("thought").and_then(Value::as_bool) == Some(true) {
                    Delta::reasoning(text)
                } else {
                    Delta::content(text)
                };
                out.extend(self.chunk(&delta, None, None));
            }
        }
        if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str) {
            let mut finish = finish_reason(reason);
            if self.tool_calls > 0 && finish == "stop" {
                finish = "tool_calls";
            }
            let u = self.usage;
            out.extend(self.chunk(&Delta::default(), Some(finish), u.as_ref()));
            out.extend_from_slice(b"data: [DONE]\n\n");
            return DecodedEvent::Chunk {
                bytes: Bytes::from(out),
                usage: u,
            };
        }
        if v.pointer("/promptFeedback/blockReason").is_some() && v.get("candidates").is_none() {
            let u = self.usage;
            out.extend(self.chunk(&Delta::default(), Some("content_filter"), u.as_ref()));
            out.extend_from_slice(b"data: [DONE]\n\n");
            return DecodedEvent::Chunk {
                bytes: Bytes::from(out),
                usage: u,
            };
        }
        if out.is_empty() {
            DecodedEvent::KeepAlive(Bytes::new())
        } else {
            DecodedEvent::Chunk {
                bytes: Bytes::from(out),
                usage: None,
            }
        }
    }
}
