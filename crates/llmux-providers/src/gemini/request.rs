//! OpenAI chat / embeddings requests → Gemini `generateContent` / `embedContent` (pure).

use std::collections::HashMap;

use llmux_types::{GatewayError, RawObject};
use serde_json::{json, Map, Value};

/// Gemini 3 must get its `thoughtSignature` back with a function call; it travels in the OpenAI
/// tool-call id after this separator (LiteLLM's convention).
pub const SIGNATURE_SEPARATOR: &str = "__thought__";

const UNSUPPORTED: &[&str] = &[
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "modalities",
    "audio",
    "prediction",
    "service_tier",
    "store",
];

use crate::common::invalid;

fn part(content_part: &Value) -> Result<Value, GatewayError> {
    match content_part.get("type").and_then(Value::as_str) {
        Some("text") => Ok(json!({"text": content_part.get("text").cloned().unwrap_or(json!(""))})),
        Some("image_url") => {
            let url = content_part
                .pointer("/image_url/url")
                .or_else(|| content_part.get("image_url"))
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("image_url part without a url", "messages"))?;
            match url
                .strip_prefix("data:")
                .and_then(|r| r.split_once(";base64,"))
            {
                Some((mime, data)) => Ok(json!({"inlineData": {"mimeType": mime, "data": data}})),
                None => {
                    let mime = if url.ends_with(".png") {
                        "image/png"
                    } else if url.ends_with(".webp") {
                        "image/webp"
                    } else {
                        "image/jpeg"
                    };
                    Ok(json!({"fileData": {"mimeType": mime, "fileUri": url}}))
                }
            }
        }
        _ => Err(invalid("unsupported content part for gemini", "messages")),
    }
}

fn parts(content: Option<&Value>) -> Result<Vec<Value>, GatewayError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![json!({"text": s})]),
        Some(Value::Array(items)) => items.iter().map(part).collect(),
        Some(_) => Err(invalid(
            "message content must be a string or an array of parts",
            "messages",
        )),
    }
}

fn push(contents: &mut Vec<Value>, role: &str, new_parts: Vec<Value>) {
    if new_parts.is_empty() {
        return;
    }
    if let Some(last) = contents.last_mut() {
        if last["role"] == role {
            if let Some(existing) = last["parts"].as_array_mut() {
                existing.extend(new_parts);
                return;
            }
        }
    }
    contents.push(json!({"role": role, "parts": new_parts}));
}

/// Split a tool-call id into (id, thought signature).
pub fn split_signature(id: &str) -> (&str, Option<&str>) {
    match id.split_once(SIGNATURE_SEPARATOR) {
        Some((id, sig)) => (id, Some(sig)),
        None => (id, None),
    }
}

fn contents(messages: &[Value]) -> Result<(Vec<Value>, Vec<Value>), GatewayError> {
    let mut system = Vec::new();
    let mut out = Vec::new();
    // Gemini answers a function by name; OpenAI tool messages carry only the call id.
    let mut names: HashMap<String, String> = HashMap::new();
    for m in messages {
        match m.get("role").and_then(Value::as_str).unwrap_or("") {
            "system" | "developer" => system.extend(parts(m.get("content"))?),
            "user" => push(&mut out, "user", parts(m.get("content"))?),
            "assistant" => {
                let mut p = parts(m.get("content"))?;
                for call in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let id = call.get("id").and_then(Value::as_str).unwrap_or("");
                    let name = call
                        .pointer("/function/name")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    names.insert(id.to_owned(), name.to_owned());
                    let args_text = call
                        .pointer("/function/arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("{}");
                    let args: Value = if args_text.trim().is_empty() {
                        json!({})
                    } else {
                        serde_json::from_str(args_text)
                            .map_err(|_| invalid("tool call arguments must be JSON", "messages"))?
                    };
                    let mut fc = json!({"functionCall": {"name": name, "args": args}});
                    if let (_, Some(sig)) = split_signature(id) {
                        fc["thoughtSignature"] = json!(sig);
                    }
                    p.push(fc);
                }
                push(&mut out, "model", p);
            }
            "tool" | "function" => {
                let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
                let name = names
                    .get(id)
                    .cloned()
                    .or_else(|| m.get("name").and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or_default();
                let text = match m.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                let response = serde_json::from_str::<Value>(&text)
                    .ok()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| json!({"content": text}));
                push(
                    &mut out,
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                );
            }
            other => {
                return Err(invalid(
                    format!("unknown message role `{other}`"),
                    "messages",
                ))
            }
        }
    }
    Ok((system, out))
}

/// Gemini's schema dialect rejects a few JSON Schema keywords OpenAI tools commonly carry.
fn clean_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "$schema" | "additionalProperties" | "strict")
                })
                .map(|(k, v)| (k.clone(), clean_schema(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(clean_schema).collect()),
        other => other.clone(),
    }
}

