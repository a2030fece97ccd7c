//! Deployments and model groups: builds them from the configuration, matches a requested model
//! name (alias, exact group, then the most specific wildcard), and selects a deployment: filter
//! (operation, tags, context window, health, limits), tier by `order`, rank by the strategy, and
//! claim it (in-flight slot, half-open probe). Runtime state lives in a `StatsStore`.

pub mod stats;
pub mod strategy;

use foldhash::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use llmux_config::{
    Config, DeploymentConfig, Diagnostic, EnvSource, RouterSettings, StrategyKind,
    PROVIDER_SPECIFIC_PARAMS,
};
use llmux_providers::registry::{self, ResolvedProvider};
use llmux_providers::{HttpTarget, Operation, Provider};
use serde_json::Value;
use smallvec::SmallVec;

pub use stats::{
    Availability, DeploymentStats, FleetReport, HealthSnapshot, InMemoryStats, LocalReport,
    StatsStore,
};
use strategy::CandidateView;

/// Deployment indices of one selection: a group has a handful, so they stay on the stack.
type Indices = SmallVec<[usize; 8]>;

/// `litellm_params` the router itself reads (so they are not reported as unused).
const ROUTER_PARAMS: &[&str] = &[
    "tags",
    "max_parallel_requests",
    "input_cost_per_token",
    "output_cost_per_token",
];

/// How a deployment is reached.
pub enum Backend {
    /// An HTTP upstream through a provider adapter.
    Http(Arc<dyn Provider>),
    /// The in-process `mock/` provider.
    Mock {
        model: String,
        response: Option<Value>,
    },
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Http(p) => write!(f, "Http({})", p.name()),
            Backend::Mock { model, .. } => write!(f, "Mock({model})"),
        }
    }
}

/// One routable deployment.
#[derive(Debug)]
pub struct Deployment {
    /// `model_info.id`, or a stable id derived from the entry.
    pub id: String,
    pub model_name: String,
    pub provider: &'static str,
    pub backend: Backend,
    pub timeout: Option<Duration>,
    pub stream_timeout: Option<Duration>,
    pub order: u32,
    /// `litellm_params.tags`, for tag filtering.
    pub tags: Vec<String>,
    pub max_parallel_requests: Option<u64>,
    /// Input + output price per token (`litellm_params` or `model_info`), for cost routing.
    pub cost_per_token: Option<f64>,
    /// The model name sent upstream (before wildcard substitution), e.g. for tokenizer choice.
    pub upstream_model: String,
    pub config: DeploymentConfig,
}

impl Deployment {
    pub fn supports(&self, op: Operation) -> bool {
        match &self.backend {
            Backend::Http(p) => p.supports(op),
            Backend::Mock { .. } => true,
        }
    }

    /// The deployment serves Anthropic's Messages API itself (`Provider::speaks_anthropic`).
    pub fn speaks_anthropic(&self) -> bool {
        matches!(&self.backend, Backend::Http(p) if p.speaks_anthropic())
    }
}

/// The result of matching a requested model name.
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch<'a> {
    /// Indices into `Router::deployments`.
    pub candidates: &'a [usize],
    /// What the group's `*` matched, for substitution into the upstream model.
    pub wildcard: Option<&'a str>,
    /// The model group's name as configured (e.g. `openai/*`).
    pub group: &'a str,
}

#[derive(Debug)]
struct Wildcard {
    pattern: String,
    prefix: String,
    suffix: String,
    members: Vec<usize>,
}

/// Model groups and their deployments, immutable once built.
#[derive(Debug, Default)]
pub struct Router {
    deployments: Vec<Arc<Deployment>>,
    /// Runtime state of each deployment (same index), shared with the store across reloads.
    stats: Vec<Arc<DeploymentStats>>,
    /// Round-robin counters by group name.
    counters: HashMap<String, Arc<AtomicU64>>,
    settings: RouterSettings,
    groups: HashMap<String, Vec<usize>>,
    /// Group names in configuration order, for `/v1/models`.
    group_order: Vec<String>,
    /// Most specific (longest literal text) first.
    wildcards: Vec<Wildcard>,
}

