//! `router_settings` (and the reliability keys LiteLLM also reads from `litellm_settings`): routing
//! strategy, retries, cooldowns, fallbacks, pre-call checks, aliases, tag filtering, and llmux's
//! mid-stream recovery. Parsed into `RouterSettings` with a diagnostic per bad or unknown key.

use std::collections::HashMap;
use std::time::Duration;

use llmux_types::ErrorKind;
use serde_json::{Map, Value};

use crate::lenient::{parse_bool_text, parse_f64_text, parse_u64_text};
use crate::Diagnostic;

/// `router_settings.routing_strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StrategyKind {
    #[default]
    SimpleShuffle,
    LeastBusy,
    LatencyBased,
    UsageBased,
    CostBased,
    RoundRobin,
}

impl StrategyKind {
    pub fn parse(name: &str) -> Option<StrategyKind> {
        Some(match name {
            "simple-shuffle" => StrategyKind::SimpleShuffle,
            "least-busy" => StrategyKind::LeastBusy,
            "latency-based-routing" => StrategyKind::LatencyBased,
            "usage-based-routing" | "usage-based-routing-v2" => StrategyKind::UsageBased,
            "cost-based-routing" => StrategyKind::CostBased,
            "round-robin" | "round_robin" => StrategyKind::RoundRobin,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::SimpleShuffle => "simple-shuffle",
            StrategyKind::LeastBusy => "least-busy",
            StrategyKind::LatencyBased => "latency-based-routing",
            StrategyKind::UsageBased => "usage-based-routing-v2",
            StrategyKind::CostBased => "cost-based-routing",
            StrategyKind::RoundRobin => "round-robin",
        }
    }
}

/// What to do when a stream fails after its first chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// End the stream with an error event.
    #[default]
    Off,
    /// Continue on another deployment from the text already delivered.
    Continue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRecovery {
    pub mode: RecoveryMode,
    /// Continuation attempts per stream.
    pub max_attempts: u32,
    /// Delivered text kept for a continuation; a longer stream is not recovered.
    pub max_buffered_bytes: usize,
}

impl Default for StreamRecovery {
    fn default() -> Self {
        StreamRecovery {
            mode: RecoveryMode::Off,
            max_attempts: 2,
            max_buffered_bytes: 256 * 1024,
        }
    }
}

/// Fallback lists: model group → groups to try next, in order.
pub type FallbackMap = HashMap<String, Vec<String>>;

#[derive(Debug, Clone, PartialEq)]
pub struct RouterSettings {
    pub strategy: StrategyKind,
    /// `routing_strategy_args.lowest_latency_buffer`: deployments within this fraction of the
    /// fastest are picked among at random.
    pub lowest_latency_buffer: f64,
    pub num_retries: u32,
    /// Retries per error kind (`retry_policy`), overriding `num_retries` for that kind.
    pub retry_policy: HashMap<ErrorKind, u32>,
    /// Failures a deployment may have in a minute before it cools down.
    pub allowed_fails: u32,
    pub allowed_fails_policy: HashMap<ErrorKind, u32>,
    pub cooldown_time: Duration,
    pub disable_cooldowns: bool,
    /// Minimum wait before a retry (LiteLLM's `retry_after`).
    pub retry_after: Duration,
    pub fallbacks: FallbackMap,
    pub context_window_fallbacks: FallbackMap,
    pub content_policy_fallbacks: FallbackMap,
    pub default_fallbacks: Vec<String>,
    pub max_fallbacks: usize,
    pub enable_pre_call_checks: bool,
    /// Alias → model group; hidden aliases are routable but not listed.
    pub model_group_alias: HashMap<String, String>,
    pub hidden_aliases: Vec<String>,
    pub enable_tag_filtering: bool,
    pub stream_recovery: StreamRecovery,
    /// `redis_url`, or `redis_host` / `redis_port` / `redis_password`: the Redis a fleet of
    /// instances shares its rate limits through (`REDIS_URL`, `REDIS_HOST`, ... when unset;
    /// see `Config::redis_url`).
    pub redis: RedisSettings,
}

/// Where the shared Redis is, as configured (the environment fills what is missing).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RedisSettings {
    pub url: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub password: Option<String>,
}

