//! llmux-mock: a provider emulator for tests and benchmarks. Speaks the OpenAI wire format
//! (chat JSON + SSE, completions, embeddings, models) with per-request knobs for latency, chunking
//! and faults, and records what it received so tests can check what the gateway sent.
//!
//! Knobs come from `x-mock-*` request headers or a `mock_options` object in the JSON body
//! (headers win): `latency_ms` (before the response starts), `ttfb_ms` (before the first stream
//! chunk), `chunk_delay_ms`, `chunks`, `status` + `error_body`, `retry_after`, `cut_after`
//! (drop the connection after N chunks), `error_event_after` (an `{"error":...}` event after N
//! chunks), `stall_after` (stop sending after N chunks), `usage_delay_ms` (a pause before the
//! usage chunk), `text` (the answer),
//! `token_expires_in` (lifetime of the OAuth tokens the emulated token endpoints mint), and
//! `embedding: words` (embeddings from the input's words rather than its position, so similar
//! texts get similar vectors: a semantic cache's test).

mod cloud;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Value};

/// How many received requests `/mock/requests` keeps.
const RECORDED_REQUESTS: usize = 256;

#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub requests: AtomicU64,
    pub streams_started: AtomicU64,
    pub streams_completed: AtomicU64,
    pub streams_cancelled: AtomicU64,
    /// OAuth access tokens minted by the emulated token endpoints.
    pub tokens_minted: AtomicU64,
}

/// A request as the mock received it.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedRequest {
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// The body exactly as received, as text.
    pub body: String,
}

#[derive(Debug, Default)]
pub struct MockState {
    pub stats: Stats,
    pub record: bool,
    pub recorded: Mutex<VecDeque<RecordedRequest>>,
    /// Knobs applied to every request that does not set them (`POST /mock/defaults`), so a test
    /// can make this upstream fail and recover while the gateway runs.
    pub defaults: Mutex<Value>,
}

impl MockState {
    /// Replace the default knobs (a JSON object like `mock_options`).
    pub fn set_defaults(&self, knobs: Value) {
        if let Ok(mut d) = self.defaults.lock() {
            *d = knobs;
        }
    }
}

/// Per-request behaviour.
#[derive(Debug, Clone, Default)]
struct Knobs {
    latency_ms: u64,
    ttfb_ms: u64,
    chunk_delay_ms: u64,
    chunks: Option<usize>,
    status: Option<u16>,
    error_body: Option<String>,
    retry_after: Option<String>,
    cut_after: Option<usize>,
    error_event_after: Option<usize>,
    stall_after: Option<usize>,
    /// Wait before the usage chunk (after the finish chunk), as a slow provider may.
    usage_delay_ms: u64,
    text: Option<String>,
    /// How to answer a conversation ending in a partial assistant message: `prefix` (default)
    /// continues after it, `restart` answers from the beginning.
    continue_mode: Option<String>,
}

impl Knobs {
    fn read(headers: &HeaderMap, body: &Value, defaults: &Value) -> Knobs {
        let opts = body.get("mock_options");
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let get = |name: &str| -> Option<String> {
            headers
                .get(format!("x-mock-{}", name.replace('_', "-")))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .or_else(|| opts.and_then(|o| o.get(name)).map(text))
                .or_else(|| defaults.get(name).filter(|v| !v.is_null()).map(text))
        };
        let num = |name: &str| get(name).and_then(|v| v.trim().parse::<u64>().ok());
        Knobs {
            latency_ms: num("latency_ms").unwrap_or(0),
            ttfb_ms: num("ttfb_ms").unwrap_or(0),
            chunk_delay_ms: num("chunk_delay_ms").unwrap_or(0),
            chunks: num("chunks").map(|n| n as usize),
            status: num("status").map(|n| n as u16),
            error_body: get("error_body"),
            retry_after: get("retry_after"),
            cut_after: num("cut_after").map(|n| n as usize),
            error_event_after: num("error_event_after").map(|n| n as usize),
            stall_after: num("stall_after").map(|n| n as usize),
            usage_delay_ms: num("usage_delay_ms").unwrap_or(0),
            text: get("text"),
            continue_mode: get("continue_mode"),
        }
    }
}

