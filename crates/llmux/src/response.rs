//! What the core answers for a request: the response body (JSON or a relayed stream) and what
//! the gateway knows about it besides (deployment, usage, timings, cost), shared by the request
//! loop (`execute`), one upstream attempt (`attempt`) and the server.

use std::time::Duration;

use bytes::Bytes;
use llmux_types::Usage;

use crate::relay::RelayStream;

/// What the gateway knows about a response besides its body.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    pub request_id: String,
    /// The model group that matched (e.g. `gpt-4o` or `openai/*`).
    pub model_group: String,
    pub deployment_id: String,
    pub provider: &'static str,
    /// The upstream's HTTP status (a 2xx).
    pub status: u16,
    /// Upstream headers to pass on (rate-limit state).
    pub forwarded_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Usage of a non-streaming response (streams report theirs when they finish).
    pub usage: Option<Usage>,
    /// Time spent waiting on the upstream (to the full body, or to the first stream event).
    pub upstream_latency: Duration,
    /// Time the gateway itself added before the response could start.
    pub overhead: Duration,
    /// Retries made before this response (across all groups tried).
    pub attempted_retries: u32,
    /// Fallback groups tried before this response.
    pub attempted_fallbacks: u32,
    /// USD for a non-streaming response's usage (`x-litellm-response-cost`).
    pub cost: Option<f64>,
    /// The body is the provider's answer in the client's own dialect (an Anthropic Messages
    /// request answered by a deployment that speaks it), not the OpenAI translation.
    pub native: bool,
    /// The answer came from the response cache, under this key (`x-litellm-cache-key`).
    pub cache_key: Option<String>,
    /// A semantic cache answered with the answer to a question this similar
    /// (`x-litellm-semantic-similarity`).
    pub semantic_similarity: Option<f32>,
}

#[derive(Debug)]
pub enum ResponseBody {
    Json(Bytes),
    Stream(RelayStream),
}

#[derive(Debug)]
pub struct GatewayResponse {
    pub meta: ResponseMeta,
    pub body: ResponseBody,
}
