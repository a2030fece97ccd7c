//! Upstream error classification: one `ErrorKind` from the status, the structured fields every
//! provider sends (OpenAI/Anthropic `type` and `code`, Google `status` and `RetryInfo`, Bedrock
//! `x-amzn-errortype` / `__type`), headers, and message text last. The kind drives retries,
//! cooldowns, fallback lists and metrics; the client keeps seeing the upstream's status and code.

use std::time::Duration;

use http::HeaderMap;
use llmux_types::{ErrorKind, GatewayError};
use serde_json::Value;

/// Upstream headers a client should see: rate-limit state and retry hints.
fn is_forwarded(name: &http::HeaderName) -> bool {
    let n = name.as_str();
    n.starts_with("x-ratelimit-") || n == "retry-after" || n == "retry-after-ms"
}

/// The forwarded headers of a successful response, taken out of the upstream's header map
/// (which the caller is done with): names and values move to the client's response, nothing is
/// copied or parsed again. A custom name's first clone would allocate (its bytes become shared).
pub fn take_forwarded_headers(headers: HeaderMap) -> Vec<(http::HeaderName, http::HeaderValue)> {
    let count = headers.keys().filter(|name| is_forwarded(name)).count();
    if count == 0 {
        return Vec::new();
    }
    let mut out: Vec<(http::HeaderName, http::HeaderValue)> = Vec::with_capacity(count);
    let mut keep = false;
    // `into_iter` names a header once, before its first value; later values come with `None`.
    for (name, value) in headers {
        match name {
            Some(name) => {
                keep = is_forwarded(&name);
                if keep {
                    out.push((name, value));
                }
            }
            None if keep => {
                if let Some(name) = out.last().map(|(name, _)| name.clone()) {
                    out.push((name, value));
                }
            }
            None => {}
        }
    }
    out
}

/// The forwarded headers as text (an error's headers).
pub fn forwarded_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| is_forwarded(name))
        .filter_map(|(name, value)| {
            value
                .to_str()
                .ok()
                .map(|v| (name.as_str().to_owned(), v.to_owned()))
        })
        .collect()
}

/// `retry-after-ms`, else `retry-after` in seconds (HTTP dates are ignored: clocks differ).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| {
        headers
            .get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
    };
    if let Some(ms) = number("retry-after-ms").filter(|ms| *ms >= 0.0) {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    number("retry-after")
        .filter(|s| (0.0..86_400.0).contains(s))
        .map(Duration::from_secs_f64)
}

/// Google's `RetryInfo.retryDelay` ("34.4s") inside `error.details`.
fn google_retry_delay(error: &Value) -> Option<Duration> {
    error.get("details")?.as_array()?.iter().find_map(|d| {
        let delay = d.get("retryDelay")?.as_str()?;
        let secs: f64 = delay.strip_suffix('s')?.parse().ok()?;
        (0.0..86_400.0)
            .contains(&secs)
            .then(|| Duration::from_secs_f64(secs))
    })
}

/// Turn an upstream error response into the error the client sees: the upstream's status, and its
/// message, type and code when it sent them.
pub fn parse_error(status: u16, headers: &HeaderMap, body: &[u8]) -> GatewayError {
    let mut error = error_from_body(status, body, false);
    if let Some(aws_type) = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
    {
        // `ThrottlingException:http://internal.amazon.com/...`
        let name = aws_type.split(':').next().unwrap_or(aws_type);
        if let Some(kind) = by_name(name) {
            error.kind = refine_by_message(kind, status, error.message());
        }
        error.body.error_type = name.to_owned();
    }
    // An upstream answering with a status that is not an error (a 1xx, or a 3xx that was not
    // followed) failed all the same: the client sees a 502, never a non-error status.
    error.status = if status >= 400 { status } else { 502 };
    if let Some(after) = retry_after(headers) {
        error.retry_after = Some(after);
    }
    error.headers = forwarded_headers(headers);
    error
}

