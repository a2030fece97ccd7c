//! Gemini (Google AI Studio, API key) adapter: `generateContent`,
//! `streamGenerateContent?alt=sse`, `batchEmbedContents`; tools (with Gemini 3 thought
//! signatures carried in tool-call ids), thoughts as `reasoning_content`, safety blocks as
//! `content_filter`.

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
        let params_path = format!("{}.litellm_params", dep.path());
        let base = dep
            .api_base
            .clone()
            .or_else(|| config.env_var(env, "GEMINI_API_BASE"))
            .unwrap_or_else(|| DEFAULT_BASE.to_owned());
        let base = base.trim_end_matches('/');
        let base = base.strip_suffix("/v1beta").unwrap_or(base).to_owned();
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let key = dep
            .api_key
            .as_ref()
            .map(|k| k.expose().to_owned())
            .or_else(|| config.env_var(env, "GEMINI_API_KEY"))
            .or_else(|| config.env_var(env, "GOOGLE_API_KEY"));
        match key {
            Some(key) => match HeaderValue::from_str(&key) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    headers.insert(HeaderName::from_static("x-goog-api-key"), v);
                }
                Err(_) => {
                    diags.push(Diagnostic::error(format!("{params_path}.api_key"), "contains characters not allowed in a header"));
                    return None;
                }
            },
            None => diags.push(Diagnostic::warning(
                format!("{params_path}.api_key"),
                "no API key for provider `gemini` and GEMINI_API_KEY is not set; requests will be sent without one",
            )),
        }
        for (name, value) in &dep.extra_headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::try_from(name.as_str()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(n, v);
            } else {
                diags.push(Diagnostic::error(
                    format!("{params_path}.extra_headers.{name}"),
                    "not a valid HTTP header",
                ));
                return None;
            }
        }
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
        match wildcard {
            Some(w) if self.model_template.contains('*') => self.model_template.replacen('*', w, 1),
            _ => self.model_template.clone(),
        }
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
        let bytes = serde_json::to_vec(&body).map_err(|e| GatewayError::internal(e.to_string()))?;
        Ok(UpstreamRequest {
            url,
            headers: self.headers.clone(),
            body: Bytes::from(bytes),
        })
    }

    fn parse_response(
        &self,
        op: Operation,
        body: Bytes,
    ) -> Result<TranslatedResponse, GatewayError> {
        let (value, usage) = match op {
            Operation::Embeddings => (
                response::translate_embeddings(&body, &self.model_template, false)?,
                None,
            ),
            _ => response::translate_chat(&body, &self.model_template)?,
        };
        let bytes =
            serde_json::to_vec(&value).map_err(|e| GatewayError::internal(e.to_string()))?;
        Ok(TranslatedResponse {
            body: Bytes::from(bytes),
            usage,
        })
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
