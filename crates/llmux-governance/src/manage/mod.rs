//! The rules of LiteLLM's management API, with its paths' field names: keys, users, teams,
//! organizations, customers (end users), budgets and spend reports. Each operation takes the
//! authenticated `Caller` and the request's body or query and answers a JSON value or an
//! OpenAI-shaped error; the HTTP server only routes to them. Every operation authenticates;
//! writes need a writing role; users see and change only their own keys (team admins also their
//! team's), viewers only read.

pub mod keys;
pub mod owners;
pub mod spend;
pub mod teams;

use std::collections::HashMap;
use std::sync::Arc;

use llmux_store::{Kind, ListFilter, Object};
use llmux_types::{ErrorKind, GatewayError};
use serde_json::{json, Map, Value};

use crate::budget::Period;
use crate::keys::{Principal, Role};
use crate::{format_time, Governance};

pub use owners::{Spec, BUDGET, CUSTOMER, ORG, TEAM, USER};

/// A JSON request body (an object).
pub type Body = Map<String, Value>;
/// A request's query parameters.
pub type Query = HashMap<String, String>;
/// What an operation answers: the JSON the client gets, or the error it gets.
pub type ApiResult = Result<Value, GatewayError>;

/// Who is calling a management operation: the authenticated principal and the governance it
/// acts on.
#[derive(Clone)]
pub struct Caller {
    pub gov: Arc<Governance>,
    pub principal: Principal,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("role", &self.principal.role)
            .finish()
    }
}

/// Every management route and its methods. The server builds its router from this table (a
/// route not listed here does not exist); `allowed_routes: [management_routes]` means these.
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
    ("/cache/ping", &["GET"]),
    ("/cache/delete", &["POST"]),
];

// ---------- operations every resource shares ----------

/// Create an object of `spec` (admins only).
pub async fn admin_create(c: Caller, req: Body, spec: &'static Spec, what: &str) -> ApiResult {
    require_admin(&c.principal, what)?;
    Ok(view(&owners::create(&c.gov, spec, &req).await?))
}

/// Update an object of `spec` (admins only).
pub async fn admin_update(c: Caller, req: Body, spec: &'static Spec, what: &str) -> ApiResult {
    require_admin(&c.principal, what)?;
    Ok(view(&owners::update(&c.gov, spec, &req).await?))
}

/// `{ids_field: [...]}` deletes objects of `spec` (admins only); answers `{answer: ids}`.
pub async fn admin_delete(
    c: Caller,
    req: Body,
    spec: &'static Spec,
    ids_field: &str,
    answer: &str,
) -> ApiResult {
    require_admin(
        &c.principal,
        &format!("delete {}s", spec.label.to_lowercase()),
    )?;
    let ids = owners::remove(&c.gov, spec, id_list(&req, ids_field), ids_field).await?;
    Ok(json!({ answer: ids }))
}

/// Every object of `kind` (admins and admin viewers).
pub async fn reader_list(c: Caller, kind: Kind, what: &str) -> ApiResult {
    require_reader(&c.principal, what)?;
    Ok(Value::Array(
        owners::list_all(&c.gov, kind, ListFilter::default()).await?,
    ))
}

// ---------- plumbing ----------

pub fn forbidden(what: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::PermissionDenied,
        format!("Your role may not {what}."),
    )
    .with_code("forbidden")
}

pub fn require_admin(p: &Principal, what: &str) -> Result<(), GatewayError> {
    if p.role == Role::ProxyAdmin {
        Ok(())
    } else {
        Err(forbidden(what))
    }
}

pub fn require_reader(p: &Principal, what: &str) -> Result<(), GatewayError> {
    if p.role.is_admin() {
        Ok(())
    } else {
        Err(forbidden(what))
    }
}

pub fn parse_body(bytes: &[u8]) -> Result<Body, GatewayError> {
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

pub fn text(m: &Map<String, Value>, k: &str) -> Option<String> {
    m.get(k)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

pub(crate) fn id_list(m: &Map<String, Value>, k: &str) -> Vec<String> {
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
pub(crate) fn spend_field(req: &Map<String, Value>) -> Result<Option<f64>, GatewayError> {
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

pub fn missing(field: &str) -> GatewayError {
    GatewayError::invalid_request(format!("`{field}` is required.")).with_param(field)
}

pub fn not_found(what: &str, id: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::NotFound,
        format!("{what} `{id}` does not exist."),
    )
    .with_code("not_found")
}

/// Fields clients may set on each kind (everything else in a body is ignored, as LiteLLM does
/// for unknown fields).
pub(crate) const BUDGET_FIELDS: &[&str] = &[
    "max_budget",
    "soft_budget",
    "budget_duration",
    "tpm_limit",
    "rpm_limit",
    "max_parallel_requests",
    "model_max_budget",
    "budget_id",
];
pub(crate) const KEY_FIELDS: &[&str] = &[
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
pub(crate) const USER_FIELDS: &[&str] = &[
    "user_email",
    "user_alias",
    "user_role",
    "teams",
    "models",
    "metadata",
    "organization_id",
    "sso_user_id",
];
pub(crate) const TEAM_FIELDS: &[&str] = &[
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
pub(crate) const ORG_FIELDS: &[&str] = &["organization_alias", "models", "metadata"];
pub(crate) const CUSTOMER_FIELDS: &[&str] = &[
    "alias",
    "blocked",
    "allowed_model_region",
    "default_model",
    "metadata",
];

/// Bounds on what a client may store: names and ids, list lengths, JSON documents.
pub(crate) const MAX_NAME_BYTES: usize = 256;
pub(crate) const MAX_LIST_ITEMS: usize = 1000;
pub(crate) const MAX_DOCUMENT_BYTES: usize = 16 * 1024;

pub(crate) fn validate(field: &str, value: &Value) -> Result<(), GatewayError> {
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
pub(crate) fn apply(
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
pub(crate) fn schedule_reset(obj: &mut Object, now: i64, changed: bool) {
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
pub(crate) fn view(o: &Object) -> Value {
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
pub(crate) async fn live(gov: &Governance, mut o: Object) -> Object {
    let owner = [(o.kind, o.id.clone())];
    if let Some(Some(s)) = gov.live_spend(&owner).await.first() {
        o.spend = o.spend.max(*s);
    }
    o
}

/// `live` for a page of objects (one Redis round trip for all of them).
pub(crate) async fn live_all(gov: &Governance, mut objects: Vec<Object>) -> Vec<Object> {
    let owners: Vec<(Kind, String)> = objects.iter().map(|o| (o.kind, o.id.clone())).collect();
    for (o, spend) in objects.iter_mut().zip(gov.live_spend(&owners).await) {
        if let Some(s) = spend {
            o.spend = o.spend.max(s);
        }
    }
    objects
}

pub(crate) fn page(params: &Query) -> (u64, u64) {
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
