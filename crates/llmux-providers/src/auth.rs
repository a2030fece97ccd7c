//! Credentials that cannot be a static header: OAuth2 bearer tokens minted from a token endpoint
//! (Google service accounts and user credentials for Vertex AI, Azure Entra ID client
//! credentials) and AWS SigV4 signatures (Bedrock). Adapters describe what a request needs; the
//! core mints, caches and signs when it sends, so translation stays free of IO.

use std::sync::Arc;

use llmux_config::Secret;
use serde_json::Value;

/// Google's OAuth2 token endpoint, the default `token_uri` of service-account files.
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// The scope Vertex AI accepts.
pub const GOOGLE_CLOUD_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The scope Azure OpenAI accepts for Entra ID tokens.
pub const AZURE_COGNITIVE_SCOPE: &str = "https://cognitiveservices.azure.com/.default";
/// Entra ID's public-cloud authority.
pub const AZURE_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// What the core must do to a request before it goes out.
#[derive(Debug, Clone)]
pub enum UpstreamAuth {
    /// `Authorization: Bearer <token>` with a token from `OAuthSource` (cached until expiry).
    OAuth(Arc<OAuthSource>),
    /// AWS Signature Version 4 over the final method, URL, headers and body.
    SigV4(Arc<AwsSigning>),
}

/// An OAuth2 token endpoint and the grant that obtains a token from it.
#[derive(Debug)]
pub struct OAuthSource {
    pub token_url: String,
    pub scope: String,
    pub grant: OAuthGrant,
}

#[derive(Debug)]
pub enum OAuthGrant {
    /// RFC 7523 JWT bearer (Google service accounts): an RS256 assertion signed with the key.
    JwtBearer {
        client_email: String,
        private_key_pem: Secret,
        private_key_id: Option<String>,
    },
    /// RFC 6749 client credentials (Entra ID service principals).
    ClientCredentials {
        client_id: String,
        client_secret: Secret,
    },
    /// RFC 6749 refresh token (gcloud's `authorized_user` application-default credentials).
    RefreshToken {
        client_id: String,
        client_secret: Secret,
        refresh_token: Secret,
    },
}

impl OAuthSource {
    /// Identifies the token this source yields, so deployments sharing credentials share it
    /// (and the same client with another secret does not).
    pub fn cache_key(&self) -> String {
        use sha2::{Digest, Sha256};
        let (who, secret) = match &self.grant {
            OAuthGrant::JwtBearer {
                client_email,
                private_key_pem,
                ..
            } => (client_email.as_str(), private_key_pem.expose()),
            OAuthGrant::ClientCredentials {
                client_id,
                client_secret,
            } => (client_id.as_str(), client_secret.expose()),
            OAuthGrant::RefreshToken {
                client_id,
                refresh_token,
                ..
            } => (client_id.as_str(), refresh_token.expose()),
        };
        let digest = Sha256::digest(secret.as_bytes());
        let fingerprint: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("{} {who} {} {fingerprint}", self.token_url, self.scope)
    }
}

/// A Google credentials file: a service account key, or gcloud's `authorized_user` file.
pub fn google_credentials(json: &str, scope: &str) -> Result<OAuthSource, String> {
    let v: Value =
        serde_json::from_str(json).map_err(|e| format!("credentials are not valid JSON: {e}"))?;
    let field = |name: &str| -> Result<String, String> {
        v.get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("credentials have no `{name}`"))
    };
    let token_url = v
        .get("token_uri")
        .and_then(Value::as_str)
        .unwrap_or(GOOGLE_TOKEN_URL)
        .to_owned();
    let grant = match v.get("type").and_then(Value::as_str) {
        Some("service_account") | None => {
            let pem = field("private_key")?;
            if !pem.contains("PRIVATE KEY") {
                return Err("credentials' `private_key` is not a PEM private key".into());
            }
            OAuthGrant::JwtBearer {
                client_email: field("client_email")?,
                private_key_pem: Secret::new(pem),
                private_key_id: v
                    .get("private_key_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            }
        }
        Some("authorized_user") => OAuthGrant::RefreshToken {
            client_id: field("client_id")?,
            client_secret: Secret::new(field("client_secret")?),
            refresh_token: Secret::new(field("refresh_token")?),
        },
        Some(other) => {
            return Err(format!(
                "credentials of type `{other}` are not supported (use a service account key or \
                 gcloud application-default credentials)"
            ))
        }
    };
    Ok(OAuthSource {
        token_url,
        scope: scope.to_owned(),
        grant,
    })
}

/// The project a Google credentials file belongs to, when it says.
pub fn google_project(json: &str) -> Option<String> {
    let v: Value = serde_json::from_str(json).ok()?;
    v.get("project_id")
        .or_else(|| v.get("quota_project_id"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// AWS credentials and scope for SigV4.
#[derive(Debug)]
pub struct AwsSigning {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    pub region: String,
    /// The signing name, e.g. `bedrock`.
    pub service: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_and_user_credentials_parse() {
        let sa = r#"{"type": "service_account", "project_id": "p1", "private_key_id": "k1",
            "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "client_email": "sa@p1.iam.gserviceaccount.com", "token_uri": "http://127.0.0.1:1/token"}"#;
        let source = google_credentials(sa, GOOGLE_CLOUD_SCOPE).unwrap();
        assert_eq!(source.token_url, "http://127.0.0.1:1/token");
        assert!(
            matches!(source.grant, OAuthGrant::JwtBearer { ref client_email, .. } if client_email == "sa@p1.iam.gserviceaccount.com")
        );
        assert_eq!(google_project(sa).as_deref(), Some("p1"));

        let user = r#"{"type": "authorized_user", "client_id": "c", "client_secret": "s", "refresh_token": "r"}"#;
        let source = google_credentials(user, GOOGLE_CLOUD_SCOPE).unwrap();
        assert_eq!(source.token_url, GOOGLE_TOKEN_URL);
        assert!(matches!(source.grant, OAuthGrant::RefreshToken { .. }));

        let other = OAuthSource {
            token_url: source.token_url.clone(),
            scope: source.scope.clone(),
            grant: OAuthGrant::RefreshToken {
                client_id: "c".into(),
                client_secret: Secret::new("s"),
                refresh_token: Secret::new("another"),
            },
        };
        assert_ne!(
            source.cache_key(),
            other.cache_key(),
            "another secret, another token"
        );

        assert!(google_credentials("{}", GOOGLE_CLOUD_SCOPE).is_err());
        assert!(
            google_credentials(r#"{"type": "external_account"}"#, GOOGLE_CLOUD_SCOPE)
                .unwrap_err()
                .contains("external_account")
        );
        assert!(google_credentials("not json", GOOGLE_CLOUD_SCOPE).is_err());
    }
}
