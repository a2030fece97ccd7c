//! Per-deployment runtime state that strategies read and the attempt loop writes: in-flight
//! requests, per-minute usage and failures, latency windows, and cooldown (circuit breaker).
//!
//! State lives behind `StatsStore`; the router resolves each deployment's `DeploymentStats` once
//! per snapshot, so the hot path only touches atomics. A fleet shares it without adding work to
//! that path: a background task reports each instance's own numbers (`local_report`) and hands
//! back what the other instances reported (`set_fleet`), which the readers strategies use
//! (usage this minute, requests in flight, latency) add in. Minutes are wall-clock minutes, so
//! instances count the same ones. Time comes from tokio's clock, so tests can pause and advance
//! it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use llmux_config::RouterSettings;
use llmux_types::ErrorKind;
use tokio::time::Instant;

/// How many recent latencies the moving average keeps (LiteLLM keeps 10).
const LATENCY_WINDOW: usize = 10;
/// Longest cooldown an upstream's `Retry-After` can ask for.
const MAX_COOLDOWN: Duration = Duration::from_secs(300);
/// Failure-rate cooldown: at least this many requests in the minute, and half of them failed.
const FAILURE_RATE_MIN_REQUESTS: u64 = 5;

/// Where deployment state lives. One store outlives configuration reloads, so a deployment keeps
/// its health and statistics across them (keyed by deployment id).
pub trait StatsStore: Send + Sync + std::fmt::Debug {
    fn deployment(&self, id: &str) -> Arc<DeploymentStats>;
    /// A counter per model group, for round-robin.
    fn group_counter(&self, group: &str) -> Arc<AtomicU64>;
}

/// The in-process store.
#[derive(Debug)]
pub struct InMemoryStats {
    epoch: Instant,
    deployments: Mutex<HashMap<String, Arc<DeploymentStats>>>,
    groups: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl Default for InMemoryStats {
    fn default() -> Self {
        InMemoryStats {
            epoch: Instant::now(),
            deployments: Mutex::default(),
            groups: Mutex::default(),
        }
    }
}

impl StatsStore for InMemoryStats {
    fn deployment(&self, id: &str) -> Arc<DeploymentStats> {
        let mut map = self
            .deployments
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            map.entry(id.to_owned())
                .or_insert_with(|| Arc::new(DeploymentStats::new(self.epoch))),
        )
    }

    fn group_counter(&self, group: &str) -> Arc<AtomicU64> {
        let mut map = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(group.to_owned()).or_default())
    }
}

const HEALTHY: u8 = 0;
const COOLING: u8 = 1;

/// Whether a deployment may take a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Healthy,
    /// Cooldown is over: one probe request may go through (half-open).
    Probe,
    /// Cooling down for this much longer.
    Cooling(Duration),
}

/// Counters for the current minute; reset lazily when the minute changes.
#[derive(Debug, Default)]
struct MinuteWindow {
    minute: AtomicU64,
    requests: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    tokens: AtomicU64,
    failures_by_kind: [AtomicU64; ErrorKind::ALL.len()],
}

impl MinuteWindow {
    fn roll(&self, minute: u64) {
        let seen = self.minute.load(Ordering::Acquire);
        if seen != minute
            && self
                .minute
                .compare_exchange(seen, minute, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.requests.store(0, Ordering::Relaxed);
            self.successes.store(0, Ordering::Relaxed);
            self.failures.store(0, Ordering::Relaxed);
            self.tokens.store(0, Ordering::Relaxed);
            for counter in &self.failures_by_kind {
                counter.store(0, Ordering::Relaxed);
            }
        }
    }
}

fn kind_index(kind: ErrorKind) -> usize {
    ErrorKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

#[derive(Debug, Default)]
struct Latency {
    per_token_ms: VecDeque<f64>,
    ttft_ms: VecDeque<f64>,
}

fn push_window(window: &mut VecDeque<f64>, value: f64) {
    if window.len() == LATENCY_WINDOW {
        window.pop_front();
    }
    window.push_back(value);
}

fn mean(window: &VecDeque<f64>) -> Option<f64> {
    (!window.is_empty()).then(|| window.iter().sum::<f64>() / window.len() as f64)
}

/// What the fleet's other instances last reported for a deployment (none without a fleet).
#[derive(Debug, Default)]
struct FleetShare {
    /// The wall-clock minute `requests` and `tokens` count.
    minute: AtomicU64,
    requests: AtomicU64,
    tokens: AtomicU64,
    in_flight: AtomicU64,
    /// Means over the reporting instances (bits of an f64; 0 bits: no data).
    per_token_ms: AtomicU64,
    ttft_ms: AtomicU64,
    /// Instances whose latency means went into those.
    latency_reporters: AtomicU64,
}

/// One instance's own numbers for a deployment, as it reports them to the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LocalReport {
    /// Wall-clock minute (unix ms / 60,000).
    pub minute: u64,
    pub requests: u64,
    pub tokens: u64,
    pub in_flight: u64,
    pub per_token_ms: Option<f64>,
    pub ttft_ms: Option<f64>,
}

