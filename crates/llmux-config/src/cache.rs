//! `litellm_settings.cache` and `cache_params`: which response cache runs, where, for which
//! calls and tenants, read the LiteLLM way (its keys and defaults, with llmux's additions).

use std::time::Duration;

use serde_json::{Map, Value};

use crate::router::RedisSettings;
use crate::{Diagnostic, EnvSource};

/// Where cached answers live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheType {
    /// In this process, bounded by bytes (`local`).
    Local,
    /// In Redis, shared by a fleet, with an in-process level in front (`redis`).
    Redis,
    /// Semantic: answers to similar prompts, vectors in Redis (`redis-semantic`).
    RedisSemantic,
    /// Semantic, vectors in this process (`local-semantic`, llmux's).
    LocalSemantic,
}

/// Whose cached answers a request may be served: everyone's (LiteLLM's behaviour), its team's,
/// or its key's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheScope {
    #[default]
    Global,
    Team,
    Key,
}

/// The calls a cache answers (`supported_call_types`; all by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheCalls {
    /// Chat completions, and the Anthropic Messages and Responses dialects built on them.
    pub chat: bool,
    pub completions: bool,
    pub embeddings: bool,
    pub rerank: bool,
}

impl Default for CacheCalls {
    fn default() -> Self {
        CacheCalls {
            chat: true,
            completions: true,
            embeddings: true,
            rerank: true,
        }
    }
}

/// The response cache's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    pub cache_type: CacheType,
    /// `host`, `port`, `password`, `url` (each falling back on `REDIS_HOST`, ... as for the
    /// fleet's Redis, when the type needs Redis).
    pub redis: RedisSettings,
    /// How long an answer is kept (`ttl`; a request's `cache.ttl` overrides it).
    pub ttl: Option<Duration>,
    /// `default_in_memory_ttl`: the in-process level's lifetime when `ttl` is unset.
    pub in_memory_ttl: Option<Duration>,
    /// `default_in_redis_ttl`: Redis's when `ttl` is unset.
    pub redis_ttl: Option<Duration>,
    /// Prefix of every stored key (`namespace`; a request's `cache.namespace` overrides it).
    pub namespace: Option<String>,
    pub calls: CacheCalls,
    /// `mode: default_off`: only requests that ask (`cache: {"use-cache": true}`) use it.
    pub default_off: bool,
    pub scope: CacheScope,
    /// Semantic types: the least cosine similarity that counts as the same question.
    pub similarity_threshold: f64,
    /// Semantic types: the model group that embeds prompts
    /// (`redis_semantic_cache_embedding_model`, or llmux's `semantic_cache_embedding_model`).
    pub embedding_model: Option<String>,
    /// `max_size_mb` (llmux): bytes the in-process level holds (default 256 MiB).
    pub max_local_bytes: u64,
    /// `max_item_size_kb` (llmux): answers larger than this are not cached (default 1 MiB).
    pub max_item_bytes: usize,
    /// No `type` was given (it follows whether a Redis is configured).
    pub type_inferred: bool,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            cache_type: CacheType::Local,
            redis: RedisSettings::default(),
            ttl: None,
            in_memory_ttl: None,
            redis_ttl: None,
            namespace: None,
            calls: CacheCalls::default(),
            default_off: false,
            scope: CacheScope::Global,
            similarity_threshold: 0.8,
            embedding_model: None,
            max_local_bytes: 256 * 1024 * 1024,
            max_item_bytes: 1024 * 1024,
            type_inferred: false,
        }
    }
}

/// An answer's lifetime when neither the configuration nor the request sets one (LiteLLM keeps
/// in-memory entries 600 s by default; Redis entries get the same bound here rather than none).
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(600);

impl CacheSettings {
    /// How long the in-process level keeps an answer.
    pub fn local_ttl(&self) -> Duration {
        self.ttl.or(self.in_memory_ttl).unwrap_or(DEFAULT_CACHE_TTL)
    }

    /// How long Redis keeps an answer.
    pub fn shared_ttl(&self) -> Duration {
        self.ttl.or(self.redis_ttl).unwrap_or(DEFAULT_CACHE_TTL)
    }

