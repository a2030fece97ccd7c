//! LiteLLM-compatible configuration: YAML text → environment references resolved → raw serde
//! structs (unknown keys collected with their paths) → `validate()` → the typed `Config`.
//!
//! Loading never stops at the first problem: every problem is a `Diagnostic` naming its YAML path,
//! so `llmux config check` can list them all.

mod cache;
mod env;
mod lenient;
mod raw;
pub mod router;
mod validate;

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};

pub use cache::{CacheCalls, CacheScope, CacheSettings, CacheType, DEFAULT_CACHE_TTL};
pub use env::{AllowListedEnv, EnvSource, ProcessEnv};
pub use router::{RecoveryMode, RedisSettings, RouterSettings, StrategyKind, StreamRecovery};
pub use validate::{OPENAI_REQUEST_PARAMS, PROVIDER_SPECIFIC_PARAMS};

/// How serious a configuration problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Warning,
    Error,
}

/// One problem found in a configuration, with the YAML path it concerns
/// (e.g. `model_list[2].litellm_params.api_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub path: String,
    pub message: String,
}

impl Diagnostic {
    pub fn warning(path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn error(path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        if self.path.is_empty() {
            write!(f, "{level}: {}", self.message)
        } else {
            write!(f, "{level}: {}: {}", self.path, self.message)
        }
    }
}

/// A secret string (API or master key): never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `model_info` of a deployment. Known fields are typed; the rest is kept for `/model/info`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelInfo {
    pub id: Option<String>,
    pub mode: Option<String>,
    pub max_input_tokens: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub extra: Map<String, Value>,
}

/// One `model_list` entry: a deployment of a model group.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentConfig {
    /// Position in `model_list`, for diagnostics.
    pub index: usize,
    /// The public name clients ask for; may contain one `*` wildcard.
    pub model_name: String,
    /// `litellm_params.model` as written, e.g. `groq/llama-3.1-8b-instant`.
    pub model: String,
    /// `litellm_params.custom_llm_provider`, which overrides the prefix of `model`.
    pub custom_llm_provider: Option<String>,
    pub api_base: Option<String>,
    pub api_key: Option<Secret>,
    pub api_version: Option<String>,
    pub organization: Option<String>,
    pub timeout: Option<Duration>,
    pub stream_timeout: Option<Duration>,
    /// Connect limit for this deployment (default: `llmux_settings.connect_timeout`).
    pub connect_timeout: Option<Duration>,
    pub max_retries: Option<u32>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub weight: Option<f64>,
    pub order: Option<u32>,
    pub extra_headers: Vec<(String, String)>,
    /// OpenAI request parameters from `litellm_params` applied when a request omits them.
    pub request_defaults: Map<String, Value>,
    /// `mock_response` for the in-process `mock/` provider.
    pub mock_response: Option<Value>,
    /// Other `litellm_params` (provider-specific settings later adapters read).
    pub provider_params: Map<String, Value>,
    pub model_info: ModelInfo,
    /// Set on deployments added through the management API: the environment variables it may
    /// read (`llmux_settings.api_model_env_allowlist`), explicitly or through a provider's
    /// fallbacks. `None` for the configuration file's own.
    pub env_allowlist: Option<Vec<String>>,
}

