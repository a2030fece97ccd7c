//! llmux core: the embeddable gateway. A [`Client`] holds an immutable configuration snapshot
//! (swapped atomically on reload) and runs requests through the same path the HTTP server uses:
//! validate → route → translate → send → relay.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use llmux::types::openai::{ChatCompletionRequest, ChatMessage};
//! let client = llmux::Client::from_yaml(
//!     "model_list: [{model_name: demo, litellm_params: {model: mock/demo, mock_response: pong}}]",
//! )?;
//! let response = client
//!     .chat(&ChatCompletionRequest::new("demo", vec![ChatMessage::user("ping")]))
//!     .await?;
//! assert_eq!(response.text(), "pong");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod attempt;
pub mod cache;
mod credentials;
mod delivered;
mod deployment;
pub mod dialect;
mod execute;
mod gate;
mod health;
mod log;
mod native_anthropic;
pub mod pricing;
mod relay;
mod response;
mod resume;
mod splice;
mod tokens;
mod typed;
mod upstream;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use llmux_config::{Config, Diagnostic, EnvSource, ProcessEnv};
use llmux_router::{InMemoryStats, Router, StatsStore};

pub use cache::{CacheBackend, CacheError, ResponseCache};
pub use delivered::DeliveredText;
pub use execute::ParsedBody;
pub use gate::{Admitted, Gate};
pub use health::HealthCheck;
pub use llmux_config as config;
pub use llmux_providers::{Operation, NATIVE_ANTHROPIC};
pub use llmux_router as router;
pub use llmux_types as types;
pub use llmux_types::{ErrorKind, GatewayError};
pub use log::{
    new_span_id, new_trace_id, started_before, AttemptLog, FallbackLog, Observe, Outcome,
    RequestDetail, RequestHook, RequestLog, ResponseFacts, TraceContext, UpstreamRemaining,
};
pub use relay::{RelayStream, StreamSummary};
pub use response::{GatewayResponse, ResponseBody, ResponseMeta};
pub use typed::ChatStream;
pub use upstream::BufferBudget;

/// A configuration and the routing table built from it; requests finish on the snapshot they
/// started with.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Config,
    pub router: Router,
    /// The HTTP client of each deployment (same index as `router.deployments()`); deployments
    /// with the same connect timeout share one pool.
    clients: Vec<upstream::HttpClient>,
    /// The price registry (shared by every snapshot of a client).
    pub pricing: Arc<pricing::Pricing>,
    /// Upstream answer bytes held in memory (shared by every snapshot of a client).
    pub buffers: Arc<upstream::BufferBudget>,
    /// Told when a deployment starts cooling down (shared by every snapshot of a client).
    cooldowns: Arc<Cooldowns>,
    /// The response cache (shared by every snapshot of a client: a reload keeps its answers).
    pub cache: Option<Arc<ResponseCache>>,
}

/// Told, with the deployment's id and the cooldown's length, when this client starts cooling a
/// deployment down (a fleet passes it on to its other instances).
pub type CooldownObserver = Box<dyn Fn(&str, Duration) + Send + Sync>;

/// Told, with the deployment's id, when a half-open probe found a cooled deployment healthy
/// again (a fleet passes it on, so one probe serves every instance).
pub type RecoveryObserver = Box<dyn Fn(&str) + Send + Sync>;

/// Where a client's cooldown and recovery observers are kept (a fleet's, the alerts').
#[derive(Default)]
pub(crate) struct Cooldowns(
    std::sync::RwLock<Vec<CooldownObserver>>,
    std::sync::RwLock<Vec<RecoveryObserver>>,
);

impl std::fmt::Debug for Cooldowns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let observers = self.0.read().map_or(0, |o| o.len());
        write!(f, "Cooldowns({observers} observers)")
    }
}

impl Snapshot {
    /// Tell the cooldown observers that `deployment` cools for `duration`.
    pub(crate) fn announce_cooldown(&self, deployment: &str, duration: Duration) {
        if let Ok(observers) = self.cooldowns.0.read() {
            for observe in observers.iter() {
                observe(deployment, duration);
            }
        }
    }

