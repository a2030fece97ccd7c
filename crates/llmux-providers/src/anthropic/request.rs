//! OpenAI chat request → Anthropic Messages request (pure).

use llmux_types::{GatewayError, RawObject};
use serde_json::{json, Map, Value};

/// `max_tokens` is required by Anthropic; used when the request and the deployment set none.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// OpenAI parameters with no Anthropic equivalent (dropped with `drop_params`, else a 400).
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

/// Parameters that need no translation here because they are handled explicitly below, or are
/// gateway/OpenAI-only bookkeeping.
const HANDLED: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
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

use crate::common::invalid;

/// A content part (OpenAI) as an Anthropic content block.
fn content_block(part: &Value) -> Result<Value, GatewayError> {
    match part.get("type").and_then(Value::as_str) {
        Some("text") => {
            let mut block =
                json!({"type": "text", "text": part.get("text").cloned().unwrap_or(json!(""))});
            if let Some(cache) = part.get("cache_control") {
                block["cache_control"] = cache.clone();
            }
            Ok(block)
        }
        Some("image_url") => {
            let url = part
                .pointer("/image_url/url")
                .or_else(|| part.get("image_url"))
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("image_url part without a url", "messages"))?;
            if let Some(rest) = url.strip_prefix("data:") {
                let (media_type, data) = rest.split_once(";base64,").ok_or_else(|| {
                    invalid(
                        "image data URLs must be base64 (data:<type>;base64,...)",
                        "messages",
                    )
                })?;
                Ok(
                    json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}),
                )
            } else {
                Ok(json!({"type": "image", "source": {"type": "url", "url": url}}))
            }
        }
        // Already Anthropic-shaped blocks (document, tool_result, ...) pass through.
        Some(_) => Ok(part.clone()),
        None => Err(invalid("content parts need a `type`", "messages")),
    }
}

fn content_blocks(content: Option<&Value>) -> Result<Vec<Value>, GatewayError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) if text.is_empty() => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![json!({"type": "text", "text": text})]),
        Some(Value::Array(parts)) => parts.iter().map(content_block).collect(),
        Some(_) => Err(invalid(
            "message content must be a string or an array of parts",
            "messages",
        )),
    }
}