    /// Whether the type keeps answers (or vectors) in Redis.
    pub fn uses_redis(&self) -> bool {
        matches!(self.cache_type, CacheType::Redis | CacheType::RedisSemantic)
    }
}

/// Keys of `cache_params` llmux reads.
const KNOWN: &[&str] = &[
    "type",
    "host",
    "port",
    "password",
    "url",
    "redis_url",
    "ttl",
    "default_in_memory_ttl",
    "default_in_redis_ttl",
    "namespace",
    "supported_call_types",
    "mode",
    "scope",
    "similarity_threshold",
    "redis_semantic_cache_embedding_model",
    "semantic_cache_embedding_model",
    "max_size_mb",
    "max_item_size_kb",
];

/// LiteLLM keys that have no effect here (said once, not refused).
const IGNORED: &[&str] = &[
    "max_connections",
    "socket_timeout",
    "redis_semantic_cache_index_name",
    "redis_startup_nodes",
    "service_name",
    "sentinel_nodes",
    "sentinel_password",
    "ssl",
    "ssl_cert_reqs",
    "ssl_check_hostname",
    "max_size_in_memory",
    "max_size_per_item",
];

/// The cache `litellm_settings` asks for (`cache: true`), or `None`. `redis_configured` says
/// whether a Redis is known from the environment (`REDIS_URL` / `REDIS_HOST`): as on LiteLLM's
/// proxy, `cache: true` without a `type` then means Redis.
pub(crate) fn parse(
    enabled: Option<bool>,
    params: Option<Map<String, Value>>,
    redis_configured: bool,
    diags: &mut Vec<Diagnostic>,
) -> Option<CacheSettings> {
    let path = "litellm_settings.cache_params";
    if enabled != Some(true) {
        if params.is_some() && enabled.is_none() {
            diags.push(Diagnostic::warning(
                path,
                "has no effect without `litellm_settings.cache: true`",
            ));
        }
        return None;
    }
    let params = params.unwrap_or_default();
    let mut s = CacheSettings::default();
    let text = |key: &str, diags: &mut Vec<Diagnostic>| -> Option<String> {
        match params.get(key)? {
            Value::String(t) if !t.trim().is_empty() => Some(t.trim().to_owned()),
            Value::Number(n) => Some(n.to_string()),
            Value::Null => None,
            Value::String(_) => None,
            _ => {
                diags.push(Diagnostic::error(
                    format!("{path}.{key}"),
                    "must be a string",
                ));
                None
            }
        }
    };
    // `None`: absent or null; `Some(None)`: not a number.
    let raw_number = |key: &str| -> Option<Option<f64>> {
        Some(match params.get(key)? {
            Value::Number(n) => n.as_f64(),
            Value::String(t) => t.trim().parse::<f64>().ok(),
            Value::Null => return None,
            _ => None,
        })
    };
    let number = |key: &str, diags: &mut Vec<Diagnostic>| -> Option<f64> {
        let n = raw_number(key)?;
        if n.is_none() {
            diags.push(Diagnostic::error(
                format!("{path}.{key}"),
                "must be a number",
            ));
        }
        n
    };
    let seconds = |key: &str, diags: &mut Vec<Diagnostic>| -> Option<Duration> {
        let at = format!("{path}.{key}");
        match raw_number(key)? {
            Some(n) => crate::validate::seconds(Some(n), &at, diags),
            None => {
                diags.push(Diagnostic::error(
                    at,
                    "must be a positive number of seconds",
                ));
                None
            }
        }
    };

    s.redis.url = text("url", diags).or_else(|| text("redis_url", diags));
    s.redis.host = text("host", diags);
    s.redis.password = text("password", diags);
    if let Some(port) = text("port", diags) {
        match port.parse::<u16>() {
            Ok(p) => s.redis.port = Some(p),
            Err(_) => diags.push(Diagnostic::error(
                format!("{path}.port"),
                format!("`{port}` is not a port number"),
            )),
        }
    }
    let redis_named = s.redis.url.is_some() || s.redis.host.is_some() || redis_configured;
    let cache_type = text("type", diags);
    s.type_inferred = cache_type.is_none();
    s.cache_type = match cache_type.as_deref() {
        None if redis_named => CacheType::Redis,
        None | Some("local") => CacheType::Local,
        Some("redis") => CacheType::Redis,
        Some("redis-semantic") | Some("valkey-semantic") => CacheType::RedisSemantic,
        Some("local-semantic") => CacheType::LocalSemantic,
        Some(other @ ("qdrant-semantic" | "s3" | "gcs" | "disk" | "azure-blob")) => {
            diags.push(Diagnostic::warning(
                format!("{path}.type"),
                format!(
                    "cache type `{other}` is not supported yet; caching is off (supported: \
                     local, redis, redis-semantic, local-semantic)"
                ),
            ));
            return None;
        }
        Some(other) => {
            diags.push(Diagnostic::error(
                format!("{path}.type"),
                format!(
                    "unknown cache type `{other}` (local, redis, redis-semantic, local-semantic)"
                ),
            ));
            return None;
        }
    };
    s.ttl = seconds("ttl", diags);
    s.in_memory_ttl = seconds("default_in_memory_ttl", diags);
    s.redis_ttl = seconds("default_in_redis_ttl", diags);
    s.namespace = text("namespace", diags);
    if let Some(types) = params.get("supported_call_types") {
        match types {
            Value::Array(items) => {
                s.calls = CacheCalls {
                    chat: false,
                    completions: false,
                    embeddings: false,
                    rerank: false,
                };
                for item in items {
                    match item.as_str().map(|t| t.trim_start_matches('a')) {
                        // LiteLLM's names: the async and sync forms of each call.
                        Some("completion" | "responses" | "nthropic_messages") => {
                            s.calls.chat = true
                        }
                        Some("text_completion") => s.calls.completions = true,
                        Some("embedding") => s.calls.embeddings = true,
                        Some("rerank") => s.calls.rerank = true,
                        _ => diags.push(Diagnostic::warning(
                            format!("{path}.supported_call_types"),
                            format!("call type {item} is not cached by llmux; ignored"),
                        )),
                    }
                }
            }
            Value::Null => {}
            _ => diags.push(Diagnostic::error(
                format!("{path}.supported_call_types"),
                "must be a list of call types",
            )),
        }
    }
    s.default_off = match text("mode", diags).as_deref() {
        None | Some("default_on") => false,
        Some("default_off") => true,
        Some(other) => {
            diags.push(Diagnostic::error(
                format!("{path}.mode"),
                format!("unknown mode `{other}` (default_on, default_off)"),
            ));
            false
        }
    };
    s.scope = match text("scope", diags).as_deref() {
        None | Some("global") => CacheScope::Global,
        Some("team") => CacheScope::Team,
        Some("key") => CacheScope::Key,
        Some(other) => {
            diags.push(Diagnostic::error(
                format!("{path}.scope"),
                format!("unknown scope `{other}` (global, team, key)"),
            ));
            CacheScope::Global
        }
    };
    if let Some(t) = number("similarity_threshold", diags) {
        if (0.0..=1.0).contains(&t) {
            s.similarity_threshold = t;
        } else {
            diags.push(Diagnostic::error(
                format!("{path}.similarity_threshold"),
                "must be between 0 and 1",
            ));
        }
    }
    s.embedding_model = text("redis_semantic_cache_embedding_model", diags)
        .or_else(|| text("semantic_cache_embedding_model", diags));
    if matches!(
        s.cache_type,
        CacheType::RedisSemantic | CacheType::LocalSemantic
    ) && s.embedding_model.is_none()
    {
        diags.push(Diagnostic::error(
            format!("{path}.redis_semantic_cache_embedding_model"),
            "a semantic cache needs the model group that embeds prompts",
        ));
    }
    if let Some(mb) = number("max_size_mb", diags) {
        if mb > 0.0 {
            s.max_local_bytes = (mb * 1024.0 * 1024.0) as u64;
        } else {
            diags.push(Diagnostic::error(
                format!("{path}.max_size_mb"),
                "must be positive",
            ));
        }
    }
    if let Some(kb) = number("max_item_size_kb", diags) {
        if kb > 0.0 {
            s.max_item_bytes = (kb * 1024.0) as usize;
        } else {
            diags.push(Diagnostic::error(
                format!("{path}.max_item_size_kb"),
                "must be positive",
            ));
        }
    }
    for key in params.keys() {
        if IGNORED.contains(&key.as_str()) {
            diags.push(Diagnostic::warning(
                format!("{path}.{key}"),
                format!("`{key}` has no effect in llmux; ignored"),
            ));
        } else if !KNOWN.contains(&key.as_str()) {
            diags.push(Diagnostic::warning(
                format!("{path}.{key}"),
                format!("unknown key `{key}`; ignored"),
            ));
        }
    }
    Some(s)
}

