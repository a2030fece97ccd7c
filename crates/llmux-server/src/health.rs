//! `GET /health` (LiteLLM's shape: every deployment probed, `healthy_endpoints` and
//! `unhealthy_endpoints`), the background health checks (`background_health_checks`) that take
//! a failing deployment out of rotation until it passes again, and the alerts wired to what the
//! gateway sees: cooldowns, budgets crossed, slow responses, unhealthy deployments, failing log
//! sinks.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use llmux::HealthCheck;
use llmux_telemetry::alerts::{Alert, Alerter};
use serde_json::{json, Value};

use crate::AppState;

/// The longest one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the log sinks' health is looked at for alerts.
const SINK_WATCH: Duration = Duration::from_secs(5);

/// A live probe result this young answers `GET /health` again (probes are paid requests: a
/// burst of callers shares one round).
const LIVE_REUSE: Duration = Duration::from_secs(10);

/// The latest live probe (`GET /health` without background checks), per `?model=`.
#[derive(Debug, Default)]
pub struct LiveProbes {
    latest: std::collections::HashMap<Option<String>, (std::time::Instant, Vec<HealthCheck>)>,
}

/// Failures that say a deployment cannot serve (an outage, a refused credential), as opposed
/// to the probe's own shape being refused (a model that takes no `max_tokens`, a context
/// window): only these take a deployment out of rotation.
fn takes_out_of_rotation(check: &HealthCheck) -> bool {
    use llmux::ErrorKind::*;
    matches!(
        check.error_kind,
        Some(
            Timeout
                | UpstreamUnavailable
                | UpstreamError
                | Authentication
                | PermissionDenied
                | NotFound
        )
    )
}

/// `api_base` without userinfo or query (either may carry a credential).
fn shown_base(base: &str) -> String {
    let Some((scheme, rest)) = base.split_once("://") else {
        return base.split('?').next().unwrap_or("").to_owned();
    };
    let rest = rest.split('?').next().unwrap_or("");
    let rest = match rest.split_once('@') {
        Some((userinfo, host)) if !userinfo.contains('/') => host,
        _ => rest,
    };
    format!("{scheme}://{rest}")
}

/// The latest background check: when it ran and what it found.
#[derive(Debug, Clone)]
pub struct HealthReport {
    pub checked_at: SystemTime,
    pub checks: Vec<HealthCheck>,
}

fn endpoint(check: &HealthCheck) -> Value {
    let mut v = json!({
        "model": check.model,
        "model_name": check.model_group,
        "model_id": check.deployment_id,
        "api_base": check.api_base.as_deref().map(shown_base),
        "latency_ms": (check.latency.as_secs_f64() * 1000.0).round(),
    });
    if let Some(error) = &check.error {
        // An upstream's message may quote a (partly masked) key.
        v["error"] = json!(llmux_telemetry::redact::mask_text(error));
        v["error_type"] = json!(check.error_kind.map(llmux::ErrorKind::as_str));
    }
    v
}

