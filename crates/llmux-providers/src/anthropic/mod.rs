//! Anthropic Messages API adapter: OpenAI chat requests out, Messages responses and streams in.
//! `x-api-key` and `anthropic-version` auth; `anthropic-beta` and other `extra_headers` pass
//! through; `cache_control` blocks are kept; cache read/write tokens land in usage.

pub mod request;
pub mod response;
pub mod stream;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use llmux_config::{Config, DeploymentConfig, Diagnostic, EnvSource};
use llmux_types::{GatewayError, RawObject};
use serde_json::{Map, Value};

use crate::common::{endpoint, Endpoint};
use crate::registry::AuthStyle;
use crate::{
    Operation, Provider, RequestContext, StreamDecoder, TranslatedResponse, UpstreamRequest,
};

pub const DEFAULT_BASE: &str = "https://api.anthropic.com";
pub const API_VERSION: &str = "2023-06-01";

/// One Anthropic deployment, precomputed when the configuration loads.
#[derive(Debug, Clone)]
pub struct AnthropicTarget {
    url: String,
    count_tokens_url: String,
    headers: HeaderMap,
    model_template: String,
    defaults: Map<String, Value>,
}

impl AnthropicTarget {
    pub fn new(
        upstream_model: &str,
        dep: &DeploymentConfig,
        config: &Config,
        env: &dyn EnvSource,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Self> {
        let spec = Endpoint {
            provider: "anthropic",
            default_base: DEFAULT_BASE,
            base_env: &["ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL"],
            key_env: &["ANTHROPIC_API_KEY"],
            auth: AuthStyle::Header("x-api-key"),
            strip_suffixes: &["/v1"],
        };
        let (base, mut headers) = endpoint(&spec, dep, config, env, diags)?;
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(API_VERSION),
        );
        Some(AnthropicTarget {
            url: format!("{base}/v1/messages"),
            count_tokens_url: format!("{base}/v1/messages/count_tokens"),
            headers,
            model_template: upstream_model.to_owned(),
            defaults: dep.request_defaults.clone(),
        })
    }
}

impl Provider for AnthropicTarget {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    fn supports(&self, op: Operation) -> bool {
        op == Operation::Chat
    }

    fn build_request(
        &self,
        _op: Operation,
        request: &RawObject<'_>,
        ctx: RequestContext<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        let model = crate::common::model_for(&self.model_template, ctx.wildcard);
        let target = request::NativeTarget::Anthropic { model: &model };
        if let Some(native) = request::native_body(request, target, &self.defaults)? {
            let mut headers = self.headers.clone();
            request::join_beta_header(&mut headers, native.beta.as_deref());
            return Ok(UpstreamRequest {
                url: self.url.clone(),
                headers,
                body: Bytes::from(native.body),
                auth: None,
                hide_usage_chunk: false,
            });
        }
        let body = request::build_body(request, &model, &self.defaults, ctx.drop_params)?;
        crate::common::json_request(self.url.clone(), &self.headers, &body, None)
    }

    fn parse_response(
        &self,
        _op: Operation,
        body: Bytes,
    ) -> Result<TranslatedResponse, GatewayError> {
        response::translate(&body)?.into_response()
    }

    fn stream_decoder(&self, _op: Operation) -> Box<dyn StreamDecoder> {
        Box::new(stream::AnthropicStreamDecoder::default())
    }

    /// The answer as Anthropic sent it (the client speaks Anthropic's dialect), with its usage
    /// read for billing: no translation.
    fn parse_response_native(
        &self,
        _op: Operation,
        body: Bytes,
    ) -> Result<TranslatedResponse, GatewayError> {
        native_response(body)
    }

    fn stream_decoder_native(&self, _op: Operation) -> Box<dyn StreamDecoder> {
        Box::new(stream::AnthropicStreamDecoder::native())
    }

    fn speaks_anthropic(&self) -> bool {
        true
    }

    fn count_tokens_request(
        &self,
        request: &RawObject<'_>,
        ctx: RequestContext<'_>,
    ) -> Option<Result<UpstreamRequest, GatewayError>> {
        let model = crate::common::model_for(&self.model_template, ctx.wildcard);
        let native = match request::count_tokens_body(request, &model, None) {
            Ok(native) => native?,
            Err(e) => return Some(Err(e)),
        };
        let mut headers = self.headers.clone();
        request::join_beta_header(&mut headers, native.beta.as_deref());
        Some(Ok(UpstreamRequest {
            url: self.count_tokens_url.clone(),
            headers,
            body: Bytes::from(native.body),
            auth: None,
            hide_usage_chunk: false,
        }))
    }

    fn parse_error(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> GatewayError {
        crate::errors::parse_error(status, headers, body)
    }
}

/// An Anthropic Messages response kept as sent (the client speaks Anthropic's dialect), with
/// its usage read for billing.
pub fn native_response(body: Bytes) -> Result<TranslatedResponse, GatewayError> {
    #[derive(serde::Deserialize)]
    struct UsageOnly {
        usage: Option<Value>,
    }
    let read: UsageOnly = serde_json::from_slice(&body).map_err(|e| {
        GatewayError::new(
            llmux_types::ErrorKind::UpstreamError,
            format!("anthropic returned invalid JSON: {e}"),
        )
    })?;
    Ok(TranslatedResponse {
        usage: read.usage.as_ref().map(response::usage),
        body,
    })
}

#[cfg(test)]
mod tests;
