//! OpenTelemetry over OTLP (HTTP/protobuf, HTTP/JSON or gRPC). Traces: a SERVER span per request
//! and a CLIENT span per attempt (retries and fallbacks each visible), with the GenAI semantic
//! conventions' attributes. Logs (LiteLLM's `LITELLM_OTEL_INTEGRATION_ENABLE_EVENTS`): one
//! `gen_ai.client.inference.operation.details` event per request, in the request's trace. Both
//! are built as OTLP's own messages (`opentelemetry-proto`, the official definitions) from the
//! finished request's record, with the ids the request path already handed out (the upstream's
//! `traceparent` names its attempt's span), so nothing of OpenTelemetry runs on the request path.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;

use crate::pipeline::{ExportError, ExportFuture, Exporter};
use crate::record::{truncated, Finished};
use llmux::{Operation, Outcome};

/// Where and how spans are sent, from the standard variables and LiteLLM's.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSettings {
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub headers: Vec<(String, String)>,
    pub service_name: String,
    pub timeout: Duration,
}

/// What is exported: each has its own variables (`OTEL_EXPORTER_OTLP_TRACES_*`,
/// `OTEL_EXPORTER_OTLP_LOGS_*`) and HTTP path, and shares the general ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Logs,
}

impl Signal {
    fn variable(self, suffix: &str) -> String {
        match self {
            Signal::Traces => format!("OTEL_EXPORTER_OTLP_TRACES_{suffix}"),
            Signal::Logs => format!("OTEL_EXPORTER_OTLP_LOGS_{suffix}"),
        }
    }

    fn path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Logs => "/v1/logs",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

impl OtlpSettings {
    /// Where traces go: [`OtlpSettings::for_signal`] for traces.
    pub fn from_env(var: &dyn Fn(&str) -> Option<String>) -> Result<OtlpSettings, String> {
        Self::for_signal(var, Signal::Traces)
    }

    /// Read `OTEL_EXPORTER_OTLP_[<SIGNAL>_]ENDPOINT`, `_PROTOCOL`, `_HEADERS`, `_TIMEOUT` and
    /// `OTEL_SERVICE_NAME`, then LiteLLM's `OTEL_EXPORTER`, `OTEL_ENDPOINT` and `OTEL_HEADERS`
    /// where the standard ones are unset. Defaults: HTTP/protobuf to `localhost:4318`.
    pub fn for_signal(
        var: &dyn Fn(&str) -> Option<String>,
        signal: Signal,
    ) -> Result<OtlpSettings, String> {
        let first = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| var(n).filter(|v| !v.trim().is_empty()))
        };
        let own = |suffix: &str| signal.variable(suffix);
        let protocol = match first(&[
            &own("PROTOCOL"),
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER",
        ])
        .as_deref()
        .map(str::trim)
        {
            None | Some("http/protobuf") | Some("otlp_http") | Some("http") => {
                OtlpProtocol::HttpProtobuf
            }
            Some("grpc") | Some("otlp_grpc") => OtlpProtocol::Grpc,
            Some("http/json") => OtlpProtocol::HttpJson,
            Some(other) => {
                return Err(format!(
                    "OTLP protocol `{other}` is not supported (use grpc, http/protobuf or \
                     http/json; LiteLLM's otlp_http or otlp_grpc)"
                ))
            }
        };
        let http = protocol != OtlpProtocol::Grpc;
        let endpoint = if let Some(url) = first(&[&own("ENDPOINT")]) {
            url
        } else if let Some(base) = first(&["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_ENDPOINT"]) {
            // The base URL gets the signal's path over HTTP (a LiteLLM `OTEL_ENDPOINT` may
            // already end with the traces path: logs go beside it).
            let base = base.trim().trim_end_matches('/');
            let base = base.strip_suffix(Signal::Traces.path()).unwrap_or(base);
            if http {
                format!("{base}{}", signal.path())
            } else {
                base.to_owned()
            }
        } else if http {
            format!("http://localhost:4318{}", signal.path())
        } else {
            "http://localhost:4317".to_owned()
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(format!(
                "OTLP endpoint `{endpoint}` must start with http:// or https://"
            ));
        }
        let headers = first(&[
            &own("HEADERS"),
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_HEADERS",
        ])
        .map(|h| parse_headers(&h))
        .transpose()?
        .unwrap_or_default();
        let timeout =
            match first(&[&own("TIMEOUT"), "OTEL_EXPORTER_OTLP_TIMEOUT"]) {
                Some(ms) => Duration::from_millis(ms.trim().parse::<u64>().map_err(|_| {
                    format!("OTEL_EXPORTER_OTLP_TIMEOUT `{ms}` is not milliseconds")
                })?),
                None => Duration::from_secs(10),
            };
        Ok(OtlpSettings {
            endpoint,
            protocol,
            headers,
            service_name: first(&["OTEL_SERVICE_NAME"]).unwrap_or_else(|| "llmux".to_owned()),
            timeout,
        })
    }
}

