//! Deployments that serve Anthropic's API themselves: which requests may reach one (so the
//! Messages dialect carries the client's own body only where it can be used), and Anthropic's
//! `count_tokens` asked of one (Anthropic, Claude on Vertex AI), whose count knows its
//! tokenizer, images, tools and thinking exactly; the gateway's local estimate answers
//! everywhere else and whenever asking fails.

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
    /// A request for `model` may be answered by a deployment that serves Anthropic's API: one of
    /// its model group, or of a group its configured fallbacks name.
    pub fn reaches_anthropic(&self, model: &str) -> bool {
        let snapshot = self.snapshot();
        let router = &snapshot.router;
        let has_one = |candidates: &[usize]| {
            candidates
                .iter()
                .any(|&i| router.deployment(i).speaks_anthropic())
        };
        let serves = |group: &str| router.route(group).is_some_and(|r| has_one(r.candidates));
        let Some(route) = router.route(model) else {
            return false;
        };
        if has_one(route.candidates) {
            return true;
        }
        let settings = router.settings();
        [
            &settings.fallbacks,
            &settings.context_window_fallbacks,
            &settings.content_policy_fallbacks,
        ]
        .iter()
        .filter_map(|map| map.get(route.group))
        .flatten()
        .chain(settings.default_fallbacks.iter())
        .any(|group| serves(group))
    }

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
        // A keyed handle's requests are admitted by its gate; this one would be an upstream
        // call on the operator's credentials past it.
        if self.api_key.is_some() {
            return None;
        }
        let request = RawObject::parse(body).ok()?;
        let snapshot = self.snapshot();
        let route = snapshot.router.route(model)?;
        let ctx = RequestContext {
            wildcard: route.wildcard,
            drop_params: snapshot.config.drop_params,
        };
        // The first healthy deployment whose API counts (Claude on Bedrock, say, does not).
        let (index, provider, upstream) = route.candidates.iter().find_map(|&i| {
            let llmux_router::Backend::Http(provider) = &snapshot.router.deployment(i).backend
            else {
                return None;
            };
            if !matches!(
                snapshot.router.stats(i).availability(),
                Availability::Healthy
            ) {
                return None;
            }
            Some((i, provider, provider.count_tokens_request(&request, ctx)?))
        })?;
        let deployment = snapshot.router.deployment(index);
        let upstream = match upstream {
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
        if (status == 400 || status == 413) && provider.count_refusal_is_clients() {
            return Some(Err(provider.parse_error(status, &headers, &body)));
        }
        match provider.parse_count_tokens(&body) {
            Some(counted) if (200..300).contains(&status) => Some(Ok(counted)),
            _ => {
                tracing::warn!(deployment = %deployment.id, status, "count_tokens upstream answered no count; counting locally");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use crate::dialect::anthropic::chat_request_routed;
    use crate::Client;

    /// A model group reaches Anthropic's API through its own deployments or a configured
    /// fallback group's; only then does the Messages dialect carry the client's body.
    #[test]
    fn the_client_body_is_carried_only_where_anthropic_may_answer() {
        let client = Client::from_yaml(
            r#"
model_list:
  - {model_name: claude, litellm_params: {model: anthropic/claude-x, api_key: k}}
  - {model_name: gpt, litellm_params: {model: openai/gpt-x, api_key: k}}
  - {model_name: gpt-backed, litellm_params: {model: openai/gpt-y, api_key: k}}
  - {model_name: vertex-claude, litellm_params: {model: vertex_ai/claude-z@1, vertex_project: p, vertex_location: us-east5}}
router_settings:
  fallbacks: [{gpt-backed: [claude]}]
"#,
        )
        .unwrap();
        assert!(client.reaches_anthropic("claude"));
        assert!(client.reaches_anthropic("vertex-claude"));
        assert!(
            client.reaches_anthropic("gpt-backed"),
            "through its fallback"
        );
        assert!(!client.reaches_anthropic("gpt"));
        assert!(!client.reaches_anthropic("no-such-model"));

        let body = br#"{"model":"gpt","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
        let carried = |model: &str| {
            let converted =
                chat_request_routed(body, None, |m| client.reaches_anthropic(m)).unwrap();
            assert_eq!(converted.model, model);
            std::str::from_utf8(&converted.body)
                .unwrap()
                .contains(llmux_providers::NATIVE_ANTHROPIC)
        };
        assert!(!carried("gpt"));
        let with_fallbacks = br#"{"model":"gpt","max_tokens":5,"fallbacks":["claude"],"messages":[{"role":"user","content":"hi"}]}"#;
        let converted =
            chat_request_routed(with_fallbacks, None, |m| client.reaches_anthropic(m)).unwrap();
        assert!(
            std::str::from_utf8(&converted.body)
                .unwrap()
                .contains(llmux_providers::NATIVE_ANTHROPIC),
            "a request naming its own fallbacks may reach Anthropic"
        );
        let to_claude =
            br#"{"model":"claude","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
        let converted =
            chat_request_routed(to_claude, None, |m| client.reaches_anthropic(m)).unwrap();
        assert!(std::str::from_utf8(&converted.body)
            .unwrap()
            .contains(llmux_providers::NATIVE_ANTHROPIC));
    }
}