    /// Tell the recovery observers that `deployment` answered its probe.
    pub(crate) fn announce_recovery(&self, deployment: &str) {
        if let Ok(observers) = self.cooldowns.1.read() {
            for observe in observers.iter() {
                observe(deployment);
            }
        }
    }
}

/// Errors that prevent building a client: every diagnostic, at least one of them an error.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<Diagnostic>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let errors: Vec<String> = self
            .0
            .iter()
            .filter(|d| d.is_error())
            .map(ToString::to_string)
            .collect();
        write!(f, "invalid configuration: {}", errors.join("; "))
    }
}

impl std::error::Error for ConfigErrors {}

/// Per-request settings from the caller (the server passes the request id and arrival time).
#[derive(Clone)]
pub struct RequestOptions {
    pub request_id: String,
    /// When the request arrived, for the gateway-overhead measurement.
    pub received_at: Instant,
    /// `x-litellm-num-retries`: retries for this request (a `num_retries` body field wins).
    pub num_retries: Option<u32>,
    /// `x-litellm-timeout`: per-attempt timeout for this request.
    pub timeout: Option<Duration>,
    /// `x-litellm-tags`: tags for tag-based routing (added to body `tags` / `metadata.tags`).
    pub tags: Vec<String>,
    /// Told when the request is over (spend settlement).
    pub hook: Option<Arc<dyn RequestHook>>,
    /// The body carries a client's own Anthropic request (`NATIVE_ANTHROPIC`), put there by the
    /// Anthropic dialect; any other request carrying one is refused (it would reach an
    /// Anthropic deployment past the checks made on the internal request).
    pub native_dialect: bool,
    /// What telemetry needs kept about this request (attempts, trace, bodies); `None` keeps
    /// nothing beyond the record.
    pub observe: Option<Observe>,
    /// The tenant whose cached answers this request may be served and adds to
    /// (`cache_params.scope`: its team or key); `None` shares them with everyone.
    pub cache_scope: Option<Arc<str>>,
}

impl std::fmt::Debug for RequestOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestOptions")
            .field("request_id", &self.request_id)
            .field("num_retries", &self.num_retries)
            .field("timeout", &self.timeout)
            .field("tags", &self.tags)
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

impl Default for RequestOptions {
    fn default() -> Self {
        RequestOptions {
            request_id: new_request_id(),
            received_at: Instant::now(),
            num_retries: None,
            timeout: None,
            tags: Vec::new(),
            hook: None,
            native_dialect: false,
            observe: None,
            cache_scope: None,
        }
    }
}

/// Tokens of an OpenAI chat (`messages`, `tools`) or completion (`prompt`) request body as
/// `model`'s tokenizer counts them (the gateway's local estimate).
pub fn count_prompt_tokens(body: &[u8], model: &str) -> Result<u64, GatewayError> {
    let request = llmux_types::RawObject::parse(body).map_err(|e| {
        GatewayError::invalid_request(format!("the body is not a JSON object: {e}"))
    })?;
    Ok(tokens::count_prompt_tokens(&request, model))
}

/// A request id: `req-` + 32 hex digits, the first 12 the time in milliseconds and the rest
/// random. Time-ordered ids keep the spend log's request-id index appending at its end instead of
/// touching a random page per insert (measured: ~700 pages written per 500-row batch before).
pub fn new_request_id() -> String {
    use rand_like::next_u128;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let random = next_u128();
    // Written digit by digit: `format!` with two padded hex fields cost ~1.5k instructions.
    let mut id = String::with_capacity(36);
    id.push_str("req-");
    for shift in (0..12).rev() {
        id.push(char::from(HEX[(ms >> (shift * 4)) as usize & 0xf]));
    }
    for shift in (0..20).rev() {
        id.push(char::from(HEX[(random >> (shift * 4)) as usize & 0xf]));
    }
    id
}

