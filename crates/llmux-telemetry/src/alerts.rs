//! Alerts (LiteLLM's `general_settings.alerting`): `slack` posts to `SLACK_WEBHOOK_URL`,
//! `webhook` posts JSON to `WEBHOOK_URL`. What is
//! alerted: budgets crossed, deployments cooled down or failing their health check, responses
//! slower than `alerting_threshold`, log sinks failing. Each alert is sent at most once per
//! subject within `DEDUP_WINDOW`, off the request path; with a fleet's Redis configured, once
//! for the whole fleet (the first instance to claim the subject in Redis sends it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llmux_config::{Config, EnvSource};
use serde_json::{json, Value};

use crate::sinks::http_client;

/// An alert about the same subject is not repeated within this window.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(600);

/// Subjects remembered for deduplication, at most (the oldest are forgotten).
const MAX_REMEMBERED: usize = 10_000;

/// Something an operator should hear about.
#[derive(Debug, Clone, PartialEq)]
pub enum Alert {
    /// A budget was crossed: `soft` (the warning level) or the budget itself.
    Budget {
        kind: String,
        id: String,
        name: Option<String>,
        spend: f64,
        budget: f64,
        soft: bool,
    },
    /// A deployment was taken out of rotation after failures.
    CooledDown { deployment: String, seconds: f64 },
    /// A deployment failed its health check.
    Unhealthy {
        deployment: String,
        model_group: String,
        error: String,
    },
    /// A request took longer than `alerting_threshold`.
    SlowResponse {
        model_group: String,
        deployment: String,
        seconds: f64,
    },
    /// A log sink cannot deliver.
    SinkFailing { sink: String, error: String },
}

impl Alert {
    /// The event name (webhook `event`) and the subject deduplicated on.
    fn subject(&self) -> (&'static str, String) {
        match self {
            Alert::Budget { kind, id, soft, .. } => (
                if *soft {
                    "soft_budget_crossed"
                } else {
                    "budget_crossed"
                },
                format!("{kind}:{id}"),
            ),
            Alert::CooledDown { deployment, .. } => ("deployment_cooled_down", deployment.clone()),
            Alert::Unhealthy { deployment, .. } => ("deployment_unhealthy", deployment.clone()),
            Alert::SlowResponse { model_group, .. } => ("slow_response", model_group.clone()),
            Alert::SinkFailing { sink, .. } => ("log_sink_failing", sink.clone()),
        }
    }

    /// One line for a chat channel.
    fn text(&self) -> String {
        match self {
            Alert::Budget {
                kind,
                id,
                name,
                spend,
                budget,
                soft,
            } => format!(
                "{} {} `{}` has spent ${spend:.4} of its {}budget ${budget:.4}",
                if *soft { ":warning:" } else { ":rotating_light:" },
                kind,
                name.as_deref().unwrap_or(id),
                if *soft { "soft " } else { "" }
            ),
            Alert::CooledDown {
                deployment,
                seconds,
            } => format!(
                ":rotating_light: deployment `{deployment}` is cooling down for {seconds:.0} s after failures"
            ),
            Alert::Unhealthy {
                deployment,
                model_group,
                error,
            } => format!(
                ":rotating_light: deployment `{deployment}` of `{model_group}` failed its health check: {error}"
            ),
            Alert::SlowResponse {
                model_group,
                deployment,
                seconds,
            } => format!(
                ":snail: a `{model_group}` request took {seconds:.1} s (deployment `{deployment}`)"
            ),
            Alert::SinkFailing { sink, error } => {
                format!(":warning: log sink `{sink}` cannot deliver: {error}")
            }
        }
    }

    /// The webhook's JSON body.
    fn body(&self) -> Value {
        let (event, _) = self.subject();
        let mut body = match self {
            Alert::Budget {
                kind,
                id,
                name,
                spend,
                budget,
                ..
            } => json!({"type": kind, "id": id, "name": name, "spend": spend, "budget": budget}),
            Alert::CooledDown {
                deployment,
                seconds,
            } => json!({"deployment": deployment, "cooldown_seconds": seconds}),
            Alert::Unhealthy {
                deployment,
                model_group,
                error,
            } => json!({"deployment": deployment, "model_group": model_group, "error": error}),
            Alert::SlowResponse {
                model_group,
                deployment,
                seconds,
            } => json!({"model_group": model_group, "deployment": deployment, "seconds": seconds}),
            Alert::SinkFailing { sink, error } => json!({"sink": sink, "error": error}),
        };
        body["event"] = json!(event);
        body["message"] = json!(self.text());
        body
    }
}

/// Where alerts go.
#[derive(Debug)]
pub struct Alerter {
    client: reqwest::Client,
    slack: Option<String>,
    webhook: Option<String>,
    /// `alerting_threshold`: a slower response is alerted.
    pub slow_threshold: Duration,
    sent: Mutex<HashMap<(&'static str, String), Instant>>,
    /// The fleet's Redis: an alert's subject is claimed there (`SET NX`) so that one instance
    /// sends it.
    fleet: Option<FleetClaims>,
}

/// Subjects claimed in the fleet's Redis.
struct FleetClaims {
    client: redis::Client,
    connection: tokio::sync::Mutex<Option<redis::aio::ConnectionManager>>,
}

/// How long claiming a subject may take before the alert is sent anyway (a duplicate beats a
/// lost alert).
const CLAIM_DEADLINE: Duration = Duration::from_secs(2);

impl std::fmt::Debug for FleetClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetClaims")
    }
}