impl Router {
    /// Build the routing table. Deployments that cannot be routed are reported and left out.
    pub fn build(
        config: &Config,
        env: &dyn EnvSource,
        store: &dyn StatsStore,
        diags: &mut Vec<Diagnostic>,
    ) -> Router {
        let mut router = Router {
            settings: config.router.clone(),
            ..Router::default()
        };
        // Deployments added through the API see the environment through their allow-list,
        // and not the file's `environment_variables` (one such config, built once).
        let mut restricted: Option<Config> = None;
        for dep in &config.deployments {
            let built = match &dep.env_allowlist {
                None => build_deployment(dep, config, env, diags),
                Some(allowed) => {
                    let limited = restricted.get_or_insert_with(|| Config {
                        deployments: Vec::new(),
                        environment_variables: Vec::new(),
                        ..config.clone()
                    });
                    let env = llmux_config::AllowListedEnv::new(env, allowed);
                    build_deployment(dep, limited, &env, diags)
                }
            };
            let Some(deployment) = built else {
                continue;
            };
            let index = router.deployments.len();
            router.stats.push(store.deployment(&deployment.id));
            router.deployments.push(Arc::new(deployment));
            let name = dep.model_name.clone();
            router
                .counters
                .entry(name.clone())
                .or_insert_with(|| store.group_counter(&name));
            if let Some((prefix, suffix)) = name.split_once('*') {
                match router.wildcards.iter_mut().find(|w| w.pattern == name) {
                    Some(w) => w.members.push(index),
                    None => router.wildcards.push(Wildcard {
                        prefix: prefix.to_owned(),
                        suffix: suffix.to_owned(),
                        pattern: name,
                        members: vec![index],
                    }),
                }
            } else {
                let members = router.groups.entry(name.clone()).or_default();
                if members.is_empty() {
                    router.group_order.push(name);
                }
                members.push(index);
            }
        }
        router
            .wildcards
            .sort_by_key(|w| std::cmp::Reverse(w.prefix.len() + w.suffix.len()));
        router.check_references(diags);
        router
    }

    /// Fallback and alias targets must name model groups.
    fn check_references(&self, diags: &mut Vec<Diagnostic>) {
        let s = &self.settings;
        let lists = [
            ("fallbacks", &s.fallbacks),
            ("context_window_fallbacks", &s.context_window_fallbacks),
            ("content_policy_fallbacks", &s.content_policy_fallbacks),
        ];
        for (name, map) in lists {
            for (from, to) in map {
                for target in to.iter().chain(std::iter::once(from)) {
                    if self.route(target).is_none() {
                        diags.push(Diagnostic::warning(
                            format!("router_settings.{name}.{from}"),
                            format!("`{target}` is not a model group"),
                        ));
                    }
                }
            }
        }
        for target in &s.default_fallbacks {
            if self.route(target).is_none() {
                diags.push(Diagnostic::warning(
                    "router_settings.default_fallbacks",
                    format!("`{target}` is not a model group"),
                ));
            }
        }
        for (alias, target) in &s.model_group_alias {
            if !self.groups.contains_key(target) && self.wildcard_route(target).is_none() {
                diags.push(Diagnostic::warning(
                    format!("router_settings.model_group_alias.{alias}"),
                    format!("`{target}` is not a model group"),
                ));
            }
        }
    }

    pub fn settings(&self) -> &RouterSettings {
        &self.settings
    }

    pub fn stats(&self, index: usize) -> &Arc<DeploymentStats> {
        &self.stats[index]
    }

    pub fn deployments(&self) -> &[Arc<Deployment>] {
        &self.deployments
    }

    pub fn deployment(&self, index: usize) -> &Arc<Deployment> {
        &self.deployments[index]
    }

    /// Give deployments without their own price one from `price` (the pricing registry), for
    /// cost-based routing. Call right after `build`, before the router is shared.
    pub fn fill_costs(&mut self, price: impl Fn(&Deployment) -> Option<f64>) {
        for d in &mut self.deployments {
            if d.cost_per_token.is_none() {
                let cost = price(d);
                if let Some(d) = Arc::get_mut(d) {
                    d.cost_per_token = cost;
                }
            }
        }
    }