/// Which traces are exported: OpenTelemetry's `OTEL_TRACES_SAMPLER` (`always_on`, `always_off`,
/// `traceidratio`, and the `parentbased_` forms, the default being `parentbased_always_on`) with
/// `OTEL_TRACES_SAMPLER_ARG` as the ratio. At high volume a ratio keeps tracing's cost in
/// proportion: an unsampled request keeps no body and exports nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    /// Follow the client's sampled flag when it sent a `traceparent`.
    parent_based: bool,
    /// The share of the traces llmux starts (or, not parent-based, of every trace) exported.
    ratio: f64,
}

impl Sampler {
    pub fn from_env(var: &dyn Fn(&str) -> Option<String>) -> Result<Sampler, String> {
        let name = var("OTEL_TRACES_SAMPLER").unwrap_or_else(|| "parentbased_always_on".into());
        let arg = || -> Result<f64, String> {
            let ratio = var("OTEL_TRACES_SAMPLER_ARG")
                .map(|a| a.trim().parse::<f64>())
                .transpose()
                .map_err(|_| "OTEL_TRACES_SAMPLER_ARG must be a number from 0 to 1".to_owned())?
                .unwrap_or(1.0);
            if (0.0..=1.0).contains(&ratio) {
                Ok(ratio)
            } else {
                Err("OTEL_TRACES_SAMPLER_ARG must be a number from 0 to 1".to_owned())
            }
        };
        let (parent_based, ratio) = match name.trim() {
            "always_on" => (false, 1.0),
            "always_off" => (false, 0.0),
            "traceidratio" => (false, arg()?),
            "parentbased_always_on" => (true, 1.0),
            "parentbased_always_off" => (true, 0.0),
            "parentbased_traceidratio" => (true, arg()?),
            other => return Err(format!("OTEL_TRACES_SAMPLER `{other}` is not supported")),
        };
        Ok(Sampler {
            parent_based,
            ratio,
        })
    }

    /// Whether a trace llmux starts is exported (decided by its id, as every
    /// `traceidratio` sampler does, so instances agree).
    pub fn new_trace(&self, trace_id: u128) -> bool {
        self.by_id(trace_id)
    }

    /// Whether a client's trace is exported.
    pub fn continued(&self, trace_id: u128, client_sampled: bool) -> bool {
        if self.parent_based {
            client_sampled
        } else {
            self.by_id(trace_id)
        }
    }

    fn by_id(&self, trace_id: u128) -> bool {
        if self.ratio >= 1.0 {
            return true;
        }
        // The low 64 bits of a random trace id, as a fraction of their range.
        let low = trace_id as u64;
        (low as f64) < self.ratio * (u64::MAX as f64)
    }
}

