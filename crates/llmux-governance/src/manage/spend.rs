//! Spend reports: `/spend/logs`, `/spend/keys`, `/spend/users`, `/spend/tags` and the
//! `/global/spend*` aggregates, scoped to what the caller may see.

use llmux_store::{Kind, SpendFilter};
use llmux_types::GatewayError;
use serde_json::{json, Map, Value};

use super::owners::list_all;
use super::*;
use crate::keys::hash_key;
use crate::{format_time, parse_time};

/// `YYYY-MM-DD` (or RFC 3339) → unix ms at the start of that day / instant.
fn date_ms(text: &str) -> Option<i64> {
    parse_time(text).or_else(|| parse_time(&format!("{text}T00:00:00Z")))
}

fn day_range(params: &Query) -> (String, String) {
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

pub async fn spend_logs(c: Caller, params: Query) -> ApiResult {
    let Caller { gov, principal: p } = c;
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
    let rows = gov.store.spend_logs(&filter).await?;
    Ok(Value::Array(rows.iter().map(log_view).collect()))
}

pub async fn spend_keys(c: Caller) -> ApiResult {
    let Caller { gov, principal: p } = c;
    require_reader(&p, "see spend per key")?;
    Ok(Value::Array(
        list_all(&gov, Kind::Key, ListFilter::default()).await?,
    ))
}

pub async fn spend_users(c: Caller, params: Query) -> ApiResult {
    let Caller { gov, principal: p } = c;
    let filter = match params.get("user_id") {
        Some(u) => ListFilter {
            ids: Some(vec![u.clone()]),
            ..Default::default()
        },
        None => ListFilter::default(),
    };
    if !p.role.is_admin()
        && (p.user_id().is_none() || params.get("user_id").map(String::as_str) != p.user_id())
    {
        return Err(forbidden("see other users' spend"));
    }
    Ok(Value::Array(list_all(&gov, Kind::User, filter).await?))
}

/// Rollups of `kind` summed per entity (and optionally per model group).
async fn totals(
    gov: &Governance,
    kind: &str,
    params: &Query,
) -> Result<Vec<(String, String, i64, f64)>, GatewayError> {
    let (start, end) = day_range(params);
    let rows = gov.store.daily_spend(kind, None, &start, &end).await?;
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

fn top(mut items: Vec<(String, i64, f64)>, params: &Query) -> Vec<(String, i64, f64)> {
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

pub async fn spend_tags(c: Caller, params: Query) -> ApiResult {
    let Caller { gov, principal: p } = c;
    require_reader(&p, "see spend per tag")?;
    let rows = top(per_entity(totals(&gov, "tag", &params).await?), &params);
    Ok(
        json!({"spend_per_tag": rows.iter().map(|(t, n, s)| json!({"individual_request_tag": t, "log_count": n, "total_spend": s})).collect::<Vec<_>>()}),
    )
}

pub async fn global_spend(c: Caller, params: Query) -> ApiResult {
    let Caller { gov, principal: p } = c;
    require_reader(&p, "see global spend")?;
    let rows = totals(&gov, "all", &params).await?;
    let spend: f64 = rows.iter().map(|r| r.3).sum();
    Ok(json!({"spend": spend, "max_budget": Value::Null}))
}

pub async fn global_spend_keys(c: Caller, params: Query) -> ApiResult {
    let Caller { gov, principal: p } = c;
    require_reader(&p, "see spend per key")?;
    let rows = top(per_entity(totals(&gov, "key", &params).await?), &params);
    let mut out = Vec::new();
    for (key, _, spend) in rows {
        let stored = gov.store.get(Kind::Key, &key).await?;
        out.push(json!({
            "api_key": key,
            "total_spend": spend,
            "key_alias": stored.as_ref().and_then(|k| k.data.get("key_alias").cloned()),
            "key_name": stored.as_ref().and_then(|k| k.data.get("key_name").cloned()),
        }));
    }
    Ok(Value::Array(out))
}

pub async fn global_spend_models(c: Caller, params: Query) -> ApiResult {
    let Caller { gov, principal: p } = c;
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

pub async fn global_spend_teams(c: Caller, params: Query) -> ApiResult {
    let Caller { gov, principal: p } = c;
    require_reader(&p, "see spend per team")?;
    let (start, end) = day_range(&params);
    let rows = gov.store.daily_spend("team", None, &start, &end).await?;
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
}
