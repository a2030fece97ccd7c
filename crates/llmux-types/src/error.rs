//! The gateway's error taxonomy (`ErrorKind`) and the OpenAI error body every client sees.
//!
//! Each kind maps, exhaustively and in one place, to an HTTP status, the OpenAI error `type`, a
//! stable default `code`, whether the failure is worth retrying, and a metric label.

use serde::{Deserialize, Serialize};

/// What went wrong, independent of which provider or layer noticed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidRequest,
    Authentication,
    PermissionDenied,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    BudgetExceeded,
    ContextLengthExceeded,
    ContentFiltered,
    Timeout,
    UpstreamUnavailable,
    UpstreamError,
    Internal,
}

impl ErrorKind {
    /// Every kind, for exhaustive tests and metric pre-registration.
    pub const ALL: [ErrorKind; 13] = [
        ErrorKind::InvalidRequest,
        ErrorKind::Authentication,
        ErrorKind::PermissionDenied,
        ErrorKind::NotFound,
        ErrorKind::PayloadTooLarge,
        ErrorKind::RateLimited,
        ErrorKind::BudgetExceeded,
        ErrorKind::ContextLengthExceeded,
        ErrorKind::ContentFiltered,
        ErrorKind::Timeout,
        ErrorKind::UpstreamUnavailable,
        ErrorKind::UpstreamError,
        ErrorKind::Internal,
    ];

