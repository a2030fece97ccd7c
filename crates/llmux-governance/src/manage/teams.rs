//! Teams: create, update, delete, info, list, members (add, remove) and blocks.

use llmux_store::{Kind, ListFilter, Object};
use llmux_types::GatewayError;
use serde_json::{json, Value};

use super::owners::{create, delete_keys_where, fetch, list_all, update};
use super::*;
use crate::keys::{strings, Role};
use crate::Governance;

pub(crate) async fn add_member(
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
    gov.store.update(&team, false).await?;
    gov.invalidate(Kind::Team, team_id);
    if let Some(uid) = user_id {
        if let Some(mut user) = gov.store.get(Kind::User, &uid).await? {
            let mut teams = strings(&user.data, "teams");
            if !teams.iter().any(|t| t == team_id) {
                teams.push(team_id.to_owned());
                user.data.insert("teams".into(), json!(teams));
                gov.store.update(&user, false).await?;
                gov.invalidate(Kind::User, &uid);
            }
        }
    }
    Ok(team)
}

pub async fn team_new(c: Caller, req: Body) -> ApiResult {
    let Caller { gov, principal: p } = c;
    require_admin(&p, "create teams")?;
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

pub async fn team_update(c: Caller, req: Body) -> ApiResult {
    let Caller { gov, principal: p } = c;
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

pub async fn team_info(c: Caller, params: Query) -> ApiResult {
    let Caller { gov, principal: p } = c;
    let team = fetch(&gov, &TEAM, params.get("team_id").cloned()).await?;
    let member = team
        .data
        .get("members_with_roles")
        .and_then(Value::as_array)
        .is_some_and(|m| {
            m.iter().any(|m| {
                p.user_id().is_some() && m.get("user_id").and_then(Value::as_str) == p.user_id()
            })
        });
    if !p.role.is_admin() && !member && p.team.as_ref().map(|t| &t.id) != Some(&team.id) {
        return Err(forbidden("see this team"));
    }
    if p.delegated_team().is_some_and(|t| t != team.id) {
        return Err(forbidden("see teams other than this key's"));
    }
    // A plain member sees the team, and only their own keys in it.
    let mut filter = ListFilter {
        team_id: Some(team.id.clone()),
        ..Default::default()
    };
    if !p.role.is_admin() && !p.is_team_admin(&team) {
        filter.user_id = Some(p.user_id().unwrap_or("").to_owned());
    }
    let keys = list_all(&gov, Kind::Key, filter).await?;
    Ok(
        json!({"team_id": team.id, "team_info": view(&live(&gov, team.clone()).await), "keys": keys, "team_memberships": []}),
    )
}

pub async fn team_list(c: Caller, params: Query) -> ApiResult {
    let Caller { gov, principal: p } = c;
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

pub async fn team_member_add(c: Caller, req: Body) -> ApiResult {
    let Caller { gov, principal: p } = c;
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

pub async fn team_member_delete(c: Caller, req: Body) -> ApiResult {
    let Caller { gov, principal: p } = c;
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
    gov.store.update(&team, false).await?;
    gov.invalidate(Kind::Team, &team.id);
    if let Some(mut user) = gov.store.get(Kind::User, &user_id).await? {
        let teams: Vec<String> = strings(&user.data, "teams")
            .into_iter()
            .filter(|t| *t != team.id)
            .collect();
        user.data.insert("teams".into(), json!(teams));
        gov.store.update(&user, false).await?;
        gov.invalidate(Kind::User, &user_id);
    }
    Ok(view(&team))
}
