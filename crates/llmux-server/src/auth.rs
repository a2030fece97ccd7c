//! Master-key authentication for model routes: the key may come as `Authorization: Bearer`,
//! `x-api-key` (Anthropic SDKs), `api-key` (Azure SDKs) or `x-litellm-api-key`, and is compared in
//! constant time.

use axum::http::HeaderMap;
use llmux_config::Config;
pub(crate) use llmux_governance::keys::presented_key;
use llmux_types::{ErrorKind, GatewayError};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Compare two keys without leaking where they differ, or their lengths, through timing: both
/// are hashed to fixed-size digests first.
pub fn constant_time_key_eq(presented: &str, expected: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.ct_eq(&b).into()
}

/// `Ok` when no master key is configured, or the presented key matches it.
pub(crate) fn authorize(headers: &HeaderMap, config: &Config) -> Result<(), GatewayError> {
    let Some(master) = &config.master_key else {
        return Ok(());
    };
    match presented_key(headers) {
        None => Err(GatewayError::new(
            ErrorKind::Authentication,
            "No API key provided. Send it as `Authorization: Bearer <key>` or `x-api-key: <key>`.",
        )
        .with_code("missing_api_key")),
        Some(key) if constant_time_key_eq(key, master.expose()) => Ok(()),
        Some(_) => Err(
            GatewayError::new(ErrorKind::Authentication, "Invalid API key.")
                .with_code("invalid_api_key"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn keys_are_found_in_every_supported_header() {
        for (name, value) in [
            ("authorization", "Bearer sk-1"),
            ("authorization", "bearer   sk-1 "),
            ("authorization", "sk-1"),
            ("x-api-key", "sk-1"),
            ("api-key", "sk-1"),
            ("x-litellm-api-key", "sk-1"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static(value));
            assert_eq!(presented_key(&h), Some("sk-1"), "{name}: {value}");
        }
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }

    #[test]
    fn comparison_is_exact() {
        assert!(constant_time_key_eq("sk-abc", "sk-abc"));
        assert!(!constant_time_key_eq("sk-abc", "sk-abd"));
        assert!(!constant_time_key_eq("sk-ab", "sk-abc"));
        assert!(!constant_time_key_eq("", "sk-abc"));
    }
}
