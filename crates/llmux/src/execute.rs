//! One request from raw body to response: read the routing fields, route, translate, send, and
//! either return the (translated) JSON body or peek the stream's first event before committing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use llmux_providers::mock::{self, MockOutput};
use llmux_providers::{
    openai_compat, DecodedEvent, OpenAiStreamDecoder, Operation, RequestContext, StreamDecoder,
};
use llmux_router::{Backend, Deployment};
use llmux_types::{ErrorKind, GatewayError, RawObject, Usage};

use crate::log::{LogEmitter, Outcome, RequestLog};
use crate::relay::{relay_stream, Relay, RelayItem, RelayStream, StreamSummary};
use crate::upstream::{HttpClient, UpstreamResponse};
use crate::{RequestOptions, Snapshot};

/// Upper bound on a buffered (non-streaming) upstream response: large embedding batches fit.
const MAX_UPSTREAM_BODY: usize = 256 * 1024 * 1024;
/// Upper bound on an upstream error body we read.
const MAX_ERROR_BODY: usize = 1024 * 1024;
/// Keep-alive events tolerated before the first content event is treated as the start.
const MAX_PEEKED_KEEPALIVES: usize = 256;

/// What the gateway knows about a response besides its body.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    pub request_id: String,
    /// The model group that matched (e.g. `gpt-4o` or `openai/*`).
    pub model_group: String,
    pub deployment_id: String,
    pub provider: &'static str,
    /// The upstream's HTTP status (a 2xx).
    pub status: u16,
    /// Upstream headers to pass on (rate-limit state).
    pub forwarded_headers: Vec<(String, String)>,
    /// Usage of a non-streaming response (streams report theirs when they finish).
    pub usage: Option<Usage>,
    /// Time spent waiting on the upstream (to the full body, or to the first stream event).
    pub upstream_latency: Duration,
    /// Time the gateway itself added before the response could start.
    pub overhead: Duration,
}

#[derive(Debug)]
pub enum ResponseBody {
    Json(Bytes),
    Stream(RelayStream),
}

#[derive(Debug)]
pub struct GatewayResponse {
    pub meta: ResponseMeta,
    pub body: ResponseBody,
}

/// What is known about a request so far, for its log record.
#[derive(Debug, Clone)]
struct Trace {
    request_id: String,
    received_at: Instant,
    op: Operation,
    stream: bool,
    requested_model: String,
    model_group: Option<String>,
    deployment_id: Option<String>,
    provider: Option<&'static str>,
}

impl Trace {
    fn log(
        &self,
        status: u16,
        outcome: Outcome,
        usage: Option<Usage>,
        overhead: Duration,
        ttfc: Option<Duration>,
        chunks: u64,
    ) -> RequestLog {
        RequestLog {
            request_id: self.request_id.clone(),
            operation: self.op,
            stream: self.stream,
            requested_model: self.requested_model.clone(),
            model_group: self.model_group.clone(),
            deployment_id: self.deployment_id.clone(),
            provider: self.provider,
            status,
            outcome,
            usage,
            duration: self.received_at.elapsed(),
            overhead,
            time_to_first_chunk: ttfc,
            chunks,
        }
    }
}

pub(crate) async fn execute(
    logs: &LogEmitter,
    snapshot: Arc<Snapshot>,
    op: Operation,
    body: Bytes,
    options: RequestOptions,
) -> Result<GatewayResponse, GatewayError> {
    let mut trace = Trace {
        request_id: options.request_id,
        received_at: options.received_at,
        op,
        stream: false,
        requested_model: String::new(),
        model_group: None,
        deployment_id: None,
        provider: None,
    };
    let result = execute_traced(logs, snapshot, body, &mut trace).await;
    if let Err(e) = &result {
        logs.emit(trace.log(
            e.status,
            Outcome::Failed(e.kind),
            None,
            Duration::ZERO,
            None,
            0,
        ));
    }
    result
}

