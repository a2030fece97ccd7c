//! Cloud-provider emulation: AWS Bedrock (Converse JSON, ConverseStream as a binary AWS event
//! stream, InvokeModel for Claude's own Messages body and for Titan and Cohere embeddings; SigV4
//! or bearer auth required), Vertex AI
//! (Gemini and Claude under `projects/.../publishers/...`, bearer tokens required), and the OAuth2
//! token endpoints that mint those tokens (Google's JWT bearer and refresh-token grants, Entra
//! ID's client credentials), which check what they are sent and count what they mint.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use bytes::Bytes;
use llmux_providers::eventstream::{encode_event, encode_exception};
use serde_json::{json, Value};

use super::{
    answer_pieces, error_response, prompt_tokens, read, Knobs, MockState, StreamGuard, NEXT_ID,
};

/// Tokens the mock hands out look like this; the Vertex and Azure emulations accept only these.
const TOKEN_PREFIX: &str = "mock-token-";

impl MockState {
    fn mint(&self, lifetime: u64) -> Value {
        let n = self.stats.tokens_minted.fetch_add(1, Ordering::Relaxed) + 1;
        json!({"access_token": format!("{TOKEN_PREFIX}{n}"), "expires_in": lifetime, "token_type": "Bearer"})
    }

    fn token_lifetime(&self) -> u64 {
        self.defaults
            .lock()
            .ok()
            .and_then(|d| d.get("token_expires_in").and_then(Value::as_u64))
            .unwrap_or(3599)
    }
}

/// `Authorization: Bearer mock-token-N` for a token this mock minted.
pub(super) fn minted_bearer(state: &MockState, headers: &HeaderMap) -> bool {
    let minted = state.stats.tokens_minted.load(Ordering::Relaxed);
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| t.strip_prefix(TOKEN_PREFIX))
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|n| (1..=minted).contains(&n))
}

async fn form(request: Request) -> Vec<(String, String)> {
    let bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    form_urlencoded(&bytes)
}