mod rand_like {
    //! Request ids need uniqueness, not secrecy: per-process random seeds plus a counter, mixed.
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static SEEDS: OnceLock<[u64; 2]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    /// splitmix64's finalizer: a bijection, so distinct counters give distinct values.
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The low 64 bits never repeat within a process; the seeds differ between processes.
    pub(super) fn next_u128() -> u128 {
        let [a, b] = *SEEDS.get_or_init(|| {
            let state = std::collections::hash_map::RandomState::new();
            [state.hash_one(1u8), state.hash_one(2u8)]
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        (u128::from(mix(a.wrapping_add(n))) << 64) | u128::from(mix(b ^ n))
    }
}

struct Inner {
    snapshot: ArcSwap<Snapshot>,
    pricing: Arc<pricing::Pricing>,
    buffers: Arc<upstream::BufferBudget>,
    cooldowns: Arc<Cooldowns>,
    cache: Option<Arc<ResponseCache>>,
    clients: upstream::ClientPool,
    stats: Arc<dyn StatsStore>,
    logs: log::LogEmitter,
    gate: Option<Arc<dyn Gate>>,
}

/// The gateway core, usable in-process. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// Requests through this handle are admitted by the gate as this key's
    /// ([`Client::with_api_key`]); `None`: the operator's own requests, not governed.
    api_key: Option<Arc<str>>,
}

/// Builds a [`Client`]: its configuration, where provider keys are read from, where the
/// router's state lives, and the governance requests made with an API key go through.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use llmux::types::openai::{ChatCompletionRequest, ChatMessage};
/// let loaded = llmux::config::load_str(
///     "model_list: [{model_name: demo, litellm_params: {model: mock/demo, mock_response: pong}}]",
///     &llmux::config::ProcessEnv,
/// )
/// .map_err(llmux::ConfigErrors)?;
/// let stats = std::sync::Arc::new(llmux::router::InMemoryStats::default());
/// let (client, _warnings) = llmux::Client::builder(loaded.config).stats_store(stats).build()?;
/// let request = ChatCompletionRequest::new("demo", vec![ChatMessage::user("ping")]);
/// assert_eq!(client.chat(&request).await?.text(), "pong");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct ClientBuilder<'e> {
    config: Config,
    env: &'e dyn EnvSource,
    stats: Option<Arc<dyn StatsStore>>,
    gate: Option<Arc<dyn Gate>>,
    /// `Some(None)`: no cache whatever the configuration says.
    cache: Option<Option<Arc<ResponseCache>>>,
}

impl std::fmt::Debug for ClientBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("deployments", &self.config.deployments.len())
            .field("gate", &self.gate.is_some())
            .finish()
    }
}