/// `inner` says `body` is already the value of an `error` field.
pub(crate) fn error_from_body(status: u16, body: &[u8], inner: bool) -> GatewayError {
    let value: Option<Value> = serde_json::from_slice(body).ok();
    let error_value = match &value {
        Some(v) if inner => Some(v),
        Some(v) => v.get("error").filter(|e| !e.is_null()).or(Some(v)),
        None => None,
    };
    let text = |v: &Value| -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let mut retry_delay = None;
    let (message, upstream_type, code, param, status_name) = match error_value {
        Some(Value::String(s)) => (s.clone(), None, None, None, None),
        Some(e @ Value::Object(_)) => {
            retry_delay = google_retry_delay(e);
            let message = e
                .get("message")
                .or_else(|| e.get("Message"))
                .and_then(text)
                .or_else(|| {
                    e.get("detail")
                        .map(|d| text(d).unwrap_or_else(|| d.to_string()))
                });
            (
                message.unwrap_or_else(|| e.to_string()),
                e.get("type").or_else(|| e.get("__type")).and_then(text),
                e.get("code").and_then(text),
                e.get("param").and_then(text),
                e.get("status").and_then(Value::as_str).map(str::to_owned),
            )
        }
        Some(other) => (other.to_string(), None, None, None, None),
        None => {
            let raw = String::from_utf8_lossy(body);
            let trimmed: String = raw.trim().chars().take(2000).collect();
            let message = if trimmed.is_empty() {
                format!("upstream returned HTTP {status}")
            } else {
                trimmed
            };
            (message, None, None, None, None)
        }
    };
    let kind = classify(
        status,
        upstream_type.as_deref(),
        code.as_deref(),
        status_name.as_deref(),
        &message,
    );
    let mut error = GatewayError::new(kind, message);
    if let Some(t) = upstream_type.or(status_name) {
        error.body.error_type = t;
    }
    // Google echoes the HTTP status as `code`; it names nothing. And a kind found in the message
    // (context length, content filter) gets its stable code, which is what clients check.
    let code = code
        .filter(|c| !c.bytes().all(|b| b.is_ascii_digit()))
        .filter(|c| {
            !matches!(
                kind,
                ErrorKind::ContextLengthExceeded | ErrorKind::ContentFiltered
            ) || by_name(c) == Some(kind)
        });
    error.body.code = code.or_else(|| Some(kind.default_code().to_owned()));
    error.body.param = param;
    error.retry_after = retry_delay;
    error
}

/// Provider error names (OpenAI/Anthropic types and codes, Google statuses, AWS exceptions).
fn by_name(name: &str) -> Option<ErrorKind> {
    let name = name.rsplit('#').next().unwrap_or(name);
    Some(match name {
        "context_length_exceeded" | "string_above_max_length" => ErrorKind::ContextLengthExceeded,
        "content_filter" | "content_policy_violation" | "content_filtered" | "SAFETY" => {
            ErrorKind::ContentFiltered
        }
        "rate_limit_exceeded"
        | "rate_limit_error"
        | "RESOURCE_EXHAUSTED"
        | "ThrottlingException"
        | "TooManyRequestsException" => ErrorKind::RateLimited,
        // Out of credit: another key or provider may serve, this one will not until billing changes.
        "insufficient_quota" | "billing_error" | "ServiceQuotaExceededException" => {
            ErrorKind::PermissionDenied
        }
        "invalid_api_key"
        | "authentication_error"
        | "UNAUTHENTICATED"
        | "UnrecognizedClientException" => ErrorKind::Authentication,
        "permission_error"
        | "permission_denied"
        | "PERMISSION_DENIED"
        | "AccessDeniedException" => ErrorKind::PermissionDenied,
        "model_not_found" | "not_found_error" | "NOT_FOUND" | "ResourceNotFoundException" => {
            ErrorKind::NotFound
        }
        "overloaded_error"
        | "UNAVAILABLE"
        | "ServiceUnavailableException"
        | "ModelNotReadyException" => ErrorKind::UpstreamUnavailable,
        "timeout_error" | "DEADLINE_EXCEEDED" | "ModelTimeoutException" => ErrorKind::Timeout,
        "api_error"
        | "server_error"
        | "INTERNAL"
        | "InternalServerException"
        | "ModelErrorException" => ErrorKind::UpstreamError,
        "request_too_large" => ErrorKind::PayloadTooLarge,
        "invalid_request_error"
        | "INVALID_ARGUMENT"
        | "FAILED_PRECONDITION"
        | "ValidationException" => ErrorKind::InvalidRequest,
        _ => return None,
    })
}

/// Messages that mean "prompt too long" or "blocked", in the words each provider uses.
fn refine_by_message(kind: ErrorKind, status: u16, message: &str) -> ErrorKind {
    if kind != ErrorKind::InvalidRequest && !(400..500).contains(&status) {
        return kind;
    }
    if matches!(
        kind,
        ErrorKind::RateLimited | ErrorKind::Authentication | ErrorKind::PermissionDenied
    ) {
        return kind;
    }
    let lower = message.to_ascii_lowercase();
    let context = [
        "maximum context length",
        "context length",
        "context window",
        "prompt is too long",
        "input is too long",
        "too many tokens",
        "exceeds the maximum number of tokens",
        "reduce the length of the messages",
        "maximum prompt length",
    ];
    if context.iter().any(|c| lower.contains(c)) {
        return ErrorKind::ContextLengthExceeded;
    }
    if lower.contains("content management policy")
        || lower.contains("flagged by our content filter")
        || lower.contains("safety system")
    {
        return ErrorKind::ContentFiltered;
    }
    kind
}

