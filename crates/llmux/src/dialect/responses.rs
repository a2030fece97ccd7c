//! The OpenAI Responses API (`POST /v1/responses`) as an inbound dialect: its request (input
//! items, instructions, function tools, `text.format`, `reasoning.effort`) into the internal chat
//! request, and the internal response and stream back into a Response object and its typed
//! stream events (`response.created` ... `response.completed`), with the ids consistent across
//! events as the SDKs check. Earlier turns (`previous_response_id`) come in as items the caller
//! loaded; storing them is the server's.

use bytes::{Bytes, BytesMut};
use llmux_types::{ErrorKind, GatewayError, Usage};
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::internal::{ChatAnswer, ChatChunk};
use super::{BytesWriter, Str};

/// The internal request made from a Responses request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The OpenAI chat request body.
    pub body: Bytes,
    pub model: String,
    pub stream: bool,
    /// Whether the response is to be stored (`store`, default true).
    pub store: bool,
    pub previous_response_id: Option<String>,
    /// This request's input as items (a string input becomes one user message item).
    pub input_items: Vec<Value>,
    /// The request fields a Response object repeats.
    pub echo: Map<String, Value>,
}

fn invalid(message: impl Into<String>, param: &str) -> GatewayError {
    GatewayError::invalid_request(message).with_param(param)
}

/// The `previous_response_id` of a Responses request body, if any (read before the history it
/// names is loaded).
pub fn previous_response_id(body: &[u8]) -> Option<String> {
    // Only the one field is read (the rest of the body is skipped, not built).
    #[derive(serde::Deserialize)]
    struct Previous {
        previous_response_id: Option<String>,
    }
    serde_json::from_slice::<Previous>(body)
        .ok()?
        .previous_response_id
}