impl<'e> ClientBuilder<'e> {
    /// Read provider keys and `os.environ/` references from `env` instead of the process
    /// environment.
    pub fn env<'n>(self, env: &'n dyn EnvSource) -> ClientBuilder<'n> {
        ClientBuilder {
            config: self.config,
            env,
            stats: self.stats,
            gate: self.gate,
            cache: self.cache,
        }
    }

    /// Use `cache` as the response cache (a backend of the caller's, through
    /// [`ResponseCache::with_backend`]), or none, instead of what the configuration's
    /// `litellm_settings.cache` describes.
    pub fn cache(mut self, cache: Option<Arc<ResponseCache>>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Where deployments' health, latency and usage live (`InMemoryStats` by default).
    pub fn stats_store(mut self, stats: Arc<dyn StatsStore>) -> Self {
        self.stats = Some(stats);
        self
    }

    /// Govern requests made through [`Client::with_api_key`] handles with `gate`
    /// (`llmux_governance::Governance::gate()`).
    pub fn gate(mut self, gate: Arc<dyn Gate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// The client, and the warnings found while building its routing table.
    pub fn build(self) -> Result<(Client, Vec<Diagnostic>), ConfigErrors> {
        let clients = upstream::ClientPool::default();
        let stats = self
            .stats
            .unwrap_or_else(|| Arc::new(InMemoryStats::default()));
        let pricing = Arc::new(pricing::Pricing::default());
        let buffers = Arc::new(upstream::BufferBudget::default());
        let cooldowns = Arc::new(Cooldowns::default());
        let cache = match self.cache {
            Some(chosen) => chosen,
            None => match &self.config.cache {
                Some(settings) => Some(Arc::new(
                    ResponseCache::from_settings(
                        settings,
                        self.config.cache_redis_url(self.env).as_deref(),
                    )
                    .map_err(|e| {
                        ConfigErrors(vec![Diagnostic::error(
                            "litellm_settings.cache_params",
                            e.0,
                        )])
                    })?,
                )),
                None => None,
            },
        };
        let (snapshot, diags) = build_snapshot(
            self.config,
            self.env,
            &clients,
            stats.as_ref(),
            Shared {
                pricing: &pricing,
                buffers: &buffers,
                cooldowns: &cooldowns,
                cache: &cache,
            },
        )?;
        if let Some(model) = cache.as_ref().and_then(|c| c.semantic_model()) {
            if snapshot.router.route(model).is_none() {
                return Err(ConfigErrors(vec![Diagnostic::error(
                    "litellm_settings.cache_params.redis_semantic_cache_embedding_model",
                    format!("`{model}` is not a model group of model_list"),
                )]));
            }
        }
        let inner = Inner {
            snapshot: ArcSwap::from_pointee(snapshot),
            pricing,
            buffers,
            cooldowns,
            cache,
            clients,
            stats,
            logs: log::LogEmitter::new(),
            gate: self.gate,
        };
        Ok((
            Client {
                inner: Arc::new(inner),
                api_key: None,
            },
            diags,
        ))
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("deployments", &self.snapshot().router.deployments().len())
            .finish()
    }
}

impl Client {
    /// Build a client from a validated configuration, reading provider keys from the process
    /// environment. Returns the warnings found while building the routing table.
    pub fn new(config: Config) -> Result<(Client, Vec<Diagnostic>), ConfigErrors> {
        Self::with_env(config, &ProcessEnv)
    }

    pub fn with_env(
        config: Config,
        env: &dyn EnvSource,
    ) -> Result<(Client, Vec<Diagnostic>), ConfigErrors> {
        Self::builder(config).env(env).build()
    }

    /// A builder, for a client with its own router state store or with governance.
    pub fn builder(config: Config) -> ClientBuilder<'static> {
        ClientBuilder {
            config,
            env: &ProcessEnv,
            stats: None,
            gate: None,
            cache: None,
        }
    }

    /// A handle whose requests are made with `api_key`: the client's gate authenticates it and
    /// admits each model call (`execute`, `execute_parsed`, `chat`, `chat_stream`,
    /// `embeddings`) against the key's models, budgets and limits, and records its spend, as
    /// the HTTP server does; a hook in the caller's `RequestOptions` is told too. Without a
    /// gate such requests are refused. The handle is not a sandbox: `models`, `subscribe`,
    /// `reload` and `snapshot` are the operator's, as on the plain client;
    /// `count_tokens_upstream` does not reach an upstream for it (the local count answers);
    /// `spend_log_durability: sync` is the server's (a library call does not wait for the
    /// spend row).
    pub fn with_api_key(&self, api_key: impl Into<Arc<str>>) -> Client {
        Client {
            inner: Arc::clone(&self.inner),
            api_key: Some(api_key.into()),
        }
    }

    /// Build from LiteLLM-style YAML text (warnings are logged).
    pub fn from_yaml(text: &str) -> Result<Client, ConfigErrors> {
        let loaded = llmux_config::load_str(text, &ProcessEnv).map_err(ConfigErrors)?;
        Self::from_loaded(loaded)
    }

    /// Build from a LiteLLM-style YAML file (warnings are logged).
    pub fn from_file(path: &Path) -> Result<Client, ConfigErrors> {
        let loaded = llmux_config::load_file(path, &ProcessEnv).map_err(ConfigErrors)?;
        Self::from_loaded(loaded)
    }

    fn from_loaded(loaded: llmux_config::Loaded) -> Result<Client, ConfigErrors> {
        let (client, diags) = Self::new(loaded.config)?;
        for d in loaded.diagnostics.iter().chain(&diags) {
            tracing::warn!(path = %d.path, "{}", d.message);
        }
        Ok(client)
    }

    /// The price registry; `pricing().replace(table)` swaps prices while requests run.
    pub fn pricing(&self) -> &Arc<pricing::Pricing> {
        &self.inner.pricing
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshot.load_full()
    }

    /// Swap in a new configuration atomically; in-flight requests finish on the old one.
    pub fn reload(&self, config: Config) -> Result<Vec<Diagnostic>, ConfigErrors> {
        let (snapshot, diags) = build_snapshot(
            config,
            &ProcessEnv,
            &self.inner.clients,
            self.inner.stats.as_ref(),
            Shared {
                pricing: &self.inner.pricing,
                buffers: &self.inner.buffers,
                cooldowns: &self.inner.cooldowns,
                cache: &self.inner.cache,
            },
        )?;
        self.inner.snapshot.store(Arc::new(snapshot));
        Ok(diags)
    }

    /// Run an OpenAI-shaped request given as raw JSON bytes: the path the HTTP server uses.
    pub async fn execute(
        &self,
        op: Operation,
        body: bytes::Bytes,
        options: RequestOptions,
    ) -> Result<GatewayResponse, GatewayError> {
        if self.api_key.is_some() {
            let parsed = ParsedBody::parse(&body)?;
            return self.execute_parsed(op, &parsed, options).await;
        }
        let snapshot = self.snapshot();
        let input = execute::Input::Raw(body);
        execute::execute(&self.inner.logs, snapshot, op, input, options).await
    }

    /// [`Client::execute`] for a body the caller has already parsed (to read fields of its own
    /// first): the body is not parsed a second time.
    pub async fn execute_parsed(
        &self,
        op: Operation,
        body: &ParsedBody<'_>,
        mut options: RequestOptions,
    ) -> Result<GatewayResponse, GatewayError> {
        if let Some(key) = &self.api_key {
            let Some(gate) = &self.inner.gate else {
                return Err(GatewayError::new(
                    ErrorKind::Authentication,
                    "This client has no governance to admit API keys (ClientBuilder::gate).",
                )
                .with_code("governance_disabled"));
            };
            // A malformed request is refused before it counts against budgets and limits.
            body.validate(op)?;
            // Nothing but the Anthropic dialect (which the server runs) carries a client's own
            // Anthropic body past admission's checks.
            options.native_dialect = false;
            let admitted = gate.admit(self, key, op, body, &options).await?;
            // The spend log is keyed by the request id: a keyed caller does not choose it (a
            // reused id would add nothing to the stored spend). Its own id is kept beside it.
            options.request_id = new_request_id();
            options.hook = Some(match options.hook.take() {
                Some(own) => Arc::new(gate::BothHooks(admitted.hook, own)),
                None => admitted.hook,
            });
            options.cache_scope = admitted.cache_scope;
            if let Some(rewritten) = admitted.body {
                let reparsed = ParsedBody::parse(&rewritten)?;
                let input = execute::Input::Parsed(&reparsed);
                return execute::execute(&self.inner.logs, self.snapshot(), op, input, options)
                    .await;
            }
        }
        let snapshot = self.snapshot();
        let input = execute::Input::Parsed(body);
        execute::execute(&self.inner.logs, snapshot, op, input, options).await
    }

    /// Be told when this client starts cooling a deployment down (a fleet passes it on to its
    /// other instances; alerts report it). Observers add up.
    pub fn on_cooldown(&self, observe: impl Fn(&str, Duration) + Send + Sync + 'static) {
        if let Ok(mut observers) = self.inner.cooldowns.0.write() {
            observers.push(Box::new(observe));
        }
    }

    /// Be told when a half-open probe of this client finds a cooled deployment healthy again
    /// (a fleet passes it on, so the other instances need not probe it themselves).
    pub fn on_recovery(&self, observe: impl Fn(&str) + Send + Sync + 'static) {
        if let Ok(mut observers) = self.inner.cooldowns.1.write() {
            observers.push(Box::new(observe));
        }
    }

    /// Deployment `id` is healthy again (another instance's probe found it so): end its
    /// cooldown. `false` when no deployment has that id.
    pub fn recover(&self, id: &str) -> bool {
        let snapshot = self.snapshot();
        let router = &snapshot.router;
        match router.deployments().iter().position(|d| d.id == id) {
            Some(index) => {
                router.stats(index).recover_remote();
                true
            }
            None => false,
        }
    }

    /// Cool deployment `id` for `duration` (another instance of the fleet saw it fail), without
    /// telling the observer again. `false` when no deployment has that id.
    pub fn cool_down(&self, id: &str, duration: Duration) -> bool {
        let snapshot = self.snapshot();
        let router = &snapshot.router;
        match router.deployments().iter().position(|d| d.id == id) {
            Some(index) => {
                router.stats(index).cool_for(duration);
                true
            }
            None => false,
        }
    }

    /// Every finished request's log record, for sinks and tests. Records are dropped for a
    /// receiver that falls more than a few thousand behind; the request path never waits on it.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<RequestLog>> {
        self.inner.logs.subscribe()
    }
}

