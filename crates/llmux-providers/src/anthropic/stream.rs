//! Anthropic Messages SSE → OpenAI chat completion chunks (pure, stateful per stream).

use std::collections::HashMap;

use bytes::Bytes;
use llmux_types::{ErrorKind, GatewayError, Usage};
use serde_json::{json, Value};

use super::request::RESPONSE_FORMAT_TOOL;
use super::response::{finish_reason, usage};
use crate::completion::Delta;
use crate::sse::parse_fields;
use crate::{DecodedEvent, StreamDecoder};

/// Marks, in the internal stream, an Anthropic event as the upstream sent it, ahead of the
/// translated chunk made from it (`NATIVE_MARK`) or alone (`NATIVE_ONLY_MARK`, for events with
/// no translation: ping, block stops, message stop). SSE comments, so a client reading the
/// internal stream as OpenAI chunks skips them; the Anthropic dialect sends them on instead of
/// its own translation.
pub const NATIVE_MARK: &str = ": llmux-anthropic ";
pub const NATIVE_ONLY_MARK: &str = ": llmux-anthropic-only ";

#[derive(Debug, Default)]
pub struct AnthropicStreamDecoder {
    /// Mark each event as the upstream sent it (a client speaking Anthropic's dialect).
    native: bool,
    id: String,
    model: String,
    created: u64,
    /// Usage from `message_start` (input and cache tokens).
    start_usage: Value,
    /// Anthropic content-block index → OpenAI tool-call index.
    tool_index: HashMap<u64, u32>,
    /// The block carrying a `response_format` answer, streamed as text.
    json_block: Option<u64>,
}

impl AnthropicStreamDecoder {
    fn chunk(&self, delta: &Delta<'_>, finish: Option<&str>, usage: Option<&Usage>) -> Bytes {
        Bytes::from(crate::completion::chat_chunk(
            &self.id,
            self.created,
            &self.model,
            delta,
            finish,
            usage,
        ))
    }

    fn content(&self, delta: Delta<'_>) -> DecodedEvent {
        DecodedEvent::Chunk {
            bytes: self.chunk(&delta, None, None),
            usage: None,
        }
    }
}

impl AnthropicStreamDecoder {
    /// A decoder that also marks every event as the upstream sent it.
    pub fn native() -> Self {
        AnthropicStreamDecoder {
            native: true,
            ..AnthropicStreamDecoder::default()
        }
    }
}

fn marked(mark: &str, raw: &Value, rest: &[u8]) -> Bytes {
    let raw = raw.to_string();
    let mut out = Vec::with_capacity(mark.len() + raw.len() + 2 + rest.len());
    out.extend_from_slice(mark.as_bytes());
    out.extend_from_slice(raw.as_bytes());
    out.extend_from_slice(b"\n\n");
    out.extend_from_slice(rest);
    Bytes::from(out)
}

impl StreamDecoder for AnthropicStreamDecoder {
    fn decode(&mut self, event: Bytes) -> DecodedEvent {
        if !self.native {
            return self.translate(event);
        }
        let raw = serde_json::from_slice::<Value>(&parse_fields(&event).data).ok();
        let translated = self.translate(event);
        let Some(raw) = raw else {
            return translated;
        };
        match translated {
            DecodedEvent::Chunk { bytes, usage } => DecodedEvent::Chunk {
                bytes: marked(NATIVE_MARK, &raw, &bytes),
                usage,
            },
            DecodedEvent::KeepAlive(_) => {
                DecodedEvent::KeepAlive(marked(NATIVE_ONLY_MARK, &raw, b""))
            }
            DecodedEvent::Done(bytes) => DecodedEvent::Done(marked(NATIVE_ONLY_MARK, &raw, &bytes)),
            error @ DecodedEvent::Error(_) => error,
        }
    }
}

