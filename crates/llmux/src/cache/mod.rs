//! The response cache, as two request phases: before routing, a lookup that may answer the
//! request (`ResponseCache::plan` + `lookup`); after a successful answer, a store
//! (`ResponseCache::store`, off the request path). Keys are the SHA-256 of the request made
//! canonical (object keys sorted, integral numbers written as integers) with the model group in
//! place of the client's model name, the tenant's scope, and every member that changes the answer:
//! everything but the gateway's own controls and the stream switches. A cached answer is kept as
//! the JSON the client would have received (a stream is assembled into one), so JSON and stream
//! requests share entries: a stream request is answered by replaying it as SSE (`replay`).
//! Embeddings are cached per input, so a batch is answered from the cache for the inputs seen
//! before and upstream for the rest.

mod backend;
pub(crate) mod replay;
mod semantic;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use llmux_config::{CacheSettings, CacheType};
use llmux_providers::Operation;
use llmux_types::{GatewayError, RawObject};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use backend::{CacheBackend, CacheError, LocalCache, RedisCache, TwoLevelCache};
pub(crate) use semantic::normalized as semantic_vector;

/// Members of a request that do not change its answer: the gateway's controls, the stream
/// switches (a cached answer serves both forms) and bookkeeping.
const NOT_IN_KEY: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "cache",
    "metadata",
    "num_retries",
    "fallbacks",
    "disable_fallbacks",
    "timeout",
    "request_timeout",
    "tags",
    "context_window_fallbacks",
    "content_policy_fallbacks",
    "mock_testing_fallbacks",
];

/// The prefix of stored keys when the configuration names none.
const DEFAULT_NAMESPACE: &str = "llmux:cache";

/// The longest life a request may ask for (`cache.ttl`), unless the configured one is longer.
const MAX_REQUESTED_TTL: Duration = Duration::from_secs(24 * 3600);

/// Longest question a semantic cache compares (a longer one is cached exactly only).
const MAX_QUESTION_BYTES: usize = 16 * 1024;

/// What embeds a question for the semantic cache: the gateway itself (its routing, retries and
/// exact cache), as the snapshot the request ran on.
pub(crate) struct Embedder {
    pub logs: crate::log::LogEmitter,
    pub snapshot: Arc<crate::Snapshot>,
}

impl Embedder {
    pub(crate) async fn embed(&self, model: &str, text: &str) -> Option<Arc<[f32]>> {
        crate::execute::embed(&self.logs, &self.snapshot, model, text).await
    }
}

/// What a request's `cache` member asks (LiteLLM's names).
#[derive(Debug, Default, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Controls {
    /// Do not answer from the cache (a fresh answer is still stored).
    #[serde(rename = "no-cache", default)]
    no_cache: bool,
    /// Do not store this answer.
    #[serde(rename = "no-store", default)]
    no_store: bool,
    /// Keep this answer for this many seconds.
    #[serde(default)]
    ttl: Option<f64>,
    /// Accept a cached answer at most this many seconds old.
    #[serde(rename = "s-maxage", default)]
    s_maxage: Option<f64>,
    #[serde(default)]
    namespace: Option<String>,
    /// Opt in when the cache is `default_off`.
    #[serde(rename = "use-cache", default)]
    use_cache: bool,
}

/// What the cache does for one request.
#[derive(Debug, Clone)]
pub(crate) struct CachePlan {
    /// `x-litellm-cache-key`: the hash of the whole request.
    pub hash: String,
    /// Stored keys: the request's, or one per embedding input.
    pub keys: Vec<String>,
    /// Per-input keys (embeddings): `keys[i]` is input `i`'s.
    pub per_input: bool,
    /// What a semantic cache compares, when it runs and the request has a question.
    pub semantic: Option<semantic::SemanticPlan>,
    pub read: bool,
    pub write: bool,
    ttl: Duration,
    max_age: Option<Duration>,
}

