//! `GET /metrics`: Prometheus metrics with LiteLLM's names, types and labels (so its Grafana
//! dashboards work unchanged) and llmux's own counters, through `prometheus-client`.
//!
//! A finished request leaves one `Observation` on a queue (shared label strings and numbers,
//! pushed under a lock no one holds for long); the series are updated from the queue off the
//! request path, every second and before each scrape, so a scrape counts every request that
//! finished before it; each kind of request's series are resolved once and cached, so counting
//! one is a hash lookup and a few atomic adds. Label values LiteLLM does not know are `None`, as
//! it writes them. What clients choose is bounded: keys are labelled by their stored hash and
//! alias, never the key, and past `llmux_settings.metrics_max_keys` distinct keys further keys'
//! series are counted as `other`; a model name that routes nowhere is `unknown`; `end_user` is
//! not a label (`None`, LiteLLM's default).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use llmux::{Operation, Outcome, RequestHook, RequestLog};
use llmux_governance::keys::Principal;
use llmux_governance::Governance;
use llmux_store::Kind;
use llmux_types::{ErrorKind, GatewayError};

/// LiteLLM's latency buckets (seconds).
const LATENCY_BUCKETS: [f64; 17] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 420.0,
    600.0,
];

/// Observations held before the oldest are dropped (and counted): the queue is drained every
/// second, so only a stalled drain reaches it.
const MAX_QUEUED: usize = 100_000;

/// The label value LiteLLM writes for what it does not know.
const NONE: &str = "None";

/// Who made a request, as the metrics label it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CallerLabels {
    key: Option<Arc<str>>,
    key_alias: Option<Arc<str>>,
    team: Option<Arc<str>>,
    team_alias: Option<Arc<str>>,
    user: Option<Arc<str>>,
    user_email: Option<Arc<str>>,
}

impl CallerLabels {
    /// The caller's key, team and user (nothing for the master key or without governance).
    pub fn of(principal: Option<&Principal>) -> CallerLabels {
        let Some(p) = principal else {
            return CallerLabels::default();
        };
        let labels = |g: &Option<Arc<llmux_governance::policy::Governed>>| {
            g.as_ref().map_or((None, None), |g| {
                (Some(Arc::clone(&g.labels.0)), g.labels.1.clone())
            })
        };
        let (key, key_alias) = labels(&p.key);
        let (team, team_alias) = labels(&p.team);
        let (user, user_email) = labels(&p.user);
        CallerLabels {
            key,
            key_alias,
            team,
            team_alias,
            user,
            user_email,
        }
    }
}

impl CallerLabels {
    /// The same caller as the log sinks name it.
    pub fn for_telemetry(
        &self,
        principal: Option<&Principal>,
        end_user: Option<&str>,
    ) -> llmux_telemetry::Caller {
        let organization = principal
            .and_then(|p| p.organization.as_ref())
            .map(|g| Arc::clone(&g.labels.0));
        llmux_telemetry::Caller {
            key_hash: self.key.clone(),
            key_alias: self.key_alias.clone(),
            team_id: self.team.clone(),
            team_alias: self.team_alias.clone(),
            // The key's `user_id` even when no user object exists for it.
            user_id: self
                .user
                .clone()
                .or_else(|| principal.and_then(|p| p.user_id()).map(Arc::from)),
            user_email: self.user_email.clone(),
            org_id: organization,
            end_user: end_user.map(Arc::from),
        }
    }
}

