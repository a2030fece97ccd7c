//! One `RequestLog` per request, emitted when the request is over (for streams: when the stream
//! ends, fails or the client leaves). Emission is a non-blocking broadcast: sinks subscribe, the
//! request path never waits for them. The same record is the access log line (target
//! `llmux::access`, level debug), off by default like nginx's in a proxy benchmark.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use llmux_providers::Operation;
use llmux_types::{ErrorKind, GatewayError, Usage};
use tokio::sync::broadcast;

/// Records a lagging subscriber may fall behind before it loses the oldest.
const LOG_CHANNEL_CAPACITY: usize = 4096;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Failed with this kind (before or during the response).
    Failed(ErrorKind),
    /// The client went away before the stream finished.
    ClientDisconnected,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RequestLog {
    pub request_id: String,
    pub operation: Operation,
    pub stream: bool,
    /// The model the client asked for.
    pub requested_model: String,
    pub model_group: Option<String>,
    pub deployment_id: Option<String>,
    pub provider: Option<&'static str>,
    /// The status the client received.
    pub status: u16,
    pub outcome: Outcome,
    pub usage: Option<Usage>,
    pub duration: Duration,
    pub overhead: Duration,
    /// For streams: time from arrival to the first content chunk.
    pub time_to_first_chunk: Option<Duration>,
    pub chunks: u64,
    /// Times a stream was continued on another deployment after failing mid-way.
    pub recoveries: u32,
    /// The deployment's upstream model (`litellm_params.model`).
    pub model: Option<String>,
    /// USD, from usage and the price registry (0 for an unpriced model, `None` without usage).
    pub cost: Option<f64>,
    /// Wall-clock arrival (`duration` before the record was made).
    pub started_at: SystemTime,
    /// What telemetry asked the core to keep ([`crate::RequestOptions::observe`]).
    pub detail: Option<Arc<RequestDetail>>,
    /// Retries made, across every model group tried.
    pub retries: u32,
    /// The fallback groups tried after the requested group failed (`None` when none was).
    pub fallback: Option<Box<FallbackLog>>,
    /// The upstream's rate-limit state after the answer (`x-ratelimit-remaining-*`).
    pub upstream_remaining: Option<UpstreamRemaining>,
    /// The response cache was asked: `Some(true)` it answered (no upstream call; `usage` is
    /// what the cached answer saved, `cost` zero), `Some(false)` it did not.
    pub cache_hit: Option<bool>,
}

/// Where a request fell back to, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct FallbackLog {
    /// The error that ended the requested group (LiteLLM labels fallbacks with it).
    pub cause: ErrorKind,
    pub cause_status: u16,
    /// The provider that raised it (`None` when the gateway did, e.g. nothing to route to).
    pub cause_provider: Option<&'static str>,
    /// The groups tried, in order: each but the last failed; the last one's outcome is the
    /// request's.
    pub groups: Vec<String>,
}

/// What an upstream said is left of its rate limits (OpenAI-style `x-ratelimit-remaining-*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamRemaining {
    pub requests: Option<u64>,
    pub tokens: Option<u64>,
}

impl UpstreamRemaining {
    /// From the forwarded upstream headers; `None` when they say nothing.
    pub fn from_headers(headers: &[(http::HeaderName, http::HeaderValue)]) -> Option<Self> {
        let mut remaining = UpstreamRemaining::default();
        for (name, value) in headers {
            let slot = match name.as_str() {
                "x-ratelimit-remaining-requests" => &mut remaining.requests,
                "x-ratelimit-remaining-tokens" => &mut remaining.tokens,
                _ => continue,
            };
            *slot = value.to_str().ok().and_then(|v| v.trim().parse().ok());
        }
        (remaining != UpstreamRemaining::default()).then_some(remaining)
    }
}