/// `key=value,key2=value2`, values percent-encoded (the OTLP exporter's format, which LiteLLM's
/// `OTEL_HEADERS` shares).
pub(crate) fn parse_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').ok_or_else(|| {
                "OTLP headers must be name=value pairs separated by commas".to_owned()
            })?;
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .map_err(|_| format!("OTLP header `{}` is not UTF-8", name.trim()))?;
            Ok((name.trim().to_owned(), value.into_owned()))
        })
        .collect()
}

/// How spans leave: OTLP over HTTP (protobuf or JSON) or gRPC.
enum Transport {
    Http(Http),
    Grpc(Box<Grpc>),
}

/// The HTTP transport: one URL per signal, protobuf or JSON bodies.
struct Http {
    client: reqwest::Client,
    url: String,
    headers: Vec<(String, String)>,
    json: bool,
}

/// The gRPC transport's channel and what goes with each call.
struct Grpc {
    channel: tonic::transport::Channel,
    metadata: tonic::metadata::MetadataMap,
    timeout: Duration,
}

/// Sends finished requests' spans (or log events) to an OTLP receiver. They are built as the
/// protocol's own messages (`opentelemetry-proto`) straight from the record: going through the
/// SDK's `SpanData` and `opentelemetry-otlp`'s conversion cost about 13k more instructions per
/// traced request (of about 80k; bench/BENCHMARKS.md).
pub(crate) struct OtelExporter {
    signal: Signal,
    transport: Transport,
    resource: Resource,
    scope: InstrumentationScope,
}

impl OtelExporter {
    pub(crate) fn new(settings: &OtlpSettings, signal: Signal) -> Result<OtelExporter, String> {
        let transport = match settings.protocol {
            OtlpProtocol::Grpc => {
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (name, value) in &settings.headers {
                    let name = tonic::metadata::MetadataKey::from_bytes(
                        name.to_ascii_lowercase().as_bytes(),
                    )
                    .map_err(|_| format!("OTLP header name `{name}` is not valid for gRPC"))?;
                    let value = value.parse().map_err(|_| {
                        format!("OTLP header `{name}` has a value gRPC cannot carry")
                    })?;
                    metadata.insert(name, value);
                }
                let mut endpoint =
                    tonic::transport::Endpoint::from_shared(settings.endpoint.clone())
                        .map_err(|e| format!("OTLP endpoint `{}`: {e}", settings.endpoint))?
                        .timeout(settings.timeout)
                        .connect_timeout(settings.timeout);
                if settings.endpoint.starts_with("https://") {
                    endpoint = endpoint
                        .tls_config(tonic::transport::ClientTlsConfig::new().with_webpki_roots())
                        .map_err(|e| format!("OTLP endpoint TLS: {e}"))?;
                }
                Transport::Grpc(Box::new(Grpc {
                    channel: endpoint.connect_lazy(),
                    metadata,
                    timeout: settings.timeout,
                }))
            }
            OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson => Transport::Http(Http {
                client: reqwest::Client::builder()
                    .timeout(settings.timeout)
                    .build()
                    .map_err(|e| format!("cannot build the OTLP HTTP client: {e}"))?,
                url: settings.endpoint.clone(),
                headers: settings.headers.clone(),
                json: settings.protocol == OtlpProtocol::HttpJson,
            }),
        };
        Ok(OtelExporter {
            signal,
            transport,
            resource: Resource {
                attributes: vec![kv("service.name", text(settings.service_name.clone()))],
                dropped_attributes_count: 0,
                entity_refs: Vec::new(),
            },
            scope: InstrumentationScope {
                name: "llmux".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                attributes: Vec::new(),
                dropped_attributes_count: 0,
            },
        })
    }

    /// One export call of spans.
    async fn send_spans(&self, spans: Vec<Span>) -> Result<(), ExportError> {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(self.scope.clone()),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        match &self.transport {
            Transport::Http(http) => http.post(&request).await,
            Transport::Grpc(grpc) => TraceServiceClient::new(grpc.channel.clone())
                .export(grpc.call(request))
                .await
                .map(drop)
                .map_err(grpc_error),
        }
    }