async fn execute_traced(
    logs: &LogEmitter,
    snapshot: Arc<Snapshot>,
    body: Bytes,
    trace: &mut Trace,
) -> Result<GatewayResponse, GatewayError> {
    let op = trace.op;
    let request = RawObject::parse(&body).map_err(|e| {
        GatewayError::invalid_request(format!(
            "We could not parse the JSON body of your request: {e}"
        ))
        .with_code("invalid_json")
    })?;
    let model = requested_model(&request)?;
    trace.requested_model.clone_from(&model);
    validate_fields(op, &request)?;
    let stream = match op {
        Operation::Embeddings => false,
        Operation::Chat | Operation::Completions => request
            .decode::<bool>("stream")
            .map_err(|_| {
                GatewayError::invalid_request("`stream` must be a boolean").with_param("stream")
            })?
            .unwrap_or(false),
    };
    trace.stream = stream;

    let router = &snapshot.router;
    let route = router
        .route(&model)
        .ok_or_else(|| model_not_found(&model))?;
    trace.model_group = Some(route.group.to_owned());
    let index = router.pick(route.candidates, op).ok_or_else(|| {
        GatewayError::invalid_request(format!("model `{model}` does not support {}", op.as_str()))
            .with_param("model")
            .with_code("unsupported_operation")
    })?;
    let deployment = Arc::clone(router.deployment(index));
    let http = &snapshot.clients[index];
    trace.deployment_id = Some(deployment.id.clone());
    trace.provider = Some(deployment.provider);
    let ctx = RequestContext {
        wildcard: route.wildcard,
        drop_params: snapshot.config.drop_params,
    };
    let total_timeout = deployment
        .timeout
        .unwrap_or(snapshot.config.request_timeout);
    let stream_timeout = deployment.stream_timeout.unwrap_or(total_timeout);
    let mut attempt = Attempt {
        request_id: trace.request_id.clone(),
        received_at: trace.received_at,
        model_group: route.group.to_owned(),
        deployment,
        sent_at: Instant::now(),
    };

    if stream {
        let response = tokio::time::timeout(stream_timeout, attempt.send(http, op, &request, ctx))
            .await
            .map_err(|_| {
                timeout_error(
                    "waiting for the upstream to start the stream",
                    stream_timeout,
                )
            })??;
        attempt
            .stream(op, response, stream_timeout, logs.clone(), trace.clone())
            .await
    } else {
        let response = tokio::time::timeout(total_timeout, attempt.unary(http, op, &request, ctx))
            .await
            .map_err(|_| timeout_error("waiting for the upstream response", total_timeout))??;
        let meta = &response.meta;
        logs.emit(trace.log(
            meta.status,
            Outcome::Success,
            meta.usage,
            meta.overhead,
            None,
            0,
        ));
        Ok(response)
    }
}

fn timeout_error(what: &str, after: Duration) -> GatewayError {
    GatewayError::new(
        ErrorKind::Timeout,
        format!("timed out after {:.1}s {what}", after.as_secs_f64()),
    )
}

fn model_not_found(model: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::NotFound,
        format!("The model `{model}` does not exist or you do not have access to it."),
    )
    .with_param("model")
    .with_code("model_not_found")
}

fn requested_model(request: &RawObject<'_>) -> Result<String, GatewayError> {
    match request.decode::<String>("model") {
        Ok(Some(model)) if !model.is_empty() => Ok(model),
        Ok(_) => Err(
            GatewayError::invalid_request("you must provide a model parameter")
                .with_param("model")
                .with_code("missing_required_parameter"),
        ),
        Err(_) => {
            Err(GatewayError::invalid_request("`model` must be a string").with_param("model"))
        }
    }
}

/// The fields each operation cannot do without; everything else is the upstream's to judge.
fn validate_fields(op: Operation, request: &RawObject<'_>) -> Result<(), GatewayError> {
    let (field, want_array) = match op {
        Operation::Chat => ("messages", true),
        Operation::Completions => ("prompt", false),
        Operation::Embeddings => ("input", false),
    };
    let missing = || {
        GatewayError::invalid_request(format!("Missing required parameter: '{field}'."))
            .with_param(field)
            .with_code("missing_required_parameter")
    };
    let value = request.get_non_null(field).ok_or_else(missing)?;
    let first = value.get().as_bytes().first().copied();
    if want_array && first != Some(b'[') {
        return Err(
            GatewayError::invalid_request(format!("`{field}` must be an array")).with_param(field),
        );
    }
    if op == Operation::Embeddings && !matches!(first, Some(b'"') | Some(b'[')) {
        return Err(GatewayError::invalid_request(
            "`input` must be a string, an array of strings, or an array of token arrays",
        )
        .with_param("input"));
    }
    if want_array
        && value
            .get()
            .trim_start_matches('[')
            .trim_start()
            .starts_with(']')
    {
        return Err(
            GatewayError::invalid_request(format!("`{field}` must not be empty"))
                .with_param(field)
                .with_code("empty_array"),
        );
    }
    Ok(())
}

