//! Semantic lookups: a request whose exact key missed may be answered with the cached answer to
//! a question close enough to its own. Only the last user message (a completion's prompt) is
//! compared, by the cosine similarity of its embedding; everything else (model group, system
//! prompt, earlier turns, tools, parameters, tenant) must match exactly: it is hashed into the
//! request's *context*, and each context has its own index, so a different system prompt or tool
//! set never hits. Indexes are searched exhaustively (exact, no recall loss; see ARCHITECTURE.md),
//! in this process (`local-semantic`), or shared by a fleet through one Redis stream per context
//! that each instance mirrors and searches (`redis-semantic`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::backend::{CacheError, RedisCache};

/// Entries an index keeps per context (the oldest go first).
const MAX_PER_CONTEXT: usize = 10_000;

/// Entries a Redis mirror reads per lookup: a cold mirror fills over several lookups rather
/// than in one read too large for a lookup's deadline.
const MIRROR_PAGE: usize = 512;

/// Candidates tried per lookup, best first (one whose answer is gone lets the next answer).
const CANDIDATES: usize = 3;

/// What the semantic lookup needs of one request.
#[derive(Debug, Clone)]
pub(crate) struct SemanticPlan {
    /// Hash of the request less its question: only answers of this context may match.
    pub context: String,
    /// The text compared: the last user message, or a completion's prompt.
    pub question: String,
    /// The question's embedding, once made (at lookup; a store reuses it or makes it).
    pub vector: std::sync::OnceLock<Arc<[f32]>>,
}

/// The question a request asks (the last message, when a user's, as text; a completion's
/// prompt, when a string), and the member without it; `None` when it asks none to compare.
pub(crate) fn split_question(
    op: llmux_providers::Operation,
    value: &serde_json::Value,
) -> Option<(String, serde_json::Value)> {
    use serde_json::Value;
    let (text, rest) = match op {
        llmux_providers::Operation::Completions => (value.as_str()?.to_owned(), Value::Null),
        llmux_providers::Operation::Chat => {
            let messages = value.as_array()?;
            let last = messages.last()?.as_object()?;
            if last.get("role")?.as_str()? != "user" {
                return None;
            }
            let text = match last.get("content")? {
                Value::String(s) => s.clone(),
                // Text parts only: an image or a file is not what the embedding compares.
                Value::Array(parts) => parts
                    .iter()
                    .map(
                        |p| match (p.get("type")?.as_str()?, p.get("text")?.as_str()) {
                            ("text", Some(text)) => Some(text),
                            _ => None,
                        },
                    )
                    .collect::<Option<Vec<&str>>>()?
                    .join("\n"),
                _ => return None,
            };
            let mut rest = messages.clone();
            if let Some(Value::Object(last)) = rest.last_mut() {
                last.insert("content".into(), Value::Null);
            }
            (text, Value::Array(rest))
        }
        llmux_providers::Operation::Embeddings | llmux_providers::Operation::Rerank => return None,
    };
    (!text.trim().is_empty()).then_some((text, rest))
}

/// One indexed question.
#[derive(Debug, Clone)]
struct Entry {
    /// Normalized (a dot product is the cosine).
    vector: Arc<[f32]>,
    /// The exact key its answer is stored under.
    answer: String,
    /// Unix ms past which it is skipped.
    expires_at_ms: u64,
}

/// The questions of one context, and (for a Redis mirror) how far its stream was read.
#[derive(Debug, Default)]
struct Partition {
    entries: VecDeque<Entry>,
    /// The last stream id mirrored (`ms`, `seq`).
    last_id: Option<(u64, u64)>,
}

impl Partition {
    fn add(&mut self, entry: Entry) {
        if self.entries.len() >= MAX_PER_CONTEXT {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    /// Bytes its vectors take (the partitions' bound).
    fn weight(&self) -> u32 {
        let bytes: usize = self
            .entries
            .iter()
            .map(|e| e.vector.len() * 4 + e.answer.len() + 64)
            .sum();
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }

    fn has_live(&self, now_ms: u64) -> bool {
        self.entries.iter().any(|e| e.expires_at_ms > now_ms)
    }

    /// The closest live entries at or above `threshold`, best first.
    fn best(&self, query: &[f32], threshold: f32, now_ms: u64) -> Vec<(String, f32)> {
        let mut found: Vec<(&Entry, f32)> = Vec::new();
        for entry in &self.entries {
            if entry.expires_at_ms <= now_ms || entry.vector.len() != query.len() {
                continue;
            }
            let similarity: f32 = entry.vector.iter().zip(query).map(|(a, b)| a * b).sum();
            if similarity >= threshold {
                found.push((entry, similarity));
            }
        }
        found.sort_by(|a, b| b.1.total_cmp(&a.1));
        found
            .into_iter()
            .take(CANDIDATES)
            .map(|(e, s)| (e.answer.clone(), s))
            .collect()
    }
}

/// Where questions are indexed.
pub(crate) enum SemanticIndex {
    Local(Partitions),
    /// Redis streams (`XADD`), mirrored into local partitions as they are read.
    Redis {
        redis: RedisCache,
        mirror: Partitions,
        namespace: String,
    },
}

impl std::fmt::Debug for SemanticIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SemanticIndex::Local(_) => "SemanticIndex::Local",
            SemanticIndex::Redis { .. } => "SemanticIndex::Redis",
        })
    }
}