/// A cached answer.
#[derive(Debug, Clone)]
pub(crate) struct Cached {
    /// The JSON answer as the client would have received it.
    pub body: Bytes,
    /// When it was stored (unix ms).
    pub stored_at_ms: u64,
    /// When it stops being an answer (unix ms): a copy kept elsewhere (the in-process level of
    /// a Redis cache) is not served past it.
    pub expires_at_ms: u64,
}

/// What a lookup found.
#[derive(Debug)]
pub(crate) enum Lookup {
    Miss,
    /// The whole answer.
    Hit(Cached),
    /// Embeddings: the inputs found (by position); the others go upstream.
    Partial(Vec<Option<Cached>>),
}

/// The response cache: its settings and backend, and counts for `/metrics`.
pub struct ResponseCache {
    backend: Arc<dyn CacheBackend>,
    /// The semantic index, for the semantic types.
    semantic: Option<semantic::SemanticIndex>,
    settings: CacheSettings,
    /// Lookups and stores the backend failed (each counted as a miss or skipped).
    errors: AtomicU64,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("backend", &self.backend.name())
            .finish()
    }
}

impl ResponseCache {
    /// The cache `settings` describe, with the Redis at `redis_url` where the type needs one.
    pub fn from_settings(
        settings: &CacheSettings,
        redis_url: Option<&str>,
    ) -> Result<ResponseCache, CacheError> {
        let local = LocalCache::new(settings.max_local_bytes);
        let backend: Arc<dyn CacheBackend> = match settings.cache_type {
            CacheType::Local | CacheType::LocalSemantic => Arc::new(local),
            CacheType::Redis | CacheType::RedisSemantic => {
                let url = redis_url.ok_or_else(|| {
                    CacheError(
                        "cache type redis needs a Redis: cache_params host / url, or REDIS_HOST \
                         / REDIS_URL"
                            .to_owned(),
                    )
                })?;
                Arc::new(TwoLevelCache {
                    local,
                    shared: RedisCache::new(url)?,
                    local_ttl: settings.local_ttl(),
                })
            }
        };
        let idle = settings.local_ttl().max(settings.shared_ttl());
        let semantic = match settings.cache_type {
            CacheType::Local | CacheType::Redis => None,
            CacheType::LocalSemantic => Some(semantic::SemanticIndex::Local(
                semantic::Partitions::new(idle, settings.max_local_bytes),
            )),
            CacheType::RedisSemantic => Some(semantic::SemanticIndex::Redis {
                redis: RedisCache::new(redis_url.unwrap_or_default())?,
                mirror: semantic::Partitions::new(idle, settings.max_local_bytes),
                namespace: settings
                    .namespace
                    .clone()
                    .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            }),
        };
        let mut cache = Self::with_backend(settings.clone(), backend);
        cache.semantic = semantic;
        Ok(cache)
    }

    /// A cache with a backend of the caller's (a library user's own store).
    pub fn with_backend(settings: CacheSettings, backend: Arc<dyn CacheBackend>) -> ResponseCache {
        ResponseCache {
            backend,
            semantic: None,
            settings,
            errors: AtomicU64::new(0),
        }
    }

    pub fn backend(&self) -> &Arc<dyn CacheBackend> {
        &self.backend
    }

    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// Backend failures so far (lookups counted as misses, stores skipped).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The model group that embeds questions, for a semantic cache.
    pub fn semantic_model(&self) -> Option<&str> {
        self.semantic
            .as_ref()
            .and(self.settings.embedding_model.as_deref())
    }

