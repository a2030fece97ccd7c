//! One builder for what translating adapters answer in OpenAI's shape: the chat completion
//! object and its stream chunks, as typed structs, so the fields, their order and their
//! null-ness are the same whichever provider answered (Anthropic, Bedrock, Gemini, Vertex,
//! Cohere), instead of each adapter assembling `json!` trees of its own.

use bytes::Bytes;
use llmux_types::{GatewayError, Usage};
use serde::Serialize;
use serde_json::Value;

/// Seconds since the epoch, for `created`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An OpenAI chat completion (`object: "chat.completion"`).
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl ChatCompletion {
    /// A completion created now.
    pub fn new(
        id: impl Into<String>,
        model: impl Into<String>,
        choices: Vec<Choice>,
        usage: Option<Usage>,
    ) -> Self {
        ChatCompletion {
            id: id.into(),
            object: "chat.completion",
            created: unix_now(),
            model: model.into(),
            choices,
            usage,
        }
    }

    /// A completion of one choice.
    pub fn single(
        id: impl Into<String>,
        model: impl Into<String>,
        message: AssistantMessage,
        finish_reason: &'static str,
        usage: Option<Usage>,
    ) -> Self {
        let choice = Choice::new(0, message, finish_reason);
        ChatCompletion::new(id, model, vec![choice], usage)
    }

    /// The body as the gateway sends it, with the usage it reports.
    pub fn into_response(self) -> Result<crate::TranslatedResponse, GatewayError> {
        let body = serde_json::to_vec(&self).map_err(|e| GatewayError::internal(e.to_string()))?;
        Ok(crate::TranslatedResponse {
            body: Bytes::from(body),
            usage: self.usage,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    pub index: u64,
    pub message: AssistantMessage,
    /// Always `null`: no translating adapter has log probabilities to give.
    pub logprobs: Option<()>,
    pub finish_reason: &'static str,
}

impl Choice {
    pub fn new(index: u64, message: AssistantMessage, finish_reason: &'static str) -> Self {
        Choice {
            index,
            message,
            logprobs: None,
            finish_reason,
        }
    }
}

/// The assistant's message of a choice.
#[derive(Debug, Clone, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    /// `null` for an answer of tool calls alone.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Anthropic-family thinking blocks as the provider sent them (signatures included), so a
    /// client can hand them back on the next turn.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub thinking_blocks: Vec<Value>,
}

impl AssistantMessage {
    /// Text and tool calls; the content is `null` when there are calls and no text.
    pub fn new(text: String, tool_calls: Vec<ToolCall>) -> Self {
        AssistantMessage {
            role: "assistant",
            content: if text.is_empty() && !tool_calls.is_empty() {
                None
            } else {
                Some(text)
            },
            refusal: None,
            tool_calls,
            reasoning_content: None,
            thinking_blocks: Vec::new(),
        }
    }

    /// A message with no content that says why (a prompt the provider blocked).
    pub fn refused(refusal: String) -> Self {
        AssistantMessage {
            content: None,
            refusal: Some(refusal),
            ..AssistantMessage::new(String::new(), Vec::new())
        }
    }

    /// The reasoning text, when there is any.
    pub fn with_reasoning(mut self, reasoning: String) -> Self {
        if !reasoning.is_empty() {
            self.reasoning_content = Some(reasoning);
        }
        self
    }

    pub fn with_thinking_blocks(mut self, blocks: Vec<Value>) -> Self {
        self.thinking_blocks = blocks;
        self
    }
}

/// A function call of an assistant message.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

impl ToolCall {
    pub fn function(id: impl Into<String>, name: impl Into<String>, arguments: String) -> Self {
        ToolCall {
            id: id.into(),
            kind: "function",
            function: FunctionCall {
                name: name.into(),
                arguments,
            },
        }
    }
}

/// What one stream chunk adds to the message (`choices[0].delta`); unset fields are left out.
#[derive(Debug, Default, Serialize)]
pub struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub thinking_blocks: Vec<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallDelta<'a>>,
}

impl<'a> Delta<'a> {
    /// The first chunk: the role, and empty content.
    pub fn start() -> Self {
        Delta {
            role: Some("assistant"),
            content: Some(""),
            ..Delta::default()
        }
    }

    pub fn content(text: &'a str) -> Self {
        Delta {
            content: Some(text),
            ..Delta::default()
        }
    }

    pub fn reasoning(text: &'a str) -> Self {
        Delta {
            reasoning_content: Some(text),
            ..Delta::default()
        }
    }

    pub fn thinking_block(block: Value) -> Self {
        Delta {
            thinking_blocks: vec![block],
            ..Delta::default()
        }
    }

    /// A tool call begins: its id and name, empty arguments.
    pub fn tool_call_start(index: u32, id: &'a str, name: &'a str) -> Self {
        Delta {
            tool_calls: vec![ToolCallDelta {
                index,
                id: Some(id),
                kind: Some("function"),
                function: FunctionDelta {
                    name: Some(name),
                    arguments: "",
                },
            }],
            ..Delta::default()
        }
    }

    /// More of a tool call's arguments.
    pub fn tool_arguments(index: u32, arguments: &'a str) -> Self {
        Delta {
            tool_calls: vec![ToolCallDelta {
                index,
                id: None,
                kind: None,
                function: FunctionDelta {
                    name: None,
                    arguments,
                },
            }],
            ..Delta::default()
        }
    }

    /// A whole tool call in one chunk (providers that stream calls complete).
    pub fn tool_call(index: u32, id: &'a str, name: &'a str, arguments: &'a str) -> Self {
        let mut delta = Delta::tool_call_start(index, id, name);
        delta.tool_calls[0].function.arguments = arguments;
        delta
    }
}

#[derive(Debug, Serialize)]
pub struct ToolCallDelta<'a> {
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta<'a>,
}