/// The mock's routes; `record` keeps the last requests for `/mock/requests`.
pub fn app(record: bool) -> (Router, Arc<MockState>) {
    let state = Arc::new(MockState {
        record,
        ..MockState::default()
    });
    let router = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/messages", post(anthropic_messages))
        .route("/v1/messages/count_tokens", post(anthropic_count_tokens))
        .route("/v1beta/models/{action}", post(gemini))
        .route("/v2/chat", post(cohere_chat))
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(chat),
        )
        .route(
            "/openai/deployments/{deployment}/embeddings",
            post(embeddings),
        )
        .route("/v2/embed", post(cohere_embed))
        .route("/model/{model}/{action}", post(cloud::bedrock))
        .route(
            "/v1/projects/{project}/locations/{location}/publishers/{publisher}/models/{action}",
            post(cloud::vertex),
        )
        .route("/token", post(cloud::google_token))
        .route("/{tenant}/oauth2/v2.0/token", post(cloud::entra_token))
        .route("/v2/rerank", post(cohere_rerank))
        .route("/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/mock/stats", get(stats))
        .route("/mock/requests", get(recorded))
        .route("/mock/reset", post(reset))
        .route("/mock/defaults", post(set_defaults))
        .with_state(Arc::clone(&state));
    (router, state)
}

/// Serve on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, record: bool) -> std::io::Result<()> {
    let (router, _) = app(record);
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router).await
}

/// Marks a request a cloud emulation rewrote and handed to another emulation: it was recorded as
/// the gateway sent it, not as rewritten.
#[derive(Debug, Clone, Copy)]
struct Rewritten;

/// Keep the request as it arrived, for `/__mock/requests`.
fn record(state: &MockState, parts: &axum::http::request::Parts, bytes: &[u8]) {
    if !state.record {
        return;
    }
    let recorded = RecordedRequest {
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(bytes).into_owned(),
    };
    if let Ok(mut log) = state.recorded.lock() {
        if log.len() == RECORDED_REQUESTS {
            log.pop_front();
        }
        log.push_back(recorded);
    }
}

async fn read(state: &MockState, request: Request) -> Result<(HeaderMap, Value, Knobs), Response> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 512 * 1024 * 1024)
        .await
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()).into_response())?;
    state.stats.requests.fetch_add(1, Ordering::Relaxed);
    if parts.extensions.get::<Rewritten>().is_none() {
        record(state, &parts, &bytes);
    }
    let body: Value = serde_json::from_slice(&bytes).map_err(|e| {
        error_response(400, &json!({"error": {"message": format!("invalid JSON: {e}"), "type": "invalid_request_error", "param": null, "code": null}}).to_string(), None)
    })?;
    let defaults = state
        .defaults
        .lock()
        .map(|d| d.clone())
        .unwrap_or(Value::Null);
    let knobs = Knobs::read(&parts.headers, &body, &defaults);
    if knobs.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(knobs.latency_ms)).await;
    }
    if let Some(status) = knobs.status.filter(|s| *s >= 400) {
        let body = knobs
            .error_body
            .clone()
            .unwrap_or_else(|| default_error(status));
        return Err(error_response(status, &body, knobs.retry_after.as_deref()));
    }
    Ok((parts.headers, body, knobs))
}

fn default_error(status: u16) -> String {
    let (kind, code, message) = match status {
        400 => (
            "invalid_request_error",
            "invalid_request",
            "mock bad request",
        ),
        401 => (
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided",
        ),
        404 => (
            "invalid_request_error",
            "model_not_found",
            "The model does not exist",
        ),
        429 => (
            "requests",
            "rate_limit_exceeded",
            "Rate limit reached for requests",
        ),
        503 => ("server_error", "overloaded", "The server is overloaded"),
        _ => ("server_error", "server_error", "mock upstream error"),
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}}).to_string()
}

fn error_response(status: u16, body: &str, retry_after: Option<&str>) -> Response {
    let mut response = Response::new(Body::from(body.to_owned()));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    if let Some(value) = retry_after.and_then(|r| HeaderValue::from_str(r).ok()) {
        headers.insert("retry-after", value);
    }
    rate_limit_headers(headers);
    response
}

