//! Applying an adapter's `UpstreamAuth` when a request is sent: OAuth2 access tokens minted from
//! their token endpoint (Google service-account JWT bearer, refresh token, Entra ID client
//! credentials) and cached until shortly before they expire, one mint at a time per credential;
//! and AWS SigV4 signatures over the final request (`aws-sigv4`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use llmux_providers::auth::{AwsSigning, OAuthGrant, OAuthSource};
use llmux_providers::{UpstreamAuth, UpstreamRequest};
use llmux_types::{ErrorKind, GatewayError};
use serde_json::Value;

use crate::upstream::MintingClient;

/// Refresh this long before a token's stated expiry (clock skew, requests in flight).
const REFRESH_MARGIN: Duration = Duration::from_secs(120);
/// Lifetime of the JWT assertion sent to Google (the maximum Google accepts).
const ASSERTION_LIFETIME: u64 = 3600;
/// Upper bound on a token endpoint's answer.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

#[derive(Clone)]
struct CachedToken {
    header: HeaderValue,
    refresh_at: Instant,
}

type Slot = Arc<tokio::sync::Mutex<Option<CachedToken>>>;

/// Minted tokens by credential, shared by every deployment (and reload) that uses it.
#[derive(Default)]
pub(crate) struct Credentials {
    slots: Mutex<HashMap<String, Slot>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials")
    }
}

impl Credentials {
    /// Add what `request.auth` asks for to its headers.
    pub(crate) async fn apply(
        &self,
        client: &MintingClient,
        request: &mut UpstreamRequest,
    ) -> Result<(), GatewayError> {
        match request.auth.take() {
            None => Ok(()),
            Some(UpstreamAuth::OAuth(source)) => {
                let header = self.token(client.get()?, &source).await?;
                request.headers.insert(AUTHORIZATION, header);
                Ok(())
            }
            Some(UpstreamAuth::SigV4(signing)) => {
                sign_v4(request, &signing, "POST", SystemTime::now())
            }
        }
    }

    async fn token(
        &self,
        client: &reqwest::Client,
        source: &OAuthSource,
    ) -> Result<HeaderValue, GatewayError> {
        let slot = {
            let mut slots = self
                .slots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            slots.entry(source.cache_key()).or_default().clone()
        };
        // Held across the mint: concurrent requests wait for one token instead of each minting.
        let mut cached = slot.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| t.refresh_at > Instant::now()) {
            return Ok(token.header.clone());
        }
        let (token, lifetime) = mint(client, source).await?;
        let mut header = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            token_error(
                ErrorKind::Authentication,
                source,
                "the token endpoint returned an unusable token",
            )
        })?;
        header.set_sensitive(true);
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        *cached = Some(CachedToken {
            header: header.clone(),
            refresh_at: Instant::now() + lifetime.saturating_sub(margin),
        });
        tracing::debug!(token_url = %source.token_url, lifetime_s = lifetime.as_secs(), "minted an access token");
        Ok(header)
    }
}

fn token_error(kind: ErrorKind, source: &OAuthSource, detail: &str) -> GatewayError {
    GatewayError::new(
        kind,
        format!(
            "cannot obtain an access token from {}: {detail}",
            source.token_url
        ),
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The RS256 assertion of RFC 7523 as Google expects it.
pub(crate) fn google_assertion(
    client_email: &str,
    private_key_pem: &str,
    private_key_id: Option<&str>,
    token_url: &str,
    scope: &str,
    now: u64,
) -> Result<String, String> {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        iss: &'a str,
        scope: &'a str,
        aud: &'a str,
        iat: u64,
        exp: u64,
    }
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(private_key_pem.as_bytes())
        .map_err(|e| format!("the service account's private key is not a usable RSA key: {e}"))?;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = private_key_id.map(str::to_owned);
    let claims = Claims {
        iss: client_email,
        scope,
        aud: token_url,
        iat: now,
        exp: now + ASSERTION_LIFETIME,
    };
    jsonwebtoken::encode(&header, &claims, &key)
        .map_err(|e| format!("cannot sign the assertion: {e}"))
}

/// Ask the token endpoint for a token; returns it and its lifetime.
async fn mint(
    client: &reqwest::Client,
    source: &OAuthSource,
) -> Result<(String, Duration), GatewayError> {
    let form: Vec<(&str, String)> = match &source.grant {
        OAuthGrant::JwtBearer {
            client_email,
            private_key_pem,
            private_key_id,
        } => {
            let assertion = google_assertion(
                client_email,
                private_key_pem.expose(),
                private_key_id.as_deref(),
                &source.token_url,
                &source.scope,
                unix_now(),
            )
            .map_err(|e| token_error(ErrorKind::Authentication, source, &e))?;
            vec![
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:jwt-bearer".to_owned(),
                ),
                ("assertion", assertion),
            ]
        }
        OAuthGrant::ClientCredentials {
            client_id,
            client_secret,
        } => vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", client_id.clone()),
            ("client_secret", client_secret.expose().to_owned()),
            ("scope", source.scope.clone()),
        ],
        OAuthGrant::RefreshToken {
            client_id,
            client_secret,
            refresh_token,
        } => vec![
            ("grant_type", "refresh_token".to_owned()),
            ("client_id", client_id.clone()),
            ("client_secret", client_secret.expose().to_owned()),
            ("refresh_token", refresh_token.expose().to_owned()),
        ],
    };
    let response = client
        .post(&source.token_url)
        .form(&form)
        .send()
        .await
        .map_err(|e| token_error(ErrorKind::UpstreamUnavailable, source, &e.to_string()))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| token_error(ErrorKind::UpstreamUnavailable, source, &e.to_string()))?;
    let body = &body[..body.len().min(MAX_TOKEN_RESPONSE)];
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if !status.is_success() {
        let detail = value
            .get("error_description")
            .or_else(|| value.get("error"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect());
        let kind = if status.is_server_error() {
            ErrorKind::UpstreamUnavailable
        } else {
            ErrorKind::Authentication
        };
        return Err(token_error(
            kind,
            source,
            &format!("HTTP {status}: {detail}"),
        ));
    }
    let token = value
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            token_error(
                ErrorKind::Authentication,
                source,
                "no access_token in the answer",
            )
        })?;
    // `expires_in` is a number (Google, Entra v2) or a numeric string (older Entra endpoints).
    let lifetime = match value.get("expires_in") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .unwrap_or(3600);
    Ok((token.to_owned(), Duration::from_secs(lifetime)))
}

