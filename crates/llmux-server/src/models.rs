//! Deployments stored in the database (`/model/new|update|delete`): merged with the config
//! file's and applied with `Client::reload`, so they route at once, no restart.

use llmux_config::{AllowListedEnv, Config, ProcessEnv};
use llmux_store::{Kind, ListFilter, Object};
use llmux_types::GatewayError;
use serde_json::{json, Map, Value};

use crate::governance::store_error;
use crate::AppState;

/// `litellm_params` keys whose values are secrets: never returned by `/model/info`.
const SECRET_PARAMS: &[&str] = &[
    "api_key",
    "aws_secret_access_key",
    "aws_session_token",
    "client_secret",
    "azure_ad_token",
    "vertex_credentials",
];

fn model_list(objects: &[&Map<String, Value>]) -> String {
    let list: Vec<Value> = objects
        .iter()
        .map(|d| {
            json!({
                "model_name": d.get("model_name"),
                "litellm_params": d.get("litellm_params"),
                "model_info": d.get("model_info"),
            })
        })
        .collect();
    json!({"model_list": list}).to_string()
}

/// Refuse a model the configuration loader would reject, or one naming an environment variable
/// outside `llmux_settings.api_model_env_allowlist`.
pub fn check_model(obj: &Object, base: &Config) -> Result<(), GatewayError> {
    // Credentials files are named by path: an API model gives them inline, or reads the
    // gateway's files through nothing.
    let params = obj.data.get("litellm_params");
    for field in ["vertex_credentials", "aws_web_identity_token"] {
        let path_like = params
            .and_then(|p| p.get(field))
            .and_then(Value::as_str)
            .is_some_and(|v| !v.trim_start().starts_with('{') && !v.starts_with("os.environ/"));
        if path_like {
            return Err(GatewayError::new(
                llmux_types::ErrorKind::PermissionDenied,
                format!("A model added through the API gives `{field}` inline (JSON), not as a file path."),
            )
            .with_param(format!("litellm_params.{field}"))
            .with_code("file_not_allowed"));
        }
    }
    let env = AllowListedEnv::new(&ProcessEnv, &base.api_model_env_allowlist);
    let loaded = llmux_config::load_str(&model_list(&[&obj.data]), &env);
    let refused = env.refused();
    if !refused.is_empty() {
        return Err(GatewayError::new(
            llmux_types::ErrorKind::PermissionDenied,
            format!(
                "Models added through the API may read only the environment variables listed in \
                 llmux_settings.api_model_env_allowlist; not: {}",
                refused.join(", ")
            ),
        )
        .with_param("litellm_params")
        .with_code("env_not_allowed"));
    }
    match loaded {
        Ok(loaded) if loaded.config.deployments.len() == 1 => Ok(()),
        Ok(_) => Err(GatewayError::invalid_request(
            "The model could not be read.",
        )),
        Err(diags) => Err(GatewayError::invalid_request(
            diags
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        )),
    }
}

/// The config file's deployments plus the database's.
pub fn merged(base: &Config, stored: &[Object]) -> Result<Config, GatewayError> {
    let mut config = base.clone();
    if stored.is_empty() {
        return Ok(config);
    }
    let docs: Vec<&Map<String, Value>> = stored.iter().map(|o| &o.data).collect();
    // Stored rows resolve through the same allow-list: a row written before the list changed
    // (or straight into the database) reads nothing else.
    let env = AllowListedEnv::new(&ProcessEnv, &base.api_model_env_allowlist);
    let loaded = llmux_config::load_str(&model_list(&docs), &env).map_err(|diags| {
        GatewayError::invalid_request(
            diags
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    let offset = config.deployments.len();
    for mut d in loaded.config.deployments {
        d.index += offset;
        d.env_allowlist = Some(base.api_model_env_allowlist.clone());
        config.deployments.push(d);
    }
    Ok(config)
}

/// Reload the client with the database's models.
pub async fn apply_db_models(state: &AppState) -> Result<(), GatewayError> {
    let _rebuilding = state.rebuild.lock().await;
    apply_db_models_locked(state).await
}

/// `apply_db_models`, for a caller holding `rebuild`.
pub(crate) async fn apply_db_models_locked(state: &AppState) -> Result<(), GatewayError> {
    let Some(gov) = &state.governance else {
        return Ok(());
    };
    let stored = gov
        .store
        .list(Kind::Model, &ListFilter::default())
        .await
        .map_err(|e| store_error(&e))?;
    let config = merged(&state.base_config.load(), &stored)?;
    let diags = state
        .client
        .reload(config)
        .map_err(|e| GatewayError::invalid_request(e.to_string()))?;
    for d in diags {
        tracing::warn!(path = %d.path, "{}", d.message);
    }
    Ok(())
}

/// A model as `/model/info` shows it, secrets removed.
pub fn model_view(doc: &Map<String, Value>) -> Value {
    let mut params = doc
        .get("litellm_params")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for k in SECRET_PARAMS {
        params.remove(*k);
    }
    json!({"model_name": doc.get("model_name"), "litellm_params": params, "model_info": doc.get("model_info")})
}

/// Every deployment the client routes to.
pub fn all_models(state: &AppState) -> Vec<Value> {
    let snapshot = state.client.snapshot();
    snapshot
        .router
        .deployments()
        .iter()
        .map(|d| {
            let c = &d.config;
            let mut params: Map<String, Value> = c.provider_params.clone();
            for k in SECRET_PARAMS {
                params.remove(*k);
            }
            params.insert("model".into(), json!(c.model));
            if let Some(b) = &c.api_base {
                params.insert("api_base".into(), json!(b));
            }
            let mut info = c.model_info.extra.clone();
            info.insert("id".into(), json!(d.id));
            if let Some(m) = &c.model_info.mode {
                info.insert("mode".into(), json!(m));
            }
            if let Some(n) = c.model_info.max_input_tokens {
                info.insert("max_input_tokens".into(), json!(n));
            }
            if let Some(price) = snapshot.pricing.deployment_price(&d.id, c) {
                info.insert("input_cost_per_token".into(), json!(price.input));
                info.insert("output_cost_per_token".into(), json!(price.output));
            }
            json!({"model_name": d.model_name, "litellm_params": params, "model_info": info})
        })
        .collect()
}
