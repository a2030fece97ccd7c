//! Sending to upstreams: one pooled HTTP client (keep-alive, HTTP/2 by ALPN, rustls), and the
//! in-process mock, both seen by the rest of the core as an `UpstreamResponse` of bytes.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::HeaderMap;
use llmux_providers::UpstreamRequest;
use llmux_types::{ErrorKind, GatewayError};

use crate::credentials::Credentials;

/// The shared upstream HTTP client.
#[derive(Debug, Clone)]
pub(crate) struct HttpClient {
    client: reqwest::Client,
    /// Parsed upstream URLs: a deployment's few URLs never change, parsing them per request would.
    urls: std::sync::Arc<std::sync::RwLock<std::collections::HashMap<String, reqwest::Url>>>,
    /// Minted tokens, shared by every client of the pool.
    credentials: std::sync::Arc<Credentials>,
}

impl HttpClient {
    pub(crate) fn new(
        connect_timeout: Duration,
        credentials: std::sync::Arc<Credentials>,
    ) -> Result<HttpClient, GatewayError> {
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(30))
            .http2_adaptive_window(true)
            .user_agent(concat!("llmux/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GatewayError::internal(format!("cannot build the HTTP client: {e}")))?;
        Ok(HttpClient {
            client,
            urls: Default::default(),
            credentials,
        })
    }

    /// Apply the request's credentials (token, signature) and send it.
    pub(crate) async fn send_request(
        &self,
        mut request: UpstreamRequest,
    ) -> Result<UpstreamResponse, GatewayError> {
        if request.auth.is_some() {
            self.credentials.apply(&self.client, &mut request).await?;
        }
        self.send(&request.url, request.headers, request.body).await
    }

    /// Send a request; resolves when the response headers have arrived.
    pub(crate) async fn send(
        &self,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<UpstreamResponse, GatewayError> {
        let parsed = self
            .urls
            .read()
            .ok()
            .and_then(|urls| urls.get(url).cloned());
        let parsed = match parsed {
            Some(u) => u,
            None => {
                let u = reqwest::Url::parse(url).map_err(|e| {
                    GatewayError::internal(format!("invalid upstream URL {url}: {e}"))
                })?;
                if let Ok(mut urls) = self.urls.write() {
                    if urls.len() < 4096 {
                        urls.insert(url.to_owned(), u.clone());
                    }
                }
                u
            }
        };
        let response = self
            .client
            .post(parsed)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        Ok(UpstreamResponse {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: UpstreamBody::Http(Box::pin(response.bytes_stream())),
        })
    }
}

/// HTTP clients by connect timeout, reused across reloads so connection pools stay warm.
#[derive(Debug, Default)]
pub(crate) struct ClientPool {
    clients: std::sync::Mutex<std::collections::HashMap<Duration, HttpClient>>,
    credentials: std::sync::Arc<Credentials>,
}

impl ClientPool {
    pub(crate) fn get(&self, connect_timeout: Duration) -> Result<HttpClient, GatewayError> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = clients.get(&connect_timeout) {
            return Ok(client.clone());
        }
        let client = HttpClient::new(connect_timeout, self.credentials.clone())?;
        clients.insert(connect_timeout, client.clone());
        Ok(client)
    }
}

/// Classify a transport failure (no HTTP response, or a broken body).
pub(crate) fn transport_error(e: &reqwest::Error) -> GatewayError {
    let detail = error_chain(e);
    if e.is_timeout() {
        GatewayError::new(ErrorKind::Timeout, format!("upstream timed out: {detail}"))
    } else if e.is_connect() {
        GatewayError::new(
            ErrorKind::UpstreamUnavailable,
            format!("cannot connect to upstream: {detail}"),
        )
    } else {
        GatewayError::new(
            ErrorKind::UpstreamUnavailable,
            format!("upstream connection failed: {detail}"),
        )
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

type ByteStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send>>;

pub(crate) enum UpstreamBody {
    Http(ByteStream),
    Local(VecDeque<Bytes>),
}

/// An upstream's answer whose body is read on demand (so a stream is pulled only as fast as the
/// client reads, and dropping it closes the upstream connection).
pub(crate) struct UpstreamResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: UpstreamBody,
}

impl UpstreamResponse {
    pub(crate) fn local(status: u16, parts: VecDeque<Bytes>) -> Self {
        UpstreamResponse {
            status,
            headers: HeaderMap::new(),
            body: UpstreamBody::Local(parts),
        }
    }

    /// The next piece of the body; `None` at the end.
    pub(crate) async fn next_bytes(&mut self) -> Option<Result<Bytes, GatewayError>> {
        match &mut self.body {
            UpstreamBody::Http(stream) => stream
                .next()
                .await
                .map(|r| r.map_err(|e| transport_error(&e))),
            UpstreamBody::Local(parts) => parts.pop_front().map(Ok),
        }
    }

    /// The whole body, bounded by `limit` bytes.
    pub(crate) async fn collect(&mut self, limit: usize) -> Result<Bytes, GatewayError> {
        let mut first: Option<Bytes> = None;
        let mut buf: Vec<u8> = Vec::new();
        while let Some(piece) = self.next_bytes().await {
            let piece = piece?;
            if first.is_none() && buf.is_empty() {
                first = Some(piece);
                continue;
            }
            if let Some(f) = first.take() {
                buf.extend_from_slice(&f);
            }
            buf.extend_from_slice(&piece);
            if buf.len() > limit {
                return Err(GatewayError::new(
                    ErrorKind::UpstreamError,
                    format!("upstream response exceeds {limit} bytes"),
                ));
            }
        }
        Ok(match first {
            Some(f) => f,
            None => Bytes::from(buf),
        })
    }
}
