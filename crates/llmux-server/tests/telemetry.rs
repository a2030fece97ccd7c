//! OpenTelemetry traces, received by an OTLP receiver built on the protocol's official protobuf
//! definitions (`opentelemetry-proto`), over HTTP/protobuf and gRPC: a span per request and per
//! attempt with the GenAI attributes, the client's `traceparent` continued and passed upstream,
//! message logging off leaving no prompt anywhere, and a dead receiver costing requests nothing.
//! The log signal too: one GenAI event per request, in the request's trace.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{start_governed, Db, Harness};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, SeverityNumber};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span};
use prost::Message;
use serde_json::{json, Value};

/// What an OTLP receiver got: each span with its resource's `service.name`, and the headers
/// (or gRPC metadata) of each export call.
#[derive(Clone, Default)]
struct Received {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    headers: Arc<Mutex<Vec<Headers>>>,
    /// Log records, with their resource's `service.name`.
    logs: Arc<Mutex<Vec<(String, LogRecord)>>>,
}

/// The `service.name` of a resource.
fn service_name(resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>) -> String {
    resource
        .iter()
        .flat_map(|r| &r.attributes)
        .find(|a| a.key == "service.name")
        .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// One export call's headers (or gRPC metadata).
type Headers = Vec<(String, String)>;

impl Received {
    fn take(&self, request: ExportTraceServiceRequest, headers: Vec<(String, String)>) {
        self.headers.lock().unwrap().push(headers);
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.resource_spans {
            let service = service_name(resource_spans.resource.as_ref());
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
    }

    fn take_logs(&self, request: ExportLogsServiceRequest) {
        let mut logs = self.logs.lock().unwrap();
        for resource_logs in request.resource_logs {
            let service = service_name(resource_logs.resource.as_ref());
            for scope in resource_logs.scope_logs {
                for record in scope.log_records {
                    logs.push((service.clone(), record));
                }
            }
        }
    }

    /// Wait until `count` log records arrived.
    async fn log_records(&self, count: usize) -> Vec<LogRecord> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let logs: Vec<LogRecord> = self
                .logs
                .lock()
                .unwrap()
                .iter()
                .map(|(_, r)| r.clone())
                .collect();
            if logs.len() >= count {
                return logs;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} log records arrived",
                logs.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until `count` spans of trace `trace_id` arrived (sorted by start time).
    async fn trace(&self, trace_id: &[u8], count: usize) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut spans: Vec<Span> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, s)| s.trace_id == trace_id)
                .map(|(_, s)| s.clone())
                .collect();
            if spans.len() >= count {
                spans.sort_by_key(|s| (s.start_time_unix_nano, s.kind != SpanKind::Server as i32));
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} spans arrived",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn services(&self) -> Vec<String> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .map(|(s, _)| s.clone())
            .collect()
    }
}

#[tonic::async_trait]
impl LogsService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.take_logs(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.to_string(), v.to_str().ok()?.to_owned()))
                }
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        self.take(request.into_inner(), headers);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// An OTLP/HTTP receiver (`POST /v1/traces`, protobuf): its base URL.
async fn http_receiver() -> (String, Received) {
    let received = Received::default();
    let state = received.clone();
    let logs = received.clone();
    let app = axum::Router::new()
        .route(
            "/v1/logs",
            axum::routing::post(move |body: axum::body::Bytes| {
                let logs = logs.clone();
                async move {
                    logs.take_logs(ExportLogsServiceRequest::decode(body).unwrap());
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportLogsServiceResponse {
                            partial_success: None,
                        }
                        .encode_to_vec(),
                    )
                }
            }),
        )
        .route(
            "/v1/traces",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let state = state.clone();
                    async move {
                        // OTLP/HTTP in protobuf, or in OTLP's JSON encoding.
                        let json = headers
                            .get("content-type")
                            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
                        let request = if json {
                            serde_json::from_slice::<ExportTraceServiceRequest>(&body).unwrap()
                        } else {
                            ExportTraceServiceRequest::decode(body).unwrap()
                        };
                        let headers = headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                            .collect();
                        state.take(request, headers);
                        (
                            [("content-type", "application/x-protobuf")],
                            ExportTraceServiceResponse {
                                partial_success: None,
                            }
                            .encode_to_vec(),
                        )
                    }
                },
            ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), received)
}

