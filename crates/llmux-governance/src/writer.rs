//! The spend writer: spend records queue in memory and background threads write them in
//! batches (one transaction each: log rows, owner counters, daily rollups). The request path only
//! enqueues. The writers have their own OS threads, runtimes and database connection, so building
//! and running a batch never holds up the request runtime (with `--workers 1` that runtime is a
//! single thread: a batch written there stalled every request for milliseconds). On SQLite two
//! threads share the connection (see `Role`): one that yields the CPU to requests and one that
//! keeps up when the CPU is saturated. When the queue is full, records are folded into per-owner
//! aggregates instead of blocking or being dropped; a failed write is retried until it succeeds;
//! `shutdown` drains everything. Nothing a request settled is lost on a graceful stop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llmux_store::{Kind, SpendRecord, SqliteSpendWriter, Store};

use super::budget::Ledger;

/// A queue this long wakes the background writer before `LINGER` is up.
const BATCH: usize = 500;
/// A queue this long wakes the catch-up writer: the background writer is not getting the CPU.
const BEHIND: usize = 4 * BATCH;
/// Records per transaction on PostgreSQL. Its one writer runs at normal priority on the request
/// path's core(s): a transaction is a few milliseconds of CPU at most, and the writer yields
/// between transactions, so a burst of spend writing delays requests by at most about one.
const PER_TRANSACTION: usize = 100;
/// Records per transaction on SQLite, where the background writer yields the CPU to requests
/// whatever it is doing and the catch-up writer runs only when the core is saturated anyway.
/// Larger transactions rewrite the B-trees' last pages and the rollup rows less often: WAL
/// writes per record 0.46 -> 0.29 and closed-loop chat +6% against 100 (measured on one core).
const PER_SQLITE_TRANSACTION: usize = 500;
/// How long the writer sleeps between batches when the queue stays short. It bounds what a
/// crash can lose in `batched` mode (measured with `kill -9` under load: about this plus one
/// commit); under load `BATCH` wakes the writer sooner.
const LINGER: Duration = Duration::from_millis(100);
/// How often the catch-up writer looks at the queue's age, and the age at which it takes the
/// queue itself (the background writer is starved of CPU): together with a transaction's commit
/// they bound what a crash can lose in `batched` mode to under 250 ms of traffic.
const CATCH_UP_POLL: Duration = Duration::from_millis(20);
const MAX_QUEUE_AGE: Duration = Duration::from_millis(120);

/// What a writer thread waits for.
///
/// With the gateway on one core, a writer at normal priority preempts the request thread when it
/// wakes (measured at 50% load: +0.6 ms on the request p99). So on SQLite the regular writing is
/// done by a `Background` thread at `SCHED_IDLE` (Linux), which runs only on CPU time requests
/// leave unused. When the core is saturated that thread gets almost nothing, so a `CatchUp`
/// thread at normal priority wakes once the queue passes `BEHIND` and writes until it is short
/// again: under full load spend logs keep up as they did with one writer, instead of being folded
/// into aggregates. The two share one connection, one transaction at a time. When load jumps
/// while the background writer is inside a transaction, that transaction finishes on the sliver
/// of CPU `SCHED_IDLE` still gets (a 500-record transaction is ~2 ms of CPU, under a second at
/// that share) and the catch-up writer waits for it; the queue absorbs the wait (its default
/// capacity, 100,000 records, is three seconds at 30,000 req/s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Wakes every `LINGER`, or when the queue reaches `BATCH`.
    Background,
    /// Wakes when the queue reaches `BEHIND`.
    CatchUp,
}

type AggregateKey = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
);