impl FleetClaims {
    /// Whether this instance may send the alert about `subject` (`false`: another did, within
    /// the window). An unreachable Redis lets it.
    async fn claim(&self, event: &str, subject: &str) -> bool {
        let work = async {
            let mut slot = self.connection.lock().await;
            if slot.is_none() {
                *slot = Some(redis::aio::ConnectionManager::new(self.client.clone()).await?);
            }
            let Some(conn) = slot.as_mut() else {
                return Ok(true);
            };
            let set: Option<String> = redis::cmd("SET")
                .arg(format!("llmux:alert:{event}:{subject}"))
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(DEDUP_WINDOW.as_millis() as u64)
                .query_async(conn)
                .await?;
            Ok::<bool, redis::RedisError>(set.is_some())
        };
        match tokio::time::timeout(CLAIM_DEADLINE, work).await {
            Ok(Ok(claimed)) => claimed,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "alerts: cannot claim a subject in Redis; sending anyway");
                true
            }
            Err(_) => {
                tracing::warn!("alerts: Redis did not answer the claim; sending anyway");
                true
            }
        }
    }
}

impl Alerter {
    /// From `general_settings.alerting` (`slack`, `webhook`); `None` when nothing is configured.
    /// A channel without its URL is an error.
    pub fn from_config(
        config: &Config,
        env: &dyn EnvSource,
    ) -> Result<Option<Arc<Alerter>>, String> {
        let var = |name: &str| config.env_var(env, name);
        let mut slack = None;
        let mut webhook = None;
        for channel in &config.alerting {
            match channel.as_str() {
                "slack" => {
                    slack = Some(
                        var("SLACK_WEBHOOK_URL")
                            .ok_or("alerting `slack` needs SLACK_WEBHOOK_URL")?,
                    );
                }
                "webhook" => {
                    webhook =
                        Some(var("WEBHOOK_URL").ok_or("alerting `webhook` needs WEBHOOK_URL")?);
                }
                _ => {}
            }
        }
        if slack.is_none() && webhook.is_none() {
            return Ok(None);
        }
        let fleet = match config.redis_url(env) {
            Some(url) => Some(FleetClaims {
                client: redis::Client::open(url.as_str())
                    .map_err(|e| format!("alerts: the fleet's redis url: {e}"))?,
                connection: tokio::sync::Mutex::new(None),
            }),
            None => None,
        };
        Ok(Some(Arc::new(Alerter {
            client: http_client()?,
            slack,
            webhook,
            slow_threshold: config.alerting_threshold,
            sent: Mutex::new(HashMap::new()),
            fleet,
        })))
    }

    /// Send `alert` unless one about the same subject went out within `DEDUP_WINDOW`.
    /// Returns whether it was sent.
    pub fn send(self: &Arc<Self>, alert: Alert) -> bool {
        let subject = alert.subject();
        {
            let mut sent = self
                .sent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            if sent
                .get(&subject)
                .is_some_and(|at| now.duration_since(*at) < DEDUP_WINDOW)
            {
                return false;
            }
            if sent.len() >= MAX_REMEMBERED {
                sent.retain(|_, at| now.duration_since(*at) < DEDUP_WINDOW);
                if sent.len() >= MAX_REMEMBERED {
                    // Every subject is recent: forget them rather than grow.
                    sent.clear();
                }
            }
            sent.insert(subject.clone(), now);
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            if let Some(fleet) = &me.fleet {
                if !fleet.claim(subject.0, &subject.1).await {
                    return;
                }
            }
            me.deliver(&alert).await;
        });
        true
    }

    async fn deliver(&self, alert: &Alert) {
        if let Some(url) = &self.slack {
            let sent = self
                .client
                .post(url)
                .json(&json!({"text": slack_escaped(&alert.text())}))
                .send()
                .await
                .and_then(reqwest::Response::error_for_status);
            if let Err(e) = sent {
                // Slack's webhook URL is its credential: never logged.
                tracing::warn!(error = %e.without_url(), "cannot deliver an alert to Slack");
            }
        }
        if let Some(url) = &self.webhook {
            let sent = self
                .client
                .post(url)
                .json(&alert.body())
                .send()
                .await
                .and_then(reqwest::Response::error_for_status);
            if let Err(e) = sent {
                tracing::warn!(error = %e.without_url(), "cannot deliver an alert to the webhook");
            }
        }
    }
}

/// Text as Slack's mrkdwn shows it literally: names and upstream messages could otherwise
/// mention `<!channel>` or hide a link.
fn slack_escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_name_their_event_and_subject() {
        let alert = Alert::Budget {
            kind: "Key".into(),
            id: "h1".into(),
            name: Some("team-a".into()),
            spend: 1.5,
            budget: 1.0,
            soft: false,
        };
        assert_eq!(alert.subject(), ("budget_crossed", "Key:h1".to_owned()));
        assert!(alert
            .text()
            .contains("`team-a` has spent $1.5000 of its budget $1.0000"));
        let body = alert.body();
        assert_eq!(body["event"], "budget_crossed");
        assert_eq!(body["spend"], 1.5);
        assert_eq!(
            slack_escaped("<!channel> & <https://x|y>"),
            "&lt;!channel&gt; &amp; &lt;https://x|y&gt;"
        );
    }
}
