//! The loading pipeline: YAML → JSON tree → environment references → raw structs (section by
//! section, entry by entry, so one bad entry does not hide the others) → typed `Config`.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::env::{resolve, EnvSource, Overlay};
use crate::raw::{
    RawGeneralSettings, RawLitellmParams, RawLitellmSettings, RawLlmuxSettings, RawModelEntry,
};
use crate::{Config, DeploymentConfig, Diagnostic, Loaded, ModelInfo, Secret};

/// OpenAI request parameters: in `litellm_params` they are defaults for requests that omit them.
pub const OPENAI_REQUEST_PARAMS: &[&str] = &[
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "seed",
    "user",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "reasoning_effort",
    "service_tier",
    "store",
    "metadata",
    "modalities",
    "audio",
    "prediction",
    "verbosity",
    "web_search_options",
    "stream_options",
    "functions",
    "function_call",
    "dimensions",
    "encoding_format",
    "suffix",
    "echo",
    "best_of",
];

/// `litellm_params` keys LiteLLM reads for particular providers or features. They are kept as
/// provider parameters; the adapter that needs one reads it, and the router warns about any that
/// the deployment's provider does not use.
pub const PROVIDER_SPECIFIC_PARAMS: &[&str] = &[
    "vertex_project",
    "vertex_location",
    "vertex_credentials",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "aws_region_name",
    "aws_profile_name",
    "aws_role_name",
    "aws_session_name",
    "aws_web_identity_token",
    "aws_bedrock_runtime_endpoint",
    "azure_ad_token",
    "azure_ad_token_provider",
    "tenant_id",
    "client_id",
    "client_secret",
    "azure_username",
    "azure_password",
    "region_name",
    "input_cost_per_token",
    "output_cost_per_token",
    "input_cost_per_second",
    "output_cost_per_second",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "tags",
    "max_parallel_requests",
    "litellm_credential_name",
    "use_in_pass_through",
    "merge_reasoning_content_in_choices",
    "cache_control_injection_points",
    "num_retries",
    "max_budget",
    "budget_duration",
    "configurable_clientside_auth_params",
    "watsonx_region_name",
    "base_model",
    "headers",
    "use_litellm_proxy",
    "thinking",
    "safety_settings",
];

const KNOWN_TOP_LEVEL: &[&str] = &[
    "include",
    "credential_list",
    "guardrails",
    "mcp_servers",
    "mcp_aliases",
    "files_settings",
    "assistant_settings",
    "finetune_settings",
    "vector_store_registry",
    "callback_settings",
    "search_tools",
    "prompts",
    "model_group_settings",
    "batch_settings",
];

/// Callbacks llmux runs (Prometheus metrics are on whether or not they are named).
const SUPPORTED_CALLBACKS: &[&str] = &[
    "prometheus",
    "otel",
    "langfuse",
    "datadog",
    "s3",
    "generic_api",
    "jsonl",
];

const KNOWN_LITELLM_SETTINGS: &[&str] = &[
    "num_retries",
    "callbacks",
    "success_callback",
    "failure_callback",
    "service_callback",
    "set_verbose",
    "json_logs",
    "default_fallbacks",
    "fallbacks",
    "context_window_fallbacks",
    "content_policy_fallbacks",
    "turn_off_message_logging",
    "redact_user_api_key_info",
    "langfuse_default_tags",
    "max_budget",
    "budget_duration",
    "default_team_settings",
    "default_internal_user_params",
    "default_key_generate_params",
    "upperbound_key_generate_params",
    "modify_params",
    "enable_preview_features",
    "allowed_fails",
    "force_ipv4",
    "ssl_verify",
    "store_audit_logs",
    "disable_end_user_cost_tracking",
    "guardrails",
    "global_disable_no_log_param",
    "return_response_headers",
    "public_model_groups",
    "key_generation_settings",
    "enable_json_schema_validation",
    "extra_spend_tag_headers",
    "cache_responses",
    "default_max_internal_user_budget",
    "max_internal_user_budget",
    "internal_user_budget_duration",
    "max_end_user_budget",
    "callback_settings",
    "model_group_alias_map",
    "telemetry",
    "drop_params_for_model",
    "add_function_to_prompt",
    "default_internal_user_settings",
    "disable_token_counter",
    "request_timeout",
];