/// One attempt against one deployment.
struct Attempt {
    request_id: String,
    received_at: Instant,
    model_group: String,
    deployment: Arc<Deployment>,
    sent_at: Instant,
}

impl Attempt {
    /// Translate and send; resolves with the response headers (the body is read later).
    async fn send(
        &mut self,
        http: &HttpClient,
        op: Operation,
        request: &RawObject<'_>,
        ctx: RequestContext<'_>,
    ) -> Result<UpstreamResponse, GatewayError> {
        match &self.deployment.backend {
            Backend::Http(provider) => {
                let upstream = provider.build_request(op, request, ctx)?;
                self.sent_at = Instant::now();
                http.send(&upstream.url, upstream.headers, upstream.body)
                    .await
            }
            Backend::Mock { model, response } => {
                self.sent_at = Instant::now();
                let model = match ctx.wildcard {
                    Some(w) if model.contains('*') => model.replacen('*', w, 1),
                    _ => model.clone(),
                };
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
        match &self.deployment.backend {
            Backend::Http(provider) => provider.stream_decoder(op),
            Backend::Mock { .. } => Box::new(OpenAiStreamDecoder),
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
        headers: &HeaderMap,
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
            forwarded_headers: openai_compat::forwarded_headers(headers),
            usage,
            upstream_latency,
            overhead: total.saturating_sub(upstream_latency),
        }
    }

    async fn unary(
        &mut self,
        http: &HttpClient,
        op: Operation,
        request: &RawObject<'_>,
        ctx: RequestContext<'_>,
    ) -> Result<GatewayResponse, GatewayError> {
        let mut response = self.send(http, op, request, ctx).await?;
        if !(200..300).contains(&response.status) {
            return Err(self.error_response(response).await);
        }
        let body = response.collect(MAX_UPSTREAM_BODY).await?;
        let upstream_latency = self.sent_at.elapsed();
        let translated = match &self.deployment.backend {
            Backend::Http(provider) => provider.parse_response(op, body)?,
            Backend::Mock { .. } => llmux_providers::TranslatedResponse {
                usage: openai_compat::extract_usage(&body),
                body,
            },
        };
        let meta = self.meta(
            response.status,
            &response.headers,
            translated.usage,
            upstream_latency,
        );
        Ok(GatewayResponse {
            meta,
            body: ResponseBody::Json(translated.body),
        })
    }

    async fn stream(
        self,
        op: Operation,
        response: UpstreamResponse,
        idle_timeout: Duration,
        logs: LogEmitter,
        trace: Trace,
    ) -> Result<GatewayResponse, GatewayError> {
        if !(200..300).contains(&response.status) {
            return Err(self.error_response(response).await);
        }
        let status = response.status;
        let headers = response.headers.clone();
        let mut relay = Relay::new(response, self.stream_decoder(op), idle_timeout);
        let mut initial = Vec::new();
        let mut first_usage = None;
        // Peek: nothing is committed to the client until the upstream has produced real content,
        // so a failure here is still an ordinary error response.
        let finished = loop {
            match relay.next_item().await {
                RelayItem::Event(DecodedEvent::KeepAlive(bytes)) => {
                    initial.push(bytes);
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
        let meta = self.meta(status, &headers, None, upstream_latency);
        let time_to_first_chunk = self.received_at.elapsed();
        let (status_sent, overhead) = (meta.status, meta.overhead);
        let on_finish = move |summary: StreamSummary| {
            let outcome = match (&summary.error, summary.completed) {
                (Some(e), _) => Outcome::Failed(e.kind),
                (None, true) => Outcome::Success,
                (None, false) => Outcome::ClientDisconnected,
            };
            logs.emit(trace.log(
                status_sent,
                outcome,
                summary.usage,
                overhead,
                Some(time_to_first_chunk),
                summary.chunks,
            ));
        };
        let stream = relay_stream(initial, first_usage, relay, finished, on_finish);
        Ok(GatewayResponse {
            meta,
            body: ResponseBody::Stream(stream),
        })
    }
}