fn form_urlencoded(bytes: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(bytes).into_owned().collect()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn oauth_error(status: u16, error: &str, description: &str) -> Response {
    error_response(
        status,
        &json!({"error": error, "error_description": description}).to_string(),
        None,
    )
}

/// Google's token endpoint (`token_uri` of a service-account file): checks the RS256 assertion's
/// shape and claims (the signature itself is verified in llmux's unit tests).
pub(super) async fn google_token(
    State(state): State<Arc<MockState>>,
    request: Request,
) -> Response {
    let token_url = format!(
        "http://{}/token",
        request
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
    );
    let form = form(request).await;
    match field(&form, "grant_type") {
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {}
        Some("refresh_token") => {
            if field(&form, "refresh_token").is_none() || field(&form, "client_id").is_none() {
                return oauth_error(
                    400,
                    "invalid_request",
                    "refresh_token and client_id are required",
                );
            }
            return Json(state.mint(state.token_lifetime())).into_response();
        }
        _ => return oauth_error(400, "unsupported_grant_type", "Invalid grant_type"),
    }
    let Some(assertion) = field(&form, "assertion") else {
        return oauth_error(
            400,
            "invalid_request",
            "Missing required parameter: assertion",
        );
    };
    let parts: Vec<&str> = assertion.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let decode = |s: &str| -> Option<Value> { serde_json::from_slice(&b64.decode(s).ok()?).ok() };
    let (Some(header), Some(claims), Some(signature)) = (
        parts.first().and_then(|p| decode(p)),
        parts.get(1).and_then(|p| decode(p)),
        parts.get(2).and_then(|p| b64.decode(p).ok()),
    ) else {
        return oauth_error(400, "invalid_grant", "Invalid JWT: not a signed JWT");
    };
    let n = |k: &str| claims.get(k).and_then(Value::as_u64).unwrap_or(0);
    let checks = [
        (header["alg"] == "RS256", "alg must be RS256"),
        (header.get("kid").is_some(), "kid missing"),
        (signature.len() == 256, "signature is not RSA-2048"),
        (
            claims["aud"] == token_url.as_str(),
            "aud must be the token URL",
        ),
        (
            claims["iss"].as_str().is_some_and(|s| s.contains('@')),
            "iss must be the client email",
        ),
        (
            claims["scope"]
                .as_str()
                .is_some_and(|s| s.contains("cloud-platform")),
            "scope",
        ),
        (
            n("exp") > n("iat") && n("exp") - n("iat") <= 3600,
            "exp - iat must be at most 3600",
        ),
    ];
    if let Some((_, why)) = checks.iter().find(|(ok, _)| !ok) {
        return oauth_error(400, "invalid_grant", &format!("Invalid JWT: {why}"));
    }
    Json(state.mint(state.token_lifetime())).into_response()
}

/// Entra ID's v2 token endpoint (`/{tenant}/oauth2/v2.0/token`), client-credentials grant.
/// The client secret `wrong` is refused, as a revoked secret would be.
pub(super) async fn entra_token(
    State(state): State<Arc<MockState>>,
    Path(_tenant): Path<String>,
    request: Request,
) -> Response {
    let form = form(request).await;
    if field(&form, "grant_type") != Some("client_credentials") {
        return oauth_error(
            400,
            "unsupported_grant_type",
            "AADSTS70003: unsupported grant type",
        );
    }
    if field(&form, "scope") != Some("https://cognitiveservices.azure.com/.default") {
        return oauth_error(400, "invalid_scope", "AADSTS70011: invalid scope");
    }
    match (field(&form, "client_id"), field(&form, "client_secret")) {
        (Some(_), Some(secret)) if secret != "wrong" => {
            let mut token = state.mint(state.token_lifetime());
            token["ext_expires_in"] = token["expires_in"].clone();
            Json(token).into_response()
        }
        _ => oauth_error(
            401,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
        ),
    }
}

/// Vertex AI: `projects/{p}/locations/{l}/publishers/{google|anthropic}/models/{model}:{method}`.
/// Requires a bearer token minted here, then answers as the Gemini or Anthropic emulation, after
/// checking the Vertex-specific body rules for Claude (no `model`, `anthropic_version`).
pub(super) async fn vertex(
    State(state): State<Arc<MockState>>,
    Path((_project, _location, publisher, action)): Path<(String, String, String, String)>,
    request: Request,
) -> Response {
    if !minted_bearer(&state, request.headers()) {
        return error_response(
            401,
            &json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}}).to_string(),
            None,
        );
    }
    let (mut parts, body) = request.into_parts();
    match publisher.as_str() {
        "google" => {
            let Some((model, method)) = action.split_once(':') else {
                return error_response(
                    404,
                    r#"{"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}"#,
                    None,
                );
            };
            if method == "predict" {
                return vertex_predict(state, Request::from_parts(parts, body)).await;
            }
            parts
                .headers
                .insert("x-goog-api-key", HeaderValue::from_static("vertex"));
            super::gemini(
                State(state),
                Path(format!("{model}:{method}")),
                Request::from_parts(parts, body),
            )
            .await
        }
        "anthropic" => {
            let Some((model, method)) = action.split_once(':') else {
                return error_response(
                    404,
                    r#"{"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}"#,
                    None,
                );
            };
            let bytes = axum::body::to_bytes(body, 64 << 20)
                .await
                .unwrap_or_default();
            super::record(&state, &parts, &bytes);
            parts.extensions.insert(super::Rewritten);
            let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) else {
                return error_response(
                    400,
                    r#"{"type": "error", "error": {"type": "invalid_request_error", "message": "invalid JSON"}}"#,
                    None,
                );
            };
            if model == "count-tokens" && method == "rawPredict" {
                // Claude on Vertex counts with the model named in the body.
                if v["anthropic_version"] != "vertex-2023-10-16" {
                    let body = json!({"type": "error", "error": {"type": "invalid_request_error", "message": "anthropic_version: must be vertex-2023-10-16"}});
                    return error_response(400, &body.to_string(), None);
                }
                if let Some(o) = v.as_object_mut() {
                    o.remove("anthropic_version");
                }
                let request = as_anthropic(parts, "vertex", &v);
                return super::anthropic_count_tokens(State(state), request).await;
            }
            let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
            let problem = if v.get("model").is_some() {
                Some("model: Extra inputs are not permitted")
            } else if v["anthropic_version"] != "vertex-2023-10-16" {
                Some("anthropic_version: must be vertex-2023-10-16")
            } else if stream != (method == "streamRawPredict") {
                Some("stream must match rawPredict / streamRawPredict")
            } else {
                None
            };
            if let Some(message) = problem {
                let body = json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}});
                return error_response(400, &body.to_string(), None);
            }
            v["model"] = json!(model);
            let request = as_anthropic(parts, "vertex", &v);
            super::anthropic_messages(State(state), request).await
        }
        _ => error_response(
            404,
            r#"{"error": {"code": 404, "message": "publisher not found", "status": "NOT_FOUND"}}"#,
            None,
        ),
    }
}

