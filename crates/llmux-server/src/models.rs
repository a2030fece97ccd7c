//! Deployments stored in the database (`/model/new|update|delete`): merged with the config
//! file's and applied with `Client::reload`, so they route at once, no restart.

use llmux_config::{AllowListedEnv, Config, ProcessEnv};
use llmux_store::{Kind, ListFilter, Object};
use llmux_types::GatewayError;
use serde_json::{json, Map, Value};

use axum::extract::State;
use llmux_governance::manage::{self, missing, not_found, require_admin, text};

use crate::management::{Answer, Caller, JsonBody, Refusal, Reply};
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
    let stored = gov.store.list(Kind::Model, &ListFilter::default()).await?;
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

// ---------- the /model/* routes ----------

pub async fn model_new(
    State(s): State<AppState>,
    Caller(c): Caller,
    JsonBody(req): JsonBody,
) -> Reply {
    let manage::Caller { gov, principal: p } = c;
    require_admin(&p, "add models")?;
    let name = text(&req, "model_name").ok_or_else(|| missing("model_name"))?;
    let params = req
        .get("litellm_params")
        .filter(|v| v.get("model").is_some())
        .ok_or_else(|| missing("litellm_params.model"))?;
    let id = req
        .get("model_info")
        .and_then(|m| m.get("id"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut info = req
        .get("model_info")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    info.insert("id".into(), json!(id));
    info.insert("db_model".into(), json!(true));
    let mut doc = Map::new();
    doc.insert("model_name".into(), json!(name));
    doc.insert("litellm_params".into(), params.clone());
    doc.insert("model_info".into(), Value::Object(info));
    let obj = Object::new(Kind::Model, id.clone(), doc);
    check_model(&obj, &s.base_config.load())?;
    if !gov.store.insert(&obj).await? {
        return Err(Refusal(
            GatewayError::invalid_request(format!("Model `{id}` already exists."))
                .with_code("already_exists"),
        ));
    }
    apply_db_models(&s).await?;
    gov.invalidate(Kind::Model, &obj.id);
    Ok(Answer(model_view(&obj.data)))
}

pub async fn model_update(
    State(s): State<AppState>,
    Caller(c): Caller,
    JsonBody(req): JsonBody,
) -> Reply {
    let manage::Caller { gov, principal: p } = c;
    require_admin(&p, "update models")?;
    let id = req
        .get("model_info")
        .and_then(|m| m.get("id"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| text(&req, "model_id"))
        .ok_or_else(|| missing("model_info.id"))?;
    let mut obj = gov
        .store
        .get(Kind::Model, &id)
        .await?
        .ok_or_else(|| not_found("Model", &id))?;
    if let Some(n) = text(&req, "model_name") {
        obj.data.insert("model_name".into(), json!(n));
    }
    for section in ["litellm_params", "model_info"] {
        if let Some(Value::Object(changes)) = req.get(section) {
            let target = obj.data.entry(section).or_insert_with(|| json!({}));
            if let Some(t) = target.as_object_mut() {
                for (k, v) in changes {
                    t.insert(k.clone(), v.clone());
                }
            }
        }
    }
    obj.sync_columns();
    check_model(&obj, &s.base_config.load())?;
    gov.store.update(&obj, false).await?;
    apply_db_models(&s).await?;
    gov.invalidate(Kind::Model, &obj.id);
    Ok(Answer(model_view(&obj.data)))
}

pub async fn model_delete(
    State(s): State<AppState>,
    Caller(c): Caller,
    JsonBody(req): JsonBody,
) -> Reply {
    let manage::Caller { gov, principal: p } = c;
    require_admin(&p, "delete models")?;
    let id = text(&req, "id").ok_or_else(|| missing("id"))?;
    if gov
        .store
        .delete(Kind::Model, std::slice::from_ref(&id))
        .await?
        == 0
    {
        return Err(not_found("Model", &id).into());
    }
    apply_db_models(&s).await?;
    gov.invalidate(Kind::Model, &id);
    Ok(Answer(
        json!({"message": format!("Model: {id} deleted successfully")}),
    ))
}

pub async fn model_info(State(s): State<AppState>, Caller(c): Caller) -> Reply {
    let p = c.principal;
    let mut models = all_models(&s);
    if !p.role.is_admin() {
        // A user sees the deployments of the models they may use, without where
        // they are served from or how.
        models.retain(|m| {
            m.get("model_name")
                .and_then(Value::as_str)
                .is_some_and(|name| llmux_governance::may_use_model(&s.client, &p, name))
        });
        for m in &mut models {
            if let Some(params) = m.get_mut("litellm_params").and_then(Value::as_object_mut) {
                params.retain(|k, _| k == "model");
            }
        }
    }
    Ok(Answer(json!({"data": models})))
}
