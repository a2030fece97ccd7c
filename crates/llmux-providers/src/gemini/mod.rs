//! Gemini (Google AI Studio, API key) adapter: `generateContent`,
//! `streamGenerateContent?alt=sse`, `batchEmbedContents`; tools (with Gemini 3 thought
//! signatures carried in tool-call ids), thoughts as `reasoning_content`, safety blocks as
//! `content_filter`.

pub mod request;
pub mod response;
pub mod stream;

use bytes::Bytes;
use http::HeaderMap;
use llmux_config::{Config, DeploymentConfig, Diagnostic, EnvSource};
use llmux_types::{GatewayError, RawObject};
use serde_json::{Map, Value};

use crate::common::{endpoint, Endpoint};
use crate::registry::AuthStyle;
use crate::{
    Operation, Provider, RequestContext, StreamDecoder, TranslatedResponse, UpstreamRequest,
};

pub const DEFAULT_BASE: &str = "https://generativelanguage.googleapis.com";

#[derive(Debug, Clone)]
pub struct GeminiTarget {
    base: String,
    headers: HeaderMap,
    model_template: String,
    defaults: Map<String, Value>,
}

impl GeminiTarget {
    pub fn new(
        upstream_model: &str,
        dep: &DeploymentConfig,
        config: &Config,
        env: &dyn EnvSource,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Self> {
        let spec = Endpoint {
            provider: "gemini",
            default_base: DEFAULT_BASE,
            base_env: &["GEMINI_API_BASE"],
            key_env: &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
            auth: AuthStyle::Header("x-goog-api-key"),
            strip_suffixes: &["/v1beta"],
        };
        let (base, headers) = endpoint(&spec, dep, config, env, diags)?;
        let mut defaults = dep.request_defaults.clone();
        if let Some(safety) = dep.provider_params.get("safety_settings") {
            defaults.insert("safety_settings".into(), safety.clone());
        }
        Some(GeminiTarget {
            base,
            headers,
            model_template: upstream_model.to_owned(),
            defaults,
        })
    }

    fn model(&self, wildcard: Option<&str>) -> String {
        crate::common::model_for(&self.model_template, wildcard)
    }
}

impl Provider for GeminiTarget {
    fn name(&self) -> &'static str {
        "gemini"
    }

    fn supports(&self, op: Operation) -> bool {
        matches!(op, Operation::Chat | Operation::Embeddings)
    }

    fn build_request(
        &self,
        op: Operation,
        request: &RawObject<'_>,
        ctx: RequestContext<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        let model = self.model(ctx.wildcard);
        let (url, body) = match op {
            Operation::Embeddings => (
                format!("{}/v1beta/models/{model}:batchEmbedContents", self.base),
                request::build_embeddings(request, &model)?,
            ),
            _ => {
                let stream = request
                    .decode::<bool>("stream")
                    .ok()
                    .flatten()
                    .unwrap_or(false);
                let url = if stream {
                    format!(
                        "{}/v1beta/models/{model}:streamGenerateContent?alt=sse",
                        self.base
                    )
                } else {
                    format!("{}/v1beta/models/{model}:generateContent", self.base)
                };
                (
                    url,
                    request::build_chat(request, &self.defaults, ctx.drop_params)?,
                )
            }
        };
        crate::common::json_request(url, &self.headers, &body, None)
    }

    fn parse_response(
        &self,
        op: Operation,
        body: Bytes,
    ) -> Result<TranslatedResponse, GatewayError> {
        match op {
            Operation::Embeddings => crate::common::json_response(
                &response::translate_embeddings(&body, &self.model_template, false)?,
                None,
            ),
            _ => response::translate_chat(&body, &self.model_template)?.into_response(),
        }
    }

    fn stream_decoder(&self, _op: Operation) -> Box<dyn StreamDecoder> {
        Box::new(stream::GeminiStreamDecoder::new(&self.model_template))
    }

    fn parse_error(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> GatewayError {
        crate::errors::parse_error(status, headers, body)
    }
}

#[cfg(test)]
mod tests;
