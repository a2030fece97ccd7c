//! One bounded queue and one export task per sink: a finished request is pushed (a lock held
//! for a `VecDeque::push_back`, never a wait on the sink); the task sends batches of it every
//! `FLUSH_EVERY` or at `BATCH` records, retries a failed batch with backoff, and drops (and
//! counts) what does not fit rather than grow. A dead or slow sink therefore costs requests
//! nothing but its records.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::record::Finished;

/// Records per export call.
pub(crate) const BATCH: usize = 512;
/// How often queued records are sent when fewer than a batch are waiting.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Tries per batch before its records are dropped.
const TRIES: u32 = 3;
/// Wait before the first retry (doubled per try).
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// What a sink says about a failed export.
#[derive(Debug)]
pub struct ExportError {
    pub message: String,
    /// Worth another try (a timeout, a 5xx, a 429), as opposed to a refusal (a 4xx).
    pub retryable: bool,
}

impl ExportError {
    pub fn retryable(message: impl Into<String>) -> Self {
        ExportError {
            message: message.into(),
            retryable: true,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        ExportError {
            message: message.into(),
            retryable: false,
        }
    }

    /// An HTTP answer that was not a success: 408, 429 and 5xx are retried.
    pub fn from_status(what: &str, status: u16, body: &[u8]) -> Self {
        let body = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        let message = format!("{what} answered {status}: {body}");
        if status == 408 || status == 429 || status >= 500 {
            ExportError::retryable(message)
        } else {
            ExportError::permanent(message)
        }
    }
}

pub type ExportFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ExportError>> + Send + 'a>>;

/// A destination for finished requests.
pub trait Exporter: Send + Sync + 'static {
    /// Send one batch (in the order the requests finished).
    fn export<'a>(&'a self, batch: &'a [Arc<Finished>]) -> ExportFuture<'a>;

    /// Called once after the last batch (close files, flush buffers).
    fn close(&self) -> ExportFuture<'_> {
        Box::pin(async { Ok(()) })
    }
}

/// A sink's counts, for `/metrics` and readiness.
#[derive(Debug, Default)]
pub struct SinkCounters {
    /// Records handed to the sink.
    pub exported: AtomicU64,
    /// Records dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Records dropped because their batch failed every try.
    pub failed: AtomicU64,
    /// Export calls that failed (each try).
    pub errors: AtomicU64,
    /// The last export succeeded (readiness).
    pub healthy: AtomicBool,
    pub last_error: Mutex<Option<String>>,
}

/// A sink's queue and the task that empties it.
pub(crate) struct Pipeline {
    pub(crate) name: &'static str,
    queue: Mutex<VecDeque<Arc<Finished>>>,
    capacity: usize,
    wake: Notify,
    /// Woken when the queue has been sent (flushes wait for it).
    sent: Notify,
    closing: AtomicBool,
    pub(crate) counters: SinkCounters,
}

impl Pipeline {
    /// A pipeline for `exporter` holding at most `capacity` records; its task runs on the
    /// current runtime until the pipeline is closed.
    pub(crate) fn start(
        name: &'static str,
        exporter: Box<dyn Exporter>,
        capacity: usize,
    ) -> Arc<Pipeline> {
        let pipeline = Arc::new(Pipeline {
            name,
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            wake: Notify::new(),
            sent: Notify::new(),
            closing: AtomicBool::new(false),
            counters: SinkCounters {
                healthy: AtomicBool::new(true),
                ..Default::default()
            },
        });
        tokio::spawn(Arc::clone(&pipeline).run(exporter));
        pipeline
    }

    /// Queue a record; a full queue drops it (counted).
    pub(crate) fn push(&self, record: Arc<Finished>) {
        let len = {
            let mut queue = self
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if queue.len() >= self.capacity {
                drop(queue);
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            queue.push_back(record);
            queue.len()
        };
        if len == BATCH {
            self.wake.notify_one();
        }
    }

    pub(crate) fn queued(&self) -> usize {
        self.queue.lock().map(|q| q.len()).unwrap_or(0)
    }

    /// Send what is queued now and wait until it has been sent (or `timeout` passes).
    pub(crate) async fn flush(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.queued() > 0 {
            let sent = self.sent.notified();
            self.wake.notify_one();
            if tokio::time::timeout_at(deadline, sent).await.is_err() {
                return;
            }
        }
        // A batch taken off the queue may still be on its way.
        let sent = self.sent.notified();
        self.wake.notify_one();
        let _ = tokio::time::timeout_at(deadline, sent).await;
    }

    /// Flush, then stop the task and close the exporter.
    pub(crate) async fn close(&self, timeout: Duration) {
        self.flush(timeout).await;
        self.closing.store(true, Ordering::Release);
        let sent = self.sent.notified();
        self.wake.notify_one();
        let _ = tokio::time::timeout(timeout, sent).await;
    }

    async fn run(self: Arc<Self>, exporter: Box<dyn Exporter>) {
        loop {
            let _ = tokio::time::timeout(FLUSH_EVERY, self.wake.notified()).await;
            loop {
                let batch: Vec<Arc<Finished>> = {
                    let mut queue = self
                        .queue
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let take = queue.len().min(BATCH);
                    queue.drain(..take).collect()
                };
                if batch.is_empty() {
                    break;
                }
                self.send(exporter.as_ref(), &batch).await;
            }
            if self.closing.load(Ordering::Acquire) {
                if let Err(e) = exporter.close().await {
                    tracing::warn!(sink = self.name, error = %e.message, "closing a log sink failed");
                }
                self.sent.notify_waiters();
                return;
            }
            self.sent.notify_waiters();
        }
    }

    /// One batch, tried up to `TRIES` times.
    async fn send(&self, exporter: &dyn Exporter, batch: &[Arc<Finished>]) {
        let mut wait = FIRST_BACKOFF;
        for attempt in 1..=TRIES {
            match exporter.export(batch).await {
                Ok(()) => {
                    self.counters
                        .exported
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if !self.counters.healthy.swap(true, Ordering::Relaxed) {
                        tracing::info!(sink = self.name, "log sink is accepting records again");
                    }
                    return;
                }
                Err(e) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    if self.counters.healthy.swap(false, Ordering::Relaxed) {
                        tracing::warn!(sink = self.name, error = %e.message, "log sink export failed");
                    }
                    if let Ok(mut last) = self.counters.last_error.lock() {
                        *last = Some(e.message.clone());
                    }
                    if !e.retryable || attempt == TRIES || self.closing.load(Ordering::Acquire) {
                        break;
                    }
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
        self.counters
            .failed
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
}
