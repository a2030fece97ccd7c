//! Users, organizations, customers (end users) and budgets, and what every owner kind shares:
//! create, fetch, update, delete (with the keys it owns), list, block. Teams, which have
//! members, are in `teams.rs`.

use llmux_store::{Kind, ListFilter, Object};
use llmux_types::GatewayError;
use serde_json::{json, Map, Value};

use super::keys::create_key;
use super::teams::add_member;
use super::*;
use crate::keys::strings;
use crate::Governance;

pub struct Spec {
    pub kind: Kind,
    pub id_field: &'static str,
    pub label: &'static str,
    pub fields: &'static [&'static str],
}

pub const USER: Spec = Spec {
    kind: Kind::User,
    id_field: "user_id",
    label: "User",
    fields: USER_FIELDS,
};
pub const TEAM: Spec = Spec {
    kind: Kind::Team,
    id_field: "team_id",
    label: "Team",
    fields: TEAM_FIELDS,
};
pub const ORG: Spec = Spec {
    kind: Kind::Organization,
    id_field: "organization_id",
    label: "Organization",
    fields: ORG_FIELDS,
};
pub const CUSTOMER: Spec = Spec {
    kind: Kind::Customer,
    id_field: "user_id",
    label: "End user",
    fields: CUSTOMER_FIELDS,
};
pub const BUDGET: Spec = Spec {
    kind: Kind::Budget,
    id_field: "budget_id",
    label: "Budget",
    fields: &[],
};

pub(crate) async fn create(
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
    if !gov.store.insert(&obj).await? {
        return Err(GatewayError::invalid_request(format!(
            "{} `{id}` already exists.",
            spec.label
        ))
        .with_code("already_exists"));
    }
    gov.invalidate(spec.kind, &id);
    Ok(obj)
}

pub(crate) async fn fetch(
    gov: &Governance,
    spec: &Spec,
    id: Option<String>,
) -> Result<Object, GatewayError> {
    let id = id.ok_or_else(|| missing(spec.id_field))?;
    gov.store
        .get(spec.kind, &id)
        .await?
        .ok_or_else(|| not_found(spec.label, &id))
}

pub(crate) async fn update(
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
    gov.store.update(&obj, set_spend.is_some()).await?;
    gov.invalidate(spec.kind, &obj.id);
    if set_spend.is_some() || req.contains_key("budget_duration") {
        gov.set_spend(spec.kind, &obj.id, obj.spend, obj.budget_reset_at)
            .await;
    }
    Ok(obj)
}

pub(crate) async fn remove(
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
    gov.store.delete(spec.kind, &ids).await?;
    for id in &ids {
        gov.invalidate(spec.kind, id);
        gov.forget_spend(spec.kind, id).await;
    }
    Ok(ids)
}

/// Delete every key the filter matches (a deleted user's or team's keys).
pub(crate) async fn delete_keys_where(
    gov: &Governance,
    filter: ListFilter,
) -> Result<(), GatewayError> {
    let keys = gov.store.list(Kind::Key, &filter).await?;
    let ids: Vec<String> = keys.into_iter().map(|k| k.id).collect();
    gov.store.delete(Kind::Key, &ids).await?;
    for id in ids {
        gov.invalidate(Kind::Key, &id);
    }
    Ok(())
}

pub(crate) async fn list_all(
    gov: &Governance,
    kind: Kind,
    filter: ListFilter,
) -> Result<Vec<Value>, GatewayError> {
    let objects = gov.store.list(kind, &filter).await?;
    Ok(live_all(gov, objects).await.iter().map(view).collect())
}

// users

