//! Where cached answers are kept: in this process (moka, bounded by bytes, each entry with its
//! own lifetime), in Redis (shared by a fleet, surviving restarts), or both as two levels (the
//! in-process one in front). Values are opaque bytes; the cache above decides what they hold.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// A backend that failed (unreachable, too slow, refused): a lookup counts as a miss and a
/// store is skipped; the request goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CacheError(pub String);

/// Get, put with a lifetime, and delete opaque values by key.
#[async_trait]
pub trait CacheBackend: Send + Sync + std::fmt::Debug {
    /// `local`, `redis` or `redis+local`, for `/cache/ping` and logs.
    fn name(&self) -> &'static str;

    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError>;

    /// Several keys in one round trip where the backend can.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, CacheError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(key).await?);
        }
        Ok(out)
    }

    async fn put(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), CacheError>;

    /// Remove `keys`; how many were there (as far as the backend can tell).
    async fn delete(&self, keys: &[String]) -> Result<u64, CacheError>;

    /// Whether the backend answers.
    async fn ping(&self) -> Result<(), CacheError>;
}

/// One in-process entry: the value and how long it lives.
#[derive(Clone)]
struct LocalEntry {
    value: Bytes,
    ttl: Duration,
}

/// Each entry expires after its own lifetime.
struct PerEntryExpiry;

impl moka::Expiry<Arc<str>, LocalEntry> for PerEntryExpiry {
    fn expire_after_create(
        &self,
        _key: &Arc<str>,
        value: &LocalEntry,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &Arc<str>,
        value: &LocalEntry,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Answers kept in this process, at most `max_bytes` of them (least recently and least often
/// used go first, moka's TinyLFU), each for its own lifetime.
#[derive(Clone)]
pub struct LocalCache {
    entries: moka::sync::Cache<Arc<str>, LocalEntry>,
}

impl std::fmt::Debug for LocalCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCache")
            .field("entries", &self.entries.entry_count())
            .field("bytes", &self.entries.weighted_size())
            .finish()
    }
}

impl LocalCache {
    pub fn new(max_bytes: u64) -> LocalCache {
        LocalCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|key: &Arc<str>, entry: &LocalEntry| {
                    // The key, the value and moka's own bookkeeping.
                    u32::try_from(key.len() + entry.value.len() + 96).unwrap_or(u32::MAX)
                })
                .expire_after(PerEntryExpiry)
                .build(),
        }
    }

    /// The value, synchronously (the in-process level answers without a task switch).
    pub fn get_now(&self, key: &str) -> Option<Bytes> {
        self.entries.get(key).map(|e| e.value)
    }

    pub fn put_now(&self, key: &str, value: Bytes, ttl: Duration) {
        self.entries
            .insert(Arc::from(key), LocalEntry { value, ttl });
    }

    fn delete_now(&self, keys: &[String]) -> u64 {
        keys.iter()
            .filter(|k| self.entries.remove(k.as_str()).is_some())
            .count() as u64
    }
}

#[async_trait]
impl CacheBackend for LocalCache {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        Ok(self.get_now(key))
    }

    async fn put(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), CacheError> {
        self.put_now(key, value, ttl);
        Ok(())
    }

    async fn delete(&self, keys: &[String]) -> Result<u64, CacheError> {
        Ok(self.delete_now(keys))
    }

    async fn ping(&self) -> Result<(), CacheError> {
        Ok(())
    }
}

/// How long a request waits on Redis for a cached answer (its connection included) before
/// going upstream instead.
const REDIS_LOOKUP_DEADLINE: Duration = Duration::from_millis(250);

/// How long a background store waits on Redis (connecting included).
const REDIS_STORE_DEADLINE: Duration = Duration::from_secs(3);

/// Stores waiting on Redis at once; past it a store is dropped (and counted as an error), so a
/// slow Redis cannot make them pile up.
const MAX_PENDING_STORES: usize = 256;

/// Answers kept in Redis (`SET key value PX ttl`), shared by every instance that names it.
/// The connection is made in the background (at start, and again after a failure, a second
/// later): a request never waits on it past its deadline.
pub struct RedisCache {
    inner: Arc<RedisInner>,
    stores: Arc<tokio::sync::Semaphore>,
}

