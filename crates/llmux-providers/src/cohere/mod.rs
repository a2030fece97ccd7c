//! Cohere v2 adapter: `/v2/chat` (JSON and SSE, tools, thinking) and `/v2/embed`, Bearer auth
//! (`COHERE_API_KEY` / `CO_API_KEY`). Cohere's request format is close to OpenAI's, so requests
//! translate field by field; responses and stream events are rebuilt in OpenAI's shape.

pub mod stream;

use crate::completion::{AssistantMessage, ChatCompletion, ToolCall};
use bytes::Bytes;
use http::HeaderMap;
use llmux_config::{Config, DeploymentConfig, Diagnostic, EnvSource};
use llmux_types::usage::PromptTokensDetails;
use llmux_types::{ErrorKind, GatewayError, RawObject, Usage};
use serde_json::{json, Map, Value};

use crate::common::{endpoint, Endpoint};
use crate::registry::AuthStyle;
use crate::{
    Operation, Provider, RequestContext, StreamDecoder, TranslatedResponse, UpstreamRequest,
};

pub const DEFAULT_BASE: &str = "https://api.cohere.com";

const UNSUPPORTED: &[&str] = &[
    "logit_bias",
    "n",
    "top_logprobs",
    "modalities",
    "audio",
    "prediction",
    "service_tier",
    "store",
    "parallel_tool_calls",
];

#[derive(Debug, Clone)]
pub struct CohereTarget {
    base: String,
    headers: HeaderMap,
    model_template: String,
    defaults: Map<String, Value>,
}

impl CohereTarget {
    pub fn new(
        upstream_model: &str,
        dep: &DeploymentConfig,
        config: &Config,
        env: &dyn EnvSource,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Self> {
        let spec = Endpoint {
            provider: "cohere",
            default_base: DEFAULT_BASE,
            base_env: &["COHERE_API_BASE"],
            key_env: &["COHERE_API_KEY", "CO_API_KEY"],
            auth: AuthStyle::Bearer,
            strip_suffixes: &["/v2", "/v1"],
        };
        let (base, headers) = endpoint(&spec, dep, config, env, diags)?;
        Some(CohereTarget {
            base,
            headers,
            model_template: upstream_model.to_owned(),
            defaults: dep.request_defaults.clone(),
        })
    }
}

use crate::common::invalid;

/// OpenAI chat request → Cohere `/v2/chat` body.
pub fn build_chat(
    request: &RawObject<'_>,
    model: &str,
    defaults: &Map<String, Value>,
    drop_params: bool,
) -> Result<Value, GatewayError> {
    let get = |key: &str| crate::common::param(request, defaults, key);
    crate::common::refuse_unsupported(request, UNSUPPORTED, "cohere", drop_params)?;
    let messages = crate::common::messages(request)?;
    let messages: Vec<Value> = messages
        .into_iter()
        .map(|mut m| {
            // Cohere has no `developer` role; images are `image_url` parts as in OpenAI.
            if m["role"] == "developer" {
                m["role"] = json!("system");
            }
            if let Some(obj) = m.as_object_mut() {
                obj.remove("name");
                obj.remove("refusal");
            }
            m
        })
        .collect();
    let mut body = json!({"model": model, "messages": messages});
    let map = [
        ("max_completion_tokens", "max_tokens"),
        ("max_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "p"),
        ("top_k", "k"),
        ("seed", "seed"),
        ("frequency_penalty", "frequency_penalty"),
        ("presence_penalty", "presence_penalty"),
        ("tools", "tools"),
        ("logprobs", "logprobs"),
    ];
    for (ours, theirs) in map {
        if let Some(v) = get(ours) {
            if body.get(theirs).is_none() {
                body[theirs] = v;
            }
        }
    }
    match get("stop") {
        Some(Value::String(s)) => body["stop_sequences"] = json!([s]),
        Some(list @ Value::Array(_)) => body["stop_sequences"] = list,
        _ => {}
    }
    if get("stream").and_then(|v| v.as_bool()) == Some(true) {
        body["stream"] = json!(true);
    }
    match get("tool_choice") {
        Some(Value::String(s)) if s == "required" => body["tool_choice"] = json!("REQUIRED"),
        Some(Value::String(s)) if s == "none" => body["tool_choice"] = json!("NONE"),
        _ => {}
    }
    if let Some(format) = get("response_format") {
        match format.get("type").and_then(Value::as_str) {
            Some("json_object") => body["response_format"] = json!({"type": "json_object"}),
            Some("json_schema") => {
                body["response_format"] = json!({"type": "json_object", "json_schema": format.pointer("/json_schema/schema").cloned().unwrap_or(json!({}))});
            }
            _ => {}
        }
    }
    if let Some(effort) = get("reasoning_effort").and_then(|v| v.as_str().map(str::to_owned)) {
        let budget = match effort.as_str() {
            "minimal" | "low" => 1024,
            "medium" => 4096,
            _ => 16384,
        };
        body["thinking"] = json!({"type": "enabled", "token_budget": budget});
    }
    Ok(body)
}

pub fn finish_reason(reason: Option<&str>) -> &'static str {
    match reason {
        Some("MAX_TOKENS") => "length",
        Some("TOOL_CALL") => "tool_calls",
        Some("ERROR") | Some("ERROR_TOXIC") => "content_filter",
        _ => "stop",
    }
}

/// Cohere usage (`tokens`, not the billed units) → OpenAI usage.
pub fn usage(u: &Value) -> Usage {
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let (input, output) = if u.get("tokens").is_some() {
        (n("/tokens/input_tokens"), n("/tokens/output_tokens"))
    } else {
        (
            n("/billed_units/input_tokens"),
            n("/billed_units/output_tokens"),
        )
    };
    let mut usage = Usage::new(input, output);
    if n("/cached_tokens") > 0 {
        usage.prompt_tokens_details = Some(PromptTokensDetails {
            cached_tokens: Some(n("/cached_tokens")),
        });
    }
    usage
}

pub fn translate_chat(body: &[u8]) -> Result<ChatCompletion, GatewayError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        GatewayError::new(
            ErrorKind::UpstreamError,
            format!("cohere returned invalid JSON: {e}"),
        )
    })?;
    let message = &v["message"];
    let mut text = String::new();
    let mut reasoning = String::new();
    for block in message
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("thinking") => {
                reasoning.push_str(block.get("thinking").and_then(Value::as_str).unwrap_or(""))
            }
            _ => {}
        }
    }
    // Cohere v2 tool calls already have OpenAI's shape.
    let calls: Vec<ToolCall> = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|call| {
            let text = |pointer: &str| call.pointer(pointer).and_then(Value::as_str).unwrap_or("");
            ToolCall::function(
                text("/id"),
                text("/function/name"),
                text("/function/arguments").to_owned(),
            )
        })
        .collect();
    if let Some(plan) = message
        .get("tool_plan")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
    {
        reasoning.push_str(plan);
    }
    let out_message = AssistantMessage::new(text, calls).with_reasoning(reasoning);
    let usage = v.get("usage").map(usage).unwrap_or_default();
    Ok(ChatCompletion::single(
        v.get("id").and_then(Value::as_str).unwrap_or(""),
        "",
        out_message,
        finish_reason(v.get("finish_reason").and_then(Value::as_str)),
        Some(usage),
    ))
}