/// What the other instances of a fleet reported for a deployment, summed (usage, in flight) and
/// averaged (latency means, `latency_reporters` of them).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FleetReport {
    pub minute: u64,
    pub requests: u64,
    pub tokens: u64,
    pub in_flight: u64,
    pub per_token_ms: Option<f64>,
    pub ttft_ms: Option<f64>,
    pub latency_reporters: u64,
}

/// Runtime state of one deployment.
#[derive(Debug)]
pub struct DeploymentStats {
    epoch: Instant,
    /// Unix ms at `epoch`, so minutes are the wall clock's (the same on every instance).
    epoch_unix_ms: u64,
    fleet: FleetShare,
    in_flight: AtomicU64,
    state: AtomicU8,
    cooling_until_ms: AtomicU64,
    probe_in_flight: AtomicBool,
    /// The current cooldown was taken here (not announced by another instance).
    cooled_here: AtomicBool,
    last_failure: AtomicU8,
    /// The last failure's message and when (ms since `epoch`), for the error that says why a
    /// group has no healthy deployment (written only on failures).
    last_failure_message: Mutex<Option<(u64, Arc<str>)>>,
    window: MinuteWindow,
    latency: Mutex<Latency>,
}

/// A point-in-time view for the admin endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSnapshot {
    pub healthy: bool,
    pub cooling_for: Option<Duration>,
    pub in_flight: u64,
    pub requests_this_minute: u64,
    pub failures_this_minute: u64,
    pub successes_this_minute: u64,
    pub tokens_this_minute: u64,
    pub last_failure: Option<ErrorKind>,
    pub latency_ms_per_token: Option<f64>,
    pub time_to_first_token_ms: Option<f64>,
}

impl DeploymentStats {
    pub fn new(epoch: Instant) -> Self {
        let unix_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let since_epoch = Instant::now().saturating_duration_since(epoch).as_millis() as u64;
        DeploymentStats {
            epoch,
            epoch_unix_ms: unix_now.saturating_sub(since_epoch),
            fleet: FleetShare::default(),
            in_flight: AtomicU64::new(0),
            state: AtomicU8::new(HEALTHY),
            cooling_until_ms: AtomicU64::new(0),
            probe_in_flight: AtomicBool::new(false),
            cooled_here: AtomicBool::new(false),
            last_failure: AtomicU8::new(u8::MAX),
            last_failure_message: Mutex::default(),
            window: MinuteWindow::default(),
            latency: Mutex::default(),
        }
    }

    /// Remember why the deployment last failed (its error's message, cut to 300 bytes).
    pub fn note_failure(&self, message: &str) {
        let mut end = message.len().min(300);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        if let Ok(mut last) = self.last_failure_message.lock() {
            *last = Some((self.now_ms(), Arc::from(&message[..end])));
        }
    }

    /// The last failure's message, with how long ago it was noted.
    pub fn last_failure_message(&self) -> Option<(Duration, Arc<str>)> {
        let last = self.last_failure_message.lock().ok()?.clone()?;
        Some((
            Duration::from_millis(self.now_ms().saturating_sub(last.0)),
            last.1,
        ))
    }

    fn now_ms(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_millis() as u64
    }

    /// The wall-clock minute now.
    fn minute(&self) -> u64 {
        (self.epoch_unix_ms + self.now_ms()) / 60_000
    }

    fn window(&self) -> &MinuteWindow {
        self.window.roll(self.minute());
        &self.window
    }

    /// Requests in flight on this instance.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests in flight on every instance of the fleet (as last reported by the others).
    pub fn fleet_in_flight(&self) -> u64 {
        self.in_flight() + self.fleet.in_flight.load(Ordering::Relaxed)
    }

