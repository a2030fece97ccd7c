//! LiteLLM's management API with its paths and field names: keys, users, teams, organizations,
//! customers (end users), budgets, spend reports and database-stored models. Every route
//! authenticates; writes need a writing role; users see and change only their own keys (team
//! admins also their team's), viewers only read.

use std::sync::Arc;

use axum::body::Bytes;

use crate::body::ApiBody;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{delete, get, on, post, MethodFilter, MethodRouter};

const POST: MethodFilter = MethodFilter::POST;
const PATCH: MethodFilter = MethodFilter::PATCH;
use axum::Router;
use llmux_store::{Kind, ListFilter, Object, SpendFilter};
use llmux_types::{ErrorKind, GatewayError};
use serde_json::{json, Map, Value};

use super::budget::Period;
use super::keys::{generate_key, hash_key, key_name, strings, Authority, Principal, Role};
use super::{format_time, parse_time, store_error, Governance};
use crate::AppState;

type Params = Query<std::collections::HashMap<String, String>>;
type ApiResult = Result<Value, GatewayError>;

/// Every management route and its methods. The router is built from this table (a route not
/// listed here does not exist), so the authorization matrix test that walks it covers them all.
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/key/generate", &["POST"]),
    ("/key/update", &["POST"]),
    ("/key/delete", &["POST"]),
    ("/key/info", &["GET"]),
    ("/key/list", &["GET"]),
    ("/key/regenerate", &["POST"]),
    ("/key/{key}/regenerate", &["POST"]),
    ("/key/block", &["POST"]),
    ("/key/unblock", &["POST"]),
    ("/user/new", &["POST"]),
    ("/user/update", &["POST"]),
    ("/user/delete", &["POST"]),
    ("/user/info", &["GET"]),
    ("/user/list", &["GET"]),
    ("/team/new", &["POST"]),
    ("/team/update", &["POST"]),
    ("/team/delete", &["POST"]),
    ("/team/info", &["GET"]),
    ("/team/list", &["GET"]),
    ("/team/member_add", &["POST"]),
    ("/team/member_delete", &["POST"]),
    ("/team/block", &["POST"]),
    ("/team/unblock", &["POST"]),
    ("/organization/new", &["POST"]),
    ("/organization/update", &["POST", "PATCH"]),
    ("/organization/delete", &["DELETE", "POST"]),
    ("/organization/info", &["GET", "POST"]),
    ("/organization/list", &["GET"]),
    ("/customer/new", &["POST"]),
    ("/customer/update", &["POST"]),
    ("/customer/delete", &["POST"]),
    ("/customer/info", &["GET"]),
    ("/customer/list", &["GET"]),
    ("/customer/block", &["POST"]),
    ("/customer/unblock", &["POST"]),
    ("/end_user/new", &["POST"]),
    ("/end_user/info", &["GET"]),
    ("/budget/new", &["POST"]),
    ("/budget/update", &["POST"]),
    ("/budget/delete", &["POST"]),
    ("/budget/info", &["POST"]),
    ("/budget/list", &["GET"]),
    ("/spend/logs", &["GET"]),
    ("/spend/keys", &["GET"]),
    ("/spend/users", &["GET"]),
    ("/spend/tags", &["GET"]),
    ("/global/spend", &["GET"]),
    ("/global/spend/keys", &["GET"]),
    ("/global/spend/models", &["GET"]),
    ("/global/spend/teams", &["GET"]),
    ("/model/new", &["POST"]),
    ("/model/update", &["POST"]),
    ("/model/delete", &["POST"]),
    ("/model/info", &["GET"]),
    ("/v1/model/info", &["GET"]),
];

pub fn routes() -> Router<AppState> {
    ROUTES
        .iter()
        .fold(Router::new(), |router, (path, _)| match handler(path) {
            Some(h) => router.route(path, h),
            None => router,
        })
        .route_layer(axum::middleware::from_fn(remember_path))
}

tokio::task_local! {
    /// The path of the management request being served, for the key's `allowed_routes`.
    static REQUEST_PATH: String;
}

async fn remember_path(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let path = request.uri().path().to_owned();
    REQUEST_PATH.scope(path, next.run(request)).await
}

/// The handler of a path in `ROUTES`.
fn handler(path: &str) -> Option<MethodRouter<AppState>> {
    Some(match path {
        "/key/generate" => post(key_generate),
        "/key/update" => post(key_update),
        "/key/delete" => post(key_delete),
        "/key/info" => get(key_info),
        "/key/list" => get(key_list),
        "/key/regenerate" => post(key_regenerate),
        "/key/{key}/regenerate" => post(key_regenerate_path),
        "/key/block" => post(key_block),
        "/key/unblock" => post(key_unblock),
        "/user/new" => post(user_new),
        "/user/update" => admin_update(POST, &USER, "update users"),
        "/user/delete" => post(user_delete),
        "/user/info" => get(user_info),
        "/user/list" => get(user_list),
        "/team/new" => post(team_new),
        "/team/update" => post(team_update),
        "/team/delete" => post(team_delete),
        "/team/info" => get(team_info),
        "/team/list" => get(team_list),
        "/team/member_add" => post(team_member_add),
        "/team/member_delete" => post(team_member_delete),
        "/team/block" => post(team_block),
        "/team/unblock" => post(team_unblock),
        "/organization/new" => admin_create(&ORG, "create organizations"),
        "/organization/update" => admin_update(POST.or(PATCH), &ORG, "update organizations"),
        "/organization/delete" => delete(org_delete).post(org_delete),
        "/organization/info" => get(org_info).post(org_info_post),
        "/organization/list" => reader_list(Kind::Organization, "list organizations"),
        "/customer/new" => post(customer_new),
        "/customer/update" => admin_update(POST, &CUSTOMER, "update customers"),
        "/customer/delete" => admin_delete(&CUSTOMER, "user_ids", "deleted_customers"),
        "/customer/info" => get(customer_info),
        "/customer/list" => reader_list(Kind::Customer, "list customers"),
        "/customer/block" => post(customer_block),
        "/customer/unblock" => post(customer_unblock),
        "/end_user/new" => post(customer_new),
        "/end_user/info" => get(customer_info),
        "/budget/new" => admin_create(&BUDGET, "create budgets"),
        "/budget/update" => admin_update(POST, &BUDGET, "update budgets"),
        "/budget/delete" => admin_delete(&BUDGET, "id", "deleted_budgets"),
        "/budget/info" => post(budget_info),
        "/budget/list" => reader_list(Kind::Budget, "list budgets"),
        "/spend/logs" => get(spend_logs),
        "/spend/keys" => get(spend_keys),
        "/spend/users" => get(spend_users),
        "/spend/tags" => get(spend_tags),
        "/global/spend" => get(global_spend),
        "/global/spend/keys" => get(global_spend_keys),
        "/global/spend/models" => get(global_spend_models),
        "/global/spend/teams" => get(global_spend_teams),
        "/model/new" => post(model_new),
        "/model/update" => post(model_update),
        "/model/delete" => post(model_delete),
        "/model/info" => get(model_info),
        "/v1/model/info" => get(model_info),
        _ => return None,
    })
}

// ---------- plumbing ----------

/// `POST` an object of `spec` into existence (admins only).
fn admin_create(spec: &'static Spec, what: &'static str) -> MethodRouter<AppState> {
    post(
        move |State(s): State<AppState>, headers: HeaderMap, ApiBody(b): ApiBody| async move {
            respond(
                async {
                    let (gov, p) = caller(&s, &headers).await?;
                    require_admin(&p, what)?;
                    Ok(view(&create(&gov, spec, &body(&b)?).await?))
                }
                .await,
            )
        },
    )
}

/// Update an object of `spec` (admins only).
fn admin_update(
    methods: MethodFilter,
    spec: &'static Spec,
    what: &'static str,
) -> MethodRouter<AppState> {
    on(
        methods,
        move |State(s): State<AppState>, headers: HeaderMap, ApiBody(b): ApiBody| async move {
            respond(
                async {
                    let (gov, p) = caller(&s, &headers).await?;
                    require_admin(&p, what)?;
                    Ok(view(&update(&gov, spec, &body(&b)?).await?))
                }
                .await,
            )
        },
    )
}

/// `POST {ids_field: [...]}` deletes objects of `spec` (admins only); answers `{answer: ids}`.
fn admin_delete(
    spec: &'static Spec,
    ids_field: &'static str,
    answer: &'static str,
) -> MethodRouter<AppState> {
    post(
        move |State(s): State<AppState>, headers: HeaderMap, ApiBody(b): ApiBody| async move {
            respond(
                async {
                    let (gov, p) = caller(&s, &headers).await?;
                    require_admin(&p, &format!("delete {}s", spec.label.to_lowercase()))?;
                    let req = body(&b)?;
                    let ids = remove(&gov, spec, id_list(&req, ids_field), ids_field).await?;
                    Ok(json!({ answer: ids }))
                }
                .await,
            )
        },
    )
}

/// `GET` every object of `kind` (admins and admin viewers).
fn reader_list(kind: Kind, what: &'static str) -> MethodRouter<AppState> {
    get(
        move |State(s): State<AppState>, headers: HeaderMap| async move {
            respond(
                async {
                    let (gov, p) = caller(&s, &headers).await?;
                    require_reader(&p, what)?;
                    Ok(Value::Array(
                        list_all(&gov, kind, ListFilter::default()).await?,
                    ))
                }
                .await,
            )
        },
    )
}

fn respond(result: ApiResult) -> Response {
    match result {
        Ok(v) => crate::json_response(StatusCode::OK, v.to_string().into_bytes()),
        Err(e) => crate::error_response(&e, &llmux::new_request_id()),
    }
}

fn governance(state: &AppState) -> Result<Arc<Governance>, GatewayError> {
    state.governance.clone().ok_or_else(|| {
        GatewayError::new(
            ErrorKind::NotFound,
            "The management API needs `general_settings.master_key` (and a database: the embedded SQLite file by default).",
        )
        .with_code("governance_disabled")
    })
}

async fn caller(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(Arc<Governance>, Principal), GatewayError> {
    let gov = governance(state)?;
    let path = REQUEST_PATH
        .try_with(String::clone)
        .unwrap_or_else(|_| "/".to_owned());
    let principal = gov.authenticate_for(headers, &path).await?;
    Ok((gov, principal))
}

fn forbidden(what: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::PermissionDenied,
        format!("Your role may not {what}."),
    )
    .with_code("forbidden")
}

fn require_admin(p: &Principal, what: &str) -> Result<(), GatewayError> {
    if p.role == Role::ProxyAdmin {
        Ok(())
    } else {
        Err(forbidden(what))
    }
}

