//! Governance for library users: a [`Gate`] admits a request made with an API key (model
//! access, budgets, rate limits) and settles it through the hook it returns. `llmux-governance`
//! implements it; [`ClientBuilder::gate`](crate::ClientBuilder::gate) installs one and
//! [`Client::with_api_key`](crate::Client::with_api_key) sends requests through it.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{Client, GatewayError, Operation, ParsedBody, RequestHook, RequestLog, RequestOptions};

/// A request the gate let through.
pub struct Admitted {
    /// Told when the request is over (its spend is settled and recorded).
    pub hook: Arc<dyn RequestHook>,
    /// The body to send instead of the one given (a key's model alias rewrote `model`).
    pub body: Option<Bytes>,
    /// The tenant whose cached answers the request shares (`RequestOptions::cache_scope`).
    pub cache_scope: Option<Arc<str>>,
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted")
            .field("rewritten", &self.body.is_some())
            .finish()
    }
}

/// Who may send what: authenticates `api_key`, checks the request against the key's (and its
/// user's, team's, ...) models, budgets and limits, and reserves what it may cost. `options`
/// are the caller's (its `request_id` is the caller's own id for the request, kept beside the
/// one llmux gives it; its `tags` count as the request's).
#[async_trait]
pub trait Gate: Send + Sync {
    async fn admit(
        &self,
        client: &Client,
        api_key: &str,
        op: Operation,
        body: &ParsedBody<'_>,
        options: &RequestOptions,
    ) -> Result<Admitted, GatewayError>;
}

/// Two hooks told of one request: the gate's (settlement) and the caller's own.
pub(crate) struct BothHooks(pub Arc<dyn RequestHook>, pub Arc<dyn RequestHook>);

impl RequestHook for BothHooks {
    fn finished(&self, log: &RequestLog) {
        self.0.finished(log);
        self.1.finished(log);
    }

    fn watches_stream(&self) -> bool {
        self.0.watches_stream() || self.1.watches_stream()
    }

    /// The first hook to end the stream ends it (the gate's budget first).
    fn stream_progress(&self, completion_tokens: u64) -> Result<(), GatewayError> {
        if self.0.watches_stream() {
            self.0.stream_progress(completion_tokens)?;
        }
        if self.1.watches_stream() {
            self.1.stream_progress(completion_tokens)?;
        }
        Ok(())
    }
}
