//! Vertex AI adapter: Gemini models (`generateContent`, `streamGenerateContent?alt=sse`, `predict`
//! for text embeddings) and Anthropic models (`rawPredict` / `streamRawPredict`) under
//! `projects/{project}/locations/{location}/publishers/{google|anthropic}`, authenticated with
//! OAuth tokens the core mints from a service-account key (or gcloud user credentials) and
//! caches until they expire. Translation reuses the Gemini and Anthropic adapters.
//!
//! The credentials file named by `vertex_credentials` or `GOOGLE_APPLICATION_CREDENTIALS` is
//! read when the configuration loads (the one file this crate reads), never per request.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use llmux_config::{Config, DeploymentConfig, Diagnostic, EnvSource};
use llmux_types::{ErrorKind, GatewayError, RawObject, Usage};
use serde_json::{json, Map, Value};

use crate::auth::{google_credentials, google_project, UpstreamAuth, GOOGLE_CLOUD_SCOPE};
use crate::common::setting;
use crate::{
    anthropic, gemini, Operation, Provider, RequestContext, StreamDecoder, TranslatedResponse,
    UpstreamRequest,
};

/// `anthropic_version` for Claude on Vertex (sent in the body; the model is in the URL).
pub const ANTHROPIC_VERTEX_VERSION: &str = "vertex-2023-10-16";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Gemini,
    Anthropic,
}

#[derive(Debug, Clone)]
pub struct VertexTarget {
    family: Family,
    /// `{base}/v1/projects/{p}/locations/{l}/publishers/{publisher}/models`
    models_url: String,
    headers: HeaderMap,
    model_template: String,
    defaults: Map<String, Value>,
    auth: Option<UpstreamAuth>,
}

/// The credentials JSON: `vertex_credentials` (inline JSON, a mapping, or a file path), else the
/// file `GOOGLE_APPLICATION_CREDENTIALS` names. `Err` is a message for the diagnostic.
fn credentials_json(
    dep: &DeploymentConfig,
    config: &Config,
    env: &dyn EnvSource,
) -> Result<Option<String>, String> {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(Some)
            .map_err(|e| format!("cannot read credentials file {path}: {e}"))
    };
    match dep.provider_params.get("vertex_credentials") {
        Some(Value::Object(map)) => return Ok(Some(Value::Object(map.clone()).to_string())),
        Some(Value::String(s)) if s.trim_start().starts_with('{') => return Ok(Some(s.clone())),
        Some(Value::String(path)) if !path.is_empty() => return read(path),
        _ => {}
    }
    if let Some(inline) = config.env_var(env, "VERTEXAI_CREDENTIALS") {
        if inline.trim_start().starts_with('{') {
            return Ok(Some(inline));
        }
        return read(&inline);
    }
    match config.env_var(env, "GOOGLE_APPLICATION_CREDENTIALS") {
        Some(path) => read(&path),
        None => Ok(None),
    }
}

/// Build the Vertex adapter for `vertex_ai/<model>`.
pub fn target(
    upstream_model: &str,
    dep: &DeploymentConfig,
    config: &Config,
    env: &dyn EnvSource,
    diags: &mut Vec<Diagnostic>,
) -> Option<Arc<dyn Provider>> {
    Some(Arc::new(VertexTarget::new(
        upstream_model,
        dep,
        config,
        env,
        diags,
    )?))
}