/// Convert a Responses request body into the internal chat request; `history` holds the items of
/// the earlier turns (`previous_response_id`), oldest first.
pub fn chat_request(body: &[u8], history: &[Value]) -> Result<ChatRequest, GatewayError> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| GatewayError::invalid_request(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(request) = request else {
        return Err(GatewayError::invalid_request(
            "the body must be a JSON object",
        ));
    };
    let model = match request.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(invalid("Missing required parameter: 'model'.", "model")),
    };
    let input_items: Vec<Value> = match request.get("input") {
        Some(Value::String(text)) => {
            vec![
                json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}),
            ]
        }
        Some(Value::Array(items)) => items.clone(),
        None | Some(Value::Null) => Vec::new(),
        Some(_) => {
            return Err(invalid(
                "'input' must be a string or an array of items.",
                "input",
            ))
        }
    };
    if input_items.is_empty() && history.is_empty() {
        return Err(invalid("Missing required parameter: 'input'.", "input"));
    }
    let stream = match request.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("'stream' must be a boolean.", "stream")),
    };
    let mut messages = Vec::new();
    if let Some(instructions) = request.get("instructions").and_then(Value::as_str) {
        if !instructions.is_empty() {
            messages.push(json!({"role": "system", "content": instructions}));
        }
    }
    for (i, item) in history.iter().chain(&input_items).enumerate() {
        convert_item(item, i, &mut messages)?;
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("messages".into(), Value::Array(messages));
    if let Some(n) = request.get("max_output_tokens").filter(|v| !v.is_null()) {
        let n = n.as_u64().filter(|n| *n >= 1).ok_or_else(|| {
            invalid(
                "'max_output_tokens' must be a positive integer.",
                "max_output_tokens",
            )
        })?;
        out.insert("max_completion_tokens".into(), json!(n));
    }
    for field in ["temperature", "top_p", "parallel_tool_calls", "user"] {
        if let Some(v) = request.get(field).filter(|v| !v.is_null()) {
            out.insert(field.into(), v.clone());
        }
    }
    if let Some(tools) = request.get("tools").filter(|v| !v.is_null()) {
        let Value::Array(tools) = tools else {
            return Err(invalid("'tools' must be an array.", "tools"));
        };
        if !tools.is_empty() {
            out.insert(
                "tools".into(),
                Value::Array(tools.iter().map(convert_tool).collect::<Result<_, _>>()?),
            );
        }
    }
    if let Some(choice) = request.get("tool_choice").filter(|v| !v.is_null()) {
        out.insert("tool_choice".into(), convert_tool_choice(choice)?);
    }
    if let Some(format) = request
        .get("text")
        .and_then(|t| t.get("format"))
        .filter(|v| !v.is_null())
    {
        match format.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                out.insert("response_format".into(), json!({"type": "json_object"}));
            }
            Some("json_schema") => {
                let mut schema = Map::new();
                for field in ["name", "schema", "strict", "description"] {
                    if let Some(v) = format.get(field) {
                        schema.insert(field.into(), v.clone());
                    }
                }
                if !schema.contains_key("schema") {
                    return Err(invalid("'text.format.schema' is required.", "text.format"));
                }
                out.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": schema}),
                );
            }
            _ => {
                return Err(invalid(
                    "'text.format.type' must be text, json_object or json_schema.",
                    "text.format",
                ))
            }
        }
    }
    if let Some(effort) = request
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .and_then(Value::as_str)
    {
        out.insert("reasoning_effort".into(), json!(effort));
    }
    for field in llmux_providers::GATEWAY_PARAMS
        .iter()
        .filter(|f| **f != llmux_providers::NATIVE_ANTHROPIC)
    {
        if let Some(v) = request.get(*field) {
            out.insert((*field).into(), v.clone());
        }
    }
    if stream {
        out.insert("stream".into(), json!(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let mut echo = Map::new();
    for field in [
        "instructions",
        "max_output_tokens",
        "metadata",
        "parallel_tool_calls",
        "previous_response_id",
        "reasoning",
        "temperature",
        "text",
        "tool_choice",
        "tools",
        "top_p",
        "user",
    ] {
        echo.insert(
            field.into(),
            request.get(field).cloned().unwrap_or(Value::Null),
        );
    }
    Ok(ChatRequest {
        body: Bytes::from(Value::Object(out).to_string()),
        model,
        stream,
        store: request
            .get("store")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        previous_response_id: request
            .get("previous_response_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        input_items,
        echo,
    })
}

/// A content part of an input message as an OpenAI chat content part.
fn content_part(part: &Value, at: &str) -> Result<Value, GatewayError> {
    match part.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text" | "text") => {
            Ok(json!({"type": "text", "text": part.get("text").cloned().unwrap_or(json!(""))}))
        }
        Some("input_image") => {
            let url = part
                .get("image_url")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("{at}: input_image needs an image_url"), "input"))?;
            let mut image = json!({"url": url});
            if let Some(detail) = part.get("detail") {
                image["detail"] = detail.clone();
            }
            Ok(json!({"type": "image_url", "image_url": image}))
        }
        Some("input_file") => {
            let mut file = Map::new();
            for field in ["file_data", "filename", "file_id"] {
                if let Some(v) = part.get(field) {
                    file.insert(field.into(), v.clone());
                }
            }
            Ok(json!({"type": "file", "file": file}))
        }
        Some("refusal") => {
            Ok(json!({"type": "text", "text": part.get("refusal").cloned().unwrap_or(json!(""))}))
        }
        other => Err(invalid(
            format!(
                "{at}: content of type `{}` is not supported",
                other.unwrap_or("?")
            ),
            "input",
        )),
    }
}

fn text_content(content: &Value, at: &str) -> Result<Value, GatewayError> {
    match content {
        Value::String(s) => Ok(json!(s)),
        Value::Array(parts) => {
            let parts: Vec<Value> = parts
                .iter()
                .map(|p| content_part(p, at))
                .collect::<Result<_, _>>()?;
            if parts.iter().all(|p| p["type"] == "text") {
                let text: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
                return Ok(json!(text.concat()));
            }
            Ok(Value::Array(parts))
        }
        _ => Err(invalid(
            format!("{at}.content: must be a string or an array"),
            "input",
        )),
    }
}

