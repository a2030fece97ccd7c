//! Deployment health probes (LiteLLM's `/health`): one tiny request to one deployment, sent
//! past routing (a cooled-down deployment is probed too), of the kind its `model_info.mode`
//! says it serves: a one-token chat by default, an embedding, a completion or a rerank.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use llmux_providers::{Operation, RequestContext};
use llmux_types::RawObject;
use serde_json::json;

use crate::attempt::Attempt;
use crate::{Client, Snapshot};

/// What probing one deployment found.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub deployment_id: String,
    pub model_group: String,
    /// `litellm_params.model`.
    pub model: String,
    pub api_base: Option<String>,
    pub healthy: bool,
    /// Why it is unhealthy.
    pub error: Option<String>,
    /// The kind of that failure (`Timeout` when no answer came in time).
    pub error_kind: Option<crate::ErrorKind>,
    pub latency: Duration,
}

impl Client {
    /// Probe every deployment (of model group `only`, when given) at once, each within
    /// `timeout`. Wildcard groups are skipped: no concrete model to ask for.
    pub async fn check_health(&self, only: Option<&str>, timeout: Duration) -> Vec<HealthCheck> {
        let snapshot = self.snapshot();
        let probes = snapshot
            .router
            .deployments()
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.config.model_name.contains('*'))
            .filter(|(_, d)| only.is_none_or(|group| d.config.model_name == group))
            .map(|(index, _)| probe(Arc::clone(&snapshot), index, timeout));
        futures_util::future::join_all(probes).await
    }
}

/// The request a deployment of `mode` is probed with.
fn probe_request(mode: Option<&str>, model: &str) -> (Operation, serde_json::Value) {
    match mode {
        Some("embedding") => (
            Operation::Embeddings,
            json!({"model": model, "input": "ping"}),
        ),
        Some("completion") => (
            Operation::Completions,
            json!({"model": model, "prompt": "ping", "max_tokens": 1}),
        ),
        Some("rerank") => (
            Operation::Rerank,
            json!({"model": model, "query": "ping", "documents": ["ping"]}),
        ),
        _ => (
            Operation::Chat,
            json!({"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}),
        ),
    }
}

async fn probe(snapshot: Arc<Snapshot>, index: usize, timeout: Duration) -> HealthCheck {
    let deployment = Arc::clone(snapshot.router.deployment(index));
    let config = &deployment.config;
    let (op, body) = probe_request(config.model_info.mode.as_deref(), &config.model_name);
    let started = Instant::now();
    let mut check = HealthCheck {
        deployment_id: deployment.id.clone(),
        model_group: config.model_name.clone(),
        model: config.model.clone(),
        api_base: config.api_base.clone(),
        healthy: false,
        error: None,
        error_kind: None,
        latency: Duration::ZERO,
    };
    let bytes = Bytes::from(body.to_string());
    let request = match RawObject::parse(&bytes) {
        Ok(request) => request,
        Err(e) => {
            check.error = Some(e.to_string());
            check.error_kind = Some(crate::ErrorKind::Internal);
            return check;
        }
    };
    let mut attempt = Attempt {
        request_id: crate::new_request_id(),
        received_at: started,
        model_group: config.model_name.clone(),
        deployment: Arc::clone(&deployment),
        sent_at: started,
        hide_usage_chunk: false,
        native: false,
        trace_headers: None,
    };
    let ctx = RequestContext {
        wildcard: None,
        drop_params: true,
    };
    let answered = tokio::time::timeout(
        timeout,
        attempt.unary(
            &snapshot.clients[index],
            op,
            &request,
            ctx,
            (
                &snapshot.buffers,
                snapshot.config.max_buffered_response_bytes,
            ),
        ),
    )
    .await;
    check.latency = started.elapsed();
    match answered {
        Ok(Ok(_)) => check.healthy = true,
        Ok(Err(e)) => {
            check.error = Some(e.message().to_owned());
            check.error_kind = Some(e.kind);
        }
        Err(_) => {
            check.error = Some(format!("no answer within {:.1} s", timeout.as_secs_f64()));
            check.error_kind = Some(crate::ErrorKind::Timeout);
        }
    }
    check
}
