//! Sending to upstreams: one pooled HTTP client (keep-alive, HTTP/2 by ALPN, rustls), and the
//! in-process mock, both seen by the rest of the core as an `UpstreamResponse` of bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{HeaderValue, ACCEPT, HOST, USER_AGENT};
use http::{HeaderMap, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use llmux_providers::UpstreamRequest;
use llmux_types::{ErrorKind, GatewayError};

use crate::credentials::Credentials;

const USER_AGENT_VALUE: &str = concat!("llmux/", env!("CARGO_PKG_VERSION"));
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const POOL_MAX_IDLE_PER_HOST: usize = 1024;
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// How requests leave the process.
#[derive(Debug, Clone)]
enum Transport {
    /// hyper-util's pooled client, straight: reqwest's layers (URL re-parsing for its redirect
    /// policy, tower retry and redirect services) cost about 26k instructions per request, and
    /// a gateway must not follow an upstream's redirects anyway.
    Direct(Box<HyperClient<Connector, Full<Bytes>>>),
    /// An HTTP proxy is configured in the environment (`HTTPS_PROXY`, `HTTP_PROXY`,
    /// `ALL_PROXY`): reqwest, which implements proxies and `NO_PROXY`.
    Proxied(reqwest::Client),
}

/// The shared upstream HTTP client.
#[derive(Debug, Clone)]
pub(crate) struct HttpClient {
    transport: Transport,
    /// Parsed upstream URLs with their `Host` header, per URL text: a deployment's few URLs
    /// never change, parsing them per request would.
    uris: Arc<RwLock<foldhash::HashMap<String, Target>>>,
    /// Minted tokens, shared by every client of the pool.
    credentials: Arc<Credentials>,
    /// For token endpoints: built on first use, most deployments never mint a token.
    minting: Arc<MintingClient>,
}

/// A reqwest client built on first use.
#[derive(Debug)]
pub(crate) struct MintingClient {
    connect_timeout: Duration,
    client: OnceLock<reqwest::Client>,
}

impl MintingClient {
    pub(crate) fn get(&self) -> Result<&reqwest::Client, GatewayError> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let client = reqwest_client(self.connect_timeout)?;
        Ok(self.client.get_or_init(|| client))
    }
}

fn reqwest_client(connect_timeout: Duration) -> Result<reqwest::Client, GatewayError> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .tcp_nodelay(true)
        .tcp_keepalive(TCP_KEEPALIVE)
        .http2_adaptive_window(true)
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
        .user_agent(USER_AGENT_VALUE)
        .build()
        .map_err(|e| GatewayError::internal(format!("cannot build the HTTP client: {e}")))
}

/// An HTTP proxy named in the environment, the variables reqwest reads.
fn proxy_configured() -> bool {
    [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

/// TLS settings shared by every client: the root store is parsed once.
fn tls_config() -> Result<rustls::ClientConfig, GatewayError> {
    static CONFIG: OnceLock<rustls::ClientConfig> = OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(config.clone());
    }
    use hyper_rustls::ConfigBuilderExt;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| GatewayError::internal(format!("cannot set up TLS: {e}")))?
        .with_webpki_roots()
        .with_no_client_auth();
    Ok(CONFIG.get_or_init(|| config).clone())
}

fn direct_client(
    connect_timeout: Duration,
) -> Result<HyperClient<Connector, Full<Bytes>>, GatewayError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http.set_keepalive(Some(TCP_KEEPALIVE));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config()?)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_adaptive_window(true)
        .build(https))
}

impl HttpClient {
    pub(crate) fn new(
        connect_timeout: Duration,
        credentials: Arc<Credentials>,
    ) -> Result<HttpClient, GatewayError> {
        let transport = if proxy_configured() {
            Transport::Proxied(reqwest_client(connect_timeout)?)
        } else {
            Transport::Direct(Box::new(direct_client(connect_timeout)?))
        };
        Ok(HttpClient {
            transport,
            uris: Default::default(),
            credentials,
            minting: Arc::new(MintingClient {
                connect_timeout,
                client: OnceLock::new(),
            }),
        })
    }

    /// Apply the request's credentials (token, signature) and send it.
    pub(crate) async fn send_request(
        &self,
        mut request: UpstreamRequest,
    ) -> Result<UpstreamResponse, GatewayError> {
        if request.auth.is_some() {
            self.credentials.apply(&self.minting, &mut request).await?;
        }
        self.send(&request.url, request.headers, request.body).await
    }