    /// Whether `plan`'s context has questions to compare with (a Redis mirror brought up to
    /// date first): without any, a lookup needs no embedding.
    pub(crate) async fn semantic_candidates(&self, plan: &CachePlan) -> bool {
        let (Some(question), Some(index)) = (&plan.semantic, &self.semantic) else {
            return false;
        };
        match index.refresh(&question.context, now_ms()).await {
            Ok(live) => live,
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "semantic cache lookup failed; answering upstream");
                false
            }
        }
    }

    /// The closest cached answer to `plan`'s question (embedded as `vector`) at or above the
    /// similarity threshold: its answer, similarity and `x-litellm-cache-key`. Candidates
    /// whose answer is gone give way to the next.
    pub(crate) async fn semantic_lookup(
        &self,
        plan: &CachePlan,
        vector: &[f32],
    ) -> Option<(Cached, f32, String)> {
        let question = plan.semantic.as_ref()?;
        let index = self.semantic.as_ref()?;
        let now = now_ms();
        let threshold = self.settings.similarity_threshold as f32;
        let found = match index.search(&question.context, vector, threshold, now) {
            Ok(found) => found,
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "semantic cache lookup failed; answering upstream");
                return None;
            }
        };
        for (key, similarity) in found {
            let value = match self.backend.get(&key).await {
                Ok(value) => value,
                Err(e) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "semantic cache lookup failed; answering upstream");
                    return None;
                }
            };
            let Some(cached) = value.and_then(decode) else {
                continue;
            };
            let young = plan.max_age.is_none_or(|max| {
                now.saturating_sub(cached.stored_at_ms) <= max.as_millis() as u64
            });
            if young && now < cached.expires_at_ms {
                let hash = key.rsplit(':').next().unwrap_or(&key).to_owned();
                return Some((cached, similarity, hash));
            }
        }
        None
    }

    /// What the cache does for this request, or `None` when it does nothing (a call type not
    /// cached, `default_off` without `use-cache`, a client's own Anthropic body). `route_key` is
    /// the model group (or, for a wildcard group, the model asked for); `scope` the tenant whose
    /// answers the request may share. A malformed `cache` member is the client's 400.
    pub(crate) fn plan(
        &self,
        op: Operation,
        request: &RawObject<'_>,
        route_key: &str,
        scope: Option<&str>,
        tags: &[String],
    ) -> Result<Option<CachePlan>, GatewayError> {
        let calls = &self.settings.calls;
        let cached = match op {
            Operation::Chat => calls.chat,
            Operation::Completions => calls.completions,
            Operation::Embeddings => calls.embeddings,
            Operation::Rerank => calls.rerank,
        };
        let controls = read_controls(request)?;
        if !cached
            || (self.settings.default_off && !controls.use_cache)
            || request.get(llmux_providers::NATIVE_ANTHROPIC).is_some()
        {
            return Ok(None);
        }
        let (read, write) = (!controls.no_cache, !controls.no_store);
        if !read && !write {
            return Ok(None);
        }
        let default_ttl = if self.settings.uses_redis() {
            self.settings.shared_ttl()
        } else {
            self.settings.local_ttl()
        };
        // A client may ask for a longer life than the default, up to a day (or the default if
        // longer): its entries cannot outlive the operator's intent by years.
        let ttl = controls
            .ttl
            .map(Duration::from_secs_f64)
            .unwrap_or(default_ttl)
            .min(default_ttl.max(MAX_REQUESTED_TTL));
        // A request's namespace sits under the configured one: it cannot write among other
        // keys of the Redis it shares.
        let configured = self
            .settings
            .namespace
            .as_deref()
            .unwrap_or(DEFAULT_NAMESPACE);
        let namespace = match controls.namespace.as_deref() {
            Some(own) => std::borrow::Cow::Owned(format!("{configured}:{own}")),
            None => std::borrow::Cow::Borrowed(configured),
        };

        let mut base = Vec::with_capacity(256);
        base.extend_from_slice(op.as_str().as_bytes());
        base.push(0);
        base.extend_from_slice(route_key.as_bytes());
        base.push(0);
        base.extend_from_slice(scope.unwrap_or("").as_bytes());
        base.push(0);
        let mut tags: Vec<&String> = tags.iter().collect();
        tags.sort();
        tags.dedup();
        for tag in tags {
            base.extend_from_slice(b"tag=");
            base.extend_from_slice(tag.as_bytes());
            base.push(0);
        }
        let mut members: Vec<(&str, &serde_json::value::RawValue)> = request
            .iter()
            .filter(|(k, _)| !NOT_IN_KEY.contains(k))
            .collect();
        members.sort_by(|a, b| a.0.cmp(b.0));
        let per_input = op == Operation::Embeddings;
        // `whole` is the request's content; `base` the same less an embedding's inputs (each
        // input's key is `base` and that input); `context` (semantic) the same less the
        // question.
        let mut whole = base.clone();
        let mut context = (self.semantic.is_some()
            && matches!(op, Operation::Chat | Operation::Completions))
        .then(|| {
            let mut context = base.clone();
            context.extend_from_slice(namespace.as_bytes());
            context.push(0);
            context
        });
        let mut question = None;
        for (name, raw) in &members {
            let value: Value = serde_json::from_str(raw.get()).map_err(|e| {
                GatewayError::invalid_request(format!("`{name}` is not valid JSON: {e}"))
            })?;
            let mut member = Vec::with_capacity(raw.get().len() + name.len() + 2);
            member.extend_from_slice(name.as_bytes());
            member.push(b'=');
            canonical(&value, &mut member);
            member.push(0);
            whole.extend_from_slice(&member);
            if !(per_input && *name == "input") {
                base.extend_from_slice(&member);
            }
            if let Some(content) = context.as_mut() {
                match (op, *name) {
                    (Operation::Chat, "messages") | (Operation::Completions, "prompt") => {
                        match semantic::split_question(op, &value) {
                            Some((text, rest)) => {
                                question = Some(text);
                                content.extend_from_slice(name.as_bytes());
                                content.push(b'=');
                                canonical(&rest, content);
                                content.push(0);
                            }
                            None => context = None,
                        }
                    }
                    _ => content.extend_from_slice(&member),
                }
            }
        }
        let semantic = match (context, question) {
            (Some(content), Some(question)) if question.len() <= MAX_QUESTION_BYTES => {
                Some(semantic::SemanticPlan {
                    context: hex_sha256(&content),
                    question,
                    vector: std::sync::OnceLock::new(),
                })
            }
            _ => None,
        };
        let hash = hex_sha256(&whole);
        let keys = if per_input {
            embedding_inputs(request)?
                .iter()
                .map(|input| {
                    let mut content = base.clone();
                    content.extend_from_slice(b"one-input=");
                    canonical(input, &mut content);
                    format!("{namespace}:{}", hex_sha256(&content))
                })
                .collect()
        } else {
            vec![format!("{namespace}:{hash}")]
        };
        Ok(Some(CachePlan {
            hash,
            keys,
            per_input,
            semantic,
            read,
            write,
            ttl,
            max_age: controls.s_maxage.map(Duration::from_secs_f64),
        }))
    }

    /// The cached answer for `plan`, if any is young enough (a backend failure is a miss).
    pub(crate) async fn lookup(&self, plan: &CachePlan) -> Lookup {
        if !plan.read || plan.keys.is_empty() {
            return Lookup::Miss;
        }
        let found = if plan.per_input {
            self.backend.get_many(&plan.keys).await
        } else {
            self.backend.get(&plan.keys[0]).await.map(|one| vec![one])
        };
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cache lookup failed; answering upstream");
                return Lookup::Miss;
            }
        };
        let now = now_ms();
        let entries: Vec<Option<Cached>> = found
            .into_iter()
            .map(|v| {
                let cached = decode(v?)?;
                let young = plan.max_age.is_none_or(|max| {
                    now.saturating_sub(cached.stored_at_ms) <= max.as_millis() as u64
                });
                (young && now < cached.expires_at_ms).then_some(cached)
            })
            .collect();
        if entries.iter().all(Option::is_some) {
            if plan.per_input {
                return Lookup::Partial(entries);
            }
            return entries
                .into_iter()
                .flatten()
                .next()
                .map_or(Lookup::Miss, Lookup::Hit);
        }
        if plan.per_input && entries.iter().any(Option::is_some) {
            return Lookup::Partial(entries);
        }
        Lookup::Miss
    }

    /// Keep `body` (a JSON answer) under `plan`, in the background. Embeddings are kept per
    /// input, for the inputs at `inputs` (positions in the plan's keys, in the answer's order;
    /// all of them when `None`). A semantic cache also indexes the question (embedding it by
    /// `embedder` when the lookup did not).
    pub(crate) fn store(
        self: &Arc<Self>,
        plan: &CachePlan,
        body: Bytes,
        inputs: Option<Vec<usize>>,
        embedder: Option<Embedder>,
    ) {
        if !plan.write || body.len() > self.settings.max_item_bytes {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = Arc::clone(self);
        let plan = plan.clone();
        runtime.spawn(async move { me.put_answer(&plan, &body, inputs, embedder).await });
    }

    /// Keep a stream's answer: its delivered events assembled (in the background: the client
    /// has its answer already) into the JSON answer, with the usage the relay counted when the
    /// client did not ask for the usage chunk.
    pub(crate) fn store_stream(
        self: &Arc<Self>,
        plan: &CachePlan,
        op: Operation,
        events: Vec<Bytes>,
        usage: Option<llmux_types::Usage>,
        embedder: Option<Embedder>,
    ) {
        if !plan.write {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = Arc::clone(self);
        let plan = plan.clone();
        runtime.spawn(async move {
            if let Some(body) = replay::assemble(op, &events, usage) {
                me.put_answer(&plan, &body, None, embedder).await;
            }
        });
    }

    async fn put_answer(
        &self,
        plan: &CachePlan,
        body: &[u8],
        inputs: Option<Vec<usize>>,
        embedder: Option<Embedder>,
    ) {
        let now = now_ms();
        let expires = now.saturating_add(plan.ttl.as_millis() as u64);
        let entries: Vec<(&String, Bytes)> = if plan.per_input {
            let positions = inputs.unwrap_or_else(|| (0..plan.keys.len()).collect());
            replay::split_embeddings(body, positions.len())
                .into_iter()
                .zip(positions)
                .filter_map(|(item, i)| Some((plan.keys.get(i)?, encode(now, expires, &item))))
                .collect()
        } else {
            vec![(&plan.keys[0], encode(now, expires, body))]
        };
        for (key, value) in entries {
            if let Err(e) = self.backend.put(key, value, plan.ttl).await {
                self.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cache store failed");
                return;
            }
        }
        // The question is indexed once its answer is there to be found.
        if let (Some(index), Some(question)) = (&self.semantic, &plan.semantic) {
            // A lookup that found nothing to compare with (or was skipped) made no embedding:
            // made here, off the request path.
            if question.vector.get().is_none() {
                if let (Some(embedder), Some(model)) = (embedder, self.semantic_model()) {
                    if let Some(vector) = embedder.embed(model, &question.question).await {
                        let _ = question.vector.set(vector);
                    }
                }
            }
            if let Some(vector) = question.vector.get() {
                let indexed = index
                    .insert(
                        &question.context,
                        Arc::clone(vector),
                        &plan.keys[0],
                        plan.ttl,
                        now,
                    )
                    .await;
                if let Err(e) = indexed {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "semantic cache store failed");
                }
            }
        }
    }

    /// Remove `keys` (as `x-litellm-cache-key` names them, or whole stored keys).
    pub async fn delete(&self, keys: &[String]) -> Result<u64, CacheError> {
        let namespace = self
            .settings
            .namespace
            .as_deref()
            .unwrap_or(DEFAULT_NAMESPACE);
        let stored: Vec<String> = keys
            .iter()
            .map(|k| {
                if k.contains(':') {
                    k.clone()
                } else {
                    format!("{namespace}:{k}")
                }
            })
            .collect();
        self.backend.delete(&stored).await
    }
}

