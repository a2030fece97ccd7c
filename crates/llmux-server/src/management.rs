//! The management API's HTTP side: LiteLLM's paths (`ROUTES`), the `Caller` and `JsonBody`
//! extractors, and each path routed to its operation in `llmux_governance::manage` (the rules
//! live there; database-stored models, which reload this server's routing, are in `models.rs`).

use std::future::Future;

use axum::extract::{FromRequest, FromRequestParts, Path, Query as QueryParams, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, on, post, MethodFilter, MethodRouter};
use axum::Router;
use llmux_governance::manage::{
    self, keys, owners, spend, teams, ApiResult, Body, Query, BUDGET, CUSTOMER, ORG, TEAM, USER,
};
use llmux_store::Kind;
use llmux_types::{ErrorKind, GatewayError};

use crate::body::ApiBody;
use crate::AppState;

const POST: MethodFilter = MethodFilter::POST;
const PATCH: MethodFilter = MethodFilter::PATCH;

/// Every management route and its methods (the table lives with the rules, which also match
/// keys' `allowed_routes` against it). The router is built from it (a route not listed there
/// does not exist), so the authorization matrix test that walks it covers them all.
pub use llmux_governance::manage::ROUTES;

pub fn routes() -> Router<AppState> {
    ROUTES
        .iter()
        .fold(Router::new(), |router, (path, _)| match handler(path) {
            Some(h) => router.route(path, h),
            None => router,
        })
}

/// The handler of a path in `ROUTES`.
fn handler(path: &str) -> Option<MethodRouter<AppState>> {
    Some(match path {
        "/key/generate" => with_body(POST, keys::key_generate),
        "/key/update" => with_body(POST, keys::key_update),
        "/key/delete" => with_body(POST, keys::key_delete),
        "/key/info" => with_query(keys::key_info),
        "/key/list" => with_query(keys::key_list),
        "/key/regenerate" => with_body(POST, keys::key_regenerate),
        "/key/{key}/regenerate" => post(
            |Caller(c): Caller, Path(key): Path<String>, JsonBody(req): JsonBody| async move {
                answer(keys::key_regenerate_path(c, key, req).await)
            },
        ),
        "/key/block" => with_body(POST, |c, req| keys::set_key_blocked(c, req, true)),
        "/key/unblock" => with_body(POST, |c, req| keys::set_key_blocked(c, req, false)),
        "/user/new" => with_body(POST, owners::user_new),
        "/user/update" => with_body(POST, |c, req| {
            manage::admin_update(c, req, &USER, "update users")
        }),
        "/user/delete" => with_body(POST, |c, req| {
            owners::delete_owners(c, req, &USER, "user_ids", "deleted_users")
        }),
        "/user/info" => with_query(owners::user_info),
        "/user/list" => with_query(owners::user_list),
        "/team/new" => with_body(POST, teams::team_new),
        "/team/update" => with_body(POST, teams::team_update),
        "/team/delete" => with_body(POST, |c, req| {
            owners::delete_owners(c, req, &TEAM, "team_ids", "deleted_teams")
        }),
        "/team/info" => with_query(teams::team_info),
        "/team/list" => with_query(teams::team_list),
        "/team/member_add" => with_body(POST, teams::team_member_add),
        "/team/member_delete" => with_body(POST, teams::team_member_delete),
        "/team/block" => with_body(POST, |c, req| {
            owners::set_blocked(c, req, &TEAM, "team_id", true)
        }),
        "/team/unblock" => with_body(POST, |c, req| {
            owners::set_blocked(c, req, &TEAM, "team_id", false)
        }),
        "/organization/new" => with_body(POST, |c, req| {
            manage::admin_create(c, req, &ORG, "create organizations")
        }),
        "/organization/update" => with_body(POST.or(PATCH), |c, req| {
            manage::admin_update(c, req, &ORG, "update organizations")
        }),
        "/organization/delete" => with_body(MethodFilter::DELETE.or(POST), owners::org_delete),
        "/organization/info" => {
            with_query(owners::org_info).merge(with_body(POST, owners::org_info_post))
        }
        "/organization/list" => {
            without_input(|c| manage::reader_list(c, Kind::Organization, "list organizations"))
        }
        "/customer/new" | "/end_user/new" => with_body(POST, owners::customer_new),
        "/customer/update" => with_body(POST, |c, req| {
            manage::admin_update(c, req, &CUSTOMER, "update customers")
        }),
        "/customer/delete" => with_body(POST, |c, req| {
            manage::admin_delete(c, req, &CUSTOMER, "user_ids", "deleted_customers")
        }),
        "/customer/info" | "/end_user/info" => with_query(owners::customer_info),
        "/customer/list" => {
            without_input(|c| manage::reader_list(c, Kind::Customer, "list customers"))
        }
        "/customer/block" => with_body(POST, |c, req| {
            owners::set_blocked(c, req, &CUSTOMER, "user_ids", true)
        }),
        "/customer/unblock" => with_body(POST, |c, req| {
            owners::set_blocked(c, req, &CUSTOMER, "user_ids", false)
        }),
        "/budget/new" => with_body(POST, |c, req| {
            manage::admin_create(c, req, &BUDGET, "create budgets")
        }),
        "/budget/update" => with_body(POST, |c, req| {
            manage::admin_update(c, req, &BUDGET, "update budgets")
        }),
        "/budget/delete" => with_body(POST, |c, req| {
            manage::admin_delete(c, req, &BUDGET, "id", "deleted_budgets")
        }),
        "/budget/info" => with_body(POST, owners::budget_info),
        "/budget/list" => without_input(|c| manage::reader_list(c, Kind::Budget, "list budgets")),
        "/spend/logs" => with_query(spend::spend_logs),
        "/spend/keys" => without_input(spend::spend_keys),
        "/spend/users" => with_query(spend::spend_users),
        "/spend/tags" => with_query(spend::spend_tags),
        "/global/spend" => with_query(spend::global_spend),
        "/global/spend/keys" => with_query(spend::global_spend_keys),
        "/global/spend/models" => with_query(spend::global_spend_models),
        "/global/spend/teams" => with_query(spend::global_spend_teams),
        "/model/new" => post(crate::models::model_new),
        "/model/update" => post(crate::models::model_update),
        "/model/delete" => post(crate::models::model_delete),
        "/model/info" | "/v1/model/info" => get(crate::models::model_info),
        "/cache/ping" => get(cache_ping),
        "/cache/delete" => post(cache_delete),
        _ => return None,
    })
}

