//! One attempt against one deployment: translate and send, then either read the whole (JSON)
//! response or peek a stream until its first content event.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use llmux_providers::mock::{self, MockOutput};
use llmux_providers::{
    openai_compat, DecodedEvent, OpenAiStreamDecoder, Operation, RequestContext, StreamDecoder,
    StreamFraming,
};
use llmux_router::{Backend, Deployment};
use llmux_types::{ErrorKind, GatewayError, RawObject, Usage};

use crate::relay::{Relay, RelayItem};
use crate::response::{GatewayResponse, ResponseBody, ResponseMeta};
use crate::upstream::{BufferBudget, HttpClient, UpstreamResponse};

/// Upper bound on a buffered (non-streaming) upstream response: large embedding batches fit.
const MAX_UPSTREAM_BODY: usize = 256 * 1024 * 1024;
/// Upper bound on an upstream error body we read.
const MAX_ERROR_BODY: usize = 1024 * 1024;
/// Keep-alive events tolerated before the first content event is treated as the start.
const MAX_PEEKED_KEEPALIVES: usize = 256;

/// One attempt against one deployment.
pub(crate) struct Attempt {
    pub(crate) request_id: String,
    pub(crate) received_at: Instant,
    pub(crate) model_group: String,
    pub(crate) deployment: Arc<Deployment>,
    pub(crate) sent_at: Instant,
    /// The upstream was asked for a usage chunk the client did not request.
    pub(crate) hide_usage_chunk: bool,
    /// The client spoke the provider's own dialect (`NATIVE_ANTHROPIC`): its answer is kept as
    /// the provider sent it, beside the translation.
    pub(crate) native: bool,
    /// `traceparent` (and the client's `tracestate`) for the upstream: this attempt's span.
    pub(crate) trace_headers: Option<(http::HeaderValue, Option<http::HeaderValue>)>,
}

static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
static TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

impl Attempt {
    /// Translate and send; resolves with the response headers (the body is read later).
    pub(crate) async fn send(
        &mut self,
        http: &HttpClient,
        op: Operation,
        request: &RawObject<'_>,
        ctx: RequestContext<'_>,
    ) -> Result<UpstreamResponse, GatewayError> {
        match &self.deployment.backend {
            Backend::Http(provider) => {
                let mut upstream = provider.build_request(op, request, ctx)?;
                if let Some((parent, state)) = &self.trace_headers {
                    upstream.headers.insert(&TRACEPARENT, parent.clone());
                    if let Some(state) = state {
                        upstream.headers.insert(&TRACESTATE, state.clone());
                    }
                }
                self.hide_usage_chunk = upstream.hide_usage_chunk;
                self.sent_at = Instant::now();
                http.send_request(upstream).await
            }
            Backend::Mock { model, response } => {
                self.sent_at = Instant::now();
                let model = llmux_providers::common::model_for(model, ctx.wildcard);
                Ok(
                    match mock::respond(op, request, &model, response.as_ref()) {
                        MockOutput::Json { status, body } => {
                            UpstreamResponse::local(status, VecDeque::from([body]))
                        }
                        MockOutput::Stream(events) => UpstreamResponse::local(200, events.into()),
                    },
                )
            }
        }
    }

