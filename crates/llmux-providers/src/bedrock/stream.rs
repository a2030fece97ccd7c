//! Bedrock ConverseStream (AWS event-stream messages) → OpenAI chat completion chunks (pure,
//! stateful per stream).

use std::collections::HashMap;

use bytes::Bytes;
use llmux_types::{ErrorKind, GatewayError, Usage};
use serde_json::{json, Value};

use super::request::RESPONSE_FORMAT_TOOL;
use super::response::{finish_reason, response_id, usage};
use crate::completion::unix_now;
use crate::completion::Delta;
use crate::eventstream::decode_message;
use crate::{DecodedEvent, StreamDecoder};

#[derive(Debug)]
pub struct BedrockStreamDecoder {
    id: String,
    model: String,
    created: u64,
    /// Converse content-block index → OpenAI tool-call index.
    tool_index: HashMap<u64, u32>,
    /// The block carrying a `response_format` answer, streamed as text.
    json_block: Option<u64>,
    finish: Option<&'static str>,
}

impl BedrockStreamDecoder {
    pub fn new(model: &str) -> Self {
        BedrockStreamDecoder {
            id: response_id(),
            model: model.to_owned(),
            created: unix_now(),
            tool_index: HashMap::new(),
            json_block: None,
            finish: None,
        }
    }

    fn chunk(&self, delta: &Delta<'_>, finish: Option<&str>, usage: Option<&Usage>) -> Vec<u8> {
        crate::completion::chat_chunk(&self.id, self.created, &self.model, delta, finish, usage)
    }

    fn content(&self, delta: Delta<'_>) -> DecodedEvent {
        DecodedEvent::Chunk {
            bytes: Bytes::from(self.chunk(&delta, None, None)),
            usage: None,
        }
    }

    fn event(&mut self, kind: &str, payload: &Value) -> DecodedEvent {
        let index = payload
            .get("contentBlockIndex")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        match kind {
            "messageStart" => self.content(Delta::start()),
            "contentBlockStart" => match payload.pointer("/start/toolUse") {
                Some(tool)
                    if tool.get("name").and_then(Value::as_str) == Some(RESPONSE_FORMAT_TOOL) =>
                {
                    self.json_block = Some(index);
                    DecodedEvent::KeepAlive(Bytes::new())
                }
                Some(tool) => {
                    let k = self.tool_index.len() as u32;
                    self.tool_index.insert(index, k);
                    let text = |key: &str| tool.get(key).and_then(Value::as_str).unwrap_or("");
                    self.content(Delta::tool_call_start(k, text("toolUseId"), text("name")))
                }
                None => DecodedEvent::KeepAlive(Bytes::new()),
            },
            "contentBlockDelta" => {
                let delta = payload.get("delta").cloned().unwrap_or_default();
                if let Some(text) = delta.get("text").and_then(Value::as_str) {
                    return self.content(Delta::content(text));
                }
                if let Some(input) = delta.pointer("/toolUse/input").and_then(Value::as_str) {
                    if input.is_empty() {
                        return DecodedEvent::KeepAlive(Bytes::new());
                    }
                    if self.json_block == Some(index) {
                        return self.content(Delta::content(input));
                    }
                    let k = self.tool_index.get(&index).copied().unwrap_or(0);
                    return self.content(Delta::tool_arguments(k, input));
                }
                if let Some(text) = delta
                    .pointer("/reasoningContent/text")
                    .and_then(Value::as_str)
                {
                    return self.content(Delta::reasoning(text));
                }
                // Signatures and redacted reasoning carry nothing a chat client shows.
                DecodedEvent::KeepAlive(Bytes::new())
            }
            "messageStop" => {
                let mut finish = finish_reason(payload.get("stopReason").and_then(Value::as_str));
                if self.json_block.is_some() && finish == "tool_calls" {
                    finish = "stop";
                }
                self.finish = Some(finish);
                DecodedEvent::Chunk {
                    bytes: Bytes::from(self.chunk(&Delta::default(), Some(finish), None)),
                    usage: None,
                }
            }
            "metadata" => {
                // The last event: usage, then the end of the OpenAI stream.
                let u = usage(payload.get("usage").unwrap_or(&Value::Null));
                let mut bytes =
                    crate::completion::usage_chunk(&self.id, self.created, &self.model, &u);
                bytes.extend_from_slice(b"data: [DONE]\n\n");
                DecodedEvent::Chunk {
                    bytes: Bytes::from(bytes),
                    usage: Some(u),
                }
            }
            // contentBlockStop and event types added later.
            _ => DecodedEvent::KeepAlive(Bytes::new()),
        }
    }
}

