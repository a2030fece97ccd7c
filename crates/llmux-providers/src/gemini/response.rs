//! Gemini responses (`generateContent`, stream chunks, `batchEmbedContents`) → OpenAI (pure).

use crate::completion::{AssistantMessage, ChatCompletion, Choice, ToolCall};
use llmux_types::usage::{CompletionTokensDetails, PromptTokensDetails};
use llmux_types::{ErrorKind, GatewayError, Usage};
use serde_json::{json, Value};

use super::request::SIGNATURE_SEPARATOR;

pub fn finish_reason(reason: &str) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY"
        | "LANGUAGE" => "content_filter",
        _ => "stop",
    }
}

/// Gemini usage → OpenAI: completion tokens include thoughts, reported as reasoning tokens.
pub fn usage(meta: &Value) -> Option<Usage> {
    let n = |k: &str| meta.get(k).and_then(Value::as_u64).unwrap_or(0);
    meta.get("promptTokenCount")?;
    let thoughts = n("thoughtsTokenCount");
    let mut u = Usage::new(n("promptTokenCount"), n("candidatesTokenCount") + thoughts);
    if n("cachedContentTokenCount") > 0 {
        u.prompt_tokens_details = Some(PromptTokensDetails {
            cached_tokens: Some(n("cachedContentTokenCount")),
        });
    }
    if thoughts > 0 {
        u.completion_tokens_details = Some(CompletionTokensDetails {
            reasoning_tokens: Some(thoughts),
        });
    }
    Some(u)
}

/// An OpenAI tool call for a Gemini `functionCall` part; the thought signature rides in the id.
pub fn tool_call(index: usize, part: &Value) -> ToolCall {
    let call = &part["functionCall"];
    let mut id = format!("call_{index}");
    if let Some(sig) = part.get("thoughtSignature").and_then(Value::as_str) {
        id = format!("{id}{SIGNATURE_SEPARATOR}{sig}");
    }
    let name = call.get("name").and_then(Value::as_str).unwrap_or("");
    let arguments = call.get("args").cloned().unwrap_or(json!({})).to_string();
    ToolCall::function(id, name, arguments)
}

pub fn translate_chat(body: &[u8], model: &str) -> Result<ChatCompletion, GatewayError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        GatewayError::new(
            ErrorKind::UpstreamError,
            format!("gemini returned invalid JSON: {e}"),
        )
    })?;
    let usage = v.get("usageMetadata").and_then(usage);
    let mut choices = Vec::new();
    for (i, candidate) in v
        .get("candidates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let mut text = String::new();
        let mut reasoning = String::new();
        let mut calls = Vec::new();
        for part in candidate
            .pointer("/content/parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if part.get("functionCall").is_some() {
                calls.push(tool_call(calls.len(), part));
            } else if let Some(t) = part.get("text").and_then(Value::as_str) {
                if part.get("thought").and_then(Value::as_bool) == Some(true) {
                    reasoning.push_str(t);
                } else {
                    text.push_str(t);
                }
            }
        }
        let mut finish = finish_reason(
            candidate
                .get("finishReason")
                .and_then(Value::as_str)
                .unwrap_or("STOP"),
        );
        if !calls.is_empty() && finish == "stop" {
            finish = "tool_calls";
        }
        let index = candidate
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(i as u64);
        let message = AssistantMessage::new(text, calls).with_reasoning(reasoning);
        choices.push(Choice::new(index, message, finish));
    }
    if choices.is_empty() {
        // The prompt itself was blocked: an empty answer, marked as filtered.
        let reason = v
            .pointer("/promptFeedback/blockReason")
            .and_then(Value::as_str)
            .unwrap_or("OTHER");
        let message = AssistantMessage::refused(format!("blocked by Gemini: {reason}"));
        choices.push(Choice::new(0, message, "content_filter"));
    }
    let id = v.get("responseId").and_then(Value::as_str).unwrap_or("");
    let model = v
        .get("modelVersion")
        .and_then(Value::as_str)
        .unwrap_or(model);
    Ok(ChatCompletion::new(id, model, choices, usage))
}

pub fn translate_embeddings(body: &[u8], model: &str, base64: bool) -> Result<Value, GatewayError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        GatewayError::new(
            ErrorKind::UpstreamError,
            format!("gemini returned invalid JSON: {e}"),
        )
    })?;
    let data: Vec<Value> = v
        .get("embeddings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, e)| {
            let values = e.get("values").cloned().unwrap_or(json!([]));
            let embedding = if base64 {
                use base64::Engine;
                let bytes: Vec<u8> = values
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_f64)
                    .flat_map(|f| (f as f32).to_le_bytes())
                    .collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                values
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(
        json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": 0, "total_tokens": 0}}),
    )
}