    /// The status the gateway answers with when it raises this kind itself. Upstream errors keep
    /// the upstream's status instead (see `GatewayError::status`).
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::Authentication => 401,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::RateLimited => 429,
            // LiteLLM answers an exceeded budget with 400 (`type: budget_exceeded`); clients expect it.
            ErrorKind::BudgetExceeded => 400,
            ErrorKind::ContextLengthExceeded => 400,
            ErrorKind::ContentFiltered => 400,
            ErrorKind::Timeout => 504,
            ErrorKind::UpstreamUnavailable => 502,
            ErrorKind::UpstreamError => 502,
            ErrorKind::Internal => 500,
        }
    }

    /// The OpenAI error `type` field.
    pub fn openai_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::PermissionDenied => "permission_error",
            ErrorKind::NotFound => "invalid_request_error",
            ErrorKind::PayloadTooLarge => "invalid_request_error",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::BudgetExceeded => "budget_exceeded",
            ErrorKind::ContextLengthExceeded => "invalid_request_error",
            ErrorKind::ContentFiltered => "invalid_request_error",
            ErrorKind::Timeout => "timeout_error",
            ErrorKind::UpstreamUnavailable => "api_error",
            ErrorKind::UpstreamError => "api_error",
            ErrorKind::Internal => "api_error",
        }
    }

    /// The stable default `code` field (a specific error may carry a more precise one).
    pub fn default_code(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Authentication => "invalid_api_key",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::NotFound => "not_found",
            ErrorKind::PayloadTooLarge => "request_too_large",
            ErrorKind::RateLimited => "rate_limit_exceeded",
            ErrorKind::BudgetExceeded => "budget_exceeded",
            ErrorKind::ContextLengthExceeded => "context_length_exceeded",
            ErrorKind::ContentFiltered => "content_filter",
            ErrorKind::Timeout => "timeout",
            ErrorKind::UpstreamUnavailable => "upstream_unavailable",
            ErrorKind::UpstreamError => "upstream_error",
            ErrorKind::Internal => "internal_error",
        }
    }

    /// Whether another attempt (same or other deployment) may succeed.
    pub fn is_retryable(self) -> bool {
        match self {
            ErrorKind::RateLimited
            | ErrorKind::Timeout
            | ErrorKind::UpstreamUnavailable
            | ErrorKind::UpstreamError => true,
            ErrorKind::InvalidRequest
            | ErrorKind::Authentication
            | ErrorKind::PermissionDenied
            | ErrorKind::NotFound
            | ErrorKind::PayloadTooLarge
            | ErrorKind::BudgetExceeded
            | ErrorKind::ContextLengthExceeded
            | ErrorKind::ContentFiltered
            | ErrorKind::Internal => false,
        }
    }

    /// Label for metrics and logs; identical to the serde name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Authentication => "authentication",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::NotFound => "not_found",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::BudgetExceeded => "budget_exceeded",
            ErrorKind::ContextLengthExceeded => "context_length_exceeded",
            ErrorKind::ContentFiltered => "content_filtered",
            ErrorKind::Timeout => "timeout",
            ErrorKind::UpstreamUnavailable => "upstream_unavailable",
            ErrorKind::UpstreamError => "upstream_error",
            ErrorKind::Internal => "internal",
        }
    }

    /// Classify an upstream HTTP status when the body says nothing more precise.
    pub fn from_upstream_status(status: u16) -> ErrorKind {
        match status {
            400 | 422 => ErrorKind::InvalidRequest,
            401 => ErrorKind::Authentication,
            403 => ErrorKind::PermissionDenied,
            404 => ErrorKind::NotFound,
            408 => ErrorKind::Timeout,
            413 => ErrorKind::PayloadTooLarge,
            429 => ErrorKind::RateLimited,
            502..=504 | 529 => ErrorKind::UpstreamUnavailable,
            500..=599 => ErrorKind::UpstreamError,
            400..=499 => ErrorKind::InvalidRequest,
            _ => ErrorKind::UpstreamError,
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The inner object of an OpenAI error: `{"message","type","param","code"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub error_type: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

/// `{"error": {...}}`, the body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

impl ErrorEnvelope {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorEnvelope {
            error: ErrorBody {
                message: message.into(),
                error_type: kind.openai_type().to_owned(),
                param: None,
                code: Some(kind.default_code().to_owned()),
            },
        }
    }

    pub fn to_json_bytes(&self) -> Vec<u8> {
        // Serializing plain strings into a Vec cannot fail; fall back to a fixed body regardless.
        serde_json::to_vec(self).unwrap_or_else(|_| {
            br#"{"error":{"message":"internal error","type":"api_error","param":null,"code":"internal_error"}}"#.to_vec()
        })
    }
}

/// A failure on its way to the client: the kind that drives retries and metrics, and the exact
/// status and OpenAI error body the client will see (an upstream's own status and code are kept).
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayError {
    pub kind: ErrorKind,
    pub status: u16,
    pub body: ErrorBody,
    /// From the upstream's `Retry-After` / `retry-after-ms`, when it sent one.
    pub retry_after: Option<std::time::Duration>,
    /// Upstream headers the client should see (rate-limit state, `retry-after`).
    pub headers: Vec<(String, String)>,
}

impl GatewayError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        GatewayError {
            kind,
            status: kind.http_status(),
            body: ErrorEnvelope::new(kind, message).error,
            retry_after: None,
            headers: Vec::new(),
        }
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.body.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.body.code = Some(code.into());
        self
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub fn message(&self) -> &str {
        &self.body.message
    }

    pub fn envelope(&self) -> ErrorEnvelope {
        ErrorEnvelope {
            error: self.body.clone(),
        }
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.kind, self.status, self.body.message)
    }
}

impl std::error::Error for GatewayError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_distinct_label_and_an_error_status() {
        let mut labels = std::collections::HashSet::new();
        for kind in ErrorKind::ALL {
            assert!(labels.insert(kind.as_str()), "duplicate label {kind}");
            assert!(kind.http_status() >= 400);
            let serde_name = serde_json::to_value(kind).unwrap();
            assert_eq!(serde_name, kind.as_str());
        }
    }

    #[test]
    fn upstream_statuses_classify() {
        assert_eq!(ErrorKind::from_upstream_status(429), ErrorKind::RateLimited);
        assert_eq!(
            ErrorKind::from_upstream_status(529),
            ErrorKind::UpstreamUnavailable
        );
        assert_eq!(
            ErrorKind::from_upstream_status(500),
            ErrorKind::UpstreamError
        );
        assert_eq!(
            ErrorKind::from_upstream_status(418),
            ErrorKind::InvalidRequest
        );
        assert!(ErrorKind::RateLimited.is_retryable());
        assert!(!ErrorKind::InvalidRequest.is_retryable());
    }

    #[test]
    fn envelope_has_openai_shape() {
        let body = ErrorEnvelope::new(ErrorKind::NotFound, "no such model").to_json_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["message"], "no such model");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["param"].is_null());
        assert_eq!(v["error"]["code"], "not_found");
    }
}