/// What a caller asks the core to record for telemetry (traces, log sinks); off by default,
/// since every field costs the request path something.
#[derive(Debug, Clone, Default)]
pub struct Observe {
    /// The request's trace: each attempt becomes a child span and the upstream gets a
    /// `traceparent` naming it.
    pub trace: Option<TraceContext>,
    /// Keep the request body and the answer (JSON body, or a stream's delivered text) for
    /// sinks that log messages.
    pub content: bool,
}

/// W3C trace context of the request's own span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    /// The request's span: the parent of each attempt's span.
    pub span_id: u64,
    pub sampled: bool,
    /// The client's `tracestate`, passed on unchanged.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The `traceparent` header naming `span_id` in this trace.
    pub fn traceparent(&self, span_id: u64) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            span_id,
            u8::from(self.sampled)
        )
    }

    /// Parse a `traceparent` header (version 00 and the forward-compatible versions the spec
    /// allows): the trace id, the sender's span id and whether it is sampled.
    pub fn parse_traceparent(value: &str) -> Option<(u128, u64, bool)> {
        let value = value.trim();
        let mut parts = value.split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let parent = parts.next()?;
        let flags = parts.next()?;
        let hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if version.len() != 2 || !hex(version) || version == "ff" {
            return None;
        }
        // Version 00 has exactly four fields; later versions may append more.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        if trace.len() != 32 || parent.len() != 16 || flags.len() != 2 {
            return None;
        }
        if !hex(trace) || !hex(parent) || !hex(flags) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(parent, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some((trace_id, span_id, flags & 1 == 1))
    }
}

/// The wall-clock time `duration` ago: when a request that took `duration` started.
pub fn started_before(duration: Duration) -> SystemTime {
    SystemTime::now()
        .checked_sub(duration)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// A random non-zero span id.
pub fn new_span_id() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

/// A random non-zero trace id.
pub fn new_trace_id() -> u128 {
    loop {
        let id = rand::random::<u128>();
        if id != 0 {
            return id;
        }
    }
}

/// What the core kept about a request for telemetry ([`Observe`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestDetail {
    pub trace: Option<TraceContext>,
    /// Every attempt, in order (retries and fallbacks included).
    pub attempts: Vec<AttemptLog>,
    /// The failure's message, when the request failed.
    pub error: Option<String>,
    /// The body the core ran (`content` only).
    pub request_body: Option<Bytes>,
    /// A JSON answer's body; a stream's first content event (its id and model).
    pub response_body: Option<Bytes>,
    /// A stream's `finish_reason`s as they were delivered.
    pub finish_reasons: Vec<String>,
    /// What a stream delivered (`content` only; its first 32 KiB of events).
    pub delivered: Option<crate::DeliveredText>,
}

/// One attempt at one deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptLog {
    /// Its span (the `traceparent` the upstream got).
    pub span_id: u64,
    pub model_group: String,
    pub deployment_id: String,
    pub provider: &'static str,
    /// The deployment's upstream model.
    pub model: String,
    pub started_at: SystemTime,
    pub duration: Duration,
    /// The upstream's status (0 when no answer came).
    pub status: u16,
    /// Why it failed.
    pub error: Option<(ErrorKind, String)>,
}

/// The answer's identity, read from a [`RequestDetail`] (off the request path).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponseFacts {
    pub id: Option<String>,
    pub model: Option<String>,
    pub finish_reasons: Vec<String>,
}