fn thinking_budget(effort: &str) -> Option<i64> {
    match effort {
        "minimal" => Some(0),
        "low" => Some(1024),
        "medium" => Some(8192),
        "high" => Some(24576),
        _ => None,
    }
}

pub fn build_chat(
    request: &RawObject<'_>,
    defaults: &Map<String, Value>,
    drop_params: bool,
) -> Result<Value, GatewayError> {
    let get = |key: &str| crate::common::param(request, defaults, key);
    crate::common::refuse_unsupported(request, UNSUPPORTED, "gemini", drop_params)?;
    let messages = crate::common::messages(request)?;
    let (system, contents) = contents(&messages)?;
    let mut body = json!({"contents": contents});
    if !system.is_empty() {
        body["systemInstruction"] = json!({"parts": system});
    }
    let mut config = Map::new();
    for (ours, theirs) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("n", "candidateCount"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
        if let Some(v) = get(ours) {
            config.insert(theirs.into(), v);
        }
    }
    if let Some(v) = get("max_completion_tokens").or_else(|| get("max_tokens")) {
        config.insert("maxOutputTokens".into(), v);
    }
    match get("stop") {
        Some(Value::String(s)) => {
            config.insert("stopSequences".into(), json!([s]));
        }
        Some(list @ Value::Array(_)) => {
            config.insert("stopSequences".into(), list);
        }
        _ => {}
    }
    if let Some(format) = get("response_format") {
        match format.get("type").and_then(Value::as_str) {
            Some("json_object") => {
                config.insert("responseMimeType".into(), json!("application/json"));
            }
            Some("json_schema") => {
                config.insert("responseMimeType".into(), json!("application/json"));
                if let Some(schema) = format.pointer("/json_schema/schema") {
                    config.insert("responseJsonSchema".into(), schema.clone());
                }
            }
            _ => {}
        }
    }
    if let Some(budget) = get("reasoning_effort").and_then(|v| v.as_str().and_then(thinking_budget))
    {
        config.insert(
            "thinkingConfig".into(),
            json!({"thinkingBudget": budget, "includeThoughts": budget > 0}),
        );
    }
    if !config.is_empty() {
        body["generationConfig"] = Value::Object(config);
    }
    if let Some(tools) = get("tools").and_then(|t| t.as_array().cloned()) {
        let declarations: Vec<Value> = tools
            .iter()
            .filter_map(|t| t.get("function"))
            .map(|f| {
                let mut d = json!({"name": f.get("name").cloned().unwrap_or(json!(""))});
                if let Some(desc) = f.get("description") {
                    d["description"] = desc.clone();
                }
                if let Some(params) = f.get("parameters") {
                    d["parameters"] = clean_schema(params);
                }
                d
            })
            .collect();
        if !declarations.is_empty() {
            body["tools"] = json!([{"functionDeclarations": declarations}]);
        }
    }
    if let Some(choice) = get("tool_choice") {
        let config = match &choice {
            Value::String(s) if s == "auto" => Some(json!({"mode": "AUTO"})),
            Value::String(s) if s == "required" => Some(json!({"mode": "ANY"})),
            Value::String(s) if s == "none" => Some(json!({"mode": "NONE"})),
            Value::Object(o) => o
                .get("function")
                .and_then(|f| f.get("name"))
                .map(|n| json!({"mode": "ANY", "allowedFunctionNames": [n]})),
            _ => None,
        };
        if let Some(c) = config {
            body["toolConfig"] = json!({"functionCallingConfig": c});
        }
    }
    for key in ["safetySettings", "safety_settings", "cachedContent"] {
        if let Some(v) = get(key) {
            body[if key == "safety_settings" {
                "safetySettings"
            } else {
                key
            }] = v;
        }
    }
    Ok(body)
}

/// `embedContent` requests, batched: one `requests[]` entry per input text.
pub fn build_embeddings(request: &RawObject<'_>, model: &str) -> Result<Value, GatewayError> {
    let input: Value = request
        .decode("input")
        .ok()
        .flatten()
        .ok_or_else(|| invalid("`input` is required", "input"))?;
    let texts: Vec<String> = match input {
        Value::String(s) => vec![s],
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => {
            return Err(invalid(
                "gemini embeddings take text input (token arrays are not supported)",
                "input",
            ))
        }
    };
    let dimensions = request.decode::<u64>("dimensions").ok().flatten();
    let requests: Vec<Value> = texts
        .iter()
        .map(|t| {
            let mut r =
                json!({"model": format!("models/{model}"), "content": {"parts": [{"text": t}]}});
            if let Some(d) = dimensions {
                r["outputDimensionality"] = json!(d);
            }
            r
        })
        .collect();
    Ok(json!({"requests": requests}))
}
