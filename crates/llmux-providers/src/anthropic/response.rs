//! Anthropic Messages response → OpenAI chat completion (pure).

use crate::completion::{AssistantMessage, ChatCompletion, ToolCall};
use llmux_types::{ErrorKind, GatewayError, Usage};
use serde_json::{json, Value};

use super::request::RESPONSE_FORMAT_TOOL;

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub fn finish_reason(stop_reason: Option<&str>) -> Option<&'static str> {
    Some(match stop_reason? {
        "end_turn" | "stop_sequence" | "pause_turn" => "stop",
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    })
}

/// Anthropic usage → OpenAI usage: prompt tokens include cache reads and writes, which are also
/// reported as `cached_tokens` (reads).
pub fn usage(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    crate::common::cache_aware_usage(
        n("input_tokens"),
        n("output_tokens"),
        n("cache_read_input_tokens"),
        n("cache_creation_input_tokens"),
    )
}

/// Translate a whole response body.
pub fn translate(body: &[u8]) -> Result<ChatCompletion, GatewayError> {
    let msg: Value = serde_json::from_slice(body).map_err(|e| {
        GatewayError::new(
            ErrorKind::UpstreamError,
            format!("anthropic returned invalid JSON: {e}"),
        )
    })?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut thinking_blocks = Vec::new();
    let mut tool_calls = Vec::new();
    let mut json_answer = None;
    for block in msg
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("thinking") => {
                reasoning.push_str(block.get("thinking").and_then(Value::as_str).unwrap_or(""));
                thinking_blocks.push(block.clone());
            }
            Some("redacted_thinking") => thinking_blocks.push(block.clone()),
            Some("tool_use") => {
                let name = block.get("name").and_then(Value::as_str).unwrap_or("");
                let input = block.get("input").cloned().unwrap_or(json!({}));
                if name == RESPONSE_FORMAT_TOOL {
                    json_answer = Some(input.to_string());
                    continue;
                }
                let id = block.get("id").and_then(Value::as_str).unwrap_or("");
                tool_calls.push(ToolCall::function(id, name, input.to_string()));
            }
            _ => {}
        }
    }
    let mut finish =
        finish_reason(msg.get("stop_reason").and_then(Value::as_str)).unwrap_or("stop");
    if let Some(answer) = json_answer {
        text.push_str(&answer);
        finish = "stop";
    }
    let message = AssistantMessage::new(text, tool_calls)
        .with_reasoning(reasoning)
        .with_thinking_blocks(thinking_blocks);
    let usage = msg.get("usage").map(usage).unwrap_or_default();
    let text = |key: &str| msg.get(key).and_then(Value::as_str).unwrap_or("");
    Ok(ChatCompletion::single(
        text("id"),
        text("model"),
        message,
        finish,
        Some(usage),
    ))
}
