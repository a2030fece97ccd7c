//! The `s3` callback: each batch written as one JSON Lines object (a standard payload per line)
//! to an S3-compatible store, configured by LiteLLM's `litellm_settings.s3_callback_params`
//! (`s3_bucket_name`, `s3_region_name`, `s3_aws_access_key_id`, `s3_aws_secret_access_key`,
//! `s3_aws_session_token`, `s3_endpoint_url`, `s3_path`; the AWS_* variables where unset).
//! Requests are signed with SigV4 (`aws-sigv4`, as Bedrock's are); a custom endpoint is
//! addressed path-style (`{endpoint}/{bucket}/{key}`), AWS itself virtual-hosted.

use std::sync::Arc;
use std::time::SystemTime;

use crate::pipeline::{ExportError, ExportFuture, Exporter};
use crate::record::Finished;
use crate::sinks::{http_client, send};

pub(crate) struct S3 {
    client: reqwest::Client,
    /// Everything before the object key: `https://bucket.s3.region.amazonaws.com/` or
    /// `{endpoint}/{bucket}/`.
    base: String,
    prefix: String,
    region: String,
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl S3 {
    pub(crate) fn new(
        params: &[(String, String)],
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<S3, String> {
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        let bucket = param("s3_bucket_name")
            .ok_or("callback `s3` needs litellm_settings.s3_callback_params.s3_bucket_name")?;
        if !bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            return Err(format!(
                "s3_bucket_name `{bucket}` is not a valid bucket name"
            ));
        }
        let region = param("s3_region_name")
            .or_else(|| var("AWS_REGION"))
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_owned());
        let access_key_id = param("s3_aws_access_key_id")
            .or_else(|| var("AWS_ACCESS_KEY_ID"))
            .ok_or("callback `s3` needs s3_aws_access_key_id or AWS_ACCESS_KEY_ID")?;
        let secret_access_key = param("s3_aws_secret_access_key")
            .or_else(|| var("AWS_SECRET_ACCESS_KEY"))
            .ok_or("callback `s3` needs s3_aws_secret_access_key or AWS_SECRET_ACCESS_KEY")?;
        let session_token = param("s3_aws_session_token").or_else(|| var("AWS_SESSION_TOKEN"));
        let base = match param("s3_endpoint_url") {
            Some(endpoint) => {
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                    return Err(format!(
                        "s3_endpoint_url `{endpoint}` must start with http:// or https://"
                    ));
                }
                format!("{}/{bucket}/", endpoint.trim_end_matches('/'))
            }
            // A dotted bucket name does not match S3's wildcard certificate as a host name.
            None if bucket.contains('.') => {
                format!("https://s3.{region}.amazonaws.com/{bucket}/")
            }
            None => format!("https://{bucket}.s3.{region}.amazonaws.com/"),
        };
        // Only characters a key needs no escaping for: the signature covers the path as sent.
        let prefix: String = param("s3_path")
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
            .collect::<String>()
            .split('/')
            .filter(|part| !part.is_empty() && *part != "." && *part != "..")
            .collect::<Vec<_>>()
            .join("/");
        Ok(S3 {
            client: http_client()?,
            base,
            prefix,
            region,
            access_key_id,
            secret_access_key,
            session_token,
        })
    }

    /// The object key for a batch written at `now`: `{s3_path}/{date}/{time}-{uuid}.jsonl`.
    fn key(&self, now: SystemTime) -> String {
        let time = chrono::DateTime::<chrono::Utc>::from(now);
        let name = format!(
            "{}/{}-{}.jsonl",
            time.format("%Y-%m-%d"),
            time.format("%H-%M-%S-%3f"),
            uuid::Uuid::new_v4()
        );
        if self.prefix.is_empty() {
            name
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    /// SigV4 headers for a PUT of `body` to `url` at `now`.
    fn sign(
        &self,
        url: &str,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Vec<(String, String)>, String> {
        use aws_sigv4::http_request::{
            sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest,
            SigningSettings, UriPathNormalizationMode,
        };
        let identity = aws_credential_types::Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            self.session_token.clone(),
            None,
            "llmux",
        )
        .into();
        let mut settings = SigningSettings::default();
        // S3 wants the payload's hash in `x-amz-content-sha256`.
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        // S3's canonical request encodes the key once and does not normalise its path.
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(now)
            .settings(settings)
            .build()
            .map_err(|e| e.to_string())?
            .into();
        let headers = [("content-type", "application/x-ndjson")];
        let signable =
            SignableRequest::new("PUT", url, headers.into_iter(), SignableBody::Bytes(body))
                .map_err(|e| e.to_string())?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| e.to_string())?
            .into_parts();
        let (signed, _query) = instructions.into_parts();
        Ok(signed
            .into_iter()
            .map(|h| (h.name().to_owned(), h.value().to_owned()))
            .collect())
    }
}

impl Exporter for S3 {
    fn export<'a>(&'a self, batch: &'a [Arc<Finished>]) -> ExportFuture<'a> {
        Box::pin(async move {
            let body = crate::sinks::json_lines(batch);
            let now = SystemTime::now();
            let url = format!("{}{}", self.base, self.key(now));
            let headers = self
                .sign(&url, &body, now)
                .map_err(|e| ExportError::permanent(format!("s3: cannot sign: {e}")))?;
            let mut request = self
                .client
                .put(&url)
                .header("content-type", "application/x-ndjson")
                .body(body);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            send("s3", request).await.map(drop)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(params: &[(&str, &str)]) -> Result<S3, String> {
        let params: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        S3::new(&params, &|_| None)
    }

    #[test]
    fn endpoints_keys_and_refusals() {
        let aws = sink(&[
            ("s3_bucket_name", "logs"),
            ("s3_region_name", "eu-west-1"),
            ("s3_aws_access_key_id", "AKID"),
            ("s3_aws_secret_access_key", "secret"),
            ("s3_path", "/team a/llm//"),
        ])
        .unwrap();
        assert_eq!(aws.base, "https://logs.s3.eu-west-1.amazonaws.com/");
        let key = aws.key(SystemTime::UNIX_EPOCH);
        assert!(
            key.starts_with("teama/llm/1970-01-01/00-00-00-000-"),
            "{key}"
        );
        assert!(key.ends_with(".jsonl"));
        let custom = sink(&[
            ("s3_bucket_name", "logs"),
            ("s3_endpoint_url", "http://127.0.0.1:9000/"),
            ("s3_aws_access_key_id", "AKID"),
            ("s3_aws_secret_access_key", "secret"),
        ])
        .unwrap();
        assert_eq!(custom.base, "http://127.0.0.1:9000/logs/");
        assert!(
            sink(&[("s3_bucket_name", "logs")]).is_err(),
            "no credentials"
        );
        assert!(sink(&[
            ("s3_bucket_name", "Bad_Bucket"),
            ("s3_aws_access_key_id", "a"),
            ("s3_aws_secret_access_key", "b")
        ])
        .is_err());
    }
}