const KNOWN_GENERAL_SETTINGS: &[&str] = &[
    "database_connection_pool_limit",
    "database_connection_timeout",
    "allow_requests_on_db_unavailable",
    "proxy_batch_write_at",
    "disable_master_key_return",
    "disable_retry_on_max_parallel_request_limit_error",
    "disable_reset_budget",
    "disable_adding_master_key_hash_to_db",
    "enable_jwt_auth",
    "litellm_jwtauth",
    "enforce_user_param",
    "allowed_routes",
    "admin_only_routes",
    "alerting_args",
    "alert_types",
    "alert_to_webhook_url",
    "store_model_in_db",
    "store_prompts_in_spend_logs",
    "health_check_details",
    "max_parallel_requests",
    "global_max_parallel_requests",
    "infer_model_from_keys",
    "maximum_spend_logs_retention_period",
    "maximum_spend_logs_retention_interval",
    "custom_auth",
    "custom_key_generate",
    "ui_access_mode",
    "allowed_ips",
    "use_x_forwarded_for",
    "service_account_settings",
    "pass_through_endpoints",
    "key_management_system",
    "key_management_settings",
    "use_azure_key_vault",
    "use_google_kms",
    "spend_report_frequency",
    "forward_openai_org_id",
    "forward_client_headers_to_llm_api",
    "user_header_name",
    "enable_oauth2_auth",
    "use_client_credentials_pass_through_routes",
    "allow_client_side_credentials",
    "supported_db_objects",
    "disable_prisma_schema_update",
    "proxy_budget_rescheduler_min_time",
    "proxy_budget_rescheduler_max_time",
    "embedding_model",
    "default_team_disabled",
    "enable_public_model_hub",
    "custom_sso",
    "public_routes",
    "max_response_size_mb",
    "otel",
    "master_key_hash",
];

pub(crate) fn load(text: &str, base_env: &dyn EnvSource) -> Result<Loaded, Vec<Diagnostic>> {
    match load_lenient(text, base_env) {
        (Some(config), diagnostics) if !diagnostics.iter().any(Diagnostic::is_error) => {
            Ok(Loaded {
                config,
                diagnostics,
            })
        }
        (_, diagnostics) => Err(diagnostics),
    }
}

/// Load what can be loaded: entries with errors are left out of the config and reported.
/// `None` only when the text is not a YAML mapping at all.
pub(crate) fn load_lenient(
    text: &str,
    base_env: &dyn EnvSource,
) -> (Option<Config>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut root = match parse_yaml(text) {
        Ok(v) => v,
        Err(d) => return (None, vec![d]),
    };
    let map = match &mut root {
        Value::Null => Map::new(),
        Value::Object(m) => std::mem::take(m),
        _ => {
            return (
                None,
                vec![Diagnostic::error(
                    "",
                    "the configuration must be a YAML mapping",
                )],
            )
        }
    };

    let mut config = Config::default();
    let mut raw_router = Map::new();
    let mut litellm_router = Map::new();

    // environment_variables first: the rest of the file may refer to them.
    let file_vars = match map.get("environment_variables") {
        Some(vars) => environment_variables(vars, base_env, &mut diags),
        None => Vec::new(),
    };
    let overlay = Overlay {
        file_vars: &file_vars,
        base: base_env,
    };

    for (key, mut value) in map {
        if key == "environment_variables" {
            continue;
        }
        resolve(&mut value, &overlay, &key, &mut diags);
        match key.as_str() {
            "model_list" => model_list(value, &mut config, &mut diags),
            "litellm_settings" => litellm_settings(
                value,
                &mut config,
                &mut litellm_router,
                &overlay,
                &mut diags,
            ),
            "general_settings" => general_settings(value, &mut config, &mut diags),
            "router_settings" => router_settings(value, &mut raw_router, &mut diags),
            "llmux_settings" => llmux_settings(value, &mut config, &mut diags),
            _ => diags.push(unsupported(&key, KNOWN_TOP_LEVEL, &key)),
        }
    }

    // LiteLLM reads some router keys from litellm_settings too; router_settings wins.
    for (key, value) in litellm_router {
        raw_router.entry(key).or_insert(value);
    }
    config.router = crate::router::parse(&raw_router, &mut diags);
    // `cache: true` without a type means Redis when the fleet's Redis is configured too.
    if let Some(cache) = config.cache.as_mut() {
        let r = &config.router.redis;
        if cache.type_inferred && (r.url.is_some() || r.host.is_some()) {
            cache.cache_type = crate::CacheType::Redis;
        }
    }
    config.environment_variables = file_vars;
    // Without a master key there are no credentials to check: say so rather than serve the
    // metrics to anyone while the operator believes they are closed.
    if config.require_auth_for_metrics_endpoint == Some(true) && config.master_key.is_none() {
        diags.push(Diagnostic::warning(
            "litellm_settings.require_auth_for_metrics_endpoint",
            "has no effect without general_settings.master_key: /metrics is open to anyone who can reach the gateway",
        ));
    }
    (Some(config), diags)
}

