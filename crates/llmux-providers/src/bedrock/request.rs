//! OpenAI chat request → Bedrock Converse request (pure).

use base64::Engine;
use llmux_types::{GatewayError, RawObject};
use serde_json::{json, Map, Value};

use crate::common::invalid;

/// OpenAI parameters Converse has no field for (dropped with `drop_params`, else a 400).
const UNSUPPORTED: &[&str] = &[
    "n",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "modalities",
    "audio",
    "prediction",
    "service_tier",
    "store",
    "web_search_options",
];

/// Handled below, or OpenAI/gateway bookkeeping that has no Bedrock meaning.
const HANDLED: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "metadata",
    "response_format",
    "reasoning_effort",
    "thinking",
    "functions",
    "function_call",
    "verbosity",
];

/// The tool that carries `response_format: json_schema` answers (mapped back to content).
pub const RESPONSE_FORMAT_TOOL: &str = "json_tool_call";

fn image_block(url: &str) -> Result<Value, GatewayError> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(invalid(
            "Bedrock takes images as base64 data URLs (data:image/png;base64,...), not links",
            "messages",
        ));
    };
    let (media_type, data) = rest.split_once(";base64,").ok_or_else(|| {
        invalid(
            "image data URLs must be base64 (data:<type>;base64,...)",
            "messages",
        )
    })?;
    let format = match media_type {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        other => {
            return Err(invalid(
                format!("Bedrock does not accept images of type `{other}`"),
                "messages",
            ))
        }
    };
    // Converse's JSON takes the bytes base64-encoded; re-check so a bad payload is a clear 400.
    if base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .is_err()
    {
        return Err(invalid("image data is not valid base64", "messages"));
    }
    Ok(json!({"image": {"format": format, "source": {"bytes": data.trim()}}}))
}

/// OpenAI content (string or parts) → Converse content blocks; `cache_control` becomes a
/// `cachePoint` after the block it marks.
fn content_blocks(content: Option<&Value>) -> Result<Vec<Value>, GatewayError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) if text.is_empty() => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![json!({"text": text})]),
        Some(Value::Array(parts)) => {
            let mut out = Vec::new();
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let text = part.get("text").and_then(Value::as_str).unwrap_or("");
                        if !text.is_empty() {
                            out.push(json!({"text": text}));
                        }
                    }
                    Some("image_url") => {
                        let url = part
                            .pointer("/image_url/url")
                            .or_else(|| part.get("image_url"))
                            .and_then(Value::as_str)
                            .ok_or_else(|| invalid("image_url part without a url", "messages"))?;
                        out.push(image_block(url)?);
                    }
                    Some(other) => {
                        return Err(invalid(
                            format!("Bedrock does not accept `{other}` content parts"),
                            "messages",
                        ))
                    }
                    None => return Err(invalid("content parts need a `type`", "messages")),
                }
                if part.get("cache_control").is_some() {
                    out.push(json!({"cachePoint": {"type": "default"}}));
                }
            }
            Ok(out)
        }
        Some(_) => Err(invalid(
            "message content must be a string or an array of parts",
            "messages",
        )),
    }
}