impl VertexTarget {
    pub fn new(
        upstream_model: &str,
        dep: &DeploymentConfig,
        config: &Config,
        env: &dyn EnvSource,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Self> {
        let params_path = format!("{}.litellm_params", dep.path());
        let creds = match credentials_json(dep, config, env) {
            Ok(c) => c,
            Err(message) => {
                diags.push(Diagnostic::error(
                    format!("{params_path}.vertex_credentials"),
                    message,
                ));
                return None;
            }
        };
        let auth = match &creds {
            Some(json) => match google_credentials(json, GOOGLE_CLOUD_SCOPE) {
                Ok(source) => Some(UpstreamAuth::OAuth(Arc::new(source))),
                Err(message) => {
                    diags.push(Diagnostic::error(
                        format!("{params_path}.vertex_credentials"),
                        message,
                    ));
                    return None;
                }
            },
            None => {
                diags.push(Diagnostic::warning(
                    format!("{params_path}.vertex_credentials"),
                    "no Google credentials (vertex_credentials or GOOGLE_APPLICATION_CREDENTIALS); requests will be sent without a token",
                ));
                None
            }
        };
        let project = setting(
            dep,
            config,
            env,
            "vertex_project",
            &["VERTEXAI_PROJECT", "VERTEX_PROJECT", "GOOGLE_CLOUD_PROJECT"],
        )
        .or_else(|| creds.as_deref().and_then(google_project));
        let Some(project) = project else {
            diags.push(Diagnostic::error(
                format!("{params_path}.vertex_project"),
                "no Vertex AI project (vertex_project, VERTEXAI_PROJECT, or the credentials' project_id)",
            ));
            return None;
        };
        let location = setting(
            dep,
            config,
            env,
            "vertex_location",
            &["VERTEXAI_LOCATION", "VERTEX_LOCATION"],
        )
        .unwrap_or_else(|| "us-central1".to_owned());
        let base = match &dep.api_base {
            Some(b) => b.trim_end_matches('/').to_owned(),
            None if location == "global" => "https://aiplatform.googleapis.com".to_owned(),
            None => format!("https://{location}-aiplatform.googleapis.com"),
        };
        let family = if upstream_model.contains("claude") {
            Family::Anthropic
        } else {
            Family::Gemini
        };
        let publisher = match family {
            Family::Anthropic => "anthropic",
            Family::Gemini => "google",
        };
        let headers = crate::common::auth_headers(
            dep,
            config,
            env,
            &[],
            crate::registry::AuthStyle::Bearer,
            false,
            "vertex_ai",
            diags,
        )?;
        let mut defaults = dep.request_defaults.clone();
        if let Some(safety) = dep.provider_params.get("safety_settings") {
            defaults.insert("safety_settings".into(), safety.clone());
        }
        Some(VertexTarget {
            family,
            models_url: format!(
                "{base}/v1/projects/{project}/locations/{location}/publishers/{publisher}/models"
            ),
            headers,
            model_template: upstream_model.to_owned(),
            defaults,
            auth,
        })
    }
}

/// Vertex text embeddings (`:predict`): one instance per input.
fn build_embeddings(request: &RawObject<'_>) -> Result<Value, GatewayError> {
    // Reuse Gemini's input checks, then reshape into Vertex instances.
    let batch = gemini::request::build_embeddings(request, "m")?;
    let instances: Vec<Value> = batch["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let mut instance = json!({"content": r.pointer("/content/parts/0/text").cloned().unwrap_or(json!(""))});
            if let Some(task) = request.decode::<String>("task_type").ok().flatten() {
                instance["task_type"] = json!(task);
            }
            instance
        })
        .collect();
    let mut body = json!({"instances": instances});
    if let Some(d) = request.decode::<u64>("dimensions").ok().flatten() {
        body["parameters"] = json!({"outputDimensionality": d});
    }
    Ok(body)
}

fn translate_embeddings(body: &[u8], model: &str) -> Result<(Value, Option<Usage>), GatewayError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        GatewayError::new(
            ErrorKind::UpstreamError,
            format!("vertex returned invalid JSON: {e}"),
        )
    })?;
    let mut tokens = 0;
    let data: Vec<Value> = v
        .get("predictions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, p)| {
            tokens += p
                .pointer("/embeddings/statistics/token_count")
                .and_then(Value::as_f64)
                .unwrap_or(0.0) as u64;
            let values = p
                .pointer("/embeddings/values")
                .cloned()
                .unwrap_or(json!([]));
            json!({"object": "embedding", "index": i, "embedding": values})
        })
        .collect();
    Ok((
        json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
        Some(Usage::new(tokens, 0)),
    ))
}