fn convert_item(item: &Value, i: usize, out: &mut Vec<Value>) -> Result<(), GatewayError> {
    let at = format!("input[{i}]");
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    match kind {
        "message" => {
            let role = item.get("role").and_then(Value::as_str).unwrap_or("");
            if !matches!(role, "user" | "assistant" | "system" | "developer") {
                return Err(invalid(
                    format!("{at}.role: `{role}` is not a message role"),
                    "input",
                ));
            }
            let content = item
                .get("content")
                .ok_or_else(|| invalid(format!("{at}.content: required"), "input"))?;
            out.push(json!({"role": role, "content": text_content(content, &at)?}));
        }
        "function_call" => {
            let call = json!({
                "id": item.get("call_id").cloned().unwrap_or(json!("")),
                "type": "function",
                "function": {
                    "name": item.get("name").cloned().unwrap_or(json!("")),
                    "arguments": item.get("arguments").cloned().unwrap_or(json!("{}")),
                },
            });
            // Calls of one turn share one assistant message.
            match out.last_mut() {
                Some(last) if last["role"] == "assistant" => {
                    if let Some(calls) = last.get_mut("tool_calls").and_then(Value::as_array_mut) {
                        calls.push(call);
                    } else {
                        last["tool_calls"] = json!([call]);
                    }
                }
                _ => out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            let output = match item.get("output") {
                Some(Value::String(s)) => json!(s),
                Some(v @ Value::Array(_)) => text_content(v, &at)?,
                Some(v) => json!(v.to_string()),
                None => json!(""),
            };
            out.push(json!({"role": "tool", "tool_call_id": item.get("call_id").cloned().unwrap_or(json!("")), "content": output}));
        }
        // Reasoning the model did in an earlier turn: not sent back through chat completions.
        "reasoning" => {}
        other => {
            return Err(invalid(
                format!("{at}.type: `{other}` items are not supported"),
                "input",
            ))
        }
    }
    Ok(())
}

fn convert_tool(tool: &Value) -> Result<Value, GatewayError> {
    if tool.get("type").and_then(Value::as_str) != Some("function") {
        return Err(invalid(
            format!(
                "tools: only `function` tools are supported, not `{}`",
                tool.get("type").and_then(Value::as_str).unwrap_or("?")
            ),
            "tools",
        ));
    }
    let mut function = Map::new();
    for field in ["name", "description", "parameters", "strict"] {
        if let Some(v) = tool.get(field).filter(|v| !v.is_null()) {
            function.insert(field.into(), v.clone());
        }
    }
    if !function.contains_key("name") {
        return Err(invalid("tools: a function tool needs a `name`", "tools"));
    }
    Ok(json!({"type": "function", "function": function}))
}

fn convert_tool_choice(choice: &Value) -> Result<Value, GatewayError> {
    match choice {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => {
            Ok(choice.clone())
        }
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o.get("name").ok_or_else(|| {
                invalid(
                    "tool_choice: a function choice needs a `name`",
                    "tool_choice",
                )
            })?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(invalid(
            "tool_choice: must be auto, none, required or a function",
            "tool_choice",
        )),
    }
}

/// What a Response object says besides its output: its id, creation time, model and the
/// request's fields it repeats.
#[derive(Debug, Clone)]
pub struct Shell {
    pub id: String,
    pub created_at: u64,
    pub model: String,
    pub echo: Map<String, Value>,
    pub store: bool,
}

impl Shell {
    pub fn new(request: &ChatRequest) -> Shell {
        Shell {
            id: prefixed_id("resp"),
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: request.model.clone(),
            echo: request.echo.clone(),
            store: request.store,
        }
    }

    /// The Response object with `output` and `status`.
    fn response<'s>(
        &'s self,
        status: &'static str,
        output: &'s [OutputItem],
        usage: Option<&Usage>,
        incomplete: Option<&'static str>,
        error: Option<&'s FailedError>,
    ) -> ResponseObject<'s> {
        ResponseObject {
            id: &self.id,
            object: "response",
            created_at: self.created_at,
            status,
            error,
            incomplete_details: incomplete.map(|reason| IncompleteDetails { reason }),
            model: &self.model,
            output,
            store: self.store,
            echo: Echo(&self.echo),
            usage: usage.map(ResponseUsage::from),
        }
    }
}

/// A Response object (`object: "response"`).
#[derive(Serialize)]
pub struct ResponseObject<'s> {
    id: &'s str,
    object: &'static str,
    created_at: u64,
    status: &'static str,
    error: Option<&'s FailedError>,
    incomplete_details: Option<IncompleteDetails>,
    model: &'s str,
    output: &'s [OutputItem],
    store: bool,
    #[serde(flatten)]
    echo: Echo<'s>,
    usage: Option<ResponseUsage>,
}

/// The request's fields a Response repeats, with the API's defaults for those not given.
struct Echo<'s>(&'s Map<String, Value>);

impl Serialize for Echo<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            let default = match (k.as_str(), v) {
                ("tools", Value::Null) => Some(json!([])),
                ("tool_choice", Value::Null) => Some(json!("auto")),
                ("parallel_tool_calls", Value::Null) => Some(json!(true)),
                ("text", Value::Null) => Some(json!({"format": {"type": "text"}})),
                ("metadata", Value::Null) => Some(json!({})),
                _ => None,
            };
            map.serialize_entry(k, default.as_ref().unwrap_or(v))?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct IncompleteDetails {
    reason: &'static str,
}