#[derive(Debug, Default)]
struct Shared {
    /// Records waiting for the writer. A plain locked vector, not a channel: the request path
    /// pushes without waking anyone, and the writer takes the whole queue every `LINGER` (or
    /// when it reaches `BATCH`), so there is one cross-thread wake-up per batch instead of one
    /// per request.
    queue: Mutex<Vec<SpendRecord>>,
    /// Acknowledgements owed to requests waiting for their record's commit (`sync`
    /// durability). Pushed and taken under the queue's lock, so a take holds exactly the acks
    /// of the records it took.
    acks: Mutex<Vec<tokio::sync::oneshot::Sender<()>>>,
    /// When the queue last went from empty to holding a record (ms since `epoch`).
    oldest_ms: AtomicU64,
    epoch: Option<std::time::Instant>,
    /// `sync` durability: requests wait on commits, so no writer runs at idle priority.
    durable: bool,
    /// Writer threads that started (none: records are written directly).
    writers: AtomicU64,
    /// Wakes the catch-up writer when the queue gets its first record, to watch its age.
    first: tokio::sync::Notify,
    /// Wakes the background writer early (a full batch, or shutdown).
    wake: tokio::sync::Notify,
    /// Wakes the catch-up writer (the queue reached `behind_at`, or shutdown).
    behind: tokio::sync::Notify,
    behind_at: usize,
    /// No more records are taken from the request path.
    closed: std::sync::atomic::AtomicBool,
    capacity: usize,
    /// Records folded together while the queue was full (or spend logs are disabled).
    aggregates: Mutex<HashMap<AggregateKey, SpendRecord>>,
    /// Records accepted and not yet written (queued, aggregated, or in a batch being written).
    pending: AtomicU64,
    written: AtomicU64,
    aggregated: AtomicU64,
}

/// Handle to the writer task.
#[derive(Debug)]
pub struct SpendWriter {
    store: Store,
    ledger: Arc<Ledger>,
    shared: Arc<Shared>,
    aggregate_all: bool,
    /// Each fires when its writer thread has written everything and stopped.
    done: Mutex<Vec<tokio::sync::oneshot::Receiver<()>>>,
}

fn aggregate_key(r: &SpendRecord) -> AggregateKey {
    (
        r.api_key.clone(),
        r.user_id.clone(),
        r.team_id.clone(),
        r.organization_id.clone(),
        r.end_user.clone(),
        r.model_group.clone(),
        r.model.clone(),
        r.deployment_id.clone(),
        r.status.clone(),
        llmux_store::utc_day(r.start_time),
    )
}

impl Shared {
    fn elapsed_ms(&self) -> u64 {
        self.epoch.map_or(0, |e| e.elapsed().as_millis() as u64)
    }

    /// How long the oldest queued record has waited (zero for an empty queue).
    fn queue_age(&self, queued: usize) -> Duration {
        if queued == 0 {
            return Duration::ZERO;
        }
        let since = self.oldest_ms.load(Ordering::Acquire);
        Duration::from_millis(self.elapsed_ms().saturating_sub(since))
    }

    fn fold(&self, r: SpendRecord) {
        self.aggregated.fetch_add(1, Ordering::Relaxed);
        self.pending.fetch_add(1, Ordering::AcqRel);
        let mut map = self
            .aggregates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = aggregate_key(&r);
        if map.contains_key(&key) {
            // Folded into a record already counted as pending.
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
        let entry = map.entry(key).or_insert_with(|| SpendRecord {
            request_id: String::new(),
            call_type: "aggregated".into(),
            start_time: r.start_time,
            ..r.clone()
        });
        if entry.request_id.is_empty() {
            entry.request_id = format!("agg-{}", uuid::Uuid::new_v4().simple());
            entry.prompt_tokens = 0;
            entry.completion_tokens = 0;
            entry.cached_tokens = 0;
            entry.reasoning_tokens = 0;
            entry.total_tokens = 0;
            entry.spend = 0.0;
            entry.tags.clear();
        }
        entry.prompt_tokens += r.prompt_tokens;
        entry.completion_tokens += r.completion_tokens;
        entry.cached_tokens += r.cached_tokens;
        entry.reasoning_tokens += r.reasoning_tokens;
        entry.total_tokens += r.total_tokens;
        entry.spend += r.spend;
        entry.end_time = entry.end_time.max(r.end_time);
    }

    fn take_aggregates(&self) -> Vec<SpendRecord> {
        let mut map = self
            .aggregates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.drain().map(|(_, r)| r).collect()
    }
}

impl SpendWriter {
    /// Start the writer. `aggregate_all` (spend logs disabled) keeps only aggregates.
    pub fn start(
        store: Store,
        ledger: Arc<Ledger>,
        capacity: usize,
        aggregate_all: bool,
    ) -> SpendWriter {
        Self::start_with(store, ledger, capacity, aggregate_all, false)
    }

