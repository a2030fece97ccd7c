//! Telemetry beyond Prometheus, configured the LiteLLM way (`callbacks`, `success_callback`,
//! `failure_callback` and the sinks' own variables): OpenTelemetry traces and log sinks. The
//! request path asks [`Telemetry::observe`] what the core should keep, and hands the finished
//! request to [`Telemetry::record`], which queues one shared record per sink; everything else
//! (the standard payload, spans, serialization, sending, retries) happens on the sinks' tasks.

pub mod alerts;
mod langfuse;
mod otel;
mod pipeline;
pub mod record;
pub mod redact;
mod s3;
mod sinks;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use llmux::{Observe, TraceContext};
use llmux_config::{Config, EnvSource};

pub use otel::{OtlpProtocol, OtlpSettings, Signal};
pub use pipeline::{ExportError, ExportFuture, Exporter, SinkCounters};
pub use record::{Caller, Finished, RequestSpan, StandardLoggingPayload};

use pipeline::Pipeline;

/// One configured sink: its queue and which requests it is told about.
struct Sink {
    pipeline: Arc<Pipeline>,
    on_success: bool,
    on_failure: bool,
}

/// The variables the sinks read (a change of any of them restarts the sinks on reload).
const VARIABLES: &[&str] = &[
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_LOGS_EXPORTER",
    "LITELLM_OTEL_INTEGRATION_ENABLE_EVENTS",
    "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
    "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT",
    "LANGFUSE_HOST",
    "LANGFUSE_PUBLIC_KEY",
    "LANGFUSE_SECRET_KEY",
    "DD_API_KEY",
    "DD_SITE",
    "DD_BASE_URL",
    "DD_ENV",
    "DD_SERVICE",
    "DD_VERSION",
    "HOSTNAME",
    "GENERIC_LOGGER_ENDPOINT",
    "GENERIC_LOGGER_HEADERS",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "LLMUX_JSONL_LOG_PATH",
];

/// Whether the `otel` callback also exports a log event per request: LiteLLM's
/// `LITELLM_OTEL_INTEGRATION_ENABLE_EVENTS=true`, or the standard `OTEL_LOGS_EXPORTER=otlp`
/// (its default, `none` here: a second export per request is a cost to opt into).
fn otel_logs_on(var: &dyn Fn(&str) -> Option<String>) -> Result<bool, String> {
    let events = var("LITELLM_OTEL_INTEGRATION_ENABLE_EVENTS")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let exporter = match var("OTEL_LOGS_EXPORTER").as_deref().map(str::trim) {
        None | Some("") => false,
        Some(v) if v.eq_ignore_ascii_case("otlp") => true,
        Some(v) if v.eq_ignore_ascii_case("none") => return Ok(false),
        Some(other) => {
            return Err(format!(
                "OTEL_LOGS_EXPORTER `{other}` is not supported (use otlp or none)"
            ))
        }
    };
    Ok(events || exporter)
}

/// Everything the traces and sinks are built from; a reload that changes it restarts them.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    callbacks: Vec<llmux_config::Callback>,
    turn_off_message_logging: bool,
    mask_pii_in_logs: bool,
    queue_size: usize,
    s3_callback_params: Vec<(String, String)>,
    jsonl_log_path: Option<String>,
    variables: Vec<Option<String>>,
}

impl Settings {
    pub fn of(config: &Config, env: &dyn EnvSource) -> Settings {
        Settings {
            callbacks: config.callbacks.clone(),
            turn_off_message_logging: config.turn_off_message_logging,
            mask_pii_in_logs: config.mask_pii_in_logs,
            queue_size: config.telemetry_queue_size,
            s3_callback_params: config.s3_callback_params.clone(),
            jsonl_log_path: config.jsonl_log_path.clone(),
            variables: VARIABLES.iter().map(|v| config.env_var(env, v)).collect(),
        }
    }
}

