//! Anthropic's `count_tokens` asked of the deployment itself: for a Messages request to a model
//! group with a deployment that serves Anthropic's API (Anthropic, Claude on Vertex AI), the
//! provider's own count, which knows its tokenizer, images, tools and thinking exactly; the
//! gateway's local estimate is the answer everywhere else and whenever asking fails.

use std::time::Duration;

use llmux_providers::RequestContext;
use llmux_router::Availability;
use llmux_types::{GatewayError, RawObject};

use crate::Client;

/// Counting is a planning aid: a slow upstream is not waited on past this.
const COUNT_TIMEOUT: Duration = Duration::from_secs(10);
/// A count is a few bytes; anything larger is not one.
const MAX_COUNT_BODY: usize = 64 * 1024;

impl Client {
    /// The input tokens of an internal request carrying a client's own Messages request
    /// (`NATIVE_ANTHROPIC`), as a healthy deployment of its model group that serves Anthropic's
    /// `count_tokens` counts them. `None` when no deployment of the group counts, or asking
    /// failed in a way the local estimate should answer (unreachable, refused our credentials,
    /// overloaded); `Some(Err)` when the provider found the client's request invalid.
    pub async fn count_tokens_upstream(
        &self,
        body: &[u8],
        model: &str,
    ) -> Option<Result<u64, GatewayError>> {
        let request = RawObject::parse(body).ok()?;
        let snapshot = self.snapshot();
        let route = snapshot.router.route(model)?;
        let index = route.candidates.iter().copied().find(|&i| {
            snapshot.router.deployment(i).speaks_anthropic()
                && matches!(
                    snapshot.router.stats(i).availability(),
                    Availability::Healthy
                )
        })?;
        let deployment = snapshot.router.deployment(index);
        let llmux_router::Backend::Http(provider) = &deployment.backend else {
            return None;
        };
        let ctx = RequestContext {
            wildcard: route.wildcard,
            drop_params: snapshot.config.drop_params,
        };
        let upstream = match provider.count_tokens_request(&request, ctx)? {
            Ok(upstream) => upstream,
            Err(e) => return Some(Err(e)),
        };
        let http = &snapshot.clients[index];
        let asked = async {
            let mut response = http.send_request(upstream).await?;
            let body = response.collect(MAX_COUNT_BODY).await?;
            Ok::<_, GatewayError>((response.status, response.headers, body))
        };
        let (status, headers, body) = match tokio::time::timeout(COUNT_TIMEOUT, asked).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                tracing::warn!(deployment = %deployment.id, error = %e, "count_tokens upstream failed; counting locally");
                return None;
            }
            Err(_) => {
                tracing::warn!(deployment = %deployment.id, "count_tokens upstream timed out; counting locally");
                return None;
            }
        };
        if status == 400 || status == 413 {
            return Some(Err(provider.parse_error(status, &headers, &body)));
        }
        #[derive(serde::Deserialize)]
        struct Counted {
            input_tokens: u64,
        }
        match serde_json::from_slice::<Counted>(&body) {
            Ok(counted) if (200..300).contains(&status) => Some(Ok(counted.input_tokens)),
            _ => {
                tracing::warn!(deployment = %deployment.id, status, "count_tokens upstream answered no count; counting locally");
                None
            }
        }
    }
}
