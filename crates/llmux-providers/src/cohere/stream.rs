//! Cohere v2 chat SSE → OpenAI chunks (pure, stateful per stream).

use bytes::Bytes;
use llmux_types::{ErrorKind, GatewayError};
use serde_json::Value;

use super::{finish_reason, usage};
use crate::completion::Delta;
use crate::sse::parse_fields;
use crate::{DecodedEvent, StreamDecoder};

#[derive(Debug, Default)]
pub struct CohereStreamDecoder {
    id: String,
    model: String,
    created: u64,
}

impl CohereStreamDecoder {
    pub fn new(model: &str) -> Self {
        CohereStreamDecoder {
            model: model.to_owned(),
            ..CohereStreamDecoder::default()
        }
    }

    fn chunk(
        &self,
        delta: &Delta<'_>,
        finish: Option<&str>,
        usage: Option<&llmux_types::Usage>,
    ) -> Bytes {
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

impl StreamDecoder for CohereStreamDecoder {
    fn decode(&mut self, event: Bytes) -> DecodedEvent {
        let fields = parse_fields(&event);
        if !fields.has_data {
            return DecodedEvent::KeepAlive(Bytes::new());
        }
        if fields.data.trim_ascii() == b"[DONE]" {
            return DecodedEvent::Done(Bytes::from_static(b"data: [DONE]\n\n"));
        }
        let Ok(v) = serde_json::from_slice::<Value>(&fields.data) else {
            return DecodedEvent::Error(GatewayError::new(
                ErrorKind::UpstreamError,
                "cohere sent a malformed stream event",
            ));
        };
        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        let message = v.pointer("/delta/message").cloned().unwrap_or_default();
        match v.get("type").and_then(Value::as_str).unwrap_or("") {
            "message-start" => {
                self.id = v.get("id").and_then(Value::as_str).unwrap_or("").to_owned();
                self.created = crate::completion::unix_now();
                self.content(Delta::start())
            }
            "content-start" | "content-delta" => {
                let content = &message["content"];
                if let Some(t) = content
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    self.content(Delta::content(t))
                } else if let Some(t) = content
                    .get("thinking")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    self.content(Delta::reasoning(t))
                } else {
                    DecodedEvent::KeepAlive(Bytes::new())
                }
            }
            "tool-plan-delta" => match message.get("tool_plan").and_then(Value::as_str) {
                Some(plan) if !plan.is_empty() => self.content(Delta::reasoning(plan)),
                _ => DecodedEvent::KeepAlive(Bytes::new()),
            },
            "tool-call-start" => {
                let call = &message["tool_calls"];
                let text =
                    |pointer: &str| call.pointer(pointer).and_then(Value::as_str).unwrap_or("");
                self.content(Delta::tool_call(
                    index as u32,
                    text("/id"),
                    text("/function/name"),
                    text("/function/arguments"),
                ))
            }
            "tool-call-delta" => match message
                .pointer("/tool_calls/function/arguments")
                .and_then(Value::as_str)
            {
                Some(args) if !args.is_empty() => {
                    self.content(Delta::tool_arguments(index as u32, args))
                }
                _ => DecodedEvent::KeepAlive(Bytes::new()),
            },
            "message-end" => {
                let delta = v.get("delta").cloned().unwrap_or_default();
                let u = delta.get("usage").map(usage);
                let mut bytes = self
                    .chunk(
                        &Delta::default(),
                        Some(finish_reason(
                            delta.get("finish_reason").and_then(Value::as_str),
                        )),
                        u.as_ref(),
                    )
                    .to_vec();
                // Cohere ends the stream without a `[DONE]` of its own.
                bytes.extend_from_slice(b"data: [DONE]\n\n");
                DecodedEvent::Chunk {
                    bytes: Bytes::from(bytes),
                    usage: u,
                }
            }
            _ => DecodedEvent::KeepAlive(Bytes::new()),
        }
    }
}