impl Default for RouterSettings {
    fn default() -> Self {
        RouterSettings {
            strategy: StrategyKind::SimpleShuffle,
            lowest_latency_buffer: 0.0,
            num_retries: 2,
            retry_policy: HashMap::new(),
            allowed_fails: 3,
            allowed_fails_policy: HashMap::new(),
            cooldown_time: Duration::from_secs(5),
            disable_cooldowns: false,
            retry_after: Duration::ZERO,
            fallbacks: FallbackMap::new(),
            context_window_fallbacks: FallbackMap::new(),
            content_policy_fallbacks: FallbackMap::new(),
            default_fallbacks: Vec::new(),
            max_fallbacks: 5,
            enable_pre_call_checks: false,
            model_group_alias: HashMap::new(),
            redis: RedisSettings::default(),
            hidden_aliases: Vec::new(),
            enable_tag_filtering: false,
            stream_recovery: StreamRecovery::default(),
        }
    }
}

impl RouterSettings {
    /// Retries allowed after a failure of `kind`.
    pub fn retries_for(&self, kind: ErrorKind) -> u32 {
        match self.retry_policy.get(&kind) {
            Some(n) => *n,
            None if kind.is_retryable() => self.num_retries,
            None => 0,
        }
    }

    /// Failures of `kind` a deployment may have in a minute before cooling down.
    pub fn allowed_fails_for(&self, kind: ErrorKind) -> u32 {
        self.allowed_fails_policy
            .get(&kind)
            .copied()
            .unwrap_or(self.allowed_fails)
    }
}

/// LiteLLM's `RetryPolicy` / `AllowedFailsPolicy` field prefixes and the kinds they cover.
const POLICY_NAMES: &[(&str, &[ErrorKind])] = &[
    ("BadRequestError", &[ErrorKind::InvalidRequest]),
    (
        "AuthenticationError",
        &[ErrorKind::Authentication, ErrorKind::PermissionDenied],
    ),
    ("TimeoutError", &[ErrorKind::Timeout]),
    ("RateLimitError", &[ErrorKind::RateLimited]),
    ("ContentPolicyViolationError", &[ErrorKind::ContentFiltered]),
    (
        "InternalServerError",
        &[
            ErrorKind::UpstreamError,
            ErrorKind::UpstreamUnavailable,
            ErrorKind::Internal,
        ],
    ),
    (
        "ContextWindowExceededError",
        &[ErrorKind::ContextLengthExceeded],
    ),
    ("NotFoundError", &[ErrorKind::NotFound]),
];

/// Keys LiteLLM reads for the router from `litellm_settings` as well.
pub(crate) const LITELLM_SETTINGS_ROUTER_KEYS: &[&str] = &[
    "num_retries",
    "fallbacks",
    "context_window_fallbacks",
    "content_policy_fallbacks",
    "default_fallbacks",
    "allowed_fails",
    "cooldown_time",
    "retry_policy",
    "allowed_fails_policy",
    "max_fallbacks",
];

/// Router keys LiteLLM has that llmux does not act on yet (they need shared state or are Python-only).
const UNSUPPORTED_ROUTER_KEYS: &[&str] = &[
    "cache_responses",
    "cache_kwargs",
    "polling_interval",
    "optional_pre_call_checks",
    "provider_budget_config",
    "router_general_settings",
    "assistants_config",
    "search_tools",
    "deployment_affinity_ttl_seconds",
    "model_group_retry_policy",
    "caching_groups",
    "client_ttl",
    "set_verbose",
    "debug_level",
    "alerting_config",
];

struct Reader<'a> {
    diags: &'a mut Vec<Diagnostic>,
}