impl RequestDetail {
    /// The answer's id, model and finish reasons: from the JSON body, or from a stream's first
    /// event and the finish reasons noted while it was delivered.
    pub fn response_facts(&self) -> ResponseFacts {
        #[derive(serde::Deserialize)]
        struct Choice {
            #[serde(default)]
            finish_reason: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            #[serde(default)]
            id: Option<String>,
            #[serde(default)]
            model: Option<String>,
            #[serde(default)]
            choices: Option<Vec<Choice>>,
        }
        let Some(body) = &self.response_body else {
            return ResponseFacts {
                finish_reasons: self.finish_reasons.clone(),
                ..Default::default()
            };
        };
        // A stream's first event: its first `data: {` line (Anthropic events a native stream
        // carries ahead of it are comment lines).
        let json: &[u8] = if body.starts_with(b"{") {
            body
        } else {
            body.split(|b| *b == b'\n')
                .find_map(|line| {
                    let data = line.strip_prefix(b"data:")?;
                    let data = data.strip_prefix(b" ").unwrap_or(data);
                    data.starts_with(b"{").then_some(data)
                })
                .unwrap_or_default()
        };
        let answer = serde_json::from_slice::<Answer>(json).ok();
        let mut finish_reasons: Vec<String> = answer
            .as_ref()
            .and_then(|a| a.choices.as_ref())
            .map(|c| c.iter().filter_map(|c| c.finish_reason.clone()).collect())
            .unwrap_or_default();
        if finish_reasons.is_empty() {
            finish_reasons.clone_from(&self.finish_reasons);
        }
        let (id, model) = answer.map_or((None, None), |a| (a.id, a.model));
        ResponseFacts {
            id,
            model,
            finish_reasons,
        }
    }

    /// The generated text a stream delivered (`None` for a JSON answer: read `response_body`).
    pub fn stream_text(&self) -> Option<String> {
        self.delivered.as_ref().map(|d| d.text().0)
    }
}

/// Told, synchronously and exactly once, that a request is over (for streams: when the stream
/// ends, fails or the client leaves). Unlike the log broadcast it cannot lag or drop, so it is
/// where spend is settled.
pub trait RequestHook: Send + Sync {
    fn finished(&self, log: &RequestLog);

    /// Whether `stream_progress` should be called as a stream is relayed (off by default, so
    /// a stream pays nothing for it).
    fn watches_stream(&self) -> bool {
        false
    }

