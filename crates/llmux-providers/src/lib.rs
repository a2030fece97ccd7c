//! Provider adapters: pure translation between the gateway's OpenAI-shaped requests and each
//! provider's wire format, plus SSE framing. Nothing here does IO: the core sends what an adapter
//! builds and hands back what came over the wire.

pub mod anthropic;
pub mod auth;
pub mod bedrock;
pub mod cohere;
pub mod common;
pub mod completion;
pub mod errors;
pub mod eventstream;
pub mod gemini;
pub mod json_scan;
pub mod mock;
pub mod openai_compat;
pub mod registry;
pub mod sse;
pub mod vertex;

use bytes::Bytes;
use http::HeaderMap;
use llmux_types::{GatewayError, RawObject, Usage};

pub use auth::UpstreamAuth;
pub use openai_compat::HttpTarget;
pub use registry::{ProviderSpec, ResolvedProvider};

/// Request fields that steer the gateway (LiteLLM's names); never forwarded upstream.
pub const GATEWAY_PARAMS: &[&str] = &[
    "fallbacks",
    "disable_fallbacks",
    "num_retries",
    "timeout",
    "tags",
    "context_window_fallbacks",
    "content_policy_fallbacks",
    "mock_testing_fallbacks",
    // The response cache's per-request controls (`no-cache`, `ttl`, ...).
    "cache",
    NATIVE_ANTHROPIC,
];

/// The internal request's field carrying a client's own Anthropic Messages request (the
/// Anthropic dialect sets it): `{"body": <the request as sent>, "beta": <anthropic-beta>}`. An
/// Anthropic deployment (`Provider::speaks_anthropic`: Anthropic, Claude on Vertex AI or Bedrock)
/// sends that body on with only the model changed, and hands its answer back as sent too
/// (`parse_response_native`, `stream_decoder_native`); every other provider ignores it and
/// translates the internal request.
pub const NATIVE_ANTHROPIC: &str = "_llmux_anthropic";

/// The OpenAI operation a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Chat,
    Completions,
    Embeddings,
    /// `POST /v1/rerank` (Cohere's request and response shape, as LiteLLM exposes it).
    Rerank,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::Completions => "completions",
            Operation::Embeddings => "embeddings",
            Operation::Rerank => "rerank",
        }
    }

    /// The `mode` LiteLLM's `model_info` uses for this operation.
    pub fn mode(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::Completions => "completion",
            Operation::Embeddings => "embedding",
            Operation::Rerank => "rerank",
        }
    }
}

/// Per-request inputs to translation that are not in the body.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    /// What the model group's `*` matched in the requested model name.
    pub wildcard: Option<&'a str>,
    /// `litellm_settings.drop_params`.
    pub drop_params: bool,
}

/// An upstream HTTP request, ready to send.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub url: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Credentials the core applies when it sends (a minted bearer token, a SigV4 signature).
    pub auth: Option<UpstreamAuth>,
    /// The adapter asked the upstream for a usage chunk the client did not request: the core
    /// counts it and does not forward it.
    pub hide_usage_chunk: bool,
}

/// How a provider frames its stream on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFraming {
    /// `text/event-stream`: the decoder gets one SSE event at a time.
    Sse,
    /// AWS event stream (`application/vnd.amazon.eventstream`): the decoder gets one binary
    /// message at a time (prelude, headers, payload, CRCs).
    AwsEventStream,
}

/// A translated non-streaming response: OpenAI-shaped bytes and the usage they report.
#[derive(Debug, Clone)]
pub struct TranslatedResponse {
    pub body: Bytes,
    pub usage: Option<Usage>,
}

/// What one upstream stream event becomes for the client.
#[derive(Debug, Clone, PartialEq)]
pub enum DecodedEvent {
    /// OpenAI-shaped SSE bytes to send (one or more events), with the usage they reported.
    Chunk { bytes: Bytes, usage: Option<Usage> },
    /// Keep-alive bytes (comments): forwarded, but not content.
    KeepAlive(Bytes),
    /// The end of the stream (`data: [DONE]` is in `bytes`).
    Done(Bytes),
    /// The upstream reported an error inside the stream.
    Error(GatewayError),
}

/// Stateful per-request translation of a provider's stream events.
pub trait StreamDecoder: Send {
    /// `event` is one complete event as it arrived: an SSE event (terminator included), or one
    /// binary message for [`StreamFraming::AwsEventStream`].
    fn decode(&mut self, event: Bytes) -> DecodedEvent;
}