pub async fn user_new(c: Caller, req: Body) -> ApiResult {
    let Caller { gov, principal: p } = c;
    require_admin(&p, "create users")?;
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

pub async fn user_info(c: Caller, params: Query) -> ApiResult {
    let Caller { gov, principal: p } = c;
    let id = params
        .get("user_id")
        .cloned()
        .or_else(|| p.user_id().map(str::to_owned))
        .ok_or_else(|| missing("user_id"))?;
    if !p.role.is_admin() && p.user_id() != Some(id.as_str()) {
        return Err(forbidden("see other users"));
    }
    let user = fetch(&gov, &USER, Some(id.clone())).await?;
    // A key a team admin made for this user shows only that team's keys.
    let team_id = p.delegated_team().map(str::to_owned);
    let keys = list_all(
        &gov,
        Kind::Key,
        ListFilter {
            user_id: Some(id.clone()),
            team_id,
            ..Default::default()
        },
    )
    .await?;
    let mut teams = Vec::new();
    for t in strings(&user.data, "teams") {
        if let Some(team) = gov.store.get(Kind::Team, &t).await? {
            teams.push(view(&team));
        }
    }
    Ok(
        json!({"user_id": id, "user_info": view(&live(&gov, user).await), "keys": keys, "teams": teams}),
    )
}

pub async fn user_list(c: Caller, params: Query) -> ApiResult {
    let Caller { gov, principal: p } = c;
    require_reader(&p, "list users")?;
    let (page, size) = page(&params);
    let total = gov.store.count(Kind::User, &ListFilter::default()).await?;
    let mut users = list_all(
        &gov,
        Kind::User,
        ListFilter {
            offset: (page - 1) * size,
            limit: Some(size),
            ..Default::default()
        },
    )
    .await?;
    if let Some(role) = params.get("role") {
        users.retain(|u| u.get("user_role").and_then(Value::as_str) == Some(role));
    }
    Ok(
        json!({"users": users, "total": total, "page": page, "page_size": size, "total_pages": total.div_ceil(size)}),
    )
}

// organizations

pub async fn org_delete(c: Caller, req: Body) -> ApiResult {
    let Caller { gov, principal: p } = c;
    require_admin(&p, "delete organizations")?;
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

/// `GET /organization/info?organization_id=`.
pub async fn org_info(c: Caller, params: Query) -> ApiResult {
    let id = params.get("organization_id").cloned();
    org_info_value(c, id).await
}

/// `POST /organization/info` with `organization_id` or `organizations: [id]`.
pub async fn org_info_post(c: Caller, req: Body) -> ApiResult {
    let id =
        text(&req, "organization_id").or_else(|| id_list(&req, "organizations").into_iter().next());
    org_info_value(c, id).await
}

async fn org_info_value(c: Caller, id: Option<String>) -> ApiResult {
    let Caller { gov, principal: p } = c;
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

// customers (end users)

pub async fn customer_new(c: Caller, req: Body) -> ApiResult {
    let Caller { gov, principal: p } = c;
    require_admin(&p, "create customers")?;
    if text(&req, "user_id").is_none() {
        return Err(missing("user_id"));
    }
    if let Some(budget) = text(&req, "budget_id") {
        fetch(&gov, &BUDGET, Some(budget)).await?;
    }
    Ok(view(&create(&gov, &CUSTOMER, &req).await?))
}

pub async fn customer_info(c: Caller, params: Query) -> ApiResult {
    let Caller { gov, principal: p } = c;
    require_reader(&p, "see customers")?;
    let id = params
        .get("end_user_id")
        .or_else(|| params.get("user_id"))
        .cloned();
    Ok(view(&live(&gov, fetch(&gov, &CUSTOMER, id).await?).await))
}

// budgets

pub async fn budget_info(c: Caller, req: Body) -> ApiResult {
    let Caller { gov, principal: p } = c;
    require_reader(&p, "see budgets")?;
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

/// Delete users or teams (admins only), and the keys they own.
pub async fn delete_owners(
    c: Caller,
    req: Body,
    spec: &Spec,
    ids_field: &str,
    answer: &str,
) -> ApiResult {
    let Caller { gov, principal: p } = c;
    require_admin(&p, &format!("delete {}s", spec.label.to_lowercase()))?;
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

pub async fn set_blocked(
    c: Caller,
    req: Body,
    spec: &Spec,
    field: &str,
    blocked: bool,
) -> ApiResult {
    let Caller { gov, principal: p } = c;
    require_admin(&p, "block or unblock")?;
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
        gov.store.update(&obj, false).await?;
        gov.invalidate(spec.kind, &id);
        out.push(view(&obj));
    }
    Ok(if out.len() == 1 {
        out.remove(0)
    } else {
        Value::Array(out)
    })
}