    /// Model group names clients can ask for: groups and visible aliases (wildcards are not listed).
    pub fn model_names(&self) -> impl Iterator<Item = &str> {
        let mut aliases: Vec<&str> = self
            .settings
            .model_group_alias
            .keys()
            .filter(|a| !self.settings.hidden_aliases.contains(a) && !self.groups.contains_key(*a))
            .filter(|a| self.route(a).is_some())
            .map(String::as_str)
            .collect();
        aliases.sort_unstable();
        self.group_order.iter().map(String::as_str).chain(aliases)
    }

    pub fn has_model(&self, name: &str) -> bool {
        self.groups.contains_key(name)
    }

    /// Find the deployments serving `model`: an alias's target, an exact group, else the most
    /// specific wildcard.
    pub fn route<'a>(&'a self, model: &'a str) -> Option<RouteMatch<'a>> {
        let model = match self.settings.model_group_alias.get_key_value(model) {
            Some((_, target)) if !self.groups.contains_key(model) => target.as_str(),
            _ => model,
        };
        if let Some((name, members)) = self.groups.get_key_value(model) {
            return Some(RouteMatch {
                candidates: members,
                wildcard: None,
                group: name,
            });
        }
        self.wildcard_route(model)
    }

    fn wildcard_route<'a>(&'a self, model: &'a str) -> Option<RouteMatch<'a>> {
        self.wildcards.iter().find_map(|w| {
            let matched = model.len() >= w.prefix.len() + w.suffix.len()
                && model.starts_with(&w.prefix)
                && model.ends_with(&w.suffix);
            matched.then(|| RouteMatch {
                candidates: &w.members,
                wildcard: Some(&model[w.prefix.len()..model.len() - w.suffix.len()]),
                group: &w.pattern,
            })
        })
    }

    /// Choose a deployment for one attempt and claim it (an in-flight slot, and the half-open
    /// probe when its cooldown has just ended). The caller must `release` it when done.
    pub fn select(
        &self,
        route: &RouteMatch<'_>,
        input: &SelectionInput<'_>,
    ) -> Result<usize, NoDeployment> {
        let settings = &self.settings;
        let supported: Indices = route
            .candidates
            .iter()
            .copied()
            .filter(|i| self.deployments[*i].supports(input.op))
            .collect();
        if supported.is_empty() {
            return Err(NoDeployment::NotSupported);
        }
        let tagged = if settings.enable_tag_filtering {
            filter_tags(&supported, &self.deployments, input.tags)
        } else {
            supported
        };
        if tagged.is_empty() {
            return Err(NoDeployment::NoTagMatch);
        }
        let fitting: Indices = match input.prompt_tokens {
            Some(tokens) => tagged
                .iter()
                .copied()
                .filter(|i| {
                    self.deployments[*i]
                        .config
                        .model_info
                        .max_input_tokens
                        .is_none_or(|max| tokens <= max)
                })
                .collect(),
            None => tagged,
        };
        if fitting.is_empty() {
            return Err(NoDeployment::ContextWindow);
        }
        // Prefer deployments this request has not failed on; fall back to them when none is left.
        let fresh: Indices = fitting
            .iter()
            .copied()
            .filter(|i| !input.exclude.contains(i))
            .collect();
        let pool = if fresh
            .iter()
            .any(|i| !matches!(self.stats[*i].availability(), Availability::Cooling(_)))
        {
            fresh
        } else {
            fitting
        };

        let mut tiers: SmallVec<[u32; 4]> =
            pool.iter().map(|i| self.deployments[*i].order).collect();
        tiers.sort_unstable();
        tiers.dedup();
        let mut soonest: Option<Duration> = None;
        let mut all_rate_limited = true;
        let mut at_capacity = false;
        let mut over_limits = false;
        let counter = self.counters.get(route.group).cloned().unwrap_or_default();
        for tier in tiers {
            let mut views: SmallVec<[CandidateView; 8]> = SmallVec::new();
            for &i in pool.iter().filter(|i| self.deployments[**i].order == tier) {
                let stats = &self.stats[i];
                if let Availability::Cooling(left) = stats.availability() {
                    soonest = Some(soonest.map_or(left, |s| s.min(left)));
                    all_rate_limited &=
                        stats.last_failure() == Some(llmux_types::ErrorKind::RateLimited);
                    continue;
                }
                let dep = &self.deployments[i];
                if settings.strategy == StrategyKind::UsageBased
                    && over_usage_limits(dep, stats, input.prompt_tokens)
                {
                    over_limits = true;
                    continue;
                }
                let (per_token, ttft) = stats.latency();
                views.push(CandidateView {
                    index: i,
                    weight: 0.0,
                    in_flight: stats.fleet_in_flight(),
                    latency_ms: if input.stream {
                        ttft.or(per_token)
                    } else {
                        per_token
                    },
                    tokens_this_minute: stats.minute_usage().1,
                    cost_per_token: dep.cost_per_token,
                });
            }
            if views.is_empty() {
                continue;
            }
            let weights = tier_weights(
                &views
                    .iter()
                    .map(|v| &self.deployments[v.index].config)
                    .collect::<SmallVec<[_; 8]>>(),
            );
            for (view, w) in views.iter_mut().zip(weights) {
                view.weight = w;
            }
            strategy::rank(
                settings.strategy,
                &mut views,
                settings.lowest_latency_buffer,
                &counter,
            );
            for view in views {
                let stats = &self.stats[view.index];
                let probe = matches!(stats.availability(), Availability::Probe);
                if probe && !stats.try_acquire_probe() {
                    continue;
                }
                if !stats.try_begin(self.deployments[view.index].max_parallel_requests) {
                    at_capacity = true;
                    if probe {
                        stats.release_probe();
                    }
                    continue;
                }
                stats.record_request();
                return Ok(view.index);
            }
        }
        if at_capacity {
            return Err(NoDeployment::AtCapacity);
        }
        if over_limits {
            return Err(NoDeployment::OverLimits);
        }
        Err(NoDeployment::Cooling {
            retry_in: soonest.unwrap_or(settings.cooldown_time),
            rate_limited: all_rate_limited,
        })
    }