struct RedisInner {
    client: redis::Client,
    /// The connection, once made (the manager reconnects it by itself afterwards).
    connection: tokio::sync::watch::Sender<Option<redis::aio::ConnectionManager>>,
    /// A connection attempt is under way.
    connecting: std::sync::atomic::AtomicBool,
    /// Where the URL points, without its password (for logs).
    target: String,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("target", &self.inner.target)
            .finish()
    }
}

impl RedisCache {
    pub fn new(url: &str) -> Result<RedisCache, CacheError> {
        let client =
            redis::Client::open(url).map_err(|e| CacheError(format!("cache redis url: {e}")))?;
        let target = format!("{:?}", client.get_connection_info().addr());
        let cache = RedisCache {
            inner: Arc::new(RedisInner {
                client,
                connection: tokio::sync::watch::Sender::new(None),
                connecting: std::sync::atomic::AtomicBool::new(false),
                target,
            }),
            stores: Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_STORES)),
        };
        cache.start_connecting();
        Ok(cache)
    }

    /// Start one background connection attempt, unless one is under way (or no runtime runs:
    /// the first use starts it then).
    fn start_connecting(&self) {
        use std::sync::atomic::Ordering;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.inner.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = Arc::clone(&self.inner);
        runtime.spawn(async move {
            // Whatever ends this task (a runtime shut down too), the next use may try again.
            struct Done<'a>(&'a std::sync::atomic::AtomicBool);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    self.0.store(false, std::sync::atomic::Ordering::Release);
                }
            }
            let _done = Done(&inner.connecting);
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(2)));
            let made = tokio::time::timeout(
                Duration::from_secs(3),
                redis::aio::ConnectionManager::new_with_config(inner.client.clone(), config),
            )
            .await;
            match made {
                Ok(Ok(conn)) => {
                    inner.connection.send_replace(Some(conn));
                }
                Ok(Err(e)) => {
                    tracing::warn!(target = %inner.target, error = %e, "cache redis: cannot connect; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(_) => {
                    tracing::warn!(target = %inner.target, "cache redis: no connection within 3 s; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
    }

    /// The connection, waiting for one being made (callers bound the wait).
    async fn connected(&self) -> Result<redis::aio::ConnectionManager, CacheError> {
        let target = &self.inner.target;
        let mut connection = self.inner.connection.subscribe();
        if connection.borrow().is_none() {
            self.start_connecting();
        }
        let made = match connection.wait_for(Option::is_some).await {
            Ok(conn) => conn.clone(),
            Err(_) => return Err(CacheError(format!("cache redis {target}: closed"))),
        };
        made.ok_or_else(|| CacheError(format!("cache redis {target}: not connected")))
    }

    /// `work` within `deadline`, its connection included.
    async fn within<T>(
        &self,
        deadline: Duration,
        work: impl std::future::Future<Output = Result<T, CacheError>>,
    ) -> Result<T, CacheError> {
        tokio::time::timeout(deadline, work).await.map_err(|_| {
            CacheError(format!(
                "cache redis {}: no answer within {} ms",
                self.inner.target,
                deadline.as_millis()
            ))
        })?
    }

    /// A place among the stores waiting on Redis, or an error when they are all taken.
    fn store_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, CacheError> {
        Arc::clone(&self.stores).try_acquire_owned().map_err(|_| {
            CacheError(format!(
                "cache redis {}: {MAX_PENDING_STORES} stores already waiting; dropped",
                self.inner.target
            ))
        })
    }

    /// Run `cmd`, connection included, within `deadline`.
    async fn run<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        deadline: Duration,
    ) -> Result<T, CacheError> {
        self.within(deadline, async {
            let mut conn = self.connected().await?;
            cmd.query_async::<T>(&mut conn)
                .await
                .map_err(|e| CacheError(format!("cache redis {}: {e}", self.inner.target)))
        })
        .await
    }

    /// `cmd` under a request's lookup deadline.
    pub(crate) async fn run_lookup<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, CacheError> {
        self.run(cmd, REDIS_LOOKUP_DEADLINE).await
    }

    /// A pipeline under the store deadline, its answers ignored.
    pub(crate) async fn run_pipeline(&self, pipe: &redis::Pipeline) -> Result<(), CacheError> {
        let _pending = self.store_permit()?;
        self.within(REDIS_STORE_DEADLINE, async {
            let mut conn = self.connected().await?;
            pipe.query_async::<()>(&mut conn)
                .await
                .map_err(|e| CacheError(format!("cache redis {}: {e}", self.inner.target)))
        })
        .await
    }
}

#[async_trait]
impl CacheBackend for RedisCache {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        let value: Option<Vec<u8>> = self
            .run(redis::cmd("GET").arg(key), REDIS_LOOKUP_DEADLINE)
            .await?;
        Ok(value.map(Bytes::from))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, CacheError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<Vec<u8>>> = self
            .run(redis::cmd("MGET").arg(keys), REDIS_LOOKUP_DEADLINE)
            .await?;
        Ok(values.into_iter().map(|v| v.map(Bytes::from)).collect())
    }

    async fn put(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), CacheError> {
        let _pending = self.store_permit()?;
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.run::<()>(
            redis::cmd("SET")
                .arg(key)
                .arg(value.as_ref())
                .arg("PX")
                .arg(ms),
            REDIS_STORE_DEADLINE,
        )
        .await
    }

    async fn delete(&self, keys: &[String]) -> Result<u64, CacheError> {
        if keys.is_empty() {
            return Ok(0);
        }
        self.run(redis::cmd("DEL").arg(keys), REDIS_STORE_DEADLINE)
            .await
    }

    async fn ping(&self) -> Result<(), CacheError> {
        self.run::<String>(&redis::cmd("PING"), REDIS_STORE_DEADLINE)
            .await
            .map(drop)
    }
}