async fn vertex_predict(state: Arc<MockState>, request: Request) -> Response {
    let (_, body, _) = match read(&state, request).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let predictions: Vec<Value> = body
        .get("instances")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, _)| json!({"embeddings": {"values": [i as f64, 0.5, 0.25], "statistics": {"token_count": 2, "truncated": false}}}))
        .collect();
    Json(json!({"predictions": predictions})).into_response()
}

fn bedrock_error(status: u16, message: &str) -> Response {
    let kind = match status {
        400 => "ValidationException",
        401 => "UnrecognizedClientException",
        403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        _ => "InternalServerException",
    };
    let mut response = error_response(status, &json!({"message": message}).to_string(), None);
    response.headers_mut().insert(
        "x-amzn-errortype",
        HeaderValue::from_str(&format!(
            "{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"
        ))
        .unwrap_or(HeaderValue::from_static("InternalServerException")),
    );
    response
}

/// SigV4 for the `bedrock` service (shape-checked: credential scope, signed headers, signature),
/// or a bearer API key.
fn bedrock_authorized(headers: &HeaderMap) -> bool {
    let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    if auth.starts_with("Bearer ") {
        return true;
    }
    let Some(rest) = auth.strip_prefix("AWS4-HMAC-SHA256 Credential=") else {
        return false;
    };
    let signature_ok = rest
        .rsplit_once("Signature=")
        .is_some_and(|(_, s)| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()));
    rest.contains("/bedrock/aws4_request")
        && rest.contains("SignedHeaders=")
        && rest.contains("x-amz-date")
        && headers.contains_key("x-amz-date")
        && signature_ok
}

/// A cloud's Claude request, rewritten to `body`, as Anthropic's own API receives it (its key and
/// version headers), for the Anthropic emulation to answer.
fn as_anthropic(mut parts: axum::http::request::Parts, key: &'static str, body: &Value) -> Request {
    parts
        .headers
        .insert("x-api-key", HeaderValue::from_static(key));
    parts
        .headers
        .insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
    parts.headers.remove("content-length");
    Request::from_parts(
        parts,
        Body::from(serde_json::to_vec(body).unwrap_or_default()),
    )
}