fn require_reader(p: &Principal, what: &str) -> Result<(), GatewayError> {
    if p.role.is_admin() {
        Ok(())
    } else {
        Err(forbidden(what))
    }
}

fn body(bytes: &Bytes) -> Result<Map<String, Value>, GatewayError> {
    if bytes.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(GatewayError::invalid_request(
            "The body must be a JSON object.",
        )),
        Err(e) => Err(
            GatewayError::invalid_request(format!("Invalid JSON body: {e}"))
                .with_code("invalid_json"),
        ),
    }
}

fn text(m: &Map<String, Value>, k: &str) -> Option<String> {
    m.get(k)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn id_list(m: &Map<String, Value>, k: &str) -> Vec<String> {
    match m.get(k) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// `spend` in a body, when present, is a finite non-negative number (a negative one would lift
/// every budget of the object).
fn spend_field(req: &Map<String, Value>) -> Result<Option<f64>, GatewayError> {
    match req.get("spend") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(s) if s >= 0.0 && s.is_finite() => Ok(Some(s)),
            _ => Err(
                GatewayError::invalid_request("`spend` must be a non-negative number.")
                    .with_param("spend"),
            ),
        },
    }
}

fn missing(field: &str) -> GatewayError {
    GatewayError::invalid_request(format!("`{field}` is required.")).with_param(field)
}

fn not_found(what: &str, id: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::NotFound,
        format!("{what} `{id}` does not exist."),
    )
    .with_code("not_found")
}

/// Fields clients may set on each kind (everything else in a body is ignored, as LiteLLM does
/// for unknown fields).
const BUDGET_FIELDS: &[&str] = &[
    "max_budget",
    "soft_budget",
    "budget_duration",
    "tpm_limit",
    "rpm_limit",
    "max_parallel_requests",
    "model_max_budget",
    "budget_id",
];
const KEY_FIELDS: &[&str] = &[
    "key_alias",
    "user_id",
    "team_id",
    "organization_id",
    "models",
    "aliases",
    "config",
    "metadata",
    "tags",
    "blocked",
    "permissions",
    "guardrails",
    "model_rpm_limit",
    "model_tpm_limit",
    "allowed_routes",
    "allowed_cache_controls",
    "send_invite_email",
    "object_permission",
];
const USER_FIELDS: &[&str] = &[
    "user_email",
    "user_alias",
    "user_role",
    "teams",
    "models",
    "metadata",
    "organization_id",
    "sso_user_id",
];
const TEAM_FIELDS: &[&str] = &[
    "team_alias",
    "organization_id",
    "members_with_roles",
    "admins",
    "members",
    "models",
    "metadata",
    "blocked",
    "tags",
    "guardrails",
    "model_aliases",
];
const ORG_FIELDS: &[&str] = &["organization_alias", "models", "metadata"];
const CUSTOMER_FIELDS: &[&str] = &[
    "alias",
    "blocked",
    "allowed_model_region",
    "default_model",
    "metadata",
];

/// Bounds on what a client may store: names and ids, list lengths, JSON documents.
const MAX_NAME_BYTES: usize = 256;
const MAX_LIST_ITEMS: usize = 1000;
const MAX_DOCUMENT_BYTES: usize = 16 * 1024;

fn validate(field: &str, value: &Value) -> Result<(), GatewayError> {
    if value.is_null() {
        return Ok(());
    }
    if field == "model_max_budget" {
        // Refused rather than stored: a limit that is kept but not enforced is worse than none.
        return Err(GatewayError::invalid_request(
            "`model_max_budget` (per-model budgets) is not supported yet; use `max_budget`, or a \
             key per model.",
        )
        .with_param(field)
        .with_code("unsupported_field"));
    }
    let (ok, expected) = match field {
        "max_budget" | "soft_budget" => (
            value.as_f64().is_some_and(|v| v >= 0.0),
            "a non-negative number",
        ),
        "tpm_limit" | "rpm_limit" | "max_parallel_requests" => {
            (value.as_u64().is_some(), "a non-negative integer")
        }
        "budget_duration" => (
            value.as_str().and_then(Period::parse).is_some(),
            "a duration such as 30s, 30m, 24h, 7d or 1mo",
        ),
        "models"
        | "tags"
        | "teams"
        | "admins"
        | "members"
        | "allowed_routes"
        | "guardrails"
        | "allowed_cache_controls" => (
            value.as_array().is_some_and(|a| {
                a.len() <= MAX_LIST_ITEMS
                    && a.iter().all(|v| {
                        v.as_str().is_some_and(|v| {
                            v.len() <= MAX_NAME_BYTES && !v.chars().any(char::is_control)
                        })
                    })
            }),
            "a list of at most 1000 strings of at most 256 bytes",
        ),
        "aliases" | "metadata" | "config" | "model_rpm_limit" | "model_tpm_limit"
        | "model_aliases" | "permissions" | "object_permission" => (
            value.is_object() && value.to_string().len() <= MAX_DOCUMENT_BYTES,
            "an object of at most 16 KiB",
        ),
        "members_with_roles" => (
            value.as_array().is_some_and(|a| a.len() <= MAX_LIST_ITEMS)
                && value.to_string().len() <= 16 * MAX_DOCUMENT_BYTES,
            "a list of at most 1000 members",
        ),
        "blocked" => (value.is_boolean(), "true or false"),
        "user_id"
        | "team_id"
        | "organization_id"
        | "key_alias"
        | "budget_id"
        | "team_alias"
        | "user_alias"
        | "organization_alias"
        | "alias"
        | "user_email"
        | "sso_user_id"
        | "default_model"
        | "allowed_model_region" => (
            value.as_str().is_some_and(|v| {
                !v.is_empty() && v.len() <= MAX_NAME_BYTES && !v.chars().any(char::is_control)
            }),
            "a non-empty string of at most 256 bytes, without control characters",
        ),
        "user_role" => (
            value.as_str().and_then(Role::parse).is_some(),
            "one of proxy_admin, proxy_admin_viewer, internal_user, internal_user_viewer",
        ),
        _ => (true, ""),
    };
    if ok {
        Ok(())
    } else {
        Err(
            GatewayError::invalid_request(format!("`{field}` must be {expected}."))
                .with_param(field),
        )
    }
}

/// Copy the allowed fields of `from` into `doc` (null removes), validating them.
fn apply(
    doc: &mut Map<String, Value>,
    from: &Map<String, Value>,
    fields: &[&[&str]],
) -> Result<(), GatewayError> {
    for group in fields {
        for field in *group {
            if let Some(v) = from.get(*field) {
                validate(field, v)?;
                if v.is_null() {
                    doc.remove(*field);
                } else {
                    doc.insert((*field).to_owned(), v.clone());
                }
            }
        }
    }
    Ok(())
}

/// Set the next budget reset when the object has a period (or drop it when it has none).
fn schedule_reset(obj: &mut Object, now: i64, changed: bool) {
    let period = obj
        .data
        .get("budget_duration")
        .and_then(Value::as_str)
        .and_then(Period::parse);
    match period {
        Some(p) if changed || obj.budget_reset_at.is_none() => {
            obj.budget_reset_at = Some(p.next_reset(now))
        }
        Some(_) => {}
        None => obj.budget_reset_at = None,
    }
}

/// The object as the API shows it: its document plus spend and times.
fn view(o: &Object) -> Value {
    let mut m = o.data.clone();
    m.insert("spend".into(), json!(o.spend));
    m.insert("created_at".into(), json!(format_time(o.created_at)));
    m.insert("updated_at".into(), json!(format_time(o.updated_at)));
    m.insert(
        "budget_reset_at".into(),
        o.budget_reset_at
            .map_or(Value::Null, |t| json!(format_time(t))),
    );
    if o.kind == Kind::Key {
        m.insert("token".into(), json!(o.id));
    }
    Value::Object(m)
}

/// With spend settled but not written yet (by this instance, or by any in a fleet sharing
/// Redis), so a read right after a request shows it.
async fn live(gov: &Governance, mut o: Object) -> Object {
    let owner = [(o.kind, o.id.clone())];
    if let Some(Some(s)) = gov.live_spend(&owner).await.first() {
        o.spend = o.spend.max(*s);
    }
    o
}

/// `live` for a page of objects (one Redis round trip for all of them).
async fn live_all(gov: &Governance, mut objects: Vec<Object>) -> Vec<Object> {
    let owners: Vec<(Kind, String)> = objects.iter().map(|o| (o.kind, o.id.clone())).collect();
    for (o, spend) in objects.iter_mut().zip(gov.live_spend(&owners).await) {
        if let Some(s) = spend {
            o.spend = o.spend.max(s);
        }
    }
    objects
}

fn page(params: &Params) -> (u64, u64) {
    let n = |k: &str, d: u64| {
        params
            .get(k)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(d)
    };
    let page = n("page", 1).clamp(1, 1_000_000);
    let size = n("size", n("page_size", 100)).clamp(1, 1000);
    (page, size)
}

// ---------- keys ----------

async fn key_generate(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiBody(b): ApiBody,
) -> Response {
    respond(
        async {
            let (gov, p) = caller(&s, &headers).await?;
            let req = body(&b)?;
            create_key(&gov, &p, &req).await
        }
        .await,
    )
}

/// The role a key acts with: its user's role, capped by the key's `max_role`.
async fn key_role(gov: &Governance, key: &Object) -> Result<Role, GatewayError> {
    let user_role = match &key.user_id {
        Some(u) => gov
            .object(Kind::User, u)
            .await?
            .and_then(|u| {
                u.data
                    .get("user_role")
                    .and_then(Value::as_str)
                    .and_then(Role::parse)
            })
            .unwrap_or(Role::InternalUser),
        None => Role::InternalUser,
    };
    Ok(match key.data.get("max_role").and_then(Value::as_str) {
        Some(cap) => user_role.meet(Role::parse(cap).unwrap_or(Role::InternalUserViewer)),
        None => user_role,
    })
}