/// Redis behind an in-process level: a hit in this process costs no round trip; a miss there
/// asks Redis and keeps what it finds for `local_ttl` (or less: an entry another instance
/// deleted lives on here at most that long).
#[derive(Debug)]
pub struct TwoLevelCache {
    pub local: LocalCache,
    pub shared: RedisCache,
    pub local_ttl: Duration,
}

#[async_trait]
impl CacheBackend for TwoLevelCache {
    fn name(&self) -> &'static str {
        "redis+local"
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        if let Some(v) = self.local.get_now(key) {
            return Ok(Some(v));
        }
        let found = self.shared.get(key).await?;
        if let Some(v) = &found {
            self.local.put_now(key, v.clone(), self.local_ttl);
        }
        Ok(found)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, CacheError> {
        let mut out: Vec<Option<Bytes>> = keys.iter().map(|k| self.local.get_now(k)).collect();
        let missing: Vec<String> = keys
            .iter()
            .zip(&out)
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        if missing.is_empty() {
            return Ok(out);
        }
        let mut found = self.shared.get_many(&missing).await?.into_iter();
        for (key, slot) in keys.iter().zip(out.iter_mut()) {
            if slot.is_none() {
                *slot = found.next().flatten();
                if let Some(v) = slot {
                    self.local.put_now(key, v.clone(), self.local_ttl);
                }
            }
        }
        Ok(out)
    }

    async fn put(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), CacheError> {
        self.local
            .put_now(key, value.clone(), ttl.min(self.local_ttl));
        self.shared.put(key, value, ttl).await
    }

    async fn delete(&self, keys: &[String]) -> Result<u64, CacheError> {
        let here = self.local.delete_now(keys);
        let there = self.shared.delete(keys).await?;
        Ok(here.max(there))
    }

    async fn ping(&self) -> Result<(), CacheError> {
        self.shared.ping().await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn local_entries_expire_on_their_own_lifetimes_and_the_size_is_bounded() {
        let cache = LocalCache::new(64 * 1024);
        cache
            .put("short", Bytes::from_static(b"a"), Duration::from_millis(50))
            .await
            .unwrap();
        cache
            .put("long", Bytes::from_static(b"b"), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            cache.get("short").await.unwrap().as_deref(),
            Some(&b"a"[..])
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(cache.get("short").await.unwrap(), None);
        assert_eq!(cache.get("long").await.unwrap().as_deref(), Some(&b"b"[..]));
        // 200 entries of 1 KiB cannot all fit in 64 KiB.
        for i in 0..200 {
            cache.put_now(
                &format!("k{i}"),
                Bytes::from(vec![0u8; 1024]),
                Duration::from_secs(60),
            );
        }
        cache.entries.run_pending_tasks();
        assert!(cache.entries.weighted_size() <= 64 * 1024);
        assert_eq!(cache.delete(&["long".to_owned()]).await.unwrap(), 1);
        assert_eq!(cache.get("long").await.unwrap(), None);
    }
}