fn rate_limit_headers(headers: &mut HeaderMap) {
    headers.insert(
        "x-ratelimit-limit-requests",
        HeaderValue::from_static("10000"),
    );
    headers.insert(
        "x-ratelimit-remaining-requests",
        HeaderValue::from_static("9999"),
    );
    headers.insert(
        "x-ratelimit-limit-tokens",
        HeaderValue::from_static("1000000"),
    );
    headers.insert(
        "x-ratelimit-remaining-tokens",
        HeaderValue::from_static("999000"),
    );
    headers.insert(
        "x-ratelimit-reset-requests",
        HeaderValue::from_static("6ms"),
    );
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The answer to a request for JSON output (`response_format` or its provider equivalent).
const JSON_ANSWER: &str = r#"{"location": "Paris"}"#;
/// The reasoning text emulators return when a request asks for reasoning.
const REASONING: &str = "Thinking it over.";

/// The status and message of an error the knobs produced (OpenAI-shaped), so each emulation
/// can answer in its provider's own error shape with the same message.
async fn knob_error(response: Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("message"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "mock error".to_owned());
    (status, message)
}

fn answer_pieces(knobs: &Knobs) -> Vec<String> {
    match (&knobs.text, knobs.chunks) {
        (Some(text), None) => split_words(text),
        (Some(text), Some(n)) => split_even(text, n.max(1)),
        (None, n) => (0..n.unwrap_or(20)).map(|i| format!("tok{i} ")).collect(),
    }
}

fn split_words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if !c.is_whitespace() && current.chars().last().is_some_and(char::is_whitespace) {
            out.push(std::mem::take(&mut current));
        }
        current.push(c);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// `n` pieces of about equal length, split on character boundaries.
fn split_even(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let size = chars.len().div_ceil(n).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

fn usage_json(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

fn prompt_tokens(body: &Value) -> usize {
    body.get("messages")
        .or_else(|| body.get("prompt"))
        .map(|m| m.to_string().len() / 4)
        .unwrap_or(0)
        .max(1)
}

async fn chat(State(state): State<Arc<MockState>>, request: Request) -> Response {
    let (_, body, knobs) = match read(&state, request).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    generate(state, body, knobs, true)
}

async fn completions(State(state): State<Arc<MockState>>, request: Request) -> Response {
    let (_, body, knobs) = match read(&state, request).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    generate(state, body, knobs, false)
}

/// The pieces left after a partial answer `prefix`, split where the full answer's pieces were.
fn continue_after(pieces: Vec<String>, prefix: &str) -> Vec<String> {
    let full: String = pieces.concat();
    if !full.starts_with(prefix) {
        return pieces;
    }
    let mut skipped = 0;
    let mut out = Vec::new();
    for piece in pieces {
        let end = skipped + piece.len();
        if end <= prefix.len() {
            skipped = end;
            continue;
        }
        let from = prefix.len().saturating_sub(skipped);
        out.push(piece[from..].to_owned());
        skipped = end;
    }
    out
}

fn generate(state: Arc<MockState>, body: Value, knobs: Knobs, chat: bool) -> Response {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock")
        .to_owned();
    let mut pieces = answer_pieces(&knobs);
    let partial = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
        .and_then(|m| m.get("content").and_then(Value::as_str));
    if let Some(prefix) = partial {
        if knobs.continue_mode.as_deref() != Some("restart") {
            pieces = continue_after(pieces, prefix);
        }
    }
    let wants_json = matches!(
        body.pointer("/response_format/type")
            .and_then(Value::as_str),
        Some("json_schema") | Some("json_object")
    );
    if wants_json {
        pieces = vec![JSON_ANSWER.to_owned()];
    }
    // Reasoning models behind OpenAI-compatible servers (DeepSeek, vLLM, Groq) answer with
    // `reasoning_content` when asked for reasoning.
    let reasoning = body.get("reasoning_effort").is_some();
    let prompt = prompt_tokens(&body);
    let id = format!("chatcmpl-mock{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream {
        let text: String = pieces.concat();
        let value = if chat {
            let mut message = json!({"role": "assistant", "content": text, "refusal": null});
            if reasoning {
                message["reasoning_content"] = json!(REASONING);
            }
            if body.get("tools").is_some()
                && body.get("tool_choice").and_then(Value::as_str) == Some("required")
            {
                message = json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                    {"id": "call_mock1", "type": "function", "function": {"name": tool_name(&body), "arguments": "{\"location\":\"Paris\"}"}}]});
            }
            let finish = if message.get("tool_calls").is_some() {
                "tool_calls"
            } else {
                "stop"
            };
            json!({"id": id, "object": "chat.completion", "created": unix_now(), "model": model,
                   "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
                   "usage": usage_json(prompt, pieces.len()), "system_fingerprint": "fp_mock",
                   "x_mock_extra": {"kept": true}})
        } else {
            json!({"id": id, "object": "text_completion", "created": unix_now(), "model": model,
                   "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": "stop"}],
                   "usage": usage_json(prompt, pieces.len())})
        };
        let mut response = Json(value).into_response();
        rate_limit_headers(response.headers_mut());
        return response;
    }
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let tool_call = chat
        && body.get("tools").is_some()
        && body.get("tool_choice").and_then(Value::as_str) == Some("required");
    let tool = tool_name(&body);
    state.stats.streams_started.fetch_add(1, Ordering::Relaxed);
    let created = unix_now();
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = move |delta: Value, finish: Value| -> Bytes {
        let choice = if chat {
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")), "logprobs": null, "finish_reason": finish})
        };
        let v = json!({"id": id, "object": object, "created": created, "model": model, "system_fingerprint": "fp_mock", "choices": [choice]});
        Bytes::from(format!("data: {v}\n\n"))
    };
    let total = pieces.len();
    let events = async_stream::stream! {
        let mut guard = StreamGuard { state: Arc::clone(&state), completed: false };
        if knobs.ttfb_ms > 0 {
            tokio::time::sleep(Duration::from_millis(knobs.ttfb_ms)).await;
        }
        if chat {
            yield Ok::<Bytes, std::io::Error>(chunk(json!({"role": "assistant", "content": ""}), Value::Null));
            if reasoning {
                yield Ok(chunk(json!({"reasoning_content": REASONING}), Value::Null));
            }
        }
        let pieces_iter: Vec<Value> = if tool_call {
            let args = ["{\"loc", "ation\":", "\"Paris\"}"];
            let mut v = vec![json!({"tool_calls": [{"index": 0, "id": "call_mock1", "type": "function", "function": {"name": tool, "arguments": ""}}]})];
            v.extend(args.iter().map(|a| json!({"tool_calls": [{"index": 0, "function": {"arguments": a}}]})));
            v
        } else {
            pieces.iter().map(|p| json!({"content": p})).collect()
        };
        for (sent, delta) in pieces_iter.into_iter().enumerate() {
            if Some(sent) == knobs.cut_after {
                // Let what was sent reach the socket first: the cut must come after N chunks.
                tokio::time::sleep(Duration::from_millis(20)).await;
                yield Err(std::io::Error::other("mock: connection cut"));
                return;
            }
            if Some(sent) == knobs.error_event_after {
                yield Ok(Bytes::from(format!("data: {}\n\n", json!({"error": {"message": "mock error inside the stream", "type": "server_error", "param": null, "code": "mock_stream_error"}}))));
                guard.completed = true;
                return;
            }
            if Some(sent) == knobs.stall_after {
                std::future::pending::<()>().await;
            }
            if knobs.chunk_delay_ms > 0 && sent > 0 {
                tokio::time::sleep(Duration::from_millis(knobs.chunk_delay_ms)).await;
            }
            yield Ok(chunk(delta, Value::Null));
        }
        let finish = if tool_call { "tool_calls" } else { "stop" };
        yield Ok(chunk(json!({}), json!(finish)));
        if knobs.usage_delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(knobs.usage_delay_ms)).await;
        }
        if include_usage {
            let v = json!({"id": "usage", "object": object, "created": created, "model": "mock", "choices": [], "usage": usage_json(prompt, total)});
            yield Ok(Bytes::from(format!("data: {v}\n\n")));
        }
        yield Ok(Bytes::from_static(b"data: [DONE]\n\n"));
        guard.completed = true;
    };
    let mut response = Response::new(Body::from_stream(events));
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    rate_limit_headers(headers);
    response
}

