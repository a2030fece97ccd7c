//! The OpenAI Responses API (`POST /v1/responses`) as an inbound dialect: its request (input
//! items, instructions, function tools, `text.format`, `reasoning.effort`) into the internal chat
//! request, and the internal response and stream back into a Response object and its typed
//! stream events (`response.created` ... `response.completed`), with the ids consistent across
//! events as the SDKs check. Earlier turns (`previous_response_id`) come in as items the caller
//! loaded; storing them is the server's.

use bytes::{Bytes, BytesMut};
use llmux_types::{ErrorKind, GatewayError, Usage};
use serde_json::{json, Map, Value};

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
            id: format!("resp_{}", crate::new_request_id()),
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: request.model.clone(),
            echo: request.echo.clone(),
            store: request.store,
        }
    }

    /// The Response object with `output` and `status`.
    pub fn response(
        &self,
        status: &str,
        output: Vec<Value>,
        usage: Option<&Usage>,
        incomplete: Option<&str>,
    ) -> Value {
        let mut r = Map::new();
        r.insert("id".into(), json!(self.id));
        r.insert("object".into(), json!("response"));
        r.insert("created_at".into(), json!(self.created_at));
        r.insert("status".into(), json!(status));
        r.insert("error".into(), Value::Null);
        r.insert(
            "incomplete_details".into(),
            incomplete.map_or(Value::Null, |reason| json!({"reason": reason})),
        );
        r.insert("model".into(), json!(self.model));
        r.insert("output".into(), Value::Array(output));
        r.insert("store".into(), json!(self.store));
        for (k, v) in &self.echo {
            let v = match (k.as_str(), v) {
                ("tools", Value::Null) => json!([]),
                ("tool_choice", Value::Null) => json!("auto"),
                ("parallel_tool_calls", Value::Null) => json!(true),
                ("text", Value::Null) => json!({"format": {"type": "text"}}),
                ("metadata", Value::Null) => json!({}),
                _ => v.clone(),
            };
            r.insert(k.clone(), v);
        }
        r.insert("usage".into(), usage.map_or(Value::Null, response_usage));
        Value::Object(r)
    }
}

fn response_usage(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens()},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens()},
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

fn item_id(prefix: &str) -> String {
    format!("{prefix}_{}", crate::new_request_id())
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"id": id, "type": "message", "status": status, "role": "assistant",
           "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
}

fn function_call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"id": id, "type": "function_call", "status": status, "call_id": call_id, "name": name, "arguments": arguments})
}

/// The status and incomplete reason for a chat `finish_reason`.
fn status_for(finish: Option<&str>) -> (&'static str, Option<&'static str>) {
    match finish {
        Some("length") => ("incomplete", Some("max_output_tokens")),
        Some("content_filter") => ("incomplete", Some("content_filter")),
        _ => ("completed", None),
    }
}

/// Convert an internal (chat completion) response body into a Response object: its bytes, and
/// the object itself with its output items (for storing).
pub fn response(chat: &[u8], shell: &Shell) -> Result<(Bytes, Value, Vec<Value>), GatewayError> {
    let chat: Value = serde_json::from_slice(chat).map_err(|e| {
        GatewayError::new(
            ErrorKind::UpstreamError,
            format!("the answer is not JSON: {e}"),
        )
    })?;
    let choice = chat.pointer("/choices/0").cloned().unwrap_or_default();
    let msg = choice.get("message").cloned().unwrap_or_default();
    let mut output = Vec::new();
    if let Some(r) = msg
        .get("reasoning_content")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
    {
        output.push(json!({"id": item_id("rs"), "type": "reasoning",
            "summary": [{"type": "summary_text", "text": r}]}));
    }
    if let Some(text) = msg
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        output.push(message_item(&item_id("msg"), text, "completed"));
    }
    for call in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        output.push(function_call_item(
            &item_id("fc"),
            call.get("id").and_then(Value::as_str).unwrap_or(""),
            call.pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or(""),
            call.pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or(""),
            "completed",
        ));
    }
    let usage: Option<Usage> = chat
        .get("usage")
        .and_then(|u| serde_json::from_value(u.clone()).ok());
    let (status, incomplete) = status_for(choice.get("finish_reason").and_then(Value::as_str));
    let body = shell.response(status, output.clone(), usage.as_ref(), incomplete);
    Ok((Bytes::from(body.to_string()), body, output))
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

/// Turns the internal SSE stream (chat chunks) into the Responses API's typed events.
#[derive(Debug)]
pub struct StreamTranslator {
    shell: Shell,
    pending: BytesMut,
    sequence: u64,
    started: bool,
    finished: bool,
    open: Option<Open>,
    done_items: Vec<Value>,
    finish: Option<String>,
    usage: Option<Usage>,
    /// The stream failed (an error event): the response is `failed`, not completed.
    failed: Option<Value>,
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
    pub fn output(&self) -> &[Value] {
        &self.done_items
    }

    /// The Response object as the stream ended.
    pub fn final_response(&self) -> Value {
        if let Some(error) = &self.failed {
            let mut r =
                self.shell
                    .response("failed", self.done_items.clone(), self.usage.as_ref(), None);
            r["error"] = error.clone();
            return r;
        }
        let (status, incomplete) = status_for(self.finish.as_deref());
        self.shell.response(
            status,
            self.done_items.clone(),
            self.usage.as_ref(),
            incomplete,
        )
    }

