//! Pieces every adapter needs: the deployment's endpoint and headers (key, `extra_headers`),
//! refusing or dropping parameters a provider cannot take, and wildcard model substitution.

use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::HeaderMap;
use llmux_config::{Config, DeploymentConfig, Diagnostic, EnvSource};
use llmux_types::{GatewayError, RawObject};
use serde_json::{Map, Value};

use crate::registry::AuthStyle;

/// Where a native provider's key, endpoint and defaults come from.
pub struct Endpoint<'a> {
    pub provider: &'static str,
    pub default_base: &'a str,
    pub base_env: &'a [&'a str],
    pub key_env: &'a [&'a str],
    pub auth: AuthStyle,
    /// Path suffixes users often include in `api_base` that the adapter adds itself.
    pub strip_suffixes: &'a [&'a str],
}

/// The resolved base URL and ready-to-send headers (content type, auth, `extra_headers`).
/// `None` when a header is invalid (reported in `diags`); a missing key is only a warning.
pub fn endpoint(
    spec: &Endpoint<'_>,
    dep: &DeploymentConfig,
    config: &Config,
    env: &dyn EnvSource,
    diags: &mut Vec<Diagnostic>,
) -> Option<(String, HeaderMap)> {
    let base = dep
        .api_base
        .clone()
        .or_else(|| {
            spec.base_env
                .iter()
                .find_map(|name| config.env_var(env, name))
        })
        .unwrap_or_else(|| spec.default_base.to_owned());
    let mut base = base.trim_end_matches('/');
    for suffix in spec.strip_suffixes {
        base = base.strip_suffix(suffix).unwrap_or(base);
    }
    let headers = auth_headers(
        dep,
        config,
        env,
        spec.key_env,
        spec.auth,
        true,
        spec.provider,
        diags,
    )?;
    Some((base.to_owned(), headers))
}

/// Content type, the API key (deployment's, else the first set variable of `key_env`) in the
/// provider's auth style, and `extra_headers`. A missing key is a warning when `key_required`;
/// `None` (with an error diagnostic) when a header value is invalid.
#[allow(clippy::too_many_arguments)]
pub fn auth_headers(
    dep: &DeploymentConfig,
    config: &Config,
    env: &dyn EnvSource,
    key_env: &[&str],
    auth: AuthStyle,
    key_required: bool,
    provider: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<HeaderMap> {
    let params_path = format!("{}.litellm_params", dep.path());
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let key = dep
        .api_key
        .as_ref()
        .map(|k| k.expose().to_owned())
        .or_else(|| key_env.iter().find_map(|name| config.env_var(env, name)));
    match key {
        Some(key) => {
            let (name, value) = match auth {
                AuthStyle::Bearer => (http::header::AUTHORIZATION, format!("Bearer {key}")),
                AuthStyle::Header(h) => (HeaderName::from_static(h), key),
            };
            let Ok(mut value) = HeaderValue::from_str(&value) else {
                diags.push(Diagnostic::error(
                    format!("{params_path}.api_key"),
                    "contains characters not allowed in a header",
                ));
                return None;
            };
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        None if key_required => {
            let hint = key_env
                .first()
                .map(|e| format!(" and {e} is not set"))
                .unwrap_or_default();
            diags.push(Diagnostic::warning(
                format!("{params_path}.api_key"),
                format!(
                    "no API key for provider `{provider}`{hint}; requests will be sent without one"
                ),
            ));
        }
        None => {}
    }
    if !extra_headers(dep, &mut headers, diags) {
        return None;
    }
    Some(headers)
}

/// Add the deployment's `extra_headers`; `false` (with a diagnostic) when one is invalid.
pub fn extra_headers(
    dep: &DeploymentConfig,
    headers: &mut HeaderMap,
    diags: &mut Vec<Diagnostic>,
) -> bool {
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
                    format!("{}.litellm_params.extra_headers.{name}", dep.path()),
                    "not a valid HTTP header",
                ));
                return false;
            }
        }
    }
    true
}

/// Refuse (400 naming the parameter) OpenAI parameters `provider` cannot take, unless
/// `drop_params` is on, in which case the adapter simply does not translate them. `n: 1` asks
/// for nothing any provider lacks and is always accepted.
pub fn refuse_unsupported(
    request: &RawObject<'_>,
    unsupported: &[&str],
    provider: &str,
    drop_params: bool,
) -> Result<(), GatewayError> {
    if drop_params {
        return Ok(());
    }
    for key in unsupported {
        if request.get_non_null(key).is_none() {
            continue;
        }
        if *key == "n" && request.decode::<u64>("n").ok().flatten() == Some(1) {
            continue;
        }
        return Err(GatewayError::invalid_request(format!(
            "{provider} does not support parameter `{key}`; remove it or set `litellm_settings.drop_params: true`"
        ))
        .with_param(*key)
        .with_code("unsupported_parameter"));
    }
    Ok(())
}