/// What every snapshot of a client shares.
struct Shared<'a> {
    pricing: &'a Arc<pricing::Pricing>,
    buffers: &'a Arc<upstream::BufferBudget>,
    cooldowns: &'a Arc<Cooldowns>,
    cache: &'a Option<Arc<ResponseCache>>,
}

fn build_snapshot(
    config: Config,
    env: &dyn EnvSource,
    pool: &upstream::ClientPool,
    stats: &dyn StatsStore,
    shared: Shared<'_>,
) -> Result<(Snapshot, Vec<Diagnostic>), ConfigErrors> {
    let Shared {
        pricing,
        buffers,
        cooldowns,
        cache,
    } = shared;
    let mut diags = Vec::new();
    let mut router = Router::build(&config, env, stats, &mut diags);
    if diags.iter().any(Diagnostic::is_error) {
        return Err(ConfigErrors(diags));
    }
    // Cost-based routing ranks by the registry's prices where a deployment sets none itself.
    router.fill_costs(|d| pricing.price_for(&d.config).map(|p| p.input + p.output));
    let clients = router
        .deployments()
        .iter()
        .map(|d| pool.get(d.config.connect_timeout.unwrap_or(config.connect_timeout)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigErrors(vec![Diagnostic::error("", e.message().to_owned())]))?;
    Ok((
        Snapshot {
            config,
            router,
            clients,
            pricing: Arc::clone(pricing),
            buffers: Arc::clone(buffers),
            cooldowns: Arc::clone(cooldowns),
            cache: cache.clone(),
        },
        diags,
    ))
}

/// Check a configuration the way `serve` would load it, without starting anything: config
/// diagnostics plus routing-table diagnostics (unknown providers, missing endpoints, ...).
pub fn check_config(config: &Config, env: &dyn EnvSource) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let _ = Router::build(config, env, &InMemoryStats::default(), &mut diags);
    diags
}