    fn uri(&self, url: &str) -> Result<Target, GatewayError> {
        if let Some(uri) = self
            .uris
            .read()
            .ok()
            .and_then(|uris| uris.get(url).cloned())
        {
            return Ok(uri);
        }
        // Through `url::Url` first (once per URL, then cached): it normalizes what a base URL
        // may carry (`/v1/../openai`, IDNA hosts, spaces), as reqwest did.
        let invalid = |e: &dyn std::fmt::Display| {
            GatewayError::internal(format!("invalid upstream URL {url}: {e}"))
        };
        let parsed = url::Url::parse(url).map_err(|e| invalid(&e))?;
        if !matches!(parsed.scheme(), "http" | "https") || !parsed.has_host() {
            return Err(invalid(&"not an http(s) URL"));
        }
        let uri: Uri = parsed.as_str().parse().map_err(|e| invalid(&e))?;
        let entry = (uri.clone(), host_header(&uri));
        if let Ok(mut uris) = self.uris.write() {
            if uris.len() < 4096 {
                uris.insert(url.to_owned(), entry.clone());
            }
        }
        Ok(entry)
    }

    /// Send a POST; resolves when the response headers have arrived.
    pub(crate) async fn send(
        &self,
        url: &str,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<UpstreamResponse, GatewayError> {
        let client = match &self.transport {
            Transport::Direct(client) => client,
            Transport::Proxied(client) => return send_proxied(client, url, headers, body).await,
        };
        let (mut uri, host) = self.uri(url)?;
        // Set here from the cache; hyper's client would build it per request.
        if let Some(host) = host {
            headers.entry(HOST).or_insert(host);
        }
        headers
            .entry(USER_AGENT)
            .or_insert(HeaderValue::from_static(USER_AGENT_VALUE));
        headers
            .entry(ACCEPT)
            .or_insert(HeaderValue::from_static("*/*"));
        let mut hops = 0;
        let response = loop {
            let mut request = http::Request::new(Full::new(body.clone()));
            *request.method_mut() = http::Method::POST;
            *request.uri_mut() = uri.clone();
            *request.headers_mut() = headers.clone();
            let response = client
                .request(request)
                .await
                .map_err(|e| transport_error(&e, e.is_connect()))?;
            match redirect(&uri, &response, hops)? {
                None => break response,
                Some(next) => {
                    if next.authority() != uri.authority() || next.scheme() != uri.scheme() {
                        for name in CREDENTIAL_HEADERS {
                            headers.remove(name);
                        }
                        match host_header(&next) {
                            Some(host) => headers.insert(HOST, host),
                            None => headers.remove(HOST),
                        };
                    }
                    tracing::debug!(from = %uri, to = %next, "following the upstream's redirect");
                    uri = next;
                    hops += 1;
                }
            }
        };
        let (parts, body) = response.into_parts();
        Ok(UpstreamResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: UpstreamBody::Http(Box::pin(
                body.into_data_stream()
                    .map(|r| r.map_err(|e| transport_error(&e, false))),
            )),
        })
    }
}

/// A parsed upstream URL and the `Host` header it implies.
type Target = (Uri, Option<HeaderValue>);

/// The `Host` header for a plain-HTTP URI: its host, and its port when not 80 (what hyper's
/// client writes when a request has none, with a `format!` per request). Plain HTTP is always
/// HTTP/1 here; an https upstream may negotiate HTTP/2, which carries `:authority` instead, so
/// those are left to hyper.
fn host_header(uri: &Uri) -> Option<HeaderValue> {
    if uri.scheme_str() != Some("http") {
        return None;
    }
    let host = uri.host()?;
    match uri.port_u16().filter(|p| *p != 80) {
        Some(port) => HeaderValue::from_str(&format!("{host}:{port}")).ok(),
        None => HeaderValue::from_str(host).ok(),
    }
}

/// Redirects followed per request: 307 and 308 only, which keep the method and body.
const MAX_REDIRECTS: usize = 5;

/// Headers that carry an upstream credential: not sent on to another origin.
const CREDENTIAL_HEADERS: [&str; 6] = [
    "authorization",
    "api-key",
    "x-api-key",
    "x-goog-api-key",
    "cookie",
    "proxy-authorization",
];