/// Why a streamed response failed (`response.failed`'s `error`).
#[derive(Debug, Clone, Serialize)]
pub struct FailedError {
    code: Value,
    message: String,
}

#[derive(Serialize)]
struct ResponseUsage {
    input_tokens: u64,
    input_tokens_details: CachedTokens,
    output_tokens: u64,
    output_tokens_details: ReasoningTokens,
    total_tokens: u64,
}

#[derive(Serialize)]
struct CachedTokens {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct ReasoningTokens {
    reasoning_tokens: u64,
}

impl From<&Usage> for ResponseUsage {
    fn from(u: &Usage) -> Self {
        ResponseUsage {
            input_tokens: u.prompt_tokens,
            input_tokens_details: CachedTokens {
                cached_tokens: u.cached_tokens(),
            },
            output_tokens: u.completion_tokens,
            output_tokens_details: ReasoningTokens {
                reasoning_tokens: u.reasoning_tokens(),
            },
            total_tokens: u.prompt_tokens + u.completion_tokens,
        }
    }
}

/// One item of a Response's `output`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    Reasoning {
        id: String,
        summary: Vec<SummaryText>,
    },
    Message {
        id: String,
        status: &'static str,
        role: &'static str,
        content: Vec<OutputText>,
    },
    FunctionCall {
        id: String,
        status: &'static str,
        call_id: String,
        name: String,
        arguments: String,
    },
}

impl OutputItem {
    fn reasoning(id: String, text: Option<String>) -> Self {
        OutputItem::Reasoning {
            id,
            summary: text.map(SummaryText::new).into_iter().collect(),
        }
    }

    fn message(id: String, text: Option<String>, status: &'static str) -> Self {
        OutputItem::Message {
            id,
            status,
            role: "assistant",
            content: text.map(OutputText::new).into_iter().collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename = "summary_text")]
pub struct SummaryText {
    text: String,
}

impl SummaryText {
    fn new(text: String) -> Self {
        SummaryText { text }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename = "output_text")]
pub struct OutputText {
    text: String,
    annotations: [(); 0],
    logprobs: [(); 0],
}

impl OutputText {
    fn new(text: String) -> Self {
        OutputText {
            text,
            annotations: [],
            logprobs: [],
        }
    }
}

/// `prefix_` + a fresh request id (`format!` costs a formatter run per call on this path).
fn prefixed_id(prefix: &str) -> String {
    let id = crate::new_request_id();
    let mut out = String::with_capacity(prefix.len() + 1 + id.len());
    out.push_str(prefix);
    out.push('_');
    out.push_str(&id);
    out
}

/// The status and incomplete reason for a chat `finish_reason`.
fn status_for(finish: Option<&str>) -> (&'static str, Option<&'static str>) {
    match finish {
        Some("length") => ("incomplete", Some("max_output_tokens")),
        Some("content_filter") => ("incomplete", Some("content_filter")),
        _ => ("completed", None),
    }
}

fn to_bytes<T: Serialize>(value: &T) -> Result<Bytes, GatewayError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| GatewayError::internal(format!("cannot write the response: {e}")))
}