/// Structured fields first (code, then type, then Google status), status code next, message last.
fn classify(
    status: u16,
    error_type: Option<&str>,
    code: Option<&str>,
    status_name: Option<&str>,
    message: &str,
) -> ErrorKind {
    let structured = code
        .and_then(by_name)
        .or_else(|| error_type.and_then(by_name))
        .or_else(|| status_name.and_then(by_name));
    let kind = match structured {
        // A generic "invalid request" type says less than the HTTP status when they disagree.
        Some(ErrorKind::InvalidRequest) if !(400..500).contains(&status) => {
            ErrorKind::from_upstream_status(status)
        }
        // Likewise a generic server-error type ("api_error", "INTERNAL") next to a 503 or 504.
        Some(ErrorKind::UpstreamError) if matches!(status, 503 | 504) => {
            ErrorKind::from_upstream_status(status)
        }
        Some(kind) => kind,
        None => ErrorKind::from_upstream_status(status),
    };
    refine_by_message(kind, status, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn fixture(path: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/../../tests/fixtures/providers/{path}",
            std::env::var("CARGO_MANIFEST_DIR").unwrap()
        ))
        .unwrap()
    }

    /// (status, headers, body, expected kind, expected code or type in the client's error)
    #[test]
    fn real_and_documented_provider_errors_classify() {
        let aws = |name: &str| vec![("x-amzn-errortype", name.to_owned())];
        let none = Vec::new;
        type Case = (u16, Vec<(&'static str, String)>, Vec<u8>, ErrorKind);
        let cases: Vec<Case> = vec![
            // Recorded (tests/fixtures/providers).
            (400, none(), fixture("anthropic/anthropic-issue-17366-error.json"), ErrorKind::InvalidRequest),
            (400, aws("ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"), fixture("bedrock/bedrock-invalid-tool-name-validation-error.json"), ErrorKind::InvalidRequest),
            (429, none(), fixture("google/google-429-retry-info.json"), ErrorKind::RateLimited),
            // OpenAI (documented bodies).
            (429, none(), br#"{"error":{"message":"Rate limit reached for gpt-4o","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#.to_vec(), ErrorKind::RateLimited),
            (429, none(), br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#.to_vec(), ErrorKind::PermissionDenied),
            (400, none(), br#"{"error":{"message":"This model's maximum context length is 128000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#.to_vec(), ErrorKind::ContextLengthExceeded),
            (400, none(), br#"{"error":{"message":"Your request was rejected as a result of our safety system.","type":"invalid_request_error","param":null,"code":"content_policy_violation"}}"#.to_vec(), ErrorKind::ContentFiltered),
            (401, none(), br#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#.to_vec(), ErrorKind::Authentication),
            (404, none(), br#"{"error":{"message":"The model `x` does not exist","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#.to_vec(), ErrorKind::NotFound),
            (500, none(), br#"{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}"#.to_vec(), ErrorKind::UpstreamError),
            (503, none(), br#"{"error":{"message":"The engine is currently overloaded","type":"server_error","param":null,"code":null}}"#.to_vec(), ErrorKind::UpstreamUnavailable),
            // Azure OpenAI content filter.
            (400, none(), br#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","type":null,"param":"prompt","code":"content_filter","status":400}}"#.to_vec(), ErrorKind::ContentFiltered),
            // Anthropic.
            (529, none(), br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#.to_vec(), ErrorKind::UpstreamUnavailable),
            (429, none(), br#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#.to_vec(), ErrorKind::RateLimited),
            (400, none(), br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 208310 tokens > 200000 maximum"}}"#.to_vec(), ErrorKind::ContextLengthExceeded),
            (401, none(), br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#.to_vec(), ErrorKind::Authentication),
            (500, none(), br#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#.to_vec(), ErrorKind::UpstreamError),
            // Gemini / Vertex.
            (400, none(), br#"{"error":{"code":400,"message":"The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#.to_vec(), ErrorKind::ContextLengthExceeded),
            (503, none(), br#"{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}"#.to_vec(), ErrorKind::UpstreamUnavailable),
            (403, none(), br#"{"error":{"code":403,"message":"Method doesn't allow unregistered callers","status":"PERMISSION_DENIED"}}"#.to_vec(), ErrorKind::PermissionDenied),
            (504, none(), br#"{"error":{"code":504,"message":"Deadline exceeded","status":"DEADLINE_EXCEEDED"}}"#.to_vec(), ErrorKind::Timeout),
            // Bedrock.
            (429, aws("ThrottlingException"), br#"{"message":"Too many requests, please wait before trying again."}"#.to_vec(), ErrorKind::RateLimited),
            (400, aws("ValidationException"), br#"{"message":"Input is too long for requested model."}"#.to_vec(), ErrorKind::ContextLengthExceeded),
            (408, aws("ModelTimeoutException"), br#"{"message":"Model has timed out in processing the request."}"#.to_vec(), ErrorKind::Timeout),
            (503, aws("ServiceUnavailableException"), br#"{"message":"Service unavailable"}"#.to_vec(), ErrorKind::UpstreamUnavailable),
            (403, aws("AccessDeniedException"), br#"{"message":"You don't have access to the model"}"#.to_vec(), ErrorKind::PermissionDenied),
            // Cohere, Mistral, Groq, vLLM (OpenAI-compatible servers with their own shapes).
            (429, none(), br#"{"message":"You are using a Trial key, which is limited to 10 API calls / minute."}"#.to_vec(), ErrorKind::RateLimited),
            (400, none(), br#"{"message":"too many tokens: total number of tokens in the prompt cannot exceed 4081"}"#.to_vec(), ErrorKind::ContextLengthExceeded),
            (422, none(), br#"{"object":"error","message":"Body should have at least 1 item","type":"invalid_request_message_order","param":null,"code":"3230"}"#.to_vec(), ErrorKind::InvalidRequest),
            (413, none(), br#"{"error":{"message":"Request too large for model on tokens per minute (TPM): Limit 6000, Requested 9000","type":"tokens","code":"rate_limit_exceeded"}}"#.to_vec(), ErrorKind::RateLimited),
            (400, none(), br#"{"object":"error","message":"This model's maximum context length is 4096 tokens. However, you requested 5000 tokens.","type":"BadRequestError","param":null,"code":400}"#.to_vec(), ErrorKind::ContextLengthExceeded),
            // Not JSON at all.
            (502, none(), b"<html><body>Bad Gateway</body></html>".to_vec(), ErrorKind::UpstreamUnavailable),
            (500, none(), b"".to_vec(), ErrorKind::UpstreamError),
        ];
        for (i, (status, headers, body, expected)) in cases.into_iter().enumerate() {
            let mut map = HeaderMap::new();
            for (k, v) in headers {
                map.insert(k, HeaderValue::from_str(&v).unwrap());
            }
            let e = parse_error(status, &map, &body);
            assert_eq!(
                e.kind,
                expected,
                "case {i}: {}",
                String::from_utf8_lossy(&body)
            );
            assert_eq!(
                e.status, status,
                "case {i}: the client keeps the upstream status"
            );
            assert!(!e.message().is_empty(), "case {i}");
            assert!(e.body.code.is_some(), "case {i}");
        }
    }

    #[test]
    fn retry_hints_come_from_headers_and_google_bodies() {
        let e = parse_error(
            429,
            &HeaderMap::new(),
            &fixture("google/google-429-retry-info.json"),
        );
        assert_eq!(e.retry_after, Some(Duration::from_millis(34_400)));
        assert_eq!(e.body.error_type, "RESOURCE_EXHAUSTED");
        let mut h = HeaderMap::new();
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        h.insert("retry-after", HeaderValue::from_static("9"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn every_kind_maps_to_a_status_and_retry_decision() {
        // Exhaustive over ErrorKind: rate limits and transient upstream failures retry, caller
        // mistakes do not.
        for kind in ErrorKind::ALL {
            let retry = kind.is_retryable();
            let expected = matches!(
                kind,
                ErrorKind::RateLimited
                    | ErrorKind::Timeout
                    | ErrorKind::UpstreamUnavailable
                    | ErrorKind::UpstreamError
            );
            assert_eq!(retry, expected, "{kind}");
        }
    }

    #[test]
    fn forwarded_headers_are_taken_with_every_value_and_nothing_else() {
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert("x-ratelimit-remaining-requests", "9".parse().unwrap());
        h.append("x-ratelimit-limit-tokens", "100".parse().unwrap());
        h.append("x-ratelimit-limit-tokens", "200".parse().unwrap());
        h.insert("x-request-id", "abc".parse().unwrap());
        h.insert("retry-after-ms", "5".parse().unwrap());
        let mut taken: Vec<(String, String)> = take_forwarded_headers(h)
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        taken.sort();
        let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
        assert_eq!(
            taken,
            vec![
                pair("retry-after-ms", "5"),
                pair("x-ratelimit-limit-tokens", "100"),
                pair("x-ratelimit-limit-tokens", "200"),
                pair("x-ratelimit-remaining-requests", "9"),
            ]
        );
        let mut none = HeaderMap::new();
        none.insert("content-type", "application/json".parse().unwrap());
        assert!(take_forwarded_headers(none).is_empty());
    }
}