fn parse_yaml(text: &str) -> Result<Value, Diagnostic> {
    let mut yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
            .unwrap_or_default();
        Diagnostic::error("", format!("invalid YAML{at}: {e}"))
    })?;
    yaml.apply_merge()
        .map_err(|e| Diagnostic::error("", format!("invalid YAML merge key: {e}")))?;
    Ok(yaml_to_json(yaml))
}

fn yaml_to_json(value: serde_yaml_ng::Value) -> Value {
    use serde_yaml_ng::Value as Y;
    match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
                    .unwrap_or(Value::Null)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(yaml_to_json).collect()),
        Y::Mapping(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let key = match yaml_to_json(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(tagged) => yaml_to_json(tagged.value),
    }
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "True".into() } else { "False".into() }),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

fn environment_variables(
    vars: &Value,
    env: &dyn EnvSource,
    diags: &mut Vec<Diagnostic>,
) -> Vec<(String, String)> {
    let Value::Object(map) = vars else {
        diags.push(Diagnostic::error(
            "environment_variables",
            "expected a mapping of NAME: value",
        ));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, value) in map {
        let path = format!("environment_variables.{name}");
        let mut value = value.clone();
        resolve(&mut value, env, &path, diags);
        match scalar_text(&value) {
            Some(text) => out.push((name.clone(), text)),
            None if value.is_null() => {}
            None => diags.push(Diagnostic::error(path, "expected a scalar value")),
        }
    }
    out
}

/// Deserialize `value` into `T`, reporting type errors and ignored keys with their paths.
fn deserialize_at<T: DeserializeOwned>(
    value: Value,
    path: &str,
    diags: &mut Vec<Diagnostic>,
) -> (Option<T>, Vec<String>) {
    let mut ignored = Vec::new();
    let result = {
        let mut on_ignored = |p: serde_ignored::Path<'_>| ignored.push(ignored_path(&p));
        let ignoring = serde_ignored::Deserializer::new(value, &mut on_ignored);
        serde_path_to_error::deserialize::<_, T>(ignoring)
    };
    match result {
        Ok(v) => (Some(v), ignored),
        Err(e) => {
            let inner = e.path().to_string();
            let full = join_path(path, if inner == "." { "" } else { &inner });
            diags.push(Diagnostic::error(full, e.into_inner().to_string()));
            (None, ignored)
        }
    }
}

fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        P::Map { parent, key } => join_path(&ignored_path(parent), key),
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}

fn join_path(parent: &str, child: &str) -> String {
    match (parent.is_empty(), child.is_empty()) {
        (_, true) => parent.to_owned(),
        (true, false) => child.to_owned(),
        (false, false) if child.starts_with('[') => format!("{parent}{child}"),
        (false, false) => format!("{parent}.{child}"),
    }
}