fn translate_messages(messages: &[Value]) -> Result<(Vec<Value>, Vec<Value>), GatewayError> {
    let mut system: Vec<Value> = Vec::new();
    let mut out: Vec<Value> = Vec::new();
    for message in messages {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        match role {
            "system" | "developer" => system.extend(content_blocks(message.get("content"))?),
            "user" => crate::common::push_merged(
                &mut out,
                "user",
                content_blocks(message.get("content"))?,
            ),
            "assistant" => {
                // Thinking blocks (with their signatures) go first, as Anthropic sent them.
                let mut blocks: Vec<Value> = message
                    .get("thinking_blocks")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|b| {
                        matches!(
                            b.get("type").and_then(Value::as_str),
                            Some("thinking" | "redacted_thinking")
                        )
                    })
                    .cloned()
                    .collect();
                blocks.extend(content_blocks(message.get("content"))?);
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
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call.get("id").cloned().unwrap_or(json!("")),
                        "name": call.pointer("/function/name").cloned().unwrap_or(json!("")),
                        "input": input,
                    }));
                }
                crate::common::push_merged(&mut out, "assistant", blocks);
            }
            "tool" | "function" => {
                let id = message.get("tool_call_id").cloned().unwrap_or(json!(""));
                // Text stays text; a result with images (or cache_control) keeps its blocks.
                let content = match message.get("content") {
                    Some(Value::Array(parts))
                        if parts.iter().any(|p| {
                            p.get("type").and_then(Value::as_str) != Some("text")
                                || p.get("cache_control").is_some()
                        }) =>
                    {
                        Value::Array(content_blocks(message.get("content"))?)
                    }
                    other => json!(crate::common::text_of(other)),
                };
                let mut result =
                    json!({"type": "tool_result", "tool_use_id": id, "content": content});
                if let Some(cache) = message.get("cache_control") {
                    result["cache_control"] = cache.clone();
                }
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

fn translate_tools(tools: &[Value]) -> Vec<Value> {
    tools
        .iter()
        .map(|tool| match tool.get("function") {
            Some(f) => {
                let mut t = json!({
                    "name": f.get("name").cloned().unwrap_or(json!("")),
                    "input_schema": f.get("parameters").cloned().unwrap_or(json!({"type": "object", "properties": {}})),
                });
                if let Some(d) = f.get("description") {
                    t["description"] = d.clone();
                }
                if let Some(cache) = tool.get("cache_control") {
                    t["cache_control"] = cache.clone();
                }
                t
            }
            // Anthropic-native tools (web_search, computer use, ...) pass through.
            None => tool.clone(),
        })
        .collect()
}

fn translate_tool_choice(choice: &Value, parallel: Option<bool>) -> Option<Value> {
    let mut out = match choice {
        Value::String(s) if s == "auto" => json!({"type": "auto"}),
        Value::String(s) if s == "required" => json!({"type": "any"}),
        Value::String(s) if s == "none" => json!({"type": "none"}),
        Value::Object(o) => match o
            .get("function")
            .and_then(|f| f.get("name"))
            .or_else(|| o.get("name"))
        {
            Some(name) => json!({"type": "tool", "name": name}),
            None => return None,
        },
        _ => return None,
    };
    if parallel == Some(false) && out["type"] != "none" {
        out["disable_parallel_tool_use"] = json!(true);
    }
    Some(out)
}

/// A client's own Anthropic request (`NATIVE_ANTHROPIC`), to send on as it is.
pub struct NativeBody {
    /// The JSON body, its keys in the client's order (JSON schema `properties` order steers
    /// what a model writes first).
    pub body: Vec<u8>,
    /// The client's `anthropic-beta` header, for targets that take betas as a header.
    pub beta: Option<String>,
}

/// Where a client's own Anthropic request goes: the same Messages body, placed three ways.
#[derive(Debug, Clone, Copy)]
pub enum NativeTarget<'a> {
    /// Anthropic's API: the model in the body, betas in the `anthropic-beta` header.
    Anthropic { model: &'a str },
    /// Claude on Vertex AI (`rawPredict` / `streamRawPredict`): the model in the URL, Vertex's
    /// `anthropic_version` in the body, betas in the header.
    Vertex,
    /// Claude on Bedrock (`InvokeModel` / `InvokeModelWithResponseStream`): the model in the URL,
    /// Bedrock's `anthropic_version` and the betas (`anthropic_beta`) in the body, and no
    /// `stream` field (Bedrock refuses it; the URL says).
    Bedrock,
}

/// The `anthropic-beta` values Bedrock's InvokeModel accepts for Claude. Bedrock refuses a
/// request naming any other (`invalid beta flag`), and Claude Code sends first-party betas
/// (`claude-code-...`, `oauth-...`) with every request, so the client's list is cut to these.
/// The same list LiteLLM's Bedrock pass-through keeps.
pub const BEDROCK_BETAS: &[&str] = &[
    "computer-use-2024-10-22",
    "computer-use-2025-01-24",
    "token-efficient-tools-2025-02-19",
    "interleaved-thinking-2025-05-14",
    "output-128k-2025-02-19",
    "dev-full-thinking-2025-05-14",
    "context-1m-2025-08-07",
    "context-management-2025-06-27",
    "effort-2025-11-24",
    "tool-search-tool-2025-10-19",
    "tool-examples-2025-10-29",
];

/// `anthropic_version` for Claude on Bedrock's InvokeModel.
pub const BEDROCK_ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";

/// Parameters a deployment's `litellm_params` may set on a client's own Anthropic request when
/// the client did not.
const NATIVE_DEFAULTS: &[&str] = &["max_tokens", "temperature", "top_p", "top_k"];

/// The client's own Messages body carried by the internal request (`NATIVE_ANTHROPIC`), with
/// its `anthropic-beta`; `None` when there is none.
fn carried<'a>(
    request: &RawObject<'a>,
) -> Result<Option<(RawObject<'a>, Option<String>)>, GatewayError> {
    let malformed = |e: llmux_types::RawObjectError| {
        invalid(
            format!("malformed {}: {e}", crate::NATIVE_ANTHROPIC),
            "body",
        )
    };
    let Some(carried) = request.get(crate::NATIVE_ANTHROPIC) else {
        return Ok(None);
    };
    let carried = RawObject::parse(carried.get().as_bytes()).map_err(malformed)?;
    let Some(raw_body) = carried.get("body") else {
        return Ok(None);
    };
    let beta = carried
        .decode::<String>("beta")
        .ok()
        .flatten()
        .filter(|b| !b.trim().is_empty());
    let body = RawObject::parse(raw_body.get().as_bytes()).map_err(malformed)?;
    Ok(Some((body, beta)))
}

