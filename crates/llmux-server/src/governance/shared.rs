//! Rate limits shared by a fleet through Redis: every instance counts the same windows, so N
//! instances together admit exactly a limit. One request costs one round trip: a Lua script
//! checks every scope's rpm, tpm and parallel limit and, only if all pass, counts the request
//! in all of them (atomic on the Redis server). Releasing (tokens used, the parallel slot) is a
//! second script sent off the request path. Redis that is slow or gone never stops traffic:
//! each call has a short deadline, and past it the instance counts locally (a warning once, a
//! counter, `/health/readiness` says so) until Redis answers again.
//!
//! Changes travel the same way: an instance that changes an object (a key blocked, a team
//! updated, a model added) publishes its kind and id on `llmux:invalidate`, and every instance
//! drops its cached copy at once instead of serving it for the cache's 5 s.
//!
//! Keys: `llmux:rl:{scope}:{window}` (a hash of requests `r` and tokens `t` for one minute,
//! expiring after two) and `llmux:par:{scope}` (a sorted set of the requests in flight scored
//! by their start, so an instance that died mid-request frees its slots after `PARALLEL_TTL`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::limits::{LimitExceeded, Limits, Remaining};

const WINDOW_MS: i64 = 60_000;
/// A request in flight longer than this no longer holds a parallel slot (its instance died).
const PARALLEL_TTL_MS: i64 = 15 * 60_000;

const ACQUIRE: &str = r#"
-- ARGV: window start, now (ms), request id, parallel ttl (ms), scope count, then per scope:
-- name, rpm, tpm, parallel (-1: no limit)
local window, now, id, ttl, n = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local counts = {}
for i = 1, n do
  local b = 5 + (i - 1) * 4
  local scope, rpm, tpm, par = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local w = 'llmux:rl:' .. scope .. ':' .. window
  local r = tonumber(redis.call('HGET', w, 'r') or '0')
  local t = tonumber(redis.call('HGET', w, 't') or '0')
  if rpm >= 0 and r >= rpm then return {i, 1, rpm} end
  if tpm >= 0 and t >= tpm then return {i, 2, tpm} end
  if par >= 0 then
    local p = 'llmux:par:' .. scope
    redis.call('ZREMRANGEBYSCORE', p, '-inf', now - ttl)
    if redis.call('ZCARD', p) >= par then return {i, 3, par} end
  end
  counts[i] = {r, t}
end
local out = {0}
for i = 1, n do
  local b = 5 + (i - 1) * 4
  local scope, par = ARGV[b + 1], tonumber(ARGV[b + 4])
  local w = 'llmux:rl:' .. scope .. ':' .. window
  redis.call('HINCRBY', w, 'r', 1)
  redis.call('PEXPIRE', w, 120000)
  if par >= 0 then
    local p = 'llmux:par:' .. scope
    redis.call('ZADD', p, now, id)
    redis.call('PEXPIRE', p, ttl)
  end
  out[#out + 1] = counts[i][1] + 1
  out[#out + 1] = counts[i][2]
end
return out
"#;

const RELEASE: &str = r#"
-- ARGV: entry count, then per entry: scope, window start, request id, tokens (0: none),
-- holds a parallel slot (0/1). Many requests' releases go in one call.
local n = tonumber(ARGV[1])
for i = 1, n do
  local b = 1 + (i - 1) * 5
  local scope, window, id, tokens, par = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], tonumber(ARGV[b + 4]), ARGV[b + 5]
  if tokens > 0 then
    local w = 'llmux:rl:' .. scope .. ':' .. window
    redis.call('HINCRBY', w, 't', tokens)
    redis.call('PEXPIRE', w, 120000)
  end
  if par == '1' then redis.call('ZREM', 'llmux:par:' .. scope, id) end
end
return 1
"#;

/// The channel object changes are announced on.
pub const INVALIDATE_CHANNEL: &str = "llmux:invalidate";

/// The Redis-backed limiter of a fleet.
pub struct SharedLimiter {
    client: redis::Client,
    conn: ConnectionManager,
    acquire: redis::Script,
    release: redis::Script,
    /// How long the request path waits for Redis before counting locally.
    deadline: Duration,
    /// Redis is not answering: counting locally (logged once per outage).
    degraded: AtomicBool,
    /// Calls that fell back on local counting.
    pub fallbacks: AtomicU64,
    /// Releases waiting to be sent: one call carries every release of the last few
    /// milliseconds, so a request costs one round trip (its admission), not two.
    releases: std::sync::Mutex<Vec<ReleaseEntry>>,
    flush: tokio::sync::Notify,
    /// A queued release frees a parallel slot: send without waiting for the batch.
    urgent: AtomicBool,
}

/// One scope's share of a finished request.
struct ReleaseEntry {
    scope: String,
    window: i64,
    id: String,
    tokens: u64,
    parallel: bool,
}

/// How long releases gather before they are sent (and the most a tpm count or a parallel slot
/// lags behind the request that used it).
const RELEASE_BATCH: Duration = Duration::from_millis(5);

impl std::fmt::Debug for SharedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimiter")
            .field("degraded", &self.degraded)
            .finish()
    }
}