fn unsupported(path: &str, known: &[&str], key: &str) -> Diagnostic {
    if known.contains(&key) {
        Diagnostic::warning(
            path,
            format!("`{key}` is a LiteLLM setting llmux does not support yet; ignored"),
        )
    } else {
        Diagnostic::warning(path, format!("unknown key `{key}`; ignored"))
    }
}

fn report_ignored(
    section: &str,
    known: &[&str],
    ignored: Vec<String>,
    diags: &mut Vec<Diagnostic>,
) {
    for inner in ignored {
        let key = inner.rsplit('.').next().unwrap_or(&inner).to_owned();
        let top_level = !inner.contains('.') && !inner.contains('[');
        let known_here = if top_level { known } else { &[] };
        diags.push(unsupported(&join_path(section, &inner), known_here, &key));
    }
}

pub(crate) fn seconds(
    value: Option<f64>,
    path: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Duration> {
    let v = value?;
    if v > 0.0 && v < 1.0e9 {
        Some(Duration::from_secs_f64(v))
    } else {
        diags.push(Diagnostic::error(
            path,
            format!("must be a positive number of seconds, got {v}"),
        ));
        None
    }
}

fn model_list(value: Value, config: &mut Config, diags: &mut Vec<Diagnostic>) {
    let entries = match value {
        Value::Null => return,
        Value::Array(entries) => entries,
        _ => {
            diags.push(Diagnostic::error("model_list", "expected a list of models"));
            return;
        }
    };
    for (index, entry) in entries.into_iter().enumerate() {
        let path = format!("model_list[{index}]");
        let (raw, ignored) = deserialize_at::<RawModelEntry>(entry, &path, diags);
        for inner in ignored {
            diags.push(Diagnostic::warning(
                join_path(&path, &inner),
                "unknown key; ignored",
            ));
        }
        if let Some(raw) = raw {
            if let Some(deployment) = deployment(index, raw, diags) {
                config.deployments.push(deployment);
            }
        }
    }
}

fn deployment(
    index: usize,
    raw: RawModelEntry,
    diags: &mut Vec<Diagnostic>,
) -> Option<DeploymentConfig> {
    let path = format!("model_list[{index}]");
    let params_path = format!("{path}.litellm_params");
    let RawLitellmParams {
        model,
        custom_llm_provider,
        api_base,
        api_key,
        api_version,
        organization,
        timeout,
        stream_timeout,
        connect_timeout,
        max_retries,
        rpm,
        tpm,
        weight,
        order,
        extra_headers,
        mock_response,
        other,
    } = raw.litellm_params;

    let mut ok = true;
    if raw.model_name.trim().is_empty() {
        diags.push(Diagnostic::error(
            format!("{path}.model_name"),
            "must not be empty",
        ));
        ok = false;
    }
    if raw.model_name.matches('*').count() > 1 {
        diags.push(Diagnostic::error(
            format!("{path}.model_name"),
            "at most one `*` wildcard is supported",
        ));
        ok = false;
    }
    if model.trim().is_empty() {
        diags.push(Diagnostic::error(
            format!("{params_path}.model"),
            "must not be empty",
        ));
        ok = false;
    }
    let api_base = api_base
        .map(|b| b.trim().to_owned())
        .filter(|b| !b.is_empty());
    if let Some(base) = &api_base {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            diags.push(Diagnostic::error(
                format!("{params_path}.api_base"),
                format!("must be an http:// or https:// URL, got {base:?}"),
            ));
            ok = false;
        }
    }
    if let Some(w) = weight {
        if w.is_nan() || w < 0.0 {
            diags.push(Diagnostic::error(
                format!("{params_path}.weight"),
                "must not be negative",
            ));
            ok = false;
        }
    }
    let timeout = seconds(timeout, &format!("{params_path}.timeout"), diags);
    let stream_timeout = seconds(
        stream_timeout,
        &format!("{params_path}.stream_timeout"),
        diags,
    );
    let connect_timeout = seconds(
        connect_timeout,
        &format!("{params_path}.connect_timeout"),
        diags,
    );

    let mut headers = Vec::new();
    for (name, value) in extra_headers.unwrap_or_default() {
        let header_path = format!("{params_path}.extra_headers.{name}");
        match scalar_text(&value) {
            Some(text) => headers.push((name, text)),
            None => {
                diags.push(Diagnostic::error(
                    header_path,
                    "header values must be scalars",
                ));
                ok = false;
            }
        }
    }

    let mut request_defaults = Map::new();
    let mut provider_params = Map::new();
    for (key, value) in other {
        if value.is_null() {
            continue;
        }
        if OPENAI_REQUEST_PARAMS.contains(&key.as_str()) {
            request_defaults.insert(key, value);
        } else {
            provider_params.insert(key, value);
        }
    }

    let model_info = model_info(
        raw.model_info.unwrap_or_default(),
        &format!("{path}.model_info"),
        diags,
    );
    if !ok {
        return None;
    }
    Some(DeploymentConfig {
        index,
        model_name: raw.model_name.trim().to_owned(),
        model: model.trim().to_owned(),
        custom_llm_provider: custom_llm_provider.filter(|p| !p.is_empty()),
        api_base,
        api_key: api_key.filter(|k| !k.is_empty()).map(Secret::new),
        api_version,
        organization,
        timeout,
        stream_timeout,
        connect_timeout,
        max_retries,
        rpm: rpm.or(raw.rpm),
        tpm: tpm.or(raw.tpm),
        weight,
        order,
        extra_headers: headers,
        request_defaults,
        mock_response,
        provider_params,
        model_info,
        env_allowlist: None,
    })
}