/// Convert an internal (chat completion) response body into a Response object: its bytes, and
/// its output items (for storing). `usage` as the core already read it (read here when not
/// given).
pub fn response(
    chat_bytes: &[u8],
    shell: &Shell,
    usage: Option<&Usage>,
) -> Result<(Bytes, Vec<OutputItem>), GatewayError> {
    let not_json = |e: serde_json::Error| {
        GatewayError::new(
            ErrorKind::UpstreamError,
            format!("the answer is not an OpenAI chat completion: {e}"),
        )
    };
    let chat: ChatAnswer<'_> = serde_json::from_slice(chat_bytes).map_err(not_json)?;
    let choice = chat.choices.first();
    let msg = choice.and_then(|c| c.message.as_ref());
    let mut output = Vec::new();
    if let Some(msg) = msg {
        if let Some(r) = msg.reasoning_content.as_deref().filter(|r| !r.is_empty()) {
            output.push(OutputItem::reasoning(prefixed_id("rs"), Some(r.to_owned())));
        }
        let text: Option<Str<'_>> = match msg.content {
            Some(raw) if raw.get().starts_with('"') => {
                Some(serde_json::from_str(raw.get()).map_err(not_json)?)
            }
            _ => None,
        };
        if let Some(text) = text.filter(|t| !t.is_empty()) {
            output.push(OutputItem::message(
                prefixed_id("msg"),
                Some(text.into_cow().into_owned()),
                "completed",
            ));
        }
        for call in msg.tool_calls.as_deref().unwrap_or(&[]) {
            let function = call.function.as_ref();
            output.push(OutputItem::FunctionCall {
                id: prefixed_id("fc"),
                status: "completed",
                call_id: call.id.as_deref().unwrap_or("").to_owned(),
                name: function
                    .and_then(|f| f.name.as_deref())
                    .unwrap_or("")
                    .to_owned(),
                arguments: function
                    .and_then(|f| f.arguments.as_deref())
                    .unwrap_or("")
                    .to_owned(),
            });
        }
    }
    let usage = match usage {
        Some(u) => Some(*u),
        None => llmux_providers::openai_compat::extract_usage(chat_bytes),
    };
    let (status, incomplete) = status_for(choice.and_then(|c| c.finish_reason.as_deref()));
    let body = to_bytes(&shell.response(status, &output, usage.as_ref(), incomplete, None))?;
    Ok((body, output))
}

/// An error body in the Responses API's shape (the OpenAI error envelope).
pub fn error_body(e: &GatewayError) -> Bytes {
    Bytes::from(e.envelope().to_json_bytes())
}

/// An item being streamed.
#[derive(Debug)]
enum Open {
    Reasoning {
        index: usize,
        id: String,
        text: String,
    },
    Message {
        index: usize,
        id: String,
        text: String,
    },
    Call {
        index: usize,
        id: String,
        call_id: String,
        name: String,
        arguments: String,
        chat_index: u64,
    },
}

/// One Responses stream event; `sequence_number` is added as it is written.
#[derive(Serialize)]
#[serde(tag = "type")]
enum Event<'a> {
    #[serde(rename = "response.created")]
    Created { response: &'a ResponseObject<'a> },
    #[serde(rename = "response.in_progress")]
    InProgress { response: &'a ResponseObject<'a> },
    #[serde(rename = "response.completed")]
    Completed { response: &'a ResponseObject<'a> },
    #[serde(rename = "response.incomplete")]
    Incomplete { response: &'a ResponseObject<'a> },
    #[serde(rename = "response.failed")]
    Failed { response: &'a ResponseObject<'a> },
    #[serde(rename = "response.output_item.added")]
    ItemAdded {
        output_index: usize,
        item: &'a OutputItem,
    },
    #[serde(rename = "response.output_item.done")]
    ItemDone {
        output_index: usize,
        item: &'a OutputItem,
    },
    #[serde(rename = "response.reasoning_summary_part.added")]
    SummaryPartAdded {
        item_id: &'a str,
        output_index: usize,
        summary_index: usize,
        part: &'a SummaryText,
    },
    #[serde(rename = "response.reasoning_summary_text.delta")]
    SummaryTextDelta {
        item_id: &'a str,
        output_index: usize,
        summary_index: usize,
        delta: &'a str,
    },
    #[serde(rename = "response.reasoning_summary_text.done")]
    SummaryTextDone {
        item_id: &'a str,
        output_index: usize,
        summary_index: usize,
        text: &'a str,
    },
    #[serde(rename = "response.reasoning_summary_part.done")]
    SummaryPartDone {
        item_id: &'a str,
        output_index: usize,
        summary_index: usize,
        part: &'a SummaryText,
    },
    #[serde(rename = "response.content_part.added")]
    ContentPartAdded {
        item_id: &'a str,
        output_index: usize,
        content_index: usize,
        part: &'a OutputText,
    },
    #[serde(rename = "response.output_text.delta")]
    TextDelta {
        item_id: &'a str,
        output_index: usize,
        content_index: usize,
        delta: &'a str,
        logprobs: [(); 0],
    },
    #[serde(rename = "response.output_text.done")]
    TextDone {
        item_id: &'a str,
        output_index: usize,
        content_index: usize,
        text: &'a str,
        logprobs: [(); 0],
    },
    #[serde(rename = "response.content_part.done")]
    ContentPartDone {
        item_id: &'a str,
        output_index: usize,
        content_index: usize,
        part: &'a OutputText,
    },
    #[serde(rename = "response.function_call_arguments.delta")]
    ArgumentsDelta {
        item_id: &'a str,
        output_index: usize,
        delta: &'a str,
    },
    #[serde(rename = "response.function_call_arguments.done")]
    ArgumentsDone {
        item_id: &'a str,
        output_index: usize,
        arguments: &'a str,
    },
    #[serde(rename = "error")]
    Error {
        code: &'a Value,
        message: &'a str,
        param: Option<()>,
    },
}

