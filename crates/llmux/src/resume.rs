//! Mid-stream recovery's IO part: continue a chat stream that failed after its first chunk on
//! another deployment of the same model group (the splice rules are in `splice`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use llmux_providers::{Operation, RequestContext};
use llmux_router::SelectionInput;
use llmux_types::{ErrorKind, GatewayError, RawObject, Usage};
use serde_json::Value;

use crate::attempt::Attempt;
use crate::deployment::{model_not_found, no_deployment_error, timeout_error, Claim};
use crate::log::{AttemptLog, TraceContext};
use crate::relay::{Resume, Resumed};
use crate::Snapshot;

/// The attempts of a recovered stream, for its spans (kept when telemetry observes it).
#[derive(Debug, Default)]
pub(crate) struct RecoveryLog {
    /// When and why the stream's first attempt failed, after it had started the stream.
    pub first_failure: Option<(SystemTime, ErrorKind, String)>,
    /// The continuation attempts, in order; the last one's end is the stream's.
    pub attempts: Vec<AttemptLog>,
}

/// What an observed stream's recovery records, and the trace its attempts continue.
pub(crate) struct ObservedRecovery {
    pub trace: Option<TraceContext>,
    pub log: Arc<Mutex<RecoveryLog>>,
}

/// Continues a chat stream that failed after its first chunk on another deployment of the same
/// model group, with the text already delivered as a trailing assistant message.
pub(crate) struct Resumer {
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) body: Bytes,
    pub(crate) route_model: String,
    pub(crate) tags: Vec<String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) request_id: String,
    pub(crate) received_at: Instant,
    /// Deployments this stream has used; the last one is the one that just failed.
    pub(crate) used: Vec<usize>,
    /// In-flight slots of continuation deployments, held until the stream ends.
    pub(crate) claims: Vec<Claim>,
    /// Where the continuation attempts are recorded, when the request is observed.
    pub(crate) observed: Option<ObservedRecovery>,
}

/// Providers whose API continues a trailing assistant message when it is marked `prefix: true`.
const PREFIX_FLAG_PROVIDERS: &[&str] = &["mistral", "deepseek"];

/// The request with the delivered text appended as the assistant's partial answer.
fn continuation_body(
    request: &RawObject<'_>,
    delivered: &str,
    prefix_flag: bool,
) -> Result<Bytes, GatewayError> {
    let mut messages: Vec<Value> = request
        .decode("messages")
        .map_err(|e| GatewayError::internal(format!("cannot re-read messages: {e}")))?
        .unwrap_or_default();
    let mut partial = serde_json::json!({"role": "assistant", "content": delivered});
    if prefix_flag {
        partial["prefix"] = Value::Bool(true);
    }
    messages.push(partial);
    let encoded =
        serde_json::to_vec(&messages).map_err(|e| GatewayError::internal(e.to_string()))?;
    // A continuation is the translated conversation plus what was delivered: a client's own
    // Anthropic body (which lacks the delivered part) is not sent on.
    Ok(Bytes::from(
        request
            .edit()
            .set("messages", encoded)
            .remove(llmux_providers::NATIVE_ANTHROPIC)
            .render(),
    ))
}