/// The caller's authority over `key`: a proxy admin over every key, a team admin over the team's
/// keys, a user over their own; viewers over none. Never over a key that acts with more rights
/// than the caller (a capped key cannot take over its user's stronger keys), and a key a team
/// admin minted for a member reaches only that team's keys.
async fn authority_over(
    gov: &Governance,
    p: &Principal,
    key: &Object,
) -> Result<Option<Authority>, GatewayError> {
    if p.role == Role::ProxyAdmin {
        return Ok(Some(Authority::ProxyAdmin));
    }
    if !p.role.can_write() {
        return Ok(None);
    }
    if let Some(team) = p.delegated_team() {
        if key.team_id.as_deref() != Some(team) {
            return Ok(None);
        }
    }
    let target = key_role(gov, key).await?;
    if p.role.meet(target) != target {
        return Ok(None);
    }
    if let Some(team) = &key.team_id {
        if let Some(t) = gov.object(Kind::Team, team).await? {
            if p.is_team_admin(&t) {
                return Ok(Some(Authority::TeamAdmin));
            }
        }
    }
    Ok(
        (key.user_id.is_some() && key.user_id.as_deref() == p.user_id())
            .then_some(Authority::Owner),
    )
}

/// Whether `user_id` is listed among `team`'s members.
fn is_member(team: &Object, user_id: &str) -> bool {
    team.data
        .get("members_with_roles")
        .and_then(Value::as_array)
        .is_some_and(|m| {
            m.iter()
                .any(|m| m.get("user_id").and_then(Value::as_str) == Some(user_id))
        })
        || strings(&team.data, "members").iter().any(|m| m == user_id)
        || strings(&team.data, "admins").iter().any(|m| m == user_id)
}

/// The authority with which a non-admin caller may own a key for `user_id` in `team_id`: their
/// own keys, or (team admins) keys of the team for existing members whose role is not above
/// the caller's. Never anyone else's, never without a user, never outside a delegated key's
/// team.
async fn owner_authority(
    gov: &Governance,
    p: &Principal,
    user_id: Option<&str>,
    team_id: Option<&str>,
) -> Result<Authority, GatewayError> {
    if p.role == Role::ProxyAdmin {
        return Ok(Authority::ProxyAdmin);
    }
    if !p.role.can_write() {
        return Err(forbidden("create or change keys"));
    }
    let Some(user_id) = user_id else {
        return Err(forbidden("create or change keys without a user"));
    };
    if let Some(own_team) = p.delegated_team() {
        if team_id != Some(own_team) {
            return Err(forbidden("create or change keys outside this key's team"));
        }
    }
    let me = p.user_id();
    let Some(team_id) = team_id else {
        return if me == Some(user_id) {
            Ok(Authority::Owner)
        } else {
            Err(forbidden("create or change keys for other users"))
        };
    };
    let team = gov
        .object(Kind::Team, team_id)
        .await?
        .ok_or_else(|| not_found("Team", team_id))?;
    if !p.is_team_admin(&team) {
        return Err(forbidden("create or change keys of this team"));
    }
    if me != Some(user_id) {
        if !is_member(&team, user_id) {
            return Err(forbidden(
                "create or change keys for a user outside the team",
            ));
        }
        let user = gov
            .object(Kind::User, user_id)
            .await?
            .ok_or_else(|| not_found("User", user_id))?;
        let role = user
            .data
            .get("user_role")
            .and_then(Value::as_str)
            .and_then(Role::parse)
            .unwrap_or(Role::InternalUser);
        if p.role.meet(role) != role {
            return Err(forbidden(
                "create or change keys for a member whose role is above your own",
            ));
        }
    }
    Ok(Authority::TeamAdmin)
}

/// Key fields that set what a key may do (limits, budgets, models, expiry, owner, routes):
/// changing one needs at least the authority that last set them.
fn governs(field: &str) -> bool {
    !matches!(
        field,
        "key" | "key_alias" | "metadata" | "send_invite_email" | "new_key" | "blocked"
    ) && (KEY_FIELDS.contains(&field)
        || BUDGET_FIELDS.contains(&field)
        || matches!(field, "duration" | "spend"))
}

/// A non-admin caller's key K bounds every key minted with it when K's limits were set from
/// above: the new key inherits K's models, rate limits and expiry (it may ask for less, never
/// more) and shares K's rate windows (`parent_limits`), and a budget is carved out of K's
/// remaining budget (K's max_budget drops by as much, atomically), so minting keys never
/// multiplies what the caller may spend or use. Returns whether K has any ceiling.
async fn inherit_ceilings(
    gov: &Governance,
    parent_id: &str,
    doc: &mut Map<String, Value>,
) -> Result<bool, GatewayError> {
    const CEILINGS: &[&str] = &[
        "models",
        "rpm_limit",
        "tpm_limit",
        "max_parallel_requests",
        "model_rpm_limit",
        "model_tpm_limit",
        "aliases",
        "allowed_routes",
        "expires",
        "max_budget",
    ];
    let exceeds = |field: &str, detail: String| {
        GatewayError::new(
            ErrorKind::PermissionDenied,
            format!("A key cannot get more than the key that creates it: `{field}` {detail}."),
        )
        .with_param(field)
        .with_code("exceeds_creating_key")
    };
    // The stored key, not the cached one: a budget is carved from what is there now.
    for _attempt in 0..8 {
        let parent = gov
            .store
            .get(Kind::Key, parent_id)
            .await
            .map_err(|e| store_error(&e))?
            .ok_or_else(|| forbidden("create keys with a deleted key"))?;
        let bounded = CEILINGS.iter().any(|f| match parent.data.get(*f) {
            None | Some(Value::Null) => false,
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
            Some(_) => true,
        });
        if !bounded {
            return Ok(false);
        }
        let parent_models = strings(&parent.data, "models");
        if !parent_models.is_empty() {
            let asked = strings(doc, "models");
            if asked.is_empty() {
                doc.insert("models".into(), json!(parent_models));
            } else if let Some(extra) = asked.iter().find(|m| !parent_models.contains(m)) {
                return Err(exceeds(
                    "models",
                    format!("names `{extra}`, which the creating key may not use"),
                ));
            }
        }
        let mut shared = Map::new();
        for field in ["rpm_limit", "tpm_limit", "max_parallel_requests"] {
            let Some(cap) = parent.data.get(field).and_then(Value::as_u64) else {
                continue;
            };
            shared.insert(field.into(), json!(cap));
            match doc.get(field).and_then(Value::as_u64) {
                None => {
                    doc.insert(field.into(), json!(cap));
                }
                Some(asked) if asked > cap => {
                    return Err(exceeds(field, format!("{asked} is above its {cap}")));
                }
                Some(_) => {}
            }
        }
        if !shared.is_empty() {
            let uid = parent
                .data
                .get("token_uid")
                .and_then(Value::as_str)
                .unwrap_or(&parent.id);
            shared.insert("uid".into(), json!(uid));
            doc.insert("parent_limits".into(), Value::Object(shared));
        }
        for field in [
            "model_rpm_limit",
            "model_tpm_limit",
            "aliases",
            "allowed_routes",
        ] {
            if let Some(v) = parent.data.get(field) {
                if doc.get(field).is_some_and(|asked| asked != v) {
                    return Err(exceeds(field, "differs from the creating key's".into()));
                }
                doc.insert(field.into(), v.clone());
            }
        }
        if let Some(cap) = parent.data.get("expires").and_then(Value::as_str) {
            let cap_at = parse_time(cap).unwrap_or(0);
            let asked = doc
                .get("expires")
                .and_then(Value::as_str)
                .and_then(parse_time);
            if asked.is_none_or(|t| t > cap_at) {
                doc.insert("expires".into(), json!(cap));
                doc.remove("duration");
            }
        }
        let Some(parent_max) = parent.data.get("max_budget").and_then(Value::as_f64) else {
            return Ok(true);
        };
        let owner = (Kind::Key, parent.id.clone());
        let (live, in_flight) = gov.spend_and_reserved(&owner).await;
        let remaining = (parent_max - live.max(parent.spend) - in_flight).max(0.0);
        let share = match doc.get("max_budget").and_then(Value::as_f64) {
            None => remaining,
            Some(asked) if asked > remaining => {
                return Err(exceeds(
                    "max_budget",
                    format!("{asked} is above the {remaining:.6} it has left"),
                ))
            }
            Some(asked) => asked,
        };
        doc.insert("max_budget".into(), json!(share));
        if let Some(period) = parent.data.get("budget_duration") {
            doc.insert("budget_duration".into(), period.clone());
        }
        let mut carved = parent.clone();
        carved
            .data
            .insert("max_budget".into(), json!(parent_max - share));
        if gov
            .store
            .update_if_unchanged(&carved, &parent.data)
            .await
            .map_err(|e| store_error(&e))?
        {
            gov.invalidate(Kind::Key, &parent.id);
            return Ok(true);
        }
        // Another change to the creating key landed first: read it again.
    }
    Err(GatewayError::new(
        ErrorKind::RateLimited,
        "The creating key is changing too often to carve a budget from it; try again.",
    )
    .with_code("concurrent_update"))
}

async fn create_key(gov: &Governance, p: &Principal, req: &Map<String, Value>) -> ApiResult {
    let mut req = req.clone();
    if p.role != Role::ProxyAdmin {
        // A user's keys are theirs: the owner is the caller unless named otherwise, and a key
        // made with a team key stays in that team (it cannot escape the team's models and
        // budget by leaving it).
        if text(&req, "user_id").is_none() {
            if let Some(me) = p.user_id() {
                req.insert("user_id".into(), json!(me));
            }
        }
        if text(&req, "team_id").is_none() {
            if let Some(team) = p.key.as_ref().and_then(|k| k.team_id.clone()) {
                req.insert("team_id".into(), json!(team));
            }
        }
        if req.contains_key("organization_id") {
            return Err(forbidden("set a key's organization"));
        }
    }
    let authority = owner_authority(
        gov,
        p,
        text(&req, "user_id").as_deref(),
        text(&req, "team_id").as_deref(),
    )
    .await?;
    if let Some(team) = text(&req, "team_id") {
        if gov.object(Kind::Team, &team).await?.is_none() {
            return Err(not_found("Team", &team));
        }
    }
    if authority != Authority::ProxyAdmin && req.contains_key("spend") {
        return Err(forbidden("set a key's spend"));
    }
    let key = match text(&req, "key") {
        Some(k) if p.role == Role::ProxyAdmin => {
            if !k.starts_with("sk-") || k.len() < 8 {
                return Err(GatewayError::invalid_request(
                    "A custom `key` must start with `sk-` and be at least 8 characters.",
                )
                .with_param("key"));
            }
            k
        }
        Some(_) => return Err(forbidden("choose key values")),
        None => generate_key(),
    };
    let now = gov.now();
    let mut doc = Map::new();
    apply(&mut doc, &req, &[KEY_FIELDS, BUDGET_FIELDS])?;
    ensure_alias_free(gov, text(&req, "key_alias"), None).await?;
    doc.insert("key_name".into(), json!(key_name(&key)));
    if let Some(at) = expiry(&req, now)? {
        doc.insert("expires".into(), json!(format_time(at)));
        doc.insert("duration".into(), req["duration"].clone());
    }
    let mut limits_set_by = authority;
    if authority != Authority::ProxyAdmin {
        // Never more than the caller's own rights: the role, and the calling key's ceilings.
        doc.insert("max_role".into(), json!(p.role.as_str()));
        if let Some(parent) = p.key.as_deref() {
            let parent_set_by = Authority::stored(&parent.data, "limits_set_by");
            if parent_set_by > Authority::Owner
                && inherit_ceilings(gov, &parent.id, &mut doc).await?
            {
                limits_set_by = limits_set_by.max(parent_set_by);
            }
        }
    }
    doc.insert("limits_set_by".into(), json!(limits_set_by.as_str()));
    if authority == Authority::TeamAdmin && text(&req, "user_id").as_deref() != p.user_id() {
        // Made by a team admin for a member: it acts only within that team.
        doc.insert("delegated".into(), json!(true));
    }
    doc.insert("token_uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    if doc.get("blocked").and_then(Value::as_bool) == Some(true) {
        doc.insert("blocked_by".into(), json!(authority.as_str()));
    }
    doc.insert(
        "created_by".into(),
        json!(p.user_id().unwrap_or("master_key")),
    );
    let mut obj = Object::new(Kind::Key, hash_key(&key), doc);
    obj.created_at = now;
    obj.spend = spend_field(&req)?.unwrap_or(0.0);
    schedule_reset(&mut obj, now, true);
    if !gov.store.insert(&obj).await.map_err(|e| store_error(&e))? {
        return Err(
            GatewayError::invalid_request("This key already exists.").with_code("key_exists")
        );
    }
    gov.invalidate(Kind::Key, &obj.id);
    let mut out = view(&obj);
    out["key"] = json!(key);
    out["token_id"] = json!(obj.id);
    if out.get("expires").is_none() {
        out["expires"] = Value::Null;
    }
    Ok(out)
}