/// The process's tracer and log sinks.
pub struct Telemetry {
    settings: Settings,
    sinks: Vec<Sink>,
    /// Requests get a trace (a span per request and per attempt, `traceparent` upstream).
    tracing: bool,
    /// Which traces are exported (`OTEL_TRACES_SAMPLER`).
    sampler: otel::Sampler,
    /// `turn_off_message_logging` is not set: prompts and answers may be logged.
    message_logging: bool,
    mask_pii: bool,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field(
                "sinks",
                &self
                    .sinks
                    .iter()
                    .map(|s| s.pipeline.name)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A sink's state, for `/metrics` and readiness.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkStatus {
    pub name: &'static str,
    pub queued: usize,
    pub exported: u64,
    pub dropped: u64,
    pub failed: u64,
    pub errors: u64,
    pub healthy: bool,
    pub last_error: Option<String>,
}

impl Telemetry {
    /// The sinks `config` names, started on the current runtime; `None` when it names none
    /// (Prometheus is served by the HTTP crate). A sink that cannot be set up is an error.
    pub fn start(config: &Config, env: &dyn EnvSource) -> Result<Option<Arc<Telemetry>>, String> {
        let var = |name: &str| config.env_var(env, name);
        let mut sinks = Vec::new();
        let mut traces = false;
        for callback in &config.callbacks {
            let (name, exporter): (&'static str, Box<dyn Exporter>) = match callback.name.as_str() {
                "otel" => {
                    let settings = OtlpSettings::for_signal(&var, Signal::Traces)?;
                    tracing::info!(
                        endpoint = %settings.endpoint,
                        protocol = ?settings.protocol,
                        "OpenTelemetry traces on"
                    );
                    traces = true;
                    if otel_logs_on(&var)? {
                        let logs = OtlpSettings::for_signal(&var, Signal::Logs)?;
                        tracing::info!(endpoint = %logs.endpoint, "OpenTelemetry log events on");
                        sinks.push(Sink {
                            pipeline: Pipeline::start(
                                "otel_logs",
                                Box::new(otel::OtelExporter::new(&logs, Signal::Logs)?),
                                config.telemetry_queue_size,
                            ),
                            on_success: callback.on_success,
                            on_failure: callback.on_failure,
                        });
                    }
                    (
                        "otel",
                        Box::new(otel::OtelExporter::new(&settings, Signal::Traces)?),
                    )
                }
                "langfuse" => ("langfuse", Box::new(langfuse::Langfuse::new(&var)?)),
                "datadog" => ("datadog", Box::new(sinks::Datadog::new(&var)?)),
                "generic_api" => ("generic_api", Box::new(sinks::GenericApi::new(&var)?)),
                "s3" => (
                    "s3",
                    Box::new(s3::S3::new(&config.s3_callback_params, &var)?),
                ),
                "jsonl" => {
                    let path = config
                        .jsonl_log_path
                        .clone()
                        .or_else(|| var("LLMUX_JSONL_LOG_PATH"))
                        .ok_or("callback `jsonl` needs llmux_settings.jsonl_log_path")?;
                    ("jsonl", Box::new(sinks::JsonLines::open(&path)?))
                }
                // Prometheus is the HTTP crate's; the rest were warned about at load.
                _ => continue,
            };
            sinks.push(Sink {
                pipeline: Pipeline::start(name, exporter, config.telemetry_queue_size),
                on_success: callback.on_success,
                on_failure: callback.on_failure,
            });
        }
        if sinks.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(Telemetry {
            settings: Settings::of(config, env),
            sinks,
            tracing: traces,
            sampler: otel::Sampler::from_env(&var)?,
            message_logging: !config.turn_off_message_logging,
            mask_pii: config.mask_pii_in_logs,
        })))
    }

    /// What these sinks were built from.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether prompts and answers of a request may be logged: not when the operator turned
    /// message logging off, nor when the caller's key or team did (neither can turn it back on
    /// against the operator).
    pub fn message_logging(&self, turn_off_override: Option<bool>) -> bool {
        self.message_logging && turn_off_override != Some(true)
    }

    /// What the core should keep about a request, and the request's span (continuing the
    /// client's `traceparent` when it sent a valid one).
    pub fn observe(
        &self,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
        message_logging: bool,
    ) -> (Observe, Option<RequestSpan>) {
        let span = self.tracing.then(|| {
            let continued = traceparent.and_then(TraceContext::parse_traceparent);
            match continued {
                Some((trace_id, parent, sampled)) => RequestSpan {
                    trace_id,
                    span_id: llmux::new_span_id(),
                    parent: Some(parent),
                    sampled: self.sampler.continued(trace_id, sampled),
                },
                None => {
                    let trace_id = llmux::new_trace_id();
                    RequestSpan {
                        trace_id,
                        span_id: llmux::new_span_id(),
                        parent: None,
                        sampled: self.sampler.new_trace(trace_id),
                    }
                }
            }
        });
        let trace = span.map(|s| TraceContext {
            trace_id: s.trace_id,
            span_id: s.span_id,
            sampled: s.sampled,
            // Passed on only with the trace it belongs to.
            tracestate: s
                .parent
                .and(tracestate)
                .filter(|t| t.len() <= 512)
                .map(str::to_owned),
        });
        // A trace the client does not sample, with nothing but traces configured: nothing is
        // exported, so no body is kept (the context still goes upstream).
        let exported = self.records(span);
        (
            Observe {
                trace,
                content: message_logging && exported,
            },
            span,
        )
    }

    /// Whether a request with this span is recorded at all: not an unsampled trace when traces
    /// are the only sink (its record would be built, queued and skipped).
    pub fn records(&self, span: Option<RequestSpan>) -> bool {
        span.is_none_or(|s| s.sampled) || self.sinks.len() > usize::from(self.tracing)
    }

    /// Fill in the per-request settings of `finished` and queue it for every sink that wants it.
    pub fn record(&self, mut finished: Finished) {
        finished.mask_pii = self.mask_pii;
        let finished = Arc::new(finished);
        let success = finished.succeeded();
        for sink in &self.sinks {
            if (success && sink.on_success) || (!success && sink.on_failure) {
                sink.pipeline.push(Arc::clone(&finished));
            }
        }
    }

    /// Every sink's counts.
    pub fn status(&self) -> Vec<SinkStatus> {
        self.sinks
            .iter()
            .map(|s| {
                let c = &s.pipeline.counters;
                SinkStatus {
                    name: s.pipeline.name,
                    queued: s.pipeline.queued(),
                    exported: c.exported.load(Ordering::Relaxed),
                    dropped: c.dropped.load(Ordering::Relaxed),
                    failed: c.failed.load(Ordering::Relaxed),
                    errors: c.errors.load(Ordering::Relaxed),
                    healthy: c.healthy.load(Ordering::Relaxed),
                    last_error: c.last_error.lock().ok().and_then(|e| e.clone()),
                }
            })
            .collect()
    }

    /// Send everything queued now (tests, and before a scrape of sink counts).
    pub async fn flush(&self, timeout: Duration) {
        for sink in &self.sinks {
            sink.pipeline.flush(timeout).await;
        }
    }

    /// Send what is queued and close every sink (graceful shutdown), waiting at most `timeout`
    /// per sink.
    pub async fn shutdown(&self, timeout: Duration) {
        for sink in &self.sinks {
            sink.pipeline.close(timeout).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::otel_logs_on;

    #[test]
    fn log_events_are_opted_into() {
        let on = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            otel_logs_on(&|name| {
                pairs
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            })
        };
        assert_eq!(on(&[]), Ok(false));
        assert_eq!(
            on(&[("LITELLM_OTEL_INTEGRATION_ENABLE_EVENTS", "True")]),
            Ok(true)
        );
        assert_eq!(
            on(&[("LITELLM_OTEL_INTEGRATION_ENABLE_EVENTS", "false")]),
            Ok(false)
        );
        assert_eq!(on(&[("OTEL_LOGS_EXPORTER", "otlp")]), Ok(true));
        assert_eq!(
            on(&[
                ("OTEL_LOGS_EXPORTER", "none"),
                ("LITELLM_OTEL_INTEGRATION_ENABLE_EVENTS", "true")
            ]),
            Ok(false),
            "the standard switch turns them off"
        );
        assert!(on(&[("OTEL_LOGS_EXPORTER", "console")]).is_err());
    }
}
