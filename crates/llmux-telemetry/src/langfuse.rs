//! The `langfuse` callback: Langfuse's ingestion API (`POST /api/public/ingestion`, Basic auth
//! with `LANGFUSE_PUBLIC_KEY` / `LANGFUSE_SECRET_KEY`, at `LANGFUSE_HOST`). Each request is a
//! `trace-create` and a `generation-create` event: model, parameters, usage, cost, timings,
//! the caller as metadata, level `ERROR` with the failure's message on failures, and the
//! prompt and answer as logged (redacted or masked as configured).

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::pipeline::{ExportError, ExportFuture, Exporter};
use crate::record::Finished;
use crate::sinks::{http_client, send};

/// Langfuse refuses batches over 3.5 MB; batches are cut below it.
const MAX_BATCH_BYTES: usize = 3_000_000;

pub(crate) struct Langfuse {
    client: reqwest::Client,
    url: String,
    public_key: String,
    secret_key: String,
}

impl Langfuse {
    pub(crate) fn new(var: &dyn Fn(&str) -> Option<String>) -> Result<Langfuse, String> {
        let public_key =
            var("LANGFUSE_PUBLIC_KEY").ok_or("callback `langfuse` needs LANGFUSE_PUBLIC_KEY")?;
        let secret_key =
            var("LANGFUSE_SECRET_KEY").ok_or("callback `langfuse` needs LANGFUSE_SECRET_KEY")?;
        let host = var("LANGFUSE_HOST").unwrap_or_else(|| "https://cloud.langfuse.com".to_owned());
        if !(host.starts_with("http://") || host.starts_with("https://")) {
            return Err(format!(
                "LANGFUSE_HOST `{host}` must start with http:// or https://"
            ));
        }
        Ok(Langfuse {
            client: http_client()?,
            url: format!("{}/api/public/ingestion", host.trim_end_matches('/')),
            public_key,
            secret_key,
        })
    }

    /// One ingestion call for `events`, each already serialized.
    async fn post(&self, events: &[String]) -> Result<(), ExportError> {
        let metadata = json!({"sdk_name": "llmux", "sdk_version": env!("CARGO_PKG_VERSION")});
        let body = format!(
            r#"{{"batch":[{}],"metadata":{metadata}}}"#,
            events.join(",")
        );
        let request = self
            .client
            .post(&self.url)
            .basic_auth(&self.public_key, Some(&self.secret_key))
            .header("content-type", "application/json")
            .body(body);
        let answer = send("langfuse", request).await?;
        // 207 Multi-Status: events Langfuse refused are listed; they would be refused again.
        let errors = serde_json::from_slice::<Value>(&answer)
            .ok()
            .and_then(|a| a.get("errors").and_then(Value::as_array).cloned())
            .unwrap_or_default();
        if let Some(first) = errors.first() {
            return Err(ExportError::permanent(format!(
                "langfuse refused {} event(s), the first: {first}",
                errors.len()
            )));
        }
        Ok(())
    }
}

impl Exporter for Langfuse {
    fn export<'a>(&'a self, batch: &'a [Arc<Finished>]) -> ExportFuture<'a> {
        Box::pin(async move {
            // Each part is sent even when one before it failed; the first failure is reported.
            let mut result = Ok(());
            let mut events = Vec::new();
            let mut size = 0;
            for finished in batch {
                for event in events_of(finished) {
                    let event = event.to_string();
                    let len = event.len();
                    if size + len > MAX_BATCH_BYTES && !events.is_empty() {
                        let sent = self.post(&events).await;
                        result = result.and(sent);
                        events.clear();
                        size = 0;
                    }
                    size += len;
                    events.push(event);
                }
            }
            if !events.is_empty() {
                let sent = self.post(&events).await;
                result = result.and(sent);
            }
            result
        })
    }
}

fn iso(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The request's `trace-create` and `generation-create` events.
pub(crate) fn events_of(finished: &Finished) -> [Value; 2] {
    let log = &finished.log;
    let standard = finished.standard();
    let trace_id = standard.trace_id.clone();
    let name = format!("litellm-{}", finished.call_type);
    let caller = &finished.caller;
    let user = caller
        .user_id
        .as_deref()
        .or(caller.end_user.as_deref())
        .map(str::to_owned);
    let metadata = json!({
        "requested_model": log.requested_model,
        "model_group": log.model_group,
        "deployment_id": log.deployment_id,
        "request_id": log.request_id,
        "user_api_key_hash": standard.metadata.user_api_key_hash,
        "user_api_key_alias": standard.metadata.user_api_key_alias,
        "user_api_key_team_id": standard.metadata.user_api_key_team_id,
        "user_api_key_team_alias": standard.metadata.user_api_key_team_alias,
        "user_api_key_user_id": standard.metadata.user_api_key_user_id,
        "user_api_key_org_id": standard.metadata.user_api_key_org_id,
        "user_api_key_end_user_id": standard.metadata.user_api_key_end_user_id,
        "status": log.status,
        "attempts": standard.metadata.attempts,
    });
    let now = iso(SystemTime::now());
    let start = iso(log.started_at);
    let end = iso(finished.ended_at());
    let mut trace = json!({
        "id": trace_id,
        "timestamp": start,
        "name": name,
        "metadata": metadata,
        "tags": finished.tags,
        "input": standard.messages,
        "output": standard.response,
    });
    if let Some(user) = &user {
        trace["userId"] = json!(user);
    }
    let usage = log.usage.unwrap_or_default();
    let cost = log.cost.unwrap_or(0.0);
    let mut generation = json!({
        "id": log.request_id,
        "traceId": trace_id,
        "name": name,
        "startTime": start,
        "endTime": end,
        "model": finished.upstream_model(),
        "modelParameters": model_parameters(&standard.model_parameters),
        "input": standard.messages,
        "output": standard.response,
        "metadata": metadata,
        "usage": {
            "input": usage.prompt_tokens,
            "output": usage.completion_tokens,
            "total": usage.total_tokens,
            "unit": "TOKENS",
            "totalCost": cost,
        },
        "usageDetails": {
            "input": usage.prompt_tokens,
            "output": usage.completion_tokens,
            "total": usage.total_tokens,
        },
        "costDetails": {"total": cost},
        "level": if finished.succeeded() { "DEFAULT" } else { "ERROR" },
    });
    if let Some(ttft) = log.time_to_first_chunk {
        generation["completionStartTime"] = json!(iso(log.started_at + ttft));
    }
    if let Some(message) = &standard.error_str {
        generation["statusMessage"] = json!(message);
    }
    [
        json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "timestamp": now,
            "type": "trace-create",
            "body": trace,
        }),
        json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "timestamp": now,
            "type": "generation-create",
            "body": generation,
        }),
    ]
}

/// Langfuse's `modelParameters` hold strings, numbers and booleans only (`MapValue`).
fn model_parameters(parameters: &Value) -> Value {
    let Some(map) = parameters.as_object() else {
        return json!({});
    };
    Value::Object(
        map.iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(_) | Value::Number(_) | Value::Bool(_) => v.clone(),
                    other => Value::String(other.to_string()),
                };
                (k.clone(), v)
            })
            .collect(),
    )
}