    /// Start the writer; with `durable`, for `sync` durability (`submit_durable`), its threads
    /// all run at normal priority.
    pub fn start_with(
        store: Store,
        ledger: Arc<Ledger>,
        capacity: usize,
        aggregate_all: bool,
        durable: bool,
    ) -> SpendWriter {
        let capacity = capacity.max(1);
        let shared = Arc::new(Shared {
            capacity,
            behind_at: BEHIND.min(capacity),
            epoch: Some(std::time::Instant::now()),
            durable,
            ..Shared::default()
        });
        let mut done = Vec::new();
        match store.sqlite_spend_writer() {
            Ok(Some(conn)) => {
                let conn = Arc::new(Mutex::new(conn));
                for role in [Role::Background, Role::CatchUp] {
                    let sink = Sink::Sqlite(Arc::clone(&conn));
                    done.extend(spawn(role, sink, &ledger, &shared));
                }
            }
            other => {
                if let Err(e) = other {
                    tracing::warn!(error = %e, "spend writer: using the shared pool");
                }
                // PostgreSQL: one writer at normal priority. Its pool is bound to the writer's
                // runtime, and the database does the heavy part elsewhere.
                let sink = Sink::Pool(store.clone());
                done.extend(spawn(Role::Background, sink, &ledger, &shared));
            }
        }
        shared.writers.store(done.len() as u64, Ordering::Release);
        SpendWriter {
            store,
            ledger,
            shared,
            aggregate_all,
            done: Mutex::new(done),
        }
    }

    /// Queue a record; never waits.
    pub fn submit(&self, record: SpendRecord) {
        if self.aggregate_all {
            self.shared.fold(record);
            return;
        }
        let mut queue = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Read under the queue's lock, which `shutdown` takes to set it: a record pushed here
        // is always in the writer's final take.
        if self.shared.closed.load(Ordering::Acquire) {
            drop(queue);
            // The writer has stopped (a request outlived the drain): write this one directly.
            self.write_directly(record, None);
            return;
        }
        if queue.len() >= self.shared.capacity {
            drop(queue);
            self.shared.fold(record);
            return;
        }
        self.shared.pending.fetch_add(1, Ordering::AcqRel);
        queue.push(record);
        let queued = queue.len();
        if queued == 1 {
            self.shared
                .oldest_ms
                .store(self.shared.elapsed_ms(), Ordering::Release);
            self.shared.first.notify_one();
        }
        drop(queue);
        if queued == BATCH {
            self.shared.wake.notify_one();
        }
        if queued == self.shared.behind_at {
            self.shared.behind.notify_one();
        }
    }

    /// Queue a record and learn when it is committed (`sync` durability): the receiver fires
    /// once the transaction holding it is. The writer is woken at once; records that queue while
    /// it writes go together in its next transaction (group commit), so concurrent requests
    /// share commits. A durable record is never folded into an aggregate.
    pub fn submit_durable(&self, record: SpendRecord) -> tokio::sync::oneshot::Receiver<()> {
        let (ack, committed) = tokio::sync::oneshot::channel();
        if self.aggregate_all {
            // Spend logs are off: there is no row to wait for.
            self.shared.fold(record);
            let _ = ack.send(());
            return committed;
        }
        let mut queue = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.shared.closed.load(Ordering::Acquire)
            || self.shared.writers.load(Ordering::Acquire) == 0
        {
            drop(queue);
            self.write_directly(record, Some(ack));
            return committed;
        }
        self.shared.pending.fetch_add(1, Ordering::AcqRel);
        queue.push(record);
        if queue.len() == 1 {
            self.shared
                .oldest_ms
                .store(self.shared.elapsed_ms(), Ordering::Release);
        }
        self.shared
            .acks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(ack);
        drop(queue);
        // The writer at normal priority: a request is waiting.
        self.shared.behind.notify_one();
        self.shared.wake.notify_one();
        committed
    }

    /// Write one record on its own, through the shared pool (no writer thread takes it: they
    /// stopped, or never started), and acknowledge it once committed.
    fn write_directly(&self, record: SpendRecord, ack: Option<tokio::sync::oneshot::Sender<()>>) {
        self.shared.pending.fetch_add(1, Ordering::AcqRel);
        let (store, ledger, shared) = (
            self.store.clone(),
            Arc::clone(&self.ledger),
            Arc::clone(&self.shared),
        );
        tokio::spawn(async move {
            let mut sink = Sink::Pool(store);
            write(&mut sink, &ledger, std::slice::from_ref(&record)).await;
            shared.written.fetch_add(1, Ordering::Relaxed);
            shared.pending.fetch_sub(1, Ordering::AcqRel);
            if let Some(ack) = ack {
                let _ = ack.send(());
            }
        });
    }

    /// Nothing accepted is waiting to be written.
    pub fn idle(&self) -> bool {
        self.shared.pending.load(Ordering::Acquire) == 0
    }