impl Resume for Resumer {
    fn resume<'a>(
        &'a mut self,
        failure: &'a GatewayError,
        delivered: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Resumed, GatewayError>> + Send + 'a>,
    > {
        Box::pin(async move {
            let snapshot = Arc::clone(&self.snapshot);
            let router = &snapshot.router;
            let route = router
                .route(&self.route_model)
                .ok_or_else(|| model_not_found(&self.route_model))?;
            if let Some(&current) = self.used.last() {
                snapshot.deployment_failed(current, failure, route.candidates.len());
            }
            // The attempt that just failed ends here: the first one, or the last continuation.
            let failed_at = SystemTime::now();
            if let Some(mut log) = self.observed.as_ref().and_then(|o| o.log.lock().ok()) {
                let why = (failure.kind, failure.message().to_owned());
                match log.attempts.last_mut() {
                    Some(last) => {
                        last.duration = failed_at
                            .duration_since(last.started_at)
                            .unwrap_or_default();
                        last.error = Some(why);
                    }
                    None => log.first_failure = Some((failed_at, why.0, why.1)),
                }
            }
            let input = SelectionInput {
                op: Operation::Chat,
                stream: true,
                tags: &self.tags,
                prompt_tokens: None,
                exclude: &self.used,
            };
            let index = router
                .select(&route, &input)
                .map_err(|no| no_deployment_error(no, route.group, Operation::Chat, None, None))?;
            let claim = Claim {
                snapshot: Arc::clone(&snapshot),
                index,
            };
            self.used.push(index);
            let deployment = Arc::clone(router.deployment(index));
            let original =
                RawObject::parse(&self.body).map_err(|e| GatewayError::internal(e.to_string()))?;
            let body = continuation_body(
                &original,
                delivered,
                PREFIX_FLAG_PROVIDERS.contains(&deployment.provider),
            )?;
            let request =
                RawObject::parse(&body).map_err(|e| GatewayError::internal(e.to_string()))?;
            let ctx = RequestContext {
                wildcard: route.wildcard,
                drop_params: snapshot.config.drop_params,
            };
            let timeout = deployment
                .stream_timeout
                .or(self.timeout)
                .or(deployment.timeout)
                .unwrap_or(snapshot.config.request_timeout);
            // Its own span, continuing the request's trace upstream.
            let span_id = self.observed.as_ref().map(|_| crate::log::new_span_id());
            let trace_headers = self
                .observed
                .as_ref()
                .and_then(|o| o.trace.as_ref())
                .zip(span_id)
                .and_then(|(trace, span)| {
                    let parent = http::HeaderValue::try_from(trace.traceparent(span)).ok()?;
                    let state = trace
                        .tracestate
                        .as_deref()
                        .and_then(|s| http::HeaderValue::try_from(s).ok());
                    Some((parent, state))
                });
            let started_at = SystemTime::now();
            let started = Instant::now();
            let deployment_id = deployment.id.clone();
            let provider = deployment.provider;
            let upstream_model = deployment.upstream_model.clone();
            let mut attempt = Attempt {
                request_id: self.request_id.clone(),
                received_at: self.received_at,
                model_group: route.group.to_owned(),
                deployment,
                sent_at: Instant::now(),
                hide_usage_chunk: false,
                native: false,
                trace_headers,
            };
            let outcome = async {
                let response = tokio::time::timeout(
                    timeout,
                    attempt.send(&snapshot.clients[index], Operation::Chat, &request, ctx),
                )
                .await
                .map_err(|_| timeout_error("waiting for the continuation to start", timeout))??;
                attempt.peek(Operation::Chat, response, timeout).await
            }
            .await;
            if let (Some(span_id), Some(mut log)) = (
                span_id,
                self.observed.as_ref().and_then(|o| o.log.lock().ok()),
            ) {
                log.attempts.push(AttemptLog {
                    span_id,
                    model_group: route.group.to_owned(),
                    deployment_id,
                    provider,
                    model: upstream_model,
                    started_at,
                    // Until the stream ends or this attempt fails too.
                    duration: started.elapsed(),
                    status: match &outcome {
                        Ok(peeked) => peeked.meta.status,
                        Err(e) => e.status,
                    },
                    error: outcome
                        .as_ref()
                        .err()
                        .map(|e| (e.kind, e.message().to_owned())),
                });
            }
            match outcome {
                Ok(peeked) => {
                    snapshot.deployment_answered(index);
                    self.claims.push(claim);
                    let mut initial: Vec<(Bytes, Option<Usage>)> =
                        peeked.initial.into_iter().map(|b| (b, None)).collect();
                    if let Some(first) = initial.first_mut() {
                        first.1 = peeked.first_usage;
                    }
                    Ok(Resumed {
                        initial,
                        relay: peeked.relay,
                        finished: peeked.finished,
                    })
                }
                Err(e) => {
                    snapshot.deployment_failed(index, &e, route.candidates.len());
                    Err(e)
                }
            }
        })
    }
}
