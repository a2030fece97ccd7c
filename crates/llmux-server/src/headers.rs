//! Response headers: request id, the deployment and model group that answered (LiteLLM's
//! `x-litellm-*` names and our `x-llmux-*` ones), the gateway's overhead, the response cost, and
//! upstream rate-limit headers passed through.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use llmux::ResponseMeta;

/// The client's `x-request-id` when it is sane (printable ASCII, at most 128 bytes). It is kept
/// beside llmux's own id (spend logs' `client_request_id`) and echoed back, never used as the
/// request's key: clients reuse ids, and two requests must never share a spend-log row.
pub(crate) fn client_request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
}

/// Echo the client's id as `x-request-id` (llmux's own stays in `x-litellm-call-id`).
pub(crate) fn echo_client_request_id(h: &mut HeaderMap, client: Option<&str>) {
    if let Some(v) = client.and_then(|c| HeaderValue::from_str(c).ok()) {
        h.insert(X_REQUEST_ID, v);
    }
}

/// A header parsed as `T`, ignored when absent or malformed.
pub(crate) fn parse_header<T: std::str::FromStr>(
    headers: &HeaderMap,
    name: &HeaderName,
) -> Option<T> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// `x-litellm-tags: a,b` (LiteLLM's tag header).
pub(crate) fn tags(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(X_LITELLM_TAGS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

// Header names are built once: looking up or inserting by `&str` parses and validates the name
// on every call.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_LITELLM_TAGS: HeaderName = HeaderName::from_static("x-litellm-tags");
pub(crate) const X_LITELLM_END_USER_ID: HeaderName =
    HeaderName::from_static("x-litellm-end-user-id");
pub(crate) const X_LITELLM_NUM_RETRIES: HeaderName =
    HeaderName::from_static("x-litellm-num-retries");
pub(crate) const X_LITELLM_TIMEOUT: HeaderName = HeaderName::from_static("x-litellm-timeout");
const X_RATELIMIT_LIMIT_REQUESTS: HeaderName =
    HeaderName::from_static("x-ratelimit-limit-requests");
const X_RATELIMIT_REMAINING_REQUESTS: HeaderName =
    HeaderName::from_static("x-ratelimit-remaining-requests");
const X_RATELIMIT_RESET_REQUESTS: HeaderName =
    HeaderName::from_static("x-ratelimit-reset-requests");
const X_RATELIMIT_LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const X_RATELIMIT_REMAINING_TOKENS: HeaderName =
    HeaderName::from_static("x-ratelimit-remaining-tokens");
const X_RATELIMIT_RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");
pub(crate) const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");
const X_LITELLM_RESPONSE_COST: HeaderName = HeaderName::from_static("x-litellm-response-cost");
const X_LLMUX_RESPONSE_COST: HeaderName = HeaderName::from_static("x-llmux-response-cost");
const X_LITELLM_CALL_ID: HeaderName = HeaderName::from_static("x-litellm-call-id");
const X_LITELLM_MODEL_GROUP: HeaderName = HeaderName::from_static("x-litellm-model-group");
const X_LLMUX_MODEL_GROUP: HeaderName = HeaderName::from_static("x-llmux-model-group");
const X_LITELLM_MODEL_ID: HeaderName = HeaderName::from_static("x-litellm-model-id");
const X_LITELLM_CACHE_KEY: HeaderName = HeaderName::from_static("x-litellm-cache-key");
const X_LITELLM_SEMANTIC_SIMILARITY: HeaderName =
    HeaderName::from_static("x-litellm-semantic-similarity");
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

/// The upstream's forwarded headers, moved (a clone of a custom name or value would allocate).
pub(crate) fn add_forwarded(h: &mut HeaderMap, forwarded: Vec<(HeaderName, HeaderValue)>) {
    for (name, value) in forwarded {
        h.insert(name, value);
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

/// Milliseconds with microsecond precision, written into a stack buffer: one allocation (the
/// value's own bytes) where `format!` and a `String` took three.
fn millis(d: Duration) -> HeaderValue {
    let micros = d.as_micros().min(u128::from(u64::MAX)) as u64;
    let mut digits = itoa::Buffer::new();
    let whole = digits.format(micros / 1000).as_bytes();
    let frac = micros % 1000;
    let mut text = [0u8; 24];
    text[..whole.len()].copy_from_slice(whole);
    let mut end = whole.len();
    for b in [
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ] {
        text[end] = b;
        end += 1;
    }
    HeaderValue::from_bytes(&text[..end]).unwrap_or(HeaderValue::from_static("0"))
}

/// A count as a header value. The small counts that retries and fallbacks take are static
/// values (no allocation; `HeaderValue::from(n)` makes two), others take one.
fn number(n: u64) -> HeaderValue {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match usize::try_from(n).ok().and_then(|i| SMALL.get(i)) {
        Some(digit) => HeaderValue::from_static(digit),
        None => HeaderValue::from_str(itoa::Buffer::new().format(n))
            .unwrap_or(HeaderValue::from_static("0")),
    }
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
    if let Some(v) = meta
        .cache_key
        .as_deref()
        .and_then(|k| HeaderValue::from_str(k).ok())
    {
        h.insert(X_LITELLM_CACHE_KEY, v);
    }
    if let Some(similarity) = meta.semantic_similarity {
        if let Ok(v) = HeaderValue::from_str(&format!("{similarity:.4}")) {
            h.insert(X_LITELLM_SEMANTIC_SIMILARITY, v);
        }
    }
    h.insert(X_LLMUX_PROVIDER, HeaderValue::from_static(meta.provider));
    let overhead = millis(meta.overhead);
    h.insert(X_LITELLM_OVERHEAD, overhead.clone());
    h.insert(X_LLMUX_OVERHEAD, overhead);
    h.insert(X_LITELLM_DURATION, millis(elapsed));
    let retries = number(u64::from(meta.attempted_retries));
    h.insert(X_LITELLM_RETRIES, retries.clone());
    h.insert(X_LLMUX_RETRIES, retries);
    let fallbacks = number(u64::from(meta.attempted_fallbacks));
    h.insert(X_LITELLM_FALLBACKS, fallbacks.clone());
    h.insert(X_LLMUX_FALLBACKS, fallbacks);
    if let Some(cost) = meta.cost {
        if let Ok(v) = HeaderValue::from_str(&cost.to_string()) {
            h.insert(X_LITELLM_RESPONSE_COST, v.clone());
            h.insert(X_LLMUX_RESPONSE_COST, v);
        }
    }
}

/// The caller's own rate-limit state (its key's, user's or team's tightest window), which
/// replaces any upstream `x-ratelimit-*` values of the same name.
pub(crate) fn add_rate_limits(h: &mut HeaderMap, r: &llmux_governance::limits::Remaining) {
    let reset = seconds(r.reset_in_ms);
    if let Some((limit, left)) = r.requests {
        h.insert(X_RATELIMIT_LIMIT_REQUESTS, number(limit));
        h.insert(X_RATELIMIT_REMAINING_REQUESTS, number(left));
        h.insert(X_RATELIMIT_RESET_REQUESTS, reset.clone());
    }
    if let Some((limit, left)) = r.tokens {
        h.insert(X_RATELIMIT_LIMIT_TOKENS, number(limit));
        h.insert(X_RATELIMIT_REMAINING_TOKENS, number(left));
        h.insert(X_RATELIMIT_RESET_TOKENS, reset);
    }
}

/// Whole seconds, rounded up, as OpenAI writes a reset time (`"34s"`); a time already past is 0.
fn seconds(ms: i64) -> HeaderValue {
    let mut buf = itoa::Buffer::new();
    let mut text = String::with_capacity(21);
    text.push_str(buf.format(u64::try_from(ms).unwrap_or(0).div_ceil(1000)));
    text.push('s');
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("0s"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_formats_three_decimals() {
        assert_eq!(millis(Duration::from_micros(1_234_567)), "1234.567");
        assert_eq!(millis(Duration::from_micros(5)), "0.005");
        assert_eq!(millis(Duration::ZERO), "0.000");
        assert_eq!(millis(Duration::from_millis(7)), "7.000");
        assert_eq!(
            millis(Duration::from_secs(u64::MAX)),
            "18446744073709551.615"
        );
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0, 7, 9, 10, 42, 999_816_096, u64::MAX] {
            assert_eq!(number(n), n.to_string().as_str());
        }
    }

    #[test]
    fn reset_rounds_up_to_whole_seconds() {
        assert_eq!(seconds(0), "0s");
        assert_eq!(seconds(1), "1s");
        assert_eq!(seconds(1000), "1s");
        assert_eq!(seconds(34_001), "35s");
        assert_eq!(seconds(-5), "0s");
    }
}