/// Anthropic Messages API emulation (JSON and SSE), so the gateway's Anthropic adapter runs
/// end to end: text answers, a forced tool call (`tool_choice: {type: any|tool}`), Anthropic-shaped
/// error bodies, and the same `chunks` / `text` / `status` knobs.
async fn anthropic_messages(State(state): State<Arc<MockState>>, request: Request) -> Response {
    let (headers, body, knobs) = match read(&state, request).await {
        Ok(v) => v,
        Err(r) => return anthropic_error_rewrite(r).await,
    };
    if headers.get("x-api-key").is_none() || headers.get("anthropic-version").is_none() {
        let body = json!({"type": "error", "error": {"type": "authentication_error", "message": "missing x-api-key or anthropic-version"}});
        return error_response(401, &body.to_string(), None);
    }
    if body.get("max_tokens").and_then(Value::as_u64).is_none() {
        let body = json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"}});
        return error_response(400, &body.to_string(), None);
    }
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("claude-mock")
        .to_owned();
    let pieces = answer_pieces(&knobs);
    let tool = body
        .get("tool_choice")
        .filter(|c| {
            matches!(
                c.get("type").and_then(Value::as_str),
                Some("any") | Some("tool")
            )
        })
        .and_then(|c| {
            c.get("name")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| {
                    body.pointer("/tools/0/name")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
        });
    let id = format!("msg_mock{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let input_tokens = prompt_tokens(&body);
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream {
        let (mut content, stop) = match &tool {
            Some(name) => (
                json!([{"type": "tool_use", "id": "toolu_mock1", "name": name, "input": {"location": "Paris"}}]),
                "tool_use",
            ),
            None => (
                json!([{"type": "text", "text": pieces.concat()}]),
                "end_turn",
            ),
        };
        if body.get("thinking").is_some() {
            if let Some(blocks) = content.as_array_mut() {
                blocks.insert(
                    0,
                    json!({"type": "thinking", "thinking": REASONING, "signature": "c2ln"}),
                );
            }
        }
        return Json(json!({"id": id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2, "output_tokens": pieces.len()}}))
        .into_response();
    }
    let event = |v: Value| {
        Bytes::from(format!(
            "event: {}\ndata: {v}\n\n",
            v["type"].as_str().unwrap_or("")
        ))
    };
    let mut events = vec![event(
        json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": null, "usage": {"input_tokens": input_tokens, "cache_read_input_tokens": 2, "output_tokens": 1}}}),
    )];
    events.push(event(json!({"type": "ping"})));
    // With `thinking` asked for, a thinking block (text, then its signature) comes first.
    let mut index = 0;
    if body.get("thinking").is_some() {
        events.push(event(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}})));
        events.push(event(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": REASONING}})));
        events.push(event(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "c2ln"}})));
        events.push(event(json!({"type": "content_block_stop", "index": 0})));
        index = 1;
    }
    let stop = match &tool {
        Some(name) => {
            events.push(event(json!({"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": "toolu_mock1", "name": name, "input": {}}})));
            for part in ["{\"loc", "ation\": \"Par", "is\"}"] {
                events.push(event(json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": part}})));
            }
            "tool_use"
        }
        None => {
            events.push(event(json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})));
            for piece in &pieces {
                events.push(event(json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}})));
            }
            "end_turn"
        }
    };
    events.push(event(json!({"type": "content_block_stop", "index": index})));
    events.push(event(json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": pieces.len()}})));
    events.push(event(json!({"type": "message_stop"})));
    let stream = futures_util::stream::iter(events.into_iter().map(Ok::<Bytes, std::io::Error>));
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    response
}

/// Gemini API emulation: `<model>:generateContent`, `:streamGenerateContent?alt=sse`,
/// `:batchEmbedContents`, with a forced function call when `toolConfig` says `ANY`.
async fn gemini(
    State(state): State<Arc<MockState>>,
    axum::extract::Path(action): axum::extract::Path<String>,
    request: Request,
) -> Response {
    let (headers, body, knobs) = match read(&state, request).await {
        Ok(v) => v,
        Err(r) => {
            let (status, message) = knob_error(r).await;
            let name = match status {
                429 => "RESOURCE_EXHAUSTED",
                400 => "INVALID_ARGUMENT",
                401 => "UNAUTHENTICATED",
                403 => "PERMISSION_DENIED",
                404 => "NOT_FOUND",
                503 => "UNAVAILABLE",
                _ => "INTERNAL",
            };
            return error_response(
                status,
                &json!({"error": {"code": status, "message": message, "status": name}}).to_string(),
                None,
            );
        }
    };
    if headers.get("x-goog-api-key").is_none() {
        return error_response(403, &json!({"error": {"code": 403, "message": "API key missing", "status": "PERMISSION_DENIED"}}).to_string(), None);
    }
    let Some((model, method)) = action.split_once(':') else {
        return error_response(
            404,
            &json!({"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}})
                .to_string(),
            None,
        );
    };
    if method == "batchEmbedContents" {
        let n = body
            .get("requests")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let embeddings: Vec<Value> = (0..n)
            .map(|i| json!({"values": [i as f64, 0.5, 0.25]}))
            .collect();
        return Json(json!({"embeddings": embeddings})).into_response();
    }
    let mut pieces = answer_pieces(&knobs);
    if body
        .pointer("/generationConfig/responseMimeType")
        .and_then(Value::as_str)
        == Some("application/json")
    {
        pieces = vec![JSON_ANSWER.to_owned()];
    }
    let thoughts = body
        .pointer("/generationConfig/thinkingConfig/includeThoughts")
        .and_then(Value::as_bool)
        == Some(true);
    let forced = body
        .pointer("/toolConfig/functionCallingConfig/mode")
        .and_then(Value::as_str)
        == Some("ANY");
    let tool = body
        .pointer("/tools/0/functionDeclarations/0/name")
        .and_then(Value::as_str)
        .unwrap_or("get_weather")
        .to_owned();
    let usage = json!({"promptTokenCount": 7, "candidatesTokenCount": pieces.len(), "thoughtsTokenCount": 3, "totalTokenCount": 10 + pieces.len()});
    let part_for = |text: &str| json!({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}], "modelVersion": model});
    if method == "generateContent" {
        let mut parts = if forced {
            json!([{"functionCall": {"name": tool, "args": {"location": "Paris"}}, "thoughtSignature": "c2ln"}])
        } else {
            json!([{"text": pieces.concat()}])
        };
        if thoughts {
            if let Some(p) = parts.as_array_mut() {
                p.insert(0, json!({"text": REASONING, "thought": true}));
            }
        }
        return Json(json!({"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": usage, "modelVersion": model, "responseId": "mock-gemini"})).into_response();
    }
    let mut events: Vec<Value> = Vec::new();
    if forced {
        events.push(json!({"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": tool, "args": {"location": "Paris"}}}]}, "index": 0}], "modelVersion": model}));
    } else {
        events.extend(pieces.iter().map(|p| part_for(p)));
    }
    events.push(json!({"candidates": [{"content": {"role": "model", "parts": [{"text": ""}]}, "finishReason": "STOP", "index": 0}], "usageMetadata": usage, "modelVersion": model}));
    let stream = futures_util::stream::iter(
        events
            .into_iter()
            .map(|e| Ok::<Bytes, std::io::Error>(Bytes::from(format!("data: {e}\r\n\r\n")))),
    );
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    response
}