    /// Whether a deployment this request has not failed on could take it now (then a retry goes
    /// there at once instead of waiting).
    pub fn has_fresh_candidate(&self, route: &RouteMatch<'_>, input: &SelectionInput<'_>) -> bool {
        route.candidates.iter().any(|i| {
            !input.exclude.contains(i)
                && self.deployments[*i].supports(input.op)
                && !matches!(self.stats[*i].availability(), Availability::Cooling(_))
        })
    }

    /// Give back what `select` claimed (call once per successful `select`).
    pub fn release(&self, index: usize) {
        self.stats[index].end();
    }
}

/// Why no deployment could take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoDeployment {
    /// No deployment of the group supports the operation.
    NotSupported,
    /// Tag filtering left nothing.
    NoTagMatch,
    /// The prompt is longer than every deployment's `max_input_tokens`.
    ContextWindow,
    /// Every deployment is at `max_parallel_requests`.
    AtCapacity,
    /// Every deployment is over its rpm/tpm for this minute (usage-based routing).
    OverLimits,
    /// Every deployment is cooling down.
    Cooling {
        retry_in: Duration,
        rate_limited: bool,
    },
}

/// Per-request inputs to selection.
#[derive(Debug, Clone, Copy)]
pub struct SelectionInput<'a> {
    pub op: Operation,
    pub stream: bool,
    pub tags: &'a [String],
    /// Prompt size, when pre-call checks counted it.
    pub prompt_tokens: Option<u64>,
    /// Deployments this request already failed on.
    pub exclude: &'a [usize],
}

/// LiteLLM's tag routing: a tagged request goes to deployments sharing a tag, else to `default`
/// ones; an untagged request goes to `default` deployments when there are any, else anywhere.
fn filter_tags(candidates: &[usize], deployments: &[Arc<Deployment>], tags: &[String]) -> Indices {
    let has = |i: &usize, tag: &str| deployments[*i].tags.iter().any(|t| t == tag);
    if !tags.is_empty() {
        let matching: Indices = candidates
            .iter()
            .copied()
            .filter(|i| tags.iter().any(|t| has(i, t)))
            .collect();
        if !matching.is_empty() {
            return matching;
        }
        return candidates
            .iter()
            .copied()
            .filter(|i| has(i, "default"))
            .collect();
    }
    let defaults: Indices = candidates
        .iter()
        .copied()
        .filter(|i| has(i, "default"))
        .collect();
    if defaults.is_empty() {
        SmallVec::from_slice(candidates)
    } else {
        defaults
    }
}