    /// Count a request as started, unless `limit` requests are already in flight (on the whole
    /// fleet, as far as this instance knows).
    pub fn try_begin(&self, limit: Option<u64>) -> bool {
        let Some(limit) = limit else {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
            return true;
        };
        let others = self.fleet.in_flight.load(Ordering::Relaxed);
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n + others < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// This instance's own numbers, for the fleet.
    pub fn local_report(&self) -> LocalReport {
        let w = self.window();
        let l = self.latency.lock().unwrap_or_else(PoisonError::into_inner);
        LocalReport {
            minute: w.minute.load(Ordering::Acquire),
            requests: w.requests.load(Ordering::Relaxed),
            tokens: w.tokens.load(Ordering::Relaxed),
            in_flight: self.in_flight(),
            per_token_ms: mean(&l.per_token_ms),
            ttft_ms: mean(&l.ttft_ms),
        }
    }

    /// What the fleet's other instances reported (replaces the last report).
    pub fn set_fleet(&self, report: FleetReport) {
        let f = &self.fleet;
        f.minute.store(report.minute, Ordering::Relaxed);
        f.requests.store(report.requests, Ordering::Relaxed);
        f.tokens.store(report.tokens, Ordering::Relaxed);
        f.in_flight.store(report.in_flight, Ordering::Relaxed);
        let bits = |v: Option<f64>| v.filter(|v| v.is_finite()).map_or(0, f64::to_bits);
        f.per_token_ms
            .store(bits(report.per_token_ms), Ordering::Relaxed);
        f.ttft_ms.store(bits(report.ttft_ms), Ordering::Relaxed);
        f.latency_reporters
            .store(report.latency_reporters, Ordering::Relaxed);
    }

    pub fn end(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    pub fn availability(&self) -> Availability {
        if self.state.load(Ordering::Acquire) == HEALTHY {
            return Availability::Healthy;
        }
        let until = self.cooling_until_ms.load(Ordering::Acquire);
        let now = self.now_ms();
        if now < until {
            return Availability::Cooling(Duration::from_millis(until - now));
        }
        if self.probe_in_flight.load(Ordering::Acquire) {
            // A probe is out; everyone else waits for its verdict.
            return Availability::Cooling(Duration::from_millis(100));
        }
        Availability::Probe
    }

    /// Claim the single half-open probe; `false` if another request holds it.
    pub fn try_acquire_probe(&self) -> bool {
        self.probe_in_flight
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Usage this minute, fleet-wide: (requests, tokens).
    pub fn minute_usage(&self) -> (u64, u64) {
        let w = self.window();
        let (mut requests, mut tokens) = (
            w.requests.load(Ordering::Relaxed),
            w.tokens.load(Ordering::Relaxed),
        );
        if self.fleet.minute.load(Ordering::Relaxed) == w.minute.load(Ordering::Relaxed) {
            requests += self.fleet.requests.load(Ordering::Relaxed);
            tokens += self.fleet.tokens.load(Ordering::Relaxed);
        }
        (requests, tokens)
    }

    pub fn record_request(&self) {
        self.window().requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_tokens(&self, tokens: u64) {
        self.window().tokens.fetch_add(tokens, Ordering::Relaxed);
    }

    /// Moving average of latency per output token (ms), and of time to first token (ms): this
    /// instance's, averaged with the fleet's other instances' (each instance counting once).
    pub fn latency(&self) -> (Option<f64>, Option<f64>) {
        let (per_token, ttft) = {
            let l = self.latency.lock().unwrap_or_else(PoisonError::into_inner);
            (mean(&l.per_token_ms), mean(&l.ttft_ms))
        };
        let others = self.fleet.latency_reporters.load(Ordering::Relaxed);
        if others == 0 {
            return (per_token, ttft);
        }
        let combine = |mine: Option<f64>, theirs: &AtomicU64| {
            let bits = theirs.load(Ordering::Relaxed);
            let theirs = (bits != 0).then(|| f64::from_bits(bits));
            match (mine, theirs) {
                (Some(m), Some(t)) => Some((m + t * others as f64) / (1 + others) as f64),
                (m, t) => m.or(t),
            }
        };
        (
            combine(per_token, &self.fleet.per_token_ms),
            combine(ttft, &self.fleet.ttft_ms),
        )
    }

    pub fn record_latency(&self, total: Duration, output_tokens: u64) {
        let per_token = total.as_secs_f64() * 1000.0 / output_tokens.max(1) as f64;
        push_window(
            &mut self
                .latency
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .per_token_ms,
            per_token,
        );
    }

    pub fn record_ttft(&self, ttft: Duration) {
        push_window(
            &mut self
                .latency
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .ttft_ms,
            ttft.as_secs_f64() * 1000.0,
        );
    }

    /// A successful attempt: a half-open probe closes the circuit (so does any answer while
    /// cooling). `true` when this answer was the half-open probe that closed it (what a fleet
    /// announces; a request that was already under way when the cooldown began proves little).
    pub fn record_success(&self) -> bool {
        self.window().successes.fetch_add(1, Ordering::Relaxed);
        let was_probe = self.probe_in_flight.swap(false, Ordering::AcqRel);
        let cooling = self.state.load(Ordering::Acquire) != HEALTHY;
        if cooling {
            self.recover();
        }
        cooling && was_probe
    }

    /// Another instance's probe found the deployment healthy: end a cooldown that came from
    /// the fleet, but not one this instance took itself and that still runs (its own
    /// `Retry-After`, say).
    pub fn recover_remote(&self) {
        let own_still_running = self.cooled_here.load(Ordering::Acquire)
            && self.now_ms() < self.cooling_until_ms.load(Ordering::Acquire);
        if !own_still_running {
            self.recover();
        }
    }

    /// Healthy again: the cooldown and this minute's failures are forgotten.
    pub fn recover(&self) {
        self.cooled_here.store(false, Ordering::Release);
        self.state.store(HEALTHY, Ordering::Release);
        self.cooling_until_ms.store(0, Ordering::Release);
        self.window.failures.store(0, Ordering::Relaxed);
        for counter in &self.window.failures_by_kind {
            counter.store(0, Ordering::Relaxed);
        }
    }

    /// A failed attempt; returns the cooldown it started, if any.
    ///
    /// LiteLLM's rules, plus a half-open state: a failed probe cools the deployment again;
    /// rate limits, auth, not-found and timeouts cool at once when the group has other
    /// deployments; otherwise a deployment cools when its failures of that kind this minute exceed
    /// `allowed_fails` (or its `allowed_fails_policy` entry), or when half of at least five
    /// requests this minute failed. Caller mistakes (bad requests, context too long, content
    /// filtered) cool only under an explicit policy entry. A single-deployment group is never
    /// cooled by one failure, but is after `allowed_fails`, so a dead upstream is not hammered.
    pub fn record_failure(
        &self,
        kind: ErrorKind,
        settings: &RouterSettings,
        group_size: usize,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        let was_probe = self.probe_in_flight.swap(false, Ordering::AcqRel);
        let w = self.window();
        let failures = w.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let of_kind = w.failures_by_kind[kind_index(kind)].fetch_add(1, Ordering::Relaxed) + 1;
        self.last_failure
            .store(kind_index(kind) as u8, Ordering::Relaxed);
        if settings.disable_cooldowns {
            return None;
        }
        let explicit = settings.allowed_fails_policy.get(&kind).copied();
        let caller_mistake = matches!(
            kind,
            ErrorKind::InvalidRequest
                | ErrorKind::ContextLengthExceeded
                | ErrorKind::ContentFiltered
                | ErrorKind::PayloadTooLarge
                | ErrorKind::BudgetExceeded
        );
        let immediate = matches!(
            kind,
            ErrorKind::RateLimited
                | ErrorKind::Authentication
                | ErrorKind::PermissionDenied
                | ErrorKind::NotFound
                | ErrorKind::Timeout
        );
        let requests = w.requests.load(Ordering::Relaxed).max(failures);
        let cool = if was_probe && !caller_mistake {
            true
        } else if let Some(allowed) = explicit {
            of_kind > u64::from(allowed)
        } else if caller_mistake {
            false
        } else if immediate && group_size > 1 {
            true
        } else {
            let over_allowance = of_kind > u64::from(settings.allowed_fails);
            let failing_rate =
                group_size > 1 && requests >= FAILURE_RATE_MIN_REQUESTS && failures * 2 >= requests;
            over_allowance || failing_rate
        };
        if !cool {
            return None;
        }
        let duration = settings
            .cooldown_time
            .max(retry_after.unwrap_or_default().min(MAX_COOLDOWN));
        self.cooling_until_ms.store(
            self.now_ms() + duration.as_millis() as u64,
            Ordering::Release,
        );
        self.cooled_here.store(true, Ordering::Release);
        self.state.store(COOLING, Ordering::Release);
        Some(duration)
    }

    /// Cool this deployment for `duration` (another instance of the fleet saw it fail); a
    /// longer cooldown already under way is kept.
    pub fn cool_for(&self, duration: Duration) {
        let until = self.now_ms() + duration.as_millis() as u64;
        let before = self.cooling_until_ms.fetch_max(until, Ordering::AcqRel);
        if until > before {
            // The fleet's cooldown outlasts any of this instance's own.
            self.cooled_here.store(false, Ordering::Release);
        }
        self.state.store(COOLING, Ordering::Release);
    }

    /// Release a probe without a verdict (e.g. the client went away).
    pub fn release_probe(&self) {
        self.probe_in_flight.store(false, Ordering::Release);
    }

    pub fn last_failure(&self) -> Option<ErrorKind> {
        ErrorKind::ALL
            .get(self.last_failure.load(Ordering::Relaxed) as usize)
            .copied()
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        let availability = self.availability();
        let (per_token, ttft) = self.latency();
        let w = self.window();
        HealthSnapshot {
            healthy: matches!(availability, Availability::Healthy),
            cooling_for: match availability {
                Availability::Cooling(d) => Some(d),
                _ => None,
            },
            in_flight: self.in_flight(),
            requests_this_minute: w.requests.load(Ordering::Relaxed),
            failures_this_minute: w.failures.load(Ordering::Relaxed),
            successes_this_minute: w.successes.load(Ordering::Relaxed),
            tokens_this_minute: w.tokens.load(Ordering::Relaxed),
            last_failure: self.last_failure(),
            latency_ms_per_token: per_token,
            time_to_first_token_ms: ttft,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RouterSettings {
        RouterSettings {
            cooldown_time: Duration::from_secs(10),
            allowed_fails: 2,
            ..RouterSettings::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_cools_at_once_in_a_group_and_half_opens_after_cooldown() {
        let s = DeploymentStats::new(Instant::now());
        assert_eq!(s.availability(), Availability::Healthy);
        let cooled = s.record_failure(
            ErrorKind::RateLimited,
            &settings(),
            3,
            Some(Duration::from_secs(20)),
        );
        assert_eq!(
            cooled,
            Some(Duration::from_secs(20)),
            "Retry-After lengthens the cooldown"
        );
        assert!(matches!(s.availability(), Availability::Cooling(_)));
        tokio::time::advance(Duration::from_secs(19)).await;
        assert!(matches!(s.availability(), Availability::Cooling(_)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(s.availability(), Availability::Probe);
        assert!(s.try_acquire_probe());
        assert!(!s.try_acquire_probe(), "only one probe at a time");
        assert!(
            matches!(s.availability(), Availability::Cooling(_)),
            "others wait for the probe"
        );
        s.record_success();
        assert_eq!(s.availability(), Availability::Healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn what_the_fleet_reports_adds_to_usage_in_flight_and_latency() {
        let s = DeploymentStats::new(Instant::now());
        s.record_request();
        s.record_tokens(100);
        s.record_latency(Duration::from_millis(100), 10); // 10 ms a token
        assert!(s.try_begin(Some(3)));
        let mine = s.local_report();
        assert_eq!(
            (
                mine.requests,
                mine.tokens,
                mine.in_flight,
                mine.per_token_ms
            ),
            (1, 100, 1, Some(10.0))
        );
        s.set_fleet(FleetReport {
            minute: mine.minute,
            requests: 4,
            tokens: 400,
            in_flight: 1,
            per_token_ms: Some(40.0),
            ttft_ms: None,
            latency_reporters: 2,
        });
        assert_eq!(s.minute_usage(), (5, 500), "this minute, fleet-wide");
        assert_eq!(s.fleet_in_flight(), 2);
        assert!(s.try_begin(Some(3)), "2 in flight of 3");
        assert!(!s.try_begin(Some(3)), "the fleet's third is the limit");
        let (per_token, _) = s.latency();
        assert_eq!(
            per_token,
            Some(30.0),
            "each instance counts once: (10 + 2 x 40) / 3"
        );
        assert_eq!(
            s.local_report().requests,
            1,
            "the report carries this instance's own numbers only"
        );
        // The fleet's numbers were for a minute that has passed: only this instance's count.
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(s.minute_usage(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_probe_announces_recovery_and_a_remote_one_keeps_an_own_cooldown() {
        let s = DeploymentStats::new(Instant::now());
        s.record_failure(ErrorKind::RateLimited, &settings(), 2, None);
        assert!(
            !s.record_success(),
            "a request already under way when the cooldown began is no probe"
        );
        s.record_failure(ErrorKind::RateLimited, &settings(), 2, None);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(s.try_acquire_probe());
        assert!(s.record_success(), "the probe closed the circuit");
        assert_eq!(s.availability(), Availability::Healthy);

        s.record_failure(
            ErrorKind::RateLimited,
            &settings(),
            2,
            Some(Duration::from_secs(60)),
        );
        s.recover_remote();
        assert!(
            matches!(s.availability(), Availability::Cooling(_)),
            "its own Retry-After still runs"
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        s.cool_for(Duration::from_secs(30));
        s.recover_remote();
        assert_eq!(
            s.availability(),
            Availability::Healthy,
            "the fleet's cooldown ends"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_cools_again() {
        let s = DeploymentStats::new(Instant::now());
        s.record_failure(ErrorKind::RateLimited, &settings(), 2, None);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(s.try_acquire_probe());
        assert!(s
            .record_failure(ErrorKind::UpstreamError, &settings(), 2, None)
            .is_some());
        assert!(matches!(s.availability(), Availability::Cooling(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn single_deployment_groups_cool_only_after_allowed_fails() {
        let s = DeploymentStats::new(Instant::now());
        let st = settings();
        assert!(s
            .record_failure(ErrorKind::RateLimited, &st, 1, None)
            .is_none());
        assert!(s
            .record_failure(ErrorKind::RateLimited, &st, 1, None)
            .is_none());
        assert!(
            s.record_failure(ErrorKind::RateLimited, &st, 1, None)
                .is_some(),
            "third failure > allowed_fails=2"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn server_errors_count_against_allowed_fails_and_the_minute_resets() {
        let s = DeploymentStats::new(Instant::now());
        let st = settings();
        assert!(s
            .record_failure(ErrorKind::UpstreamError, &st, 3, None)
            .is_none());
        assert!(s
            .record_failure(ErrorKind::UpstreamError, &st, 3, None)
            .is_none());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(
            s.record_failure(ErrorKind::UpstreamError, &st, 3, None)
                .is_none(),
            "new minute, new count"
        );
        assert!(s
            .record_failure(ErrorKind::UpstreamError, &st, 3, None)
            .is_none());
        assert!(s
            .record_failure(ErrorKind::UpstreamError, &st, 3, None)
            .is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn caller_mistakes_do_not_cool_unless_a_policy_says_so() {
        let s = DeploymentStats::new(Instant::now());
        let mut st = settings();
        for _ in 0..10 {
            assert!(s
                .record_failure(ErrorKind::InvalidRequest, &st, 3, None)
                .is_none());
        }
        st.allowed_fails_policy
            .insert(ErrorKind::ContextLengthExceeded, 1);
        assert!(s
            .record_failure(ErrorKind::ContextLengthExceeded, &st, 3, None)
            .is_none());
        assert!(s
            .record_failure(ErrorKind::ContextLengthExceeded, &st, 3, None)
            .is_some());
        st.disable_cooldowns = true;
        let fresh = DeploymentStats::new(Instant::now());
        assert!(fresh
            .record_failure(ErrorKind::RateLimited, &st, 3, None)
            .is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn high_failure_rate_cools_a_grouped_deployment() {
        let s = DeploymentStats::new(Instant::now());
        let st = RouterSettings {
            allowed_fails: 100,
            ..settings()
        };
        for _ in 0..6 {
            s.record_request();
        }
        assert!(s
            .record_failure(ErrorKind::UpstreamError, &st, 2, None)
            .is_none());
        assert!(s
            .record_failure(ErrorKind::UpstreamError, &st, 2, None)
            .is_none());
        assert!(
            s.record_failure(ErrorKind::UpstreamError, &st, 2, None)
                .is_some(),
            "3 of 6 failed"
        );
    }

    #[test]
    fn in_flight_limits_are_enforced_atomically() {
        let s = DeploymentStats::new(Instant::now());
        assert!(s.try_begin(Some(2)));
        assert!(s.try_begin(Some(2)));
        assert!(!s.try_begin(Some(2)));
        s.end();
        assert!(s.try_begin(Some(2)));
        s.end();
        s.end();
        s.end();
        assert_eq!(s.in_flight(), 0, "never below zero");
    }

    #[test]
    fn latency_is_a_moving_average_of_the_last_ten() {
        let s = DeploymentStats::new(Instant::now());
        for _ in 0..20 {
            s.record_latency(Duration::from_millis(1000), 10);
        }
        s.record_latency(Duration::from_millis(2000), 10);
        let (per_token, _) = s.latency();
        assert!((per_token.unwrap() - 110.0).abs() < 1e-9);
    }
}