fn model_info(mut map: Map<String, Value>, path: &str, diags: &mut Vec<Diagnostic>) -> ModelInfo {
    let mut take_u64 = |key: &str, map: &mut Map<String, Value>| -> Option<u64> {
        let v = map.remove(key)?;
        match &v {
            Value::Null => None,
            Value::Number(n) => n
                .as_u64()
                .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
            Value::String(s) => crate::lenient::parse_u64_text(s),
            _ => None,
        }
        .or_else(|| {
            diags.push(Diagnostic::warning(
                format!("{path}.{key}"),
                "expected a non-negative integer; ignored",
            ));
            None
        })
    };
    let max_input_tokens = take_u64("max_input_tokens", &mut map);
    let max_output_tokens = take_u64("max_output_tokens", &mut map).or_else(|| {
        // LiteLLM's older name for the output limit.
        map.get("max_tokens").and_then(Value::as_u64)
    });
    let id = map.remove("id").and_then(|v| scalar_text(&v));
    let mode = map.remove("mode").and_then(|v| scalar_text(&v));
    ModelInfo {
        id,
        mode,
        max_input_tokens,
        max_output_tokens,
        extra: map,
    }
}

fn litellm_settings(
    value: Value,
    config: &mut Config,
    router_keys: &mut Map<String, Value>,
    env: &dyn EnvSource,
    diags: &mut Vec<Diagnostic>,
) {
    let mut value = match value {
        Value::Null => return,
        v => v,
    };
    if let Value::Object(map) = &mut value {
        for key in crate::router::LITELLM_SETTINGS_ROUTER_KEYS {
            if let Some(v) = map.remove(*key) {
                router_keys.insert((*key).to_owned(), v);
            }
        }
    }
    let (raw, ignored) = deserialize_at::<RawLitellmSettings>(value, "litellm_settings", diags);
    report_ignored("litellm_settings", KNOWN_LITELLM_SETTINGS, ignored, diags);
    if let Some(raw) = raw {
        config.drop_params = raw.drop_params.unwrap_or(false);
        config.require_auth_for_metrics_endpoint = raw.require_auth_for_metrics_endpoint;
        config.turn_off_message_logging = raw.turn_off_message_logging.unwrap_or(false);
        let redis_in_env = ["REDIS_URL", "REDIS_HOST"]
            .iter()
            .any(|v| env.var(v).is_some_and(|v| !v.is_empty()));
        config.cache = crate::cache::parse(raw.cache, raw.cache_params, redis_in_env, diags);
        for (name, value) in raw.s3_callback_params.unwrap_or_default() {
            let value = match value {
                Value::String(s) => s,
                Value::Null => continue,
                other => other.to_string(),
            };
            config.s3_callback_params.push((name, value));
        }
        for (field, names, on_success, on_failure) in [
            ("callbacks", raw.callbacks, true, true),
            ("success_callback", raw.success_callback, true, false),
            ("failure_callback", raw.failure_callback, false, true),
        ] {
            for name in names
                .map(crate::raw::OneOrMany::into_vec)
                .unwrap_or_default()
            {
                if !SUPPORTED_CALLBACKS.contains(&name.as_str()) {
                    diags.push(Diagnostic::warning(
                        format!("litellm_settings.{field}"),
                        format!(
                            "callback `{name}` is not supported yet and is ignored (supported: {})",
                            SUPPORTED_CALLBACKS.join(", ")
                        ),
                    ));
                }
                match config.callbacks.iter_mut().find(|c| c.name == name) {
                    Some(c) => {
                        c.on_success |= on_success;
                        c.on_failure |= on_failure;
                    }
                    None => config.callbacks.push(crate::Callback {
                        name,
                        on_success,
                        on_failure,
                    }),
                }
            }
        }
        if let Some(t) = seconds(
            raw.request_timeout,
            "litellm_settings.request_timeout",
            diags,
        ) {
            config.request_timeout = t;
        }
    }
}