fn over_usage_limits(
    dep: &Deployment,
    stats: &DeploymentStats,
    prompt_tokens: Option<u64>,
) -> bool {
    let (requests, tokens) = stats.minute_usage();
    dep.config.rpm.is_some_and(|rpm| requests >= rpm)
        || dep
            .config
            .tpm
            .is_some_and(|tpm| tokens + prompt_tokens.unwrap_or(0) > tpm)
}

/// Each config's weight for simple-shuffle: its `weight`, else `rpm`, else `tpm` (the first
/// basis any config of the tier sets; a config without a value in it gets the tier's average),
/// else 1.
fn tier_weights(configs: &[&DeploymentConfig]) -> SmallVec<[f64; 8]> {
    let bases: [fn(&DeploymentConfig) -> Option<f64>; 3] = [
        |c| c.weight,
        |c| c.rpm.map(|v| v as f64),
        |c| c.tpm.map(|v| v as f64),
    ];
    for get in bases {
        let (sum, count) = configs
            .iter()
            .filter_map(|c| get(c))
            .fold((0.0, 0usize), |(sum, n), v| (sum + v, n + 1));
        if count > 0 {
            let fallback = sum / count as f64;
            return configs.iter().map(|c| get(c).unwrap_or(fallback)).collect();
        }
    }
    configs.iter().map(|_| 1.0).collect()
}

fn build_deployment(
    dep: &DeploymentConfig,
    config: &Config,
    env: &dyn EnvSource,
    diags: &mut Vec<Diagnostic>,
) -> Option<Deployment> {
    let resolved = registry::resolve(dep, diags)?;
    let (provider, backend, upstream_model) = match resolved {
        ResolvedProvider::Mock { upstream_model } => (
            registry::MOCK_PROVIDER,
            Backend::Mock {
                model: upstream_model.clone(),
                response: dep.mock_response.clone(),
            },
            upstream_model,
        ),
        ResolvedProvider::Native {
            provider,
            upstream_model,
        } => {
            let target =
                registry::native_target(provider, &upstream_model, dep, config, env, diags)?;
            (provider, Backend::Http(target), upstream_model)
        }
        ResolvedProvider::OpenAiCompatible {
            spec,
            upstream_model,
        } => {
            let target = HttpTarget::new(spec, &upstream_model, dep, config, env, diags)?;
            (spec.name, Backend::Http(Arc::new(target)), upstream_model)
        }
    };
    if dep.mock_response.is_some() && provider != registry::MOCK_PROVIDER {
        diags.push(Diagnostic::warning(
            format!("{}.litellm_params.mock_response", dep.path()),
            "mock_response only applies to `mock/` models; ignored",
        ));
    }
    for key in dep
        .provider_params
        .keys()
        .filter(|k| !ROUTER_PARAMS.contains(&k.as_str()))
        .filter(|k| !registry::provider_params_used(provider).contains(&k.as_str()))
    {
        let path = format!("{}.litellm_params.{key}", dep.path());
        let message = if PROVIDER_SPECIFIC_PARAMS.contains(&key.as_str()) {
            format!("`{key}` is not supported yet for provider `{provider}`; ignored")
        } else {
            format!("unknown litellm_params key `{key}`; ignored")
        };
        diags.push(Diagnostic::warning(path, message));
    }
    let id = dep.model_info.id.clone().unwrap_or_else(|| stable_id(dep));
    let number = |key: &str| {
        dep.provider_params
            .get(key)
            .or_else(|| dep.model_info.extra.get(key))
            .and_then(|v| {
                v.as_f64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            })
    };
    let tags = match dep.provider_params.get("tags") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(tag)) => vec![tag.clone()],
        Some(_) => {
            diags.push(Diagnostic::error(
                format!("{}.litellm_params.tags", dep.path()),
                "expected a list of tags",
            ));
            return None;
        }
        None => Vec::new(),
    };
    let max_parallel_requests = number("max_parallel_requests")
        .filter(|n| *n >= 1.0)
        .map(|n| n as u64);
    let cost_per_token = match (
        number("input_cost_per_token"),
        number("output_cost_per_token"),
    ) {
        (None, None) => None,
        (i, o) => Some(i.unwrap_or(0.0) + o.unwrap_or(0.0)),
    };

    Some(Deployment {
        id,
        model_name: dep.model_name.clone(),
        provider,
        backend,
        timeout: dep.timeout,
        stream_timeout: dep.stream_timeout,
        order: dep.order.unwrap_or(u32::MAX),
        tags,
        max_parallel_requests,
        cost_per_token,
        upstream_model,
        config: dep.clone(),
    })
}