/// LiteLLM's rule: a key alias names one key.
async fn ensure_alias_free(
    gov: &Governance,
    alias: Option<String>,
    this_key: Option<&str>,
) -> Result<(), GatewayError> {
    let Some(alias) = alias else { return Ok(()) };
    let holders = gov
        .store
        .list(
            Kind::Key,
            &ListFilter {
                alias: Some(alias.clone()),
                limit: Some(2),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| store_error(&e))?;
    if holders.iter().any(|k| Some(k.id.as_str()) != this_key) {
        return Err(GatewayError::invalid_request(format!(
            "Another key already has the alias `{alias}`; key aliases are unique."
        ))
        .with_param("key_alias")
        .with_code("key_alias_exists"));
    }
    Ok(())
}

/// When a key created or updated now with the body's `duration` expires.
fn expiry(req: &Map<String, Value>, now: i64) -> Result<Option<i64>, GatewayError> {
    let Some(d) = req.get("duration").and_then(Value::as_str) else {
        return Ok(None);
    };
    let period = Period::parse(d).ok_or_else(|| {
        GatewayError::invalid_request("`duration` must be like 30s, 30m, 24h, 7d or 1mo.")
            .with_param("duration")
    })?;
    Ok(Some(period.expires_at(now)))
}

/// The key a body or query names (`key`: a key or its hash), and the stored object.
async fn named_key(gov: &Governance, name: Option<String>) -> Result<Object, GatewayError> {
    let name = name.ok_or_else(|| missing("key"))?;
    let id = hash_key(&name);
    gov.store
        .get(Kind::Key, &id)
        .await
        .map_err(|e| store_error(&e))?
        .ok_or_else(|| not_found("Key", &format!("{}...", &id[..8])))
}

/// Whether `p` may make the changes `req` asks of key `obj`, and with what authority. Limits,
/// budgets, models, expiry and the owner need the authority that set them; a block needs the
/// authority that placed it to lift; a key moves only to an owner the caller may mint for.
async fn check_key_change(
    gov: &Governance,
    p: &Principal,
    obj: &Object,
    req: &Map<String, Value>,
) -> Result<Authority, GatewayError> {
    let authority = authority_over(gov, p, obj)
        .await?
        .ok_or_else(|| forbidden("change this key"))?;
    if authority != Authority::ProxyAdmin && req.contains_key("organization_id") {
        return Err(forbidden("set a key's organization"));
    }
    let set_by = Authority::stored(&obj.data, "limits_set_by");
    if let Some(field) = req.keys().find(|f| governs(f)) {
        if authority < set_by {
            return Err(GatewayError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "`{field}` of this key was set by a {}; only that role or above may change it \
                     (a key's holder may change its key_alias and metadata).",
                    set_by.as_str().replace('_', " ")
                ),
            )
            .with_param(field)
            .with_code("forbidden"));
        }
    }
    // Anything but `true` (false, null) lifts a block.
    if req
        .get("blocked")
        .is_some_and(|b| b.as_bool() != Some(true))
        && obj.data.get("blocked").and_then(Value::as_bool) == Some(true)
        && authority < Authority::stored(&obj.data, "blocked_by")
    {
        return Err(GatewayError::new(
            ErrorKind::PermissionDenied,
            "This key was blocked by a higher role; only that role or above may unblock it.",
        )
        .with_param("blocked")
        .with_code("forbidden"));
    }
    if authority != Authority::ProxyAdmin
        && (req.contains_key("user_id") || req.contains_key("team_id"))
    {
        let user = if req.contains_key("user_id") {
            text(req, "user_id")
        } else {
            obj.user_id.clone()
        };
        let team = if req.contains_key("team_id") {
            text(req, "team_id")
        } else {
            obj.team_id.clone()
        };
        owner_authority(gov, p, user.as_deref(), team.as_deref()).await?;
    }
    spend_field(req)?;
    Ok(authority)
}

/// Record who set what after `req` changed key `obj` with `authority` from principal `p`.
fn record_key_authority(
    p: &Principal,
    obj: &mut Object,
    req: &Map<String, Value>,
    authority: Authority,
) {
    if req.keys().any(|f| governs(f)) {
        obj.data
            .insert("limits_set_by".into(), json!(authority.as_str()));
    }
    match req.get("blocked").map(|b| b.as_bool() == Some(true)) {
        Some(true) => {
            let before = obj
                .data
                .get("blocked_by")
                .map(|_| Authority::stored(&obj.data, "blocked_by"));
            let by = before.map_or(authority, |b| b.max(authority));
            obj.data.insert("blocked_by".into(), json!(by.as_str()));
        }
        Some(false) => {
            obj.data.remove("blocked_by");
        }
        None => {}
    }
    if authority != Authority::ProxyAdmin && req.contains_key("user_id") {
        let cap = obj
            .data
            .get("max_role")
            .and_then(Value::as_str)
            .and_then(Role::parse)
            .map_or(p.role, |c| c.meet(p.role));
        obj.data.insert("max_role".into(), json!(cap.as_str()));
    }
}

async fn key_update(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiBody(b): ApiBody,
) -> Response {
    respond(
        async {
            let (gov, p) = caller(&s, &headers).await?;
            let req = body(&b)?;
            let mut obj = named_key(&gov, text(&req, "key")).await?;
            let authority = check_key_change(&gov, &p, &obj, &req).await?;
            ensure_alias_free(&gov, text(&req, "key_alias"), Some(&obj.id)).await?;
            let now = gov.now();
            apply(&mut obj.data, &req, &[KEY_FIELDS, BUDGET_FIELDS])?;
            if let Some(at) = expiry(&req, now)? {
                obj.data.insert("expires".into(), json!(format_time(at)));
            }
            record_key_authority(&p, &mut obj, &req, authority);
            let set_spend = spend_field(&req)?;
            if let Some(spend) = set_spend {
                obj.spend = spend;
            }
            obj.sync_columns();
            schedule_reset(&mut obj, now, req.contains_key("budget_duration"));
            gov.store
                .update(&obj, set_spend.is_some())
                .await
                .map_err(|e| store_error(&e))?;
            gov.invalidate(Kind::Key, &obj.id);
            if set_spend.is_some() || req.contains_key("budget_duration") {
                gov.set_spend(Kind::Key, &obj.id, obj.spend, obj.budget_reset_at)
                    .await;
            }
            let mut out = view(&obj);
            out["key"] = json!(obj.id);
            Ok(out)
        }
        .await,
    )
}

async fn key_delete(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiBody(b): ApiBody,
) -> Response {
    respond(async {
        let (gov, p) = caller(&s, &headers).await?;
        let req = body(&b)?;
        let mut targets = Vec::new();
        for k in id_list(&req, "keys") {
            targets.push(named_key(&gov, Some(k)).await?);
        }
        for alias in id_list(&req, "key_aliases") {
            let found = gov.store.list(Kind::Key, &ListFilter { alias: Some(alias.clone()), ..Default::default() }).await.map_err(|e| store_error(&e))?;
            if found.is_empty() {
                return Err(not_found("Key alias", &alias));
            }
            targets.extend(found);
        }
        if targets.is_empty() {
            return Err(missing("keys"));
        }
        for t in &targets {
            if authority_over(&gov, &p, t).await?.is_none() {
                return Err(forbidden("delete this key"));
            }
        }
        let ids: Vec<String> = targets.iter().map(|t| t.id.clone()).collect();
        gov.store.delete(Kind::Key, &ids).await.map_err(|e| store_error(&e))?;
        for id in &ids {
            gov.invalidate(Kind::Key, id);
        }
        Ok(json!({"deleted_keys": id_list(&req, "keys").into_iter().chain(id_list(&req, "key_aliases")).collect::<Vec<_>>()}))
    }.await)
}

async fn key_info(State(s): State<AppState>, headers: HeaderMap, params: Params) -> Response {
    respond(async {
        let (gov, p) = caller(&s, &headers).await?;
        let obj = match params.get("key") {
            Some(k) => named_key(&gov, Some(k.clone())).await?,
            None => p.key.as_deref().cloned().ok_or_else(|| missing("key"))?,
        };
        let own = p.key.as_ref().is_some_and(|k| k.id == obj.id);
        if !own && !p.role.is_admin() && !may_read_key(&gov, &p, &obj).await? {
            return Err(forbidden("see this key"));
        }
        let obj = live(&gov, obj).await;
        Ok(json!({"key": params.get("key").cloned().unwrap_or_else(|| obj.id.clone()), "info": view(&obj)}))
    }.await)
}