fn general_settings(value: Value, config: &mut Config, diags: &mut Vec<Diagnostic>) {
    if value.is_null() {
        return;
    }
    // A master key that is configured but resolves to nothing (an unset `os.environ/` variable,
    // an empty string) must not switch authentication off: that would serve every request
    // without a key while the operator believes the gateway is locked.
    let master_key_named = value
        .get("master_key")
        .is_some_and(|k| k.as_str().is_none_or(|k| k.trim().is_empty()));
    if master_key_named {
        diags.push(Diagnostic::error(
            "general_settings.master_key",
            "is configured but empty (is its environment variable set?); set it, or remove \
             `master_key` to run without authentication",
        ));
    }
    let (raw, ignored) = deserialize_at::<RawGeneralSettings>(value, "general_settings", diags);
    report_ignored("general_settings", KNOWN_GENERAL_SETTINGS, ignored, diags);
    let Some(raw): Option<RawGeneralSettings> = raw else {
        return;
    };
    config.master_key = raw
        .master_key
        .filter(|k| !k.trim().is_empty())
        .map(Secret::new);
    config.database_url = raw.database_url.filter(|u| !u.is_empty());
    if let Some(off) = raw.disable_spend_logs {
        config.disable_spend_logs = off;
    }
    for channel in raw
        .alerting
        .map(crate::raw::OneOrMany::into_vec)
        .unwrap_or_default()
    {
        if !matches!(channel.as_str(), "slack" | "webhook") {
            diags.push(Diagnostic::warning(
                "general_settings.alerting",
                format!("alerting `{channel}` is not supported and is ignored (supported: slack, webhook)"),
            ));
            continue;
        }
        config.alerting.push(channel);
    }
    if let Some(t) = seconds(
        raw.alerting_threshold,
        "general_settings.alerting_threshold",
        diags,
    ) {
        config.alerting_threshold = t;
    }
    config.background_health_checks = raw.background_health_checks.unwrap_or(false);
    if let Some(t) = seconds(
        raw.health_check_interval,
        "general_settings.health_check_interval",
        diags,
    ) {
        config.health_check_interval = t.max(std::time::Duration::from_secs(1));
    }
    if let Some(mb) = raw.max_request_size_mb {
        if mb > 0.0 && mb <= 4096.0 {
            config.max_request_body_bytes = (mb * 1024.0 * 1024.0) as usize;
        } else {
            diags.push(Diagnostic::error(
                "general_settings.max_request_size_mb",
                "must be between 0 and 4096",
            ));
        }
    }
}

fn router_settings(value: Value, raw_router: &mut Map<String, Value>, diags: &mut Vec<Diagnostic>) {
    match value {
        Value::Null => {}
        Value::Object(map) => raw_router.extend(map),
        _ => diags.push(Diagnostic::error("router_settings", "expected a mapping")),
    }
}