/// FNV-1a over what identifies an entry: stable across restarts while the entry is unchanged.
fn stable_id(dep: &DeploymentConfig) -> String {
    let mut hash: u64 = 0xcbf29ce484222325;
    let parts = [
        dep.model_name.as_str(),
        dep.model.as_str(),
        dep.api_base.as_deref().unwrap_or(""),
    ];
    for part in parts {
        for b in part.bytes().chain([0u8]) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x100000001b3);
        }
    }
    hash ^= dep.index as u64;
    hash = hash.wrapping_mul(0x100000001b3);
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap as Env;

    fn router(yaml: &str) -> (Router, Vec<Diagnostic>) {
        let loaded = llmux_config::load_str(yaml, &Env::new()).unwrap();
        let mut diags = loaded.diagnostics;
        let r = Router::build(
            &loaded.config,
            &Env::<String, String>::new(),
            &InMemoryStats::default(),
            &mut diags,
        );
        (r, diags)
    }

    fn input<'a>(tags: &'a [String], exclude: &'a [usize]) -> SelectionInput<'a> {
        SelectionInput {
            op: Operation::Chat,
            stream: false,
            tags,
            prompt_tokens: None,
            exclude,
        }
    }

    /// Select and release at once: which deployment would take the request.
    fn pick(r: &Router, model: &str) -> Result<usize, NoDeployment> {
        let route = r.route(model).unwrap();
        let i = r.select(&route, &input(&[], &[]))?;
        r.release(i);
        Ok(i)
    }

    #[test]
    fn exact_groups_win_over_wildcards_and_specific_wildcards_over_general() {
        let (r, _) = router(
            r#"
model_list:
  - {model_name: gpt-4o, litellm_params: {model: mock/exact}}
  - {model_name: "openai/*", litellm_params: {model: "openai/*", api_key: k}}
  - {model_name: "*", litellm_params: {model: "groq/*", api_key: k}}
"#,
        );
        let m = r.route("gpt-4o").unwrap();
        assert_eq!((m.group, m.wildcard), ("gpt-4o", None));
        let m = r.route("openai/gpt-4.1").unwrap();
        assert_eq!((m.group, m.wildcard), ("openai/*", Some("gpt-4.1")));
        let m = r.route("llama").unwrap();
        assert_eq!((m.group, m.wildcard), ("*", Some("llama")));
        let Backend::Http(p) = &r.deployment(m.candidates[0]).backend else {
            panic!()
        };
        assert_eq!(p.name(), "groq");
        assert_eq!(r.model_names().collect::<Vec<_>>(), vec!["gpt-4o"]);
    }

    #[test]
    fn unknown_model_is_none_without_a_catch_all() {
        let (r, _) = router("model_list: [{model_name: a, litellm_params: {model: mock/a}}]");
        assert!(r.route("b").is_none());
        assert!(r.route("a").is_some());
    }

    #[test]
    fn weighted_pick_follows_weights_and_order_tiers() {
        let (r, _) = router(
            r#"
model_list:
  - {model_name: g, litellm_params: {model: mock/a, weight: 9}}
  - {model_name: g, litellm_params: {model: mock/b, weight: 1}}
  - {model_name: h, litellm_params: {model: mock/c, order: 2}}
  - {model_name: h, litellm_params: {model: mock/d, order: 1}}
"#,
        );
        let mut counts = [0usize; 2];
        for _ in 0..10_000 {
            counts[pick(&r, "g").unwrap()] += 1;
        }
        // 90% expected; the bound is far outside what chance produces in 10,000 draws.
        assert!(counts[0] > 8_500 && counts[0] < 9_500, "{counts:?}");
        for _ in 0..100 {
            assert_eq!(pick(&r, "h"), Ok(3));
        }
    }

    #[test]
    fn rpm_is_the_weight_when_no_weight_is_set() {
        let w = tier_weights(&[
            &llmux_config::load_str(
                "model_list: [{model_name: g, litellm_params: {model: mock/a, rpm: 30}}]",
                &Env::new(),
            )
            .unwrap()
            .config
            .deployments[0],
            &llmux_config::load_str(
                "model_list: [{model_name: g, litellm_params: {model: mock/b}}]",
                &Env::new(),
            )
            .unwrap()
            .config
            .deployments[0],
        ]);
        assert_eq!(w.as_slice(), [30.0, 30.0]);
    }

    #[test]
    fn native_and_misconfigured_deployments_are_reported_and_skipped() {
        let (r, diags) = router(
            r#"
model_list:
  - {model_name: c, litellm_params: {model: sagemaker/endpoint}}
  - {model_name: v, litellm_params: {model: hosted_vllm/llama}}
  - {model_name: ok, litellm_params: {model: mock/x, vertex_project: p, frobnicate: 1}}
"#,
        );
        assert!(r.route("c").is_none());
        assert!(r.route("v").is_none(), "hosted_vllm needs an api_base");
        assert!(r.route("ok").is_some());
        let text: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|t| t.contains("model_list[0].litellm_params.model")
                    && t.contains("native adapter")),
            "{text:?}"
        );
        assert!(
            text.iter().any(
                |t| t.starts_with("warning: model_list[1].litellm_params.api_base")
                    && t.contains("not routed")
            ),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("vertex_project") && t.contains("not supported yet")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("frobnicate") && t.contains("unknown")),
            "{text:?}"
        );
    }

    #[test]
    fn provider_params_an_adapter_reads_are_not_reported() {
        let (r, diags) = router(
            r#"
model_list:
  - {model_name: b, litellm_params: {model: "bedrock/anthropic.claude-3-haiku-20240307-v1:0", aws_access_key_id: A, aws_secret_access_key: S, aws_region_name: us-east-1, aws_profile_name: dev}}
  - {model_name: g, litellm_params: {model: gemini/gemini-2.5-flash, api_key: k, safety_settings: []}}
"#,
        );
        assert!(r.route("b").is_some() && r.route("g").is_some());
        let text: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 1, "{text:?}");
        assert!(text[0].contains("aws_profile_name") && text[0].contains("not supported yet"));
    }

    #[test]
    fn ids_are_stable_and_model_info_id_wins() {
        let yaml = "model_list: [{model_name: a, litellm_params: {model: mock/a}}, {model_name: a, litellm_params: {model: mock/a}, model_info: {id: mine}}]";
        let (r1, _) = router(yaml);
        let (r2, _) = router(yaml);
        assert_eq!(r1.deployment(0).id, r2.deployment(0).id);
        assert_eq!(r1.deployment(1).id, "mine");
    }

    #[test]
    fn aliases_route_and_hidden_ones_are_not_listed() {
        let (r, diags) = router(
            r#"
model_list: [{model_name: gpt-4o, litellm_params: {model: mock/a}}]
router_settings:
  model_group_alias: {gpt-4: gpt-4o, internal: {model: gpt-4o, hidden: true}, broken: nothing}
"#,
        );
        assert_eq!(r.route("gpt-4").unwrap().group, "gpt-4o");
        assert_eq!(r.route("internal").unwrap().group, "gpt-4o");
        assert_eq!(r.model_names().collect::<Vec<_>>(), vec!["gpt-4o", "gpt-4"]);
        assert!(diags
            .iter()
            .any(|d| d.path == "router_settings.model_group_alias.broken"));
    }

    #[test]
    fn tags_filter_with_a_default_fallback() {
        let (r, _) = router(
            r#"
model_list:
  - {model_name: g, litellm_params: {model: mock/paid, tags: [paid]}}
  - {model_name: g, litellm_params: {model: mock/free, tags: [free, default]}}
router_settings: {enable_tag_filtering: true}
"#,
        );
        let route = r.route("g").unwrap();
        let select = |tags: &[String]| {
            let i = r.select(&route, &input(tags, &[])).unwrap();
            r.release(i);
            i
        };
        for _ in 0..20 {
            assert_eq!(select(&["paid".to_owned()]), 0);
            assert_eq!(select(&["free".to_owned()]), 1);
            assert_eq!(
                select(&[]),
                1,
                "untagged requests go to default deployments"
            );
            assert_eq!(
                select(&["other".to_owned()]),
                1,
                "unmatched tags fall back to default"
            );
        }
    }

    #[test]
    fn context_window_filters_deployments() {
        let (r, _) = router(
            r#"
model_list:
  - {model_name: g, litellm_params: {model: mock/small}, model_info: {max_input_tokens: 100}}
  - {model_name: g, litellm_params: {model: mock/big}, model_info: {max_input_tokens: 1000}}
"#,
        );
        let route = r.route("g").unwrap();
        let mut inp = input(&[], &[]);
        inp.prompt_tokens = Some(500);
        for _ in 0..20 {
            let i = r.select(&route, &inp).unwrap();
            r.release(i);
            assert_eq!(i, 1);
        }
        inp.prompt_tokens = Some(5000);
        assert_eq!(r.select(&route, &inp), Err(NoDeployment::ContextWindow));
    }

    #[tokio::test(start_paused = true)]
    async fn cooling_deployments_are_skipped_and_lower_tiers_take_over() {
        let (r, _) = router(
            r#"
model_list:
  - {model_name: g, litellm_params: {model: mock/primary, order: 1}}
  - {model_name: g, litellm_params: {model: mock/backup, order: 2}}
router_settings: {cooldown_time: 10}
"#,
        );
        assert_eq!(pick(&r, "g"), Ok(0));
        r.stats(0)
            .record_failure(llmux_types::ErrorKind::RateLimited, r.settings(), 2, None);
        assert_eq!(pick(&r, "g"), Ok(1), "tier 2 serves while tier 1 cools");
        r.stats(1)
            .record_failure(llmux_types::ErrorKind::RateLimited, r.settings(), 2, None);
        assert!(matches!(
            pick(&r, "g"),
            Err(NoDeployment::Cooling {
                rate_limited: true,
                ..
            })
        ));
        tokio::time::advance(Duration::from_secs(11)).await;
        let route = r.route("g").unwrap();
        let probe = r.select(&route, &input(&[], &[])).unwrap();
        assert_eq!(probe, 0, "the half-open probe goes to tier 1");
        r.release(probe);
        r.stats(0).record_success();
        assert_eq!(pick(&r, "g"), Ok(0));
    }

    #[test]
    fn excluded_deployments_are_avoided_while_others_remain() {
        let (r, _) = router("model_list: [{model_name: g, litellm_params: {model: mock/a}}, {model_name: g, litellm_params: {model: mock/b}}]");
        let route = r.route("g").unwrap();
        for _ in 0..20 {
            let i = r.select(&route, &input(&[], &[0])).unwrap();
            r.release(i);
            assert_eq!(i, 1);
        }
        let i = r.select(&route, &input(&[], &[0, 1])).unwrap();
        r.release(i);
    }

    #[test]
    fn max_parallel_requests_caps_in_flight() {
        let (r, _) = router("model_list: [{model_name: g, litellm_params: {model: mock/a, max_parallel_requests: 2}}]");
        let route = r.route("g").unwrap();
        let a = r.select(&route, &input(&[], &[])).unwrap();
        let b = r.select(&route, &input(&[], &[])).unwrap();
        assert_eq!(
            r.select(&route, &input(&[], &[])),
            Err(NoDeployment::AtCapacity)
        );
        r.release(a);
        assert!(r.select(&route, &input(&[], &[])).is_ok());
        let _ = b;
    }
}