    /// One export call of log records.
    async fn send_logs(&self, log_records: Vec<LogRecord>) -> Result<(), ExportError> {
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(self.resource.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(self.scope.clone()),
                    log_records,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        match &self.transport {
            Transport::Http(http) => http.post(&request).await,
            Transport::Grpc(grpc) => LogsServiceClient::new(grpc.channel.clone())
                .export(grpc.call(request))
                .await
                .map(drop)
                .map_err(grpc_error),
        }
    }
}

impl Http {
    /// An export request, as protobuf or JSON.
    async fn post<M: Message + serde::Serialize>(&self, request: &M) -> Result<(), ExportError> {
        let Http {
            client,
            url,
            headers,
            json,
        } = self;
        let (body, content_type) = if *json {
            let body = serde_json::to_vec(request)
                .map_err(|e| ExportError::permanent(format!("OTLP JSON: {e}")))?;
            (body, "application/json")
        } else {
            (request.encode_to_vec(), "application/x-protobuf")
        };
        let mut post = client
            .post(url)
            .header("content-type", content_type)
            .body(body);
        for (name, value) in headers {
            post = post.header(name, value);
        }
        crate::sinks::send("OTLP", post).await.map(drop)
    }
}

impl Grpc {
    /// A call carrying the configured headers and deadline.
    fn call<M>(&self, message: M) -> tonic::Request<M> {
        let mut call = tonic::Request::new(message);
        *call.metadata_mut() = self.metadata.clone();
        call.set_timeout(self.timeout);
        call
    }
}

/// What the receiver refused as malformed, unauthorized or unknown would be refused again.
fn grpc_error(status: tonic::Status) -> ExportError {
    let message = format!("OTLP gRPC: {} {}", status.code(), status.message());
    match status.code() {
        tonic::Code::InvalidArgument
        | tonic::Code::PermissionDenied
        | tonic::Code::Unauthenticated
        | tonic::Code::Unimplemented => ExportError::permanent(message),
        _ => ExportError::retryable(message),
    }
}

/// Spans per export call are cut below this many bytes of attributes (OTLP receivers refuse
/// requests past 4 MiB by default).
const MAX_EXPORT_BYTES: usize = 2 * 1024 * 1024;

impl Exporter for OtelExporter {
    fn export<'a>(&'a self, batch: &'a [Arc<Finished>]) -> ExportFuture<'a> {
        Box::pin(async move {
            match self.signal {
                Signal::Traces => {
                    let spans = batch.iter().flat_map(|f| spans(f));
                    let sizes = |s: &Span| 256 + s.name.len() + attributes_bytes(&s.attributes);
                    in_chunks(spans, sizes, |chunk| self.send_spans(chunk)).await
                }
                Signal::Logs => {
                    let records = batch.iter().map(|f| log_record(f));
                    let sizes = |r: &LogRecord| 256 + attributes_bytes(&r.attributes);
                    in_chunks(records, sizes, |chunk| self.send_logs(chunk)).await
                }
            }
        })
    }
}

/// Send `items` in export calls of at most about `MAX_EXPORT_BYTES` each; the first error is
/// the result, after every chunk was tried.
async fn in_chunks<T, F, Fut>(
    items: impl Iterator<Item = T>,
    size: impl Fn(&T) -> usize,
    send: F,
) -> Result<(), ExportError>
where
    F: Fn(Vec<T>) -> Fut,
    Fut: std::future::Future<Output = Result<(), ExportError>>,
{
    let mut result = Ok(());
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for item in items {
        let item_bytes = size(&item);
        if bytes + item_bytes > MAX_EXPORT_BYTES && !chunk.is_empty() {
            result = result.and(send(std::mem::take(&mut chunk)).await);
            bytes = 0;
        }
        bytes += item_bytes;
        chunk.push(item);
    }
    if !chunk.is_empty() {
        result = result.and(send(chunk).await);
    }
    result
}

/// About how many bytes attributes take on the wire.
fn attributes_bytes(attributes: &[KeyValue]) -> usize {
    let value = |v: &Option<AnyValue>| match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.len(),
        Some(any_value::Value::ArrayValue(a)) => a.values.len() * 16,
        _ => 8,
    };
    attributes
        .iter()
        .map(|kv| kv.key.len() + value(&kv.value) + 8)
        .sum::<usize>()
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn text(value: impl Into<String>) -> any_value::Value {
    any_value::Value::StringValue(value.into())
}

fn int(value: i64) -> any_value::Value {
    any_value::Value::IntValue(value)
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A span's status: an error with its description, or unset.
fn status(error: Option<String>) -> Option<Status> {
    error.map(|message| Status {
        message,
        code: StatusCode::Error as i32,
    })
}

/// Span flags: sampled (W3C's flag) and whether the parent is known to be remote.
fn flags(parent_remote: Option<bool>) -> u32 {
    const SAMPLED: u32 = 0x01;
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    match parent_remote {
        None => SAMPLED,
        Some(false) => SAMPLED | HAS_IS_REMOTE,
        Some(true) => SAMPLED | HAS_IS_REMOTE | IS_REMOTE,
    }
}

/// What a request's span and its log event say about it.
struct RequestView<'a> {
    operation: &'static str,
    /// The model a client named is as long as it likes; telemetry carries 256 bytes of it.
    requested_model: std::borrow::Cow<'a, str>,
    facts: llmux::ResponseFacts,
}

impl RequestView<'_> {
    fn of(finished: &Finished) -> RequestView<'_> {
        let log = &finished.log;
        RequestView {
            operation: operation_name(log.operation),
            requested_model: truncated(&log.requested_model, 256),
            facts: log
                .detail
                .as_ref()
                .map(|d| d.response_facts())
                .unwrap_or_default(),
        }
    }

    /// The answer's model, id, finish reasons and usage (on the request and on the attempt
    /// that answered).
    fn response_attributes(
        &self,
        attributes: &mut Vec<KeyValue>,
        usage: Option<llmux::types::Usage>,
    ) {
        let facts = &self.facts;
        if let Some(model) = &facts.model {
            attributes.push(kv("gen_ai.response.model", text(model.as_str())));
        }
        if let Some(id) = &facts.id {
            attributes.push(kv("gen_ai.response.id", text(id.as_str())));
        }
        if !facts.finish_reasons.is_empty() {
            let values = facts
                .finish_reasons
                .iter()
                .map(|r| AnyValue {
                    value: Some(text(r.as_str())),
                })
                .collect();
            attributes.push(kv(
                "gen_ai.response.finish_reasons",
                any_value::Value::ArrayValue(ArrayValue { values }),
            ));
        }
        if let Some(usage) = usage {
            attributes.push(kv(
                "gen_ai.usage.input_tokens",
                int(usage.prompt_tokens as i64),
            ));
            attributes.push(kv(
                "gen_ai.usage.output_tokens",
                int(usage.completion_tokens as i64),
            ));
        }
    }

    /// The request's attributes and, when it failed, its error's description.
    fn request_attributes(&self, finished: &Finished) -> (Vec<KeyValue>, Option<String>) {
        let log = &finished.log;
        let mut attributes = vec![
            kv("gen_ai.operation.name", text(self.operation)),
            kv("gen_ai.request.model", text(self.requested_model.as_ref())),
            kv("http.request.method", text("POST")),
            kv("http.route", text(finished.route)),
            kv("url.path", text(finished.route)),
            kv("http.response.status_code", int(i64::from(log.status))),
            kv("llmux.request_id", text(log.request_id.as_str())),
            kv("llmux.stream", any_value::Value::BoolValue(log.stream)),
        ];
        if let Some(provider) = log.provider {
            attributes.push(kv("gen_ai.provider.name", text(provider_name(provider))));
        }
        self.response_attributes(&mut attributes, log.usage);
        if let Some(group) = &log.model_group {
            attributes.push(kv("llmux.model_group", text(group.as_str())));
        }
        if let Some(id) = &log.deployment_id {
            attributes.push(kv("llmux.deployment_id", text(id.as_str())));
        }
        if let Some(cost) = log.cost {
            attributes.push(kv("llmux.cost_usd", any_value::Value::DoubleValue(cost)));
        }
        if let Some(hit) = log.cache_hit {
            attributes.push(kv("llmux.cache_hit", any_value::Value::BoolValue(hit)));
        }
        if let Some(ttft) = log.time_to_first_chunk {
            attributes.push(kv(
                "llmux.time_to_first_token_s",
                any_value::Value::DoubleValue(ttft.as_secs_f64()),
            ));
        }
        let caller = &finished.caller;
        for (name, value) in [
            ("metadata.user_api_key_hash", &caller.key_hash),
            ("metadata.user_api_key_alias", &caller.key_alias),
            ("metadata.user_api_key_team_id", &caller.team_id),
            ("metadata.user_api_key_team_alias", &caller.team_alias),
            ("metadata.user_api_key_user_id", &caller.user_id),
            ("metadata.user_api_key_org_id", &caller.org_id),
            ("metadata.user_api_key_end_user_id", &caller.end_user),
        ] {
            if let Some(value) = value {
                attributes.push(kv(name, text(value.as_ref())));
            }
        }
        if finished.message_logging {
            if let Some(input) = finished.logged_input() {
                attributes.push(kv("gen_ai.input.messages", text(input.get())));
            }
            if let Some(output) = finished.logged_output() {
                attributes.push(kv("gen_ai.output.messages", text(output.get())));
            }
        }
        let error = match log.outcome {
            Outcome::Failed(kind) => {
                attributes.push(kv("error.type", text(kind.as_str())));
                Some(finished.error_message().unwrap_or_default())
            }
            Outcome::ClientDisconnected => {
                attributes.push(kv("error.type", text("client_disconnected")));
                None
            }
            Outcome::Success => None,
        };
        (attributes, error)
    }
}