/// Partitions by context, bounded by the bytes their vectors take (least recently used
/// contexts go first).
pub(crate) struct Partitions(moka::sync::Cache<String, Arc<Mutex<Partition>>>);

impl Partitions {
    pub(crate) fn new(idle: Duration, max_bytes: u64) -> Partitions {
        Partitions(
            moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_: &String, p: &Arc<Mutex<Partition>>| {
                    p.lock().map_or(u32::MAX, |p| p.weight()).max(1)
                })
                .time_to_idle(idle)
                .build(),
        )
    }

    fn partition(&self, context: &str) -> Arc<Mutex<Partition>> {
        self.0.get_with(context.to_owned(), || {
            Arc::new(Mutex::new(Partition::default()))
        })
    }

    /// Weigh a partition again after it grew (moka weighs on insertion).
    fn reweigh(&self, context: &str, partition: &Arc<Mutex<Partition>>) {
        self.0.insert(context.to_owned(), Arc::clone(partition));
    }
}

/// `vector` scaled to length one (`None` for a zero or non-finite vector).
pub(crate) fn normalized(vector: &[f32]) -> Option<Arc<[f32]>> {
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    (norm.is_finite() && norm > 0.0).then(|| vector.iter().map(|v| v / norm).collect())
}

/// A stream id (`<ms>-<seq>`) as numbers, compared in order.
fn stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn poisoned() -> CacheError {
    CacheError("semantic index poisoned".into())
}

impl SemanticIndex {
    fn partitions(&self) -> &Partitions {
        match self {
            SemanticIndex::Local(partitions) => partitions,
            SemanticIndex::Redis { mirror, .. } => mirror,
        }
    }

    /// Bring a Redis mirror of `context` up to date (a page at a time); nothing for a local
    /// index. Whether the context then has live questions: without any, there is nothing to
    /// compare with and no embedding to make.
    pub(crate) async fn refresh(&self, context: &str, now_ms: u64) -> Result<bool, CacheError> {
        let partitions = self.partitions();
        let partition = partitions.partition(context);
        if let SemanticIndex::Redis {
            redis, namespace, ..
        } = self
        {
            let after = partition.lock().map_err(|_| poisoned())?.last_id;
            let start = after.map_or_else(|| "-".to_owned(), |(ms, seq)| format!("({ms}-{seq}"));
            let read: Result<Vec<StreamEntry>, CacheError> = redis
                .run_lookup(
                    redis::cmd("XRANGE")
                        .arg(stream_key(namespace, context))
                        .arg(start)
                        .arg("+")
                        .arg("COUNT")
                        .arg(MIRROR_PAGE),
                )
                .await;
            match read {
                Ok(read) if !read.is_empty() => {
                    let mut mirrored = partition.lock().map_err(|_| poisoned())?;
                    for (id, fields) in read {
                        // Lookups of one context run at once: each id is taken once, in order.
                        let Some(id) = stream_id(&id).filter(|id| mirrored.last_id < Some(*id))
                        else {
                            continue;
                        };
                        mirrored.last_id = Some(id);
                        if let Some(entry) = entry_of(&fields) {
                            mirrored.add(entry);
                        }
                    }
                    drop(mirrored);
                    partitions.reweigh(context, &partition);
                }
                Ok(_) => {}
                // The mirror answers with what it has.
                Err(e) => tracing::warn!(error = %e, "semantic cache: cannot read the index"),
            }
        }
        let live = partition.lock().map_err(|_| poisoned())?.has_live(now_ms);
        Ok(live)
    }

