//! The Anthropic Messages API routes (`POST /v1/messages`, `POST /v1/messages/count_tokens`):
//! the request goes through the Anthropic dialect (`llmux::dialect::anthropic`) into the same
//! path as a chat completion (auth, admission, routing, retries, fallbacks, spend), and the
//! answer, its stream and every error come back in Anthropic's shapes, so the Anthropic SDKs
//! and Claude Code work unchanged against any provider.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use llmux::dialect::anthropic;
use llmux::{GatewayError, Operation, ResponseBody};

use crate::{authorized_body, closing, error_response, execute, model_route, AppState};

/// `POST /v1/messages`.
pub async fn messages(State(state): State<AppState>, request: Request) -> Response {
    let state = &state;
    model_route(state, request, error, |checked| async move {
        let beta = checked
            .parts
            .headers
            .get("anthropic-beta")
            .and_then(|v| v.to_str().ok());
        // The model as routed: a key's alias applies before routing.
        let principal = checked.principal.as_ref();
        let converted = anthropic::chat_request_routed(&checked.body, beta, |model| {
            let aliased = principal.and_then(|p| llmux_governance::Governance::alias(p, model));
            state
                .client
                .reaches_anthropic(aliased.as_deref().unwrap_or(model))
        })?;
        execute(
            state,
            checked.call(Operation::Chat, "anthropic_messages"),
            converted.body,
        )
        .await?
        .respond(anthropic_body)
    })
    .await
}

/// `POST /v1/messages/count_tokens`: the request's input tokens (`{"input_tokens": n}`), for a
/// model the caller may use: as the model group's Anthropic deployment counts them where it has
/// one (Anthropic, Claude on Vertex AI), else as the gateway counts them.
pub async fn count_tokens(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let request_id = llmux::new_request_id();
    let (principal, body) = match authorized_body(&state, &parts, body).await {
        Ok(p) => p,
        Err((e, close)) => return closing(error(&e, &request_id), close),
    };
    let beta = parts
        .headers
        .get("anthropic-beta")
        .and_then(|v| v.to_str().ok());
    let converted = (|| {
        // count_tokens bodies carry no max_tokens; the dialect wants one (and no stream).
        let mut request: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            GatewayError::invalid_request(format!("the body is not valid JSON: {e}"))
        })?;
        if let Some(o) = request.as_object_mut() {
            // Above a thinking budget (a Claude-on-Bedrock count is of the InvokeModel body,
            // which must hold one).
            let budget = o
                .get("thinking")
                .and_then(|t| t.get("budget_tokens"))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            let asked = o
                .get("max_tokens")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(1);
            o.insert(
                "max_tokens".into(),
                serde_json::json!(asked.max(budget + 1)),
            );
            o.remove("stream");
        }
        let converted = anthropic::chat_request(request.to_string().as_bytes(), beta)?;
        if let Some(p) = &principal {
            llmux_governance::check_model_access(&state.client, p, &converted.model)?;
        }
        Ok::<_, GatewayError>(converted)
    })();
    let converted = match converted {
        Ok(c) => c,
        Err(e) => return error(&e, &request_id),
    };
    let counted = match state
        .client
        .count_tokens_upstream(&converted.body, &converted.model)
        .await
    {
        Some(answer) => answer,
        // Tokenizing a large body takes milliseconds: off the runtime's threads.
        None => tokio::task::spawn_blocking(move || {
            llmux::count_prompt_tokens(&converted.body, &converted.model)
        })
        .await
        .unwrap_or_else(|e| {
            Err(GatewayError::internal(format!(
                "token counting failed: {e}"
            )))
        }),
    };
    match counted {
        Ok(n) => {
            let mut out = Response::new(Body::from(
                serde_json::json!({"input_tokens": n}).to_string(),
            ));
            out.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            out
        }
        Err(e) => error(&e, &request_id),
    }
}

/// The internal answer as a Messages response or event stream.
fn anthropic_body(
    body: ResponseBody,
    meta: &llmux::ResponseMeta,
) -> Result<(Body, &'static str), GatewayError> {
    Ok(match body {
        // A deployment speaking Anthropic's API answered as the client asked (passed through).
        ResponseBody::Json(bytes) if meta.native => (Body::from(bytes), "application/json"),
        ResponseBody::Json(bytes) => (
            Body::from(anthropic::message(&bytes, meta.usage.as_ref())?),
            "application/json",
        ),
        ResponseBody::Stream(stream) => {
            let events = futures_util::stream::unfold(
                (stream, anthropic::StreamTranslator::new(), false),
                |(mut inner, mut translator, done)| async move {
                    if done {
                        return None;
                    }
                    match inner.next().await {
                        Some(chunk) => {
                            let out = translator.feed(&chunk);
                            Some((out, (inner, translator, false)))
                        }
                        None => {
                            let out = translator.finish();
                            Some((out, (inner, translator, true)))
                        }
                    }
                },
            )
            .filter(|b: &Bytes| std::future::ready(!b.is_empty()))
            .map(Ok::<Bytes, Infallible>);
            (Body::from_stream(events), "text/event-stream")
        }
    })
}

/// An error in Anthropic's shape, with the gateway's error headers (request id, retry-after).
fn error(e: &GatewayError, request_id: &str) -> Response {
    let mut out = error_response(e, request_id);
    *out.body_mut() = Body::from(anthropic::error_body(e));
    out
}