impl Provider for VertexTarget {
    fn name(&self) -> &'static str {
        "vertex_ai"
    }

    fn supports(&self, op: Operation) -> bool {
        match self.family {
            Family::Gemini => matches!(op, Operation::Chat | Operation::Embeddings),
            Family::Anthropic => op == Operation::Chat,
        }
    }

    fn build_request(
        &self,
        op: Operation,
        request: &RawObject<'_>,
        ctx: RequestContext<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        let model = crate::common::model_for(&self.model_template, ctx.wildcard);
        let stream = request
            .decode::<bool>("stream")
            .ok()
            .flatten()
            .unwrap_or(false);
        let (action, body) = match (self.family, op) {
            (Family::Gemini, Operation::Embeddings) => ("predict", build_embeddings(request)?),
            (Family::Gemini, _) => (
                if stream {
                    "streamGenerateContent?alt=sse"
                } else {
                    "generateContent"
                },
                gemini::request::build_chat(request, &self.defaults, ctx.drop_params)?,
            ),
            (Family::Anthropic, _) => {
                let native = anthropic::request::native_body(
                    request,
                    anthropic::request::NativeTarget::Vertex,
                    &self.defaults,
                )?;
                if let Some(native) = native {
                    let mut headers = self.headers.clone();
                    anthropic::request::join_beta_header(&mut headers, native.beta.as_deref());
                    let action = if stream {
                        "streamRawPredict"
                    } else {
                        "rawPredict"
                    };
                    return Ok(UpstreamRequest {
                        url: format!("{}/{model}:{action}", self.models_url),
                        headers,
                        body: Bytes::from(native.body),
                        auth: self.auth.clone(),
                        hide_usage_chunk: false,
                    });
                }
                let mut body = anthropic::request::build_body(
                    request,
                    &model,
                    &self.defaults,
                    ctx.drop_params,
                )?;
                if let Some(map) = body.as_object_mut() {
                    map.remove("model");
                    map.insert("anthropic_version".into(), json!(ANTHROPIC_VERTEX_VERSION));
                }
                (
                    if stream {
                        "streamRawPredict"
                    } else {
                        "rawPredict"
                    },
                    body,
                )
            }
        };
        crate::common::json_request(
            format!("{}/{model}:{action}", self.models_url),
            &self.headers,
            &body,
            self.auth.clone(),
        )
    }

    fn parse_response(
        &self,
        op: Operation,
        body: Bytes,
    ) -> Result<TranslatedResponse, GatewayError> {
        match (self.family, op) {
            (Family::Gemini, Operation::Embeddings) => {
                let (value, usage) = translate_embeddings(&body, &self.model_template)?;
                crate::common::json_response(&value, usage)
            }
            (Family::Gemini, _) => {
                gemini::response::translate_chat(&body, &self.model_template)?.into_response()
            }
            (Family::Anthropic, _) => anthropic::response::translate(&body)?.into_response(),
        }
    }

    fn stream_decoder(&self, _op: Operation) -> Box<dyn StreamDecoder> {
        match self.family {
            Family::Gemini => Box::new(gemini::stream::GeminiStreamDecoder::new(
                &self.model_template,
            )),
            Family::Anthropic => Box::new(anthropic::stream::AnthropicStreamDecoder::default()),
        }
    }

    fn parse_response_native(
        &self,
        op: Operation,
        body: Bytes,
    ) -> Result<TranslatedResponse, GatewayError> {
        match self.family {
            Family::Anthropic => anthropic::native_response(body),
            Family::Gemini => self.parse_response(op, body),
        }
    }

    fn stream_decoder_native(&self, op: Operation) -> Box<dyn StreamDecoder> {
        match self.family {
            Family::Anthropic => Box::new(anthropic::stream::AnthropicStreamDecoder::native()),
            Family::Gemini => self.stream_decoder(op),
        }
    }

    fn speaks_anthropic(&self) -> bool {
        self.family == Family::Anthropic
    }

    /// Claude on Vertex counts through the `count-tokens` publisher model, the model named in
    /// the body.
    fn count_tokens_request(
        &self,
        request: &RawObject<'_>,
        ctx: RequestContext<'_>,
    ) -> Option<Result<UpstreamRequest, GatewayError>> {
        if self.family != Family::Anthropic {
            return None;
        }
        let model = crate::common::model_for(&self.model_template, ctx.wildcard);
        let native = match anthropic::request::count_tokens_body(
            request,
            &model,
            Some(ANTHROPIC_VERTEX_VERSION),
        ) {
            Ok(native) => native?,
            Err(e) => return Some(Err(e)),
        };
        let mut headers = self.headers.clone();
        anthropic::request::join_beta_header(&mut headers, native.beta.as_deref());
        Some(Ok(UpstreamRequest {
            url: format!("{}/count-tokens:rawPredict", self.models_url),
            headers,
            body: Bytes::from(native.body),
            auth: self.auth.clone(),
            hide_usage_chunk: false,
        }))
    }

    fn parse_error(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> GatewayError {
        crate::errors::parse_error(status, headers, body)
    }
}

#[cfg(test)]
mod tests;
