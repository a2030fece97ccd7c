//! Applying a changed configuration file without a restart (SIGHUP, or the file changing on
//! disk): the model list, router settings and LiteLLM settings swap in atomically, so requests
//! in flight finish on the configuration they started with and new ones take the new one. A
//! file that does not load is refused with every problem by its YAML path, and the running
//! configuration stays. `general_settings` (master key, database) apply at the next start.

use std::path::Path;
use std::sync::Arc;

use llmux_config::{Diagnostic, ProcessEnv};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::AppState;

/// Which configuration is live.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    pub path: String,
    /// The first 16 hex digits of the file text's SHA-256.
    pub fingerprint: String,
    /// Unix milliseconds.
    pub loaded_at_ms: i64,
    /// Reloads applied since start.
    pub reloads: u64,
}

impl ConfigSource {
    pub fn view(&self) -> Value {
        json!({"path": self.path, "fingerprint": self.fingerprint,
               "loaded_at_ms": self.loaded_at_ms, "reloads": self.reloads})
    }
}

/// The fingerprint of a configuration text.
pub fn fingerprint(text: &[u8]) -> String {
    Sha256::digest(text)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Record the file the running configuration came from (at start).
pub fn started_from(state: &AppState, path: &Path) {
    let text = std::fs::read(path).unwrap_or_default();
    if let Ok(mut source) = state.config_source.lock() {
        *source = ConfigSource {
            path: path.display().to_string(),
            fingerprint: fingerprint(&text),
            loaded_at_ms: now_ms(),
            reloads: 0,
        };
    }
}

/// What a reload did.
#[derive(Debug)]
pub enum Reloaded {
    /// The file's text is what is running already.
    Unchanged,
    /// Applied; the warnings found on the way.
    Applied(Vec<Diagnostic>),
}

/// How long replaced log sinks keep taking the records of requests that started before a
/// reload (a longer stream's record is dropped and counted).
const OLD_SINKS_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Restart the traces and log sinks when `config` changes what they are built from (callbacks,
/// message logging, masking, their variables); the old ones send what they hold and stop. A
/// sink that cannot be set up keeps the running ones, reported as an error.
pub fn restart_telemetry(state: &AppState, config: &llmux_config::Config) -> Vec<Diagnostic> {
    let settings = llmux_telemetry::Settings::of(config, &ProcessEnv);
    let running = state.telemetry.load_full();
    if running.as_ref().map(|t| t.settings()) == Some(&settings) {
        return Vec::new();
    }
    match llmux_telemetry::Telemetry::start(config, &ProcessEnv) {
        Ok(started) => {
            if running.is_none() && started.is_none() {
                return Vec::new();
            }
            tracing::info!("log sinks and traces restarted for the new configuration");
            if let Some(old) = state.telemetry.swap(started) {
                // Requests in flight finish into the old sinks: they stay open a minute more.
                tokio::spawn(async move {
                    tokio::time::sleep(OLD_SINKS_GRACE).await;
                    old.shutdown(std::time::Duration::from_secs(5)).await;
                });
            }
            Vec::new()
        }
        Err(e) => vec![Diagnostic::error(
            "litellm_settings.callbacks",
            format!("{e}; the running log sinks and traces are kept"),
        )],
    }
}

/// Load `path` and make it the running configuration. `Err` carries every problem found (the
/// running configuration is kept).
pub async fn reload(state: &AppState, path: &Path) -> Result<Reloaded, Vec<Diagnostic>> {
    let text = std::fs::read(path).map_err(|e| {
        vec![Diagnostic::error(
            path.display().to_string(),
            format!("cannot read the configuration: {e}"),
        )]
    })?;
    let print = fingerprint(&text);
    let unchanged = state
        .config_source
        .lock()
        .is_ok_and(|s| s.fingerprint == print);
    if unchanged {
        return Ok(Reloaded::Unchanged);
    }
    let loaded = llmux_config::load_file(path, &ProcessEnv)?;
    let _rebuilding = state.rebuild.lock().await;
    let mut warnings = loaded.diagnostics;
    let previous = state.base_config.load_full();
    if loaded.config.master_key != previous.master_key {
        warnings.push(Diagnostic::warning(
            "general_settings.master_key",
            "a changed master key applies at the next start; the running one is kept",
        ));
    }
    // Alerts and background health checks are wired at start (observers, a task).
    let (new, old) = (&loaded.config, &previous);
    for (path, changed) in [
        ("general_settings.alerting", new.alerting != old.alerting),
        (
            "general_settings.alerting_threshold",
            new.alerting_threshold != old.alerting_threshold,
        ),
        (
            "general_settings.background_health_checks",
            new.background_health_checks != old.background_health_checks,
        ),
        (
            "general_settings.health_check_interval",
            new.health_check_interval != old.health_check_interval,
        ),
    ] {
        if changed {
            warnings.push(Diagnostic::warning(
                path,
                "a changed alerting or health check setting applies at the next start; the \
                 running one is kept",
            ));
        }
    }
    // The response cache is built once (its entries outlive reloads).
    if new.cache != old.cache {
        warnings.push(Diagnostic::warning(
            "litellm_settings.cache_params",
            "a changed response cache setting applies at the next start; the running cache is \
             kept",
        ));
    }
    state.base_config.store(Arc::new(loaded.config.clone()));
    let applied = match &state.governance {
        // Database models are merged over the new file's, as at start.
        Some(_) => crate::models::apply_db_models_locked(state)
            .await
            .map(|()| Vec::new())
            .map_err(|e| vec![Diagnostic::error("model_list", e.message().to_owned())]),
        None => state.client.reload(loaded.config).map_err(|e| e.0),
    };
    match applied {
        Ok(more) => {
            warnings.extend(more);
            warnings.extend(restart_telemetry(state, &state.base_config.load_full()));
            if let Ok(mut source) = state.config_source.lock() {
                source.path = path.display().to_string();
                source.fingerprint = print;
                source.loaded_at_ms = now_ms();
                source.reloads += 1;
            }
            Ok(Reloaded::Applied(warnings))
        }
        Err(errors) => {
            state.base_config.store(previous);
            Err(errors)
        }
    }
}