fn translate_messages(messages: &[Value]) -> Result<(Vec<Value>, Vec<Value>), GatewayError> {
    let mut system = Vec::new();
    let mut out = Vec::new();
    for message in messages {
        match message.get("role").and_then(Value::as_str).unwrap_or("") {
            "system" | "developer" => system.extend(content_blocks(message.get("content"))?),
            "user" => crate::common::push_merged(
                &mut out,
                "user",
                content_blocks(message.get("content"))?,
            ),
            "assistant" => {
                let mut blocks = content_blocks(message.get("content"))?;
                for call in message
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let arguments = call
                        .pointer("/function/arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("{}");
                    let input: Value = if arguments.trim().is_empty() {
                        json!({})
                    } else {
                        serde_json::from_str(arguments)
                            .map_err(|_| invalid("tool call arguments must be JSON", "messages"))?
                    };
                    blocks.push(json!({"toolUse": {
                        "toolUseId": call.get("id").cloned().unwrap_or(json!("")),
                        "name": call.pointer("/function/name").cloned().unwrap_or(json!("")),
                        "input": input,
                    }}));
                }
                crate::common::push_merged(&mut out, "assistant", blocks);
            }
            "tool" | "function" => {
                let id = message.get("tool_call_id").cloned().unwrap_or(json!(""));
                let text = crate::common::text_of(message.get("content"));
                let result = json!({"toolResult": {"toolUseId": id, "content": [{"text": text}]}});
                crate::common::push_merged(&mut out, "user", vec![result]);
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

fn translate_tools(tools: &[Value]) -> Result<Vec<Value>, GatewayError> {
    tools
        .iter()
        .map(|tool| {
            let f = tool
                .get("function")
                .ok_or_else(|| invalid("Bedrock takes only `function` tools", "tools"))?;
            let mut spec = json!({
                "name": f.get("name").cloned().unwrap_or(json!("")),
                "inputSchema": {"json": f.get("parameters").cloned().unwrap_or(json!({"type": "object", "properties": {}}))},
            });
            if let Some(d) = f.get("description") {
                spec["description"] = d.clone();
            }
            Ok(json!({"toolSpec": spec}))
        })
        .collect()
}

/// `None` for `none` (Converse has no way to forbid tools; LiteLLM also just omits the choice).
fn translate_tool_choice(choice: &Value) -> Option<Value> {
    match choice {
        Value::String(s) if s == "auto" => Some(json!({"auto": {}})),
        Value::String(s) if s == "required" => Some(json!({"any": {}})),
        Value::Object(o) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .or_else(|| o.get("name"))
            .map(|name| json!({"tool": {"name": name}})),
        _ => None,
    }
}

/// Build the Converse request body. `model` is the Bedrock model id (for model-family
/// specifics such as Claude's thinking); `defaults` are `litellm_params` request defaults.
pub fn build_converse(
    request: &RawObject<'_>,
    model: &str,
    defaults: &Map<String, Value>,
    drop_params: bool,
) -> Result<Value, GatewayError> {
    let get = |key: &str| crate::common::param(request, defaults, key);
    crate::common::refuse_unsupported(request, UNSUPPORTED, "bedrock", drop_params)?;
    let messages = crate::common::messages(request)?;
    let (system, messages) = translate_messages(&messages)?;
    let mut body = Map::new();
    body.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        body.insert("system".into(), Value::Array(system));
    }
    let mut inference = Map::new();
    if let Some(max) = get("max_completion_tokens").or_else(|| get("max_tokens")) {
        inference.insert("maxTokens".into(), max);
    }
    if let Some(t) = get("temperature") {
        inference.insert("temperature".into(), t);
    }
    if let Some(p) = get("top_p") {
        inference.insert("topP".into(), p);
    }
    match get("stop") {
        Some(Value::String(s)) => {
            inference.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(list)) => {
            inference.insert("stopSequences".into(), Value::Array(list));
        }
        _ => {}
    }
    let mut tools = match get("tools").as_ref().and_then(Value::as_array) {
        Some(t) => translate_tools(t)?,
        None => Vec::new(),
    };
    let mut tool_choice = get("tool_choice").and_then(|c| translate_tool_choice(&c));
    if let Some(format) = get("response_format") {
        // JSON mode has no native equivalent: it becomes a forced tool taking any object.
        if matches!(
            format.get("type").and_then(Value::as_str),
            Some("json_schema") | Some("json_object")
        ) {
            let schema = format
                .pointer("/json_schema/schema")
                .cloned()
                .unwrap_or(json!({"type": "object"}));
            tools.push(json!({"toolSpec": {"name": RESPONSE_FORMAT_TOOL,
                "description": "Respond with the answer as this tool's input.",
                "inputSchema": {"json": schema}}}));
            tool_choice = Some(json!({"tool": {"name": RESPONSE_FORMAT_TOOL}}));
        }
    }
    if !tools.is_empty() {
        let mut config = json!({"tools": tools});
        if let Some(choice) = tool_choice {
            config["toolChoice"] = choice;
        }
        body.insert("toolConfig".into(), config);
    }
    // Model-specific fields Converse forwards untouched.
    let mut additional = Map::new();
    if let Some(k) = get("top_k") {
        additional.insert("top_k".into(), k);
    }
    let claude = model.contains("anthropic.");
    if let Some(thinking) = get("thinking") {
        additional.insert("thinking".into(), thinking);
    } else if let Some(budget) = get("reasoning_effort")
        .and_then(|v| v.as_str().and_then(crate::common::claude_thinking_budget))
    {
        if claude {
            additional.insert(
                "thinking".into(),
                json!({"type": "enabled", "budget_tokens": budget}),
            );
            let max = inference.get("maxTokens").and_then(Value::as_u64);
            if max.is_none_or(|m| m <= budget) {
                inference.insert("maxTokens".into(), json!(budget + 4096));
            }
        } else {
            additional.insert(
                "reasoning_config".into(),
                json!(get("reasoning_effort").unwrap_or(Value::Null)),
            );
        }
    }
    // Non-OpenAI fields (provider-specific options) go where Converse forwards them to the model.
    for (key, value) in request.iter() {
        if !HANDLED.contains(&key)
            && !UNSUPPORTED.contains(&key)
            && key != "top_k"
            && !crate::GATEWAY_PARAMS.contains(&key)
        {
            if let Ok(v) = serde_json::from_str::<Value>(value.get()) {
                additional.entry(key.to_owned()).or_insert(v);
            }
        }
    }
    if !inference.is_empty() {
        body.insert("inferenceConfig".into(), Value::Object(inference));
    }
    if !additional.is_empty() {
        body.insert(
            "additionalModelRequestFields".into(),
            Value::Object(additional),
        );
    }
    Ok(Value::Object(body))
}