/// Bedrock runtime: `/model/{modelId}/converse`, `/converse-stream`, `/invoke`,
/// `/invoke-with-response-stream`.
pub(super) async fn bedrock(
    State(state): State<Arc<MockState>>,
    Path((model, action)): Path<(String, String)>,
    request: Request,
) -> Response {
    if !bedrock_authorized(request.headers()) {
        let mut r = error_response(
            403,
            r#"{"message": "The security token included in the request is invalid."}"#,
            None,
        );
        r.headers_mut().insert(
            "x-amzn-errortype",
            HeaderValue::from_static("UnrecognizedClientException"),
        );
        return r;
    }
    if action == "count-tokens" {
        return bedrock_count_tokens(&state, &model, request).await;
    }
    if model.contains("anthropic.") && action.starts_with("invoke") {
        return bedrock_claude(
            state,
            &model,
            action == "invoke-with-response-stream",
            request,
        )
        .await;
    }
    let (_, body, knobs) = match read(&state, request).await {
        Ok(v) => v,
        Err(r) => {
            let (status, message) = super::knob_error(r).await;
            return bedrock_error(status, &message);
        }
    };
    match action.as_str() {
        "invoke" => bedrock_embed(&model, &body),
        "converse" | "converse-stream" => {
            if body.get("messages").and_then(Value::as_array).is_none() {
                return bedrock_error(400, "1 validation error detected: Value null at 'messages' failed to satisfy constraint: Member must not be null");
            }
            converse(state, &model, &body, knobs, action == "converse-stream")
        }
        _ => bedrock_error(404, "unknown operation"),
    }
}

/// Claude through InvokeModel / InvokeModelWithResponseStream: Anthropic's Messages body with
/// Bedrock's rules (no `model`, no `stream`, `anthropic_version: bedrock-2023-05-31`, betas as
/// an `anthropic_beta` list), answered by the Anthropic emulation; a stream comes back as
/// `chunk` event-stream messages each carrying one Anthropic event (`{"bytes": base64}`).
async fn bedrock_claude(
    state: Arc<MockState>,
    model: &str,
    stream: bool,
    request: Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    super::record(&state, &parts, &bytes);
    parts.extensions.insert(super::Rewritten);
    let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) else {
        return bedrock_error(
            400,
            "Malformed input request, please reformat your input and try again.",
        );
    };
    let problem = if v.get("model").is_some() {
        Some("Malformed input request: #: extraneous key [model] is not permitted")
    } else if v.get("stream").is_some() {
        Some("Malformed input request: #: extraneous key [stream] is not permitted")
    } else if v["anthropic_version"] != "bedrock-2023-05-31" {
        Some("Malformed input request: #/anthropic_version: bedrock-2023-05-31 expected")
    } else if v.get("anthropic_beta").is_some_and(|b| !b.is_array()) {
        Some("Malformed input request: #/anthropic_beta: expected type: JSONArray")
    } else if v["anthropic_beta"].as_array().is_some_and(|betas| {
        betas.iter().any(|b| {
            !b.as_str()
                .is_some_and(|b| llmux_providers::anthropic::request::BEDROCK_BETAS.contains(&b))
        })
    }) {
        // What Bedrock answers to a beta it does not offer (Claude Code's first-party ones).
        Some("invalid beta flag")
    } else {
        None
    };
    if let Some(message) = problem {
        return bedrock_error(400, message);
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("anthropic_version");
        o.remove("anthropic_beta");
        o.insert("model".into(), json!(model));
        o.insert("stream".into(), json!(stream));
    }
    let request = as_anthropic(parts, "bedrock", &v);
    let answer = super::anthropic_messages(State(state), request).await;
    if !answer.status().is_success() {
        let (status, message) = super::knob_error(answer).await;
        return bedrock_error(status, &message);
    }
    if !stream {
        return answer;
    }
    let mut sse = answer.into_body().into_data_stream();
    let frames = async_stream::stream! {
        let mut pending: Vec<u8> = Vec::new();
        while let Some(piece) = futures_util::StreamExt::next(&mut sse).await {
            let Ok(piece) = piece else {
                yield Err(std::io::Error::other("mock: connection cut"));
                return;
            };
            pending.extend_from_slice(&piece);
            while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = pending.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&event);
                let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) else {
                    continue;
                };
                let Ok(parsed) = serde_json::from_str::<Value>(data) else { continue };
                if parsed["type"] == "error" {
                    yield Ok(encode_exception("throttlingException", br#"{"message":"Too many requests, please wait before trying again."}"#));
                    return;
                }
                let payload = json!({"bytes": base64::engine::general_purpose::STANDARD.encode(data), "p": "abcdefghij"});
                yield Ok::<Bytes, std::io::Error>(encode_event("chunk", payload.to_string().as_bytes()));
            }
        }
    };
    let mut response = Response::new(Body::from_stream(frames));
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    response
}

