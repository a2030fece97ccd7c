//! One bounded queue and one export task per sink: a finished request is pushed (a lock held
//! for a `VecDeque::push_back`, never a wait on the sink); the task sends batches of it every
//! `FLUSH_EVERY` or at `BATCH` records, retries a failed batch with backoff, and drops (and
//! counts) what does not fit rather than grow. A dead or slow sink therefore costs requests
//! nothing but its records.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
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

/// The bytes of request and answer a sink's queue may hold: a queue bounded by count alone
/// could pin 10,000 large prompts while a sink is down.
pub(crate) const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

/// The queue and the bytes its records hold.
#[derive(Default)]
struct Queue {
    records: VecDeque<Arc<Finished>>,
    bytes: usize,
}

/// A sink's queue and the task that empties it.
pub(crate) struct Pipeline {
    pub(crate) name: &'static str,
    queue: Mutex<Queue>,
    capacity: usize,
    wake: Notify,
    /// Woken each time the task has sent what was queued (flushes wait for it).
    sent: Notify,
    /// No more records are taken; the task sends what is queued, closes the exporter, stops.
    closing: AtomicBool,
    /// The task has stopped.
    stopped: AtomicBool,
    stop: Notify,
    pub(crate) counters: SinkCounters,
}

impl Pipeline {
    /// A pipeline for `exporter` holding at most `capacity` records; its task runs on the
    /// current runtime until the pipeline is closed or dropped.
    pub(crate) fn start(
        name: &'static str,
        exporter: Box<dyn Exporter>,
        capacity: usize,
    ) -> Arc<Pipeline> {
        let pipeline = Arc::new(Pipeline {
            name,
            queue: Mutex::new(Queue::default()),
            capacity: capacity.max(1),
            wake: Notify::new(),
            sent: Notify::new(),
            closing: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            stop: Notify::new(),
            counters: SinkCounters {
                healthy: AtomicBool::new(true),
                ..Default::default()
            },
        });
        tokio::spawn(run(Arc::downgrade(&pipeline), exporter));
        pipeline
    }

    /// Queue a record; a full queue (by count or by bytes), or a closed sink, drops it
    /// (counted).
    pub(crate) fn push(&self, record: Arc<Finished>) {
        let weight = record.weight();
        let len = {
            let mut queue = self
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let full =
                queue.records.len() >= self.capacity || queue.bytes + weight > MAX_QUEUED_BYTES;
            if full || self.closing.load(Ordering::Acquire) {
                drop(queue);
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            queue.bytes += weight;
            queue.records.push_back(record);
            queue.records.len()
        };
        if len == BATCH {
            self.wake.notify_one();
        }
    }

    pub(crate) fn queued(&self) -> usize {
        self.queue.lock().map(|q| q.records.len()).unwrap_or(0)
    }

    /// Up to a batch of the oldest records.
    fn take_batch(&self) -> Vec<Arc<Finished>> {
        let mut queue = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let take = queue.records.len().min(BATCH);
        let batch: Vec<Arc<Finished>> = queue.records.drain(..take).collect();
        let weight: usize = batch.iter().map(|r| r.weight()).sum();
        queue.bytes = queue.bytes.saturating_sub(weight);
        batch
    }

    /// Send what is queued now and wait until it has been sent (or `timeout` passes).
    pub(crate) async fn flush(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let sent = self.sent.notified();
            self.wake.notify_one();
            if tokio::time::timeout_at(deadline, sent).await.is_err() {
                return;
            }
            // A record queued while the task was sending waits for the next round.
            if self.queued() == 0 {
                return;
            }
        }
    }

    /// Take no more records, send what is queued, close the exporter; wait at most `timeout`.
    pub(crate) async fn close(&self, timeout: Duration) {
        self.closing.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.stopped.load(Ordering::Acquire) {
            let stopped = self.stop.notified();
            self.wake.notify_one();
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            if tokio::time::timeout_at(deadline, stopped).await.is_err() {
                tracing::warn!(sink = self.name, "log sink did not finish sending in time");
                return;
            }
        }
    }

    /// Send every queued record, a batch at a time.
    async fn send_queued(&self, exporter: &dyn Exporter) {
        loop {
            let batch = self.take_batch();
            if batch.is_empty() {
                return;
            }
            self.send(exporter, &batch).await;
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

/// The sink's task: every `FLUSH_EVERY`, or when woken, send what is queued; stop once the
/// pipeline is closing (after sending the rest) or gone (its owner dropped it unclosed).
async fn run(pipeline: Weak<Pipeline>, exporter: Box<dyn Exporter>) {
    loop {
        let Some(me) = pipeline.upgrade() else {
            let _ = exporter.close().await;
            return;
        };
        let _ = tokio::time::timeout(FLUSH_EVERY, me.wake.notified()).await;
        me.send_queued(exporter.as_ref()).await;
        if me.closing.load(Ordering::Acquire) {
            // What was pushed before `closing` was seen is queued too.
            me.send_queued(exporter.as_ref()).await;
            if let Err(e) = exporter.close().await {
                tracing::warn!(sink = me.name, error = %e.message, "closing a log sink failed");
            }
            me.stopped.store(true, Ordering::Release);
            me.stop.notify_waiters();
            me.sent.notify_waiters();
            return;
        }
        me.sent.notify_waiters();
    }
}