impl crate::Config {
    /// The Redis the response cache uses: its own `cache_params` host / url first, then the
    /// fleet's (`router_settings.redis_*`, `REDIS_*`).
    pub fn cache_redis_url(&self, env: &dyn EnvSource) -> Option<String> {
        let cache = self.cache.as_ref()?;
        let own = &cache.redis;
        if let Some(url) = &own.url {
            return Some(url.clone());
        }
        if let Some(host) = &own.host {
            let port = own.port.unwrap_or(6379);
            return Some(match &own.password {
                Some(pw) => format!("redis://:{}@{host}:{port}", crate::url_escape(pw)),
                None => format!("redis://{host}:{port}"),
            });
        }
        self.redis_url(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_json(v: Value, redis: bool) -> (Option<CacheSettings>, Vec<Diagnostic>) {
        let mut diags = Vec::new();
        let params = match v {
            Value::Object(m) => Some(m),
            _ => None,
        };
        (parse(Some(true), params, redis, &mut diags), diags)
    }

    #[test]
    fn litellm_params_are_read() {
        let (s, diags) = parse_json(
            json!({"type": "redis", "host": "cache", "port": "6380", "password": "p w",
                   "ttl": 300, "namespace": "litellm.caching", "mode": "default_off",
                   "supported_call_types": ["acompletion", "aembedding", "atranscription"],
                   "scope": "team", "max_connections": 10}),
            false,
        );
        let s = s.unwrap();
        assert_eq!(s.cache_type, CacheType::Redis);
        assert_eq!(s.redis.host.as_deref(), Some("cache"));
        assert_eq!(s.redis.port, Some(6380));
        assert_eq!(s.ttl, Some(Duration::from_secs(300)));
        assert_eq!(s.local_ttl(), Duration::from_secs(300));
        assert_eq!(s.namespace.as_deref(), Some("litellm.caching"));
        assert!(s.default_off);
        assert_eq!(s.scope, CacheScope::Team);
        assert_eq!(
            s.calls,
            CacheCalls {
                chat: true,
                completions: false,
                embeddings: true,
                rerank: false
            }
        );
        // atranscription and max_connections are said, not refused.
        assert_eq!(diags.len(), 2, "{diags:?}");
        assert!(diags.iter().all(|d| !d.is_error()));
    }

    #[test]
    fn the_type_defaults_to_redis_when_one_is_named() {
        assert_eq!(
            parse_json(json!({}), true).0.unwrap().cache_type,
            CacheType::Redis
        );
        assert_eq!(
            parse_json(json!({}), false).0.unwrap().cache_type,
            CacheType::Local
        );
        assert_eq!(
            parse_json(json!({"url": "redis://x"}), false)
                .0
                .unwrap()
                .cache_type,
            CacheType::Redis
        );
    }

    #[test]
    fn refusals_and_unsupported_types() {
        let (s, diags) = parse_json(json!({"type": "qdrant-semantic"}), false);
        assert!(s.is_none() && !diags[0].is_error());
        let (_, diags) = parse_json(json!({"type": "memcached"}), false);
        assert!(diags[0].is_error());
        let (_, diags) = parse_json(
            json!({"ttl": -1, "scope": "org", "mode": "sometimes"}),
            false,
        );
        assert_eq!(diags.iter().filter(|d| d.is_error()).count(), 3);
        let (_, diags) = parse_json(json!({"type": "redis-semantic"}), true);
        assert!(
            diags.iter().any(|d| d.is_error()),
            "needs an embedding model"
        );
        let mut diags = Vec::new();
        assert!(parse(Some(false), Some(Map::new()), false, &mut diags).is_none());
        assert!(diags.is_empty());
    }
}