/// The GenAI conventions' event for one inference, as an OTLP log record in the request's
/// trace (linked even when the trace is not sampled, as the SDKs do).
pub(crate) fn log_record(finished: &Finished) -> LogRecord {
    let view = RequestView::of(finished);
    let (mut attributes, error) = view.request_attributes(finished);
    let failed = matches!(finished.log.outcome, Outcome::Failed(_));
    let (severity, severity_text) = if failed {
        (SeverityNumber::Error, "ERROR")
    } else {
        (SeverityNumber::Info, "INFO")
    };
    if let Some(message) = &error {
        attributes.push(kv("error.message", text(message.as_str())));
    }
    let ended = nanos(finished.ended_at());
    let (trace_id, span_id, flags) = match finished.span {
        Some(span) => (
            span.trace_id.to_be_bytes().to_vec(),
            span.span_id.to_be_bytes().to_vec(),
            u32::from(span.sampled),
        ),
        None => (Vec::new(), Vec::new(), 0),
    };
    LogRecord {
        time_unix_nano: ended,
        observed_time_unix_nano: ended,
        severity_number: severity as i32,
        severity_text: severity_text.to_owned(),
        body: Some(AnyValue {
            value: Some(text(format!(
                "{} {} {}",
                view.operation, view.requested_model, finished.log.status
            ))),
        }),
        attributes,
        dropped_attributes_count: 0,
        flags,
        trace_id,
        span_id,
        event_name: LOG_EVENT_NAME.to_owned(),
    }
}