/// The upstream model for a request: the template with the group's `*` filled in.
pub fn model_for(template: &str, wildcard: Option<&str>) -> String {
    match wildcard {
        Some(w) if template.contains('*') => template.replacen('*', w, 1),
        _ => template.to_owned(),
    }
}

/// A 400 naming the offending parameter.
pub fn invalid(message: impl Into<String>, param: &str) -> GatewayError {
    GatewayError::invalid_request(message).with_param(param)
}

/// A request parameter, else the deployment's `litellm_params` default; `null` counts as absent.
pub fn param(request: &RawObject<'_>, defaults: &Map<String, Value>, key: &str) -> Option<Value> {
    request
        .decode::<Value>(key)
        .ok()
        .flatten()
        .or_else(|| defaults.get(key).cloned())
        .filter(|v| !v.is_null())
}

/// The request's `messages`, decoded for translation.
pub fn messages(request: &RawObject<'_>) -> Result<Vec<Value>, GatewayError> {
    Ok(request
        .decode("messages")
        .map_err(|_| invalid("`messages` must be an array", "messages"))?
        .unwrap_or_default())
}

/// The text of an OpenAI message `content` (a string, or the text parts joined by newlines).
pub fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Append `{"role", "content": blocks}` to a conversation, merging into the previous message when
/// the role repeats (Anthropic and Bedrock require alternating roles).
pub fn push_merged(messages: &mut Vec<Value>, role: &str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    if let Some(last) = messages.last_mut() {
        if last["role"] == role {
            if let Some(existing) = last["content"].as_array_mut() {
                existing.extend(blocks);
                return;
            }
        }
    }
    messages.push(serde_json::json!({"role": role, "content": blocks}));
}

/// Claude's thinking budget for an OpenAI `reasoning_effort` (Anthropic, Bedrock, Vertex).
pub fn claude_thinking_budget(effort: &str) -> Option<u64> {
    match effort {
        "minimal" | "low" => Some(1024),
        "medium" => Some(4096),
        "high" => Some(16384),
        _ => None,
    }
}

/// A JSON request to `url`.
pub fn json_request(
    url: String,
    headers: &HeaderMap,
    body: &Value,
    auth: Option<crate::UpstreamAuth>,
) -> Result<crate::UpstreamRequest, GatewayError> {
    let bytes = serde_json::to_vec(body).map_err(|e| GatewayError::internal(e.to_string()))?;
    Ok(crate::UpstreamRequest {
        url,
        headers: headers.clone(),
        body: bytes::Bytes::from(bytes),
        auth,
        hide_usage_chunk: false,
    })
}

/// A translated (OpenAI-shaped) response body.
pub fn json_response(
    value: &Value,
    usage: Option<llmux_types::Usage>,
) -> Result<crate::TranslatedResponse, GatewayError> {
    let bytes = serde_json::to_vec(value).map_err(|e| GatewayError::internal(e.to_string()))?;
    Ok(crate::TranslatedResponse {
        body: bytes::Bytes::from(bytes),
        usage,
    })
}

/// A `litellm_params` string of the deployment, else the first set environment variable.
pub fn setting(
    dep: &DeploymentConfig,
    config: &Config,
    env: &dyn EnvSource,
    key: &str,
    env_names: &[&str],
) -> Option<String> {
    dep.provider_params
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .or_else(|| env_names.iter().find_map(|n| config.env_var(env, n)))
}

/// Usage from an API that reports uncached input, cache reads and cache writes apart (Anthropic,
/// Bedrock): prompt tokens are their sum, reads are also `cached_tokens`, writes
/// `cache_creation_input_tokens`.
pub fn cache_aware_usage(
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
) -> llmux_types::Usage {
    let mut usage = llmux_types::Usage::new(input + cache_read + cache_write, output);
    if cache_write > 0 {
        usage.cache_creation_input_tokens = Some(cache_write);
    }
    if cache_read > 0 {
        usage.prompt_tokens_details = Some(llmux_types::usage::PromptTokensDetails {
            cached_tokens: Some(cache_read),
        });
    }
    usage
}