/// LiteLLM's name for a request's call type (`acompletion`, ...), as its log sinks write it.
pub fn litellm_call_type(call_type: &'static str) -> &'static str {
    match call_type {
        "chat" => "acompletion",
        "completions" => "atext_completion",
        "embeddings" => "aembedding",
        "rerank" => "arerank",
        "responses" => "aresponses",
        other => other,
    }
}

/// A request's share of the traces and log sinks: who called, its span, whether its messages
/// may be logged.
pub struct TelemetryCall {
    pub telemetry: Arc<llmux_telemetry::Telemetry>,
    pub caller: llmux_telemetry::Caller,
    pub call_type: &'static str,
    pub span: Option<llmux_telemetry::RequestSpan>,
    pub message_logging: bool,
    pub tags: Vec<String>,
    pub op: Operation,
    pub request_id: String,
    pub received_at: std::time::Instant,
}

impl TelemetryCall {
    /// A request refused before it reached the core (bad body, a budget or limit): its span
    /// and its failure record.
    pub fn refused(&self, route: &'static str, requested_model: &str, error: &GatewayError) {
        self.unanswered(
            route,
            requested_model,
            error.status,
            Outcome::Failed(error.kind),
            Some(error.message().to_owned()),
        );
    }

    /// A request whose client left before the core finished it (a JSON answer still awaited):
    /// its span and record, as nginx's 499.
    pub fn left(&self, route: &'static str, requested_model: &str) {
        self.unanswered(
            route,
            requested_model,
            499,
            Outcome::ClientDisconnected,
            None,
        );
    }

    /// The record of a request the core did not answer.
    fn unanswered(
        &self,
        route: &'static str,
        requested_model: &str,
        status: u16,
        outcome: Outcome,
        error: Option<String>,
    ) {
        let duration = self.received_at.elapsed();
        let log = RequestLog {
            request_id: self.request_id.clone(),
            operation: self.op,
            stream: false,
            requested_model: requested_model.to_owned(),
            model_group: None,
            deployment_id: None,
            provider: None,
            status,
            outcome,
            usage: None,
            duration,
            overhead: duration,
            time_to_first_chunk: None,
            chunks: 0,
            recoveries: 0,
            model: None,
            cost: None,
            started_at: llmux::started_before(duration),
            detail: Some(Arc::new(llmux::RequestDetail {
                error,
                ..Default::default()
            })),
            retries: 0,
            fallback: None,
            upstream_remaining: None,
            cache_hit: None,
        };
        self.record(log, route);
    }

    /// Hand a finished request to the sinks.
    fn record(&self, log: RequestLog, route: &'static str) {
        if !self.telemetry.records(self.span) {
            return;
        }
        let mut finished =
            llmux_telemetry::Finished::new(log, self.caller.clone(), self.call_type, route);
        finished.span = self.span;
        finished.message_logging = self.message_logging;
        finished.tags.clone_from(&self.tags);
        self.telemetry.record(finished);
    }
}

/// One finished (or refused) request, waiting to be counted.
#[derive(Debug)]
struct Observation {
    caller: CallerLabels,
    route: &'static str,
    requested_model: String,
    model_group: Option<String>,
    deployment_id: Option<String>,
    provider: Option<&'static str>,
    status: u16,
    /// `None` on success.
    failure: Option<ErrorKind>,
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    cost: f64,
    /// Whether the request reached the core (a refusal by admission did not: it has no
    /// latency or deployment).
    served: bool,
    duration: Duration,
    overhead: Duration,
    time_to_first_chunk: Option<Duration>,
    recoveries: u32,
    retries: u32,
    fallback: Option<Box<llmux::FallbackLog>>,
    upstream_remaining: Option<llmux::UpstreamRemaining>,
    /// The response cache answered (`Some(true)`) or was asked and did not.
    cache_hit: Option<bool>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    end_user: String,
    hashed_api_key: String,
    api_key_alias: String,
    requested_model: String,
    model_group: String,
    team: String,
    team_alias: String,
    user: String,
    user_email: String,
    status_code: String,
    route: String,
    model_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    end_user: String,
    hashed_api_key: String,
    api_key_alias: String,
    requested_model: String,
    model_group: String,
    team: String,
    team_alias: String,
    user: String,
    user_email: String,
    exception_status: String,
    exception_class: String,
    route: String,
    model_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model_group: String,
    end_user: String,
    hashed_api_key: String,
    api_key_alias: String,
    requested_model: String,
    team: String,
    team_alias: String,
    user: String,
    user_email: String,
    model: String,
    model_id: String,
    api_provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OverheadLabels {
    model_group: String,
    api_provider: String,
    api_base: String,
    litellm_model_name: String,
    hashed_api_key: String,
    api_key_alias: String,
    model_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentLabels {
    requested_model: String,
    model_group: String,
    litellm_model_name: String,
    model_id: String,
    api_base: String,
    api_provider: String,
    hashed_api_key: String,
    api_key_alias: String,
    team: String,
    team_alias: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentFailureLabels {
    requested_model: String,
    model_group: String,
    litellm_model_name: String,
    model_id: String,
    api_base: String,
    api_provider: String,
    exception_status: String,
    exception_class: String,
    hashed_api_key: String,
    api_key_alias: String,
    team: String,
    team_alias: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    requested_model: String,
    fallback_model: String,
    hashed_api_key: String,
    api_key_alias: String,
    team: String,
    team_alias: String,
    exception_status: String,
    exception_class: String,
    model_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    model: String,
    hashed_api_key: String,
    api_key_alias: String,
    team: String,
    team_alias: String,
    end_user: String,
    user: String,
    model_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentStateLabels {
    litellm_model_name: String,
    model_id: String,
    api_base: String,
    api_provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyBudgetLabels {
    hashed_api_key: String,
    api_key_alias: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TeamBudgetLabels {
    team: String,
    team_alias: String,
}

type Budgets<L> = Family<L, Gauge<f64, std::sync::atomic::AtomicU64>>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    model_group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestedModelLabels {
    requested_model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    /// `rate_limit` or `budget`.
    reason: String,
}

/// Makes a histogram with LiteLLM's latency buckets.
#[derive(Clone, Copy, Debug, Default)]
struct LatencyHistogram;

impl MetricConstructor<Histogram> for LatencyHistogram {
    fn new_metric(&self) -> Histogram {
        Histogram::new(LATENCY_BUCKETS)
    }
}

type Counters<L> = Family<L, Counter<u64>>;
type FloatCounters<L> = Family<L, Counter<f64, std::sync::atomic::AtomicU64>>;
type Latencies<L> = Family<L, Histogram, LatencyHistogram>;

fn latencies<L: Clone + std::hash::Hash + Eq>() -> Latencies<L> {
    Family::new_with_constructor(LatencyHistogram)
}

/// The series.
#[derive(Debug)]
struct Series {
    total_requests: Counters<RequestLabels>,
    failed_requests: Counters<FailureLabels>,
    total_latency: Latencies<ModelLabels>,
    api_latency: Latencies<ModelLabels>,
    time_to_first_token: Latencies<ModelLabels>,
    overhead_latency: Latencies<OverheadLabels>,
    input_tokens: Counters<ModelLabels>,
    output_tokens: Counters<ModelLabels>,
    total_tokens: Counters<ModelLabels>,
    spend: FloatCounters<ModelLabels>,
    deployment_success: Counters<DeploymentLabels>,
    deployment_failure: Counters<DeploymentFailureLabels>,
    deployment_total: Counters<DeploymentLabels>,
    deployment_state: Family<DeploymentStateLabels, Gauge>,
    recoveries: Counters<GroupLabels>,
    retries: Counters<RequestedModelLabels>,
    successful_fallbacks: Counters<FallbackLabels>,
    failed_fallbacks: Counters<FallbackLabels>,
    remaining_requests: Family<OverheadLabels, Gauge>,
    remaining_tokens: Family<OverheadLabels, Gauge>,
    cache_hits: Counters<CacheLabels>,
    cache_misses: Counters<CacheLabels>,
    cached_tokens: Counters<CacheLabels>,
    refusals: Counters<RefusalLabels>,
    key_remaining_budget: Budgets<KeyBudgetLabels>,
    key_max_budget: Budgets<KeyBudgetLabels>,
    team_remaining_budget: Budgets<TeamBudgetLabels>,
    team_max_budget: Budgets<TeamBudgetLabels>,
}

impl Default for Series {
    fn default() -> Series {
        Series {
            total_requests: Family::default(),
            failed_requests: Family::default(),
            total_latency: latencies(),
            api_latency: latencies(),
            time_to_first_token: latencies(),
            overhead_latency: latencies(),
            input_tokens: Family::default(),
            output_tokens: Family::default(),
            total_tokens: Family::default(),
            spend: Family::default(),
            deployment_success: Family::default(),
            deployment_failure: Family::default(),
            deployment_total: Family::default(),
            deployment_state: Family::default(),
            recoveries: Family::default(),
            retries: Family::default(),
            successful_fallbacks: Family::default(),
            failed_fallbacks: Family::default(),
            remaining_requests: Family::default(),
            remaining_tokens: Family::default(),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            cached_tokens: Family::default(),
            refusals: Family::default(),
            key_remaining_budget: Family::default(),
            key_max_budget: Family::default(),
            team_remaining_budget: Family::default(),
            team_max_budget: Family::default(),
        }
    }
}

/// What decides a finished request's series (its labels are derived from it once).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    /// The caller's key, team and user ids (their names are the first ones seen).
    key: Option<Arc<str>>,
    team: Option<Arc<str>>,
    user: Option<Arc<str>>,
    route: &'static str,
    requested_model: String,
    model_group: Option<String>,
    deployment_id: Option<String>,
    provider: Option<&'static str>,
    status: u16,
    failure: Option<ErrorKind>,
    served: bool,
    cache_hit: Option<bool>,
}

/// The series one kind of request counts in (handles share the registry's values).
#[derive(Debug)]
struct Handles {
    total_requests: Counter<u64>,
    failed: Option<Counter<u64>>,
    refusal: Option<Counter<u64>>,
    deployment_failure: Option<Counter<u64>>,
    deployment_total: Option<Counter<u64>>,
    deployment_success: Option<Counter<u64>>,
    recoveries: Counter<u64>,
    retries: Counter<u64>,
    /// The labels of this kind of request's fallbacks, less the fallback's own (fallbacks are
    /// rare: their series are looked up when one happens).
    fallback: FallbackLabels,
    /// A cache hit or miss, and for a hit the tokens it saved.
    cache: Option<(Counter<u64>, Option<Counter<u64>>)>,
    success: Option<SuccessHandles>,
}

/// What a successful request adds to.
#[derive(Debug)]
struct SuccessHandles {
    total_latency: Histogram,
    api_latency: Histogram,
    time_to_first_token: Histogram,
    overhead_latency: Histogram,
    input_tokens: Counter<u64>,
    output_tokens: Counter<u64>,
    total_tokens: Counter<u64>,
    spend: Counter<f64, std::sync::atomic::AtomicU64>,
    /// Labels of the upstream's remaining-limit gauges (set only when it reports them).
    deployment: OverheadLabels,
}

/// Kinds of request whose series are kept resolved (past it the cache starts over).
const MAX_CACHED_SERIES: usize = 50_000;

/// A label value as the exposition formats need it: backslashes, quotes and newlines escaped
/// (a name a key's holder chose must not end the value and write samples of its own), other
/// control characters dropped, at most `MAX_LABEL_BYTES`.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(MAX_LABEL_BYTES) + 8);
    for c in value.chars() {
        if out.len() + c.len_utf8() > MAX_LABEL_BYTES {
            break;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The longest label value kept (before escaping).
const MAX_LABEL_BYTES: usize = 256;

/// `requested_model` of a request whose model routes nowhere.
const UNKNOWN_MODEL: &str = "unknown";

/// The gateway's Prometheus metrics: request series fed by `MetricsHook` and refusals, plus
/// counters read at scrape time.
#[derive(Debug)]
pub struct Metrics {
    /// Where deployment ids are resolved to their model and `api_base`.
    client: llmux::Client,
    queue: Mutex<Vec<Observation>>,
    series: Series,
    registry: Registry,
    /// Keys labelled so far (bounded by `max_keys`).
    keys: Mutex<HashSet<Arc<str>>>,
    /// The name each key, team and user id was first labelled with.
    names: Mutex<foldhash::HashMap<Arc<str>, Option<Arc<str>>>>,
    /// Teams labelled so far (their budgets are reported; bounded like `names`).
    teams: Mutex<HashSet<Arc<str>>>,
    /// The series of each kind of request seen, resolved once.
    handles: Mutex<foldhash::HashMap<SeriesKey, Arc<Handles>>>,
    max_keys: usize,
    dropped: AtomicU64,
}

impl Metrics {
    pub fn new(client: llmux::Client, max_keys: usize) -> Arc<Metrics> {
        let series = Series::default();
        let mut registry = Registry::default();
        let s = &series;
        registry.register(
            "litellm_proxy_total_requests_metric",
            "Total requests made to the proxy, by status code",
            s.total_requests.clone(),
        );
        registry.register(
            "litellm_proxy_failed_requests_metric",
            "Requests the proxy answered with an error",
            s.failed_requests.clone(),
        );
        registry.register(
            "litellm_request_total_latency_metric",
            "Total latency of a request to the proxy (seconds)",
            s.total_latency.clone(),
        );
        registry.register(
            "litellm_llm_api_latency_metric",
            "Latency of the LLM API call (seconds)",
            s.api_latency.clone(),
        );
        registry.register(
            "litellm_llm_api_time_to_first_token_metric",
            "Time to the first token of a streamed answer (seconds)",
            s.time_to_first_token.clone(),
        );
        registry.register(
            "litellm_overhead_latency_metric",
            "Latency the gateway added (seconds)",
            s.overhead_latency.clone(),
        );
        registry.register(
            "litellm_input_tokens_metric",
            "Input (prompt) tokens",
            s.input_tokens.clone(),
        );
        registry.register(
            "litellm_output_tokens_metric",
            "Output (completion) tokens",
            s.output_tokens.clone(),
        );
        registry.register(
            "litellm_total_tokens_metric",
            "Input + output tokens",
            s.total_tokens.clone(),
        );
        registry.register("litellm_spend_metric", "Spend (USD)", s.spend.clone());
        registry.register(
            "litellm_deployment_success_responses",
            "Successful responses from a deployment",
            s.deployment_success.clone(),
        );
        registry.register(
            "litellm_deployment_failure_responses",
            "Failed responses from a deployment",
            s.deployment_failure.clone(),
        );
        registry.register(
            "litellm_deployment_total_requests",
            "Requests a deployment answered or failed",
            s.deployment_total.clone(),
        );
        registry.register(
            "litellm_deployment_state",
            "A deployment's state: 0 healthy, 1 partial outage, 2 outage (cooling down)",
            s.deployment_state.clone(),
        );
        registry.register(
            "llmux_stream_recoveries",
            "Streams continued on another deployment after failing mid-way",
            s.recoveries.clone(),
        );
        registry.register(
            "llmux_retries",
            "Retries made after a failed attempt (another deployment, or the same after a wait)",
            s.retries.clone(),
        );
        registry.register(
            "litellm_deployment_successful_fallbacks",
            "Requests a fallback model group answered after the requested group failed",
            s.successful_fallbacks.clone(),
        );
        registry.register(
            "litellm_deployment_failed_fallbacks",
            "Fallback model groups tried that failed too",
            s.failed_fallbacks.clone(),
        );
        registry.register(
            "litellm_remaining_requests_metric",
            "Requests left in the upstream's rate limit, as it last reported (x-ratelimit-remaining-requests)",
            s.remaining_requests.clone(),
        );
        registry.register(
            "litellm_remaining_tokens_metric",
            "Tokens left in the upstream's rate limit, as it last reported (x-ratelimit-remaining-tokens)",
            s.remaining_tokens.clone(),
        );
        registry.register(
            "litellm_cache_hits_metric",
            "Requests the response cache answered",
            s.cache_hits.clone(),
        );
        registry.register(
            "litellm_cache_misses_metric",
            "Requests the response cache was asked and could not answer",
            s.cache_misses.clone(),
        );
        registry.register(
            "litellm_cached_tokens_metric",
            "Tokens the response cache's answers saved",
            s.cached_tokens.clone(),
        );
        registry.register(
            "llmux_admission_refusals",
            "Requests refused by a rate limit or a budget before reaching a deployment",
            s.refusals.clone(),
        );
        registry.register(
            "litellm_remaining_api_key_budget_metric",
            "Budget left on a key (USD; +Inf without a budget)",
            s.key_remaining_budget.clone(),
        );
        registry.register(
            "litellm_api_key_max_budget_metric",
            "A key's maximum budget (USD)",
            s.key_max_budget.clone(),
        );
        registry.register(
            "litellm_remaining_team_budget_metric",
            "Budget left on a team (USD; +Inf without a budget)",
            s.team_remaining_budget.clone(),
        );
        registry.register(
            "litellm_team_max_budget_metric",
            "A team's maximum budget (USD)",
            s.team_max_budget.clone(),
        );
        Arc::new(Metrics {
            client,
            queue: Mutex::new(Vec::new()),
            series,
            registry,
            keys: Mutex::new(HashSet::new()),
            handles: Mutex::default(),
            names: Mutex::default(),
            teams: Mutex::default(),
            max_keys,
            dropped: AtomicU64::new(0),
        })
    }

    /// Count the queue every second for as long as the metrics live (when a runtime runs;
    /// scrapes count it in any case).
    pub fn spawn_drain(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(metrics) = me.upgrade() else { return };
                metrics.drain();
            }
        });
    }

    fn push(&self, observation: Observation) {
        let mut queue = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if queue.len() >= MAX_QUEUED {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.push(observation);
    }

    /// A request that admission refused (a rate limit, a budget, model access): it never
    /// reached a deployment. Authentication failures are not counted (nobody to label).
    pub fn refused(
        &self,
        caller: CallerLabels,
        route: &'static str,
        requested_model: &str,
        error: &GatewayError,
    ) {
        if error.kind == ErrorKind::Authentication {
            return;
        }
        self.push(Observation {
            caller,
            route,
            requested_model: requested_model.chars().take(MAX_LABEL_BYTES).collect(),
            model_group: None,
            deployment_id: None,
            provider: None,
            status: error.status,
            failure: Some(error.kind),
            prompt_tokens: 0,
            completion_tokens: 0,
            total_tokens: 0,
            cost: 0.0,
            served: false,
            duration: Duration::ZERO,
            overhead: Duration::ZERO,
            time_to_first_chunk: None,
            recoveries: 0,
            retries: 0,
            fallback: None,
            upstream_remaining: None,
            cache_hit: None,
        });
    }

    /// Apply what is queued to the series now.
    pub fn drain_now(&self) {
        self.drain();
    }

    /// Apply what is queued to the series.
    fn drain(&self) {
        let observations = std::mem::take(
            &mut *self
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if observations.is_empty() {
            return;
        }
        let snapshot = self.client.snapshot();
        for o in observations {
            self.count(o, &snapshot);
        }
    }

    fn count(&self, o: Observation, snapshot: &llmux::Snapshot) {
        // Clients name models: only names the configuration knows become labels.
        let bounded = |name: &str| match snapshot.router.route(name) {
            Some(r) if r.wildcard.is_none() => name.to_owned(),
            Some(r) => r.group.to_owned(),
            None => UNKNOWN_MODEL.to_owned(),
        };
        let key = SeriesKey {
            key: o.caller.key.clone(),
            team: o.caller.team.clone(),
            user: o.caller.user.clone(),
            route: o.route,
            requested_model: bounded(&o.requested_model),
            model_group: o.model_group.as_deref().map(bounded),
            deployment_id: o.deployment_id.clone(),
            provider: o.provider,
            status: o.status,
            failure: o.failure,
            served: o.served,
            cache_hit: o.cache_hit,
        };
        let handles = {
            let mut cache = self
                .handles
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match cache.get(&key) {
                Some(h) => Arc::clone(h),
                None => {
                    let h = Arc::new(self.resolve(&key, &o.caller, snapshot));
                    // Bounded: keys are capped, models and deployments are the config's; a
                    // cache that still grows this far starts over (its series stay).
                    if cache.len() >= MAX_CACHED_SERIES {
                        cache.clear();
                    }
                    cache.insert(key, Arc::clone(&h));
                    h
                }
            }
        };
        handles.total_requests.inc();
        for c in [
            &handles.failed,
            &handles.deployment_failure,
            &handles.refusal,
        ]
        .into_iter()
        .flatten()
        {
            c.inc();
        }
        if let Some(c) = &handles.deployment_total {
            c.inc();
        }
        if let Some(c) = &handles.deployment_success {
            c.inc();
        }
        if o.recoveries > 0 {
            handles.recoveries.inc_by(u64::from(o.recoveries));
        }
        if o.retries > 0 {
            handles.retries.inc_by(u64::from(o.retries));
        }
        if let Some((lookups, saved)) = &handles.cache {
            lookups.inc();
            if let Some(saved) = saved {
                saved.inc_by(o.total_tokens);
            }
        }
        if let Some(fallback) = &o.fallback {
            self.count_fallbacks(&handles.fallback, fallback, o.failure.is_none());
        }
        let Some(success) = &handles.success else {
            return;
        };
        success.total_latency.observe(o.duration.as_secs_f64());
        success
            .api_latency
            .observe(o.duration.saturating_sub(o.overhead).as_secs_f64());
        if let Some(first) = o.time_to_first_chunk {
            success.time_to_first_token.observe(first.as_secs_f64());
        }
        if !o.overhead.is_zero() {
            success.overhead_latency.observe(o.overhead.as_secs_f64());
        }
        if let Some(remaining) = o.upstream_remaining {
            let s = &self.series;
            for (family, value) in [
                (&s.remaining_requests, remaining.requests),
                (&s.remaining_tokens, remaining.tokens),
            ] {
                if let Some(v) = value {
                    family
                        .get_or_create(&success.deployment)
                        .set(i64::try_from(v).unwrap_or(i64::MAX));
                }
            }
        }
        success.input_tokens.inc_by(o.prompt_tokens);
        success.output_tokens.inc_by(o.completion_tokens);
        success.total_tokens.inc_by(o.total_tokens);
        if o.cost > 0.0 {
            success.spend.inc_by(o.cost);
        }
    }

    /// A request's fallbacks: each group but the last failed; the last one failed or answered
    /// as the request did.
    fn count_fallbacks(&self, base: &FallbackLabels, fallback: &llmux::FallbackLog, ok: bool) {
        let mut labels = base.clone();
        labels.exception_status = fallback.cause_status.to_string();
        labels.exception_class = exception_class(fallback.cause, fallback.cause_provider);
        let last = fallback.groups.len().saturating_sub(1);
        let snapshot = self.client.snapshot();
        for (i, group) in fallback.groups.iter().enumerate() {
            // Groups come from the configuration (or a request's own list, routed first).
            labels.fallback_model = match snapshot.router.route(group) {
                Some(_) => label(group),
                None => UNKNOWN_MODEL.to_owned(),
            };
            let family = if i == last && ok {
                &self.series.successful_fallbacks
            } else {
                &self.series.failed_fallbacks
            };
            // The deployment that answered belongs to the last group.
            labels.model_id = if i == last {
                base.model_id.clone()
            } else {
                NONE.to_owned()
            };
            family.get_or_create(&labels).inc();
        }
    }

    /// The series one kind of request counts in, labelled once.
    fn resolve(&self, k: &SeriesKey, names: &CallerLabels, snapshot: &llmux::Snapshot) -> Handles {
        let s = &self.series;
        let text = |v: &Option<Arc<str>>| label(v.as_deref().unwrap_or(NONE));
        let opt = |v: &Option<String>| label(v.as_deref().unwrap_or(NONE));
        // Past the cap, a new key's series are one `other` key's.
        let labelled = match &k.key {
            Some(key) => {
                let mut keys = self
                    .keys
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                keys.contains(key) || { keys.len() < self.max_keys && keys.insert(Arc::clone(key)) }
            }
            None => true,
        };
        let caller = if labelled {
            // Each id keeps the name it was first labelled with: a key or team renamed in a
            // loop does not grow the series.
            let mut first = self
                .names
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let room = first.len() < 3 * self.max_keys.max(1);
            let mut name = |id: &Option<Arc<str>>, seen: &Option<Arc<str>>| {
                let id = id.as_ref()?;
                match first.get(id) {
                    Some(name) => name.clone(),
                    None if room => {
                        first.insert(Arc::clone(id), seen.clone());
                        seen.clone()
                    }
                    None => None,
                }
            };
            if let Some(team) = k.team.as_ref().filter(|_| room) {
                self.teams
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(Arc::clone(team));
            }
            CallerLabels {
                key_alias: name(&k.key, &names.key_alias),
                team_alias: name(&k.team, &names.team_alias),
                user_email: name(&k.user, &names.user_email),
                key: k.key.clone(),
                team: k.team.clone(),
                user: k.user.clone(),
            }
        } else {
            let other: Option<Arc<str>> = Some(Arc::from("other"));
            CallerLabels {
                key: other.clone(),
                key_alias: other.clone(),
                team: other.clone(),
                team_alias: other.clone(),
                user: other.clone(),
                user_email: other,
            }
        };
        let (key, key_alias) = (text(&caller.key), text(&caller.key_alias));
        let (team, team_alias) = (text(&caller.team), text(&caller.team_alias));
        let (user, user_email) = (text(&caller.user), text(&caller.user_email));
        let requested_model = label(&k.requested_model);
        // `end_user` comes from the client too: like LiteLLM by default, not a label.
        let end_user = NONE.to_owned();
        let group = opt(&k.model_group);
        let model_id = opt(&k.deployment_id);
        let provider = k.provider.unwrap_or(NONE).to_owned();
        let (litellm_model_name, api_base) = k
            .deployment_id
            .as_deref()
            .and_then(|id| snapshot.router.deployments().iter().find(|d| d.id == id))
            .map_or((NONE.to_owned(), NONE.to_owned()), |d| {
                (
                    label(&d.config.model),
                    label(d.config.api_base.as_deref().unwrap_or(NONE)),
                )
            });
        let status = k.status.to_string();
        let total_requests = s
            .total_requests
            .get_or_create(&RequestLabels {
                end_user: end_user.clone(),
                hashed_api_key: key.clone(),
                api_key_alias: key_alias.clone(),
                requested_model: requested_model.clone(),
                model_group: group.clone(),
                team: team.clone(),
                team_alias: team_alias.clone(),
                user: user.clone(),
                user_email: user_email.clone(),
                status_code: status.clone(),
                route: k.route.to_owned(),
                model_id: model_id.clone(),
            })
            .clone();
        let class = k.failure.map(|kind| exception_class(kind, k.provider));
        let failed = class.as_ref().map(|class| {
            s.failed_requests
                .get_or_create(&FailureLabels {
                    end_user: end_user.clone(),
                    hashed_api_key: key.clone(),
                    api_key_alias: key_alias.clone(),
                    requested_model: requested_model.clone(),
                    model_group: group.clone(),
                    team: team.clone(),
                    team_alias: team_alias.clone(),
                    user: user.clone(),
                    user_email: user_email.clone(),
                    exception_status: status.clone(),
                    exception_class: class.clone(),
                    route: k.route.to_owned(),
                    model_id: model_id.clone(),
                })
                .clone()
        });
        let refusal = match k.failure {
            Some(kind @ (ErrorKind::RateLimited | ErrorKind::BudgetExceeded)) if !k.served => {
                let reason = if kind == ErrorKind::RateLimited {
                    "rate_limit"
                } else {
                    "budget"
                };
                Some(
                    s.refusals
                        .get_or_create(&RefusalLabels {
                            reason: reason.to_owned(),
                        })
                        .clone(),
                )
            }
            _ => None,
        };
        let deployed = k.deployment_id.is_some();
        let deployment_failure = match (&class, deployed) {
            (Some(class), true) => Some(
                s.deployment_failure
                    .get_or_create(&DeploymentFailureLabels {
                        requested_model: requested_model.clone(),
                        model_group: group.clone(),
                        litellm_model_name: litellm_model_name.clone(),
                        model_id: model_id.clone(),
                        api_base: api_base.clone(),
                        api_provider: provider.clone(),
                        exception_status: status.clone(),
                        exception_class: class.clone(),
                        hashed_api_key: key.clone(),
                        api_key_alias: key_alias.clone(),
                        team: team.clone(),
                        team_alias: team_alias.clone(),
                    })
                    .clone(),
            ),
            _ => None,
        };
        let deployment = DeploymentLabels {
            requested_model: requested_model.clone(),
            model_group: group.clone(),
            litellm_model_name: litellm_model_name.clone(),
            model_id: model_id.clone(),
            api_base: api_base.clone(),
            api_provider: provider.clone(),
            hashed_api_key: key.clone(),
            api_key_alias: key_alias.clone(),
            team: team.clone(),
            team_alias: team_alias.clone(),
        };
        let deployment_total =
            deployed.then(|| s.deployment_total.get_or_create(&deployment).clone());
        let deployment_success = (deployed && k.failure.is_none())
            .then(|| s.deployment_success.get_or_create(&deployment).clone());
        let recoveries = s
            .recoveries
            .get_or_create(&GroupLabels {
                model_group: group.clone(),
            })
            .clone();
        // Retries happen in whichever groups were tried: counted by what the client asked for.
        let retries = s
            .retries
            .get_or_create(&RequestedModelLabels {
                requested_model: requested_model.clone(),
            })
            .clone();
        let fallback = FallbackLabels {
            requested_model: requested_model.clone(),
            fallback_model: NONE.to_owned(),
            hashed_api_key: key.clone(),
            api_key_alias: key_alias.clone(),
            team: team.clone(),
            team_alias: team_alias.clone(),
            exception_status: NONE.to_owned(),
            exception_class: NONE.to_owned(),
            model_id: model_id.clone(),
        };
        let cache = k.cache_hit.map(|hit| {
            let labels = CacheLabels {
                model: if k.model_group.is_some() {
                    group.clone()
                } else {
                    requested_model.clone()
                },
                hashed_api_key: key.clone(),
                api_key_alias: key_alias.clone(),
                team: team.clone(),
                team_alias: team_alias.clone(),
                end_user: end_user.clone(),
                user: user.clone(),
                model_id: model_id.clone(),
            };
            if hit {
                (
                    s.cache_hits.get_or_create(&labels).clone(),
                    Some(s.cached_tokens.get_or_create(&labels).clone()),
                )
            } else {
                (s.cache_misses.get_or_create(&labels).clone(), None)
            }
        });
        // Latencies, tokens and spend count successes only, as LiteLLM's do.
        let success = (k.failure.is_none() && k.served).then(|| {
            let model = ModelLabels {
                model_group: group.clone(),
                end_user,
                hashed_api_key: key.clone(),
                api_key_alias: key_alias.clone(),
                requested_model,
                team,
                team_alias,
                user,
                user_email,
                // The deployment's model as configured (a wildcard's substitution is the
                // client's text).
                model: litellm_model_name.clone(),
                model_id: model_id.clone(),
                api_provider: provider.clone(),
            };
            let deployment = OverheadLabels {
                model_group: group,
                api_provider: provider,
                api_base,
                litellm_model_name,
                hashed_api_key: key,
                api_key_alias: key_alias,
                model_id,
            };
            SuccessHandles {
                total_latency: s.total_latency.get_or_create(&model).clone(),
                api_latency: s.api_latency.get_or_create(&model).clone(),
                time_to_first_token: s.time_to_first_token.get_or_create(&model).clone(),
                overhead_latency: s.overhead_latency.get_or_create(&deployment).clone(),
                input_tokens: s.input_tokens.get_or_create(&model).clone(),
                output_tokens: s.output_tokens.get_or_create(&model).clone(),
                total_tokens: s.total_tokens.get_or_create(&model).clone(),
                spend: s.spend.get_or_create(&model).clone(),
                deployment,
            }
        });
        Handles {
            total_requests,
            failed,
            refusal,
            deployment_failure,
            deployment_total,
            deployment_success,
            recoveries,
            retries,
            fallback,
            cache,
            success,
        }
    }

    /// Each deployment's state now: 0 healthy, 1 a partial outage (failures this minute, or
    /// a half-open probe allowed), 2 cooling down.
    fn deployment_states(&self) {
        let snapshot = self.client.snapshot();
        let router = &snapshot.router;
        for (i, d) in router.deployments().iter().enumerate() {
            let health = router.stats(i).snapshot();
            let state = if health.cooling_for.is_some() {
                2
            } else if !health.healthy || health.failures_this_minute > 0 {
                1
            } else {
                0
            };
            self.series
                .deployment_state
                .get_or_create(&DeploymentStateLabels {
                    litellm_model_name: d.config.model.clone(),
                    model_id: d.id.clone(),
                    api_base: d.config.api_base.clone().unwrap_or_else(|| NONE.to_owned()),
                    api_provider: d.provider.to_owned(),
                })
                .set(state);
        }
    }
}

impl Metrics {
    /// The budgets of the keys and teams the metrics label, as governance counts them now
    /// (the fleet's spend with Redis): LiteLLM's remaining and maximum budget gauges.
    pub async fn refresh_budgets(&self, gov: &Governance) {
        let ids = |set: &Mutex<HashSet<Arc<str>>>| -> Vec<Arc<str>> {
            set.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .cloned()
                .collect()
        };
        let (keys, teams) = (ids(&self.keys), ids(&self.teams));
        let mut owners = Vec::with_capacity(keys.len() + teams.len());
        let mut found = Vec::with_capacity(owners.capacity());
        for (kind, id) in keys
            .iter()
            .map(|k| (Kind::Key, k))
            .chain(teams.iter().map(|t| (Kind::Team, t)))
        {
            // Cached lookups; an object deleted since is no longer reported.
            if let Ok(Some(object)) = gov.object(kind, id).await {
                owners.push((kind, id.to_string()));
                found.push(object);
            }
        }
        let live = gov.live_spend(&owners).await;
        let names = self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((object, (kind, id)), live) in found.iter().zip(&owners).zip(live) {
            let spend = live.map_or(object.spend, |l| l.max(object.spend));
            let max = object.policy.max_budget;
            let remaining = max.map_or(f64::INFINITY, |m| m - spend);
            let name = names
                .get(id.as_str())
                .cloned()
                .flatten()
                .map_or_else(|| NONE.to_owned(), |n| label(&n));
            let series = &self.series;
            if *kind == Kind::Key {
                let labels = KeyBudgetLabels {
                    hashed_api_key: label(id),
                    api_key_alias: name,
                };
                report_budget(
                    (&series.key_remaining_budget, &series.key_max_budget),
                    &labels,
                    remaining,
                    max,
                );
            } else {
                let labels = TeamBudgetLabels {
                    team: label(id),
                    team_alias: name,
                };
                report_budget(
                    (&series.team_remaining_budget, &series.team_max_budget),
                    &labels,
                    remaining,
                    max,
                );
            }
        }
    }
}

/// Set an owner's remaining budget and, when it has one, its maximum.
fn report_budget<L: Clone + std::hash::Hash + Eq>(
    (remaining_family, max_family): (&Budgets<L>, &Budgets<L>),
    labels: &L,
    remaining: f64,
    max: Option<f64>,
) {
    remaining_family.get_or_create(labels).set(remaining);
    if let Some(max) = max {
        max_family.get_or_create(labels).set(max);
    }
}

/// The route a request took (LiteLLM's `route` label), from its operation and call type.
pub fn route(op: Operation, call_type: &str) -> &'static str {
    match (op, call_type) {
        (_, "anthropic_messages") => "/v1/messages",
        (_, "responses") => "/v1/responses",
        (Operation::Chat, _) => "/chat/completions",
        (Operation::Completions, _) => "/completions",
        (Operation::Embeddings, _) => "/embeddings",
        (Operation::Rerank, _) => "/rerank",
    }
}

/// LiteLLM's exception class for an error kind: `<Provider>.<Class>` when a provider raised it
/// (`Openai.RateLimitError`), the class alone when the gateway did.
fn exception_class(kind: ErrorKind, provider: Option<&str>) -> String {
    let class = match kind {
        ErrorKind::InvalidRequest | ErrorKind::PayloadTooLarge => "BadRequestError",
        ErrorKind::Authentication => "AuthenticationError",
        ErrorKind::PermissionDenied => "PermissionDeniedError",
        ErrorKind::NotFound => "NotFoundError",
        ErrorKind::RateLimited => "RateLimitError",
        ErrorKind::BudgetExceeded => "BudgetExceededError",
        ErrorKind::ContextLengthExceeded => "ContextWindowExceededError",
        ErrorKind::ContentFiltered => "ContentPolicyViolationError",
        ErrorKind::Timeout => "Timeout",
        ErrorKind::UpstreamUnavailable => "ServiceUnavailableError",
        ErrorKind::UpstreamError => "APIError",
        ErrorKind::Internal => "InternalServerError",
    };
    match provider {
        Some(p) if kind != ErrorKind::BudgetExceeded => {
            let mut name = String::with_capacity(p.len() + 1 + class.len());
            let mut chars = p.chars();
            if let Some(first) = chars.next() {
                name.extend(first.to_uppercase());
                name.push_str(chars.as_str());
            }
            name.push('.');
            name.push_str(class);
            name
        }
        _ => class.to_owned(),
    }
}

/// Counts a request into the metrics when the core is done with it, and passes the news on to
/// the hook it wraps (governance's settlement).
pub struct MetricsHook {
    pub metrics: Arc<Metrics>,
    pub caller: CallerLabels,
    pub route: &'static str,
    pub inner: Option<Arc<dyn RequestHook>>,
    /// The requested model, for a request dropped before the core finished it.
    pub requested_model: String,
    pub finished: std::sync::atomic::AtomicBool,
    /// The traces and log sinks, when configured.
    pub telemetry: Option<TelemetryCall>,
    /// Alerts, when configured (a slow response is one).
    pub alerter: Option<Arc<llmux_telemetry::alerts::Alerter>>,
}

impl Drop for MetricsHook {
    /// A request dropped before the core finished it (the client left while waiting for a
    /// JSON answer) is counted as nginx's 499, neither served nor failed.
    fn drop(&mut self) {
        if self.finished.load(Ordering::Acquire) {
            return;
        }
        if let Some(t) = &self.telemetry {
            t.left(self.route, &self.requested_model);
        }
        self.metrics.push(Observation {
            caller: std::mem::take(&mut self.caller),
            route: self.route,
            requested_model: std::mem::take(&mut self.requested_model),
            model_group: None,
            deployment_id: None,
            provider: None,
            status: 499,
            failure: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            total_tokens: 0,
            cost: 0.0,
            served: false,
            duration: Duration::ZERO,
            overhead: Duration::ZERO,
            time_to_first_chunk: None,
            recoveries: 0,
            retries: 0,
            fallback: None,
            upstream_remaining: None,
            cache_hit: None,
        });
    }
}

impl RequestHook for MetricsHook {
    fn finished(&self, log: &RequestLog) {
        if let Some(inner) = &self.inner {
            inner.finished(log);
        }
        if self.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        let usage = log.usage.as_ref();
        self.metrics.push(Observation {
            caller: self.caller.clone(),
            route: self.route,
            // Bounded here: the queue holds it until the next drain.
            requested_model: log.requested_model.chars().take(MAX_LABEL_BYTES).collect(),
            model_group: log.model_group.clone(),
            deployment_id: log.deployment_id.clone(),
            provider: log.provider,
            status: log.status,
            failure: match log.outcome {
                // A client that left mid-answer was served; what it received is counted.
                Outcome::Success | Outcome::ClientDisconnected => None,
                Outcome::Failed(kind) => Some(kind),
            },
            prompt_tokens: usage.map_or(0, |u| u.prompt_tokens),
            completion_tokens: usage.map_or(0, |u| u.completion_tokens),
            total_tokens: usage.map_or(0, |u| u.total_tokens),
            cost: log.cost.unwrap_or(0.0),
            served: true,
            duration: log.duration,
            overhead: log.overhead,
            time_to_first_chunk: log.time_to_first_chunk,
            recoveries: log.recoveries,
            retries: log.retries,
            fallback: log.fallback.clone(),
            upstream_remaining: log.upstream_remaining,
            cache_hit: log.cache_hit,
        });
        if let Some(t) = &self.telemetry {
            t.record(log.clone(), self.route);
        }
        if let Some(alerter) = self
            .alerter
            .as_ref()
            .filter(|a| log.duration > a.slow_threshold)
        {
            alerter.send(llmux_telemetry::alerts::Alert::SlowResponse {
                model_group: log.model_group.clone().unwrap_or_default(),
                deployment: log.deployment_id.clone().unwrap_or_default(),
                seconds: log.duration.as_secs_f64(),
            });
        }
    }

    fn watches_stream(&self) -> bool {
        self.inner.as_ref().is_some_and(|h| h.watches_stream())
    }

    fn stream_progress(&self, completion_tokens: u64) -> Result<(), GatewayError> {
        match &self.inner {
            Some(inner) => inner.stream_progress(completion_tokens),
            None => Ok(()),
        }
    }
}

/// Reads the gateway's counters at scrape time.
#[derive(Debug)]
struct ScrapeCounters {
    client: llmux::Client,
    governance: Option<Arc<Governance>>,
    dropped: u64,
    sinks: Vec<llmux_telemetry::SinkStatus>,
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    let e = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(e)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    let e = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(e)
}

impl Collector for ScrapeCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        counter(
            &mut encoder,
            "llmux_unpriced_requests",
            "Requests priced at 0 because their model has no price",
            self.client.pricing().unpriced_requests(),
        )?;
        counter(
            &mut encoder,
            "llmux_metrics_observations_dropped",
            "Finished requests not counted in these metrics because their queue was full",
            self.dropped,
        )?;
        if let Some(limiter) = self.governance.as_ref().and_then(|g| g.shared_state()) {
            counter(
                &mut encoder,
                "llmux_redis_fallbacks",
                "Shared rate-limit calls counted on this instance because Redis did not answer in time",
                limiter.fallbacks.load(Ordering::Relaxed),
            )?;
            gauge(
                &mut encoder,
                "llmux_redis_degraded",
                "1 while Redis is not answering and rate limits are counted per instance",
                i64::from(limiter.degraded()),
            )?;
        }
        if !self.sinks.is_empty() {
            let mut family = encoder.encode_descriptor(
                "llmux_log_sink_records",
                "Finished requests per log sink (and the tracer): exported, dropped because its queue was full, or failed after every retry",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for sink in &self.sinks {
                for (outcome, value) in [
                    ("exported", sink.exported),
                    ("dropped", sink.dropped),
                    ("failed", sink.failed),
                ] {
                    let labels = [("sink", sink.name), ("outcome", outcome)];
                    ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
            let mut family = encoder.encode_descriptor(
                "llmux_log_sink_queued",
                "Finished requests waiting in a log sink's queue",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for sink in &self.sinks {
                let labels = [("sink", sink.name)];
                ConstGauge::new(sink.queued as i64).encode(family.encode_family(&labels)?)?;
            }
            let mut family = encoder.encode_descriptor(
                "llmux_log_sink_healthy",
                "1 when a log sink's last export succeeded",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for sink in &self.sinks {
                let labels = [("sink", sink.name)];
                ConstGauge::new(i64::from(sink.healthy)).encode(family.encode_family(&labels)?)?;
            }
        }
        if let Some(gov) = &self.governance {
            let (written, aggregated) = gov.writer.counts();
            counter(
                &mut encoder,
                "llmux_spend_records_written",
                "Spend records written to the database (aggregates count once)",
                written,
            )?;
            counter(
                &mut encoder,
                "llmux_governance_lookups",
                "Key, user, team and other object lookups that read the database (cache misses; concurrent misses share one read)",
                gov.lookups(),
            )?;
            counter(
                &mut encoder,
                "llmux_spend_records_aggregated",
                "Spend records folded into aggregates because the queue was full",
                aggregated,
            )?;
            gauge(
                &mut encoder,
                "llmux_governed_requests_in_flight",
                "Admitted requests not yet settled",
                gov.in_flight() as i64,
            )?;
        }
        Ok(())
    }
}

/// The exposition in Prometheus's classic text format (0.0.4, what LiteLLM serves and
/// `promtool check metrics` reads) from `prometheus-client`'s OpenMetrics: a counter family is
/// named with its `_total` suffix, as its samples are, and OpenMetrics' `# UNIT` and `# EOF`
/// lines go. Hand-written because the crate writes OpenMetrics only; the rewrite touches
/// comment lines, never samples.
pub fn classic_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len() + 1024);
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with("# HELP ") {
            if let Some(held) = help.replace(line) {
                out.push_str(held);
                out.push('\n');
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = if kind == "counter" { "_total" } else { "" };
            if let Some(held) = help.take() {
                let text = held
                    .strip_prefix("# HELP ")
                    .and_then(|h| h.strip_prefix(name))
                    .unwrap_or("");
                out.push_str("# HELP ");
                out.push_str(name);
                out.push_str(suffix);
                out.push_str(text);
                out.push('\n');
            }
            out.push_str("# TYPE ");
            out.push_str(name);
            out.push_str(suffix);
            out.push(' ');
            out.push_str(kind);
            out.push('\n');
            continue;
        }
        if let Some(held) = help.take() {
            out.push_str(held);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The exposition text (OpenMetrics): every request finished so far is counted first.
pub fn render(state: &crate::AppState) -> String {
    let metrics = &state.metrics;
    metrics.drain();
    metrics.deployment_states();
    let mut scraped = Registry::default();
    scraped.register_collector(Box::new(ScrapeCounters {
        client: state.client.clone(),
        governance: state.governance.clone(),
        dropped: metrics.dropped.load(Ordering::Relaxed),
        sinks: state
            .telemetry
            .load()
            .as_ref()
            .map(|t| t.status())
            .unwrap_or_default(),
    }));
    let mut out = String::new();
    let encoded = prometheus_client::encoding::text::encode_registry(&mut out, &metrics.registry)
        .and_then(|()| prometheus_client::encoding::text::encode_registry(&mut out, &scraped))
        .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut out));
    if encoded.is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_format_names_counter_families_with_their_suffix() {
        let openmetrics = "# HELP a_requests Requests.\n# TYPE a_requests counter\n# UNIT a_requests requests\na_requests_total{x=\"1\"} 3\n# HELP b Latency.\n# TYPE b histogram\nb_bucket{le=\"0.1\"} 1\nb_sum 0.05\nb_count 1\n# EOF\n";
        assert_eq!(
            classic_text(openmetrics),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{x=\"1\"} 3\n# HELP b Latency.\n# TYPE b histogram\nb_bucket{le=\"0.1\"} 1\nb_sum 0.05\nb_count 1\n"
        );
    }
}