async fn may_read_key(gov: &Governance, p: &Principal, key: &Object) -> Result<bool, GatewayError> {
    if p.role.is_admin() {
        return Ok(true);
    }
    if let Some(team) = p.delegated_team() {
        if key.team_id.as_deref() != Some(team) {
            return Ok(false);
        }
    }
    if key.user_id.is_some() && key.user_id.as_deref() == p.user_id() {
        return Ok(true);
    }
    if let Some(team) = &key.team_id {
        if let Some(t) = gov.object(Kind::Team, team).await? {
            return Ok(p.is_team_admin(&t));
        }
    }
    Ok(false)
}

async fn key_list(State(s): State<AppState>, headers: HeaderMap, params: Params) -> Response {
    respond(async {
        let (gov, p) = caller(&s, &headers).await?;
        let mut filter = ListFilter {
            user_id: params.get("user_id").cloned(),
            team_id: params.get("team_id").cloned(),
            organization_id: params.get("organization_id").cloned(),
            alias: params.get("key_alias").cloned(),
            ..Default::default()
        };
        if !p.role.is_admin() {
            let team_admin = match &filter.team_id {
                Some(t) => gov.object(Kind::Team, t).await?.is_some_and(|t| p.is_team_admin(&t)),
                None => false,
            };
            if !team_admin {
                filter.user_id = Some(p.user_id().ok_or_else(|| forbidden("list keys"))?.to_owned());
            }
            if let Some(team) = p.delegated_team() {
                filter.team_id = Some(team.to_owned());
            }
        }
        let total = gov.store.count(Kind::Key, &filter).await.map_err(|e| store_error(&e))?;
        let (page, size) = page(&params);
        filter.offset = (page - 1).saturating_mul(size);
        filter.limit = Some(size);
        let keys = gov.store.list(Kind::Key, &filter).await.map_err(|e| store_error(&e))?;
        let full = params.get("return_full_object").is_some_and(|v| v == "true");
        let keys: Vec<Value> = if full {
            live_all(&gov, keys).await.iter().map(view).collect()
        } else {
            keys.into_iter().map(|k| json!(k.id)).collect()
        };
        Ok(json!({"keys": keys, "total_count": total, "current_page": page, "total_pages": total.div_ceil(size)}))
    }.await)
}

async fn regenerate(
    gov: &Governance,
    p: &Principal,
    name: Option<String>,
    req: &Map<String, Value>,
) -> ApiResult {
    let old = named_key(gov, name).await?;
    let mut changes = req.clone();
    changes.remove("key");
    let authority = check_key_change(gov, p, &old, &changes).await?;
    ensure_alias_free(gov, text(&changes, "key_alias"), Some(&old.id)).await?;
    let key = match text(req, "new_key") {
        Some(k) if p.role == Role::ProxyAdmin && k.starts_with("sk-") => k,
        _ => generate_key(),
    };
    let mut obj = old.clone();
    obj.id = hash_key(&key);
    apply(&mut obj.data, &changes, &[KEY_FIELDS, BUDGET_FIELDS])?;
    record_key_authority(p, &mut obj, &changes, authority);
    if authority != Authority::ProxyAdmin {
        let role = key_role(gov, &old).await?;
        obj.data
            .insert("max_role".into(), json!(role.meet(p.role).as_str()));
    }
    // The new secret is the same key: its rate windows continue (they are named by the stable
    // token_uid) and its spend carries over, counting requests still in flight on the old
    // secret at their reserved estimate (they settle on the old id), so rotating a key never
    // forgets what it spent.
    if !obj.data.contains_key("token_uid") {
        obj.data.insert("token_uid".into(), json!(old.id));
    }
    let owner = (Kind::Key, old.id.clone());
    let (live_spend, in_flight) = gov.spend_and_reserved(&owner).await;
    obj.spend = obj.spend.max(live_spend) + in_flight;
    obj.data.insert("key_name".into(), json!(key_name(&key)));
    obj.sync_columns();
    obj.updated_at = gov.now();
    if !gov.store.insert(&obj).await.map_err(|e| store_error(&e))? {
        return Err(
            GatewayError::invalid_request("This key already exists.").with_code("key_exists")
        );
    }
    gov.store
        .delete(Kind::Key, std::slice::from_ref(&old.id))
        .await
        .map_err(|e| store_error(&e))?;
    gov.invalidate(Kind::Key, &old.id);
    gov.invalidate(Kind::Key, &obj.id);
    gov.set_spend(Kind::Key, &obj.id, obj.spend, obj.budget_reset_at)
        .await;
    let mut out = view(&obj);
    out["key"] = json!(key);
    out["token_id"] = json!(obj.id);
    Ok(out)
}

async fn key_regenerate(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiBody(b): ApiBody,
) -> Response {
    respond(
        async {
            let (gov, p) = caller(&s, &headers).await?;
            let req = body(&b)?;
            regenerate(&gov, &p, text(&req, "key"), &req).await
        }
        .await,
    )
}

async fn key_regenerate_path(
    State(s): State<AppState>,
    axum::extract::Path(key): axum::extract::Path<String>,
    headers: HeaderMap,
    ApiBody(b): ApiBody,
) -> Response {
    respond(
        async {
            let (gov, p) = caller(&s, &headers).await?;
            let req = body(&b)?;
            regenerate(&gov, &p, Some(key), &req).await
        }
        .await,
    )
}

async fn set_key_blocked(s: AppState, headers: HeaderMap, b: Bytes, blocked: bool) -> ApiResult {
    let (gov, p) = caller(&s, &headers).await?;
    let req = body(&b)?;
    let mut obj = named_key(&gov, text(&req, "key")).await?;
    let mut change = Map::new();
    change.insert("blocked".into(), json!(blocked));
    let authority = check_key_change(&gov, &p, &obj, &change).await?;
    record_key_authority(&p, &mut obj, &change, authority);
    obj.data.insert("blocked".into(), json!(blocked));
    gov.store
        .update(&obj, false)
        .await
        .map_err(|e| store_error(&e))?;
    gov.invalidate(Kind::Key, &obj.id);
    Ok(view(&obj))
}

async fn key_block(State(s): State<AppState>, headers: HeaderMap, ApiBody(b): ApiBody) -> Response {
    respond(set_key_blocked(s, headers, b, true).await)
}

async fn key_unblock(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiBody(b): ApiBody,
) -> Response {
    respond(set_key_blocked(s, headers, b, false).await)
}

// ---------- generic owners: users, teams, organizations, customers, budgets ----------

struct Spec {
    kind: Kind,
    id_field: &'static str,
    label: &'static str,
    fields: &'static [&'static str],
}

const USER: Spec = Spec {
    kind: Kind::User,
    id_field: "user_id",
    label: "User",
    fields: USER_FIELDS,
};
const TEAM: Spec = Spec {
    kind: Kind::Team,
    id_field: "team_id",
    label: "Team",
    fields: TEAM_FIELDS,
};
const ORG: Spec = Spec {
    kind: Kind::Organization,
    id_field: "organization_id",
    label: "Organization",
    fields: ORG_FIELDS,
};
const CUSTOMER: Spec = Spec {
    kind: Kind::Customer,
    id_field: "user_id",
    label: "End user",
    fields: CUSTOMER_FIELDS,
};
const BUDGET: Spec = Spec {
    kind: Kind::Budget,
    id_field: "budget_id",
    label: "Budget",
    fields: &[],
};

async fn create(
    gov: &Governance,
    spec: &Spec,
    req: &Map<String, Value>,
) -> Result<Object, GatewayError> {
    if let Some(v) = req.get(spec.id_field) {
        validate(spec.id_field, v)?;
    }
    let id = text(req, spec.id_field).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut doc = Map::new();
    apply(&mut doc, req, &[spec.fields, BUDGET_FIELDS])?;
    doc.insert(spec.id_field.to_owned(), json!(id));
    let now = gov.now();
    let mut obj = Object::new(spec.kind, id.clone(), doc);
    if spec.kind == Kind::Customer {
        // A customer's id column is its own; `user_id` in its document is not an owner.
        obj.user_id = None;
    }
    obj.created_at = now;
    obj.spend = spend_field(req)?.unwrap_or(0.0);
    schedule_reset(&mut obj, now, true);
    if !gov.store.insert(&obj).await.map_err(|e| store_error(&e))? {
        return Err(GatewayError::invalid_request(format!(
            "{} `{id}` already exists.",
            spec.label
        ))
        .with_code("already_exists"));
    }
    gov.invalidate(spec.kind, &id);
    Ok(obj)
}

async fn fetch(gov: &Governance, spec: &Spec, id: Option<String>) -> Result<Object, GatewayError> {
    let id = id.ok_or_else(|| missing(spec.id_field))?;
    gov.store
        .get(spec.kind, &id)
        .await
        .map_err(|e| store_error(&e))?
        .ok_or_else(|| not_found(spec.label, &id))
}

async fn update(
    gov: &Governance,
    spec: &Spec,
    req: &Map<String, Value>,
) -> Result<Object, GatewayError> {
    let mut obj = fetch(gov, spec, text(req, spec.id_field)).await?;
    apply(&mut obj.data, req, &[spec.fields, BUDGET_FIELDS])?;
    let set_spend = spend_field(req)?;
    if let Some(s) = set_spend {
        obj.spend = s;
    }
    obj.sync_columns();
    if spec.kind == Kind::Customer {
        obj.user_id = None;
    }
    schedule_reset(&mut obj, gov.now(), req.contains_key("budget_duration"));
    gov.store
        .update(&obj, set_spend.is_some())
        .await
        .map_err(|e| store_error(&e))?;
    gov.invalidate(spec.kind, &obj.id);
    if set_spend.is_some() || req.contains_key("budget_duration") {
        gov.set_spend(spec.kind, &obj.id, obj.spend, obj.budget_reset_at)
            .await;
    }
    Ok(obj)
}

async fn remove(
    gov: &Governance,
    spec: &Spec,
    ids: Vec<String>,
    field: &str,
) -> Result<Vec<String>, GatewayError> {
    if ids.is_empty() {
        return Err(missing(field));
    }
    for id in &ids {
        fetch(gov, spec, Some(id.clone())).await?;
    }
    gov.store
        .delete(spec.kind, &ids)
        .await
        .map_err(|e| store_error(&e))?;
    for id in &ids {
        gov.invalidate(spec.kind, id);
        gov.forget_spend(spec.kind, id).await;
    }
    Ok(ids)
}

/// Delete every key the filter matches (a deleted user's or team's keys).
async fn delete_keys_where(gov: &Governance, filter: ListFilter) -> Result<(), GatewayError> {
    let keys = gov
        .store
        .list(Kind::Key, &filter)
        .await
        .map_err(|e| store_error(&e))?;
    let ids: Vec<String> = keys.into_iter().map(|k| k.id).collect();
    gov.store
        .delete(Kind::Key, &ids)
        .await
        .map_err(|e| store_error(&e))?;
    for id in ids {
        gov.invalidate(Kind::Key, &id);
    }
    Ok(())
}