impl DeploymentConfig {
    /// The YAML path of this entry, for diagnostics.
    pub fn path(&self) -> String {
        format!("model_list[{}]", self.index)
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub deployments: Vec<DeploymentConfig>,
    pub master_key: Option<Secret>,
    pub drop_params: bool,
    /// `litellm_settings.request_timeout`: total time for one upstream call.
    pub request_timeout: Duration,
    /// `general_settings.max_request_size_mb`, in bytes.
    pub max_request_body_bytes: usize,
    /// `llmux_settings.drain_timeout`: how long a graceful stop waits for in-flight requests.
    pub drain_timeout: Duration,
    /// `llmux_settings.connect_timeout`: TCP + TLS connect limit for upstreams.
    pub connect_timeout: Duration,
    /// `llmux_settings.client_header_timeout`: how long a client connection may take to send a
    /// request's headers, counted from when the gateway starts waiting for them (so an idle
    /// keep-alive connection is closed after it too).
    pub client_header_timeout: Duration,
    /// `router_settings`, with the router keys LiteLLM also reads from `litellm_settings`.
    pub router: RouterSettings,
    /// Variables from `environment_variables:`, overlaid on the process environment.
    pub environment_variables: Vec<(String, String)>,
    /// `general_settings.database_url` (PostgreSQL); `DATABASE_URL` when unset.
    pub database_url: Option<String>,
    /// `llmux_settings.database_path`: the embedded SQLite file used without a `database_url`.
    pub database_path: String,
    /// `general_settings.disable_spend_logs`: keep counting spend, but write no per-request rows.
    pub disable_spend_logs: bool,
    /// `llmux_settings.model_cost_map`: a LiteLLM `model_prices_and_context_window.json` path or
    /// URL; the built-in table when unset.
    pub model_cost_map: Option<String>,
    /// How often a `model_cost_map` file is checked for changes.
    pub model_cost_map_reload_interval: Duration,
    /// `llmux_settings.alert_webhook_url`: soft-budget alerts are POSTed here as JSON.
    pub alert_webhook_url: Option<String>,
    /// `llmux_settings.spend_queue_capacity`: spend records buffered before they are aggregated.
    pub spend_queue_capacity: usize,
    /// `llmux_settings.client_body_timeout`: how long a client may take to send a request's
    /// body once its headers arrived (408 past it).
    pub client_body_timeout: Duration,
    /// `llmux_settings.api_model_env_allowlist`: the environment variables a model added through
    /// the API (`/model/new`, `/model/update`) may name with `os.environ/` or `${...}`; a name
    /// ending in `*` allows a prefix. Empty (the default): such models name none, so an admin
    /// key cannot send the gateway's own secrets to a URL of its choosing.
    pub api_model_env_allowlist: Vec<String>,
    /// `llmux_settings.budget_stream_cutoff`: end a stream with a `budget_exceeded` error event
    /// once its running cost passes what it reserved and a budget it counts against is spent
    /// (for upstreams that ignore `max_tokens`). Off by default: a stream then runs to its end.
    pub budget_stream_cutoff: bool,
    /// `litellm_settings.callbacks` (every request) / `success_callback` / `failure_callback`,
    /// merged by name (`prometheus` is always on in llmux).
    pub callbacks: Vec<Callback>,
    /// `litellm_settings.turn_off_message_logging`: no prompt or answer in any log sink or span
    /// (a key's or team's `metadata.turn_off_message_logging` overrides it for its requests).
    pub turn_off_message_logging: bool,
    /// `llmux_settings.mask_pii_in_logs`: where messages are logged, mask emails, phone
    /// numbers, card numbers and secrets in them.
    pub mask_pii_in_logs: bool,
    /// `llmux_settings.telemetry_queue_size`: records each log sink (and the tracer) may hold
    /// before dropping (and counting) the newest (default 10,000).
    pub telemetry_queue_size: usize,
    /// `litellm_settings.s3_callback_params` (the `s3` callback's bucket, region, credentials,
    /// endpoint and path), as strings.
    pub s3_callback_params: Vec<(String, String)>,
    /// `litellm_settings.cache: true` with its `cache_params`: the response cache (`None`: off).
    pub cache: Option<CacheSettings>,
    /// `llmux_settings.jsonl_log_path`: the file the `jsonl` callback appends to.
    pub jsonl_log_path: Option<String>,
    /// `general_settings.alerting`: `slack` (`SLACK_WEBHOOK_URL`), `webhook` (`WEBHOOK_URL`).
    pub alerting: Vec<String>,
    /// `general_settings.alerting_threshold`: a response slower than this is alerted
    /// (default 300 s).
    pub alerting_threshold: std::time::Duration,
    /// `general_settings.background_health_checks`: probe every deployment every
    /// `health_check_interval`; an unhealthy one is taken out of rotation until it passes.
    pub background_health_checks: bool,
    /// `general_settings.health_check_interval` (default 300 s).
    pub health_check_interval: std::time::Duration,
    /// `litellm_settings.require_auth_for_metrics_endpoint`; unset: required when a master key
    /// is configured (the metrics name keys' hashes and aliases, teams and users).
    pub require_auth_for_metrics_endpoint: Option<bool>,
    /// `llmux_settings.metrics_max_keys`: distinct virtual keys the Prometheus metrics label
    /// (beyond it, a key's series are counted under `other`; default 10,000).
    pub metrics_max_keys: usize,
    /// `llmux_settings.redis_deadline_ms`: how long a request waits for the fleet's Redis
    /// (admission) before counting on this instance instead (default 50).
    pub redis_deadline: std::time::Duration,
    /// `llmux_settings.spend_log_durability`: `batched` (default: spend rows are written in the
    /// background; a crash loses under 250 ms of traffic) or `sync` (a response completes only
    /// once its spend row is committed; concurrent requests share commits).
    pub spend_log_durability: SpendDurability,
    /// `llmux_settings.max_buffered_response_mb`, in bytes: upstream answers held in memory at
    /// once across all requests (non-streamed bodies); past it requests get a 503.
    pub max_buffered_response_bytes: usize,
}

/// When a request's spend row is committed relative to its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpendDurability {
    #[default]
    Batched,
    Sync,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            deployments: Vec::new(),
            master_key: None,
            drop_params: false,
            request_timeout: Duration::from_secs(600),
            max_request_body_bytes: 32 * 1024 * 1024,
            drain_timeout: Duration::from_secs(30),
            client_header_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            database_url: None,
            database_path: "llmux.db".to_owned(),
            disable_spend_logs: false,
            model_cost_map: None,
            model_cost_map_reload_interval: Duration::from_secs(60),
            alert_webhook_url: None,
            spend_queue_capacity: 100_000,
            client_body_timeout: Duration::from_secs(30),
            api_model_env_allowlist: Vec::new(),
            budget_stream_cutoff: false,
            callbacks: Vec::new(),
            require_auth_for_metrics_endpoint: None,
            metrics_max_keys: 10_000,
            turn_off_message_logging: false,
            mask_pii_in_logs: false,
            telemetry_queue_size: 10_000,
            s3_callback_params: Vec::new(),
            cache: None,
            jsonl_log_path: None,
            alerting: Vec::new(),
            alerting_threshold: std::time::Duration::from_secs(300),
            background_health_checks: false,
            health_check_interval: std::time::Duration::from_secs(300),
            redis_deadline: std::time::Duration::from_millis(50),
            spend_log_durability: SpendDurability::Batched,
            max_buffered_response_bytes: 1024 * 1024 * 1024,
            router: RouterSettings::default(),
            environment_variables: Vec::new(),
        }
    }
}