/// Where a 307/308 answer sends the request next; `None` for any other answer. A 301/302/303
/// would turn the POST into a GET without its body, which no model API answers usefully: it is
/// reported with its target instead.
fn redirect<B>(
    from: &Uri,
    response: &http::Response<B>,
    hops: usize,
) -> Result<Option<Uri>, GatewayError> {
    let status = response.status();
    if !status.is_redirection() || status == http::StatusCode::NOT_MODIFIED {
        return Ok(None);
    }
    let location = response
        .headers()
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok());
    let Some(location) = location else {
        return Ok(None);
    };
    let fail = |why: String| Err(GatewayError::new(ErrorKind::UpstreamError, why));
    if !matches!(status.as_u16(), 307 | 308) {
        return fail(format!(
            "upstream answered {status} redirecting to {location}: set api_base to the final URL"
        ));
    }
    if hops >= MAX_REDIRECTS {
        return fail(format!(
            "upstream redirected more than {MAX_REDIRECTS} times"
        ));
    }
    let next = url::Url::parse(&from.to_string())
        .and_then(|base| base.join(location))
        .ok()
        .filter(|next| matches!(next.scheme(), "http" | "https"))
        .and_then(|next| next.as_str().parse::<Uri>().ok());
    match next {
        Some(next) => Ok(Some(next)),
        None => fail(format!("upstream redirected to an invalid URL: {location}")),
    }
}

async fn send_proxied(
    client: &reqwest::Client,
    url: &str,
    headers: HeaderMap,
    body: Bytes,
) -> Result<UpstreamResponse, GatewayError> {
    let response = client
        .post(url)
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(|e| transport_error(&e, e.is_connect()))?;
    Ok(UpstreamResponse {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: UpstreamBody::Http(Box::pin(
            response
                .bytes_stream()
                .map(|r| r.map_err(|e| transport_error(&e, false))),
        )),
    })
}

/// HTTP clients by connect timeout, reused across reloads so connection pools stay warm.
#[derive(Debug, Default)]
pub(crate) struct ClientPool {
    clients: std::sync::Mutex<HashMap<Duration, HttpClient>>,
    credentials: Arc<Credentials>,
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

/// Classify a transport failure (no HTTP response, or a broken body): timeouts anywhere in the
/// error's causes, then failures to connect, then the rest.
pub(crate) fn transport_error(
    e: &(dyn std::error::Error + 'static),
    connect: bool,
) -> GatewayError {
    let detail = error_chain(e);
    if timed_out(e) {
        GatewayError::new(ErrorKind::Timeout, format!("upstream timed out: {detail}"))
    } else if connect {
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

fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        if c.downcast_ref::<reqwest::Error>()
            .is_some_and(reqwest::Error::is_timeout)
            || c.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_timeout)
        {
            return true;
        }
        cause = c.source();
    }
    false
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
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, GatewayError>> + Send>>;

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
            UpstreamBody::Http(stream) => stream.next().await,
            UpstreamBody::Local(parts) => parts.pop_front().map(Ok),
        }
    }

    /// The whole body, bounded by `limit` bytes, for error bodies and other small reads.
    pub(crate) async fn collect(&mut self, limit: usize) -> Result<Bytes, GatewayError> {
        self.collect_within(limit, None).await
    }

    /// The whole body, bounded by `limit` bytes and counted against `budget` (the bytes every
    /// request holds at once) until the returned `Bytes` and all its clones are dropped. A body
    /// that arrives in one piece is kept as that piece; one with a `content-length` is read into
    /// one buffer of exactly its size (a doubling `Vec` peaked at three times a large body); one
    /// without grows by doubling (the old and new buffers coexist during each copy; only the
    /// body's length is counted against the budget).
    pub(crate) async fn collect_within(
        &mut self,
        limit: usize,
        budget: Option<(&Arc<BufferBudget>, usize)>,
    ) -> Result<Bytes, GatewayError> {
        let too_large = || {
            GatewayError::new(
                ErrorKind::UpstreamError,
                format!("upstream response exceeds {limit} bytes"),
            )
        };
        let declared = self
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut claim = budget.map(|(budget, cap)| BufferClaim::new(budget, cap));
        if let (Some(c), Some(n)) = (claim.as_mut(), declared) {
            c.grow(n)?;
        }
        // With a declared length, one buffer of exactly that size; without, one that grows
        // (mapped, and so returned to the OS as it grows, once past `MAPPED_FROM`). Each piece
        // is copied in and dropped at once.
        let mut buf: Option<BodyBuffer> = None;
        let mut only: Option<Bytes> = None;
        let mut total = 0usize;
        while let Some(piece) = self.next_bytes().await {
            let piece = piece?;
            total += piece.len();
            if total > limit {
                return Err(too_large());
            }
            if let Some(c) = claim.as_mut() {
                c.grow(total)?;
            }
            // A body that comes in one piece is kept as that piece: no copy at all.
            if buf.is_none() && only.is_none() {
                only = Some(piece);
                continue;
            }
            let b = match &mut buf {
                Some(b) => b,
                None => buf.insert(BodyBuffer::with_capacity(declared.unwrap_or(0).max(total))?),
            };
            if let Some(first) = only.take() {
                b.push(&first)?;
            }
            b.push(&piece)?;
        }
        let joined = match (buf, only) {
            (Some(mut b), Some(first)) => {
                b.push(&first)?;
                b.freeze()
            }
            (Some(b), None) => b.freeze(),
            (None, Some(first)) => first,
            (None, None) => Bytes::new(),
        };
        Ok(match claim {
            Some(mut c) => {
                c.shrink_to(joined.len());
                Bytes::from_owner(ClaimedBytes {
                    bytes: joined,
                    _claim: c,
                })
            }
            None => joined,
        })
    }
}