async fn list_all(
    gov: &Governance,
    kind: Kind,
    filter: ListFilter,
) -> Result<Vec<Value>, GatewayError> {
    let objects = gov
        .store
        .list(kind, &filter)
        .await
        .map_err(|e| store_error(&e))?;
    Ok(live_all(gov, objects).await.iter().map(view).collect())
}

// users

async fn user_new(State(s): State<AppState>, headers: HeaderMap, ApiBody(b): ApiBody) -> Response {
    respond(
        async {
            let (gov, p) = caller(&s, &headers).await?;
            require_admin(&p, "create users")?;
            let req = body(&b)?;
            let mut req2 = req.clone();
            if !req2.contains_key("user_role") {
                req2.insert("user_role".into(), json!("internal_user"));
            }
            let user = create(&gov, &USER, &req2).await?;
            for team in strings(&user.data, "teams") {
                add_member(&gov, &team, json!({"user_id": user.id, "role": "user"})).await?;
            }
            let mut out = view(&user);
            // LiteLLM creates a key for a new user unless told not to.
            if req.get("auto_create_key").and_then(Value::as_bool) != Some(false) {
                let mut key_req = Map::new();
                key_req.insert("user_id".into(), json!(user.id));
                for f in ["models", "key_alias", "duration", "aliases", "metadata"] {
                    if let Some(v) = req.get(f) {
                        key_req.insert(f.into(), v.clone());
                    }
                }
                let key = create_key(&gov, &Principal::master(), &key_req).await?;
                out["key"] = key["key"].clone();
                out["expires"] = key.get("expires").cloned().unwrap_or(Value::Null);
            }
            Ok(out)
        }
        .await,
    )
}

async fn user_delete(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiBody(b): ApiBody,
) -> Response {
    respond(delete_owners(s, headers, b, &USER, "user_ids", "deleted_users").await)
}

async fn user_info(State(s): State<AppState>, headers: HeaderMap, params: Params) -> Response {
    respond(async {
        let (gov, p) = caller(&s, &headers).await?;
        let id = params.get("user_id").cloned().or_else(|| p.user_id().map(str::to_owned)).ok_or_else(|| missing("user_id"))?;
        if !p.role.is_admin() && p.user_id() != Some(id.as_str()) {
            return Err(forbidden("see other users"));
        }
        let user = fetch(&gov, &USER, Some(id.clone())).await?;
        // A key a team admin made for this user shows only that team's keys.
        let team_id = p.delegated_team().map(str::to_owned);
        let keys = list_all(&gov, Kind::Key, ListFilter { user_id: Some(id.clone()), team_id, ..Default::default() }).await?;
        let mut teams = Vec::new();
        for t in strings(&user.data, "teams") {
            if let Some(team) = gov.store.get(Kind::Team, &t).await.map_err(|e| store_error(&e))? {
                teams.push(view(&team));
            }
        }
        Ok(json!({"user_id": id, "user_info": view(&live(&gov, user).await), "keys": keys, "teams": teams}))
    }.await)
}

async fn user_list(State(s): State<AppState>, headers: HeaderMap, params: Params) -> Response {
    respond(async {
        let (gov, p) = caller(&s, &headers).await?;
        require_reader(&p, "list users")?;
        let (page, size) = page(&params);
        let total = gov.store.count(Kind::User, &ListFilter::default()).await.map_err(|e| store_error(&e))?;
        let mut users = list_all(&gov, Kind::User, ListFilter { offset: (page - 1) * size, limit: Some(size), ..Default::default() }).await?;
        if let Some(role) = params.get("role") {
            users.retain(|u| u.get("user_role").and_then(Value::as_str) == Some(role));
        }
        Ok(json!({"users": users, "total": total, "page": page, "page_size": size, "total_pages": total.div_ceil(size)}))
    }.await)
}

// teams

