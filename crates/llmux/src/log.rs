//! One `RequestLog` per request, emitted when the request is over (for streams: when the stream
//! ends, fails or the client leaves). Emission is a non-blocking broadcast: sinks subscribe, the
//! request path never waits for them. The same record is the access log line (target
//! `llmux::access`, level debug), off by default like nginx's in a proxy benchmark.

use std::sync::Arc;
use std::time::Duration;

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