/// LiteLLM's `/health` answer.
fn report(checks: &[HealthCheck], checked_at: Option<SystemTime>) -> Value {
    let healthy: Vec<Value> = checks.iter().filter(|c| c.healthy).map(endpoint).collect();
    let unhealthy: Vec<Value> = checks.iter().filter(|c| !c.healthy).map(endpoint).collect();
    json!({
        "healthy_count": healthy.len(),
        "unhealthy_count": unhealthy.len(),
        "healthy_endpoints": healthy,
        "unhealthy_endpoints": unhealthy,
        "last_checked": checked_at.map(llmux_telemetry::record::epoch_seconds),
    })
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct HealthQuery {
    model: Option<String>,
}

/// `GET /health[?model=group]`. With background checks on, the latest check answers (any
/// admin). Otherwise the deployments are probed now, which costs paid requests: proxy admins
/// only, one round at a time, and a round younger than `LIVE_REUSE` answers again.
pub(crate) async fn health(
    State(state): State<AppState>,
    Query(query): Query<HealthQuery>,
    request: Request,
) -> Response {
    let principal = match crate::admins_only(&state, request.headers(), request.uri().path()).await
    {
        Ok(principal) => principal,
        Err(refused) => return refused,
    };
    if query.model.is_none() {
        let latest = state.health.lock().ok().and_then(|h| h.clone());
        if let Some(latest) = latest {
            let body = report(&latest.checks, Some(latest.checked_at));
            return crate::json_response(StatusCode::OK, body.to_string().into_bytes());
        }
    }
    if principal.is_some_and(|p| p.role != llmux_governance::keys::Role::ProxyAdmin) {
        return crate::error_response(
            &llmux::GatewayError::new(
                llmux::ErrorKind::PermissionDenied,
                "Probing deployments sends paid requests: proxy admins only.",
            )
            .with_code("forbidden"),
            &llmux::new_request_id(),
        );
    }
    let mut live = state.live_probes.lock().await;
    let fresh = live
        .latest
        .get(&query.model)
        .filter(|(at, _)| at.elapsed() < LIVE_REUSE)
        .map(|(_, checks)| checks.clone());
    let checks = match fresh {
        Some(checks) => checks,
        None => {
            let checks = state
                .client
                .check_health(query.model.as_deref(), PROBE_TIMEOUT)
                .await;
            // Kept per configured group only (a name that matches none probes nothing).
            if query.model.is_none() || !checks.is_empty() {
                live.latest.insert(
                    query.model.clone(),
                    (std::time::Instant::now(), checks.clone()),
                );
            }
            checks
        }
    };
    drop(live);
    let body = report(&checks, Some(SystemTime::now()));
    crate::json_response(StatusCode::OK, body.to_string().into_bytes())
}

/// Probe every deployment every `interval` (the first at once) for as long as the state
/// lives. A failing deployment is cooled down until the next check and alerted; one that
/// passes again after failing a check is back in rotation.
pub fn spawn_background_checks(state: &AppState, interval: Duration) {
    let shared = Arc::downgrade(&state.0);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let state = AppState(shared);
            let checks = state
                .client
                .check_health(None, PROBE_TIMEOUT.min(interval))
                .await;
            let failed_before: Vec<String> = state
                .health
                .lock()
                .ok()
                .and_then(|h| h.as_ref().map(|r| r.checks.clone()))
                .unwrap_or_default()
                .into_iter()
                .filter(|c| !c.healthy)
                .map(|c| c.deployment_id)
                .collect();
            let alerter = state.alerter.load_full();
            let snapshot = state.client.snapshot();
            let settings = snapshot.router.settings();
            for check in &checks {
                if check.healthy {
                    if failed_before.contains(&check.deployment_id) {
                        state.client.recover(&check.deployment_id);
                        tracing::info!(deployment = %check.deployment_id, "deployment passed its health check again");
                    }
                    continue;
                }
                let error =
                    llmux_telemetry::redact::mask_text(check.error.as_deref().unwrap_or(""))
                        .into_owned();
                tracing::warn!(deployment = %check.deployment_id, error = %error, "deployment failed its health check");
                // Out of rotation only for an outage, never the group's last healthy
                // deployment, and not when cooldowns are off: traffic then decides.
                let group_has_another = checks
                    .iter()
                    .any(|c| c.healthy && c.model_group == check.model_group);
                if takes_out_of_rotation(check) && group_has_another && !settings.disable_cooldowns
                {
                    state.client.cool_down(&check.deployment_id, interval);
                }
                if let Some(alerter) = &alerter {
                    alerter.send(Alert::Unhealthy {
                        deployment: check.deployment_id.clone(),
                        model_group: check.model_group.clone(),
                        error,
                    });
                }
            }
            let report = HealthReport {
                checked_at: SystemTime::now(),
                checks,
            };
            let stored = state.health.lock().map(|mut latest| *latest = Some(report));
            drop(stored);
        }
    });
}

/// Alerts (`general_settings.alerting`) wired to the gateway: cooldowns, budgets crossed (with
/// governance), failing log sinks; slow responses are seen by each request's hook. A channel
/// without its URL is an error.
pub fn start_alerts(state: &AppState, config: &llmux_config::Config) -> Result<(), String> {
    let Some(alerter) = Alerter::from_config(config, &llmux_config::ProcessEnv)? else {
        return Ok(());
    };
    state.alerter.store(Some(Arc::clone(&alerter)));
    let on_cooldown = Arc::clone(&alerter);
    state.client.on_cooldown(move |id, duration| {
        on_cooldown.send(Alert::CooledDown {
            deployment: id.to_owned(),
            seconds: duration.as_secs_f64(),
        });
    });
    if let Some(gov) = &state.governance {
        let on_budget = Arc::clone(&alerter);
        gov.on_budget_alert(move |b| {
            on_budget.send(Alert::Budget {
                kind: b.kind.to_owned(),
                id: b.id,
                name: b.name,
                spend: b.spend,
                budget: b.budget,
                soft: b.soft,
            });
        });
    }
    let shared = Arc::downgrade(&state.0);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SINK_WATCH).await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let Some(telemetry) = shared.telemetry.load_full() else {
                continue;
            };
            for sink in telemetry.status().into_iter().filter(|s| !s.healthy) {
                alerter.send(Alert::SinkFailing {
                    sink: sink.name.to_owned(),
                    error: sink.last_error.unwrap_or_default(),
                });
            }
        }
    });
    Ok(())
}