async fn add_member(
    gov: &Governance,
    team_id: &str,
    member: Value,
) -> Result<Object, GatewayError> {
    let mut team = fetch(gov, &TEAM, Some(team_id.to_owned())).await?;
    let user_id = member
        .get("user_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let role = member.get("role").and_then(Value::as_str).unwrap_or("user");
    if role != "admin" && role != "user" {
        return Err(
            GatewayError::invalid_request("A member's `role` is `admin` or `user`.")
                .with_param("member"),
        );
    }
    let mut members: Vec<Value> = team
        .data
        .get("members_with_roles")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    members.retain(|m| m.get("user_id").and_then(Value::as_str) != user_id.as_deref());
    members.push(json!({"user_id": user_id, "user_email": member.get("user_email"), "role": role}));
    team.data
        .insert("members_with_roles".into(), Value::Array(members));
    gov.store
        .update(&team, false)
        .await
        .map_err(|e| store_error(&e))?;
    gov.invalidate(Kind::Team, team_id);
    if let Some(uid) = user_id {
        if let Some(mut user) = gov
            .store
            .get(Kind::User, &uid)
            .await
            .map_err(|e| store_error(&e))?
        {
            let mut teams = strings(&user.data, "teams");
            if !teams.iter().any(|t| t == team_id) {
                teams.push(team_id.to_owned());
                user.data.insert("teams".into(), json!(teams));
                gov.store
                    .update(&user, false)
                    .await
                    .map_err(|e| store_error(&e))?;
                gov.invalidate(Kind::User, &uid);
            }
        }
    }
    Ok(team)
}

async fn team_new(State(s): State<AppState>, headers: HeaderMap, ApiBody(b): ApiBody) -> Response {
    respond(
        async {
            let (gov, p) = caller(&s, &headers).await?;
            require_admin(&p, "create teams")?;
            let req = body(&b)?;
            if let Some(org) = text(&req, "organization_id") {
                fetch(&gov, &ORG, Some(org)).await?;
            }
            let team = create(&gov, &TEAM, &req).await?;
            let mut team = team;
            for m in team
                .data
                .get("members_with_roles")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
            {
                team = add_member(&gov, &team.id, m).await?;
            }
            Ok(view(&team))
        }
        .await,
    )
}

async fn team_update(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiBody(b): ApiBody,
) -> Response {
    respond(
        async {
            let (gov, p) = caller(&s, &headers).await?;
            let req = body(&b)?;
            let team = fetch(&gov, &TEAM, text(&req, "team_id")).await?;
            if p.role != Role::ProxyAdmin {
                if !(p.role.can_write() && p.is_team_admin(&team)) {
                    return Err(forbidden("update this team"));
                }
                // A team admin names and describes the team; its budget, limits, models,
                // members and blocks are a proxy admin's.
                if let Some(field) = req
                    .keys()
                    .find(|f| !matches!(f.as_str(), "team_id" | "team_alias" | "metadata"))
                {
                    return Err(GatewayError::new(
                        ErrorKind::PermissionDenied,
                        format!("Only a proxy admin may change a team's `{field}`."),
                    )
                    .with_param(field)
                    .with_code("forbidden"));
                }
            }
            Ok(view(&update(&gov, &TEAM, &req).await?))
        }
        .await,
    )
}

async fn team_delete(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiBody(b): ApiBody,
) -> Response {
    respond(delete_owners(s, headers, b, &TEAM, "team_ids", "deleted_teams").await)
}

/// Delete users or teams (admins only), and the keys they own.
async fn delete_owners(
    s: AppState,
    headers: HeaderMap,
    b: Bytes,
    spec: &Spec,
    ids_field: &str,
    answer: &str,
) -> ApiResult {
    let (gov, p) = caller(&s, &headers).await?;
    require_admin(&p, &format!("delete {}s", spec.label.to_lowercase()))?;
    let req = body(&b)?;
    let ids = remove(&gov, spec, id_list(&req, ids_field), ids_field).await?;
    for id in &ids {
        let filter = match spec.kind {
            Kind::Team => ListFilter {
                team_id: Some(id.clone()),
                ..Default::default()
            },
            _ => ListFilter {
                user_id: Some(id.clone()),
                ..Default::default()
            },
        };
        delete_keys_where(&gov, filter).await?;
    }
    Ok(json!({ answer: ids }))
}

async fn team_info(State(s): State<AppState>, headers: HeaderMap, params: Params) -> Response {
    respond(async {
        let (gov, p) = caller(&s, &headers).await?;
        let team = fetch(&gov, &TEAM, params.get("team_id").cloned()).await?;
        let member = team.data.get("members_with_roles").and_then(Value::as_array).is_some_and(|m| {
            m.iter().any(|m| p.user_id().is_some() && m.get("user_id").and_then(Value::as_str) == p.user_id())
        });
        if !p.role.is_admin() && !member && p.team.as_ref().map(|t| &t.id) != Some(&team.id) {
            return Err(forbidden("see this team"));
        }
        if p.delegated_team().is_some_and(|t| t != team.id) {
            return Err(forbidden("see teams other than this key's"));
        }
        // A plain member sees the team, and only their own keys in it.
        let mut filter = ListFilter { team_id: Some(team.id.clone()), ..Default::default() };
        if !p.role.is_admin() && !p.is_team_admin(&team) {
            filter.user_id = Some(p.user_id().unwrap_or("").to_owned());
        }
        let keys = list_all(&gov, Kind::Key, filter).await?;
        Ok(json!({"team_id": team.id, "team_info": view(&live(&gov, team.clone()).await), "keys": keys, "team_memberships": []}))
    }.await)
}

async fn team_list(State(s): State<AppState>, headers: HeaderMap, params: Params) -> Response {
    respond(
        async {
            let (gov, p) = caller(&s, &headers).await?;
            let mut teams = list_all(
                &gov,
                Kind::Team,
                ListFilter {
                    organization_id: params.get("organization_id").cloned(),
                    ..Default::default()
                },
            )
            .await?;
            if !p.role.is_admin() {
                let me = p.user_id().unwrap_or("");
                teams.retain(|t| {
                    t.get("members_with_roles")
                        .and_then(Value::as_array)
                        .is_some_and(|m| {
                            m.iter()
                                .any(|m| m.get("user_id").and_then(Value::as_str) == Some(me))
                        })
                });
            }
            Ok(Value::Array(teams))
        }
        .await,
    )
}

async fn team_member_add(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiBody(b): ApiBody,
) -> Response {
    respond(
        async {
            let (gov, p) = caller(&s, &headers).await?;
            let req = body(&b)?;
            let team_id = text(&req, "team_id").ok_or_else(|| missing("team_id"))?;
            let team = fetch(&gov, &TEAM, Some(team_id.clone())).await?;
            if p.role != Role::ProxyAdmin && !(p.role.can_write() && p.is_team_admin(&team)) {
                return Err(forbidden("add team members"));
            }
            let members = match req.get("member") {
                Some(Value::Array(a)) => a.clone(),
                Some(m @ Value::Object(_)) => vec![m.clone()],
                _ => return Err(missing("member")),
            };
            if p.role != Role::ProxyAdmin {
                // A team admin adds existing users as plain members; admins are a proxy
                // admin's to appoint.
                for m in &members {
                    if m.get("role")
                        .and_then(Value::as_str)
                        .is_some_and(|r| r != "user")
                    {
                        return Err(forbidden("add team admins"));
                    }
                    let id = m
                        .get("user_id")
                        .and_then(Value::as_str)
                        .ok_or_else(|| missing("member.user_id"))?;
                    if gov.object(Kind::User, id).await?.is_none() {
                        return Err(not_found("User", id));
                    }
                }
            }
            let mut team = team;
            for m in members {
                team = add_member(&gov, &team_id, m).await?;
            }
            Ok(view(&team))
        }
        .await,
    )
}

async fn team_member_delete(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiBody(b): ApiBody,
) -> Response {
    respond(
        async {
            let (gov, p) = caller(&s, &headers).await?;
            let req = body(&b)?;
            let mut team = fetch(&gov, &TEAM, text(&req, "team_id")).await?;
            if p.role != Role::ProxyAdmin && !(p.role.can_write() && p.is_team_admin(&team)) {
                return Err(forbidden("remove team members"));
            }
            let user_id = text(&req, "user_id").ok_or_else(|| missing("user_id"))?;
            if p.role != Role::ProxyAdmin {
                let admin_listed = strings(&team.data, "admins").contains(&user_id)
                    || team
                        .data
                        .get("members_with_roles")
                        .and_then(Value::as_array)
                        .is_some_and(|m| {
                            m.iter().any(|m| {
                                m.get("user_id").and_then(Value::as_str) == Some(user_id.as_str())
                                    && m.get("role").and_then(Value::as_str) == Some("admin")
                            })
                        });
                if admin_listed {
                    return Err(forbidden("remove team admins"));
                }
            }
            let mut members: Vec<Value> = team
                .data
                .get("members_with_roles")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let before = members.len();
            members.retain(|m| m.get("user_id").and_then(Value::as_str) != Some(user_id.as_str()));
            let listed = ["members", "admins"]
                .iter()
                .any(|f| strings(&team.data, f).contains(&user_id));
            if members.len() == before && !listed {
                return Err(not_found("Team member", &user_id));
            }
            for field in ["members", "admins"] {
                if team.data.contains_key(field) {
                    let kept: Vec<String> = strings(&team.data, field)
                        .into_iter()
                        .filter(|m| *m != user_id)
                        .collect();
                    team.data.insert(field.into(), json!(kept));
                }
            }
            // A member who left holds no key of the team any more.
            delete_keys_where(
                &gov,
                ListFilter {
                    user_id: Some(user_id.clone()),
                    team_id: Some(team.id.clone()),
                    ..Default::default()
                },
            )
            .await?;
            team.data
                .insert("members_with_roles".into(), Value::Array(members));
            gov.store
                .update(&team, false)
                .await
                .map_err(|e| store_error(&e))?;
            gov.invalidate(Kind::Team, &team.id);
            if let Some(mut user) = gov
                .store
                .get(Kind::User, &user_id)
                .await
                .map_err(|e| store_error(&e))?
            {
                let teams: Vec<String> = strings(&user.data, "teams")
                    .into_iter()
                    .filter(|t| *t != team.id)
                    .collect();
                user.data.insert("teams".into(), json!(teams));
                gov.store
                    .update(&user, false)
                    .await
                    .map_err(|e| store_error(&e))?;
                gov.invalidate(Kind::User, &user_id);
            }
            Ok(view(&team))
        }
        .await,
    )
}

async fn set_blocked(
    s: AppState,
    headers: HeaderMap,
    b: Bytes,
    spec: &Spec,
    field: &str,
    blocked: bool,
) -> ApiResult {
    let (gov, p) = caller(&s, &headers).await?;
    require_admin(&p, "block or unblock")?;
    let req = body(&b)?;
    let ids = match id_list(&req, field) {
        ids if !ids.is_empty() => ids,
        _ => id_list(&req, spec.id_field),
    };
    if ids.is_empty() {
        return Err(missing(field));
    }
    let mut out = Vec::new();
    for id in ids {
        let mut obj = fetch(&gov, spec, Some(id.clone())).await?;
        obj.data.insert("blocked".into(), json!(blocked));
        gov.store
            .update(&obj, false)
            .await
            .map_err(|e| store_error(&e))?;
        gov.invalidate(spec.kind, &id);
        out.push(view(&obj));
    }
    Ok(if out.len() == 1 {
        out.remove(0)
    } else {
        Value::Array(out)
    })
}

async fn team_block(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiBody(b): ApiBody,
) -> Response {
    respond(set_blocked(s, headers, b, &TEAM, "team_id", true).await)
}

async fn team_unblock(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiBody(b): ApiBody,
) -> Response {
    respond(set_blocked(s, headers, b, &TEAM, "team_id", false).await)
}

// organizations

async fn org_delete(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiBody(b): ApiBody,
) -> Response {
    respond(
        async {
            let (gov, p) = caller(&s, &headers).await?;
            require_admin(&p, "delete organizations")?;
            let req = body(&b)?;
            let ids = remove(
                &gov,
                &ORG,
                id_list(&req, "organization_ids"),
                "organization_ids",
            )
            .await?;
            Ok(Value::Array(
                ids.into_iter()
                    .map(|id| json!({"organization_id": id}))
                    .collect(),
            ))
        }
        .await,
    )
}

async fn org_info_value(s: AppState, headers: HeaderMap, id: Option<String>) -> ApiResult {
    let (gov, p) = caller(&s, &headers).await?;
    let org = fetch(&gov, &ORG, id).await?;
    if !p.role.is_admin() && p.organization.as_ref().map(|o| &o.id) != Some(&org.id) {
        return Err(forbidden("see this organization"));
    }
    let teams = list_all(
        &gov,
        Kind::Team,
        ListFilter {
            organization_id: Some(org.id.clone()),
            ..Default::default()
        },
    )
    .await?;
    let mut out = view(&live(&gov, org).await);
    out["teams"] = Value::Array(teams);
    Ok(out)
}

async fn org_info(State(s): State<AppState>, headers: HeaderMap, params: Params) -> Response {
    respond(org_info_value(s, headers, params.get("organization_id").cloned()).await)
}

async fn org_info_post(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiBody(b): ApiBody,
) -> Response {
    respond(
        async {
            let req = body(&b)?;
            let id = text(&req, "organization_id")
                .or_else(|| id_list(&req, "organizations").into_iter().next());
            org_info_value(s, headers, id).await
        }
        .await,
    )
}

// customers (end users)

async fn customer_new(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiBody(b): ApiBody,
) -> Response {
    respond(
        async {
            let (gov, p) = caller(&s, &headers).await?;
            require_admin(&p, "create customers")?;
            let req = body(&b)?;
            if text(&req, "user_id").is_none() {
                return Err(missing("user_id"));
            }
            if let Some(budget) = text(&req, "budget_id") {
                fetch(&gov, &BUDGET, Some(budget)).await?;
            }
            Ok(view(&create(&gov, &CUSTOMER, &req).await?))
        }
        .await,
    )
}

async fn customer_info(State(s): State<AppState>, headers: HeaderMap, params: Params) -> Response {
    respond(
        async {
            let (gov, p) = caller(&s, &headers).await?;
            require_reader(&p, "see customers")?;
            let id = params
                .get("end_user_id")
                .or_else(|| params.get("user_id"))
                .cloned();
            Ok(view(&live(&gov, fetch(&gov, &CUSTOMER, id).await?).await))
        }
        .await,
    )
}

async fn customer_block(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiBody(b): ApiBody,
) -> Response {
    respond(set_blocked(s, headers, b, &CUSTOMER, "user_ids", true).await)
}

async fn customer_unblock(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiBody(b): ApiBody,
) -> Response {
    respond(set_blocked(s, headers, b, &CUSTOMER, "user_ids", false).await)
}

// budgets

async fn budget_info(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiBody(b): ApiBody,
) -> Response {
    respond(
        async {
            let (gov, p) = caller(&s, &headers).await?;
            require_reader(&p, "see budgets")?;
            let req = body(&b)?;
            let ids = id_list(&req, "budgets");
            if ids.is_empty() {
                return Err(missing("budgets"));
            }
            Ok(Value::Array(
                list_all(
                    &gov,
                    Kind::Budget,
                    ListFilter {
                        ids: Some(ids),
                        ..Default::default()
                    },
                )
                .await?,
            ))
        }
        .await,
    )
}

// ---------- spend ----------

/// `YYYY-MM-DD` (or RFC 3339) → unix ms at the start of that day / instant.
fn date_ms(text: &str) -> Option<i64> {
    parse_time(text).or_else(|| parse_time(&format!("{text}T00:00:00Z")))
}

fn day_range(params: &Params) -> (String, String) {
    let now = llmux_store::now_ms();
    let start = params
        .get("start_date")
        .and_then(|d| date_ms(d))
        .unwrap_or(now - 30 * 86_400_000);
    let end = params
        .get("end_date")
        .and_then(|d| date_ms(d))
        .unwrap_or(now);
    (llmux_store::utc_day(start), llmux_store::utc_day(end))
}

fn log_view(r: &llmux_store::SpendRecord) -> Value {
    json!({
        "request_id": r.request_id,
        "client_request_id": r.client_request_id,
        "call_type": r.call_type,
        "api_key": r.api_key,
        "spend": r.spend,
        "total_tokens": r.total_tokens,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "cached_tokens": r.cached_tokens,
        "reasoning_tokens": r.reasoning_tokens,
        "startTime": format_time(r.start_time),
        "endTime": format_time(r.end_time),
        "completionStartTime": r.ttft_ms.map(|t| format_time(r.start_time + t)),
        "model": r.model,
        "model_group": r.model_group,
        "model_id": r.deployment_id,
        "custom_llm_provider": r.provider,
        "user": r.user_id,
        "team_id": r.team_id,
        "organization_id": r.organization_id,
        "end_user": r.end_user,
        "request_tags": r.tags,
        "cache_hit": r.cache_hit.to_string(),
        "status": r.status,
        "error_kind": r.error_kind,
    })
}

async fn spend_logs(State(s): State<AppState>, headers: HeaderMap, params: Params) -> Response {
    respond(
        async {
            let (gov, p) = caller(&s, &headers).await?;
            let mut filter = SpendFilter {
                request_id: params.get("request_id").cloned(),
                client_request_id: params.get("client_request_id").cloned(),
                api_key: params.get("api_key").map(|k| hash_key(k)),
                user_id: params.get("user_id").cloned(),
                team_id: params.get("team_id").cloned(),
                start: params.get("start_date").and_then(|d| date_ms(d)),
                end: params
                    .get("end_date")
                    .and_then(|d| date_ms(d))
                    .map(|e| e + 86_400_000),
                limit: params.get("limit").and_then(|l| l.parse().ok()),
            };
            if !p.role.is_admin() {
                // Users see their own requests only.
                let me = p.user_id().map(str::to_owned);
                match me {
                    Some(me) => filter.user_id = Some(me),
                    None => filter.api_key = p.key.as_ref().map(|k| k.id.clone()),
                }
            }
            let rows = gov
                .store
                .spend_logs(&filter)
                .await
                .map_err(|e| store_error(&e))?;
            Ok(Value::Array(rows.iter().map(log_view).collect()))
        }
        .await,
    )
}

async fn spend_keys(State(s): State<AppState>, headers: HeaderMap) -> Response {
    respond(
        async {
            let (gov, p) = caller(&s, &headers).await?;
            require_reader(&p, "see spend per key")?;
            Ok(Value::Array(
                list_all(&gov, Kind::Key, ListFilter::default()).await?,
            ))
        }
        .await,
    )
}

async fn spend_users(State(s): State<AppState>, headers: HeaderMap, params: Params) -> Response {
    respond(
        async {
            let (gov, p) = caller(&s, &headers).await?;
            let filter = match params.get("user_id") {
                Some(u) => ListFilter {
                    ids: Some(vec![u.clone()]),
                    ..Default::default()
                },
                None => ListFilter::default(),
            };
            if !p.role.is_admin()
                && (p.user_id().is_none()
                    || params.get("user_id").map(String::as_str) != p.user_id())
            {
                return Err(forbidden("see other users' spend"));
            }
            Ok(Value::Array(list_all(&gov, Kind::User, filter).await?))
        }
        .await,
    )
}

/// Rollups of `kind` summed per entity (and optionally per model group).
async fn totals(
    gov: &Governance,
    kind: &str,
    params: &Params,
) -> Result<Vec<(String, String, i64, f64)>, GatewayError> {
    let (start, end) = day_range(params);
    let rows = gov
        .store
        .daily_spend(kind, None, &start, &end)
        .await
        .map_err(|e| store_error(&e))?;
    let mut by: std::collections::BTreeMap<(String, String), (i64, f64)> = Default::default();
    for r in rows {
        let e = by.entry((r.entity_id, r.model_group)).or_default();
        e.0 += r.requests;
        e.1 += r.spend;
    }
    Ok(by
        .into_iter()
        .map(|((e, m), (n, s))| (e, m, n, s))
        .collect())
}

fn top(mut items: Vec<(String, i64, f64)>, params: &Params) -> Vec<(String, i64, f64)> {
    items.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal));
    let limit = params
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(usize::MAX);
    items.truncate(limit);
    items
}