    /// Whether the stream ended with a whole answer (what may be stored and continued).
    pub fn completed(&self) -> bool {
        self.finished && self.failed.is_none()
    }

    fn event(&mut self, out: &mut BytesMut, kind: &str, mut data: Value) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        out.extend_from_slice(data.to_string().as_bytes());
        out.extend_from_slice(b"\n\n");
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
        let response = self.shell.response("in_progress", Vec::new(), None, None);
        self.event(
            out,
            "response.created",
            json!({"response": response.clone()}),
        );
        self.event(out, "response.in_progress", json!({"response": response}));
    }

    fn close(&mut self, out: &mut BytesMut) {
        match self.open.take() {
            None => {}
            Some(Open::Reasoning { index, id, text }) => {
                self.event(
                    out,
                    "response.reasoning_summary_text.done",
                    json!({"item_id": id, "output_index": index, "summary_index": 0, "text": text}),
                );
                self.event(
                    out,
                    "response.reasoning_summary_part.done",
                    json!({"item_id": id, "output_index": index, "summary_index": 0,
                    "part": {"type": "summary_text", "text": text}}),
                );
                let item = json!({"id": id, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}]});
                self.event(
                    out,
                    "response.output_item.done",
                    json!({"output_index": index, "item": item.clone()}),
                );
                self.done_items.push(item);
            }
            Some(Open::Message { index, id, text }) => {
                self.event(out, "response.output_text.done", json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}));
                self.event(out, "response.content_part.done", json!({"item_id": id, "output_index": index, "content_index": 0,
                    "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []}}));
                let item = message_item(&id, &text, "completed");
                self.event(
                    out,
                    "response.output_item.done",
                    json!({"output_index": index, "item": item.clone()}),
                );
                self.done_items.push(item);
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
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": index, "arguments": arguments}),
                );
                let item = function_call_item(&id, &call_id, &name, &arguments, "completed");
                self.event(
                    out,
                    "response.output_item.done",
                    json!({"output_index": index, "item": item.clone()}),
                );
                self.done_items.push(item);
            }
        }
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
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            return;
        };
        self.start(out);
        if let Some(error) = chunk.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("upstream error")
                .to_owned();
            let code = error.get("code").cloned().unwrap_or(json!("server_error"));
            self.event(
                out,
                "error",
                json!({"code": code, "message": message, "param": null}),
            );
            self.failed = Some(json!({"code": code, "message": message}));
            let response = self.final_response();
            self.event(out, "response.failed", json!({"response": response}));
            self.finished = true;
            return;
        }
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            if let Ok(u) = serde_json::from_value::<Usage>(u.clone()) {
                self.usage = Some(u);
            }
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return;
        };
        let delta = choice.get("delta").cloned().unwrap_or_default();
        if let Some(text) = delta
            .get("reasoning_content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            if !matches!(self.open, Some(Open::Reasoning { .. })) {
                self.close(out);
                let index = self.next_index();
                let id = item_id("rs");
                self.event(
                    out,
                    "response.output_item.added",
                    json!({"output_index": index,
                    "item": {"id": id, "type": "reasoning", "summary": []}}),
                );
                self.event(
                    out,
                    "response.reasoning_summary_part.added",
                    json!({"item_id": id, "output_index": index,
                    "summary_index": 0, "part": {"type": "summary_text", "text": ""}}),
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
                let (index, id) = (*index, id.clone());
                self.event(
                    out,
                    "response.reasoning_summary_text.delta",
                    json!({"item_id": id, "output_index": index,
                    "summary_index": 0, "delta": text}),
                );
            }
        }
        if let Some(text) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            if !matches!(self.open, Some(Open::Message { .. })) {
                self.close(out);
                let index = self.next_index();
                let id = item_id("msg");
                let item = json!({"id": id, "type": "message", "status": "in_progress", "role": "assistant", "content": []});
                self.event(
                    out,
                    "response.output_item.added",
                    json!({"output_index": index, "item": item}),
                );
                self.event(out, "response.content_part.added", json!({"item_id": id, "output_index": index, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}));
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
                let (index, id) = (*index, id.clone());
                self.event(out, "response.output_text.delta", json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text, "logprobs": []}));
            }
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let k = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let same =
                matches!(&self.open, Some(Open::Call { chat_index, .. }) if *chat_index == k);
            if !same {
                self.close(out);
                let index = self.next_index();
                let id = item_id("fc");
                let call_id = call
                    .get("id")
                    .and_then(Value::as_str)
                    .map_or_else(|| item_id("call"), str::to_owned);
                let name = call
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let item = function_call_item(&id, &call_id, &name, "", "in_progress");
                self.event(
                    out,
                    "response.output_item.added",
                    json!({"output_index": index, "item": item}),
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
            if let Some(args) = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
            {
                if let Some(Open::Call {
                    index,
                    id,
                    arguments,
                    ..
                }) = &mut self.open
                {
                    arguments.push_str(args);
                    let (index, id) = (*index, id.clone());
                    self.event(
                        out,
                        "response.function_call_arguments.delta",
                        json!({"item_id": id, "output_index": index, "delta": args}),
                    );
                }
            }
        }
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(finish.to_owned());
        }
    }

    fn complete(&mut self, out: &mut BytesMut) {
        self.start(out);
        self.close(out);
        let response = self.final_response();
        let kind = if response["status"] == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.event(out, kind, json!({"response": response}));
        self.finished = true;
    }
}

#[cfg(test)]
mod tests;
