//! Request bodies and HTTP-level rejections in the OpenAI error shape: bodies are read within a
//! size and a time limit (413, 408), the management API reads its JSON through `ApiBody`, header
//! sets past the gateway's limits get a 431 of ours, and any error axum itself produces (an
//! extractor's rejection) is rewritten into the shape before it leaves.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::{BodyExt, Limited};
use llmux_types::{ErrorKind, GatewayError};

use crate::AppState;

/// Management bodies are small JSON documents; past this they are refused (413).
pub const MAX_MANAGEMENT_BODY: usize = 1024 * 1024;
/// Headers a request may carry, by count and by total size (name + value), before a 431. hyper's
/// own limits are set above these so that ours, which answer in the OpenAI shape, apply first.
pub const MAX_HEADERS: usize = 100;
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Read a request body of at most `limit` bytes within `timeout` of starting to wait for it.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, GatewayError> {
    let too_large = || {
        GatewayError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body exceeds the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Ok(Err(e)) => Err(GatewayError::invalid_request(format!(
            "could not read the request body: {e}"
        ))
        .with_code("invalid_body")),
        Err(_) => Err(body_timeout(timeout)),
    }
}

fn body_timeout(timeout: Duration) -> GatewayError {
    GatewayError::invalid_request(format!(
        "the request body did not arrive within {} s (llmux_settings.client_body_timeout)",
        timeout.as_secs_f64()
    ))
    .with_code("request_body_timeout")
    .with_status(408)
}

/// A management request's body: at most `MAX_MANAGEMENT_BODY` bytes, within the configured
/// body timeout; refusals in the OpenAI shape.
pub struct ApiBody(pub Bytes);

impl FromRequest<AppState> for ApiBody {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let (parts, body) = request.into_parts();
        // Nobody makes the gateway hold a body before proving who they are: the caller is
        // authenticated first (the handler's own lookup then hits the cache). Without
        // governance the handler refuses anyway, so nothing is read.
        let Some(gov) = &state.governance else {
            return Ok(ApiBody(Bytes::new()));
        };
        if let Err(e) = gov.authenticate_for(&parts.headers, parts.uri.path()).await {
            return Err(crate::error_response(&e, &llmux::new_request_id()));
        }
        let timeout = state.client.snapshot().config.client_body_timeout;
        read_body(&parts.headers, body, MAX_MANAGEMENT_BODY, timeout)
            .await
            .map(ApiBody)
            .map_err(|e| close(crate::error_response(&e, &llmux::new_request_id())))
    }
}

/// Outermost layer: header limits before anything else runs, and every error response in the
/// OpenAI shape on the way out (the handlers' already are; axum's own rejections are plain
/// text). A response that gave up on reading its body closes the connection.
pub(crate) async fn shape(request: Request, next: Next) -> Response {
    if let Err(e) = check_headers(request.headers()) {
        return crate::error_response(&e, &llmux::new_request_id());
    }
    let response = next.run(request).await;
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        return reshape(response).await;
    }
    response
}

/// A 431 for a header set past the gateway's limits (the model routes call this inline; the
/// rest get it from `shape`).
pub(crate) fn check_headers(headers: &HeaderMap) -> Result<(), GatewayError> {
    if headers.len() <= MAX_HEADERS / 4 {
        // The common case: a handful of headers can only be too large through one huge value,
        // which hyper's buffer already bounds far above what any client sends.
        let bytes: usize = headers.values().map(HeaderValue::len).sum();
        if bytes <= MAX_HEADER_BYTES / 2 {
            return Ok(());
        }
    }
    let bytes: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return Err(GatewayError::invalid_request(format!(
            "request headers exceed the limit of {MAX_HEADERS} headers or {MAX_HEADER_BYTES} bytes"
        ))
        .with_code("request_header_fields_too_large")
        .with_status(431));
    }
    Ok(())
}

/// An error response whose body is not JSON becomes the OpenAI shape, its text the message.
async fn reshape(response: Response) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let status = response.status();
    let (_, body) = response.into_parts();
    let text = match Limited::new(body, 4096).collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).trim().to_owned(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let kind = if status.is_server_error() {
        ErrorKind::Internal
    } else {
        ErrorKind::from_upstream_status(status.as_u16())
    };
    let e = GatewayError::new(kind, message).with_status(status.as_u16());
    crate::error_response(&e, &llmux::new_request_id())
}

pub(crate) fn close(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