/// The request's `cache` member, checked.
fn read_controls(request: &RawObject<'_>) -> Result<Controls, GatewayError> {
    let Some(raw) = request.get_non_null("cache") else {
        return Ok(Controls::default());
    };
    let controls: Controls = serde_json::from_str(raw.get()).map_err(|e| {
        GatewayError::invalid_request(format!(
            "`cache` must be an object of no-cache, no-store, ttl, s-maxage, namespace and \
             use-cache: {e}"
        ))
        .with_param("cache")
    })?;
    for (name, seconds) in [("ttl", controls.ttl), ("s-maxage", controls.s_maxage)] {
        if seconds.is_some_and(|s| !(0.0..1.0e9).contains(&s)) {
            return Err(GatewayError::invalid_request(format!(
                "`cache.{name}` must be a number of seconds"
            ))
            .with_param("cache"));
        }
    }
    if controls.namespace.as_ref().is_some_and(|n| {
        n.is_empty()
            || n.len() > 128
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
    }) {
        return Err(GatewayError::invalid_request(
            "`cache.namespace` must be 1 to 128 letters, digits, `.`, `_`, `-` or `:`",
        )
        .with_param("cache"));
    }
    Ok(controls)
}

/// An embeddings request's inputs, one per vector the answer holds: a string, a list of
/// strings, a list of tokens, or a list of token lists.
pub(crate) fn embedding_inputs(request: &RawObject<'_>) -> Result<Vec<Value>, GatewayError> {
    let Some(raw) = request.get_non_null("input") else {
        return Ok(Vec::new());
    };
    let input: Value = serde_json::from_str(raw.get())
        .map_err(|e| GatewayError::invalid_request(format!("`input`: {e}")))?;
    Ok(match input {
        Value::Array(items) if items.iter().all(Value::is_number) => vec![Value::Array(items)],
        Value::Array(items) => items,
        other => vec![other],
    })
}