    /// Records written so far, and records that were folded into aggregates.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.written.load(Ordering::Relaxed),
            self.shared.aggregated.load(Ordering::Relaxed),
        )
    }

    /// Stop accepting, write everything queued, and wait for it.
    pub async fn shutdown(&self) {
        {
            let _queue = self
                .shared
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.shared.closed.store(true, Ordering::Release);
        }
        self.shared.wake.notify_one();
        self.shared.behind.notify_one();
        self.shared.first.notify_one();
        let done = std::mem::take(
            &mut *self
                .done
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for writer in done {
            let _ = writer.await;
        }
    }
}

/// Start one writer thread with its own runtime; `None` if the thread cannot be started.
fn spawn(
    role: Role,
    mut sink: Sink,
    ledger: &Arc<Ledger>,
    shared: &Arc<Shared>,
) -> Option<tokio::sync::oneshot::Receiver<()>> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (ledger, shared) = (Arc::clone(ledger), Arc::clone(shared));
    let name = match role {
        Role::Background => "llmux-spend",
        // Linux keeps 15 bytes of a thread's name (longer ones are not set at all).
        Role::CatchUp => "llmux-catch-up",
    };
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if role == Role::Background && matches!(sink, Sink::Sqlite(_)) && !shared.durable {
                yield_cpu_to_requests();
            }
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(async move {
                    if let Sink::Pool(store) = &sink {
                        sink = Sink::Pool(own_pool(store).await);
                    }
                    run(sink, ledger, shared, role).await;
                }),
                Err(e) => tracing::error!(error = %e, "spend writer: cannot start a runtime"),
            }
            let _ = done_tx.send(());
        });
    match spawned {
        Ok(_) => Some(done_rx),
        Err(e) => {
            tracing::error!(error = %e, thread = name, "cannot start a spend writer thread: spend logs and counters will not be written");
            None
        }
    }
}

/// Put the calling thread at `SCHED_IDLE`: it runs only when nothing else on its core wants to.
#[cfg(target_os = "linux")]
fn yield_cpu_to_requests() {
    use thread_priority::unix::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadSchedulePolicy,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if let Err(e) = set_thread_priority_and_policy(
        thread_native_id(),
        thread_priority::ThreadPriority::Min,
        idle,
    ) {
        tracing::warn!(error = ?e, "spend writer: cannot lower its scheduling priority; it competes with requests for the CPU");
    }
}

#[cfg(not(target_os = "linux"))]
fn yield_cpu_to_requests() {}

/// A pool of the writer's own on its runtime; the shared pool still works from this runtime
/// (while the main one runs) if a second connection cannot be opened.
async fn own_pool(store: &Store) -> Store {
    match store.connect_again(1).await {
        Ok(own) => own,
        Err(e) => {
            tracing::warn!(error = %e, "spend writer: using the shared pool");
            store.clone()
        }
    }
}

/// Where a writer thread writes: SQLite through the writers' own connection (synchronously: the
/// thread has nothing else to do), PostgreSQL through a pool bound to the writer's runtime.
enum Sink {
    Sqlite(Arc<Mutex<SqliteSpendWriter>>),
    Pool(Store),
}

impl Sink {
    fn per_transaction(&self) -> usize {
        match self {
            Sink::Sqlite(_) => PER_SQLITE_TRANSACTION,
            Sink::Pool(_) => PER_TRANSACTION,
        }
    }

    async fn record(&mut self, batch: &[SpendRecord]) -> llmux_store::Result<u64> {
        match self {
            Sink::Sqlite(conn) => conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .record_spend(batch),
            Sink::Pool(store) => store.record_spend(batch).await,
        }
    }
}