/// The GenAI conventions' name for the event describing one inference.
const LOG_EVENT_NAME: &str = "gen_ai.client.inference.operation.details";

/// The request's span and one per attempt; none for a request that is not sampled.
pub(crate) fn spans(finished: &Finished) -> Vec<Span> {
    let Some(ids) = finished.span.filter(|s| s.sampled) else {
        return Vec::new();
    };
    let log = &finished.log;
    let trace_id = ids.trace_id.to_be_bytes().to_vec();
    let view = RequestView::of(finished);
    let operation = view.operation;
    let requested_model = &view.requested_model;
    let usage = log.usage;
    let (attributes, error) = view.request_attributes(finished);
    let mut spans = vec![Span {
        trace_id: trace_id.clone(),
        span_id: ids.span_id.to_be_bytes().to_vec(),
        trace_state: String::new(),
        parent_span_id: ids
            .parent
            .map_or_else(Vec::new, |p| p.to_be_bytes().to_vec()),
        flags: flags(ids.parent.map(|_| true)),
        name: format!("{operation} {requested_model}"),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: nanos(log.started_at),
        end_time_unix_nano: nanos(finished.ended_at()),
        attributes,
        dropped_attributes_count: 0,
        events: Vec::new(),
        dropped_events_count: 0,
        links: Vec::new(),
        dropped_links_count: 0,
        status: status(error),
    }];
    let attempts = log.detail.as_ref().map_or(&[][..], |d| &d.attempts[..]);
    let last = attempts.len().checked_sub(1);
    for (i, attempt) in attempts.iter().enumerate() {
        let mut attributes = vec![
            kv("gen_ai.operation.name", text(operation)),
            kv(
                "gen_ai.provider.name",
                text(provider_name(attempt.provider)),
            ),
            kv("gen_ai.request.model", text(attempt.model.as_str())),
            kv("llmux.deployment_id", text(attempt.deployment_id.as_str())),
            kv("llmux.model_group", text(attempt.model_group.as_str())),
            kv("llmux.attempt", int(i as i64 + 1)),
        ];
        if attempt.status > 0 {
            attributes.push(kv(
                "http.response.status_code",
                int(i64::from(attempt.status)),
            ));
        }
        let error = match &attempt.error {
            Some((kind, message)) => {
                attributes.push(kv("error.type", text(kind.as_str())));
                Some(finished.logged_error(kind.as_str(), message))
            }
            None => {
                if Some(i) == last {
                    view.response_attributes(&mut attributes, usage);
                }
                None
            }
        };
        spans.push(Span {
            trace_id: trace_id.clone(),
            span_id: attempt.span_id.to_be_bytes().to_vec(),
            trace_state: String::new(),
            parent_span_id: ids.span_id.to_be_bytes().to_vec(),
            flags: flags(Some(false)),
            name: format!("{operation} {}", attempt.model),
            kind: SpanKind::Client as i32,
            start_time_unix_nano: nanos(attempt.started_at),
            end_time_unix_nano: nanos(attempt.started_at + attempt.duration),
            attributes,
            dropped_attributes_count: 0,
            events: Vec::new(),
            dropped_events_count: 0,
            links: Vec::new(),
            dropped_links_count: 0,
            status: status(error),
        });
    }
    spans
}