/// `value` as canonical JSON: object keys sorted, numbers with no fraction written as integers.
fn canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // Keys and strings as JSON writes them (escaped).
                out.extend_from_slice(Value::String(k.clone()).to_string().as_bytes());
                out.push(b':');
                canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(v, out);
            }
            out.push(b']');
        }
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
                out.extend_from_slice((f as i64).to_string().as_bytes());
            }
            _ => out.extend_from_slice(n.to_string().as_bytes()),
        },
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

fn hex_sha256(content: &[u8]) -> String {
    let digest = Sha256::digest(content);
    let mut hex = String::with_capacity(64);
    for b in digest {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Stored values: a header line (`llmux-cache/1 <stored at> <expires at>`, unix ms) and the
/// JSON answer.
const MAGIC: &[u8] = b"llmux-cache/1 ";

fn encode(stored_at_ms: u64, expires_at_ms: u64, body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(MAGIC.len() + 42 + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(format!("{stored_at_ms} {expires_at_ms}\n").as_bytes());
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// A stored value, or `None` for anything else under the key (another program's, an older
/// format's).
fn decode(value: Bytes) -> Option<Cached> {
    let rest = value.strip_prefix(MAGIC)?;
    let newline = rest.iter().position(|b| *b == b'\n')?;
    let header = std::str::from_utf8(&rest[..newline]).ok()?;
    let (stored, expires) = header.split_once(' ')?;
    let start = MAGIC.len() + newline + 1;
    Some(Cached {
        body: value.slice(start..),
        stored_at_ms: stored.parse().ok()?,
        expires_at_ms: expires.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cache() -> ResponseCache {
        ResponseCache::from_settings(&CacheSettings::default(), None).unwrap()
    }

    fn plan(body: &str) -> Result<Option<CachePlan>, GatewayError> {
        plan_for(&cache(), Operation::Chat, body, None)
    }

    fn plan_for(
        cache: &ResponseCache,
        op: Operation,
        body: &str,
        scope: Option<&str>,
    ) -> Result<Option<CachePlan>, GatewayError> {
        let bytes = Bytes::from(body.to_owned());
        let request = RawObject::parse(&bytes).unwrap();
        cache.plan(op, &request, "gpt", scope, &[])
    }

    fn hash(body: &str) -> String {
        plan(body).unwrap().unwrap().hash
    }

    #[test]
    fn keys_ignore_order_spacing_and_controls_but_not_what_changes_the_answer() {
        let base =
            hash(r#"{"model":"a","messages":[{"role":"user","content":"hi"}],"temperature":1}"#);
        assert_eq!(
            base,
            hash(
                r#"{ "temperature": 1.0, "stream": true, "cache": {"ttl": 5}, "metadata": {"x": 1},
                     "messages": [ {"content": "hi", "role": "user"} ], "model": "alias" }"#
            ),
            "order, spacing, 1 vs 1.0, stream, controls and the model's name do not matter"
        );
        for different in [
            r#"{"model":"a","messages":[{"role":"user","content":"hi!"}],"temperature":1}"#,
            r#"{"model":"a","messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#,
            r#"{"model":"a","messages":[{"role":"user","content":"hi"}],"temperature":1,"n":2}"#,
            r#"{"model":"a","messages":[{"role":"user","content":"hi"}],"temperature":1,"user":"u2"}"#,
        ] {
            assert_ne!(base, hash(different), "{different}");
        }
        let c = cache();
        let body = r#"{"model":"a","messages":[]}"#;
        let team_a = plan_for(&c, Operation::Chat, body, Some("team:a"))
            .unwrap()
            .unwrap();
        let team_b = plan_for(&c, Operation::Chat, body, Some("team:b"))
            .unwrap()
            .unwrap();
        assert_ne!(team_a.keys, team_b.keys, "scopes never share");
        let completions = plan_for(&c, Operation::Completions, body, None)
            .unwrap()
            .unwrap();
        assert_ne!(completions.hash, hash(body), "operations never share");
    }

    #[test]
    fn controls_are_read_and_checked() {
        let p = plan(r#"{"messages":[],"cache":{"no-cache":true,"ttl":30,"s-maxage":5,"namespace":"team-x"}}"#)
            .unwrap()
            .unwrap();
        assert!(!p.read && p.write);
        assert_eq!(p.ttl, Duration::from_secs(30));
        assert_eq!(p.max_age, Some(Duration::from_secs(5)));
        assert!(
            p.keys[0].starts_with("llmux:cache:team-x:"),
            "under the configured namespace"
        );
        assert!(
            plan(r#"{"messages":[],"cache":{"no-cache":true,"no-store":true}}"#)
                .unwrap()
                .is_none()
        );
        for bad in [
            r#"{"messages":[],"cache":"yes"}"#,
            r#"{"messages":[],"cache":{"ttl":"long"}}"#,
            r#"{"messages":[],"cache":{"ttl":-1}}"#,
            r#"{"messages":[],"cache":{"no_cache":true}}"#,
            r#"{"messages":[],"cache":{"namespace":""}}"#,
            r#"{"messages":[],"cache":{"namespace":"a*"}}"#,
        ] {
            let e = plan(bad).unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
            assert_eq!(e.body.param.as_deref(), Some("cache"));
        }
        let off = ResponseCache::from_settings(
            &CacheSettings {
                default_off: true,
                ..Default::default()
            },
            None,
        )
        .unwrap();
        assert!(plan_for(&off, Operation::Chat, r#"{"messages":[]}"#, None)
            .unwrap()
            .is_none());
        assert!(plan_for(
            &off,
            Operation::Chat,
            r#"{"messages":[],"cache":{"use-cache":true}}"#,
            None
        )
        .unwrap()
        .is_some());
    }

    #[test]
    fn tags_count_when_given_and_requested_lifetimes_are_capped() {
        let c = cache();
        let bytes = Bytes::from_static(br#"{"messages":[],"cache":{"ttl":1e8}}"#);
        let request = RawObject::parse(&bytes).unwrap();
        let plain = c
            .plan(Operation::Chat, &request, "gpt", None, &[])
            .unwrap()
            .unwrap();
        let tagged = c
            .plan(Operation::Chat, &request, "gpt", None, &["eu".to_owned()])
            .unwrap()
            .unwrap();
        assert_ne!(
            plain.hash, tagged.hash,
            "tag filtering makes tags part of the key"
        );
        assert_eq!(plain.ttl, MAX_REQUESTED_TTL);
    }

    #[test]
    fn embeddings_get_a_key_per_input() {
        let c = cache();
        let keys = |body: &str| {
            plan_for(&c, Operation::Embeddings, body, None)
                .unwrap()
                .unwrap()
                .keys
        };
        let batch = keys(r#"{"model":"e","input":["a","b","c"]}"#);
        assert_eq!(batch.len(), 3);
        assert_eq!(keys(r#"{"model":"e","input":"b"}"#), vec![batch[1].clone()]);
        assert_eq!(
            keys(r#"{"model":"e","input":["c","a"]}"#),
            vec![batch[2].clone(), batch[0].clone()]
        );
        assert_ne!(
            keys(r#"{"model":"e","input":["a"],"dimensions":8}"#)[0],
            batch[0]
        );
        assert_eq!(
            keys(r#"{"model":"e","input":[1,2,3]}"#).len(),
            1,
            "one token list"
        );
    }

    #[test]
    fn stored_values_round_trip_and_others_are_ignored() {
        let v = encode(1234, 5678, br#"{"id":"x"}"#);
        let d = decode(v).unwrap();
        assert_eq!((d.stored_at_ms, d.expires_at_ms), (1234, 5678));
        assert_eq!(&d.body[..], br#"{"id":"x"}"#);
        assert!(decode(Bytes::from_static(b"something else")).is_none());
    }

    #[tokio::test]
    async fn lookups_honour_s_maxage_and_partial_embeddings() {
        let c = Arc::new(cache());
        let p = plan_for(&c, Operation::Chat, r#"{"messages":[1]}"#, None)
            .unwrap()
            .unwrap();
        assert!(matches!(c.lookup(&p).await, Lookup::Miss));
        c.backend
            .put(
                &p.keys[0],
                encode(now_ms() - 10_000, u64::MAX, b"{}"),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert!(matches!(c.lookup(&p).await, Lookup::Hit(_)));
        let young = plan_for(
            &c,
            Operation::Chat,
            r#"{"messages":[1],"cache":{"s-maxage":5}}"#,
            None,
        )
        .unwrap()
        .unwrap();
        assert!(
            matches!(c.lookup(&young).await, Lookup::Miss),
            "ten seconds is too old"
        );
        // Past its expiry an entry is no answer, wherever a copy of it lives.
        c.backend
            .put(
                &p.keys[0],
                encode(now_ms() - 10_000, now_ms() - 1, b"{}"),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert!(matches!(c.lookup(&p).await, Lookup::Miss), "expired");

        let e = plan_for(&c, Operation::Embeddings, r#"{"input":["a","b"]}"#, None)
            .unwrap()
            .unwrap();
        c.backend
            .put(
                &e.keys[1],
                encode(now_ms(), u64::MAX, b"{}"),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        match c.lookup(&e).await {
            Lookup::Partial(found) => assert!(found[0].is_none() && found[1].is_some()),
            other => panic!("{other:?}"),
        }
    }
}