    /// The stored keys of the closest answers at or above `threshold` (best first), with
    /// their similarity. A Redis mirror answers as of its last `refresh`.
    pub(crate) fn search(
        &self,
        context: &str,
        query: &[f32],
        threshold: f32,
        now_ms: u64,
    ) -> Result<Vec<(String, f32)>, CacheError> {
        let partition = self.partitions().partition(context);
        let found = partition
            .lock()
            .map_err(|_| poisoned())?
            .best(query, threshold, now_ms);
        Ok(found)
    }

    /// Index `vector` (normalized) as the question whose answer is stored under `answer`.
    pub(crate) async fn insert(
        &self,
        context: &str,
        vector: Arc<[f32]>,
        answer: &str,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<(), CacheError> {
        let expires_at_ms = now_ms.saturating_add(ttl.as_millis() as u64);
        match self {
            SemanticIndex::Local(partitions) => {
                let partition = partitions.partition(context);
                partition.lock().map_err(|_| poisoned())?.add(Entry {
                    vector,
                    answer: answer.to_owned(),
                    expires_at_ms,
                });
                partitions.reweigh(context, &partition);
                Ok(())
            }
            SemanticIndex::Redis {
                redis, namespace, ..
            } => {
                // Every instance (this one included) picks it up on its next read. The stream
                // lives as long as its longest-lived entry: a short ttl never shortens it
                // (NX sets a first expiry, GT only extends; Redis 7).
                let key = stream_key(namespace, context);
                let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                let mut pipe = redis::pipe();
                pipe.cmd("XADD")
                    .arg(&key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(MAX_PER_CONTEXT)
                    .arg("*")
                    .arg("v")
                    .arg(bytes)
                    .arg("k")
                    .arg(answer)
                    .arg("e")
                    .arg(expires_at_ms)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(ms)
                    .arg("NX")
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(ms)
                    .arg("GT")
                    .ignore();
                redis.run_pipeline(&pipe).await
            }
        }
    }
}

/// A mirrored stream entry (`v`: the vector as little-endian f32s, `k`: the answer's key,
/// `e`: its expiry, unix ms); `None` for anything else.
fn entry_of(fields: &[Vec<u8>]) -> Option<Entry> {
    let field = |name: &str| {
        fields
            .chunks_exact(2)
            .find(|pair| pair[0] == name.as_bytes())
            .map(|pair| &pair[1])
    };
    let vector: Vec<f32> = field("v")?
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Some(Entry {
        vector: normalized(&vector)?,
        answer: String::from_utf8(field("k")?.clone()).ok()?,
        expires_at_ms: std::str::from_utf8(field("e")?).ok()?.parse().ok()?,
    })
}

/// One `XRANGE` entry: its id and its fields and values, alternating.
type StreamEntry = (String, Vec<Vec<u8>>);

fn stream_key(namespace: &str, context: &str) -> String {
    format!("{namespace}:semantic:{context}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn the_closest_live_answers_above_the_threshold_come_first() {
        let index = SemanticIndex::Local(Partitions::new(Duration::from_secs(60), 1 << 20));
        let v = |x: &[f32]| normalized(x).unwrap();
        let ttl = Duration::from_secs(60);
        for (ctx, vector, key) in [
            ("ctx", [1.0, 0.0], "a"),
            ("ctx", [0.8, 0.6], "b"),
            ("other", [0.0, 1.0], "c"),
        ] {
            index.insert(ctx, v(&vector), key, ttl, 1000).await.unwrap();
        }
        assert!(index.refresh("ctx", 2000).await.unwrap());
        assert!(
            !index.refresh("nobody", 2000).await.unwrap(),
            "nothing to compare with"
        );
        let q = v(&[0.9, 0.5]);
        let found = index.search("ctx", &q, 0.8, 2000).unwrap();
        let keys: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "a"], "best first");
        assert!(found[0].1 > 0.98);
        // Another context's answers are never candidates; nothing close enough is no answer.
        assert!(index.search("other", &q, 0.8, 2000).unwrap().is_empty());
        assert!(index
            .search("ctx", &v(&[0.0, 1.0]), 0.8, 2000)
            .unwrap()
            .is_empty());
        // Expired entries are skipped.
        assert!(index
            .search("ctx", &q, 0.8, 1000 + 61_000)
            .unwrap()
            .is_empty());
        assert!(!index.refresh("ctx", 1000 + 61_000).await.unwrap());
        assert!(normalized(&[0.0, 0.0]).is_none());
    }

    #[test]
    fn stream_ids_compare_as_numbers() {
        assert!(stream_id("10-2") > stream_id("9-5"), "not as text");
        assert!(stream_id("1700000000000-10") > stream_id("1700000000000-9"));
        assert_eq!(stream_id("x-1"), None);
    }
}
