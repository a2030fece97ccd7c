//! AWS Bedrock adapter: chat through the Converse and ConverseStream APIs (every Bedrock chat
//! model family, one wire format), Claude's own Messages body through InvokeModel for a client
//! speaking Anthropic's dialect, embeddings through InvokeModel for Amazon Titan and Cohere
//! Embed. Requests are SigV4-signed by the core (`UpstreamAuth::SigV4`) with credentials from
//! `litellm_params` or the environment, or carry a Bedrock API key as a bearer token.

pub mod embed;
pub mod request;
pub mod response;
pub mod stream;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION};
use http::HeaderMap;
use llmux_config::{Config, DeploymentConfig, Diagnostic, EnvSource, Secret};
use llmux_types::{GatewayError, RawObject};
use serde_json::{Map, Value};

use crate::auth::{AwsSigning, UpstreamAuth};
use crate::common::setting;
use crate::{
    Operation, Provider, RequestContext, StreamDecoder, StreamFraming, TranslatedResponse,
    UpstreamRequest,
};

/// One Bedrock deployment, precomputed when the configuration loads.
#[derive(Debug, Clone)]
pub struct BedrockTarget {
    base: String,
    headers: HeaderMap,
    model_template: String,
    defaults: Map<String, Value>,
    auth: Option<UpstreamAuth>,
}

/// Percent-encode a model id or ARN as one path segment (`:` and `/` included), as the AWS SDKs do.
fn path_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len() + 8);
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl BedrockTarget {
    pub fn new(
        upstream_model: &str,
        dep: &DeploymentConfig,
        config: &Config,
        env: &dyn EnvSource,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Self> {
        let params_path = format!("{}.litellm_params", dep.path());
        // `bedrock/converse/<id>` and `bedrock/invoke/<id>` name the API LiteLLM uses; llmux
        // speaks Converse to every chat model, so the route prefix only selects the model.
        let model = upstream_model
            .strip_prefix("converse/")
            .or_else(|| upstream_model.strip_prefix("invoke/"))
            .unwrap_or(upstream_model);
        let region = setting(
            dep,
            config,
            env,
            "aws_region_name",
            &["AWS_REGION_NAME", "AWS_REGION", "AWS_DEFAULT_REGION"],
        );
        let region = match region {
            Some(r) => r,
            None => {
                diags.push(Diagnostic::warning(
                    format!("{params_path}.aws_region_name"),
                    "no AWS region set (aws_region_name or AWS_REGION); using us-east-1",
                ));
                "us-east-1".to_owned()
            }
        };
        let base = dep
            .api_base
            .clone()
            .or_else(|| {
                setting(
                    dep,
                    config,
                    env,
                    "aws_bedrock_runtime_endpoint",
                    &["AWS_BEDROCK_RUNTIME_ENDPOINT"],
                )
            })
            .unwrap_or_else(|| format!("https://bedrock-runtime.{region}.amazonaws.com"));
        let mut headers = crate::common::auth_headers(
            dep,
            config,
            env,
            &[],
            crate::registry::AuthStyle::Bearer,
            false,
            "bedrock",
            diags,
        )?;
        let access_key = setting(
            dep,
            config,
            env,
            "aws_access_key_id",
            &["AWS_ACCESS_KEY_ID"],
        );
        let secret_key = setting(
            dep,
            config,
            env,
            "aws_secret_access_key",
            &["AWS_SECRET_ACCESS_KEY"],
        );
        let auth = match (access_key, secret_key) {
            _ if headers.contains_key(AUTHORIZATION) => None,
            (Some(access_key_id), Some(secret)) => {
                Some(UpstreamAuth::SigV4(Arc::new(AwsSigning {
                    access_key_id,
                    secret_access_key: Secret::new(secret),
                    session_token: setting(
                        dep,
                        config,
                        env,
                        "aws_session_token",
                        &["AWS_SESSION_TOKEN"],
                    )
                    .map(Secret::new),
                    region,
                    service: "bedrock",
                })))
            }
            _ => {
                if let Some(token) = config.env_var(env, "AWS_BEARER_TOKEN_BEDROCK") {
                    if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {token}")) {
                        v.set_sensitive(true);
                        headers.insert(AUTHORIZATION, v);
                    }
                } else {
                    diags.push(Diagnostic::warning(
                        format!("{params_path}.aws_access_key_id"),
                        "no AWS credentials (aws_access_key_id + aws_secret_access_key, AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY, or a Bedrock API key); requests will be sent unsigned",
                    ));
                }
                None
            }
        };
        Some(BedrockTarget {
            base: base.trim_end_matches('/').to_owned(),
            headers,
            model_template: model.to_owned(),
            defaults: dep.request_defaults.clone(),
            auth,
        })
    }
}