fn per_entity(rows: Vec<(String, String, i64, f64)>) -> Vec<(String, i64, f64)> {
    let mut by: std::collections::BTreeMap<String, (i64, f64)> = Default::default();
    for (e, _, n, s) in rows {
        let x = by.entry(e).or_default();
        x.0 += n;
        x.1 += s;
    }
    by.into_iter().map(|(e, (n, s))| (e, n, s)).collect()
}

async fn spend_tags(State(s): State<AppState>, headers: HeaderMap, params: Params) -> Response {
    respond(async {
        let (gov, p) = caller(&s, &headers).await?;
        require_reader(&p, "see spend per tag")?;
        let rows = top(per_entity(totals(&gov, "tag", &params).await?), &params);
        Ok(json!({"spend_per_tag": rows.iter().map(|(t, n, s)| json!({"individual_request_tag": t, "log_count": n, "total_spend": s})).collect::<Vec<_>>()}))
    }.await)
}

async fn global_spend(State(s): State<AppState>, headers: HeaderMap, params: Params) -> Response {
    respond(
        async {
            let (gov, p) = caller(&s, &headers).await?;
            require_reader(&p, "see global spend")?;
            let rows = totals(&gov, "all", &params).await?;
            let spend: f64 = rows.iter().map(|r| r.3).sum();
            Ok(json!({"spend": spend, "max_budget": Value::Null}))
        }
        .await,
    )
}

async fn global_spend_keys(
    State(s): State<AppState>,
    headers: HeaderMap,
    params: Params,
) -> Response {
    respond(
        async {
            let (gov, p) = caller(&s, &headers).await?;
            require_reader(&p, "see spend per key")?;
            let rows = top(per_entity(totals(&gov, "key", &params).await?), &params);
            let mut out = Vec::new();
            for (key, _, spend) in rows {
                let stored = gov
                    .store
                    .get(Kind::Key, &key)
                    .await
                    .map_err(|e| store_error(&e))?;
                out.push(json!({
                    "api_key": key,
                    "total_spend": spend,
                    "key_alias": stored.as_ref().and_then(|k| k.data.get("key_alias").cloned()),
                    "key_name": stored.as_ref().and_then(|k| k.data.get("key_name").cloned()),
                }));
            }
            Ok(Value::Array(out))
        }
        .await,
    )
}

async fn global_spend_models(
    State(s): State<AppState>,
    headers: HeaderMap,
    params: Params,
) -> Response {
    respond(
        async {
            let (gov, p) = caller(&s, &headers).await?;
            require_reader(&p, "see spend per model")?;
            let rows = totals(&gov, "model", &params).await?;
            let per_model: Vec<(String, i64, f64)> = per_entity(
                rows.into_iter()
                    .map(|(_, m, n, s)| (m, String::new(), n, s))
                    .collect(),
            );
            Ok(Value::Array(
                top(per_model, &params)
                    .into_iter()
                    .map(|(m, n, s)| json!({"model": m, "total_spend": s, "requests": n}))
                    .collect(),
            ))
        }
        .await,
    )
}

async fn global_spend_teams(
    State(s): State<AppState>,
    headers: HeaderMap,
    params: Params,
) -> Response {
    respond(async {
        let (gov, p) = caller(&s, &headers).await?;
        require_reader(&p, "see spend per team")?;
        let (start, end) = day_range(&params);
        let rows = gov.store.daily_spend("team", None, &start, &end).await.map_err(|e| store_error(&e))?;
        let mut daily: std::collections::BTreeMap<String, Map<String, Value>> = Default::default();
        let mut totals_by: std::collections::BTreeMap<String, f64> = Default::default();
        for r in rows {
            let day = daily.entry(r.day.clone()).or_default();
            let v = day.get(&r.entity_id).and_then(Value::as_f64).unwrap_or(0.0) + r.spend;
            day.insert(r.entity_id.clone(), json!(v));
            *totals_by.entry(r.entity_id).or_default() += r.spend;
        }
        Ok(json!({
            "daily_spend": daily.into_iter().map(|(d, mut m)| { m.insert("date".into(), json!(d)); Value::Object(m) }).collect::<Vec<_>>(),
            "teams": totals_by.keys().collect::<Vec<_>>(),
            "total_spend_per_team": totals_by.iter().map(|(t, s)| json!({"team_id": t, "total_spend": s})).collect::<Vec<_>>(),
        }))
    }.await)
}

// ---------- models ----------

async fn model_new(State(s): State<AppState>, headers: HeaderMap, ApiBody(b): ApiBody) -> Response {
    respond(
        async {
            let (gov, p) = caller(&s, &headers).await?;
            require_admin(&p, "add models")?;
            let req = body(&b)?;
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
            crate::models::check_model(&obj, &s.base_config.load())?;
            if !gov.store.insert(&obj).await.map_err(|e| store_error(&e))? {
                return Err(
                    GatewayError::invalid_request(format!("Model `{id}` already exists."))
                        .with_code("already_exists"),
                );
            }
            crate::models::apply_db_models(&s).await?;
            gov.invalidate(Kind::Model, &obj.id);
            Ok(crate::models::model_view(&obj.data))
        }
        .await,
    )
}

async fn model_update(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiBody(b): ApiBody,
) -> Response {
    respond(
        async {
            let (gov, p) = caller(&s, &headers).await?;
            require_admin(&p, "update models")?;
            let req = body(&b)?;
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
                .await
                .map_err(|e| store_error(&e))?
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
            crate::models::check_model(&obj, &s.base_config.load())?;
            gov.store
                .update(&obj, false)
                .await
                .map_err(|e| store_error(&e))?;
            crate::models::apply_db_models(&s).await?;
            gov.invalidate(Kind::Model, &obj.id);
            Ok(crate::models::model_view(&obj.data))
        }
        .await,
    )
}

async fn model_delete(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiBody(b): ApiBody,
) -> Response {
    respond(
        async {
            let (gov, p) = caller(&s, &headers).await?;
            require_admin(&p, "delete models")?;
            let req = body(&b)?;
            let id = text(&req, "id").ok_or_else(|| missing("id"))?;
            if gov
                .store
                .delete(Kind::Model, std::slice::from_ref(&id))
                .await
                .map_err(|e| store_error(&e))?
                == 0
            {
                return Err(not_found("Model", &id));
            }
            crate::models::apply_db_models(&s).await?;
            gov.invalidate(Kind::Model, &id);
            Ok(json!({"message": format!("Model: {id} deleted successfully")}))
        }
        .await,
    )
}

async fn model_info(State(s): State<AppState>, headers: HeaderMap) -> Response {
    respond(
        async {
            let (_, p) = caller(&s, &headers).await?;
            let mut models = crate::models::all_models(&s);
            if !p.role.is_admin() {
                // A user sees the deployments of the models they may use, without where
                // they are served from or how.
                models.retain(|m| {
                    m.get("model_name")
                        .and_then(Value::as_str)
                        .is_some_and(|name| super::may_use_model(&s.client, &p, name))
                });
                for m in &mut models {
                    if let Some(params) = m.get_mut("litellm_params").and_then(Value::as_object_mut)
                    {
                        params.retain(|k, _| k == "model");
                    }
                }
            }
            Ok(json!({"data": models}))
        }
        .await,
    )
}