/// The default total timeout for one upstream call when neither the deployment nor
/// `litellm_settings.request_timeout` sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn request_ids_are_unique_and_start_with_the_time() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let ids: Vec<String> = (0..10_000).map(|_| super::new_request_id()).collect();
        let after = before + 60_000;
        let mut seen = std::collections::HashSet::new();
        for id in &ids {
            let hex = id.strip_prefix("req-").unwrap();
            assert_eq!(hex.len(), 32, "{id}");
            assert!(
                hex.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{id}"
            );
            let ms = u64::from_str_radix(&hex[..12], 16).unwrap();
            assert!((before..after).contains(&ms), "{id}");
            assert!(
                seen.insert(hex[12..].to_owned()),
                "random part repeated: {id}"
            );
        }
    }

    /// A client's own Anthropic body rides only in requests the Anthropic dialect made: anyone
    /// else sending one (through the library too, or a gateway without keys) is refused.
    #[tokio::test]
    async fn a_carried_anthropic_body_is_refused_unless_the_dialect_put_it_there() {
        let client = super::Client::from_yaml(
            "model_list: [{model_name: m, litellm_params: {model: mock/demo}}]",
        )
        .unwrap();
        let body = bytes::Bytes::from_static(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"_llmux_anthropic":{"body":{}}}"#,
        );
        let e = client
            .execute(
                super::Operation::Chat,
                body.clone(),
                super::RequestOptions::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind, super::ErrorKind::InvalidRequest);
        let allowed = super::RequestOptions {
            native_dialect: true,
            ..super::RequestOptions::default()
        };
        assert!(client
            .execute(super::Operation::Chat, body, allowed)
            .await
            .is_ok());
    }
}
