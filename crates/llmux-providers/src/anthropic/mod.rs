//! Anthropic Messages API adapter: OpenAI chat requests out, Messages responses and streams in.
//! `x-api-key` and `anthropic-version` auth; `anthropic-beta` and other `extra_headers` pass
//! through; `cache_control` blocks are kept; cache read/write tokens land in usage.

pub mod request;
pub mod response;
pub mod stream;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::HeaderMap;
use llmux_config::{Config, DeploymentConfig, Diagnostic, EnvSource};
use llmux_types::{GatewayError, RawObject};
use serde_json::{Map, Value};

use crate::{
    Operation, Provider, RequestContext, StreamDecoder, TranslatedResponse, UpstreamRequest,
};

pub const DEFAULT_BASE: &str = "https://api.anthropic.com";
pub const API_VERSION: &str = "2023-06-01";

/// One Anthropic deployment, precomputed when the configuration loads.
#[derive(Debug, Clone)]
pub struct AnthropicTarget {
    url: String,
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
        let params_path = format!("{}.litellm_params", dep.path());
        let base = dep
            .api_base
            .clone()
            .or_else(|| {
                config
                    .env_var(env, "ANTHROPIC_API_BASE")
                    .or_else(|| config.env_var(env, "ANTHROPIC_BASE_URL"))
            })
            .unwrap_or_else(|| DEFAULT_BASE.to_owned());
        let base = base.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(API_VERSION),
        );
        match dep.api_key.as_ref().map(|k| k.expose().to_owned()).or_else(|| config.env_var(env, "ANTHROPIC_API_KEY")) {
            Some(key) => match HeaderValue::from_str(&key) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    headers.insert(HeaderName::from_static("x-api-key"), v);
                }
                Err(_) => {
                    diags.push(Diagnostic::error(format!("{params_path}.api_key"), "contains characters not allowed in a header"));
                    return None;
                }
            },
            None => diags.push(Diagnostic::warning(
                format!("{params_path}.api_key"),
                "no API key for provider `anthropic` and ANTHROPIC_API_KEY is not set; requests will be sent without one",
            )),
        }
        for (name, value) in &dep.extra_headers {
            match (
                HeaderName::try_from(name.as_str()),
                HeaderValue::from_str(value),
            ) {
                (Ok(n), Ok(v)) => {
                    headers.insert(n, v);
                }
                _ => {
                    diags.push(Diagnostic::error(
                        format!("{params_path}.extra_headers.{name}"),
                        "not a valid HTTP header",
                    ));
                    return None;
                }
            }
        }
        Some(AnthropicTarget {
            url: format!("{base}/v1/messages"),
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
        let model = match ctx.wildcard {
            Some(w) if self.model_template.contains('*') => self.model_template.replacen('*', w, 1),
            _ => self.model_template.clone(),
        };
        let body = request::build_body(request, &model, &self.defaults, ctx.drop_params)?;
        let bytes = serde_json::to_vec(&body).map_err(|e| GatewayError::internal(e.to_string()))?;
        Ok(UpstreamRequest {
            url: self.url.clone(),
            headers: self.headers.clone(),
            body: Bytes::from(bytes),
        })
    }

    fn parse_response(
        &self,
        _op: Operation,
        body: Bytes,
    ) -> Result<TranslatedResponse, GatewayError> {
        let (value, usage) = response::translate(&body)?;
        let bytes =
            serde_json::to_vec(&value).map_err(|e| GatewayError::internal(e.to_string()))?;
        Ok(TranslatedResponse {
            body: Bytes::from(bytes),
            usage: Some(usage),
        })
    }

    fn stream_decoder(&self, _op: Operation) -> Box<dyn StreamDecoder> {
        Box::new(stream::AnthropicStreamDecoder::default())
    }

    fn parse_error(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> GatewayError {
        crate::errors::parse_error(status, headers, body)
    }
}

#[cfg(test)]
mod tests;
