//! Virtual keys: generate, update, delete, info, list, regenerate, block. Who may act on a key
//! (`authority_over`), what a minted key may inherit (`inherit_ceilings`), and the authority a
//! change records on the key.

use llmux_store::{Kind, ListFilter, Object};
use llmux_types::{ErrorKind, GatewayError};
use serde_json::{json, Map, Value};

use super::*;
use crate::keys::{generate_key, hash_key, key_name, strings, Authority, Principal, Role};
use crate::{format_time, parse_time, Governance};

pub async fn key_generate(c: Caller, req: Body) -> ApiResult {
    let Caller { gov, principal: p } = c;
    create_key(&gov, &p, &req).await
}

/// The role a key acts with: its user's role, capped by the key's `max_role`.
pub async fn key_role(gov: &Governance, key: &Object) -> Result<Role, GatewayError> {
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
            .await?
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
        if gov.store.update_if_unchanged(&carved, &parent.data).await? {
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

pub(crate) async fn create_key(
    gov: &Governance,
    p: &Principal,
    req: &Map<String, Value>,
) -> ApiResult {
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
    if !gov.store.insert(&obj).await? {
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
        .await?;
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
        .await?
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

pub async fn key_update(c: Caller, req: Body) -> ApiResult {
    let Caller { gov, principal: p } = c;
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
    gov.store.update(&obj, set_spend.is_some()).await?;
    gov.invalidate(Kind::Key, &obj.id);
    if set_spend.is_some() || req.contains_key("budget_duration") {
        gov.set_spend(Kind::Key, &obj.id, obj.spend, obj.budget_reset_at)
            .await;
    }
    let mut out = view(&obj);
    out["key"] = json!(obj.id);
    Ok(out)
}

pub async fn key_delete(c: Caller, req: Body) -> ApiResult {
    let Caller { gov, principal: p } = c;
    let mut targets = Vec::new();
    for k in id_list(&req, "keys") {
        targets.push(named_key(&gov, Some(k)).await?);
    }
    for alias in id_list(&req, "key_aliases") {
        let found = gov
            .store
            .list(
                Kind::Key,
                &ListFilter {
                    alias: Some(alias.clone()),
                    ..Default::default()
                },
            )
            .await?;
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
    gov.store.delete(Kind::Key, &ids).await?;
    for id in &ids {
        gov.invalidate(Kind::Key, id);
    }
    Ok(
        json!({"deleted_keys": id_list(&req, "keys").into_iter().chain(id_list(&req, "key_aliases")).collect::<Vec<_>>()}),
    )
}

pub async fn key_info(c: Caller, params: Query) -> ApiResult {
    let Caller { gov, principal: p } = c;
    let obj = match params.get("key") {
        Some(k) => named_key(&gov, Some(k.clone())).await?,
        None => p
            .key
            .as_ref()
            .map(|k| k.object.clone())
            .ok_or_else(|| missing("key"))?,
    };
    let own = p.key.as_ref().is_some_and(|k| k.id == obj.id);
    if !own && !p.role.is_admin() && !may_read_key(&gov, &p, &obj).await? {
        return Err(forbidden("see this key"));
    }
    let obj = live(&gov, obj).await;
    Ok(
        json!({"key": params.get("key").cloned().unwrap_or_else(|| obj.id.clone()), "info": view(&obj)}),
    )
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

pub async fn key_list(c: Caller, params: Query) -> ApiResult {
    let Caller { gov, principal: p } = c;
    let mut filter = ListFilter {
        user_id: params.get("user_id").cloned(),
        team_id: params.get("team_id").cloned(),
        organization_id: params.get("organization_id").cloned(),
        alias: params.get("key_alias").cloned(),
        ..Default::default()
    };
    if !p.role.is_admin() {
        let team_admin = match &filter.team_id {
            Some(t) => gov
                .object(Kind::Team, t)
                .await?
                .is_some_and(|t| p.is_team_admin(&t)),
            None => false,
        };
        if !team_admin {
            filter.user_id = Some(
                p.user_id()
                    .ok_or_else(|| forbidden("list keys"))?
                    .to_owned(),
            );
        }
        if let Some(team) = p.delegated_team() {
            filter.team_id = Some(team.to_owned());
        }
    }
    let total = gov.store.count(Kind::Key, &filter).await?;
    let (page, size) = page(&params);
    filter.offset = (page - 1).saturating_mul(size);
    filter.limit = Some(size);
    let keys = gov.store.list(Kind::Key, &filter).await?;
    let full = params
        .get("return_full_object")
        .is_some_and(|v| v == "true");
    let keys: Vec<Value> = if full {
        live_all(&gov, keys).await.iter().map(view).collect()
    } else {
        keys.into_iter().map(|k| json!(k.id)).collect()
    };
    Ok(
        json!({"keys": keys, "total_count": total, "current_page": page, "total_pages": total.div_ceil(size)}),
    )
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
    if !gov.store.insert(&obj).await? {
        return Err(
            GatewayError::invalid_request("This key already exists.").with_code("key_exists")
        );
    }
    gov.store
        .delete(Kind::Key, std::slice::from_ref(&old.id))
        .await?;
    gov.invalidate(Kind::Key, &old.id);
    gov.invalidate(Kind::Key, &obj.id);
    gov.set_spend(Kind::Key, &obj.id, obj.spend, obj.budget_reset_at)
        .await;
    let mut out = view(&obj);
    out["key"] = json!(key);
    out["token_id"] = json!(obj.id);
    Ok(out)
}

pub async fn key_regenerate(c: Caller, req: Body) -> ApiResult {
    let Caller { gov, principal: p } = c;
    regenerate(&gov, &p, text(&req, "key"), &req).await
}

/// `POST /key/{key}/regenerate`: the key named in the path.
pub async fn key_regenerate_path(c: Caller, key: String, req: Body) -> ApiResult {
    let Caller { gov, principal: p } = c;
    regenerate(&gov, &p, Some(key), &req).await
}

/// `/key/block` and `/key/unblock`.
pub async fn set_key_blocked(c: Caller, req: Body, blocked: bool) -> ApiResult {
    let Caller { gov, principal: p } = c;
    let mut obj = named_key(&gov, text(&req, "key")).await?;
    let mut change = Map::new();
    change.insert("blocked".into(), json!(blocked));
    let authority = check_key_change(&gov, &p, &obj, &change).await?;
    record_key_authority(&p, &mut obj, &change, authority);
    obj.data.insert("blocked".into(), json!(blocked));
    gov.store.update(&obj, false).await?;
    gov.invalidate(Kind::Key, &obj.id);
    Ok(view(&obj))
}