impl Event<'_> {
    fn name(&self) -> &'static str {
        match self {
            Event::Created { .. } => "response.created",
            Event::InProgress { .. } => "response.in_progress",
            Event::Completed { .. } => "response.completed",
            Event::Incomplete { .. } => "response.incomplete",
            Event::Failed { .. } => "response.failed",
            Event::ItemAdded { .. } => "response.output_item.added",
            Event::ItemDone { .. } => "response.output_item.done",
            Event::SummaryPartAdded { .. } => "response.reasoning_summary_part.added",
            Event::SummaryTextDelta { .. } => "response.reasoning_summary_text.delta",
            Event::SummaryTextDone { .. } => "response.reasoning_summary_text.done",
            Event::SummaryPartDone { .. } => "response.reasoning_summary_part.done",
            Event::ContentPartAdded { .. } => "response.content_part.added",
            Event::TextDelta { .. } => "response.output_text.delta",
            Event::TextDone { .. } => "response.output_text.done",
            Event::ContentPartDone { .. } => "response.content_part.done",
            Event::ArgumentsDelta { .. } => "response.function_call_arguments.delta",
            Event::ArgumentsDone { .. } => "response.function_call_arguments.done",
            Event::Error { .. } => "error",
        }
    }
}

/// An event with its place in the stream.
#[derive(Serialize)]
struct Sequenced<'a> {
    #[serde(flatten)]
    event: &'a Event<'a>,
    sequence_number: u64,
}

/// Turns the internal SSE stream (chat chunks) into the Responses API's typed events.
#[derive(Debug)]
pub struct StreamTranslator {
    shell: Shell,
    pending: BytesMut,
    sequence: u64,
    started: bool,
    finished: bool,
    open: Option<Open>,
    done_items: Vec<OutputItem>,
    finish: Option<String>,
    usage: Option<Usage>,
    /// The stream failed (an error event): the response is `failed`, not completed.
    failed: Option<FailedError>,
}

impl StreamTranslator {
    pub fn new(shell: Shell) -> Self {
        StreamTranslator {
            shell,
            pending: BytesMut::new(),
            sequence: 0,
            started: false,
            finished: false,
            open: None,
            done_items: Vec::new(),
            finish: None,
            usage: None,
            failed: None,
        }
    }

    /// The output items so far (all of them once the stream finished), for storing.
    pub fn output(&self) -> &[OutputItem] {
        &self.done_items
    }

    /// The Response object as the stream ended, with its name as a final event.
    fn final_response(&self) -> (ResponseObject<'_>, bool) {
        if let Some(error) = &self.failed {
            let r = self.shell.response(
                "failed",
                &self.done_items,
                self.usage.as_ref(),
                None,
                Some(error),
            );
            return (r, false);
        }
        let (status, incomplete) = status_for(self.finish.as_deref());
        let r = self.shell.response(
            status,
            &self.done_items,
            self.usage.as_ref(),
            incomplete,
            None,
        );
        (r, incomplete.is_some())
    }

    /// The final Response object's JSON (what is stored).
    pub fn final_response_bytes(&self) -> Result<Bytes, GatewayError> {
        to_bytes(&self.final_response().0)
    }

    /// Whether the stream ended with a whole answer (what may be stored and continued).
    pub fn completed(&self) -> bool {
        self.finished && self.failed.is_none()
    }

    fn write(sequence: &mut u64, out: &mut BytesMut, event: &Event<'_>) {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.name().as_bytes());
        out.extend_from_slice(b"\ndata: ");
        let sequenced = Sequenced {
            event,
            sequence_number: *sequence,
        };
        *sequence += 1;
        // Serializing these structs cannot fail (string keys, no non-finite floats).
        let _ = serde_json::to_writer(BytesWriter(out), &sequenced);
        out.extend_from_slice(b"\n\n");
    }

    fn event(&mut self, out: &mut BytesMut, event: &Event<'_>) {
        Self::write(&mut self.sequence, out, event);
    }

