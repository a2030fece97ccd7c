//! Governance for library users: a [`Gate`] admits a request made with an API key (model
//! access, budgets, rate limits) and settles it through the hook it returns. `llmux-governance`
//! implements it; [`ClientBuilder::gate`](crate::ClientBuilder::gate) installs one and
//! [`Client::with_api_key`](crate::Client::with_api_key) sends requests through it.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{Client, GatewayError, Operation, ParsedBody, RequestHook};

/// A request the gate let through.
pub struct Admitted {
    /// Told when the request is over (its spend is settled and recorded).
    pub hook: Arc<dyn RequestHook>,
    /// The body to send instead of the one given (a key's model alias rewrote `model`).
    pub body: Option<Bytes>,
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted")
            .field("rewritten", &self.body.is_some())
            .finish()
    }
}

/// Who may send what: authenticates `api_key`, checks the request against the key's (and its
/// user's, team's, ...) models, budgets and limits, and reserves what it may cost.
#[async_trait]
pub trait Gate: Send + Sync {
    async fn admit(
        &self,
        client: &Client,
        api_key: &str,
        op: Operation,
        body: &ParsedBody<'_>,
    ) -> Result<Admitted, GatewayError>;
}
