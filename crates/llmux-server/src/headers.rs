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

// Header names are built once: inserting by `&str` would parse and validate them per request.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_LITELLM_CALL_ID: HeaderName = HeaderName::from_static("x-litellm-call-id");
const X_LITELLM_MODEL_GROUP: HeaderName = HeaderName::from_static("x-litellm-model-group");
const X_LLMUX_MODEL_GROUP: HeaderName = HeaderName::from_static("x-llmux-model-group");
const X_LITELLM_MODEL_ID: HeaderName = HeaderName::from_static("x-litellm-model-id");
const X_LLMUX_DEPLOYMENT: HeaderName = HeaderName::from_static("x-llmux-deployment");
const X_LLMUX_PROVIDER: HeaderName = HeaderName::from_static("x-llmux-provider");
const X_LITELLM_OVERHEAD: HeaderName = HeaderName::from_static("x-litellm-overhead-duration-ms");
const X_LLMUX_OVERHEAD: HeaderName = HeaderName::from_static("x-llmux-overhead-ms");
const X_LITELLM_DURATION: HeaderName = HeaderName::from_static("x-litellm-response-duration-ms");
const X_LITELLM_RETRIES: HeaderName = HeaderName::from_static("x-litellm-attempted-retries");
const X_LLMUX_RETRIES: HeaderName = HeaderName::from_static("x-llmux-attempted-retries");
const X_LITELLM_FALLBACKS: HeaderName = HeaderName::from_static("x-litellm-attempted-fallbacks");
const X_LLMUX_FALLBACKS: HeaderName = HeaderName::from_static("x-llmux-attempted-fallbacks");

pub(crate) fn add_request_id(h: &mut HeaderMap, request_id: &str) {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(X_LITELLM_CALL_ID, v.clone());
        h.insert(X_REQUEST_ID, v);
    }
}

pub(crate) fn add_forwarded(h: &mut HeaderMap, forwarded: &[(HeaderName, HeaderValue)]) {
    for (name, value) in forwarded {
        h.insert(name.clone(), value.clone());
    }
}

/// An error's forwarded headers, kept as text in `GatewayError`.
pub(crate) fn add_forwarded_text(h: &mut HeaderMap, forwarded: &[(String, String)]) {
    for (name, value) in forwarded {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::from_str(value),
        ) {
            h.insert(n, v);
        }
    }
}

/// Milliseconds with microsecond precision, formatted without going through `format!`.
fn millis(d: Duration) -> HeaderValue {
    let micros = d.as_micros().min(u128::from(u64::MAX)) as u64;
    let mut buf = itoa::Buffer::new();
    let whole = buf.format(micros / 1000).to_owned();
    let frac = micros % 1000;
    let mut text = String::with_capacity(whole.len() + 4);
    text.push_str(&whole);
    text.push('.');
    text.push(char::from(b'0' + (frac / 100) as u8));
    text.push(char::from(b'0' + (frac / 10 % 10) as u8));
    text.push(char::from(b'0' + (frac % 10) as u8));
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("0"))
}

pub(crate) fn add_gateway_headers(h: &mut HeaderMap, meta: &ResponseMeta, elapsed: Duration) {
    add_request_id(h, &meta.request_id);
    if let Ok(v) = HeaderValue::from_str(&meta.model_group) {
        h.insert(X_LITELLM_MODEL_GROUP, v.clone());
        h.insert(X_LLMUX_MODEL_GROUP, v);
    }
    if let Ok(v) = HeaderValue::from_str(&meta.deployment_id) {
        h.insert(X_LITELLM_MODEL_ID, v.clone());
        h.insert(X_LLMUX_DEPLOYMENT, v);
    }
    h.insert(X_LLMUX_PROVIDER, HeaderValue::from_static(meta.provider));
    let overhead = millis(meta.overhead);
    h.insert(X_LITELLM_OVERHEAD, overhead.clone());
    h.insert(X_LLMUX_OVERHEAD, overhead);
    h.insert(X_LITELLM_DURATION, millis(elapsed));
    let retries = HeaderValue::from(meta.attempted_retries);
    h.insert(X_LITELLM_RETRIES, retries.clone());
    h.insert(X_LLMUX_RETRIES, retries);
    let fallbacks = HeaderValue::from(meta.attempted_fallbacks);
    h.insert(X_LITELLM_FALLBACKS, fallbacks.clone());
    h.insert(X_LLMUX_FALLBACKS, fallbacks);
}

/// The caller's own rate-limit state (its key's, user's or team's tightest window), which
/// replaces any upstream `x-ratelimit-*` values of the same name.
pub(crate) fn add_rate_limits(h: &mut HeaderMap, r: &crate::governance::limits::Remaining) {
    let reset = format!("{}s", (r.reset_in_ms as f64 / 1000.0).ceil() as u64);
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    if let Some((limit, left)) = r.requests {
        put("x-ratelimit-limit-requests", limit.to_string());
        put("x-ratelimit-remaining-requests", left.to_string());
        put("x-ratelimit-reset-requests", reset.clone());
    }
    if let Some((limit, left)) = r.tokens {
        put("x-ratelimit-limit-tokens", limit.to_string());
        put("x-ratelimit-remaining-tokens", left.to_string());
        put("x-ratelimit-reset-tokens", reset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_formats_three_decimals() {
        assert_eq!(millis(Duration::from_micros(1_234_567)), "1234.567");
        assert_eq!(millis(Duration::from_micros(5)), "0.005");
        assert_eq!(millis(Duration::ZERO), "0.000");
    }
}