async fn run(mut sink: Sink, ledger: Arc<Ledger>, shared: Arc<Shared>, role: Role) {
    let mut spare: Vec<SpendRecord> = Vec::with_capacity(BATCH);
    loop {
        // `closed` is read before the queue is taken: a record queued before shutdown is in
        // this take or an earlier one, of this writer or the other (records submitted after it
        // are written directly).
        let closed = shared.closed.load(Ordering::Acquire);
        let queued = shared
            .queue
            .lock()
            .map(|q| q.len())
            .unwrap_or_else(|e| e.into_inner().len());
        if !closed {
            match role {
                Role::Background if queued < BATCH => {
                    tokio::select! {
                        () = shared.wake.notified() => {}
                        () = tokio::time::sleep(LINGER) => {}
                    }
                }
                Role::CatchUp if queued < shared.behind_at => {
                    // Woken for a backlog or a waiting request, or, when the background writer
                    // is starved, once the queue's oldest record is about to outlive the loss
                    // window. An empty queue is not watched (no wake-ups while idle).
                    loop {
                        let queued = shared.queue.lock().map(|q| q.len()).unwrap_or(0);
                        if shared.closed.load(Ordering::Acquire) {
                            break;
                        }
                        if queued == 0 {
                            tokio::select! {
                                () = shared.behind.notified() => break,
                                () = shared.first.notified() => continue,
                            }
                        }
                        if shared.queue_age(queued) >= MAX_QUEUE_AGE {
                            break;
                        }
                        tokio::select! {
                            () = shared.behind.notified() => break,
                            () = tokio::time::sleep(CATCH_UP_POLL) => {}
                        }
                    }
                }
                _ => {}
            }
        }
        // The queue is swapped for the last batch's emptied vector, so the request path pushes
        // into room it already has instead of growing a fresh vector every batch.
        let (mut records, acks) = {
            let mut queue = shared
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let acks = std::mem::take(
                &mut *shared
                    .acks
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            (
                std::mem::replace(&mut *queue, std::mem::take(&mut spare)),
                acks,
            )
        };
        records.extend(shared.take_aggregates());
        for (i, batch) in records.chunks(sink.per_transaction()).enumerate() {
            if i > 0 {
                std::thread::yield_now();
            }
            write(&mut sink, &ledger, batch).await;
            shared
                .written
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            shared
                .pending
                .fetch_sub(batch.len() as u64, Ordering::AcqRel);
        }
        // Every record taken is committed: the requests waiting on them may answer.
        for ack in acks {
            let _ = ack.send(());
        }
        if closed && records.is_empty() {
            return;
        }
        records.clear();
        // Room for a burst's backlog is not kept once the burst is over (a batch's worth, at
        // most ~0.4 MB per writer, is).
        if records.capacity() <= 2 * BATCH {
            spare = records;
        }
    }
}

/// Write one batch, retrying until the database takes it.
async fn write(sink: &mut Sink, ledger: &Ledger, batch: &[SpendRecord]) {
    let mut delay = Duration::from_millis(100);
    loop {
        match sink.record(batch).await {
            Ok(_) => break,
            Err(e) => {
                tracing::error!(error = %e, records = batch.len(), retry_in_ms = delay.as_millis() as u64, "cannot write spend; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    let mut owners: HashMap<(Kind, String), f64> = HashMap::new();
    for r in batch {
        for (kind, id) in r.owners() {
            if !id.is_empty() {
                *owners.entry((kind, id.to_owned())).or_default() += r.spend;
            }
        }
    }
    for (owner, amount) in owners {
        ledger.flushed(&owner, amount);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::sqlite_store_with_key;

    fn record(i: usize) -> SpendRecord {
        SpendRecord {
            request_id: format!("r{i}"),
            api_key: "k".into(),
            prompt_tokens: 1,
            total_tokens: 1,
            spend: 0.001,
            start_time: 1_795_392_000_000 + i as i64,
            end_time: 1_795_392_000_001 + i as i64,
            status: "success".into(),
            ..Default::default()
        }
    }

    /// The catch-up writer alone (as when the background writer gets no CPU): it leaves a short
    /// queue alone and writes the whole queue once it reaches `BEHIND`.
    #[tokio::test]
    async fn the_catch_up_writer_wakes_when_the_queue_falls_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store_with_key(dir.path()).await;
        let ledger = Arc::new(Ledger::default());
        let shared = Arc::new(Shared {
            capacity: 100_000,
            behind_at: BEHIND,
            ..Shared::default()
        });
        let conn = store.sqlite_spend_writer().unwrap().unwrap();
        let sink = Sink::Sqlite(Arc::new(Mutex::new(conn)));
        let done = spawn(Role::CatchUp, sink, &ledger, &shared).unwrap();
        let writer = SpendWriter {
            store: store.clone(),
            ledger,
            shared,
            aggregate_all: false,
            done: Mutex::new(vec![done]),
        };
        for i in 0..BEHIND - 1 {
            writer.submit(record(i));
        }
        tokio::time::sleep(LINGER + Duration::from_millis(100)).await;
        assert_eq!(writer.counts(), (0, 0), "a short queue waits");
        writer.submit(record(BEHIND - 1));
        for _ in 0..500 {
            if writer.idle() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(writer.counts(), (BEHIND as u64, 0));
        let key = store.get(Kind::Key, "k").await.unwrap().unwrap();
        assert!(
            (key.spend - BEHIND as f64 * 0.001).abs() < 1e-9,
            "{}",
            key.spend
        );
        // Shutdown wakes it and drains what is left below the mark.
        writer.submit(record(BEHIND));
        writer.shutdown().await;
        assert!(writer.idle());
        assert_eq!(writer.counts(), (BEHIND as u64 + 1, 0));
    }

    /// Scheduling policy of this process's threads with the given name (`/proc`, field 41).
    #[cfg(target_os = "linux")]
    fn thread_policies(name: &str) -> Vec<u32> {
        let mut policies = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let path = task.unwrap().path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if comm.trim_end() != name {
                continue;
            }
            let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
            // Fields after the parenthesized name start at field 3.
            let Some((_, rest)) = stat.rsplit_once(") ") else {
                continue;
            };
            if let Some(policy) = rest.split(' ').nth(41 - 3) {
                policies.push(policy.parse().unwrap());
            }
        }
        policies
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn on_sqlite_the_background_writer_yields_the_cpu_and_the_catch_up_writer_does_not() {
        const SCHED_OTHER: u32 = 0;
        const SCHED_IDLE: u32 = 5;
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store_with_key(dir.path()).await;
        let writer = SpendWriter::start(store, Arc::new(Ledger::default()), 1000, false);
        // A thread names itself (and the background one sets its policy) once it runs.
        let (mut background, mut catch_up) = (Vec::new(), Vec::new());
        for _ in 0..500 {
            background = thread_policies("llmux-spend");
            catch_up = thread_policies("llmux-catch-up");
            if background.contains(&SCHED_IDLE) && !catch_up.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(background.contains(&SCHED_IDLE), "{background:?}");
        assert!(catch_up.contains(&SCHED_OTHER), "{catch_up:?}");
        writer.submit(record(1));
        writer.shutdown().await;
        assert_eq!(writer.counts(), (1, 0));
    }

    #[tokio::test]
    async fn a_full_queue_aggregates_and_shutdown_writes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store_with_key(dir.path()).await;
        let ledger = Arc::new(Ledger::default());
        let writer = SpendWriter::start(store.clone(), Arc::clone(&ledger), 1, false);
        // The writers take a few records per wake-up from a one-slot queue; this loop
        // submits far faster, so most records are folded.
        for i in 0..1000 {
            writer.submit(SpendRecord {
                request_id: format!("r{i}"),
                api_key: "k".into(),
                model_group: if i % 2 == 0 { "a" } else { "b" }.into(),
                prompt_tokens: 1,
                total_tokens: 1,
                spend: 0.001,
                start_time: 1_795_392_000_000,
                end_time: 1_795_392_000_001,
                status: "success".into(),
                ..Default::default()
            });
        }
        let (_, aggregated) = writer.counts();
        assert!(aggregated > 0 && aggregated < 1000, "{aggregated}");
        writer.shutdown().await;
        assert!(writer.idle());
        let (written, _) = writer.counts();
        let key = store.get(Kind::Key, "k").await.unwrap().unwrap();
        assert!((key.spend - 1.0).abs() < 1e-9, "{}", key.spend);
        let rows = store
            .spend_logs(&llmux_store::SpendFilter::default())
            .await
            .unwrap();
        // Each record is a row of its own or part of an aggregate (one per model group per take
        // of the aggregates; with a one-slot queue the catch-up writer takes them often).
        let aggregates = rows.iter().filter(|r| r.call_type == "aggregated").count();
        assert!(aggregates >= 1, "{rows:?}");
        assert_eq!(rows.len() as u64, written, "every written record is a row");
        assert_eq!(rows.iter().map(|r| r.prompt_tokens).sum::<i64>(), 1000);
        assert!(rows
            .iter()
            .any(|r| r.call_type == "aggregated" && r.request_id.starts_with("agg-")));
        // A record that arrives after shutdown is still written.
        writer.submit(SpendRecord {
            request_id: "late".into(),
            api_key: "k".into(),
            spend: 0.5,
            start_time: 1,
            end_time: 2,
            ..Default::default()
        });
        for _ in 0..100 {
            if writer.idle() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let key = store.get(Kind::Key, "k").await.unwrap().unwrap();
        assert!((key.spend - 1.5).abs() < 1e-9, "{}", key.spend);
    }
}