/// One provider adapter, instantiated per deployment with what it needs to reach it.
pub trait Provider: Send + Sync + 'static {
    /// The provider prefix, e.g. `groq`.
    fn name(&self) -> &'static str;
    fn supports(&self, op: Operation) -> bool;
    fn build_request(
        &self,
        op: Operation,
        request: &RawObject<'_>,
        ctx: RequestContext<'_>,
    ) -> Result<UpstreamRequest, GatewayError>;
    fn parse_response(
        &self,
        op: Operation,
        body: Bytes,
    ) -> Result<TranslatedResponse, GatewayError>;
    fn stream_decoder(&self, op: Operation) -> Box<dyn StreamDecoder>;
    /// `parse_response` for a request the client sent in this provider's own dialect: the
    /// provider's answer is kept beside the translation (see `NATIVE_ANTHROPIC`).
    fn parse_response_native(
        &self,
        op: Operation,
        body: Bytes,
    ) -> Result<TranslatedResponse, GatewayError> {
        self.parse_response(op, body)
    }
    /// `stream_decoder` for a request the client sent in this provider's own dialect.
    fn stream_decoder_native(&self, op: Operation) -> Box<dyn StreamDecoder> {
        self.stream_decoder(op)
    }
    /// This deployment serves Anthropic's Messages API itself (Anthropic, Claude on Vertex AI
    /// or Bedrock): a request carrying `NATIVE_ANTHROPIC` is sent on as the client wrote it and
    /// answered through `parse_response_native` / `stream_decoder_native`.
    fn speaks_anthropic(&self) -> bool {
        false
    }
    /// Anthropic's `count_tokens` for a client's own Messages request (`NATIVE_ANTHROPIC`), for
    /// deployments whose API counts tokens; `None` where the gateway counts locally.
    fn count_tokens_request(
        &self,
        _request: &RawObject<'_>,
        _ctx: RequestContext<'_>,
    ) -> Option<Result<UpstreamRequest, GatewayError>> {
        None
    }
    /// A 400 to a `count_tokens_request` means the client's request is invalid (Anthropic,
    /// Vertex); `false` where it may instead mean the model cannot count (Bedrock), so the
    /// gateway counts instead.
    fn count_refusal_is_clients(&self) -> bool {
        true
    }
    /// The input-token count in the answer to a `count_tokens_request` (Anthropic's
    /// `{"input_tokens": n}` unless the provider says otherwise).
    fn parse_count_tokens(&self, body: &[u8]) -> Option<u64> {
        #[derive(serde::Deserialize)]
        struct Counted {
            input_tokens: u64,
        }
        serde_json::from_slice::<Counted>(body)
            .ok()
            .map(|c| c.input_tokens)
    }
    /// How this provider's streams are framed.
    fn stream_framing(&self) -> StreamFraming {
        StreamFraming::Sse
    }
    fn parse_error(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> GatewayError;
}

/// Decoder for OpenAI-shaped streams: events pass through as bytes.
#[derive(Debug, Default)]
pub struct OpenAiStreamDecoder;

impl StreamDecoder for OpenAiStreamDecoder {
    fn decode(&mut self, event: Bytes) -> DecodedEvent {
        match openai_compat::inspect_event(&event) {
            openai_compat::StreamEvent::Data { usage } => DecodedEvent::Chunk {
                bytes: event,
                usage,
            },
            openai_compat::StreamEvent::KeepAlive => DecodedEvent::KeepAlive(event),
            openai_compat::StreamEvent::Done => DecodedEvent::Done(event),
            openai_compat::StreamEvent::Error(e) => DecodedEvent::Error(e),
        }
    }
}

impl Provider for HttpTarget {
    fn name(&self) -> &'static str {
        self.provider
    }

    fn supports(&self, op: Operation) -> bool {
        match op {
            Operation::Chat => true,
            Operation::Completions => self.supports_completions,
            Operation::Embeddings => self.supports_embeddings,
            Operation::Rerank => false,
        }
    }

    fn build_request(
        &self,
        op: Operation,
        request: &RawObject<'_>,
        ctx: RequestContext<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        let (body, hide_usage_chunk) =
            self.build_body(op, request, ctx.wildcard, ctx.drop_params)?;
        Ok(UpstreamRequest {
            url: self.url(op).to_owned(),
            headers: self.headers.clone(),
            body,
            auth: self.auth.clone(),
            hide_usage_chunk,
        })
    }

    fn parse_response(
        &self,
        _op: Operation,
        body: Bytes,
    ) -> Result<TranslatedResponse, GatewayError> {
        let usage = openai_compat::extract_usage(&body);
        Ok(TranslatedResponse { body, usage })
    }

    fn stream_decoder(&self, _op: Operation) -> Box<dyn StreamDecoder> {
        Box::new(OpenAiStreamDecoder)
    }

    fn parse_error(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> GatewayError {
        openai_compat::parse_error(status, headers, body)
    }
}