fn llmux_settings(value: Value, config: &mut Config, diags: &mut Vec<Diagnostic>) {
    if value.is_null() {
        return;
    }
    let (raw, ignored) = deserialize_at::<RawLlmuxSettings>(value, "llmux_settings", diags);
    report_ignored("llmux_settings", &[], ignored, diags);
    if let Some(raw) = raw {
        if let Some(t) = seconds(raw.drain_timeout, "llmux_settings.drain_timeout", diags) {
            config.drain_timeout = t;
        }
        if let Some(t) = seconds(raw.connect_timeout, "llmux_settings.connect_timeout", diags) {
            config.connect_timeout = t;
        }
        if let Some(t) = seconds(
            raw.client_header_timeout,
            "llmux_settings.client_header_timeout",
            diags,
        ) {
            config.client_header_timeout = t;
        }
        if let Some(t) = seconds(
            raw.client_body_timeout,
            "llmux_settings.client_body_timeout",
            diags,
        ) {
            config.client_body_timeout = t;
        }
        if let Some(mb) = raw.max_buffered_response_mb {
            if (1.0..=1_048_576.0).contains(&mb) {
                config.max_buffered_response_bytes = (mb * 1024.0 * 1024.0) as usize;
            } else {
                diags.push(Diagnostic::error(
                    "llmux_settings.max_buffered_response_mb",
                    "must be between 1 and 1048576",
                ));
            }
        }
        match raw.spend_log_durability.as_deref() {
            None | Some("batched") => {}
            Some("sync") => config.spend_log_durability = crate::SpendDurability::Sync,
            Some(other) => diags.push(Diagnostic::error(
                "llmux_settings.spend_log_durability",
                format!("must be `batched` or `sync`, got `{other}`"),
            )),
        }
        config.mask_pii_in_logs = raw.mask_pii_in_logs.unwrap_or(false);
        config.jsonl_log_path = raw.jsonl_log_path;
        if let Some(size) = raw.telemetry_queue_size {
            if size == 0 {
                diags.push(Diagnostic::error(
                    "llmux_settings.telemetry_queue_size",
                    "must be at least 1",
                ));
            } else {
                config.telemetry_queue_size = usize::try_from(size).unwrap_or(usize::MAX);
            }
        }
        if let Some(keys) = raw.metrics_max_keys {
            config.metrics_max_keys = usize::try_from(keys).unwrap_or(usize::MAX);
        }
        if let Some(cutoff) = raw.budget_stream_cutoff {
            config.budget_stream_cutoff = cutoff;
        }
        match raw.redis_deadline_ms {
            None => {}
            Some(ms) if (1..=10_000).contains(&ms) => {
                config.redis_deadline = std::time::Duration::from_millis(ms);
            }
            Some(ms) => diags.push(Diagnostic::error(
                "llmux_settings.redis_deadline_ms",
                format!("must be between 1 and 10000 (milliseconds), got {ms}"),
            )),
        }
        if let Some(names) = raw.api_model_env_allowlist {
            config.api_model_env_allowlist = names.into_iter().filter(|n| !n.is_empty()).collect();
        }
        if let Some(p) = raw.database_path.filter(|p| !p.is_empty()) {
            config.database_path = p;
        }
        config.model_cost_map = raw.model_cost_map.filter(|p| !p.is_empty());
        if let Some(t) = seconds(
            raw.model_cost_map_reload_interval,
            "llmux_settings.model_cost_map_reload_interval",
            diags,
        ) {
            config.model_cost_map_reload_interval = t;
        }
        config.alert_webhook_url = raw.alert_webhook_url.filter(|u| !u.is_empty());
        if let Some(n) = raw.spend_queue_capacity {
            if (1..=10_000_000).contains(&n) {
                config.spend_queue_capacity = n as usize;
            } else {
                diags.push(Diagnostic::error(
                    "llmux_settings.spend_queue_capacity",
                    "must be between 1 and 10000000",
                ));
            }
        }
    }
}