/// Bodies from this size on are held in memory mapped for them alone: a `Vec` from the
/// allocator was kept by it after the request (mimalloc purges lazily, so an idle gateway held
/// a burst's peak), while a mapping is returned to the OS the moment its last `Bytes` drops.
const MAPPED_FROM: usize = 1 << 20;

/// A body being assembled into a buffer of a size known up front.
enum BodyBuffer {
    Heap(Vec<u8>),
    Mapped { map: memmap2::MmapMut, len: usize },
}

impl BodyBuffer {
    fn with_capacity(n: usize) -> Result<Self, GatewayError> {
        if n < MAPPED_FROM {
            return Ok(BodyBuffer::Heap(Vec::with_capacity(n)));
        }
        memmap2::MmapOptions::new()
            .len(n)
            .map_anon()
            .map(|map| BodyBuffer::Mapped { map, len: 0 })
            .map_err(|e| {
                GatewayError::new(
                    ErrorKind::Internal,
                    format!("cannot hold an upstream answer of {n} bytes: {e}"),
                )
                .with_status(503)
            })
    }

    fn len(&self) -> usize {
        match self {
            BodyBuffer::Heap(v) => v.len(),
            BodyBuffer::Mapped { len, .. } => *len,
        }
    }

    fn capacity(&self) -> usize {
        match self {
            BodyBuffer::Heap(v) => v.capacity(),
            BodyBuffer::Mapped { map, .. } => map.len(),
        }
    }

    fn push(&mut self, piece: &[u8]) -> Result<(), GatewayError> {
        let needed = self.len() + piece.len();
        if needed > self.capacity() {
            // Grow by doubling into a fresh buffer (a mapping past `MAPPED_FROM`); the old one
            // is freed, a mapping straight back to the OS.
            let mut bigger = BodyBuffer::with_capacity(needed.max(2 * self.capacity()))?;
            bigger.push(self.as_slice())?;
            *self = bigger;
        }
        match self {
            BodyBuffer::Heap(v) => v.extend_from_slice(piece),
            BodyBuffer::Mapped { map, len } => {
                let end = *len + piece.len();
                let Some(room) = map.get_mut(*len..end) else {
                    return Err(GatewayError::new(
                        ErrorKind::Internal,
                        "an upstream answer outgrew its buffer",
                    ));
                };
                room.copy_from_slice(piece);
                *len = end;
            }
        }
        Ok(())
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            BodyBuffer::Heap(v) => v,
            BodyBuffer::Mapped { map, len } => &map[..*len],
        }
    }

    fn freeze(self) -> Bytes {
        match self {
            BodyBuffer::Heap(v) => Bytes::from(v),
            BodyBuffer::Mapped { map, len } => Bytes::from_owner(MappedBody { map, len }),
        }
    }
}

struct MappedBody {
    map: memmap2::MmapMut,
    len: usize,
}

impl AsRef<[u8]> for MappedBody {
    fn as_ref(&self) -> &[u8] {
        &self.map[..self.len]
    }
}