impl Provider for BedrockTarget {
    fn name(&self) -> &'static str {
        "bedrock"
    }

    fn supports(&self, op: Operation) -> bool {
        match op {
            Operation::Chat => true,
            Operation::Embeddings => embed::family(&self.model_template).is_some(),
            _ => false,
        }
    }

    fn build_request(
        &self,
        op: Operation,
        request: &RawObject<'_>,
        ctx: RequestContext<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        let model = crate::common::model_for(&self.model_template, ctx.wildcard);
        let (action, body) = match op {
            Operation::Embeddings => {
                let family = embed::family(&model).ok_or_else(|| {
                    GatewayError::invalid_request(format!(
                        "bedrock model `{model}` is not an embedding model llmux knows (amazon.titan-embed-*, cohere.embed-*)"
                    ))
                })?;
                ("invoke", embed::build(family, request)?)
            }
            _ => {
                let stream = request
                    .decode::<bool>("stream")
                    .ok()
                    .flatten()
                    .unwrap_or(false);
                if self.speaks_anthropic() {
                    let native = crate::anthropic::request::native_body(
                        request,
                        crate::anthropic::request::NativeTarget::Bedrock,
                        &self.defaults,
                    )?;
                    if let Some(native) = native {
                        let action = if stream {
                            "invoke-with-response-stream"
                        } else {
                            "invoke"
                        };
                        return Ok(UpstreamRequest {
                            url: format!("{}/model/{}/{action}", self.base, path_segment(&model)),
                            headers: self.headers.clone(),
                            body: Bytes::from(native.body),
                            auth: self.auth.clone(),
                            hide_usage_chunk: false,
                        });
                    }
                }
                let body =
                    request::build_converse(request, &model, &self.defaults, ctx.drop_params)?;
                (
                    if stream {
                        "converse-stream"
                    } else {
                        "converse"
                    },
                    body,
                )
            }
        };
        crate::common::json_request(
            format!("{}/model/{}/{action}", self.base, path_segment(&model)),
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
        match op {
            Operation::Embeddings => {
                let family = embed::family(&self.model_template).unwrap_or(embed::Family::Titan);
                let (value, usage) = embed::translate(family, &body, &self.model_template)?;
                crate::common::json_response(&value, usage)
            }
            _ => response::translate(&body, &self.model_template)?.into_response(),
        }
    }

    fn stream_decoder(&self, _op: Operation) -> Box<dyn StreamDecoder> {
        Box::new(stream::BedrockStreamDecoder::new(&self.model_template))
    }

    fn parse_response_native(
        &self,
        op: Operation,
        body: Bytes,
    ) -> Result<TranslatedResponse, GatewayError> {
        if op == Operation::Chat && self.speaks_anthropic() {
            return crate::anthropic::native_response(body);
        }
        self.parse_response(op, body)
    }

    fn stream_decoder_native(&self, op: Operation) -> Box<dyn StreamDecoder> {
        if self.speaks_anthropic() {
            return Box::new(stream::InvokeStreamDecoder::new(
                crate::anthropic::stream::AnthropicStreamDecoder::native(),
            ));
        }
        self.stream_decoder(op)
    }

    /// Claude models take Anthropic's own Messages body through InvokeModel.
    fn speaks_anthropic(&self) -> bool {
        self.model_template.contains("anthropic.")
    }

    /// Bedrock's CountTokens (`/model/{id}/count-tokens`) over the InvokeModel body it would be
    /// sent. Cross-region inference profiles (`us.anthropic...`) cannot count: left to the
    /// gateway.
    fn count_tokens_request(
        &self,
        request: &RawObject<'_>,
        ctx: RequestContext<'_>,
    ) -> Option<Result<UpstreamRequest, GatewayError>> {
        use base64::Engine as _;
        if !self.model_template.starts_with("anthropic.") {
            return None;
        }
        let model = crate::common::model_for(&self.model_template, ctx.wildcard);
        let native = match crate::anthropic::request::native_body(
            request,
            crate::anthropic::request::NativeTarget::Bedrock,
            &self.defaults,
        ) {
            Ok(native) => native?,
            Err(e) => return Some(Err(e)),
        };
        let body = serde_json::json!({"input": {"invokeModel": {
            "body": base64::engine::general_purpose::STANDARD.encode(&native.body)}}});
        Some(crate::common::json_request(
            format!("{}/model/{}/count-tokens", self.base, path_segment(&model)),
            &self.headers,
            &body,
            self.auth.clone(),
        ))
    }

    /// CountTokens refuses the Claude models it cannot count with a 400 (ValidationException),
    /// as it refuses a bad request.
    fn count_refusal_is_clients(&self) -> bool {
        false
    }

    /// CountTokens answers `{"inputTokens": n}`.
    fn parse_count_tokens(&self, body: &[u8]) -> Option<u64> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Counted {
            input_tokens: u64,
        }
        serde_json::from_slice::<Counted>(body)
            .ok()
            .map(|c| c.input_tokens)
    }

    fn stream_framing(&self) -> StreamFraming {
        StreamFraming::AwsEventStream
    }

    fn parse_error(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> GatewayError {
        crate::errors::parse_error(status, headers, body)
    }
}

#[cfg(test)]
mod tests;