/// The response cache, or a 404 when none is configured.
fn configured_cache(state: &AppState) -> Result<std::sync::Arc<llmux::ResponseCache>, Refusal> {
    state.client.snapshot().cache.clone().ok_or_else(|| {
        Refusal(
            GatewayError::new(
                ErrorKind::NotFound,
                "The response cache is not configured (litellm_settings.cache).",
            )
            .with_code("cache_disabled"),
        )
    })
}

/// A cache that does not answer: LiteLLM's 503.
fn cache_unhealthy(message: String) -> Refusal {
    Refusal(
        GatewayError::new(ErrorKind::UpstreamUnavailable, message)
            .with_code("cache_unhealthy")
            .with_status(503),
    )
}

/// `GET /cache/ping` (admins and admin viewers): whether the response cache answers, in
/// LiteLLM's shape; 503 when it does not, or when no cache is configured.
async fn cache_ping(
    axum::extract::State(state): axum::extract::State<AppState>,
    Caller(c): Caller,
) -> Reply {
    manage::require_reader(&c.principal, "ping the cache")?;
    let cache = configured_cache(&state)?;
    let backend = cache.backend();
    let probe = async {
        backend.ping().await?;
        let key = format!("llmux:cache:ping:{}", llmux::new_request_id());
        backend
            .put(
                &key,
                bytes::Bytes::from_static(b"ping"),
                std::time::Duration::from_secs(10),
            )
            .await?;
        let read = backend.get(&key).await?;
        backend.delete(&[key]).await?;
        Ok::<bool, llmux::CacheError>(read.is_some())
    };
    let settings = cache.settings();
    let params = serde_json::json!({
        "type": match settings.cache_type {
            llmux::config::CacheType::Local => "local",
            llmux::config::CacheType::Redis => "redis",
            llmux::config::CacheType::RedisSemantic => "redis-semantic",
            llmux::config::CacheType::LocalSemantic => "local-semantic",
        },
        "namespace": settings.namespace,
        "mode": if settings.default_off { "default_off" } else { "default_on" },
    });
    match probe.await {
        Ok(true) => Ok(Answer(serde_json::json!({
            "status": "healthy",
            "cache_type": backend.name(),
            "ping_response": true,
            "set_cache_response": "success",
            "litellm_cache_params": params,
            "errors": cache.errors(),
        }))),
        Ok(false) => Err(cache_unhealthy(
            "The cache accepted a value and did not return it.".to_owned(),
        )),
        Err(e) => Err(cache_unhealthy(format!("Cache unhealthy: {e}"))),
    }
}