impl AnthropicStreamDecoder {
    fn translate(&mut self, event: Bytes) -> DecodedEvent {
        let fields = parse_fields(&event);
        if !fields.has_data {
            return DecodedEvent::KeepAlive(Bytes::from_static(b": keep-alive\n\n"));
        }
        let Ok(data) = serde_json::from_slice::<Value>(&fields.data) else {
            return DecodedEvent::Error(GatewayError::new(
                ErrorKind::UpstreamError,
                "anthropic sent a malformed stream event",
            ));
        };
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
        match data.get("type").and_then(Value::as_str).unwrap_or("") {
            "message_start" => {
                let message = data.get("message").cloned().unwrap_or_default();
                self.id = message
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                self.model = message
                    .get("model")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                self.created = crate::completion::unix_now();
                self.start_usage = message.get("usage").cloned().unwrap_or_default();
                self.content(Delta::start())
            }
            "content_block_start" => {
                let block = data.get("content_block").cloned().unwrap_or_default();
                match block.get("type").and_then(Value::as_str) {
                    Some("tool_use")
                        if block.get("name").and_then(Value::as_str)
                            == Some(RESPONSE_FORMAT_TOOL) =>
                    {
                        self.json_block = Some(index);
                        DecodedEvent::KeepAlive(Bytes::new())
                    }
                    Some("tool_use") => {
                        let k = self.tool_index.len() as u32;
                        self.tool_index.insert(index, k);
                        let text = |key: &str| block.get(key).and_then(Value::as_str).unwrap_or("");
                        self.content(Delta::tool_call_start(k, text("id"), text("name")))
                    }
                    // Redacted thinking arrives whole; the client must send it back as is.
                    Some("redacted_thinking") => self.content(Delta::thinking_block(block)),
                    Some("text") => match block.get("text").and_then(Value::as_str) {
                        Some(t) if !t.is_empty() => self.content(Delta::content(t)),
                        _ => DecodedEvent::KeepAlive(Bytes::new()),
                    },
                    _ => DecodedEvent::KeepAlive(Bytes::new()),
                }
            }
            "content_block_delta" => {
                let delta = data.get("delta").cloned().unwrap_or_default();
                let text = |key: &str| delta.get(key).and_then(Value::as_str).unwrap_or("");
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => self.content(Delta::content(text("text"))),
                    Some("thinking_delta") => self.content(Delta::reasoning(text("thinking"))),
                    // The thinking block's signature (LiteLLM's `thinking_blocks` delta), which
                    // a client must send back with the block in its next turn.
                    Some("signature_delta") => self.content(Delta::thinking_block(json!({
                        "type": "thinking", "thinking": "", "signature": text("signature"),
                    }))),
                    Some("input_json_delta") => {
                        let partial = delta
                            .get("partial_json")
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        if partial.is_empty() {
                            return DecodedEvent::KeepAlive(Bytes::new());
                        }
                        if self.json_block == Some(index) {
                            return self.content(Delta::content(partial));
                        }
                        let k = self.tool_index.get(&index).copied().unwrap_or(0);
                        self.content(Delta::tool_arguments(k, partial))
                    }
                    _ => DecodedEvent::KeepAlive(Bytes::new()),
                }
            }
            "message_delta" => {
                let stop = data.pointer("/delta/stop_reason").and_then(Value::as_str);
                let mut finish = finish_reason(stop).unwrap_or("stop");
                if self.json_block.is_some() && finish == "tool_calls" {
                    finish = "stop";
                }
                // message_delta's usage has the output count; input counts come from message_start
                // unless repeated here.
                let mut merged = self.start_usage.clone();
                if let (Some(m), Some(d)) = (
                    merged.as_object_mut(),
                    data.get("usage").and_then(Value::as_object),
                ) {
                    for (k, v) in d {
                        if !v.is_null() {
                            m.insert(k.clone(), v.clone());
                        }
                    }
                }
                let u = usage(&merged);
                DecodedEvent::Chunk {
                    bytes: self.chunk(&Delta::default(), Some(finish), Some(&u)),
                    usage: Some(u),
                }
            }
            "message_stop" => DecodedEvent::Done(Bytes::from_static(b"data: [DONE]\n\n")),
            "error" => {
                DecodedEvent::Error(crate::errors::error_from_body(500, &fields.data, false))
            }
            // ping, content_block_stop, and event types added later.
            _ => DecodedEvent::KeepAlive(Bytes::new()),
        }
    }
}