impl Config {
    /// Look a variable up the way the config file sees it: `environment_variables:` first, then
    /// the process environment.
    /// The shared Redis to use, if any: `router_settings.redis_url`, else one built from
    /// `redis_host` / `redis_port` / `redis_password`, each falling back on `REDIS_URL`,
    /// `REDIS_HOST`, `REDIS_PORT`, `REDIS_PASSWORD` as LiteLLM does. `rediss://` is TLS.
    pub fn redis_url(&self, env: &dyn EnvSource) -> Option<String> {
        let r = &self.router.redis;
        if let Some(url) = r.url.clone().or_else(|| self.env_var(env, "REDIS_URL")) {
            return Some(url);
        }
        let host = r.host.clone().or_else(|| self.env_var(env, "REDIS_HOST"))?;
        let port = r
            .port
            .or_else(|| {
                self.env_var(env, "REDIS_PORT")
                    .and_then(|p| p.trim().parse().ok())
            })
            .unwrap_or(6379);
        let password = r
            .password
            .clone()
            .or_else(|| self.env_var(env, "REDIS_PASSWORD"));
        Some(match password {
            Some(pw) => format!("redis://:{}@{host}:{port}", url_escape(&pw)),
            None => format!("redis://{host}:{port}"),
        })
    }

    pub fn env_var(&self, env: &dyn EnvSource, name: &str) -> Option<String> {
        self.environment_variables
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| env.var(name))
            .filter(|v| !v.is_empty())
    }
}

/// A logging callback and the requests it is told about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    pub name: String,
    pub on_success: bool,
    pub on_failure: bool,
}

impl Config {
    /// The callback named `name`, if configured.
    pub fn callback(&self, name: &str) -> Option<&Callback> {
        self.callbacks.iter().find(|c| c.name == name)
    }
}

/// A loaded configuration and the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub diagnostics: Vec<Diagnostic>,
}

/// Load configuration text. `Err` carries every diagnostic (at least one error) when the
/// configuration cannot be used; `Ok` may still carry warnings.
pub fn load_str(text: &str, env: &dyn EnvSource) -> Result<Loaded, Vec<Diagnostic>> {
    validate::load(text, env)
}

/// Read and load a configuration file.
pub fn load_file(path: &Path, env: &dyn EnvSource) -> Result<Loaded, Vec<Diagnostic>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Diagnostic::error(
            "",
            format!("cannot read {}: {e}", path.display()),
        )]
    })?;
    load_str(&text, env)
}

/// Load as much of a file as is valid, for `config check`: invalid entries are left out and
/// reported, so later checks (providers, endpoints) still see the rest. `None` when the file
/// cannot be read or is not a YAML mapping.
pub fn load_file_lenient(path: &Path, env: &dyn EnvSource) -> (Option<Config>, Vec<Diagnostic>) {
    match std::fs::read_to_string(path) {
        Ok(text) => validate::load_lenient(&text, env),
        Err(e) => (
            None,
            vec![Diagnostic::error(
                "",
                format!("cannot read {}: {e}", path.display()),
            )],
        ),
    }
}

/// `--strict`: warnings become errors.
pub fn strict(diagnostics: &mut [Diagnostic]) {
    for d in diagnostics {
        d.severity = Severity::Error;
    }
}

/// Percent-encode what a URL's userinfo cannot hold as is.
fn url_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