/// `POST /cache/delete` (proxy admins): `{"keys": [...]}`, each as `x-litellm-cache-key`
/// names it (or a stored key with its namespace).
async fn cache_delete(
    axum::extract::State(state): axum::extract::State<AppState>,
    Caller(c): Caller,
    JsonBody(req): JsonBody,
) -> Reply {
    manage::require_admin(&c.principal, "delete cache entries")?;
    let bad = |m: &str| Refusal(GatewayError::invalid_request(m).with_param("keys"));
    let keys: Vec<String> = match req.get("keys") {
        Some(serde_json::Value::Array(items)) if items.len() <= 1000 => items
            .iter()
            .map(|k| match k.as_str() {
                Some(k) if !k.is_empty() && k.len() <= 512 => Ok(k.to_owned()),
                _ => Err(bad(
                    "each of `keys` must be a cache key (1 to 512 characters)",
                )),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(bad("`keys` must be a list of at most 1000 cache keys")),
    };
    let cache = configured_cache(&state)?;
    let deleted = cache
        .delete(&keys)
        .await
        .map_err(|e| cache_unhealthy(format!("Cache unhealthy: {e}")))?;
    Ok(Answer(
        serde_json::json!({"status": "success", "deleted": deleted}),
    ))
}

/// A route whose operation reads a JSON body.
fn with_body<F, Fut>(methods: MethodFilter, op: F) -> MethodRouter<AppState>
where
    F: Fn(manage::Caller, Body) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ApiResult> + Send + 'static,
{
    on(
        methods,
        move |Caller(c): Caller, JsonBody(req): JsonBody| async move { answer(op(c, req).await) },
    )
}

/// A `GET` route whose operation reads the query.
fn with_query<F, Fut>(op: F) -> MethodRouter<AppState>
where
    F: Fn(manage::Caller, Query) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ApiResult> + Send + 'static,
{
    get(
        move |Caller(c): Caller, QueryParams(params): QueryParams<Query>| async move {
            answer(op(c, params).await)
        },
    )
}

/// A `GET` route whose operation needs only the caller.
fn without_input<F, Fut>(op: F) -> MethodRouter<AppState>
where
    F: Fn(manage::Caller) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ApiResult> + Send + 'static,
{
    get(move |Caller(c): Caller| async move { answer(op(c).await) })
}

/// The authenticated caller of a management route (the key's `allowed_routes` checked against
/// the path). Extracted before the body, so nobody makes the gateway read one unauthenticated.
pub struct Caller(pub manage::Caller);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Refusal> {
        let gov = state.governance.clone().ok_or_else(|| {
            GatewayError::new(
                ErrorKind::NotFound,
                "The management API needs `general_settings.master_key` (and a database: the embedded SQLite file by default).",
            )
            .with_code("governance_disabled")
        })?;
        let principal = gov
            .authenticate_for(&parts.headers, parts.uri.path())
            .await?;
        Ok(Caller(manage::Caller { gov, principal }))
    }
}

/// A management request's JSON object body (empty when no body was sent).
pub struct JsonBody(pub Body);

impl FromRequest<AppState> for JsonBody {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let ApiBody(bytes) = ApiBody::from_request(request, state).await?;
        manage::parse_body(&bytes)
            .map(JsonBody)
            .map_err(|e| Refusal(e).into_response())
    }
}

/// An operation's answer as the client gets it.
pub type Reply = Result<Answer, Refusal>;

fn answer(result: ApiResult) -> Reply {
    result.map(Answer).map_err(Refusal)
}

/// A successful answer: the JSON.
pub struct Answer(pub serde_json::Value);

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        crate::json_response(StatusCode::OK, self.0.to_string().into_bytes())
    }
}

/// A refused or failed operation: the error in the OpenAI shape (`?` on a `GatewayError` or a
/// `StoreError` gives one).
pub struct Refusal(pub GatewayError);

impl<E: Into<GatewayError>> From<E> for Refusal {
    fn from(e: E) -> Self {
        Refusal(e.into())
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        crate::error_response(&self.0, &llmux::new_request_id())
    }
}
