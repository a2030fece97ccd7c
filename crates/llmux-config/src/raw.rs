//! Raw serde structs mirroring LiteLLM's `config.yaml`. Keys not named here are reported by
//! `serde_ignored` with their path; `litellm_params` and `model_info` keep free-form extras.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::lenient::{opt_bool, opt_f64, opt_u32, opt_u64};

#[derive(Debug, Deserialize)]
pub(crate) struct RawModelEntry {
    pub model_name: String,
    pub litellm_params: RawLitellmParams,
    #[serde(default)]
    pub model_info: Option<Map<String, Value>>,
    // LiteLLM also reads rpm/tpm beside litellm_params.
    #[serde(default, deserialize_with = "opt_u64")]
    pub rpm: Option<u64>,
    #[serde(default, deserialize_with = "opt_u64")]
    pub tpm: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawLitellmParams {
    pub model: String,
    #[serde(default)]
    pub custom_llm_provider: Option<String>,
    #[serde(default)]
    pub api_base: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub organization: Option<String>,
    #[serde(default, deserialize_with = "opt_f64")]
    pub timeout: Option<f64>,
    #[serde(default, deserialize_with = "opt_f64")]
    pub stream_timeout: Option<f64>,
    /// llmux extension: TCP + TLS connect limit for this deployment.
    #[serde(default, deserialize_with = "opt_f64")]
    pub connect_timeout: Option<f64>,
    #[serde(default, deserialize_with = "opt_u32")]
    pub max_retries: Option<u32>,
    #[serde(default, deserialize_with = "opt_u64")]
    pub rpm: Option<u64>,
    #[serde(default, deserialize_with = "opt_u64")]
    pub tpm: Option<u64>,
    #[serde(default, deserialize_with = "opt_f64")]
    pub weight: Option<f64>,
    #[serde(default, deserialize_with = "opt_u32")]
    pub order: Option<u32>,
    #[serde(default)]
    pub extra_headers: Option<Map<String, Value>>,
    #[serde(default)]
    pub mock_response: Option<Value>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawLitellmSettings {
    #[serde(default, deserialize_with = "opt_bool")]
    pub drop_params: Option<bool>,
    #[serde(default)]
    pub callbacks: Option<OneOrMany>,
    #[serde(default)]
    pub success_callback: Option<OneOrMany>,
    #[serde(default)]
    pub failure_callback: Option<OneOrMany>,
    #[serde(default, deserialize_with = "opt_bool")]
    pub require_auth_for_metrics_endpoint: Option<bool>,
    #[serde(default, deserialize_with = "opt_f64")]
    pub request_timeout: Option<f64>,
    #[serde(default, deserialize_with = "opt_bool")]
    pub turn_off_message_logging: Option<bool>,
    #[serde(default)]
    pub s3_callback_params: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    #[serde(default, deserialize_with = "opt_bool")]
    pub cache: Option<bool>,
    #[serde(default)]
    pub cache_params: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawGeneralSettings {
    #[serde(default)]
    pub master_key: Option<String>,
    #[serde(default, deserialize_with = "opt_f64")]
    pub max_request_size_mb: Option<f64>,
    #[serde(default)]
    pub database_url: Option<String>,
    #[serde(default, deserialize_with = "opt_bool")]
    pub disable_spend_logs: Option<bool>,
    #[serde(default)]
    pub alerting: Option<OneOrMany>,
    #[serde(default, deserialize_with = "opt_f64")]
    pub alerting_threshold: Option<f64>,
    #[serde(default, deserialize_with = "opt_bool")]
    pub background_health_checks: Option<bool>,
    #[serde(default, deserialize_with = "opt_f64")]
    pub health_check_interval: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawLlmuxSettings {
    #[serde(default, deserialize_with = "opt_f64")]
    pub drain_timeout: Option<f64>,
    #[serde(default, deserialize_with = "opt_f64")]
    pub connect_timeout: Option<f64>,
    #[serde(default, deserialize_with = "opt_f64")]
    pub client_header_timeout: Option<f64>,
    #[serde(default)]
    pub database_path: Option<String>,
    #[serde(default)]
    pub model_cost_map: Option<String>,
    #[serde(default, deserialize_with = "opt_f64")]
    pub model_cost_map_reload_interval: Option<f64>,
    #[serde(default)]
    pub alert_webhook_url: Option<String>,
    #[serde(default, deserialize_with = "opt_u64")]
    pub spend_queue_capacity: Option<u64>,
    #[serde(default, deserialize_with = "opt_f64")]
    pub client_body_timeout: Option<f64>,
    #[serde(default)]
    pub api_model_env_allowlist: Option<Vec<String>>,
    #[serde(default, deserialize_with = "opt_bool")]
    pub budget_stream_cutoff: Option<bool>,
    #[serde(default, deserialize_with = "opt_u64")]
    pub metrics_max_keys: Option<u64>,
    #[serde(default, deserialize_with = "opt_u64")]
    pub redis_deadline_ms: Option<u64>,
    #[serde(default)]
    pub spend_log_durability: Option<String>,
    #[serde(default, deserialize_with = "opt_f64")]
    pub max_buffered_response_mb: Option<f64>,
    #[serde(default, deserialize_with = "opt_bool")]
    pub mask_pii_in_logs: Option<bool>,
    #[serde(default, deserialize_with = "opt_u64")]
    pub telemetry_queue_size: Option<u64>,
    #[serde(default)]
    pub jsonl_log_path: Option<String>,
}

/// A list of names, or one name alone (`callbacks: prometheus`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(name) => vec![name],
            OneOrMany::Many(names) => names,
        }
    }
}