#[derive(Debug, Serialize)]
pub struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    pub arguments: &'a str,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [ChunkChoice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<&'a Usage>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: &'a Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

/// One `chat.completion.chunk` as an SSE event (`data: ...\n\n`).
pub fn chat_chunk(
    id: &str,
    created: u64,
    model: &str,
    delta: &Delta<'_>,
    finish: Option<&str>,
    usage: Option<&Usage>,
) -> Vec<u8> {
    let chunk = Chunk {
        id,
        object: "chat.completion.chunk",
        created,
        model,
        choices: [ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason: finish,
        }],
        usage,
    };
    let mut out = b"data: ".to_vec();
    // Serializing these structs cannot fail (string keys, no non-finite floats).
    let _ = serde_json::to_writer(&mut out, &chunk);
    out.extend_from_slice(b"\n\n");
    out
}

#[derive(Serialize)]
struct UsageChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [(); 0],
    usage: &'a Usage,
}

/// The chunk that ends an OpenAI stream asked for usage: no choices, the usage.
pub fn usage_chunk(id: &str, created: u64, model: &str, usage: &Usage) -> Vec<u8> {
    let chunk = UsageChunk {
        id,
        object: "chat.completion.chunk",
        created,
        model,
        choices: [],
        usage,
    };
    let mut out = b"data: ".to_vec();
    let _ = serde_json::to_writer(&mut out, &chunk);
    out.extend_from_slice(b"\n\n");
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    /// The shapes OpenAI's SDKs read: a tool-call answer has `content: null`, a chunk always
    /// carries `finish_reason` (null until the end) and leaves out unset delta fields.
    #[test]
    fn completions_and_chunks_have_openais_shape() {
        let message = AssistantMessage::new(
            String::new(),
            vec![ToolCall::function("call_1", "f", "{}".into())],
        )
        .with_reasoning("because".into());
        let c = ChatCompletion::single("id-1", "m", message, "tool_calls", Some(Usage::new(3, 4)));
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["type"],
            "function"
        );
        assert_eq!(v["choices"][0]["message"]["reasoning_content"], "because");
        assert!(v["choices"][0]["message"].get("refusal").is_none());
        assert_eq!(v["choices"][0]["logprobs"], Value::Null);
        assert_eq!(v["usage"]["total_tokens"], 7);

        let text = AssistantMessage::new("hi".into(), Vec::new());
        assert_eq!(
            serde_json::to_value(&text).unwrap(),
            json!({"role": "assistant", "content": "hi"})
        );

        let sse = chat_chunk("c", 1, "m", &Delta::tool_arguments(2, "{\"a\""), None, None);
        let text = std::str::from_utf8(&sse).unwrap();
        let v: Value =
            serde_json::from_str(text.strip_prefix("data: ").unwrap().trim_end()).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["choices"][0]["finish_reason"], Value::Null);
        assert_eq!(
            v["choices"][0]["delta"],
            json!({"tool_calls": [{"index": 2, "function": {"arguments": "{\"a\""}}]})
        );
        assert!(v.get("usage").is_none());
        let usage = usage_chunk("c", 1, "m", &Usage::new(1, 2));
        let text = std::str::from_utf8(&usage).unwrap();
        let v: Value =
            serde_json::from_str(text.strip_prefix("data: ").unwrap().trim_end()).unwrap();
        assert_eq!(v["choices"], json!([]));
        assert_eq!(v["usage"]["completion_tokens"], 2);
        let start = chat_chunk("c", 1, "m", &Delta::start(), None, None);
        assert!(std::str::from_utf8(&start)
            .unwrap()
            .contains(r#""delta":{"role":"assistant","content":""}"#));
    }
}