/// Bedrock's CountTokens for Claude: `{"input": {"invokeModel": {"body": base64}}}`, the body as
/// InvokeModel would take it; `{"inputTokens": n}` by the mock's own count. Cross-region
/// inference profiles cannot count (Bedrock's ValidationException).
async fn bedrock_count_tokens(state: &MockState, model: &str, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    super::record(state, &parts, &bytes);
    state.stats.requests.fetch_add(1, Ordering::Relaxed);
    // Cross-region profiles and older Claude models cannot count.
    if !model.starts_with("anthropic.") || model.contains("claude-v2") {
        return bedrock_error(400, "The provided model doesn't support counting tokens.");
    }
    let inner = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| {
            v.pointer("/input/invokeModel/body")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let Some(inner) = inner else {
        return bedrock_error(400, "Malformed input request: input.invokeModel.body");
    };
    let budget = inner
        .pointer("/thinking/budget_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if inner["max_tokens"]
        .as_u64()
        .is_none_or(|m| budget > 0 && m <= budget)
    {
        return bedrock_error(
            400,
            "max_tokens must be greater than thinking.budget_tokens",
        );
    }
    if inner.get("model").is_some() || inner["anthropic_version"] != "bedrock-2023-05-31" {
        return bedrock_error(
            400,
            "Malformed input request: the InvokeModel body is not Claude's",
        );
    }
    Json(json!({"inputTokens": super::mock_count_tokens(&inner)})).into_response()
}

fn bedrock_embed(model: &str, body: &Value) -> Response {
    if model.contains("titan-embed") {
        let Some(text) = body.get("inputText").and_then(Value::as_str) else {
            return bedrock_error(
                400,
                "Malformed input request: required key [inputText] not found",
            );
        };
        let dims = body.get("dimensions").and_then(Value::as_u64).unwrap_or(3) as usize;
        let embedding: Vec<f64> = (0..dims).map(|i| i as f64 / 10.0).collect();
        return Json(json!({"embedding": embedding, "inputTextTokenCount": text.split_whitespace().count().max(1)})).into_response();
    }
    if model.contains("cohere.embed") {
        let Some(texts) = body.get("texts").and_then(Value::as_array) else {
            return bedrock_error(
                400,
                "Malformed input request: required key [texts] not found",
            );
        };
        if body.get("input_type").and_then(Value::as_str).is_none() {
            return bedrock_error(
                400,
                "Malformed input request: required key [input_type] not found",
            );
        }
        let embeddings: Vec<Value> = (0..texts.len()).map(|i| json!([i as f64, 0.5])).collect();
        return Json(json!({"id": "mock", "embeddings": embeddings, "response_type": "embeddings_floats", "texts": texts})).into_response();
    }
    bedrock_error(400, "The provided model doesn't support embeddings")
}

fn converse(
    state: Arc<MockState>,
    model: &str,
    body: &Value,
    knobs: Knobs,
    stream: bool,
) -> Response {
    let pieces = answer_pieces(&knobs);
    let choice = body.pointer("/toolConfig/toolChoice");
    let forced_tool = match choice {
        Some(c) if c.get("tool").is_some() => c
            .pointer("/tool/name")
            .and_then(Value::as_str)
            .map(str::to_owned),
        Some(c) if c.get("any").is_some() => body
            .pointer("/toolConfig/tools/0/toolSpec/name")
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    };
    let thinking = body
        .pointer("/additionalModelRequestFields/thinking")
        .is_some();
    let input_tokens = prompt_tokens(body);
    let usage = json!({"inputTokens": input_tokens, "outputTokens": pieces.len(), "totalTokens": input_tokens + pieces.len(),
        "cacheReadInputTokens": 0, "cacheWriteInputTokens": 0});
    let tool_id = format!("tooluse_mock{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let stop = if forced_tool.is_some() {
        "tool_use"
    } else {
        "end_turn"
    };
    if !stream {
        let mut content = Vec::new();
        if thinking {
            content.push(json!({"reasoningContent": {"reasoningText": {"text": super::REASONING, "signature": "c2ln"}}}));
        }
        match &forced_tool {
            Some(name) => content.push(json!({"toolUse": {"toolUseId": tool_id, "name": name, "input": {"location": "Paris"}}})),
            None => content.push(json!({"text": pieces.concat()})),
        }
        return Json(
            json!({"output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop, "usage": usage, "metrics": {"latencyMs": 1}, "x_model": model}),
        )
        .into_response();
    }
    let mut events: Vec<(&'static str, Value)> =
        vec![("messageStart", json!({"role": "assistant"}))];
    let mut block = 0;
    if thinking {
        events.push(("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": super::REASONING}}})));
        events.push((
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "c2ln"}}}),
        ));
        events.push(("contentBlockStop", json!({"contentBlockIndex": 0})));
        block = 1;
    }
    match &forced_tool {
        Some(name) => {
            events.push(("contentBlockStart", json!({"contentBlockIndex": block, "start": {"toolUse": {"toolUseId": tool_id, "name": name}}})));
            for part in ["{\"loc", "ation\": \"Par", "is\"}"] {
                events.push((
                    "contentBlockDelta",
                    json!({"contentBlockIndex": block, "delta": {"toolUse": {"input": part}}}),
                ));
            }
        }
        None => {
            for piece in &pieces {
                events.push((
                    "contentBlockDelta",
                    json!({"contentBlockIndex": block, "delta": {"text": piece}}),
                ));
            }
        }
    }
    events.push(("contentBlockStop", json!({"contentBlockIndex": block})));
    events.push(("messageStop", json!({"stopReason": stop})));
    events.push((
        "metadata",
        json!({"usage": usage, "metrics": {"latencyMs": 1}}),
    ));
    state.stats.streams_started.fetch_add(1, Ordering::Relaxed);
    let frames = async_stream::stream! {
        let mut guard = StreamGuard { state: Arc::clone(&state), completed: false };
        for (sent, (kind, payload)) in events.into_iter().enumerate() {
            if Some(sent) == knobs.cut_after {
                tokio::time::sleep(Duration::from_millis(20)).await;
                yield Err(std::io::Error::other("mock: connection cut"));
                return;
            }
            if Some(sent) == knobs.error_event_after {
                yield Ok(encode_exception("throttlingException", br#"{"message":"Too many requests, please wait before trying again."}"#));
                guard.completed = true;
                return;
            }
            if knobs.chunk_delay_ms > 0 && sent > 0 {
                tokio::time::sleep(Duration::from_millis(knobs.chunk_delay_ms)).await;
            }
            yield Ok::<Bytes, std::io::Error>(encode_event(kind, payload.to_string().as_bytes()));
        }
        guard.completed = true;
    };
    let mut response = Response::new(Body::from_stream(frames));
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_decode() {
        let f = form_urlencoded(
            b"grant_type=client_credentials&scope=https%3A%2F%2Fx.com%2F.default&a=b+c",
        );
        assert_eq!(field(&f, "scope"), Some("https://x.com/.default"));
        assert_eq!(field(&f, "a"), Some("b c"));
        assert_eq!(field(&f, "grant_type"), Some("client_credentials"));
    }
}
