//! Holding a deployment: the in-flight claim a request keeps on the deployment it was routed
//! to (released when dropped), and the errors of finding none (unknown model, no deployment
//! able to take the request, timeouts), shared by the request loop and mid-stream recovery.

use std::sync::Arc;
use std::time::Duration;

use llmux_providers::Operation;
use llmux_router::NoDeployment;
use llmux_types::{ErrorKind, GatewayError, Usage};

use crate::Snapshot;

/// A claimed deployment (in-flight slot); released when dropped.
pub(crate) struct Claim {
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) index: usize,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.snapshot.router.release(self.index);
    }
}

pub(crate) fn no_deployment_error(
    no: NoDeployment,
    group: &str,
    op: Operation,
    prompt_tokens: Option<u64>,
    last_failure: Option<&str>,
) -> GatewayError {
    match no {
        NoDeployment::NotSupported => GatewayError::invalid_request(format!("model `{group}` does not support {}", op.as_str()))
            .with_param("model")
            .with_code("unsupported_operation"),
        NoDeployment::NoTagMatch => GatewayError::invalid_request(format!("no deployment of `{group}` matches the request's tags"))
            .with_code("no_matching_tags"),
        NoDeployment::ContextWindow => GatewayError::new(
            ErrorKind::ContextLengthExceeded,
            format!(
                "The prompt ({} tokens) is longer than the context window of every deployment of `{group}`.",
                prompt_tokens.unwrap_or(0)
            ),
        )
        .with_param("messages"),
        NoDeployment::AtCapacity => GatewayError::new(ErrorKind::RateLimited, format!("every deployment of `{group}` is at max_parallel_requests"))
            .with_code("max_parallel_requests_reached"),
        NoDeployment::OverLimits => GatewayError::new(ErrorKind::RateLimited, format!("every deployment of `{group}` is over its rpm/tpm limit for this minute"))
            .with_code("deployment_limits_reached"),
        NoDeployment::Cooling { retry_in, rate_limited } => {
            let kind = if rate_limited { ErrorKind::RateLimited } else { ErrorKind::UpstreamUnavailable };
            // The cause an operator would otherwise find only in the log (a DNS error, a 401).
            let message = match last_failure {
                Some(last) => format!("no healthy deployment of `{group}`: all are cooling down after failures (the last: {last})"),
                None => format!("no healthy deployment of `{group}`: all are cooling down after failures"),
            };
            let mut e = GatewayError::new(kind, message)
                .with_code("no_healthy_deployments")
                .with_status(if rate_limited { 429 } else { 503 });
            e.retry_after = Some(retry_in);
            e
        }
    }
}

pub(crate) fn timeout_error(what: &str, after: Duration) -> GatewayError {
    GatewayError::new(
        ErrorKind::Timeout,
        format!("timed out after {:.1}s {what}", after.as_secs_f64()),
    )
}

pub(crate) fn model_not_found(model: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::NotFound,
        format!("The model `{model}` does not exist or you do not have access to it."),
    )
    .with_param("model")
    .with_code("model_not_found")
}

/// The one place an attempt's outcome reaches its deployment's routing state (the request loop,
/// a stream's end and mid-stream recovery all report here), so a cooldown is always logged and
/// announced to the fleet, and a probe's success always ends it everywhere.
impl Snapshot {
    /// The deployment answered (a whole response, or a stream's first event).
    pub(crate) fn deployment_answered(&self, index: usize) {
        if self.router.stats(index).record_success() {
            self.announce_recovery(&self.router.deployment(index).id);
        }
    }

    /// The deployment failed a request of a group of `group_size` deployments.
    pub(crate) fn deployment_failed(&self, index: usize, error: &GatewayError, group_size: usize) {
        self.router.stats(index).note_failure(error.message());
        let cooldown = self.router.stats(index).record_failure(
            error.kind,
            self.router.settings(),
            group_size,
            error.retry_after,
        );
        if let Some(cooldown) = cooldown {
            let id = &self.router.deployment(index).id;
            tracing::warn!(deployment = %id, kind = %error.kind, cooldown_s = cooldown.as_secs_f64(), "deployment cooling down");
            self.announce_cooldown(id, cooldown);
        }
    }

    /// The most recent failure noted among `candidates`, for the error that says none is
    /// healthy.
    pub(crate) fn last_failure(&self, candidates: &[usize]) -> Option<std::sync::Arc<str>> {
        candidates
            .iter()
            .filter_map(|&i| self.router.stats(i).last_failure_message())
            .min_by_key(|(ago, _)| *ago)
            .map(|(_, message)| message)
    }

    /// What a finished answer took, for latency- and usage-based routing.
    pub(crate) fn deployment_served(&self, index: usize, latency: Duration, usage: Option<&Usage>) {
        let stats = self.router.stats(index);
        stats.record_latency(latency, usage.map_or(0, |u| u.completion_tokens));
        stats.record_tokens(usage.map_or(0, |u| u.total_tokens));
    }
}
