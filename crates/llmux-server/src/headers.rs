//! Response headers: request id, the deployment and model group that answered (LiteLLM's
//! `x-litellm-*` names and our `x-llmux-*` ones), the gateway's overhead, and upstream rate-limit
//! headers passed through.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use llmux::ResponseMeta;

/// The client's `x-request-id` when it is sane (printable ASCII, at most 128 bytes), else a new id.
pub(crate) fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(llmux::new_request_id)
}

/// A header parsed as `T`, ignored when absent or malformed.
pub(crate) fn parse_header<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Option<T> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// `x-litellm-tags: a,b` (LiteLLM's tag header).
pub(crate) fn tags(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("x-litellm-tags")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

pub(crate) fn add_request_id(h: &mut HeaderMap, request_id: &str) {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-litellm-call-id", v.clone());
        h.insert("x-request-id", v);
    }
}

pub(crate) fn add_forwarded(h: &mut HeaderMap, forwarded: &[(String, String)]) {
    for (name, value) in forwarded {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::from_str(value),
        ) {
            h.insert(n, v);
        }
    }
}

fn millis(d: Duration) -> HeaderValue {
    let ms = d.as_secs_f64() * 1000.0;
    HeaderValue::from_str(&format!("{ms:.3}")).unwrap_or(HeaderValue::from_static("0"))
}

pub(crate) fn add_gateway_headers(h: &mut HeaderMap, meta: &ResponseMeta, elapsed: Duration) {
    add_request_id(h, &meta.request_id);
    if let Ok(v) = HeaderValue::from_str(&meta.model_group) {
        h.insert("x-litellm-model-group", v.clone());
        h.insert("x-llmux-model-group", v);
    }
    if let Ok(v) = HeaderValue::from_str(&meta.deployment_id) {
        h.insert("x-litellm-model-id", v.clone());
        h.insert("x-llmux-deployment", v);
    }
    h.insert("x-llmux-provider", HeaderValue::from_static(meta.provider));
    let overhead = millis(meta.overhead);
    h.insert("x-litellm-overhead-duration-ms", overhead.clone());
    h.insert("x-llmux-overhead-ms", overhead);
    h.insert("x-litellm-response-duration-ms", millis(elapsed));
    for (names, value) in [
        (
            ["x-litellm-attempted-retries", "x-llmux-attempted-retries"],
            meta.attempted_retries,
        ),
        (
            [
                "x-litellm-attempted-fallbacks",
                "x-llmux-attempted-fallbacks",
            ],
            meta.attempted_fallbacks,
        ),
    ] {
        let value = HeaderValue::from(value);
        for name in names {
            h.insert(name, value.clone());
        }
    }
}