/// Cohere v2 chat emulation (JSON and SSE, forced tool call with `tool_choice: REQUIRED`).
async fn cohere_chat(State(state): State<Arc<MockState>>, request: Request) -> Response {
    let (headers, body, knobs) = match read(&state, request).await {
        Ok(v) => v,
        Err(r) => {
            let (status, message) = knob_error(r).await;
            return error_response(status, &json!({"message": message}).to_string(), None);
        }
    };
    if headers.get("authorization").is_none() {
        return error_response(
            401,
            &json!({"message": "no api key supplied"}).to_string(),
            None,
        );
    }
    let mut pieces = answer_pieces(&knobs);
    if body.get("response_format").is_some() {
        pieces = vec![JSON_ANSWER.to_owned()];
    }
    let thinking = body.get("thinking").is_some();
    let forced = body.get("tool_choice").and_then(Value::as_str) == Some("REQUIRED");
    let tool = body
        .pointer("/tools/0/function/name")
        .and_then(Value::as_str)
        .unwrap_or("get_weather")
        .to_owned();
    let usage = json!({"billed_units": {"input_tokens": 5, "output_tokens": pieces.len()}, "tokens": {"input_tokens": 9, "output_tokens": pieces.len()}, "cached_tokens": 4});
    if body.get("stream").and_then(Value::as_bool) != Some(true) {
        let message = if forced {
            json!({"role": "assistant", "tool_plan": "I will call the tool.", "tool_calls": [{"id": "call_c1", "type": "function", "function": {"name": tool, "arguments": "{\"location\":\"Paris\"}"}}]})
        } else {
            let mut content = vec![json!({"type": "text", "text": pieces.concat()})];
            if thinking {
                content.insert(0, json!({"type": "thinking", "thinking": REASONING}));
            }
            json!({"role": "assistant", "content": content})
        };
        return Json(json!({"id": "cohere-mock", "message": message, "finish_reason": if forced { "TOOL_CALL" } else { "COMPLETE" }, "usage": usage})).into_response();
    }
    let event = |v: Value| {
        Bytes::from(format!(
            "event: {}\ndata: {v}\n\n",
            v["type"].as_str().unwrap_or("")
        ))
    };
    let mut events = vec![event(
        json!({"id": "cohere-mock", "type": "message-start", "delta": {"message": {"role": "assistant"}}}),
    )];
    if forced {
        events.push(event(json!({"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {"id": "call_c1", "type": "function", "function": {"name": tool, "arguments": ""}}}}})));
        for part in ["{\"location\":", "\"Paris\"}"] {
            events.push(event(json!({"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {"function": {"arguments": part}}}}})));
        }
        events.push(event(json!({"type": "tool-call-end", "index": 0})));
    } else {
        events.push(event(json!({"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}})));
        for p in &pieces {
            events.push(event(json!({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": p}}}})));
        }
        events.push(event(json!({"type": "content-end", "index": 0})));
    }
    events.push(event(json!({"type": "message-end", "delta": {"finish_reason": if forced { "TOOL_CALL" } else { "COMPLETE" }, "usage": usage}})));
    let stream = futures_util::stream::iter(events.into_iter().map(Ok::<Bytes, std::io::Error>));
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    response
}

async fn cohere_rerank(State(state): State<Arc<MockState>>, request: Request) -> Response {
    let (_, body, _) = match read(&state, request).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let n = body
        .get("documents")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let top_n = body
        .get("top_n")
        .and_then(Value::as_u64)
        .map_or(n, |t| t as usize)
        .min(n);
    // Later documents rank higher, so a test can tell the order came from the upstream.
    let results: Vec<Value> = (0..n)
        .rev()
        .take(top_n)
        .map(|i| json!({"index": i, "relevance_score": (i + 1) as f64 / n as f64}))
        .collect();
    Json(json!({"id": "rerank-mock", "results": results, "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}})).into_response()
}

async fn cohere_embed(State(state): State<Arc<MockState>>, request: Request) -> Response {
    let (_, body, _) = match read(&state, request).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let n = body
        .get("texts")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let floats: Vec<Value> = (0..n).map(|i| json!([i as f64, 0.5])).collect();
    Json(json!({"id": "e", "embeddings": {"float": floats}, "meta": {"billed_units": {"input_tokens": n * 2}}})).into_response()
}

/// The fields Anthropic's `count_tokens` takes; it refuses any other.
const COUNT_TOKENS_FIELDS: &[&str] = &[
    "model",
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

/// The mock's own count: one token per 4 bytes of the counted fields plus 3 per message, so a
/// test can tell it from the gateway's local count (tiktoken) and compute it.
pub fn mock_count_tokens(body: &Value) -> u64 {
    let counted: usize = COUNT_TOKENS_FIELDS[1..]
        .iter()
        .filter_map(|k| body.get(*k))
        .map(|v| v.to_string().len())
        .sum();
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    (counted / 4 + 3 * messages) as u64
}

/// Anthropic's `POST /v1/messages/count_tokens` (and Claude on Vertex's `count-tokens`), strict
/// about its fields as Anthropic is.
async fn anthropic_count_tokens(State(state): State<Arc<MockState>>, request: Request) -> Response {
    let (headers, body, _) = match read(&state, request).await {
        Ok(v) => v,
        Err(r) => return anthropic_error_rewrite(r).await,
    };
    if headers.get("x-api-key").is_none() || headers.get("anthropic-version").is_none() {
        let body = json!({"type": "error", "error": {"type": "authentication_error", "message": "missing x-api-key or anthropic-version"}});
        return error_response(401, &body.to_string(), None);
    }
    let invalid = |message: String| {
        let body = json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}});
        error_response(400, &body.to_string(), None)
    };
    let Some(object) = body.as_object() else {
        return invalid("body: must be an object".into());
    };
    if let Some(extra) = object
        .keys()
        .find(|k| !COUNT_TOKENS_FIELDS.contains(&k.as_str()))
    {
        return invalid(format!("{extra}: Extra inputs are not permitted"));
    }
    if object.get("model").and_then(Value::as_str).is_none() {
        return invalid("model: Field required".into());
    }
    let Some(messages) = object.get("messages").and_then(Value::as_array) else {
        return invalid("messages: Field required".into());
    };
    if messages
        .first()
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str)
        == Some("system")
    {
        return invalid("messages.0.role: Input should be 'user' or 'assistant'".into());
    }
    Json(json!({"input_tokens": mock_count_tokens(&body)})).into_response()
}

/// The mock's error knob answers in OpenAI's shape; Anthropic clients expect theirs.
async fn anthropic_error_rewrite(response: Response) -> Response {
    let (status, message) = knob_error(response).await;
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    error_response(
        status,
        &json!({"type": "error", "error": {"type": kind, "message": message}}).to_string(),
        None,
    )
}

fn tool_name(body: &Value) -> String {
    body.pointer("/tools/0/function/name")
        .and_then(Value::as_str)
        .unwrap_or("get_weather")
        .to_owned()
}

/// Counts streams that ended before completion (the client, or the gateway, went away).
struct StreamGuard {
    state: Arc<MockState>,
    completed: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let counter = if self.completed {
            &self.state.stats.streams_completed
        } else {
            &self.state.stats.streams_cancelled
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A bag-of-words vector of `text`: each lowercase word (letters and digits) adds one to a
/// dimension chosen by its FNV-1a hash, normalized. Texts sharing most words are close.
fn word_vector(text: &str, dims: usize) -> Vec<f32> {
    let mut vector = vec![0.0f32; dims.max(1)];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in word.to_lowercase().bytes() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let at = (hash % vector.len() as u64) as usize;
        vector[at] += 1.0;
    }
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|v| *v /= norm);
    }
    vector
}

async fn embeddings(State(state): State<Arc<MockState>>, request: Request) -> Response {
    let (headers, body, _) = match read(&state, request).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let by_words = headers
        .get("x-mock-embedding")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            body.pointer("/mock_options/embedding")
                .and_then(Value::as_str)
        })
        == Some("words");
    let texts: Vec<String> = match body.get("input") {
        Some(Value::Array(items)) if !items.iter().all(Value::is_number) => items
            .iter()
            .map(|i| i.as_str().unwrap_or_default().to_owned())
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-embedding");
    let count = match body.get("input") {
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => 1,
        Some(Value::Array(items)) => items.len(),
        Some(_) => 1,
        None => 0,
    };
    let default_dims = if by_words { 256 } else { 4 };
    let dims = body
        .get("dimensions")
        .and_then(Value::as_u64)
        .unwrap_or(default_dims) as usize;
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = (0..count)
        .map(|i| {
            let vector: Vec<f32> = match texts.get(i).filter(|_| by_words) {
                Some(text) => word_vector(text, dims),
                None => (0..dims).map(|d| (i * dims + d) as f32 / 100.0).collect(),
            };
            let embedding = if base64 {
                use base64_lite::encode;
                json!(encode(
                    &vector
                        .iter()
                        .flat_map(|f| f.to_le_bytes())
                        .collect::<Vec<u8>>()
                ))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let mut response = Json(json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": count * 2, "total_tokens": count * 2}})).into_response();
    rate_limit_headers(response.headers_mut());
    response
}

mod base64_lite {
    //! Standard base64 for the mock's `encoding_format: base64` (kept dependency-free on purpose:
    //! the mock must not share code with the gateway it tests).
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

async fn models() -> Response {
    Json(json!({"object": "list", "data": [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "llmux-mock"}]})).into_response()
}

async fn stats(State(state): State<Arc<MockState>>) -> Response {
    Json(json!({
        "requests": state.stats.requests.load(Ordering::Relaxed),
        "streams_started": state.stats.streams_started.load(Ordering::Relaxed),
        "streams_completed": state.stats.streams_completed.load(Ordering::Relaxed),
        "streams_cancelled": state.stats.streams_cancelled.load(Ordering::Relaxed),
    }))
    .into_response()
}

async fn recorded(State(state): State<Arc<MockState>>) -> Response {
    let list: Vec<RecordedRequest> = state
        .recorded
        .lock()
        .map(|l| l.iter().cloned().collect())
        .unwrap_or_default();
    Json(list).into_response()
}

async fn set_defaults(State(state): State<Arc<MockState>>, Json(knobs): Json<Value>) -> Response {
    state.set_defaults(knobs);
    StatusCode::NO_CONTENT.into_response()
}

async fn reset(State(state): State<Arc<MockState>>) -> Response {
    if let Ok(mut l) = state.recorded.lock() {
        l.clear();
    }
    for counter in [
        &state.stats.requests,
        &state.stats.streams_started,
        &state.stats.streams_completed,
        &state.stats.streams_cancelled,
    ] {
        counter.store(0, Ordering::Relaxed);
    }
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitting_keeps_the_text() {
        assert_eq!(split_words("a b  c").concat(), "a b  c");
        assert_eq!(split_even("héllo wörld", 3).concat(), "héllo wörld");
        assert_eq!(split_even("abc", 10).len(), 3);
        assert_eq!(base64_lite::encode(b"hello"), "aGVsbG8=");
        assert_eq!(base64_lite::encode(b"hi!"), "aGkh");
    }
}