/// OpenAI embeddings request → Cohere `/v2/embed` (text inputs; `input_type` defaults to
/// `search_document`, as LiteLLM does).
pub fn build_embeddings(request: &RawObject<'_>, model: &str) -> Result<Value, GatewayError> {
    let input: Value = request
        .decode("input")
        .ok()
        .flatten()
        .ok_or_else(|| invalid("`input` is required", "input"))?;
    let texts: Vec<Value> = match input {
        Value::String(s) => vec![json!(s)],
        Value::Array(items) if items.iter().all(Value::is_string) => items,
        _ => {
            return Err(invalid(
                "cohere embeddings take text input (token arrays are not supported)",
                "input",
            ))
        }
    };
    let input_type = request
        .decode::<String>("input_type")
        .ok()
        .flatten()
        .unwrap_or_else(|| "search_document".to_owned());
    let mut body = json!({"model": model, "texts": texts, "input_type": input_type, "embedding_types": ["float"]});
    if let Some(d) = request.decode::<u64>("dimensions").ok().flatten() {
        body["output_dimension"] = json!(d);
    }
    Ok(body)
}

pub fn translate_embeddings(body: &[u8], model: &str) -> Result<(Value, Usage), GatewayError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        GatewayError::new(
            ErrorKind::UpstreamError,
            format!("cohere returned invalid JSON: {e}"),
        )
    })?;
    let data: Vec<Value> = v
        .pointer("/embeddings/float")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, e)| json!({"object": "embedding", "index": i, "embedding": e}))
        .collect();
    let tokens = v
        .pointer("/meta/billed_units/input_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let usage = Usage::new(tokens, 0);
    Ok((
        json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
        usage,
    ))
}

/// The client's rerank request (Cohere's shape) with the deployment's model.
pub fn build_rerank(request: &RawObject<'_>, model: &str) -> Value {
    let mut body: Map<String, Value> = request
        .iter()
        .filter(|(k, _)| !crate::GATEWAY_PARAMS.contains(k))
        .filter_map(|(k, v)| {
            serde_json::from_str(v.get())
                .ok()
                .map(|v| (k.to_owned(), v))
        })
        .collect();
    body.insert("model".into(), json!(model));
    Value::Object(body)
}

impl Provider for CohereTarget {
    fn name(&self) -> &'static str {
        "cohere"
    }

    fn supports(&self, op: Operation) -> bool {
        matches!(
            op,
            Operation::Chat | Operation::Embeddings | Operation::Rerank
        )
    }

    fn build_request(
        &self,
        op: Operation,
        request: &RawObject<'_>,
        ctx: RequestContext<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        let model = crate::common::model_for(&self.model_template, ctx.wildcard);
        let (path, body) = match op {
            Operation::Embeddings => ("/v2/embed", build_embeddings(request, &model)?),
            Operation::Rerank => ("/v2/rerank", build_rerank(request, &model)),
            _ => (
                "/v2/chat",
                build_chat(request, &model, &self.defaults, ctx.drop_params)?,
            ),
        };
        crate::common::json_request(format!("{}{path}", self.base), &self.headers, &body, None)
    }

    fn parse_response(
        &self,
        op: Operation,
        body: Bytes,
    ) -> Result<TranslatedResponse, GatewayError> {
        match op {
            Operation::Embeddings => {
                let (mut value, usage) = translate_embeddings(&body, &self.model_template)?;
                if value["model"] == "" {
                    value["model"] = json!(self.model_template);
                }
                crate::common::json_response(&value, Some(usage))
            }
            // Rerank is Cohere's own shape on both sides: passed through unchanged.
            Operation::Rerank => Ok(TranslatedResponse { body, usage: None }),
            _ => {
                // Cohere's chat answer does not name its model.
                let mut completion = translate_chat(&body)?;
                completion.model.clone_from(&self.model_template);
                completion.into_response()
            }
        }
    }

    fn stream_decoder(&self, _op: Operation) -> Box<dyn StreamDecoder> {
        Box::new(stream::CohereStreamDecoder::new(&self.model_template))
    }

    fn parse_error(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> GatewayError {
        crate::errors::parse_error(status, headers, body)
    }
}

#[cfg(test)]
mod tests;
