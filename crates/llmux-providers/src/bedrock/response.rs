//! Bedrock Converse response → OpenAI chat completion (pure).

use crate::completion::{AssistantMessage, ChatCompletion, ToolCall};
use llmux_types::{ErrorKind, GatewayError, Usage};
use serde_json::{json, Value};

use super::request::RESPONSE_FORMAT_TOOL;

/// Converse `stopReason` → OpenAI `finish_reason`.
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") | Some("model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("guardrail_intervened") | Some("content_filtered") => "content_filter",
        _ => "stop",
    }
}

/// Converse usage → OpenAI usage. `inputTokens` excludes cache reads and writes, so they are
/// added back (the same convention as Anthropic's own API), reads also as `cached_tokens`.
pub fn usage(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    crate::common::cache_aware_usage(
        n("inputTokens"),
        n("outputTokens"),
        n("cacheReadInputTokens"),
        n("cacheWriteInputTokens"),
    )
}

/// A response id: Converse sends none in the body, so one is made up like LiteLLM does.
pub fn response_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "chatcmpl-{nanos:x}{:04x}",
        NEXT.fetch_add(1, Ordering::Relaxed) & 0xffff
    )
}

/// Translate a whole Converse response body.
pub fn translate(body: &[u8], model: &str) -> Result<ChatCompletion, GatewayError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        GatewayError::new(
            ErrorKind::UpstreamError,
            format!("bedrock returned invalid JSON: {e}"),
        )
    })?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut thinking_blocks = Vec::new();
    let mut tool_calls = Vec::new();
    let mut json_answer = None;
    for block in v
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            text.push_str(t);
        } else if let Some(r) = block.get("reasoningContent") {
            if let Some(rt) = r.get("reasoningText") {
                reasoning.push_str(rt.get("text").and_then(Value::as_str).unwrap_or(""));
                thinking_blocks.push(json!({"type": "thinking",
                    "thinking": rt.get("text").cloned().unwrap_or(json!("")),
                    "signature": rt.get("signature").cloned().unwrap_or(Value::Null)}));
            } else if let Some(data) = r.get("redactedContent") {
                thinking_blocks.push(json!({"type": "redacted_thinking", "data": data}));
            }
        } else if let Some(tool) = block.get("toolUse") {
            let name = tool.get("name").and_then(Value::as_str).unwrap_or("");
            let input = tool.get("input").cloned().unwrap_or(json!({}));
            if name == RESPONSE_FORMAT_TOOL {
                json_answer = Some(input.to_string());
                continue;
            }
            let id = tool.get("toolUseId").and_then(Value::as_str).unwrap_or("");
            tool_calls.push(ToolCall::function(id, name, input.to_string()));
        }
    }
    let mut finish = finish_reason(v.get("stopReason").and_then(Value::as_str));
    if let Some(answer) = json_answer {
        text = answer;
        if finish == "tool_calls" {
            finish = "stop";
        }
    }
    let message = AssistantMessage::new(text, tool_calls)
        .with_reasoning(reasoning)
        .with_thinking_blocks(thinking_blocks);
    let usage = usage(v.get("usage").unwrap_or(&Value::Null));
    Ok(ChatCompletion::single(
        response_id(),
        model,
        message,
        finish,
        Some(usage),
    ))
}