impl Reader<'_> {
    fn path(key: &str) -> String {
        format!("router_settings.{key}")
    }

    fn u64(&mut self, key: &str, v: &Value) -> Option<u64> {
        let parsed = match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => parse_u64_text(s),
            _ => None,
        };
        if parsed.is_none() {
            self.diags.push(Diagnostic::error(
                Self::path(key),
                format!("expected a non-negative integer, got {v}"),
            ));
        }
        parsed
    }

    fn seconds(&mut self, key: &str, v: &Value) -> Option<Duration> {
        let parsed = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => parse_f64_text(s),
            _ => None,
        }
        .filter(|f| (0.0..1.0e7).contains(f));
        if parsed.is_none() {
            self.diags.push(Diagnostic::error(
                Self::path(key),
                format!("expected a number of seconds, got {v}"),
            ));
        }
        parsed.map(Duration::from_secs_f64)
    }

    fn bool(&mut self, key: &str, v: &Value) -> Option<bool> {
        let parsed = match v {
            Value::Bool(b) => Some(*b),
            Value::String(s) => parse_bool_text(s),
            _ => None,
        };
        if parsed.is_none() {
            self.diags.push(Diagnostic::error(
                Self::path(key),
                format!("expected a boolean, got {v}"),
            ));
        }
        parsed
    }

    fn names(&mut self, key: &str, v: &Value) -> Option<Vec<String>> {
        match v {
            Value::String(s) => Some(vec![s.clone()]),
            Value::Array(items) if items.iter().all(Value::is_string) => Some(
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
            ),
            _ => {
                self.diags.push(Diagnostic::error(
                    Self::path(key),
                    "expected a list of model group names",
                ));
                None
            }
        }
    }

    /// LiteLLM writes fallbacks as `[{"gpt-4o": ["claude"]}, ...]`; a plain mapping also loads.
    fn fallbacks(&mut self, key: &str, v: &Value) -> FallbackMap {
        let mut out = FallbackMap::new();
        let mut add = |reader: &mut Self, from: &str, to: &Value| {
            if let Some(list) = reader.names(&format!("{key}.{from}"), to) {
                out.entry(from.to_owned()).or_default().extend(list);
            }
        };
        match v {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::Object(map) => map.iter().for_each(|(from, to)| add(self, from, to)),
                        _ => self.diags.push(Diagnostic::error(
                            format!("router_settings.{key}[{i}]"),
                            "expected a mapping of model group to fallback groups",
                        )),
                    }
                }
            }
            Value::Object(map) => map.iter().for_each(|(from, to)| add(self, from, to)),
            Value::Null => {}
            _ => self.diags.push(Diagnostic::error(
                Self::path(key),
                "expected a list of {group: [fallbacks]}",
            )),
        }
        out
    }

    fn policy(&mut self, key: &str, v: &Value, suffix: &str) -> HashMap<ErrorKind, u32> {
        let mut out = HashMap::new();
        let Value::Object(map) = v else {
            self.diags
                .push(Diagnostic::error(Self::path(key), "expected a mapping"));
            return out;
        };
        for (name, count) in map {
            let Some(n) = self.u64(&format!("{key}.{name}"), count) else {
                continue;
            };
            let kinds = name
                .strip_suffix(suffix)
                .and_then(|base| POLICY_NAMES.iter().find(|(b, _)| *b == base));
            match kinds {
                Some((_, kinds)) => kinds.iter().for_each(|k| {
                    out.insert(*k, n.min(u64::from(u32::MAX)) as u32);
                }),
                None => self.diags.push(Diagnostic::warning(
                    format!("router_settings.{key}.{name}"),
                    format!(
                        "unknown policy field; expected one of {}",
                        POLICY_NAMES
                            .iter()
                            .map(|(b, _)| format!("{b}{suffix}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
            }
        }
        out
    }
}

/// Parse `router_settings` (already merged with the router keys of `litellm_settings`).
pub(crate) fn parse(map: &Map<String, Value>, diags: &mut Vec<Diagnostic>) -> RouterSettings {
    let mut s = RouterSettings::default();
    let mut r = Reader { diags };
    for (key, v) in map {
        if UNSUPPORTED_ROUTER_KEYS.contains(&key.as_str()) {
            r.diags.push(Diagnostic::warning(
                Reader::path(key),
                format!("`{key}` is a LiteLLM router setting llmux does not support yet; ignored"),
            ));
            continue;
        }
        if v.is_null() {
            continue;
        }
        match key.as_str() {
            "redis_url" | "redis_host" | "redis_password" => {
                let text = v
                    .as_str()
                    .map(str::to_owned)
                    .or_else(|| v.is_number().then(|| v.to_string()))
                    .filter(|t| !t.is_empty());
                match key.as_str() {
                    "redis_url" => s.redis.url = text,
                    "redis_host" => s.redis.host = text,
                    _ => s.redis.password = text,
                }
            }
            "redis_port" => match v
                .as_u64()
                .or_else(|| v.as_str().and_then(|t| t.trim().parse().ok()))
                .and_then(|p| u16::try_from(p).ok())
            {
                Some(p) => s.redis.port = Some(p),
                None => r.diags.push(Diagnostic::error(
                    Reader::path(key),
                    "must be a port number".to_owned(),
                )),
            },
            "routing_strategy" => match v.as_str().and_then(StrategyKind::parse) {
                Some(kind) => s.strategy = kind,
                None => r.diags.push(Diagnostic::error(
                    Reader::path(key),
                    format!("unknown routing strategy {v}; expected simple-shuffle, least-busy, latency-based-routing, usage-based-routing(-v2), cost-based-routing or round-robin"),
                )),
            },
            "routing_strategy_args" => match v {
                Value::Object(args) => {
                    for (arg, value) in args {
                        match arg.as_str() {
                            "lowest_latency_buffer" => match value.as_f64().or_else(|| value.as_str().and_then(parse_f64_text)) {
                                Some(b) if b >= 0.0 => s.lowest_latency_buffer = b,
                                _ => r.diags.push(Diagnostic::error(format!("router_settings.{key}.{arg}"), "expected a non-negative number")),
                            },
                            "ttl" | "max_latency_list_size" => {}
                            _ => r.diags.push(Diagnostic::warning(format!("router_settings.{key}.{arg}"), "unknown routing strategy argument; ignored")),
                        }
                    }
                }
                _ => r.diags.push(Diagnostic::error(Reader::path(key), "expected a mapping")),
            },
            "num_retries" => s.num_retries = r.u64(key, v).map_or(s.num_retries, |n| n.min(20) as u32),
            "retry_policy" => s.retry_policy = r.policy(key, v, "Retries"),
            "allowed_fails" => s.allowed_fails = r.u64(key, v).map_or(s.allowed_fails, |n| n.min(u64::from(u32::MAX)) as u32),
            "allowed_fails_policy" => s.allowed_fails_policy = r.policy(key, v, "AllowedFails"),
            "cooldown_time" => s.cooldown_time = r.seconds(key, v).unwrap_or(s.cooldown_time),
            "disable_cooldowns" => s.disable_cooldowns = r.bool(key, v).unwrap_or(false),
            "retry_after" => s.retry_after = r.seconds(key, v).unwrap_or(s.retry_after),
            "fallbacks" => s.fallbacks = r.fallbacks(key, v),
            "context_window_fallbacks" => s.context_window_fallbacks = r.fallbacks(key, v),
            "content_policy_fallbacks" => s.content_policy_fallbacks = r.fallbacks(key, v),
            "default_fallbacks" => s.default_fallbacks = r.names(key, v).unwrap_or_default(),
            "max_fallbacks" => s.max_fallbacks = r.u64(key, v).map_or(s.max_fallbacks, |n| n.min(100) as usize),
            "enable_pre_call_checks" => s.enable_pre_call_checks = r.bool(key, v).unwrap_or(false),
            "enable_tag_filtering" => s.enable_tag_filtering = r.bool(key, v).unwrap_or(false),
            "model_group_alias" => match v {
                Value::Object(aliases) => {
                    for (alias, target) in aliases {
                        match target {
                            Value::String(group) => {
                                s.model_group_alias.insert(alias.clone(), group.clone());
                            }
                            Value::Object(spec) => match spec.get("model").and_then(Value::as_str) {
                                Some(group) => {
                                    s.model_group_alias.insert(alias.clone(), group.to_owned());
                                    if spec.get("hidden").and_then(Value::as_bool) == Some(true) {
                                        s.hidden_aliases.push(alias.clone());
                                    }
                                }
                                None => r.diags.push(Diagnostic::error(format!("router_settings.{key}.{alias}"), "expected {model: <group>, hidden: bool}")),
                            },
                            _ => r.diags.push(Diagnostic::error(format!("router_settings.{key}.{alias}"), "expected a model group name")),
                        }
                    }
                }
                _ => r.diags.push(Diagnostic::error(Reader::path(key), "expected a mapping of alias to model group")),
            },
            "stream_recovery" => s.stream_recovery = stream_recovery(v, &mut r),
            // Router-level timeouts are read with the request timeout; accepted here for LiteLLM configs.
            "timeout" | "stream_timeout" => {}
            _ => r.diags.push(Diagnostic::warning(Reader::path(key), format!("unknown router setting `{key}`; ignored"))),
        }
    }
    s
}

fn stream_recovery(v: &Value, r: &mut Reader<'_>) -> StreamRecovery {
    let mut out = StreamRecovery::default();
    let mode = |name: &str| match name {
        "off" => Some(RecoveryMode::Off),
        "continue" => Some(RecoveryMode::Continue),
        _ => None,
    };
    match v {
        Value::String(name) => match mode(name) {
            Some(m) => out.mode = m,
            None => r.diags.push(Diagnostic::error(
                "router_settings.stream_recovery",
                "expected `off` or `continue`",
            )),
        },
        Value::Object(map) => {
            for (key, value) in map {
                let path = format!("stream_recovery.{key}");
                match key.as_str() {
                    "mode" => match value.as_str().and_then(mode) {
                        Some(m) => out.mode = m,
                        None => r.diags.push(Diagnostic::error(
                            format!("router_settings.{path}"),
                            "expected `off` or `continue`",
                        )),
                    },
                    "max_attempts" => {
                        out.max_attempts = r
                            .u64(&path, value)
                            .map_or(out.max_attempts, |n| n.min(10) as u32)
                    }
                    "max_buffered_bytes" => {
                        out.max_buffered_bytes = r
                            .u64(&path, value)
                            .map_or(out.max_buffered_bytes, |n| n as usize)
                    }
                    _ => r.diags.push(Diagnostic::warning(
                        format!("router_settings.{path}"),
                        "unknown key; ignored",
                    )),
                }
            }
        }
        _ => r.diags.push(Diagnostic::error(
            "router_settings.stream_recovery",
            "expected `off`, `continue`, or a mapping",
        )),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_json(v: Value) -> (RouterSettings, Vec<Diagnostic>) {
        let mut diags = Vec::new();
        let s = parse(v.as_object().unwrap(), &mut diags);
        (s, diags)
    }

    #[test]
    fn litellm_router_settings_parse() {
        let (s, diags) = parse_json(json!({
            "routing_strategy": "latency-based-routing",
            "routing_strategy_args": {"lowest_latency_buffer": 0.5},
            "num_retries": 3,
            "retry_policy": {"RateLimitErrorRetries": 5, "BadRequestErrorRetries": 0, "InternalServerErrorRetries": 1},
            "allowed_fails": 2,
            "allowed_fails_policy": {"RateLimitErrorAllowedFails": 10},
            "cooldown_time": 30,
            "fallbacks": [{"gpt-4o": ["claude"]}, {"claude": "gpt-4o-mini"}],
            "context_window_fallbacks": [{"gpt-4o": ["gpt-4.1"]}],
            "default_fallbacks": ["cheap"],
            "enable_pre_call_checks": true,
            "model_group_alias": {"gpt-4": "gpt-4o", "secret": {"model": "gpt-4o", "hidden": true}},
            "stream_recovery": {"mode": "continue", "max_attempts": 1},
            "redis_host": "localhost",
            "caching_groups": [],
        }));
        assert_eq!(s.strategy, StrategyKind::LatencyBased);
        assert_eq!(s.lowest_latency_buffer, 0.5);
        assert_eq!(s.retries_for(ErrorKind::RateLimited), 5);
        assert_eq!(s.retries_for(ErrorKind::Timeout), 3);
        assert_eq!(s.retries_for(ErrorKind::UpstreamUnavailable), 1);
        assert_eq!(s.retries_for(ErrorKind::InvalidRequest), 0);
        assert_eq!(s.allowed_fails_for(ErrorKind::RateLimited), 10);
        assert_eq!(s.allowed_fails_for(ErrorKind::Timeout), 2);
        assert_eq!(s.cooldown_time, Duration::from_secs(30));
        assert_eq!(s.fallbacks["gpt-4o"], vec!["claude"]);
        assert_eq!(s.fallbacks["claude"], vec!["gpt-4o-mini"]);
        assert_eq!(s.context_window_fallbacks["gpt-4o"], vec!["gpt-4.1"]);
        assert_eq!(s.default_fallbacks, vec!["cheap"]);
        assert!(s.enable_pre_call_checks);
        assert_eq!(s.model_group_alias["gpt-4"], "gpt-4o");
        assert_eq!(s.hidden_aliases, vec!["secret"]);
        assert_eq!(s.stream_recovery.mode, RecoveryMode::Continue);
        assert_eq!(s.stream_recovery.max_attempts, 1);
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(diags[0].path, "router_settings.caching_groups");
        assert_eq!(s.redis.host.as_deref(), Some("localhost"));
    }

    #[test]
    fn bad_values_are_errors_with_paths() {
        let (_, diags) = parse_json(json!({
            "routing_strategy": "fastest", "num_retries": "many", "fallbacks": [3],
            "retry_policy": {"WeirdErrorRetries": 1}
        }));
        let paths: Vec<_> = diags
            .iter()
            .map(|d| (d.path.as_str(), d.is_error()))
            .collect();
        assert!(paths.contains(&("router_settings.routing_strategy", true)));
        assert!(paths.contains(&("router_settings.num_retries", true)));
        assert!(paths.contains(&("router_settings.fallbacks[0]", true)));
        assert!(paths.contains(&("router_settings.retry_policy.WeirdErrorRetries", false)));
    }

    #[test]
    fn defaults_follow_litellm() {
        let s = RouterSettings::default();
        assert_eq!((s.num_retries, s.allowed_fails, s.max_fallbacks), (2, 3, 5));
        assert_eq!(s.cooldown_time, Duration::from_secs(5));
        assert_eq!(s.retries_for(ErrorKind::ContextLengthExceeded), 0);
        assert_eq!(s.retries_for(ErrorKind::RateLimited), 2);
    }
}