    /// A stream has delivered about `completion_tokens` so far; an error ends it there with
    /// that error as its last event (a budget that ran out while it ran).
    fn stream_progress(&self, completion_tokens: u64) -> Result<(), GatewayError> {
        let _ = completion_tokens;
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub(crate) struct LogEmitter {
    sender: broadcast::Sender<Arc<RequestLog>>,
}

impl LogEmitter {
    pub(crate) fn new() -> Self {
        LogEmitter {
            sender: broadcast::channel(LOG_CHANNEL_CAPACITY).0,
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<RequestLog>> {
        self.sender.subscribe()
    }

    /// Whether anyone would see a record: a subscriber, or the access log
    /// (`LLMUX_LOG=info,llmux::access=debug`). Callers skip building records nobody reads.
    pub(crate) fn wanted(&self) -> bool {
        self.sender.receiver_count() > 0
            || tracing::enabled!(target: "llmux::access", tracing::Level::DEBUG)
    }

    pub(crate) fn emit(&self, log: RequestLog) {
        let failure = match log.outcome {
            Outcome::Success => None,
            Outcome::Failed(kind) => Some(kind.as_str()),
            Outcome::ClientDisconnected => Some("client_disconnected"),
        };
        tracing::debug!(
            target: "llmux::access",
            request_id = %log.request_id,
            operation = log.operation.as_str(),
            stream = log.stream,
            model = %log.requested_model,
            model_group = log.model_group.as_deref(),
            deployment = log.deployment_id.as_deref(),
            provider = log.provider,
            status = log.status,
            failure,
            prompt_tokens = log.usage.map(|u| u.prompt_tokens),
            completion_tokens = log.usage.map(|u| u.completion_tokens),
            recoveries = log.recoveries,
            duration_ms = log.duration.as_secs_f64() * 1000.0,
            overhead_ms = log.overhead.as_secs_f64() * 1000.0,
            "request finished"
        );
        if self.sender.receiver_count() > 0 {
            let _ = self.sender.send(Arc::new(log));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn upstream_remaining_reads_only_parseable_counts() {
        let h = |pairs: &[(&'static str, &'static str)]| -> Vec<_> {
            pairs
                .iter()
                .map(|(n, v)| {
                    (
                        http::HeaderName::from_static(n),
                        http::HeaderValue::from_static(v),
                    )
                })
                .collect()
        };
        assert_eq!(
            super::UpstreamRemaining::from_headers(&h(&[
                ("x-ratelimit-remaining-requests", "41"),
                ("x-ratelimit-remaining-tokens", " 9000 "),
                ("x-ratelimit-limit-tokens", "10000"),
            ])),
            Some(super::UpstreamRemaining {
                requests: Some(41),
                tokens: Some(9000)
            })
        );
        assert_eq!(
            super::UpstreamRemaining::from_headers(&h(&[("x-ratelimit-remaining-tokens", "lots")])),
            None
        );
        assert_eq!(super::UpstreamRemaining::from_headers(&[]), None);
    }

    use super::*;

    #[test]
    fn traceparent_parsing_follows_the_w3c_rules() {
        let id = "0af7651916cd43dd8448eb211c80319c";
        assert_eq!(
            TraceContext::parse_traceparent(&format!("00-{id}-b7ad6b7169203331-01")),
            Some((0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331, true))
        );
        assert_eq!(
            TraceContext::parse_traceparent(&format!("00-{id}-b7ad6b7169203331-00")),
            Some((
                0x0af7651916cd43dd8448eb211c80319c,
                0xb7ad6b7169203331,
                false
            ))
        );
        // A later version may append fields; version 00 may not.
        assert!(
            TraceContext::parse_traceparent(&format!("01-{id}-b7ad6b7169203331-01-xyz")).is_some()
        );
        for bad in [
            format!("00-{id}-b7ad6b7169203331-01-xyz"),
            format!("ff-{id}-b7ad6b7169203331-01"),
            format!("00-{}-b7ad6b7169203331-01", id.to_uppercase()),
            format!("00-{}-b7ad6b7169203331-01", "0".repeat(32)),
            format!("00-{id}-0000000000000000-01"),
            format!("00-{id}-b7ad6b716920333-01"),
            "garbage".to_owned(),
        ] {
            assert_eq!(TraceContext::parse_traceparent(&bad), None, "{bad}");
        }
        let trace = TraceContext {
            trace_id: 1,
            span_id: 2,
            sampled: true,
            tracestate: None,
        };
        assert_eq!(
            trace.traceparent(0xab),
            "00-00000000000000000000000000000001-00000000000000ab-01"
        );
    }

    #[test]
    fn response_facts_come_from_a_json_answer_or_a_streams_first_event() {
        let json = RequestDetail {
            response_body: Some(Bytes::from_static(
                br#"{"id":"c1","model":"m","choices":[{"finish_reason":"stop"},{"finish_reason":"length"}]}"#,
            )),
            ..Default::default()
        };
        let facts = json.response_facts();
        assert_eq!(facts.id.as_deref(), Some("c1"));
        assert_eq!(facts.model.as_deref(), Some("m"));
        assert_eq!(facts.finish_reasons, ["stop", "length"]);
        let stream = RequestDetail {
            response_body: Some(Bytes::from_static(
                b": llmux-anthropic {\"data: {\\\"id\\\": \\\"wrong\\\"}\"}\n\ndata: {\"id\":\"c2\",\"model\":\"m2\",\"choices\":[{\"delta\":{}}]}\n\n",
            )),
            finish_reasons: vec!["tool_calls".into()],
            ..Default::default()
        };
        let facts = stream.response_facts();
        assert_eq!(facts.id.as_deref(), Some("c2"));
        assert_eq!(facts.model.as_deref(), Some("m2"));
        assert_eq!(facts.finish_reasons, ["tool_calls"]);
    }
}
