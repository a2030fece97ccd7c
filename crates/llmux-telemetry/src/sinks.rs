//! The log sinks that ship LiteLLM's `StandardLoggingPayload` as it is: `generic_api` (a JSON
//! POST of each batch), `datadog` (the logs intake, one log entry per request) and `jsonl` (a
//! local JSON Lines file, llmux's own). Langfuse and S3 have modules of their own.

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::pipeline::{ExportError, ExportFuture, Exporter};
use crate::record::Finished;

/// Requests to a sink give up after this long (and are retried by the pipeline).
pub(crate) const SINK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// An HTTP client for the sinks.
pub(crate) fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(SINK_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot build an HTTP client for the log sinks: {e}"))
}

/// Send `request`; a non-2xx answer is an error (retried when the status says so).
pub(crate) async fn send(
    what: &str,
    request: reqwest::RequestBuilder,
) -> Result<Bytes, ExportError> {
    // The URL is left out of errors: it may carry a credential (a token in the query).
    let response = request
        .send()
        .await
        .map_err(|e| ExportError::retryable(format!("{what}: {}", e.without_url())))?;
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap_or_default();
    if !(200..300).contains(&status) {
        return Err(ExportError::from_status(what, status, &body));
    }
    Ok(body)
}

/// A sink's request body stays under this (Datadog takes 5 MB; a receiver's default limits are
/// of that order): a batch is sent in as many parts as it needs.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// `batch` cut into runs whose standard payloads add up to at most `MAX_BODY_BYTES` (one
/// record alone when it is larger).
fn parts(batch: &[Arc<Finished>]) -> Vec<&[Arc<Finished>]> {
    let mut parts = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, finished) in batch.iter().enumerate() {
        let size = finished.standard_json().len() + 64;
        if bytes + size > MAX_BODY_BYTES && i > start {
            parts.push(&batch[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < batch.len() {
        parts.push(&batch[start..]);
    }
    parts
}

/// Send every part of a batch, even after one failed; the first failure is reported.
async fn in_parts<'a, F, Fut>(batch: &'a [Arc<Finished>], send_part: F) -> Result<(), ExportError>
where
    F: Fn(&'a [Arc<Finished>]) -> Fut,
    Fut: std::future::Future<Output = Result<(), ExportError>>,
{
    let mut result = Ok(());
    for part in parts(batch) {
        let sent = send_part(part).await;
        result = result.and(sent);
    }
    result
}

/// The batch as JSON Lines: a standard payload per line (the `jsonl` file, `s3` objects).
pub(crate) fn json_lines(batch: &[Arc<Finished>]) -> Vec<u8> {
    batch
        .iter()
        .flat_map(|f| f.standard_json().iter().copied().chain([b'\n']))
        .collect()
}

/// The batch as a JSON array of standard payloads (each serialized once per request).
fn payload_array(batch: &[Arc<Finished>]) -> Vec<u8> {
    let mut body = Vec::with_capacity(
        batch
            .iter()
            .map(|f| f.standard_json().len() + 1)
            .sum::<usize>()
            + 2,
    );
    body.push(b'[');
    for (i, finished) in batch.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(finished.standard_json());
    }
    body.push(b']');
    body
}

/// LiteLLM's `generic_api` callback: each batch POSTed as a JSON array of standard payloads to
/// `GENERIC_LOGGER_ENDPOINT`, with `GENERIC_LOGGER_HEADERS` (`name=value,...`).
pub(crate) struct GenericApi {
    client: reqwest::Client,
    endpoint: String,
    headers: Vec<(String, String)>,
}

impl GenericApi {
    pub(crate) fn new(var: &dyn Fn(&str) -> Option<String>) -> Result<GenericApi, String> {
        let endpoint = var("GENERIC_LOGGER_ENDPOINT")
            .ok_or("callback `generic_api` needs GENERIC_LOGGER_ENDPOINT")?;
        let headers = var("GENERIC_LOGGER_HEADERS")
            .map(|h| crate::otel::parse_headers(&h))
            .transpose()?
            .unwrap_or_default();
        Ok(GenericApi {
            client: http_client()?,
            endpoint,
            headers,
        })
    }
}

impl Exporter for GenericApi {
    fn export<'a>(&'a self, batch: &'a [Arc<Finished>]) -> ExportFuture<'a> {
        Box::pin(in_parts(batch, move |part| async move {
            let mut request = self
                .client
                .post(&self.endpoint)
                .header("content-type", "application/json")
                .body(payload_array(part));
            for (name, value) in &self.headers {
                request = request.header(name, value);
            }
            send("generic_api", request).await.map(drop)
        }))
    }
}

/// LiteLLM's `datadog` callback: the logs intake (`DD_API_KEY`, `DD_SITE`; `DD_BASE_URL`
/// replaces the intake's URL), one log entry per request whose message is the standard payload.
pub(crate) struct Datadog {
    client: reqwest::Client,
    url: String,
    api_key: String,
    service: String,
    tags: String,
    hostname: String,
}

impl Datadog {
    pub(crate) fn new(var: &dyn Fn(&str) -> Option<String>) -> Result<Datadog, String> {
        let api_key = var("DD_API_KEY").ok_or("callback `datadog` needs DD_API_KEY")?;
        let base = var("DD_BASE_URL").unwrap_or_else(|| {
            let site = var("DD_SITE").unwrap_or_else(|| "datadoghq.com".to_owned());
            format!("https://http-intake.logs.{site}")
        });
        let env = var("DD_ENV").unwrap_or_else(|| "unknown".to_owned());
        let service = var("DD_SERVICE").unwrap_or_else(|| "litellm-server".to_owned());
        let version = var("DD_VERSION").unwrap_or_else(|| "unknown".to_owned());
        Ok(Datadog {
            client: http_client()?,
            url: format!("{}/api/v2/logs", base.trim_end_matches('/')),
            api_key,
            tags: format!("env:{env},service:{service},version:{version}"),
            service,
            hostname: var("HOSTNAME").unwrap_or_default(),
        })
    }
}

impl Exporter for Datadog {
    fn export<'a>(&'a self, batch: &'a [Arc<Finished>]) -> ExportFuture<'a> {
        Box::pin(in_parts(batch, move |part| async move {
            let entries: Vec<serde_json::Value> = part
                .iter()
                .map(|f| {
                    serde_json::json!({
                        "ddsource": "litellm",
                        "ddtags": self.tags,
                        "hostname": self.hostname,
                        "message": String::from_utf8_lossy(f.standard_json()),
                        "service": self.service,
                        "status": if f.succeeded() { "info" } else { "error" },
                    })
                })
                .collect();
            let request = self
                .client
                .post(&self.url)
                .header("DD-API-KEY", &self.api_key)
                .json(&entries);
            send("datadog", request).await.map(drop)
        }))
    }
}

/// llmux's `jsonl` callback: one standard payload per line appended to
/// `llmux_settings.jsonl_log_path` (or `LLMUX_JSONL_LOG_PATH`). Rotate it with a tool that
/// copies and truncates (the file stays open).
pub(crate) struct JsonLines {
    file: Arc<Mutex<std::io::BufWriter<std::fs::File>>>,
}

impl JsonLines {
    pub(crate) fn open(path: &str) -> Result<JsonLines, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open the JSON Lines log {path}: {e}"))?;
        Ok(JsonLines {
            file: Arc::new(Mutex::new(std::io::BufWriter::new(file))),
        })
    }
}

impl Exporter for JsonLines {
    fn export<'a>(&'a self, batch: &'a [Arc<Finished>]) -> ExportFuture<'a> {
        let lines = json_lines(batch);
        let file = Arc::clone(&self.file);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut file = file
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                file.write_all(&lines).and_then(|()| file.flush())
            })
            .await
            .map_err(|e| ExportError::permanent(format!("jsonl: {e}")))?
            // Not retried: part of the batch may be in the file already.
            .map_err(|e| ExportError::permanent(format!("jsonl: {e}")))
        })
    }
}