/// Sign `request` with SigV4 at `time`: adds `x-amz-date`, `authorization` and, with a session
/// token, `x-amz-security-token`.
pub(crate) fn sign_v4(
    request: &mut UpstreamRequest,
    signing: &AwsSigning,
    method: &str,
    time: SystemTime,
) -> Result<(), GatewayError> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    let fail = |e: &dyn std::fmt::Display| {
        GatewayError::new(
            ErrorKind::InvalidRequest,
            format!("cannot sign the request for AWS: {e}"),
        )
    };
    let identity = aws_credential_types::Credentials::new(
        &signing.access_key_id,
        signing.secret_access_key.expose(),
        signing
            .session_token
            .as_ref()
            .map(|t| t.expose().to_owned()),
        None,
        "llmux",
    )
    .into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(&signing.region)
        .name(signing.service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| fail(&e))?
        .into();
    let headers: Vec<(&str, &str)> = request
        .headers
        .iter()
        .filter_map(|(name, value)| value.to_str().ok().map(|v| (name.as_str(), v)))
        .collect();
    let signable = SignableRequest::new(
        method,
        request.url.as_str(),
        headers.into_iter(),
        SignableBody::Bytes(&request.body),
    )
    .map_err(|e| fail(&e))?;
    let (instructions, _signature) = sign(signable, &params).map_err(|e| fail(&e))?.into_parts();
    let (headers, _query) = instructions.into_parts();
    for header in headers {
        let mut value = HeaderValue::from_str(header.value()).map_err(|e| fail(&e))?;
        value.set_sensitive(header.sensitive() || header.name() == "authorization");
        request
            .headers
            .insert(HeaderName::from_static(header.name()), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::HeaderMap;
    use llmux_config::Secret;

    /// AWS's published SigV4 test suite (`aws-sig-v4-test-suite`): same credentials, time and
    /// scope for every case; the expected `Authorization` values are the suite's.
    fn vector(method: &str, session_token: Option<&str>) -> HeaderMap {
        let mut request = UpstreamRequest {
            url: "https://example.amazonaws.com/".into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            auth: None,
            hide_usage_chunk: false,
        };
        let signing = AwsSigning {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: session_token.map(Secret::new),
            region: "us-east-1".into(),
            service: "service",
        };
        // 2015-08-30T12:36:00Z
        let time = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        sign_v4(&mut request, &signing, method, time).unwrap();
        request.headers
    }

    #[test]
    fn sigv4_matches_the_aws_test_suite() {
        let h = vector("GET", None);
        assert_eq!(h["x-amz-date"], "20150830T123600Z");
        assert_eq!(h["authorization"], "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
        assert!(h["authorization"].is_sensitive());

        let h = vector("POST", None);
        assert_eq!(h["authorization"], "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b");

        let token = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";
        let h = vector("POST", Some(token));
        assert_eq!(h["x-amz-security-token"], token);
        assert_eq!(h["authorization"], "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead");
    }

    #[test]
    fn google_assertion_is_an_rs256_jwt_google_would_verify() {
        let (private, public) = test_keys();
        let jwt = google_assertion(
            "sa@p.iam.gserviceaccount.com",
            &private,
            Some("kid-1"),
            "https://oauth2.googleapis.com/token",
            "https://www.googleapis.com/auth/cloud-platform",
            unix_now(),
        )
        .unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_audience(&["https://oauth2.googleapis.com/token"]);
        validation.set_issuer(&["sa@p.iam.gserviceaccount.com"]);
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(public.as_bytes()).unwrap();
        let data = jsonwebtoken::decode::<Value>(&jwt, &key, &validation).unwrap();
        assert_eq!(data.header.kid.as_deref(), Some("kid-1"));
        assert_eq!(
            data.claims["scope"],
            "https://www.googleapis.com/auth/cloud-platform"
        );
        let (iat, exp) = (
            data.claims["iat"].as_u64().unwrap(),
            data.claims["exp"].as_u64().unwrap(),
        );
        assert_eq!(exp - iat, 3600);

        assert!(google_assertion(
            "a",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            None,
            "u",
            "s",
            0
        )
        .is_err());
    }

    /// The test service account's key pair (generated for these tests, used nowhere else).
    fn test_keys() -> (String, String) {
        let dir = format!(
            "{}/../../tests/fixtures/credentials",
            std::env::var("CARGO_MANIFEST_DIR").unwrap()
        );
        let sa: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{dir}/vertex-service-account.json")).unwrap(),
        )
        .unwrap();
        (
            sa["private_key"].as_str().unwrap().to_owned(),
            std::fs::read_to_string(format!("{dir}/vertex-service-account.pub.pem")).unwrap(),
        )
    }
}