/// An OTLP/gRPC receiver: its URL.
async fn grpc_receiver() -> (String, Received) {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(received.clone());
    let logs = LogsServiceServer::new(received.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .add_service(logs)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    (format!("http://{addr}"), received)
}

/// What carries attributes: spans and log records.
trait Attributed {
    fn attributes(&self) -> &[KeyValue];
}

impl Attributed for Span {
    fn attributes(&self) -> &[KeyValue] {
        &self.attributes
    }
}

impl Attributed for LogRecord {
    fn attributes(&self) -> &[KeyValue] {
        &self.attributes
    }
}

fn attr<'a>(span: &'a impl Attributed, key: &str) -> Option<&'a AnyValue> {
    span.attributes()
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
}

fn text(span: &impl Attributed, key: &str) -> Option<String> {
    match attr(span, key)? {
        AnyValue::StringValue(s) => Some(s.clone()),
        other => panic!("{key} is not a string: {other:?}"),
    }
}

fn int(span: &impl Attributed, key: &str) -> Option<i64> {
    match attr(span, key)? {
        AnyValue::IntValue(i) => Some(*i),
        other => panic!("{key} is not an integer: {other:?}"),
    }
}

fn strings(span: &Span, key: &str) -> Vec<String> {
    match attr(span, key) {
        Some(AnyValue::ArrayValue(a)) => a
            .values
            .iter()
            .filter_map(|v| match v.value.as_ref()? {
                AnyValue::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        None => Vec::new(),
        Some(other) => panic!("{key} is not an array: {other:?}"),
    }
}

/// Every string anywhere in the spans: attribute values and status messages.
fn all_text(spans: &[Span]) -> String {
    spans
        .iter()
        .flat_map(|s| {
            let mut texts: Vec<String> = s
                .attributes
                .iter()
                .map(|a| format!("{:?}", a.value))
                .collect();
            texts.push(s.name.clone());
            texts.push(
                s.status
                    .as_ref()
                    .map(|st| st.message.clone())
                    .unwrap_or_default(),
            );
            texts
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// Two deployments of `gpt`, tried in order: the first always answers 500.
fn config(env: &str, extra: &str) -> String {
    format!(
        r#"
model_list:
  - model_name: gpt
    litellm_params: {{model: openai/mock-gpt, api_base: "{{mock}}", api_key: k, order: 1, extra_headers: {{x-mock-status: "500"}}}}
  - model_name: gpt
    litellm_params: {{model: openai/mock-gpt, api_base: "{{mock}}", api_key: k, order: 2}}
  - model_name: broken
    litellm_params: {{model: openai/mock-gpt, api_base: "{{mock}}", api_key: k, extra_headers: {{x-mock-status: "400"}}}}
router_settings: {{num_retries: 1, allowed_fails: 1000}}
litellm_settings:
  callbacks: ["otel"]
{extra}
environment_variables:
{env}
"#
    )
}

/// Send what telemetry holds now.
async fn flush(h: &Harness) {
    h.telemetry
        .as_ref()
        .unwrap()
        .flush(Duration::from_secs(5))
        .await;
}

/// The request's own span among a trace's.
fn server_span(spans: &[Span]) -> &Span {
    spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap()
}

async fn chat(h: &Harness, key: &str, body: Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = h
        .http
        .post(format!("{}/v1/chat/completions", h.url))
        .bearer_auth(key)
        .json(&body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_request_and_each_attempt_are_spans_in_the_clients_trace_over_http() {
    let (receiver, received) = http_receiver().await;
    let env = format!(
        "  OTEL_EXPORTER_OTLP_ENDPOINT: \"{receiver}\"\n  OTEL_EXPORTER_OTLP_PROTOCOL: http/protobuf\n  \
         OTEL_SERVICE_NAME: llmux-test\n  OTEL_EXPORTER_OTLP_HEADERS: \"x-tenant=t%201\"\n"
    );
    let h = start_governed(
        &config(&env, "llmux_settings: {mask_pii_in_logs: true}"),
        Db::Sqlite,
    )
    .await;
    let key = h
        .new_key(json!({"key_alias": "tracer", "models": ["gpt"]}))
        .await;

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let client_span = "b7ad6b7169203331";
    let traceparent = format!("00-{trace_id}-{client_span}-01");
    let response = chat(
        &h,
        &key,
        json!({"model": "gpt", "temperature": 0.5, "messages": [{"role": "user", "content": "tell me about tracing, bob@example.com"}]}),
        &[("traceparent", &traceparent), ("tracestate", "vendor=x")],
    )
    .await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    flush(&h).await;

    let spans = received.trace(&unhex(trace_id), 3).await;
    assert_eq!(spans.len(), 3, "one request span and two attempts");
    let request = server_span(&spans);
    assert_eq!(
        hex(&request.parent_span_id),
        client_span,
        "continues the client's span"
    );
    assert_eq!(request.name, "chat gpt");
    assert_eq!(
        text(request, "gen_ai.operation.name").as_deref(),
        Some("chat")
    );
    assert_eq!(
        text(request, "gen_ai.provider.name").as_deref(),
        Some("openai")
    );
    assert_eq!(
        text(request, "gen_ai.request.model").as_deref(),
        Some("gpt")
    );
    assert_eq!(
        text(request, "gen_ai.response.model").as_deref(),
        answer["model"].as_str()
    );
    assert_eq!(
        text(request, "gen_ai.response.id").as_deref(),
        answer["id"].as_str()
    );
    assert_eq!(strings(request, "gen_ai.response.finish_reasons"), ["stop"]);
    assert_eq!(
        int(request, "gen_ai.usage.input_tokens"),
        answer["usage"]["prompt_tokens"].as_i64()
    );
    assert_eq!(
        int(request, "gen_ai.usage.output_tokens"),
        answer["usage"]["completion_tokens"].as_i64()
    );
    assert_eq!(int(request, "http.response.status_code"), Some(200));
    assert_eq!(
        text(request, "http.request.method").as_deref(),
        Some("POST")
    );
    assert_eq!(
        text(request, "metadata.user_api_key_alias").as_deref(),
        Some("tracer")
    );
    // The prompt is in the span, masked.
    let input = text(request, "gen_ai.input.messages").unwrap();
    assert!(input.contains("tell me about tracing, [EMAIL]"), "{input}");
    assert!(!input.contains("bob@example.com"));
    assert_ne!(
        request.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );

    // The attempts: children of the request's span, the failed one first.
    let attempts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    assert_eq!(attempts.len(), 2);
    for attempt in &attempts {
        assert_eq!(attempt.parent_span_id, request.span_id);
        assert_eq!(attempt.name, "chat mock-gpt");
        assert!(attempt.start_time_unix_nano >= request.start_time_unix_nano);
        assert!(attempt.end_time_unix_nano <= request.end_time_unix_nano);
    }
    let (failed, served) = (attempts[0], attempts[1]);
    assert_eq!(
        failed.status.as_ref().unwrap().code,
        StatusCode::Error as i32
    );
    assert_eq!(
        text(failed, "error.type").as_deref(),
        Some("upstream_error")
    );
    assert_eq!(int(failed, "http.response.status_code"), Some(500));
    assert_ne!(
        served.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    assert_eq!(
        text(served, "gen_ai.response.id").as_deref(),
        answer["id"].as_str()
    );

    // Each upstream call carried its attempt's span, in the client's trace.
    let sent: Vec<(String, String)> = h
        .mock
        .recorded
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .map(|r| {
            let header = |name: &str| {
                r.headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            (header("traceparent"), header("tracestate"))
        })
        .collect();
    assert_eq!(sent.len(), 2);
    for ((traceparent, tracestate), attempt) in sent.iter().zip(&attempts) {
        assert_eq!(
            traceparent,
            &format!("00-{trace_id}-{}-01", hex(&attempt.span_id))
        );
        assert_eq!(tracestate, "vendor=x");
    }
    assert!(received.services().iter().all(|s| s == "llmux-test"));
    assert!(received
        .headers
        .lock()
        .unwrap()
        .iter()
        .all(|h| h.contains(&("x-tenant".to_owned(), "t 1".to_owned()))));

    // A stream without a traceparent: a trace of its own, with the stream's finish reason.
    let response = chat(
        &h,
        &key,
        json!({"model": "gpt", "stream": true, "stream_options": {"include_usage": true},
               "messages": [{"role": "user", "content": "stream please"}]}),
        &[],
    )
    .await;
    assert_eq!(response.status(), 200);
    let _ = response.text().await.unwrap();
    flush(&h).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let stream_span = loop {
        let found = received
            .spans
            .lock()
            .unwrap()
            .iter()
            .map(|(_, s)| s.clone())
            .find(|s| s.kind == SpanKind::Server as i32 && s.trace_id != unhex(trace_id));
        if let Some(span) = found {
            break span;
        }
        assert!(Instant::now() < deadline, "the stream's span never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        stream_span.parent_span_id.is_empty(),
        "a new trace has no parent"
    );
    assert_eq!(
        strings(&stream_span, "gen_ai.response.finish_reasons"),
        ["stop"]
    );
    assert!(int(&stream_span, "gen_ai.usage.output_tokens").unwrap() > 0);
    assert!(text(&stream_span, "gen_ai.response.id").is_some());

    // Refused before any upstream is asked (a model the key may not use): a span of its own,
    // in the client's trace, with the refusal.
    let refused_trace = "4af7651916cd43dd8448eb211c80319c";
    let response = chat(
        &h,
        &key,
        json!({"model": "broken", "messages": [{"role": "user", "content": "hi"}]}),
        &[(
            "traceparent",
            &format!("00-{refused_trace}-{client_span}-01"),
        )],
    )
    .await;
    let refused_status = i64::from(response.status().as_u16());
    assert!(
        refused_status == 401 || refused_status == 403,
        "{refused_status}"
    );
    flush(&h).await;
    let refused = received.trace(&unhex(refused_trace), 1).await;
    assert_eq!(refused.len(), 1, "no attempt was made");
    assert_eq!(
        refused[0].status.as_ref().unwrap().code,
        StatusCode::Error as i32
    );
    assert_eq!(
        int(&refused[0], "http.response.status_code"),
        Some(refused_status)
    );
    assert_eq!(hex(&refused[0].parent_span_id), client_span);

    // A client that does not sample its trace: the context goes upstream, no span is exported.
    let unsampled_trace = "5af7651916cd43dd8448eb211c80319c";
    let before = h.mock.recorded.lock().unwrap().len();
    let response = chat(
        &h,
        &key,
        json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}),
        &[(
            "traceparent",
            &format!("00-{unsampled_trace}-{client_span}-00"),
        )],
    )
    .await;
    assert_eq!(response.status(), 200);
    let forwarded: Vec<String> = h
        .mock
        .recorded
        .lock()
        .unwrap()
        .iter()
        .skip(before)
        .filter_map(|r| {
            r.headers
                .iter()
                .find(|(k, _)| k == "traceparent")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert!(!forwarded.is_empty());
    assert!(forwarded
        .iter()
        .all(|t| t.starts_with(&format!("00-{unsampled_trace}-")) && t.ends_with("-00")));
    // A traceparent that is not W3C's: a trace of llmux's own.
    let response = chat(
        &h,
        &key,
        json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}),
        &[("traceparent", "00-not-a-trace-01")],
    )
    .await;
    assert_eq!(response.status(), 200);
    flush(&h).await;
    assert!(
        !received
            .spans
            .lock()
            .unwrap()
            .iter()
            .any(|(_, s)| s.trace_id == unhex(unsampled_trace)),
        "an unsampled trace was exported"
    );

    // A key that turns message logging off for itself: no prompt in its spans.
    let quiet = h
        .new_key(json!({"models": ["gpt"], "metadata": {"turn_off_message_logging": true}}))
        .await;
    let quiet_trace = "1af7651916cd43dd8448eb211c80319c";
    let response = chat(
        &h,
        &quiet,
        json!({"model": "gpt", "messages": [{"role": "user", "content": "quiet-prompt-7731"}]}),
        &[("traceparent", &format!("00-{quiet_trace}-{client_span}-01"))],
    )
    .await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    flush(&h).await;
    let spans = received.trace(&unhex(quiet_trace), 3).await;
    let everything = all_text(&spans);
    assert!(!everything.contains("quiet-prompt-7731"), "{everything}");
    let said = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!everything.contains(said), "{everything}");
}

#[tokio::test]
async fn grpc_export_with_message_logging_off_keeps_prompts_out_of_every_span() {
    let (receiver, received) = grpc_receiver().await;
    let env = format!(
        "  OTEL_EXPORTER: otlp_grpc\n  OTEL_ENDPOINT: \"{receiver}\"\n  OTEL_HEADERS: \"authorization=Bearer%20tok\"\n  \
         LITELLM_OTEL_INTEGRATION_ENABLE_EVENTS: \"true\"\n"
    );
    let h = start_governed(
        &config(&env, "  turn_off_message_logging: true"),
        Db::Sqlite,
    )
    .await;
    let key = h.new_key(json!({"models": ["gpt", "broken"]})).await;
    let trace_id = "2af7651916cd43dd8448eb211c80319c";
    let response = chat(
        &h,
        &key,
        json!({"model": "gpt", "messages": [{"role": "user", "content": "private-prompt-5521"}]}),
        &[("traceparent", &format!("00-{trace_id}-b7ad6b7169203331-01"))],
    )
    .await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    // A request the upstream refuses: the span says so, without the prompt.
    let failed_trace = "3af7651916cd43dd8448eb211c80319c";
    let response = chat(
        &h,
        &key,
        json!({"model": "broken", "messages": [{"role": "user", "content": "private-prompt-5521"}],
               "mock_options": {"error_body": "{\"error\": {\"message\": \"cannot answer private-prompt-5521\", \"type\": \"invalid_request_error\"}}"}}),
        &[("traceparent", &format!("00-{failed_trace}-b7ad6b7169203331-01"))],
    )
    .await;
    assert_eq!(response.status(), 400);
    flush(&h).await;

    let spans = received.trace(&unhex(trace_id), 3).await;
    let failed = received.trace(&unhex(failed_trace), 2).await;
    let request = server_span(&failed);
    assert_eq!(
        request.status.as_ref().unwrap().code,
        StatusCode::Error as i32
    );
    assert_eq!(
        text(request, "error.type").as_deref(),
        Some("invalid_request")
    );
    assert_eq!(int(request, "http.response.status_code"), Some(400));

    // The log events (over gRPC too) hold no prompt either.
    let logs = received.log_records(2).await;
    assert_eq!(logs.len(), 2);
    let logged = format!("{logs:?}");
    assert!(!logged.contains("private-prompt-5521"), "{logged}");
    assert!(logs
        .iter()
        .all(|r| attr(r, "gen_ai.input.messages").is_none()));

    let everything = all_text(&spans) + &all_text(&failed);
    assert!(!everything.contains("private-prompt-5521"), "{everything}");
    let said = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!everything.contains(said), "{everything}");
    assert!(received
        .headers
        .lock()
        .unwrap()
        .iter()
        .all(|h| h.contains(&("authorization".to_owned(), "Bearer tok".to_owned()))));
    assert!(received.services().iter().all(|s| s == "llmux"));
}

#[tokio::test]
async fn otlp_json_over_http_carries_the_same_spans() {
    let (receiver, received) = http_receiver().await;
    let env = format!(
        "  OTEL_EXPORTER_OTLP_ENDPOINT: \"{receiver}\"\n  OTEL_EXPORTER_OTLP_PROTOCOL: http/json\n"
    );
    let h = start_governed(&config(&env, ""), Db::Sqlite).await;
    let trace_id = "6af7651916cd43dd8448eb211c80319c";
    let response = chat(
        &h,
        common::MASTER,
        json!({"model": "gpt", "messages": [{"role": "user", "content": "json please"}]}),
        &[("traceparent", &format!("00-{trace_id}-b7ad6b7169203331-01"))],
    )
    .await;
    assert_eq!(response.status(), 200);
    flush(&h).await;
    let spans = received.trace(&unhex(trace_id), 3).await;
    let request = server_span(&spans);
    assert_eq!(hex(&request.parent_span_id), "b7ad6b7169203331");
    assert_eq!(
        text(request, "gen_ai.request.model").as_deref(),
        Some("gpt")
    );
    assert!(spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .all(|s| s.parent_span_id == request.span_id));

    // A client that gives up before the answer: its request still has a span, as nginx's 499.
    let left_trace = "7af7651916cd43dd8448eb211c80319c";
    let gave_up = h
        .http
        .post(format!("{}/v1/chat/completions", h.url))
        .bearer_auth(common::MASTER)
        .header(
            "traceparent",
            format!("00-{left_trace}-b7ad6b7169203331-01"),
        )
        .timeout(Duration::from_millis(300))
        .json(
            &json!({"model": "gpt", "messages": [{"role": "user", "content": "slow"}],
                      "mock_options": {"latency_ms": 3000}}),
        )
        .send()
        .await;
    assert!(gave_up.is_err(), "the client was meant to time out");
    tokio::time::sleep(Duration::from_millis(200)).await;
    flush(&h).await;
    let left = received.trace(&unhex(left_trace), 1).await;
    let request = server_span(&left);
    assert_eq!(
        text(request, "error.type").as_deref(),
        Some("client_disconnected")
    );
    assert_eq!(int(request, "http.response.status_code"), Some(499));
}

#[tokio::test]
async fn a_receiver_that_never_answers_costs_requests_nothing() {
    // Accepts connections and never answers: every export hangs until its timeout.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let env = format!(
        "  OTEL_EXPORTER_OTLP_ENDPOINT: \"http://{addr}\"\n  OTEL_EXPORTER_OTLP_TIMEOUT: \"60000\"\n"
    );
    let h = start_governed(
        &config(&env, "llmux_settings: {telemetry_queue_size: 5}"),
        Db::Sqlite,
    )
    .await;
    let key = h.new_key(json!({"models": ["gpt"]})).await;
    let started = Instant::now();
    for _ in 0..60 {
        let sent = Instant::now();
        let response = chat(
            &h,
            &key,
            json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}),
            &[],
        )
        .await;
        assert_eq!(response.status(), 200);
        assert!(
            sent.elapsed() < Duration::from_secs(2),
            "a request waited on the sink: {:?}",
            sent.elapsed()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    // At most one batch (five) hangs in the exporter and five wait in the queue; the rest
    // were dropped, and counted.
    let status = &h.telemetry.as_ref().unwrap().status()[0];
    assert_eq!(status.name, "otel");
    assert_eq!(status.exported, 0);
    assert!(status.queued <= 5, "{status:?}");
    let not_sent = status.dropped + status.queued as u64;
    assert!((55..=60).contains(&not_sent), "{status:?}");
    // The drops are on /metrics and readiness shows the sink failing to send.
    let metrics = h
        .get_as(common::MASTER, "/metrics")
        .await
        .text()
        .await
        .unwrap();
    let dropped = metrics
        .lines()
        .find(|l| {
            l.starts_with("llmux_log_sink_records_total{") && l.contains("outcome=\"dropped\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no sink drop counter in\n{metrics}"));
    assert_eq!(dropped as u64, status.dropped);
    let ready = h.get_json(common::MASTER, "/health/readiness").await;
    assert_eq!(ready["log_sinks"][0]["name"], "otel");
    assert_eq!(ready["log_sinks"][0]["dropped"], status.dropped);
    assert_eq!(ready["db"], "connected");
}

/// With LiteLLM's `LITELLM_OTEL_INTEGRATION_ENABLE_EVENTS`, each request is also one GenAI
/// event on the log signal (`/v1/logs`), in the request's trace and span, at INFO or ERROR.
#[tokio::test]
async fn log_events_are_exported_in_each_requests_trace() {
    let (receiver, received) = http_receiver().await;
    let env = format!(
        "  OTEL_EXPORTER_OTLP_ENDPOINT: \"{receiver}\"\n  LITELLM_OTEL_INTEGRATION_ENABLE_EVENTS: \"true\"\n  \
         OTEL_SERVICE_NAME: events\n"
    );
    let h = start_governed(&config(&env, ""), Db::Sqlite).await;
    let key = h.new_key(json!({"models": ["gpt", "broken"]})).await;
    let trace_id = "4af7651916cd43dd8448eb211c80319c";
    let response = chat(
        &h,
        &key,
        json!({"model": "gpt", "messages": [{"role": "user", "content": "events please"}]}),
        &[("traceparent", &format!("00-{trace_id}-b7ad6b7169203331-01"))],
    )
    .await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    let response = chat(
        &h,
        &key,
        json!({"model": "broken", "messages": [{"role": "user", "content": "fail please"}]}),
        &[],
    )
    .await;
    assert_eq!(response.status(), 400);
    flush(&h).await;

    let logs = received.log_records(2).await;
    assert_eq!(logs.len(), 2, "one event per request");
    assert!(received
        .logs
        .lock()
        .unwrap()
        .iter()
        .all(|(service, _)| service == "events"));
    let ok = logs
        .iter()
        .find(|r| r.trace_id == unhex(trace_id))
        .expect("the event is in the client's trace");
    assert_eq!(ok.event_name, "gen_ai.client.inference.operation.details");
    assert_eq!(ok.severity_number, SeverityNumber::Info as i32);
    // The event names the request's own span, which the traces signal exported.
    let spans = received.trace(&unhex(trace_id), 3).await;
    let request = server_span(&spans);
    assert_eq!(ok.span_id, request.span_id);
    assert_eq!(ok.flags & 1, 1, "sampled");
    assert_eq!(text(ok, "gen_ai.request.model").as_deref(), Some("gpt"));
    assert_eq!(
        int(ok, "gen_ai.usage.output_tokens"),
        answer["usage"]["completion_tokens"].as_i64()
    );
    assert!(text(ok, "gen_ai.input.messages")
        .unwrap()
        .contains("events please"));
    let said = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text(ok, "gen_ai.output.messages").unwrap().contains(said));

    let failed = logs.iter().find(|r| r.trace_id != unhex(trace_id)).unwrap();
    assert_eq!(failed.severity_number, SeverityNumber::Error as i32);
    assert_eq!(failed.severity_text, "ERROR");
    assert_eq!(
        text(failed, "error.type").as_deref(),
        Some("invalid_request")
    );
    assert_eq!(int(failed, "http.response.status_code"), Some(400));
    assert_eq!(failed.trace_id.len(), 16, "a trace of its own");

    // Telemetry status names the log sink beside the traces.
    let names: Vec<&str> = h
        .telemetry
        .as_ref()
        .unwrap()
        .status()
        .iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["otel_logs", "otel"]);
}

/// A stream that fails mid-way and is continued on another deployment: the failed attempt's span
/// ends at the failure with its error, the continuation is a span of its own that the upstream
/// got as its `traceparent`, and the request's span is a success.
#[tokio::test]
async fn a_recovered_stream_spans_each_attempt() {
    let (receiver, received) = http_receiver().await;
    let yaml = format!(
        r#"
model_list:
  - model_name: g
    litellm_params: {{model: openai/first, api_base: "{{mock}}", api_key: k, order: 1, extra_headers: {{x-mock-cut-after: "3", x-mock-chunks: "10"}}}}
  - model_name: g
    litellm_params: {{model: openai/second, api_base: "{{mock}}", api_key: k, order: 2}}
router_settings: {{stream_recovery: continue, num_retries: 0}}
litellm_settings:
  callbacks: ["otel"]
environment_variables:
  OTEL_EXPORTER_OTLP_ENDPOINT: "{receiver}"
"#
    );
    let h = start_governed(&yaml, Db::Sqlite).await;
    let key = h.new_key(json!({})).await;
    let trace_id = "5af7651916cd43dd8448eb211c80319c";
    let response = chat(
        &h,
        &key,
        json!({"model": "g", "stream": true, "messages": [{"role": "user", "content": "go on"}]}),
        &[("traceparent", &format!("00-{trace_id}-b7ad6b7169203331-01"))],
    )
    .await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(body.contains("[DONE]"), "{body}");
    flush(&h).await;

    let spans = received.trace(&unhex(trace_id), 3).await;
    assert_eq!(spans.len(), 3, "the request and two attempts");
    let request = server_span(&spans);
    assert_ne!(
        request.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    let attempts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    let first = attempts
        .iter()
        .find(|s| text(**s, "gen_ai.request.model").as_deref() == Some("first"))
        .unwrap();
    let second = attempts
        .iter()
        .find(|s| text(**s, "gen_ai.request.model").as_deref() == Some("second"))
        .unwrap();
    assert_eq!(
        first.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32),
        "the cut attempt failed"
    );
    assert!(text(*first, "error.type").is_some());
    assert_ne!(
        second.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    assert_eq!(first.parent_span_id, request.span_id);
    assert_eq!(second.parent_span_id, request.span_id);
    assert!(first.end_time_unix_nano <= second.start_time_unix_nano + 1_000_000);
    assert!(second.end_time_unix_nano >= second.start_time_unix_nano);
    // Each upstream got its own attempt's span as its parent.
    let parents: Vec<String> = h
        .recorded()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .filter_map(|r| {
            r.headers
                .iter()
                .find(|(k, _)| k == "traceparent")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert_eq!(parents.len(), 2, "{parents:?}");
    assert!(parents[1].contains(&hex(&second.span_id)), "{parents:?}");
    assert!(parents[0].contains(&hex(&first.span_id)), "{parents:?}");
}