/// A mid-stream exception (`throttlingException`, `validationException`, ...) as an error.
pub fn exception(kind: &str, payload: &[u8]) -> GatewayError {
    let message = serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("Message"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("bedrock stream failed: {kind}"));
    // Exceptions arrive lowerCamelCase in streams (`throttlingException`); the taxonomy knows
    // the HTTP header's UpperCamelCase names.
    let mut name = kind.to_owned();
    if let Some(first) = name.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    let status = match name.as_str() {
        "ThrottlingException" => 429,
        "ValidationException" => 400,
        "ServiceUnavailableException" => 503,
        _ => 500,
    };
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(&name) {
        headers.insert("x-amzn-errortype", v);
    }
    let body = json!({"message": message}).to_string();
    let mut error = crate::errors::parse_error(status, &headers, body.as_bytes());
    error.headers.clear();
    error
}

impl StreamDecoder for BedrockStreamDecoder {
    fn decode(&mut self, event: Bytes) -> DecodedEvent {
        let message = match decode_message(event) {
            Ok(m) => m,
            Err(e) => {
                return DecodedEvent::Error(GatewayError::new(
                    ErrorKind::UpstreamError,
                    format!("bedrock sent a malformed stream message: {e}"),
                ))
            }
        };
        match message.message_type.as_str() {
            "event" => {
                let Ok(payload) = serde_json::from_slice::<Value>(&message.payload) else {
                    return DecodedEvent::Error(GatewayError::new(
                        ErrorKind::UpstreamError,
                        "bedrock sent a stream event that is not JSON",
                    ));
                };
                self.event(&message.kind, &payload)
            }
            "exception" => DecodedEvent::Error(exception(&message.kind, &message.payload)),
            _ => DecodedEvent::Error(GatewayError::new(
                ErrorKind::UpstreamError,
                message
                    .error_message
                    .unwrap_or_else(|| format!("bedrock stream error: {}", message.kind)),
            )),
        }
    }
}

/// Claude's own event stream through InvokeModelWithResponseStream: each `chunk` message carries
/// one Anthropic Messages event (`{"bytes": base64 JSON}`), which is handed, framed as the SSE
/// event Anthropic's API would have sent, to the Anthropic decoder (marking or translating).
pub struct InvokeStreamDecoder {
    inner: crate::anthropic::stream::AnthropicStreamDecoder,
}

impl InvokeStreamDecoder {
    pub fn new(inner: crate::anthropic::stream::AnthropicStreamDecoder) -> Self {
        InvokeStreamDecoder { inner }
    }
}

impl StreamDecoder for InvokeStreamDecoder {
    fn decode(&mut self, event: Bytes) -> DecodedEvent {
        use base64::Engine as _;
        #[derive(serde::Deserialize)]
        struct Chunk {
            bytes: String,
        }
        let malformed = |what: &str| {
            DecodedEvent::Error(GatewayError::new(
                ErrorKind::UpstreamError,
                format!("bedrock sent a malformed stream message: {what}"),
            ))
        };
        let message = match decode_message(event) {
            Ok(m) => m,
            Err(e) => return malformed(&e.to_string()),
        };
        match message.message_type.as_str() {
            "event" if message.kind == "chunk" => {
                let Ok(chunk) = serde_json::from_slice::<Chunk>(&message.payload) else {
                    return malformed("a chunk without bytes");
                };
                let Ok(json) = base64::engine::general_purpose::STANDARD.decode(chunk.bytes) else {
                    return malformed("chunk bytes are not base64");
                };
                let mut sse = Vec::with_capacity(json.len() + 8);
                sse.extend_from_slice(b"data: ");
                sse.extend_from_slice(&json);
                sse.extend_from_slice(b"\n\n");
                self.inner.decode(Bytes::from(sse))
            }
            "event" => DecodedEvent::KeepAlive(Bytes::new()),
            "exception" => DecodedEvent::Error(exception(&message.kind, &message.payload)),
            _ => DecodedEvent::Error(GatewayError::new(
                ErrorKind::UpstreamError,
                message
                    .error_message
                    .unwrap_or_else(|| format!("bedrock stream error: {}", message.kind)),
            )),
        }
    }
}