/// A shared call that could not be made (Redis slow or gone): count locally instead.
#[derive(Debug)]
pub struct Unavailable;

impl SharedLimiter {
    /// Connect to `url` (`redis://`, `rediss://` for TLS). The connection manager reconnects by
    /// itself after a loss.
    pub async fn connect(url: &str, deadline: Duration) -> Result<Arc<SharedLimiter>, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis url: {e}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| "redis: no connection within 5 s".to_owned())?
        .map_err(|e| format!("redis: {e}"))?;
        let limiter = Arc::new(SharedLimiter {
            client,
            conn,
            acquire: redis::Script::new(ACQUIRE),
            release: redis::Script::new(RELEASE),
            deadline,
            degraded: AtomicBool::new(false),
            fallbacks: AtomicU64::new(0),
            releases: std::sync::Mutex::new(Vec::new()),
            flush: tokio::sync::Notify::new(),
            urgent: AtomicBool::new(false),
        });
        limiter.spawn_release_sender();
        Ok(limiter)
    }

    /// Announce a change to every instance (off the caller's path; a lost message leaves the
    /// other instances on their cached copy for at most the cache's 5 s).
    pub fn publish_invalidation(self: &Arc<Self>, message: String) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut conn = me.conn.clone();
            let sent = tokio::time::timeout(
                Duration::from_secs(2),
                redis::cmd("PUBLISH")
                    .arg(INVALIDATE_CHANNEL)
                    .arg(&message)
                    .query_async::<i64>(&mut conn),
            )
            .await;
            if !matches!(sent, Ok(Ok(_))) {
                tracing::warn!(change = %message, "could not announce a change to the fleet");
            }
        });
    }

    /// Listen for the fleet's changes for as long as the process runs, calling `on_change` with
    /// each message; reconnects after a loss.
    pub fn listen(self: &Arc<Self>, on_change: impl Fn(&str) + Send + Sync + 'static) {
        let client = self.client.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            loop {
                match client.get_async_pubsub().await {
                    Ok(mut pubsub) => {
                        if pubsub.subscribe(INVALIDATE_CHANNEL).await.is_ok() {
                            let mut messages = pubsub.on_message();
                            while let Some(m) = messages.next().await {
                                if let Ok(text) = m.get_payload::<String>() {
                                    on_change(&text);
                                }
                            }
                        }
                        tracing::warn!("lost the fleet's change channel; reconnecting");
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot subscribe to the fleet's changes")
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    /// Whether the last call found Redis unavailable.
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    fn note(&self, ok: bool, what: &str) {
        if ok {
            if self.degraded.swap(false, Ordering::Relaxed) {
                tracing::warn!("redis answers again: rate limits are shared across the fleet");
            }
        } else {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
            if !self.degraded.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    call = what,
                    "redis is not answering: counting rate limits on this instance until it does"
                );
            }
        }
    }

    /// Count one request against every scope (one round trip), or say which limit refused
    /// it; `Err(Unavailable)` when Redis did not answer within the deadline.
    pub async fn acquire(
        &self,
        scopes: &[Limits],
        request_id: &str,
        now: i64,
    ) -> Result<Result<Remaining, LimitExceeded>, Unavailable> {
        let window = now - now.rem_euclid(WINDOW_MS);
        let reset_in_ms = window + WINDOW_MS - now;
        let limit = |v: Option<u64>| v.map_or(-1, |v| v.min(i64::MAX as u64) as i64);
        let mut invocation = self.acquire.prepare_invoke();
        invocation
            .arg(window)
            .arg(now)
            .arg(request_id)
            .arg(PARALLEL_TTL_MS)
            .arg(scopes.len());
        for s in scopes {
            invocation
                .arg(&s.scope)
                .arg(limit(s.rpm))
                .arg(limit(s.tpm))
                .arg(limit(s.max_parallel));
        }
        let mut conn = self.conn.clone();
        let answer = tokio::time::timeout(
            self.deadline,
            invocation.invoke_async::<Vec<i64>>(&mut conn),
        )
        .await;
        let out = match answer {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "redis acquire failed");
                self.note(false, "acquire");
                return Err(Unavailable);
            }
            Err(_) => {
                self.note(false, "acquire");
                return Err(Unavailable);
            }
        };
        self.note(true, "acquire");
        match out.first().copied() {
            Some(0) => {
                let mut remaining = Remaining {
                    reset_in_ms,
                    ..Remaining::default()
                };
                for (i, s) in scopes.iter().enumerate() {
                    let requests = out.get(1 + 2 * i).copied().unwrap_or(0).max(0) as u64;
                    let tokens = out.get(2 + 2 * i).copied().unwrap_or(0).max(0) as u64;
                    if let Some(rpm) = s.rpm {
                        let left = rpm.saturating_sub(requests);
                        if remaining.requests.is_none_or(|(_, l)| left < l) {
                            remaining.requests = Some((rpm, left));
                        }
                    }
                    if let Some(tpm) = s.tpm {
                        let left = tpm.saturating_sub(tokens);
                        if remaining.tokens.is_none_or(|(_, l)| left < l) {
                            remaining.tokens = Some((tpm, left));
                        }
                    }
                }
                Ok(Ok(remaining))
            }
            Some(i) => {
                let scope = scopes
                    .get((i - 1).max(0) as usize)
                    .map(|s| s.scope.clone())
                    .unwrap_or_default();
                let (what, reset) = match out.get(1).copied() {
                    Some(1) => ("requests", reset_in_ms),
                    Some(2) => ("tokens", reset_in_ms),
                    _ => ("parallel_requests", 0),
                };
                Ok(Err(LimitExceeded {
                    scope,
                    what,
                    limit: out.get(2).copied().unwrap_or(0).max(0) as u64,
                    reset_in_ms: reset,
                }))
            }
            None => Err(Unavailable),
        }
    }

    /// The request is over: count its tokens and free its parallel slots. Queued for the
    /// release sender (off the request path); a failure is logged and a slot expires with
    /// `PARALLEL_TTL_MS`.
    pub fn release(
        self: &Arc<Self>,
        scopes: &[Limits],
        request_id: &str,
        tokens: u64,
        started: i64,
    ) {
        // Tokens count in the window the request was admitted in, as the local limiter does.
        let window = started - started.rem_euclid(WINDOW_MS);
        let mut queue = self
            .releases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = queue.len();
        for s in scopes {
            let tokens = if s.tpm.is_some() { tokens } else { 0 };
            let parallel = s.max_parallel.is_some();
            if tokens > 0 || parallel {
                queue.push(ReleaseEntry {
                    scope: s.scope.clone(),
                    window,
                    id: request_id.to_owned(),
                    tokens,
                    parallel,
                });
            }
        }
        // A parallel slot is freed at once (a client sending its next request right after an
        // answer must find it free); token counts may wait for the next batch.
        let urgent = scopes.iter().any(|s| s.max_parallel.is_some());
        if (before == 0 && !queue.is_empty()) || urgent {
            drop(queue);
            if urgent {
                self.urgent.store(true, Ordering::Release);
            }
            self.flush.notify_one();
        }
    }

    /// Send queued releases, a batch every `RELEASE_BATCH`, for as long as the limiter lives.
    fn spawn_release_sender(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(limiter) = me.upgrade() else { return };
                let notified = limiter.flush.notified();
                let empty = limiter
                    .releases
                    .lock()
                    .map(|q| q.is_empty())
                    .unwrap_or(true);
                if empty {
                    // Woken by the first release queued, or every second to see whether the
                    // limiter is still used.
                    let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
                    continue;
                }
                if !limiter.urgent.swap(false, Ordering::AcqRel) {
                    tokio::time::sleep(RELEASE_BATCH).await;
                }
                let batch = std::mem::take(
                    &mut *limiter
                        .releases
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                );
                for chunk in batch.chunks(500) {
                    let mut invocation = limiter.release.prepare_invoke();
                    invocation.arg(chunk.len());
                    for e in chunk {
                        invocation
                            .arg(&e.scope)
                            .arg(e.window)
                            .arg(&e.id)
                            .arg(e.tokens)
                            .arg(if e.parallel { "1" } else { "0" });
                    }
                    let mut conn = limiter.conn.clone();
                    let done = tokio::time::timeout(
                        Duration::from_secs(2),
                        invocation.invoke_async::<i64>(&mut conn),
                    )
                    .await;
                    limiter.note(matches!(done, Ok(Ok(_))), "release");
                }
            }
        });
    }
}