/// The client's own Anthropic request carried by the internal one, edited in place (never
/// re-encoded): the deployment's model (or the target's version field), its defaults for what
/// the client did not set, the gateway's own controls removed, and `metadata` cut to the
/// `user_id` Anthropic accepts (tags there are the gateway's). `None` when there is none (the
/// internal request is translated).
pub fn native_body(
    request: &RawObject<'_>,
    target: NativeTarget<'_>,
    defaults: &Map<String, Value>,
) -> Result<Option<NativeBody>, GatewayError> {
    let Some((body, beta)) = carried(request)? else {
        return Ok(None);
    };
    let mut edit = body.edit();
    match target {
        NativeTarget::Anthropic { model } => {
            let model_json =
                serde_json::to_vec(model).map_err(|e| GatewayError::internal(e.to_string()))?;
            edit = edit.set("model", model_json);
        }
        NativeTarget::Vertex => {
            edit = edit.remove("model").set(
                "anthropic_version",
                json!(crate::vertex::ANTHROPIC_VERTEX_VERSION)
                    .to_string()
                    .into_bytes(),
            );
        }
        NativeTarget::Bedrock => {
            edit = edit.remove("model").remove("stream").set(
                "anthropic_version",
                json!(BEDROCK_ANTHROPIC_VERSION).to_string().into_bytes(),
            );
            if let Some(beta) = &beta {
                let betas: Vec<&str> = beta
                    .split(',')
                    .map(str::trim)
                    .filter(|b| BEDROCK_BETAS.contains(b))
                    .collect();
                if !betas.is_empty() {
                    edit = edit.set("anthropic_beta", json!(betas).to_string().into_bytes());
                }
            }
        }
    }
    for param in crate::GATEWAY_PARAMS {
        edit = edit.remove(param);
    }
    if body.get("metadata").is_some() {
        let user = body
            .decode::<Value>("metadata")
            .ok()
            .flatten()
            .and_then(|m| m.get("user_id").cloned());
        edit = match user {
            Some(user) => edit.set(
                "metadata",
                json!({"user_id": user}).to_string().into_bytes(),
            ),
            None => edit.remove("metadata"),
        };
    }
    for key in NATIVE_DEFAULTS {
        if let Some(value) = defaults.get(*key) {
            edit = edit.default(key, value.to_string().into_bytes());
        }
    }
    Ok(Some(NativeBody {
        body: edit.render(),
        beta,
    }))
}

/// The Messages request's fields `count_tokens` takes (Anthropic refuses any other, such as
/// `max_tokens` or `stream`).
const COUNT_TOKENS_FIELDS: &[&str] = &[
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "mcp_servers",
    "context_management",
    "output_config",
    "output_format",
];

/// The `count_tokens` body for a client's own Messages request: its counted fields as sent, in
/// its order, with the deployment's model (and `anthropic_version` where the target wants it in
/// the body). `None` without a carried request.
pub fn count_tokens_body(
    request: &RawObject<'_>,
    model: &str,
    version: Option<&str>,
) -> Result<Option<NativeBody>, GatewayError> {
    let Some((body, beta)) = carried(request)? else {
        return Ok(None);
    };
    let model_json =
        serde_json::to_vec(model).map_err(|e| GatewayError::internal(e.to_string()))?;
    let mut edit = body.edit().set("model", model_json);
    for key in body.keys() {
        if key != "model" && !COUNT_TOKENS_FIELDS.contains(&key) {
            edit = edit.remove(key);
        }
    }
    if let Some(version) = version {
        edit = edit.set("anthropic_version", json!(version).to_string().into_bytes());
    }
    Ok(Some(NativeBody {
        body: edit.render(),
        beta,
    }))
}