/// `gen_ai.operation.name`.
fn operation_name(op: Operation) -> &'static str {
    match op {
        Operation::Chat => "chat",
        Operation::Completions => "text_completion",
        Operation::Embeddings => "embeddings",
        Operation::Rerank => "rerank",
    }
}

/// `gen_ai.provider.name`: the convention's well-known names where llmux's differ.
pub(crate) fn provider_name(provider: &str) -> &str {
    match provider {
        "bedrock" => "aws.bedrock",
        "azure" | "azure_ai" => "azure.ai.openai",
        "vertex_ai" => "gcp.vertex_ai",
        "gemini" => "gcp.gemini",
        "mistral" => "mistral_ai",
        "xai" => "x_ai",
        "watsonx" => "ibm.watsonx.ai",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<OtlpSettings, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        OtlpSettings::from_env(&|name| vars.get(name).cloned())
    }

    #[test]
    fn standard_variables_come_first_and_http_gets_the_signal_path() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b,x-team=t1"),
            ("OTEL_ENDPOINT", "http://ignored:1"),
            ("OTEL_SERVICE_NAME", "gateway"),
        ])
        .unwrap();
        assert_eq!(s.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(s.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(
            s.headers,
            vec![
                ("api-key".to_owned(), "a b".to_owned()),
                ("x-team".to_owned(), "t1".to_owned())
            ]
        );
        assert_eq!(s.service_name, "gateway");
    }

    #[test]
    fn litellm_variables_work_alone() {
        let s = settings(&[
            ("OTEL_EXPORTER", "otlp_grpc"),
            ("OTEL_ENDPOINT", "https://api.example.com:8443"),
            ("OTEL_HEADERS", "authorization=Bearer%20k"),
        ])
        .unwrap();
        assert_eq!(s.protocol, OtlpProtocol::Grpc);
        assert_eq!(s.endpoint, "https://api.example.com:8443");
        assert_eq!(s.headers[0].1, "Bearer k");
        let s = settings(&[
            ("OTEL_EXPORTER", "otlp_http"),
            ("OTEL_ENDPOINT", "https://api.example.com/v1/traces"),
        ])
        .unwrap();
        assert_eq!(s.endpoint, "https://api.example.com/v1/traces");
        assert_eq!(s.service_name, "llmux");
    }

    #[test]
    fn logs_go_beside_the_traces_unless_told_otherwise() {
        let vars = |vars: &[(&str, &str)]| -> HashMap<String, String> {
            vars.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let logs = |v: &HashMap<String, String>| {
            OtlpSettings::for_signal(&|name| v.get(name).cloned(), Signal::Logs).unwrap()
        };
        let litellm = vars(&[("OTEL_ENDPOINT", "https://api.example.com/v1/traces")]);
        assert_eq!(logs(&litellm).endpoint, "https://api.example.com/v1/logs");
        let standard = vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/json"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces-only:1/v1/traces",
            ),
        ]);
        assert_eq!(logs(&standard).endpoint, "http://collector:4318/v1/logs");
        assert_eq!(logs(&standard).protocol, OtlpProtocol::HttpJson);
        let own = vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://logs:9/ingest"),
        ]);
        assert_eq!(logs(&own).endpoint, "http://logs:9/ingest");
        assert_eq!(logs(&vars(&[])).endpoint, "http://localhost:4318/v1/logs");
    }

    #[test]
    fn defaults_and_refusals() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.endpoint, "http://localhost:4318/v1/traces");
        let s = settings(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap();
        assert_eq!(s.endpoint, "http://localhost:4317");
        assert!(settings(&[("OTEL_EXPORTER", "console")]).is_err());
        assert!(settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]).is_err());
        assert!(settings(&[("OTEL_EXPORTER_OTLP_HEADERS", "novalue")]).is_err());
    }

    #[test]
    fn samplers_follow_the_otel_variables() {
        let sampler = |vars: &[(&str, &str)]| {
            let vars: HashMap<String, String> = vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            Sampler::from_env(&|name| vars.get(name).cloned())
        };
        let default = sampler(&[]).unwrap();
        assert!(default.new_trace(7) && !default.continued(7, false));
        let tenth = sampler(&[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
        ])
        .unwrap();
        let kept = (0..10_000u64)
            .filter(|i| tenth.new_trace(u128::from(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))))
            .count();
        assert!((800..1200).contains(&kept), "{kept} of 10,000");
        assert!(
            tenth.continued(1, true),
            "a sampled client trace is followed"
        );
        let off = sampler(&[("OTEL_TRACES_SAMPLER", "always_off")]).unwrap();
        assert!(!off.new_trace(1) && !off.continued(1, true));
        assert!(sampler(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2")
        ])
        .is_err());
        assert!(sampler(&[("OTEL_TRACES_SAMPLER", "jaeger_remote")]).is_err());
    }

    #[test]
    fn provider_names_follow_the_conventions() {
        assert_eq!(provider_name("bedrock"), "aws.bedrock");
        assert_eq!(provider_name("openai"), "openai");
        assert_eq!(provider_name("vertex_ai"), "gcp.vertex_ai");
    }
}