    /// Feed bytes of the internal stream; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Bytes {
        self.pending.extend_from_slice(bytes);
        let mut out = BytesMut::new();
        for text in super::take_events(&mut self.pending) {
            for line in text.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    self.data(data.trim(), &mut out);
                }
            }
        }
        out.freeze()
    }

    /// The internal stream ended.
    pub fn finish(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        if !self.finished {
            self.complete(&mut out);
        }
        out.freeze()
    }

    fn start(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let response = self.shell.response("in_progress", &[], None, None, None);
        Self::write(
            &mut self.sequence,
            out,
            &Event::Created {
                response: &response,
            },
        );
        Self::write(
            &mut self.sequence,
            out,
            &Event::InProgress {
                response: &response,
            },
        );
    }

    fn close(&mut self, out: &mut BytesMut) {
        let item = match self.open.take() {
            None => return,
            Some(Open::Reasoning { index, id, text }) => {
                let part = SummaryText::new(text);
                let (item_id, output_index, summary_index) = (id.as_str(), index, 0);
                self.event(
                    out,
                    &Event::SummaryTextDone {
                        item_id,
                        output_index,
                        summary_index,
                        text: &part.text,
                    },
                );
                self.event(
                    out,
                    &Event::SummaryPartDone {
                        item_id,
                        output_index,
                        summary_index,
                        part: &part,
                    },
                );
                (index, OutputItem::reasoning(id, Some(part.text)))
            }
            Some(Open::Message { index, id, text }) => {
                let part = OutputText::new(text);
                let (item_id, output_index, content_index) = (id.as_str(), index, 0);
                self.event(
                    out,
                    &Event::TextDone {
                        item_id,
                        output_index,
                        content_index,
                        text: &part.text,
                        logprobs: [],
                    },
                );
                self.event(
                    out,
                    &Event::ContentPartDone {
                        item_id,
                        output_index,
                        content_index,
                        part: &part,
                    },
                );
                (index, OutputItem::message(id, Some(part.text), "completed"))
            }
            Some(Open::Call {
                index,
                id,
                call_id,
                name,
                arguments,
                ..
            }) => {
                self.event(
                    out,
                    &Event::ArgumentsDone {
                        item_id: &id,
                        output_index: index,
                        arguments: &arguments,
                    },
                );
                let item = OutputItem::FunctionCall {
                    id,
                    status: "completed",
                    call_id,
                    name,
                    arguments,
                };
                (index, item)
            }
        };
        let (output_index, item) = item;
        self.event(
            out,
            &Event::ItemDone {
                output_index,
                item: &item,
            },
        );
        self.done_items.push(item);
    }

    fn next_index(&self) -> usize {
        self.done_items.len()
    }

    fn data(&mut self, data: &str, out: &mut BytesMut) {
        if self.finished {
            return;
        }
        if data == "[DONE]" {
            self.complete(out);
            return;
        }
        let Ok(chunk) = serde_json::from_str::<ChatChunk<'_>>(data) else {
            return;
        };
        self.start(out);
        if let Some(error) = &chunk.error {
            let message = error.message.as_deref().unwrap_or("upstream error");
            let code = error
                .code
                .and_then(|c| serde_json::from_str::<Value>(c.get()).ok())
                .unwrap_or_else(|| json!("server_error"));
            self.event(
                out,
                &Event::Error {
                    code: &code,
                    message,
                    param: None,
                },
            );
            self.failed = Some(FailedError {
                code,
                message: message.to_owned(),
            });
            let (response, _) = self.final_response();
            let mut written = BytesMut::new();
            let mut sequence = self.sequence;
            Self::write(
                &mut sequence,
                &mut written,
                &Event::Failed {
                    response: &response,
                },
            );
            self.sequence = sequence;
            out.extend_from_slice(&written);
            self.finished = true;
            return;
        }
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        let Some(choice) = chunk.choices.first() else {
            return;
        };
        if let Some(delta) = &choice.delta {
            if let Some(text) = delta.reasoning_content.as_deref().filter(|t| !t.is_empty()) {
                self.reasoning_delta(text, out);
            }
            if let Some(text) = delta.content.as_deref().filter(|t| !t.is_empty()) {
                self.text_delta(text, out);
            }
            for call in delta.tool_calls.as_deref().unwrap_or(&[]) {
                let function = call.function.as_ref();
                self.call_delta(
                    call.index.unwrap_or(0),
                    call.id.as_deref(),
                    function.and_then(|f| f.name.as_deref()),
                    function.and_then(|f| f.arguments.as_deref()),
                    out,
                );
            }
        }
        if let Some(finish) = choice.finish_reason.as_deref() {
            self.finish = Some(finish.to_owned());
        }
    }

    fn reasoning_delta(&mut self, text: &str, out: &mut BytesMut) {
        if !matches!(self.open, Some(Open::Reasoning { .. })) {
            self.close(out);
            let index = self.next_index();
            let id = prefixed_id("rs");
            let item = OutputItem::reasoning(id.clone(), None);
            self.event(
                out,
                &Event::ItemAdded {
                    output_index: index,
                    item: &item,
                },
            );
            self.event(
                out,
                &Event::SummaryPartAdded {
                    item_id: &id,
                    output_index: index,
                    summary_index: 0,
                    part: &SummaryText::new(String::new()),
                },
            );
            self.open = Some(Open::Reasoning {
                index,
                id,
                text: String::new(),
            });
        }
        if let Some(Open::Reasoning {
            index,
            id,
            text: all,
        }) = &mut self.open
        {
            all.push_str(text);
            Self::write(
                &mut self.sequence,
                out,
                &Event::SummaryTextDelta {
                    item_id: id,
                    output_index: *index,
                    summary_index: 0,
                    delta: text,
                },
            );
        }
    }

    fn text_delta(&mut self, text: &str, out: &mut BytesMut) {
        if !matches!(self.open, Some(Open::Message { .. })) {
            self.close(out);
            let index = self.next_index();
            let id = prefixed_id("msg");
            let item = OutputItem::message(id.clone(), None, "in_progress");
            self.event(
                out,
                &Event::ItemAdded {
                    output_index: index,
                    item: &item,
                },
            );
            self.event(
                out,
                &Event::ContentPartAdded {
                    item_id: &id,
                    output_index: index,
                    content_index: 0,
                    part: &OutputText::new(String::new()),
                },
            );
            self.open = Some(Open::Message {
                index,
                id,
                text: String::new(),
            });
        }
        if let Some(Open::Message {
            index,
            id,
            text: all,
        }) = &mut self.open
        {
            all.push_str(text);
            Self::write(
                &mut self.sequence,
                out,
                &Event::TextDelta {
                    item_id: id,
                    output_index: *index,
                    content_index: 0,
                    delta: text,
                    logprobs: [],
                },
            );
        }
    }

    fn call_delta(
        &mut self,
        k: u64,
        call_id: Option<&str>,
        name: Option<&str>,
        args: Option<&str>,
        out: &mut BytesMut,
    ) {
        let same = matches!(&self.open, Some(Open::Call { chat_index, .. }) if *chat_index == k);
        if !same {
            self.close(out);
            let index = self.next_index();
            let id = prefixed_id("fc");
            let call_id = call_id.map_or_else(|| prefixed_id("call"), str::to_owned);
            let name = name.unwrap_or("").to_owned();
            let item = OutputItem::FunctionCall {
                id: id.clone(),
                status: "in_progress",
                call_id: call_id.clone(),
                name: name.clone(),
                arguments: String::new(),
            };
            self.event(
                out,
                &Event::ItemAdded {
                    output_index: index,
                    item: &item,
                },
            );
            self.open = Some(Open::Call {
                index,
                id,
                call_id,
                name,
                arguments: String::new(),
                chat_index: k,
            });
        }
        if let Some(args) = args.filter(|a| !a.is_empty()) {
            if let Some(Open::Call {
                index,
                id,
                arguments,
                ..
            }) = &mut self.open
            {
                arguments.push_str(args);
                Self::write(
                    &mut self.sequence,
                    out,
                    &Event::ArgumentsDelta {
                        item_id: id,
                        output_index: *index,
                        delta: args,
                    },
                );
            }
        }
    }

    fn complete(&mut self, out: &mut BytesMut) {
        self.start(out);
        self.close(out);
        let mut sequence = self.sequence;
        let (response, incomplete) = self.final_response();
        let event = if incomplete {
            Event::Incomplete {
                response: &response,
            }
        } else {
            Event::Completed {
                response: &response,
            }
        };
        Self::write(&mut sequence, out, &event);
        self.sequence = sequence;
        self.finished = true;
    }
}

#[cfg(test)]
mod tests;