/// The client's `anthropic-beta` values joined to the deployment's own (`extra_headers`).
pub fn join_beta_header(headers: &mut http::HeaderMap, beta: Option<&str>) {
    let Some(beta) = beta else { return };
    let name = http::header::HeaderName::from_static("anthropic-beta");
    let joined = match headers.get(&name).and_then(|v| v.to_str().ok()) {
        Some(own) if !own.is_empty() => format!("{own},{beta}"),
        _ => beta.to_owned(),
    };
    if let Ok(value) = http::header::HeaderValue::from_str(&joined) {
        headers.insert(name, value);
    }
}

/// Thinking budget for an OpenAI `reasoning_effort`.
/// Build the Anthropic request body. `defaults` are `litellm_params` request defaults.
pub fn build_body(
    request: &RawObject<'_>,
    model: &str,
    defaults: &Map<String, Value>,
    drop_params: bool,
) -> Result<Value, GatewayError> {
    let get = |key: &str| crate::common::param(request, defaults, key);
    crate::common::refuse_unsupported(request, UNSUPPORTED, "anthropic", drop_params)?;
    let messages = crate::common::messages(request)?;
    let (system, messages) = translate_messages(&messages)?;
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        let cached = system.iter().any(|b| b.get("cache_control").is_some());
        let value = if cached {
            Value::Array(system)
        } else {
            json!(system
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"))
        };
        body.insert("system".into(), value);
    }
    let max_tokens = get("max_completion_tokens")
        .or_else(|| get("max_tokens"))
        .and_then(|v| v.as_u64())
        .unwrap_or(DEFAULT_MAX_TOKENS);
    body.insert("max_tokens".into(), json!(max_tokens));
    for key in ["temperature", "top_p", "top_k"] {
        if let Some(v) = get(key) {
            body.insert(key.into(), v);
        }
    }
    match get("stop") {
        Some(Value::String(s)) => {
            body.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(list)) => {
            body.insert("stop_sequences".into(), Value::Array(list));
        }
        _ => {}
    }
    if get("stream").and_then(|v| v.as_bool()) == Some(true) {
        body.insert("stream".into(), json!(true));
    }
    let mut tools: Vec<Value> = get("tools")
        .and_then(|v| v.as_array().cloned())
        .map(|t| translate_tools(&t))
        .unwrap_or_default();
    let parallel = get("parallel_tool_calls").and_then(|v| v.as_bool());
    let mut tool_choice = get("tool_choice").and_then(|c| translate_tool_choice(&c, parallel));
    // JSON schema output: a forced tool whose input is the answer (the response maps it back).
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
            tools.push(json!({"name": RESPONSE_FORMAT_TOOL, "description": "Respond with the answer as this tool's input.", "input_schema": schema}));
            tool_choice = Some(json!({"type": "tool", "name": RESPONSE_FORMAT_TOOL}));
        }
    }
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = tool_choice {
        body.insert("tool_choice".into(), choice);
    }
    if let Some(thinking) = get("thinking") {
        body.insert("thinking".into(), thinking);
    } else if let Some(budget) = get("reasoning_effort")
        .and_then(|v| v.as_str().and_then(crate::common::claude_thinking_budget))
    {
        body.insert(
            "thinking".into(),
            json!({"type": "enabled", "budget_tokens": budget}),
        );
        if max_tokens <= budget {
            body.insert("max_tokens".into(), json!(budget + DEFAULT_MAX_TOKENS));
        }
    }
    if let Some(user) = get("user") {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    // Unknown fields that are not OpenAI's (e.g. Anthropic-only options) pass through unchanged.
    for (key, value) in request.iter() {
        if !HANDLED.contains(&key)
            && !UNSUPPORTED.contains(&key)
            && !crate::GATEWAY_PARAMS.contains(&key)
            && !body.contains_key(key)
        {
            if let Ok(v) = serde_json::from_str::<Value>(value.get()) {
                body.insert(key.to_owned(), v);
            }
        }
    }
    Ok(Value::Object(body))
}

/// The tool name used to carry `response_format: json_schema` answers.
pub const RESPONSE_FORMAT_TOOL: &str = "json_tool_call";