/// The bytes of upstream answers held in memory at once, across every request of a client
/// (`llmux_settings.max_buffered_response_mb`): past it a request is refused with a 503 rather
/// than let a few large answers take the process's memory.
#[derive(Debug, Default)]
pub struct BufferBudget {
    used: AtomicUsize,
}

impl BufferBudget {
    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    fn take(&self, n: usize, cap: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + n <= cap).then_some(used + n)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// A request's share of the buffer budget, returned when dropped.
#[derive(Debug)]
struct BufferClaim {
    budget: Arc<BufferBudget>,
    cap: usize,
    held: usize,
}

impl BufferClaim {
    fn new(budget: &Arc<BufferBudget>, cap: usize) -> Self {
        BufferClaim {
            budget: Arc::clone(budget),
            cap,
            held: 0,
        }
    }

    /// Hold `total` bytes (more than now), or refuse the request.
    fn grow(&mut self, total: usize) -> Result<(), GatewayError> {
        if total <= self.held {
            return Ok(());
        }
        if !self.budget.take(total - self.held, self.cap) {
            let mut e = GatewayError::new(
                ErrorKind::Internal,
                format!(
                    "the gateway is holding its limit of upstream answers in memory ({} MiB, \
                     llmux_settings.max_buffered_response_mb); retry shortly",
                    self.cap >> 20
                ),
            )
            .with_code("response_buffer_full")
            .with_status(503);
            e.retry_after = Some(Duration::from_secs(1));
            return Err(e);
        }
        self.held = total;
        Ok(())
    }

    fn shrink_to(&mut self, total: usize) {
        if total < self.held {
            self.budget.give(self.held - total);
            self.held = total;
        }
    }
}

impl Drop for BufferClaim {
    fn drop(&mut self) {
        self.budget.give(self.held);
    }
}

/// An answer's bytes with the budget they hold (released when the last clone is dropped).
struct ClaimedBytes {
    bytes: Bytes,
    _claim: BufferClaim,
}

impl AsRef<[u8]> for ClaimedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn answers_hold_the_buffer_budget_until_their_last_bytes_drop() {
        let budget = Arc::new(BufferBudget::default());
        let pieces = |n: usize| {
            let parts: VecDeque<Bytes> =
                (0..n).map(|_| Bytes::from(vec![7u8; 600 * 1024])).collect();
            UpstreamResponse::local(200, parts)
        };
        // Two pieces of 600 KiB: a mapped buffer past 1 MiB, counted while held.
        let body = pieces(2)
            .collect_within(usize::MAX, Some((&budget, 4 << 20)))
            .await
            .unwrap();
        assert_eq!(body.len(), 1200 * 1024);
        assert!(body.iter().all(|b| *b == 7));
        assert_eq!(budget.used(), body.len());
        let clone = body.clone();
        drop(body);
        assert_eq!(budget.used(), clone.len(), "a clone still holds it");
        drop(clone);
        assert_eq!(budget.used(), 0);
        // Past the budget: refused with a 503, and nothing stays counted.
        let held = pieces(6)
            .collect_within(usize::MAX, Some((&budget, 4 << 20)))
            .await
            .unwrap();
        let e = pieces(6)
            .collect_within(usize::MAX, Some((&budget, 4 << 20)))
            .await
            .unwrap_err();
        assert_eq!(e.status, 503);
        assert_eq!(budget.used(), held.len());
        drop(held);
        assert_eq!(budget.used(), 0);
        // A declared length past the limit is refused before reading.
        let mut r = pieces(1);
        r.headers.insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from_static("999999999"),
        );
        assert!(r.collect_within(1000, None).await.is_err());
    }

    #[test]
    fn host_header_is_set_for_plain_http_with_the_port_when_not_80() {
        let host = |u: &str| host_header(&u.parse::<Uri>().unwrap());
        assert_eq!(
            host("http://127.0.0.1:18001/v1").unwrap(),
            "127.0.0.1:18001"
        );
        assert_eq!(
            host("http://api.example.com/v1").unwrap(),
            "api.example.com"
        );
        assert_eq!(
            host("http://api.example.com:80/v1").unwrap(),
            "api.example.com"
        );
        assert_eq!(host("http://[::1]:8080/v1").unwrap(), "[::1]:8080");
        // https may be HTTP/2 (`:authority`): hyper decides.
        assert_eq!(host("https://api.example.com:8443/v1"), None);
    }
}