    fn parse_error(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> GatewayError {
        match &self.deployment.backend {
            Backend::Http(provider) => provider.parse_error(status, headers, body),
            Backend::Mock { .. } => openai_compat::parse_error(status, headers, body),
        }
    }

    fn stream_decoder(&self, op: Operation) -> Box<dyn StreamDecoder> {
        let decoder = match &self.deployment.backend {
            Backend::Http(provider) if self.native => provider.stream_decoder_native(op),
            Backend::Http(provider) => provider.stream_decoder(op),
            Backend::Mock { .. } => Box::new(OpenAiStreamDecoder),
        };
        if self.hide_usage_chunk {
            Box::new(HideUsageChunk(decoder))
        } else {
            decoder
        }
    }

    async fn error_response(&self, mut response: UpstreamResponse) -> GatewayError {
        let body = response.collect(MAX_ERROR_BODY).await.unwrap_or_default();
        let error = self.parse_error(response.status, &response.headers, &body);
        tracing::info!(
            request_id = %self.request_id, deployment = %self.deployment.id, status = response.status,
            kind = %error.kind, "upstream returned an error"
        );
        error
    }

    fn meta(
        &self,
        status: u16,
        headers: HeaderMap,
        usage: Option<Usage>,
        upstream_latency: Duration,
    ) -> ResponseMeta {
        let total = self.received_at.elapsed();
        ResponseMeta {
            request_id: self.request_id.clone(),
            model_group: self.model_group.clone(),
            deployment_id: self.deployment.id.clone(),
            provider: self.deployment.provider,
            status,
            forwarded_headers: openai_compat::take_forwarded_headers(headers),
            usage,
            upstream_latency,
            overhead: total.saturating_sub(upstream_latency),
            attempted_retries: 0,
            attempted_fallbacks: 0,
            cost: None,
            native: self.native,
            cache_key: None,
            semantic_similarity: None,
        }
    }

    pub(crate) async fn unary(
        &mut self,
        http: &HttpClient,
        op: Operation,
        request: &RawObject<'_>,
        ctx: RequestContext<'_>,
        buffers: (&Arc<BufferBudget>, usize),
    ) -> Result<GatewayResponse, GatewayError> {
        let mut response = self.send(http, op, request, ctx).await?;
        if !(200..300).contains(&response.status) {
            return Err(self.error_response(response).await);
        }
        let body = response
            .collect_within(MAX_UPSTREAM_BODY, Some(buffers))
            .await?;
        let upstream_latency = self.sent_at.elapsed();
        let translated = match &self.deployment.backend {
            Backend::Http(provider) if self.native => provider.parse_response_native(op, body)?,
            Backend::Http(provider) => provider.parse_response(op, body)?,
            Backend::Mock { .. } => llmux_providers::TranslatedResponse {
                usage: openai_compat::extract_usage(&body),
                body,
            },
        };
        let meta = self.meta(
            response.status,
            std::mem::take(&mut response.headers),
            translated.usage,
            upstream_latency,
        );
        Ok(GatewayResponse {
            meta,
            body: ResponseBody::Json(translated.body),
        })
    }

    /// Read the stream until its first content event; a failure before it is an ordinary error.
    pub(crate) async fn peek(
        &self,
        op: Operation,
        mut response: UpstreamResponse,
        idle_timeout: Duration,
    ) -> Result<Peeked, GatewayError> {
        if !(200..300).contains(&response.status) {
            return Err(self.error_response(response).await);
        }
        let status = response.status;
        let headers = std::mem::take(&mut response.headers);
        let framing = match &self.deployment.backend {
            Backend::Http(provider) => provider.stream_framing(),
            Backend::Mock { .. } => StreamFraming::Sse,
        };
        let mut relay = Relay::new(response, self.stream_decoder(op), framing, idle_timeout);
        let mut initial = Vec::new();
        let mut first_usage = None;
        // Peek: nothing is committed to the client until the upstream has produced real content,
        // so a failure here is still an ordinary error response.
        let finished = loop {
            match relay.next_item().await {
                RelayItem::Event(DecodedEvent::KeepAlive(bytes)) => {
                    if !bytes.is_empty() {
                        initial.push(bytes);
                    }
                    if initial.len() >= MAX_PEEKED_KEEPALIVES {
                        break false;
                    }
                }
                RelayItem::Event(DecodedEvent::Chunk { bytes, usage }) => {
                    initial.push(bytes);
                    first_usage = usage;
                    break false;
                }
                RelayItem::Event(DecodedEvent::Done(bytes)) => {
                    initial.push(bytes);
                    break true;
                }
                RelayItem::Event(DecodedEvent::Error(mut e)) | RelayItem::Failed(mut e) => {
                    e.headers.extend(openai_compat::forwarded_headers(&headers));
                    return Err(e);
                }
                RelayItem::End => {
                    return Err(GatewayError::new(
                        ErrorKind::UpstreamError,
                        "upstream closed the stream before sending any data",
                    ));
                }
            }
        };
        let upstream_latency = self.sent_at.elapsed();
        let meta = self.meta(status, headers, None, upstream_latency);
        Ok(Peeked {
            meta,
            initial,
            first_usage,
            relay,
            finished,
        })
    }
}

/// A stream whose first content event has arrived: what to send first, and the rest to relay.
pub(crate) struct Peeked {
    pub(crate) meta: ResponseMeta,
    pub(crate) initial: Vec<Bytes>,
    pub(crate) first_usage: Option<Usage>,
    pub(crate) relay: Relay,
    pub(crate) finished: bool,
}

/// Counts the usage-only chunk (`"choices": []`) llmux asked for, without forwarding it to a
/// client that did not request usage.
struct HideUsageChunk(Box<dyn StreamDecoder>);

impl StreamDecoder for HideUsageChunk {
    fn decode(&mut self, event: Bytes) -> DecodedEvent {
        match self.0.decode(event) {
            DecodedEvent::Chunk {
                bytes,
                usage: Some(usage),
            } if memchr::memmem::find(&bytes, b"\"choices\":[]").is_some() => DecodedEvent::Chunk {
                bytes: Bytes::new(),
                usage: Some(usage),
            },
            other => other,
        }
    }
}
