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

/// Contexts indexed at once in a process (least recently used go first).
const MAX_CONTEXTS: u64 = 10_000;

/// What the semantic lookup needs of one request.
#[derive(Debug, Clone)]
pub(crate) struct SemanticPlan {
    /// Hash of the request less its question: only answers of this context may match.
    pub context: String,
    /// The text compared: the last user message, or a completion's prompt.
    pub question: String,
    /// The question's embedding, once made (at lookup; a store reuses it).
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

/// The questions of one context, and (for a Redis mirror) how far the stream was read.
#[derive(Debug, Default)]
struct Partition {
    entries: VecDeque<Entry>,
    last_id: Option<String>,
}

impl Partition {
    fn add(&mut self, entry: Entry) {
        if self.entries.len() >= MAX_PER_CONTEXT {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    /// The closest live entry at or above `threshold`.
    fn best(&self, query: &[f32], threshold: f32, now_ms: u64) -> Option<(String, f32)> {
        let mut best: Option<(&Entry, f32)> = None;
        for entry in &self.entries {
            if entry.expires_at_ms <= now_ms || entry.vector.len() != query.len() {
                continue;
            }
            let similarity: f32 = entry.vector.iter().zip(query).map(|(a, b)| a * b).sum();
            if similarity >= threshold && best.is_none_or(|(_, s)| similarity > s) {
                best = Some((entry, similarity));
            }
        }
        best.map(|(e, s)| (e.answer.clone(), s))
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

/// Partitions by context, bounded in number.
pub(crate) struct Partitions(moka::sync::Cache<String, Arc<Mutex<Partition>>>);

impl Partitions {
    pub(crate) fn new(idle: Duration) -> Partitions {
        Partitions(
            moka::sync::Cache::builder()
                .max_capacity(MAX_CONTEXTS)
                .time_to_idle(idle)
                .build(),
        )
    }

    fn partition(&self, context: &str) -> Arc<Mutex<Partition>> {
        self.0.get_with(context.to_owned(), || {
            Arc::new(Mutex::new(Partition::default()))
        })
    }
}

/// `vector` scaled to length one (`None` for a zero or non-finite vector).
pub(crate) fn normalized(vector: &[f32]) -> Option<Arc<[f32]>> {
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    (norm.is_finite() && norm > 0.0).then(|| vector.iter().map(|v| v / norm).collect())
}

impl SemanticIndex {
    /// The stored key of the closest answer at or above `threshold`, and its similarity.
    pub(crate) async fn search(
        &self,
        context: &str,
        query: &[f32],
        threshold: f32,
        now_ms: u64,
    ) -> Result<Option<(String, f32)>, CacheError> {
        match self {
            SemanticIndex::Local(partitions) => {
                let partition = partitions.partition(context);
                let found = partition
                    .lock()
                    .map_err(|_| CacheError("semantic index poisoned".into()))?
                    .best(query, threshold, now_ms);
                Ok(found)
            }
            SemanticIndex::Redis {
                redis,
                mirror,
                namespace,
            } => {
                let partition = mirror.partition(context);
                let after = partition
                    .lock()
                    .map_err(|_| CacheError("semantic index poisoned".into()))?
                    .last_id
                    .clone();
                // What other instances (and this one) added since the last read.
                let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
                // XRANGE: [[id, [field, value, ...]], ...].
                let read: Vec<(String, Vec<Vec<u8>>)> = redis
                    .run_lookup(
                        redis::cmd("XRANGE")
                            .arg(stream_key(namespace, context))
                            .arg(start)
                            .arg("+")
                            .arg("COUNT")
                            .arg(MAX_PER_CONTEXT),
                    )
                    .await?;
                let mut partition = partition
                    .lock()
                    .map_err(|_| CacheError("semantic index poisoned".into()))?;
                for (id, fields) in read {
                    partition.last_id = Some(id);
                    let field = |name: &str| {
                        fields
                            .chunks_exact(2)
                            .find(|pair| pair[0] == name.as_bytes())
                            .map(|pair| pair[1].clone())
                    };
                    let (Some(vector), Some(answer), Some(expires)) =
                        (field("v"), field("k"), field("e"))
                    else {
                        continue;
                    };
                    let vector: Vec<f32> = vector
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect();
                    let (Some(vector), Ok(answer), Some(expires_at_ms)) = (
                        normalized(&vector),
                        String::from_utf8(answer),
                        std::str::from_utf8(&expires)
                            .ok()
                            .and_then(|e| e.parse().ok()),
                    ) else {
                        continue;
                    };
                    partition.add(Entry {
                        vector,
                        answer,
                        expires_at_ms,
                    });
                }
                Ok(partition.best(query, threshold, now_ms))
            }
        }
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
                partitions
                    .partition(context)
                    .lock()
                    .map_err(|_| CacheError("semantic index poisoned".into()))?
                    .add(Entry {
                        vector,
                        answer: answer.to_owned(),
                        expires_at_ms,
                    });
                Ok(())
            }
            SemanticIndex::Redis {
                redis, namespace, ..
            } => {
                // Every instance (this one included) picks it up on its next read.
                let key = stream_key(namespace, context);
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
                    .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
                    .ignore();
                redis.run_pipeline(&pipe).await
            }
        }
    }
}

fn stream_key(namespace: &str, context: &str) -> String {
    format!("{namespace}:semantic:{context}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn the_closest_live_answer_above_the_threshold_wins() {
        let index = SemanticIndex::Local(Partitions::new(Duration::from_secs(60)));
        let v = |x: &[f32]| normalized(x).unwrap();
        let ttl = Duration::from_secs(60);
        index
            .insert("ctx", v(&[1.0, 0.0]), "a", ttl, 1000)
            .await
            .unwrap();
        index
            .insert("ctx", v(&[0.8, 0.6]), "b", ttl, 1000)
            .await
            .unwrap();
        index
            .insert("other", v(&[0.0, 1.0]), "c", ttl, 1000)
            .await
            .unwrap();
        let q = v(&[0.9, 0.5]);
        let (key, similarity) = index.search("ctx", &q, 0.8, 2000).await.unwrap().unwrap();
        assert_eq!(key, "b");
        assert!(similarity > 0.98);
        // Another context's answers are never candidates; nothing close enough is no answer.
        assert!(index
            .search("other", &q, 0.8, 2000)
            .await
            .unwrap()
            .is_none());
        assert!(index
            .search("ctx", &v(&[0.0, 1.0]), 0.8, 2000)
            .await
            .unwrap()
            .is_none());
        // Expired entries are skipped.
        assert!(index
            .search("ctx", &q, 0.8, 1000 + 61_000)
            .await
            .unwrap()
            .is_none());
        assert!(normalized(&[0.0, 0.0]).is_none());
    }
}
