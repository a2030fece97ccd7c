//! Governance: who may call, what they may spend and how fast. A request's key resolves to a
//! `Principal` (cached briefly, invalidated on change); admission checks model access, blocks,
//! expiry, every applicable budget (reserving an estimate in the `Ledger`) and rate limit; when the
//! request is over a `RequestHook` settles it: actual cost into the ledger, tokens into the
//! limiter, one spend record to the background writer. The management API (`api.rs`) edits
//! the same objects in the store.

pub mod budget;
pub mod keys;
pub mod limits;
pub mod manage;
pub mod policy;
pub mod shared;
pub mod state;
pub mod writer;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use llmux::{Client, Operation, RequestHook, RequestLog};
use llmux_config::Config;
use llmux_store::{Backend, Kind, SpendRecord, Store};
use llmux_types::{ErrorKind, GatewayError};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use budget::{BudgetCheck, Ledger, Period, DEFAULT_OUTPUT_ESTIMATE};
use keys::{digest_hex, key_digest, Principal, Role};
use limits::{InMemoryLimiter, LimitExceeded, Limits, RateLimiter, Remaining};
use policy::{Governed, RateLimits};
use state::{Claim, Counters, Done, FleetCounters, Held, LocalCounters};
use writer::SpendWriter;

/// How long a key or owner lookup is trusted before it is read again (changes made through
/// this instance invalidate at once; this bounds how stale another instance's changes can be).
const LOOKUP_TTL: Duration = Duration::from_secs(5);

/// One object cache (see `Governance::objects`); `KINDS` is the number of `Kind`s.
type ObjectCache = moka::sync::Cache<String, Option<Arc<Governed>>, foldhash::fast::RandomState>;
const KINDS: usize = 7;

/// One database read of an object, shared by the lookups that wait for it.
type Lookup = tokio::sync::OnceCell<Option<Arc<Governed>>>;

/// How long shutdown waits for requests still running to settle.
const SETTLE_GRACE: Duration = Duration::from_secs(3);

/// The current time in unix ms; replaceable so tests can move budget periods.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub struct Governance {
    pub store: Store,
    /// This instance's view of spend (stored + settled but unwritten + reserved): the local
    /// counters' budgets, which the spend writer moves into the stored figure.
    pub ledger: Arc<Ledger>,
    /// Where rate limits and budgets are counted: in this process, or (a fleet with
    /// `router_settings.redis_*`) in Redis with this process as the fallback.
    counters: Arc<dyn Counters>,
    /// The fleet's Redis: object changes, cooldowns and probes are announced and heard on it.
    fleet: Option<Arc<shared::SharedState>>,
    on_models_changed: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
    on_cooldown: std::sync::OnceLock<llmux::CooldownObserver>,
    on_recovery: std::sync::OnceLock<llmux::RecoveryObserver>,
    pub writer: SpendWriter,
    /// SHA-256 of the master key, computed once.
    master_digest: Option<[u8; 32]>,
    /// Objects by id, one cache per kind: a lookup borrows the id (a `(Kind, String)` key had
    /// to be allocated for every lookup, hit or miss), hashed with foldhash (moka's default
    /// SipHash cost more than the lookup's other work).
    objects: [ObjectCache; KINDS],
    /// Lookups reading the database right now: concurrent misses for one object (a burst of
    /// requests with one key when its entry has expired) share one read instead of queueing one
    /// each on the pool.
    loading: Mutex<foldhash::HashMap<(Kind, String), Arc<Lookup>>>,
    /// Object lookups that read the database (cache misses, shared reads counted once).
    lookups: std::sync::atomic::AtomicU64,
    clock: Clock,
    alert_webhook: Option<String>,
    /// `llmux_settings.budget_stream_cutoff`.
    stream_cutoff: bool,
    /// `llmux_settings.spend_log_durability: sync`.
    durable: bool,
    http: reqwest::Client,
    alerted: Mutex<HashSet<(Kind, String, i64)>>,
    /// Told of budgets crossed (alerts).
    budget_alerts: std::sync::OnceLock<Box<dyn Fn(BudgetAlert) + Send + Sync>>,
    stopping: AtomicBool,
    /// Admitted requests not yet settled.
    in_flight: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Governance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governance")
            .field("backend", &self.store.backend())
            .finish()
    }
}

/// What the request asked for, as far as admission cares.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    pub model: String,
    /// The client's `x-request-id`, stored beside llmux's own id.
    pub client_request_id: Option<String>,
    pub end_user: Option<String>,
    pub tags: Vec<String>,
    /// Rough prompt size and the output cap, for the cost estimate.
    pub prompt_tokens_estimate: u64,
    pub max_output_tokens: Option<u64>,
    /// Completions asked for (`n`, `best_of`): the output estimate covers each.
    pub choices: u64,
}

/// An admitted request: what it reserved and must release.
pub struct Admission {
    gov: Arc<Governance>,
    principal: Principal,
    owners: Vec<(Kind, String)>,
    scopes: Vec<Limits>,
    checks: Vec<BudgetCheck>,
    /// What it holds on the counters.
    held: Held,
    estimate: f64,
    /// The budgets this request counts against (owner, max budget).
    budgets: Vec<((Kind, String), f64)>,
    /// The fleet refused to grow this stream's reservation: the next step ends it.
    fleet_refused_more: Arc<AtomicBool>,
    price: EstimatePrice,
    /// Reserved while streaming beyond `estimate` (bits of an f64).
    extra_reserved: AtomicU64,
    /// With `sync` durability: fires when this request's spend row is committed.
    committed: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    pub remaining: Remaining,
    facts: RequestFacts,
    call_type: &'static str,
    started_ms: i64,
    settled: AtomicBool,
}

impl Governance {
    /// Open the store the configuration names (PostgreSQL `database_url` / `DATABASE_URL`, else
    /// the SQLite file) and start the spend writer and the budget-reset task.
    pub async fn start(
        config: &Config,
        env_database_url: Option<String>,
    ) -> Result<Arc<Governance>, String> {
        let url = config
            .database_url
            .clone()
            .or(env_database_url)
            .unwrap_or_else(|| format!("sqlite://{}", config.database_path));
        let store = Store::open(&url)
            .await
            .map_err(|e| format!("cannot open the database: {e}"))?;
        tracing::info!(backend = ?store.backend(), "governance store ready");
        let mut builder = Governance::builder(store, config);
        if let Some(url) = config.redis_url(&llmux_config::ProcessEnv) {
            let state = shared::SharedState::connect(&url, config.redis_deadline).await?;
            tracing::info!("rate limits and budgets are shared through redis");
            builder = builder.fleet(state);
        }
        let gov = builder.build();
        gov.spawn_budget_resets();
        gov.follow_changes();
        Ok(gov)
    }

    /// Hear about the objects other instances of the fleet change, the deployments they cool
    /// down and the probes that found one healthy. `on_models_changed` runs when another
    /// instance changed the database's models (the server reloads its routing table then).
    fn listen_to_fleet(self: &Arc<Self>, state: &Arc<shared::SharedState>) {
        let gov = Arc::downgrade(self);
        let shared = Arc::downgrade(state);
        state.listen(move |message| {
            let (Some(gov), Some(state)) = (gov.upgrade(), shared.upgrade()) else {
                return;
            };
            // `recovered:<instance>:<deployment id>`: another instance's probe found it
            // healthy.
            if let Some(rest) = message.strip_prefix("recovered:") {
                if let (Some(id), Some(recover)) = (state.from_another(rest), gov.on_recovery.get())
                {
                    recover(id);
                }
                return;
            }
            // `cooldown:<ms>:<instance>:<deployment id>`: another instance cooled a deployment
            // down.
            if let Some(rest) = message.strip_prefix("cooldown:") {
                let Some((ms, rest)) = rest.split_once(':') else {
                    return;
                };
                if let (Some(id), Some(cool), Ok(ms)) = (
                    state.from_another(rest),
                    gov.on_cooldown.get(),
                    ms.parse::<u64>(),
                ) {
                    cool(id, Duration::from_millis(ms));
                }
                return;
            }
            let Some((kind, id)) = message.split_once(':') else {
                return;
            };
            if let Some(kind) = Kind::parse(kind) {
                gov.changed_elsewhere(kind, id);
            }
        });
    }

    /// Another instance changed an object: drop the cached copy (or reload the models).
    fn changed_elsewhere(&self, kind: Kind, id: &str) {
        match kind {
            Kind::Model => {
                if let Some(reload) = self.on_models_changed.get() {
                    reload();
                }
            }
            kind => self.forget_cached(kind, id),
        }
    }

    /// On PostgreSQL, follow the changes every instance records (`llmux_changes`), a poll every
    /// `CHANGE_POLL`: a fleet without Redis, or whose Redis is down or lost a message, still
    /// sees every change within a second. Pruned to the last hour.
    pub fn follow_changes(self: &Arc<Self>) {
        if self.store.backend() != Backend::Postgres {
            return;
        }
        let gov = Arc::downgrade(self);
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut last = store.last_change().await.unwrap_or(0);
            let mut tick = tokio::time::interval(CHANGE_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut pruned = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                let Some(gov) = gov.upgrade() else { return };
                if gov.stopping.load(Ordering::Relaxed) {
                    return;
                }
                match store.changes_since(last, 1000).await {
                    Ok(changes) => {
                        for (seq, kind, id) in changes {
                            last = seq;
                            if let Some(kind) = kind {
                                gov.changed_elsewhere(kind, &id);
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot read the fleet's changes"),
                }
                if pruned.elapsed() > Duration::from_secs(600) {
                    pruned = tokio::time::Instant::now();
                    if let Err(e) = store.prune_changes(gov.now() - 3_600_000).await {
                        tracing::debug!(error = %e, "cannot prune the fleet's changes");
                    }
                }
            }
        });
    }

    /// What to run when another instance changed the database's models.
    pub fn on_models_changed(&self, reload: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_models_changed.set(Box::new(reload));
    }

    /// What to run when another instance's probe found a cooled deployment healthy (its id).
    pub fn on_remote_recovery(&self, recover: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.on_recovery.set(Box::new(recover));
    }

    /// What to run when another instance cooled a deployment down (id, for how long).
    pub fn on_remote_cooldown(&self, cool: impl Fn(&str, Duration) + Send + Sync + 'static) {
        let _ = self.on_cooldown.set(Box::new(cool));
    }

    /// The fleet's shared state, if one is in use.
    pub fn shared_state(&self) -> Option<&Arc<shared::SharedState>> {
        self.fleet.as_ref()
    }

    /// An owner's settled spend (the fleet's, with Redis) and what its requests in flight
    /// have reserved; this instance's view when Redis does not answer.
    pub async fn spend_and_reserved(&self, owner: &(Kind, String)) -> (f64, f64) {
        match self
            .counters
            .spend(std::slice::from_ref(owner))
            .await
            .first()
        {
            Some(Some(row)) => *row,
            _ => self.ledger.spend_and_reserved(owner),
        }
    }

    /// The settled spend of each owner as the counters know it (the fleet's with Redis);
    /// `None` where they do not track it (the database's value stands).
    pub async fn live_spend(&self, owners: &[(Kind, String)]) -> Vec<Option<f64>> {
        let rows = self.counters.spend(owners).await;
        rows.into_iter().map(|r| r.map(|(s, _)| s)).collect()
    }

    /// An administrator set an owner's spend, or its budget period changed: every instance
    /// counts from `spend` now.
    pub async fn set_spend(&self, kind: Kind, id: &str, spend: f64, reset_at: Option<i64>) {
        self.counters.set_spend(kind, id, spend, reset_at).await;
    }

    /// An owner was deleted: forget what this instance and the fleet counted for it.
    pub async fn forget_spend(&self, kind: Kind, id: &str) {
        self.counters.forget(kind, id).await;
    }

    /// Governance on `store` with `config`'s settings: pick the clock and where limits and
    /// budgets are counted, then `build`.
    pub fn builder(store: Store, config: &Config) -> GovernanceBuilder<'_> {
        GovernanceBuilder {
            store,
            config,
            clock: Arc::new(llmux_store::now_ms),
            limiter: None,
            fleet: None,
            counters: None,
        }
    }

    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    /// An object, through the short-lived cache.
    pub async fn object(
        &self,
        kind: Kind,
        id: &str,
    ) -> Result<Option<Arc<Governed>>, GatewayError> {
        if let Some(hit) = self.cache(kind).get(id) {
            return Ok(hit);
        }
        let cache_key = (kind, id.to_owned());
        let load = Arc::clone(
            self.loading
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(cache_key.clone())
                .or_default(),
        );
        // The first caller reads; the others wait for that read (a failed read is retried by
        // the next waiter).
        let found = load
            .get_or_try_init(|| async {
                self.lookups.fetch_add(1, Ordering::Relaxed);
                Ok::<_, GatewayError>(
                    self.store
                        .get(kind, id)
                        .await?
                        .map(|o| Arc::new(Governed::new(o))),
                )
            })
            .await
            .cloned();
        let mut loading = self
            .loading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Cached by the first to get here, unless the object was invalidated during the read.
        if loading
            .get(&cache_key)
            .is_some_and(|l| Arc::ptr_eq(l, &load))
        {
            loading.remove(&cache_key);
            if let Ok(found) = &found {
                self.cache(kind).insert(cache_key.1, found.clone());
            }
        }
        found
    }

    /// Database reads made by object lookups so far.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// Forget cached copies after a change.
    pub fn invalidate(&self, kind: Kind, id: &str) {
        self.forget_cached(kind, id);
        if let Some(shared) = &self.fleet {
            shared.publish_invalidation(format!("{}:{id}", kind.as_str()));
        }
        if self.store.backend() == Backend::Postgres {
            let (store, id) = (self.store.clone(), id.to_owned());
            tokio::spawn(async move {
                if let Err(e) = store.record_change(kind, &id).await {
                    tracing::warn!(error = %e, kind = kind.as_str(), "cannot record a change for the fleet");
                }
            });
        }
    }

    /// Drop this instance's cached copy of an object (another instance changed it).
    fn forget_cached(&self, kind: Kind, id: &str) {
        let key = (kind, id.to_owned());
        // A read already under way may have fetched the old object: later lookups start anew.
        self.loading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
        self.cache(kind).invalidate(id);
    }

    fn cache(&self, kind: Kind) -> &ObjectCache {
        let slot = match kind {
            Kind::Key => 0,
            Kind::User => 1,
            Kind::Team => 2,
            Kind::Organization => 3,
            Kind::Customer => 4,
            Kind::Budget => 5,
            Kind::Model => 6,
        };
        &self.objects[slot]
    }

    /// Who is calling: the master key, or a virtual key that is not blocked or expired and whose
    /// team is not blocked.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, GatewayError> {
        let Some(presented) = keys::presented_key(headers) else {
            return Err(GatewayError::new(
                ErrorKind::Authentication,
                "No API key provided. Send it as `Authorization: Bearer <key>` or `x-api-key: <key>`.",
            )
            .with_code("missing_api_key"));
        };
        self.authenticate_key(presented).await
    }

    /// Who is calling with `presented` (see `authenticate`).
    pub async fn authenticate_key(&self, presented: &str) -> Result<Principal, GatewayError> {
        // One digest serves both the constant-time master-key comparison and the key lookup.
        let digest = key_digest(presented);
        if let Some(master) = &self.master_digest {
            if bool::from(digest.ct_eq(master)) {
                return Ok(Principal::master());
            }
        }
        let invalid = || {
            GatewayError::new(ErrorKind::Authentication, "Invalid API key.")
                .with_code("invalid_api_key")
        };
        let key = self
            .object(Kind::Key, &digest_hex(&digest))
            .await?
            .ok_or_else(invalid)?;
        if key.policy.blocked {
            return Err(
                GatewayError::new(ErrorKind::Authentication, "This key is blocked.")
                    .with_code("key_blocked"),
            );
        }
        if let Some((at, expires)) = &key.policy.expires {
            if *at <= self.now() {
                return Err(GatewayError::new(
                    ErrorKind::Authentication,
                    format!("This key expired at {expires}."),
                )
                .with_code("key_expired"));
            }
        }
        let user = match &key.user_id {
            Some(id) => self.object(Kind::User, id).await?,
            None => None,
        };
        let team = match &key.team_id {
            Some(id) => self.object(Kind::Team, id).await?,
            None => None,
        };
        if team.as_ref().is_some_and(|t| t.policy.blocked) {
            return Err(GatewayError::new(
                ErrorKind::Authentication,
                "This key's team is blocked.",
            )
            .with_code("team_blocked"));
        }
        let org_id = key
            .organization_id
            .clone()
            .or_else(|| team.as_ref().and_then(|t| t.organization_id.clone()));
        let organization = match org_id {
            Some(id) => self.object(Kind::Organization, &id).await?,
            None => None,
        };
        // A user without a role is an internal user; one with a role llmux does not know gets
        // the least one, not a writing one.
        let user_role = match user.as_ref().and_then(|u| u.policy.user_role) {
            None => Role::InternalUser,
            Some(r) => r.unwrap_or(Role::InternalUserViewer),
        };
        // A key minted by someone below its user's role acts with the minter's rights at most.
        let role = match key.policy.max_role {
            Some(cap) => user_role.meet(cap.unwrap_or(Role::InternalUserViewer)),
            None => user_role,
        };
        Ok(Principal {
            role,
            key: Some(key),
            user,
            team,
            organization,
        })
    }

    /// Authenticate, then hold the key to its `allowed_routes` (which narrow, never widen, what
    /// its role may call).
    pub async fn authenticate_for(
        &self,
        headers: &HeaderMap,
        path: &str,
    ) -> Result<Principal, GatewayError> {
        let principal = self.authenticate(headers).await?;
        Self::check_route(&principal, path)?;
        Ok(principal)
    }

    /// Hold the key to its `allowed_routes` (which narrow, never widen, what its role may
    /// call).
    fn check_route(principal: &Principal, path: &str) -> Result<(), GatewayError> {
        // Most keys have no route list: nothing is allocated for them.
        let restricted = principal.key.as_ref().filter(|k| k.policy.restricts_routes);
        if let Some(key) = restricted {
            if !route_allowed(&key.policy.allowed_routes, path) {
                return Err(GatewayError::new(
                    ErrorKind::PermissionDenied,
                    format!("This key may not call `{path}` (its allowed_routes do not list it)."),
                )
                .with_code("route_not_allowed"));
            }
        }
        Ok(())
    }

    /// This governance as a library client's gate (`llmux::ClientBuilder::gate`): requests
    /// made through `Client::with_api_key` are authenticated, admitted, settled and recorded as
    /// the server's are.
    pub fn gate(self: &Arc<Self>) -> Arc<dyn llmux::Gate> {
        Arc::new(GovernanceGate(Arc::clone(self)))
    }

    /// The model the key's `aliases` map the requested one to, if any.
    pub fn alias(principal: &Principal, model: &str) -> Option<String> {
        principal.key.as_ref()?.policy.aliases.get(model).cloned()
    }

    /// Admit a request or say why not; the admission must be turned into a hook and settled.
    pub async fn admit(
        self: &Arc<Self>,
        principal: &Principal,
        facts: RequestFacts,
        client: &Client,
        call_type: &'static str,
    ) -> Result<Admission, GatewayError> {
        let now = self.now();
        let mut facts = facts;
        check_model_access(client, principal, &facts.model)?;
        if let Some(key) = &principal.key {
            for tag in &key.policy.tags {
                if !facts.tags.contains(tag) {
                    facts.tags.push(tag.clone());
                }
            }
        }
        let customer = match &facts.end_user {
            Some(id) => self.object(Kind::Customer, id).await?,
            None => None,
        };
        if let Some(c) = &customer {
            if c.policy.blocked {
                return Err(GatewayError::new(
                    ErrorKind::PermissionDenied,
                    format!("End user `{}` is blocked.", c.id),
                )
                .with_code("end_user_blocked"));
            }
        }
        let mut holders: Vec<&Governed> = Vec::new();
        holders.extend(principal.key.as_deref());
        holders.extend(principal.user.as_deref());
        holders.extend(principal.team.as_deref());
        holders.extend(principal.organization.as_deref());
        holders.extend(customer.as_deref());
        let mut checks = Vec::new();
        for o in &holders {
            let max = match (o.policy.max_budget, &o.policy.budget_id) {
                (Some(m), _) => Some(m),
                // Customers and others may point at a shared budget object.
                (None, Some(b)) => self
                    .object(Kind::Budget, b)
                    .await?
                    .and_then(|b| b.policy.max_budget),
                (None, None) => None,
            };
            if let Some(max) = max {
                checks.push(BudgetCheck {
                    kind: o.kind,
                    id: o.id.clone(),
                    max_budget: max,
                    stored_spend: o.spend,
                    reset_at: o.budget_reset_at,
                });
            }
        }
        let owners: Vec<(Kind, String)> = holders.iter().map(|o| (o.kind, o.id.clone())).collect();
        // Only a budget needs the estimate (it prices the request against every deployment).
        let (estimate, price) = if checks.is_empty() {
            (0.0, EstimatePrice::default())
        } else {
            estimate_cost(client, &facts)
        };
        let budgets: Vec<((Kind, String), f64)> = checks
            .iter()
            .map(|c| ((c.kind, c.id.clone()), c.max_budget))
            .collect();
        let scopes = rate_scopes(principal, &facts.model);
        let claim = Claim {
            scopes: &scopes,
            budgets: &checks,
            owners: &owners,
            estimate,
            now,
        };
        let held = self.counters.admit(&claim).await.map_err(|e| match e {
            state::Refusal::Budget(e) => budget_error(&e),
            state::Refusal::Limit(e) => limit_error(&e),
        })?;
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(Admission {
            gov: Arc::clone(self),
            principal: principal.clone(),
            owners,
            scopes,
            checks,
            remaining: held.remaining.clone(),
            held,
            estimate,
            budgets,
            fleet_refused_more: Arc::new(AtomicBool::new(false)),
            price,
            extra_reserved: AtomicU64::new(0),
            committed: Mutex::new(None),
            facts,
            call_type,
            started_ms: now,
            settled: AtomicBool::new(false),
        })
    }

    /// Start the task that resets budgets whose period ended (every instance may run it; a
    /// reset is applied once per period).
    fn spawn_budget_resets(self: &Arc<Self>) {
        let gov = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(gov) = gov.upgrade() else { return };
                if gov.stopping.load(Ordering::Relaxed) {
                    return;
                }
                if let Err(e) = gov.run_budget_resets().await {
                    tracing::warn!(error = %e.message(), "budget reset pass failed");
                }
            }
        });
    }

    /// Reset every budget whose period has ended at `now`.
    pub async fn run_budget_resets(&self) -> Result<usize, GatewayError> {
        let now = self.now();
        let due = self.store.due_budget_resets(now).await?;
        let mut done = 0;
        for o in due {
            let Some(period) = o
                .data
                .get("budget_duration")
                .and_then(Value::as_str)
                .and_then(Period::parse)
            else {
                continue;
            };
            let Some(ended) = o.budget_reset_at else {
                continue;
            };
            let next = period.next_reset(now);
            if self.store.reset_budget(o.kind, &o.id, ended, next).await? {
                done += 1;
                tracing::info!(kind = o.kind.as_str(), id = %short_id(o.kind, &o.id), "budget period reset");
                // The instance that reset it tells the fleet's counter (the others would also
                // find the period over by themselves, at their next request).
                self.counters
                    .set_spend(o.kind, &o.id, 0.0, Some(next))
                    .await;
            } else {
                self.ledger.reset(&(o.kind, o.id.clone()), 0.0, Some(next));
            }
            self.invalidate(o.kind, &o.id);
        }
        Ok(done)
    }

    /// Stop background work and write every queued spend record. Requests still running (past
    /// the drain timeout) get a short grace to settle first.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + SETTLE_GRACE;
        while self.in_flight.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.in_flight.load(Ordering::Acquire);
        if left > 0 {
            tracing::warn!(
                requests = left,
                "requests still running at shutdown; their spend is not recorded"
            );
        }
        self.counters.flush().await;
        self.writer.shutdown().await;
    }

    /// Admitted requests not yet settled.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Be told when a key's, user's, team's or organization's spend crosses its soft budget or
    /// its budget (once per owner and budget period each).
    pub fn on_budget_alert(&self, observe: impl Fn(BudgetAlert) + Send + Sync + 'static) {
        let _ = self.budget_alerts.set(Box::new(observe));
    }

    fn soft_budget_alerts(&self, admission: &Admission) {
        let holders = [
            admission.principal.key.as_ref(),
            admission.principal.user.as_ref(),
            admission.principal.team.as_ref(),
            admission.principal.organization.as_ref(),
        ];
        for o in holders.into_iter().flatten() {
            let (soft_budget, max_budget) = (o.policy.soft_budget, o.policy.max_budget);
            if soft_budget.is_none() && (max_budget.is_none() || self.budget_alerts.get().is_none())
            {
                continue;
            }
            let owner = (o.kind, o.id.clone());
            let Some(spend) = self.ledger.spend(&owner) else {
                continue;
            };
            let period = o.budget_reset_at.unwrap_or(0);
            // Past the budget itself (told to the observer only: the webhook below is the
            // soft budget's, as before).
            if let (Some(budget), Some(observe)) = (max_budget, self.budget_alerts.get()) {
                let first = spend >= budget
                    && self
                        .alerted
                        .lock()
                        .map(|mut a| a.insert((o.kind, format!("max:{}", o.id), period)))
                        .unwrap_or(false);
                if first {
                    observe(BudgetAlert {
                        kind: kind_label(o.kind),
                        id: short_id(o.kind, &o.id),
                        name: o.labels.1.as_deref().map(str::to_owned),
                        spend,
                        budget,
                        soft: false,
                    });
                }
            }
            let Some(soft) = soft_budget else {
                continue;
            };
            if spend < soft {
                continue;
            }
            let first = self
                .alerted
                .lock()
                .map(|mut a| a.insert((o.kind, o.id.clone(), period)))
                .unwrap_or(false);
            if !first {
                continue;
            }
            let id = short_id(o.kind, &o.id);
            tracing::warn!(kind = o.kind.as_str(), id = %id, spend, soft_budget = soft, "soft budget crossed");
            if let Some(observe) = self.budget_alerts.get() {
                observe(BudgetAlert {
                    kind: kind_label(o.kind),
                    id: id.clone(),
                    name: o.labels.1.as_deref().map(str::to_owned),
                    spend,
                    budget: soft,
                    soft: true,
                });
            }
            if let Some(url) = &self.alert_webhook {
                let body = json!({
                    "event": "soft_budget_crossed",
                    "type": kind_label(o.kind),
                    "id": id,
                    "spend": spend,
                    "soft_budget": soft,
                    "max_budget": o.policy.max_budget,
                });
                let http = self.http.clone();
                let url = url.clone();
                tokio::spawn(async move {
                    if let Err(e) = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.to_string())
                        .send()
                        .await
                    {
                        tracing::warn!(error = %e, "cannot deliver the soft budget alert");
                    }
                });
            }
        }
    }
}

/// A budget crossed ([`Governance::on_budget_alert`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetAlert {
    /// `Key`, `User`, `Team`, `Organization`, ...
    pub kind: &'static str,
    pub id: String,
    /// Its alias or name, when it has one.
    pub name: Option<String>,
    pub spend: f64,
    /// The budget crossed (the soft budget when `soft`).
    pub budget: f64,
    pub soft: bool,
}

/// `Governance::gate`.
struct GovernanceGate(Arc<Governance>);

/// The HTTP route of an operation (a key's `allowed_routes` name routes).
fn operation_path(op: Operation) -> &'static str {
    match op {
        Operation::Chat => "/v1/chat/completions",
        Operation::Completions => "/v1/completions",
        Operation::Embeddings => "/v1/embeddings",
        Operation::Rerank => "/v1/rerank",
    }
}

#[async_trait::async_trait]
impl llmux::Gate for GovernanceGate {
    async fn admit(
        &self,
        client: &Client,
        api_key: &str,
        op: Operation,
        body: &llmux::ParsedBody<'_>,
        options: &llmux::RequestOptions,
    ) -> Result<llmux::Admitted, GatewayError> {
        let gov = &self.0;
        let principal = gov.authenticate_key(api_key).await?;
        Governance::check_route(&principal, operation_path(op))?;
        let (mut facts, rewritten) = request_facts(body, &principal, None, options.tags.clone())?;
        // The caller's id, kept beside llmux's own as the server keeps `x-request-id` (sane
        // ones only: it is stored).
        let id = &options.request_id;
        facts.client_request_id =
            (!id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
                .then(|| id.clone());
        let admission = gov.admit(&principal, facts, client, op.as_str()).await?;
        Ok(llmux::Admitted {
            hook: admission.into_hook(),
            body: rewritten,
            cache_scope: client
                .snapshot()
                .cache
                .as_ref()
                .and_then(|c| principal.cache_scope(c.settings().scope)),
        })
    }
}

/// Wraps (or replaces) the counters the builder would use (`GovernanceBuilder::counters`).
type CountersLayer = Box<dyn FnOnce(Arc<dyn Counters>) -> Arc<dyn Counters> + Send>;

/// Builds a `Governance`: its store and settings, its clock, and where rate limits and budgets
/// are counted (in this process by default; `fleet` for Redis shared by a fleet; `counters`
/// to wrap or replace either).
pub struct GovernanceBuilder<'c> {
    store: Store,
    config: &'c Config,
    clock: Clock,
    limiter: Option<Arc<dyn RateLimiter>>,
    fleet: Option<Arc<shared::SharedState>>,
    counters: Option<CountersLayer>,
}

impl std::fmt::Debug for GovernanceBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GovernanceBuilder")
            .field("backend", &self.store.backend())
            .field("fleet", &self.fleet.is_some())
            .finish()
    }
}

impl GovernanceBuilder<'_> {
    /// The clock budgets and windows are read by (tests move it).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The in-process rate limiter (the fixed-window `InMemoryLimiter` by default); with a
    /// fleet it counts while Redis does not answer.
    pub fn limiter(mut self, limiter: Arc<dyn RateLimiter>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Count limits and budgets in the fleet's Redis, and hear the fleet's changes on it.
    pub fn fleet(mut self, state: Arc<shared::SharedState>) -> Self {
        self.fleet = Some(state);
        self
    }

    /// Count limits and budgets in what `layer` makes of the built-in counters (local, or the
    /// fleet's): a wrapper that adds to them, or another implementation. The built-in ones
    /// keep this instance's ledger current, which soft-budget alerts and budget resets read: an
    /// implementation that does not delegate to them leaves those to itself.
    pub fn counters(
        mut self,
        layer: impl FnOnce(Arc<dyn Counters>) -> Arc<dyn Counters> + Send + 'static,
    ) -> Self {
        self.counters = Some(Box::new(layer));
        self
    }

    /// Start the spend writer and put it together.
    pub fn build(self) -> Arc<Governance> {
        let GovernanceBuilder {
            store,
            config,
            clock,
            limiter,
            fleet,
            counters,
        } = self;
        let ledger = Arc::new(Ledger::default());
        let durable = config.spend_log_durability == llmux_config::SpendDurability::Sync;
        let writer = SpendWriter::start_with(
            store.clone(),
            Arc::clone(&ledger),
            config.spend_queue_capacity,
            config.disable_spend_logs,
            durable,
        );
        let local = LocalCounters {
            ledger: Arc::clone(&ledger),
            limiter: limiter.unwrap_or_else(|| Arc::new(InMemoryLimiter::default())),
        };
        let built: Arc<dyn Counters> = match &fleet {
            Some(shared) => Arc::new(FleetCounters {
                local,
                shared: Arc::clone(shared),
            }),
            None => Arc::new(local),
        };
        let counters = match counters {
            Some(layer) => layer(built),
            None => built,
        };
        let gov = Arc::new(Governance {
            store,
            ledger,
            counters,
            fleet: fleet.clone(),
            on_models_changed: std::sync::OnceLock::new(),
            on_cooldown: std::sync::OnceLock::new(),
            on_recovery: std::sync::OnceLock::new(),
            writer,
            master_digest: config.master_key.as_ref().map(|m| key_digest(m.expose())),
            objects: std::array::from_fn(|_| {
                moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(LOOKUP_TTL)
                    .build_with_hasher(foldhash::fast::RandomState::default())
            }),
            loading: Mutex::default(),
            lookups: AtomicU64::new(0),
            clock,
            alert_webhook: config.alert_webhook_url.clone(),
            stream_cutoff: config.budget_stream_cutoff,
            durable,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            alerted: Mutex::new(HashSet::new()),
            budget_alerts: std::sync::OnceLock::new(),
            stopping: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
        });
        if let Some(state) = &fleet {
            gov.listen_to_fleet(state);
        }
        gov
    }
}

impl Admission {
    /// Turn into the hook `llmux::Client::execute` calls when the request is over.
    pub fn into_hook(self) -> Arc<dyn RequestHook> {
        Arc::new(self)
    }

    /// Whether the response must wait for `committed` (`spend_log_durability: sync`).
    pub fn durable(&self) -> bool {
        self.gov.durable
    }

    /// Wait until this request's spend row is committed (at once without `sync` durability, or
    /// before the request settled). A database that does not commit within
    /// `COMMIT_WAIT` (it is down, the writer is retrying) does not hold the answer for ever:
    /// the wait ends with an error logged, the record stays queued and is written when it can.
    pub async fn committed(&self) {
        let receiver = self.committed.lock().ok().and_then(|mut slot| slot.take());
        if let Some(r) = receiver {
            if tokio::time::timeout(COMMIT_WAIT, r).await.is_err() {
                tracing::error!(
                    wait_s = COMMIT_WAIT.as_secs(),
                    "spend row not committed in time (spend_log_durability: sync); answering anyway"
                );
            }
        }
    }

    fn settle(&self, log: Option<&RequestLog>) {
        if self.settled.swap(true, Ordering::AcqRel) {
            return;
        }
        let gov = &self.gov;
        let cost = log.and_then(|l| l.cost).unwrap_or(0.0);
        let usage = log.and_then(|l| l.usage);
        let now = gov.now();
        let reserved = self.estimate + f64::from_bits(self.extra_reserved.load(Ordering::Acquire));
        let tokens = usage.map_or(0, |u| u.total_tokens);
        let claim = Claim {
            scopes: &self.scopes,
            budgets: &self.checks,
            owners: &self.owners,
            estimate: self.estimate,
            now: self.started_ms,
        };
        gov.counters.settle(
            &self.held,
            &Done {
                claim,
                reserved,
                tokens,
                cost,
                now,
            },
        );
        let p = &self.principal;
        let id_of =
            |o: &Option<Arc<Governed>>| o.as_ref().map(|o| o.id.clone()).unwrap_or_default();
        let (status, error_kind) = match log.map(|l| l.outcome) {
            Some(llmux::Outcome::Success) => ("success", String::new()),
            Some(llmux::Outcome::Failed(kind)) => ("failure", kind.as_str().to_owned()),
            Some(llmux::Outcome::ClientDisconnected) | None => {
                ("failure", "client_disconnected".to_owned())
            }
        };
        let record = SpendRecord {
            request_id: log
                .map(|l| l.request_id.clone())
                .unwrap_or_else(llmux::new_request_id),
            client_request_id: self.facts.client_request_id.clone().unwrap_or_default(),
            api_key: id_of(&p.key),
            user_id: p.user_id().map(str::to_owned).unwrap_or_default(),
            team_id: id_of(&p.team),
            organization_id: id_of(&p.organization),
            end_user: self.facts.end_user.clone().unwrap_or_default(),
            model_group: log
                .and_then(|l| l.model_group.clone())
                .unwrap_or_else(|| self.facts.model.clone()),
            model: log.and_then(|l| l.model.clone()).unwrap_or_default(),
            deployment_id: log
                .and_then(|l| l.deployment_id.clone())
                .unwrap_or_default(),
            provider: log.and_then(|l| l.provider).unwrap_or("").to_owned(),
            call_type: self.call_type.to_owned(),
            prompt_tokens: usage.map_or(0, |u| u.prompt_tokens as i64),
            completion_tokens: usage.map_or(0, |u| u.completion_tokens as i64),
            cached_tokens: usage.map_or(0, |u| u.cached_tokens() as i64),
            reasoning_tokens: usage.map_or(0, |u| u.reasoning_tokens() as i64),
            total_tokens: usage.map_or(0, |u| u.total_tokens as i64),
            spend: cost,
            start_time: self.started_ms,
            end_time: now,
            ttft_ms: log
                .and_then(|l| l.time_to_first_chunk)
                .map(|d| d.as_millis() as i64),
            status: status.to_owned(),
            error_kind,
            tags: self.facts.tags.clone(),
            cache_hit: log.is_some_and(|l| l.cache_hit == Some(true)),
        };
        // PostgreSQL refuses NUL in text: a record carrying one (a model name a client sent)
        // would fail its batch for ever. Whatever else arrives is stored as sent.
        let record = without_nul(record);
        if gov.durable {
            let committed = gov.writer.submit_durable(record);
            if let Ok(mut slot) = self.committed.lock() {
                *slot = Some(committed);
            }
        } else {
            gov.writer.submit(record);
        }
        if cost > 0.0 {
            gov.soft_budget_alerts(self);
        }
        gov.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RequestHook for Admission {
    fn finished(&self, log: &RequestLog) {
        self.settle(Some(log));
    }

    fn watches_stream(&self) -> bool {
        self.gov.stream_cutoff && !self.budgets.is_empty()
    }

    /// Past its reservation, a stream reserves more as it runs (sixteen tokens' worth at a
    /// time), and ends when a budget it counts against has no room left: every budget then
    /// holds to its limit within a step per stream, however much the upstream ignores
    /// `max_tokens`.
    fn stream_progress(&self, completion_tokens: u64) -> Result<(), GatewayError> {
        let running = self.price.prompt + completion_tokens as f64 * self.price.per_output_token;
        let extra = f64::from_bits(self.extra_reserved.load(Ordering::Acquire));
        let needed = running - self.estimate - extra;
        if needed <= 0.0 {
            return Ok(());
        }
        let step = needed.max(16.0 * self.price.per_output_token);
        let fits = !self.fleet_refused_more.load(Ordering::Acquire)
            && self.gov.counters.extend(
                &self.held,
                &self.budgets,
                &self.owners,
                step,
                self.gov.now(),
                &self.fleet_refused_more,
            );
        if fits {
            self.extra_reserved
                .store((extra + step).to_bits(), Ordering::Release);
            return Ok(());
        }
        let (kind, id) = self
            .budgets
            .first()
            .map_or((Kind::Key, ""), |((k, id), _)| (*k, id.as_str()));
        Err(GatewayError::new(
            ErrorKind::BudgetExceeded,
            format!(
                "Budget has been exceeded while streaming: no room left past this answer's \
                 reserved cost ({} `{}` or another budget it counts against).",
                kind_label(kind),
                short_id(kind, id)
            ),
        )
        .with_code("budget_exceeded"))
    }
}

impl Drop for Admission {
    /// A request dropped before it finished (the client left while waiting) still releases its
    /// reservation and limits, and is recorded.
    fn drop(&mut self) {
        self.settle(None);
    }
}

/// The record with NUL characters removed from its text (they reach it only from client input
/// that was not refused first, such as the model name of a request that failed to route).
fn without_nul(mut r: SpendRecord) -> SpendRecord {
    for field in [
        &mut r.request_id,
        &mut r.client_request_id,
        &mut r.api_key,
        &mut r.user_id,
        &mut r.team_id,
        &mut r.organization_id,
        &mut r.end_user,
        &mut r.model_group,
        &mut r.model,
        &mut r.deployment_id,
        &mut r.provider,
        &mut r.call_type,
        &mut r.status,
        &mut r.error_kind,
    ] {
        if field.contains('\0') {
            field.retain(|c| c != '\0');
        }
    }
    for tag in &mut r.tags {
        if tag.contains('\0') {
            tag.retain(|c| c != '\0');
        }
    }
    r
}

fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Key => "Key",
        Kind::User => "User",
        Kind::Team => "Team",
        Kind::Organization => "Organization",
        Kind::Customer => "End user",
        Kind::Budget => "Budget",
        Kind::Model => "Model",
    }
}

/// How often an instance on PostgreSQL reads the changes others recorded.
const CHANGE_POLL: Duration = Duration::from_millis(250);

/// How long a response waits for its spend row in `sync` durability before answering anyway.
const COMMIT_WAIT: Duration = Duration::from_secs(10);

/// Ids to show in messages: never a key's full hash.
fn short_id(kind: Kind, id: &str) -> String {
    if kind == Kind::Key {
        format!("{}...", &id[..id.len().min(8)])
    } else {
        id.to_owned()
    }
}

fn budget_error(e: &budget::Exceeded) -> GatewayError {
    GatewayError::new(
        ErrorKind::BudgetExceeded,
        format!(
            "Budget has been exceeded! {} `{}`: current spend {:.6}, max budget {:.6}",
            kind_label(e.kind),
            short_id(e.kind, &e.id),
            e.current,
            e.max_budget
        ),
    )
    .with_code("budget_exceeded")
}

fn limit_error(e: &LimitExceeded) -> GatewayError {
    let mut err = GatewayError::new(
        ErrorKind::RateLimited,
        format!(
            "Rate limit reached for {}: {} limit {} ({}).",
            e.scope.split(':').next().unwrap_or("key"),
            e.what,
            e.limit,
            if e.reset_in_ms > 0 {
                "per minute"
            } else {
                "in parallel"
            }
        ),
    )
    .with_code("rate_limit_exceeded");
    let reset_s = (e.reset_in_ms as f64 / 1000.0).ceil() as u64;
    let (limit_header, remaining_header, reset_header) = match e.what {
        "tokens" => (
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ),
        _ => (
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ),
    };
    err.headers.push((limit_header.into(), e.limit.to_string()));
    err.headers.push((remaining_header.into(), "0".into()));
    err.headers
        .push((reset_header.into(), format!("{reset_s}s")));
    if reset_s > 0 {
        err.retry_after = Some(Duration::from_secs(reset_s));
    }
    err
}

/// What admission needs from the body, and the body rewritten when the key aliases its `model`
/// (the alias applies before routing).
///
/// `end_user` is the `x-litellm-end-user-id` header (the body's `user` otherwise) and
/// `header_tags` are `x-litellm-tags`.
pub fn request_facts(
    body: &llmux::ParsedBody<'_>,
    principal: &Principal,
    end_user: Option<&str>,
    header_tags: Vec<String>,
) -> Result<(RequestFacts, Option<Bytes>), GatewayError> {
    let request = body.object();
    let model: String = request.decode("model").ok().flatten().ok_or_else(|| {
        GatewayError::invalid_request("you must provide a model parameter").with_param("model")
    })?;
    let end_user = end_user
        .map(str::to_owned)
        .or_else(|| request.decode::<String>("user").ok().flatten())
        .filter(|u| !u.is_empty());
    let max_output_tokens = request
        .decode::<u64>("max_completion_tokens")
        .ok()
        .flatten()
        .or_else(|| request.decode::<u64>("max_tokens").ok().flatten());
    let mut tags: Vec<String> = request.decode("tags").ok().flatten().unwrap_or_default();
    if let Some(meta) = request
        .decode::<serde_json::Value>("metadata")
        .ok()
        .flatten()
    {
        if let Some(t) = meta.get("tags").and_then(|t| t.as_array()) {
            tags.extend(t.iter().filter_map(|v| v.as_str()).map(str::to_owned));
        }
    }
    tags.extend(header_tags);
    // What a request writes into the spend log is bounded like everything else stored.
    let control = |t: &str| t.chars().any(char::is_control);
    if tags.len() > 64 || tags.iter().any(|t| t.len() > 256 || control(t)) {
        return Err(GatewayError::invalid_request(
            "at most 64 tags of at most 256 bytes each, without control characters (metadata.tags, tags, x-litellm-tags)",
        )
        .with_param("tags"));
    }
    if end_user
        .as_ref()
        .is_some_and(|u| u.len() > 256 || control(u))
    {
        return Err(GatewayError::invalid_request(
            "`user` must be at most 256 bytes, without control characters",
        )
        .with_param("user"));
    }
    let choices = request
        .decode::<u64>("n")
        .ok()
        .flatten()
        .max(request.decode::<u64>("best_of").ok().flatten())
        .unwrap_or(1);
    let facts = RequestFacts {
        client_request_id: None,
        choices,
        // A client's own Anthropic body riding along (`/v1/messages`) is the same prompt again.
        prompt_tokens_estimate: (body.bytes().len().saturating_sub(
            request
                .get(llmux::NATIVE_ANTHROPIC)
                .map_or(0, |raw| raw.get().len()),
        ) as u64)
            / 4,
        max_output_tokens,
        end_user,
        tags,
        model: model.clone(),
    };
    if let Some(target) = Governance::alias(principal, &model) {
        let rewritten = Bytes::from(request.edit().set_str("model", &target).render());
        let facts = RequestFacts {
            model: target,
            ..facts
        };
        return Ok((facts, Some(rewritten)));
    }
    Ok((facts, None))
}

/// The rate-limit scopes of a principal for a model.
fn rate_scopes(p: &Principal, model: &str) -> Vec<Limits> {
    // Names concatenated directly: `format!` cost more than the limiter's own work.
    let name = |parts: &[&str]| {
        let mut name = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        parts.iter().for_each(|p| name.push_str(p));
        name
    };
    let mut scopes = Vec::new();
    // A scope without limits is not named (nor counted).
    let mut push = |limits: RateLimits, scope: &dyn Fn() -> String| {
        if !limits.is_empty() {
            scopes.push(Limits {
                scope: scope(),
                rpm: limits.rpm,
                tpm: limits.tpm,
                max_parallel: limits.max_parallel,
            });
        }
    };
    // Named by the key's stable uid, so a regenerated secret continues the same windows.
    fn uid(k: &Governed) -> &str {
        k.policy.token_uid.as_deref().unwrap_or(&k.id)
    }
    if let Some(k) = &p.key {
        push(k.policy.limits, &|| name(&["key:", uid(k)]));
        // A key minted with a limited key shares that key's windows: minting never multiplies
        // a rate limit.
        if let Some((parent_uid, parent)) = &k.policy.parent_limits {
            push(*parent, &|| name(&["key:", parent_uid]));
        }
    }
    if let Some(u) = &p.user {
        push(u.policy.limits, &|| name(&["user:", &u.id]));
    }
    if let Some(t) = &p.team {
        push(t.policy.limits, &|| name(&["team:", &t.id]));
    }
    if let Some(k) = &p.key {
        let limits = RateLimits {
            rpm: k.policy.model_rpm.get(model).copied(),
            tpm: k.policy.model_tpm.get(model).copied(),
            max_parallel: None,
        };
        push(limits, &|| name(&["key:", uid(k), ":model:", model]));
    }
    scopes
}

/// The model-calling routes (LiteLLM's `llm_api_routes`).
const LLM_API_ROUTES: &[&str] = &[
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/rerank",
    "/v2/rerank",
    "/models",
    "/models/*",
];

/// Routes that only read (LiteLLM's `info_routes`).
const INFO_ROUTES: &[&str] = &[
    "/key/info",
    "/user/info",
    "/team/info",
    "/organization/info",
    "/customer/info",
    "/end_user/info",
    "/budget/info",
    "/model/info",
    "/models",
    "/models/*",
];

/// Whether a key whose `allowed_routes` are `allowed` may call `path`. An entry is a path (with
/// or without `/v1`), a prefix ending in `*`, or a group: `llm_api_routes`, `info_routes`,
/// `management_routes` (LiteLLM's names, also as `LiteLLMRoutes.<name>`).
pub fn route_allowed(allowed: &[String], path: &str) -> bool {
    let bare = path
        .strip_prefix("/v1")
        .filter(|p| p.starts_with('/'))
        .unwrap_or(path);
    let matches = |pattern: &str| {
        let pattern = pattern
            .strip_prefix("/v1")
            .filter(|p| p.starts_with('/'))
            .unwrap_or(pattern);
        match pattern.strip_suffix('*') {
            Some(prefix) => bare.starts_with(prefix),
            None => pattern == bare,
        }
    };
    allowed.iter().any(|entry| {
        let group = entry.strip_prefix("LiteLLMRoutes.").unwrap_or(entry);
        match group {
            "llm_api_routes" | "openai_routes" => LLM_API_ROUTES.iter().any(|r| matches(r)),
            "info_routes" => INFO_ROUTES.iter().any(|r| matches(r)),
            "management_routes" => manage::ROUTES.iter().any(|(r, _)| {
                let r = r.replace("{key}", "*");
                match r.split_once('*') {
                    Some((head, tail)) => bare.starts_with(head) && bare.ends_with(tail),
                    None => r == bare,
                }
            }),
            _ => matches(entry),
        }
    })
}

/// Whether `p` may use `model`: every model list that restricts it (its key's, its team's, its
/// user's and its organization's) names the model, a wildcard pattern matching it, or an access group one of its
/// deployments is in. Empty lists and `all-proxy-models` restrict nothing; the master key and
/// callers without a key are not restricted.
pub fn check_model_access(client: &Client, p: &Principal, model: &str) -> Result<(), GatewayError> {
    let lists = [
        ("key", p.key.as_deref()),
        ("team", p.team.as_deref()),
        ("user", p.user.as_deref()),
        ("organization", p.organization.as_deref()),
    ];
    for (whose, holder) in lists {
        // Most holders restrict nothing: their list is looked at in place, not copied.
        let Some(allowed) = holder
            .filter(|h| h.policy.restricts_models)
            .map(|h| h.policy.models.as_slice())
        else {
            continue;
        };
        if !list_allows(client, allowed, model) {
            let names: Vec<&str> = allowed.iter().map(String::as_str).collect();
            return Err(GatewayError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "This key is not allowed to use model `{model}` (its {whose} allows: {}).",
                    names.join(", ")
                ),
            )
            .with_param("model")
            .with_code("model_not_allowed"));
        }
    }
    Ok(())
}

/// Whether `p` may use `model` (what the model listings show).
pub fn may_use_model(client: &Client, p: &Principal, model: &str) -> bool {
    check_model_access(client, p, model).is_ok()
}

fn list_allows(client: &Client, allowed: &[String], model: &str) -> bool {
    let allowed = || allowed.iter().map(String::as_str);
    if allowed().any(|m| m == "all-proxy-models" || m == "*") {
        return true;
    }
    let matches = |pattern: &str| {
        pattern == model
            || pattern
                .strip_suffix('*')
                .is_some_and(|prefix| model.starts_with(prefix))
    };
    if allowed().any(matches) {
        return true;
    }
    let snapshot = client.snapshot();
    let Some(route) = snapshot.router.route(model) else {
        return false;
    };
    route.candidates.iter().any(|i| {
        let groups = snapshot
            .router
            .deployment(*i)
            .config
            .model_info
            .extra
            .get("access_groups");
        groups.and_then(Value::as_array).is_some_and(|g| {
            g.iter()
                .any(|v| v.as_str().is_some_and(|g| allowed().any(|a| a == g)))
        })
    })
}

/// A pessimistic price for a request to `facts.model`: the dearest deployment of the group,
/// the prompt estimate at its input price and the output cap at its output price.
/// The dearest deployment's cost of the prompt and of one output token (for a stream's running
/// cost).
#[derive(Debug, Clone, Copy, Default)]
struct EstimatePrice {
    prompt: f64,
    per_output_token: f64,
}

/// A pessimistic price for a request: the dearest deployment of the group, its prompt plus
/// the output cap (or a default) for every completion asked for (`n`).
fn estimate_cost(client: &Client, facts: &RequestFacts) -> (f64, EstimatePrice) {
    let snapshot = client.snapshot();
    let Some(route) = snapshot.router.route(&facts.model) else {
        return (0.0, EstimatePrice::default());
    };
    let output = facts
        .max_output_tokens
        .unwrap_or(DEFAULT_OUTPUT_ESTIMATE)
        .saturating_mul(facts.choices.max(1));
    let usage = llmux_types::Usage::new(facts.prompt_tokens_estimate, output);
    let prompt_only = llmux_types::Usage::new(facts.prompt_tokens_estimate, 0);
    let one_token = llmux_types::Usage::new(0, 1);
    let mut estimate = 0.0_f64;
    let mut price = EstimatePrice::default();
    for i in route.candidates {
        let d = snapshot.router.deployment(*i);
        if let Some(p) = snapshot.pricing.deployment_price(&d.id, &d.config) {
            estimate = estimate.max(p.cost(&usage));
            price.prompt = price.prompt.max(p.cost(&prompt_only));
            price.per_output_token = price.per_output_token.max(p.cost(&one_token));
        }
    }
    (estimate, price)
}

/// RFC 3339 → unix ms.
pub fn parse_time(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc().timestamp_millis())
        })
}

/// Unix ms → RFC 3339 (UTC), the format LiteLLM returns.
pub fn format_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmux_store::Object;

    /// A SQLite store in `dir` holding one key, `k`.
    pub(super) async fn sqlite_store_with_key(dir: &std::path::Path) -> Store {
        let store = Store::open(&llmux_store::testing::sqlite_url(dir))
            .await
            .unwrap();
        store
            .insert(&Object::new(Kind::Key, "k", Default::default()))
            .await
            .unwrap();
        store
    }

    #[tokio::test]
    async fn concurrent_misses_for_one_object_share_one_database_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store_with_key(dir.path()).await;
        let config = Config::default();
        let gov = Governance::builder(store, &config)
            .clock(Arc::new(|| 0))
            .build();
        let burst = || futures_util::future::join_all((0..50).map(|_| gov.object(Kind::Key, "k")));
        for found in burst().await {
            assert_eq!(found.unwrap().unwrap().id, "k");
        }
        assert_eq!(gov.lookups(), 1, "one read for 50 concurrent misses");
        // Cached now; after an invalidation one read again.
        burst().await;
        assert_eq!(gov.lookups(), 1);
        gov.invalidate(Kind::Key, "k");
        burst().await;
        assert_eq!(gov.lookups(), 2);
        // An object that does not exist is looked up once too, and remembered as absent.
        let missing = futures_util::future::join_all((0..50).map(|_| gov.object(Kind::Key, "no")));
        assert!(missing.await.iter().all(|r| matches!(r, Ok(None))));
        assert_eq!(gov.lookups(), 3);
    }

    /// Each kind has its own cache: one id under every kind is seven objects, and invalidating
    /// one leaves the others cached.
    #[tokio::test]
    async fn objects_of_different_kinds_with_one_id_are_cached_apart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&llmux_store::testing::sqlite_url(dir.path()))
            .await
            .unwrap();
        let kinds = [
            Kind::Key,
            Kind::User,
            Kind::Team,
            Kind::Organization,
            Kind::Customer,
            Kind::Budget,
            Kind::Model,
        ];
        for kind in kinds {
            let mut data = serde_json::Map::new();
            data.insert("label".into(), kind.as_str().into());
            store
                .insert(&Object::new(kind, "same", data))
                .await
                .unwrap();
        }
        let config = Config::default();
        let gov = Governance::builder(store, &config)
            .clock(Arc::new(|| 0))
            .build();
        for _ in 0..2 {
            for kind in kinds {
                let o = gov.object(kind, "same").await.unwrap().unwrap();
                assert_eq!((o.kind, &o.data["label"]), (kind, &kind.as_str().into()));
            }
        }
        assert_eq!(gov.lookups(), 7, "one read per kind, then cached");
        gov.invalidate(Kind::Team, "same");
        for kind in kinds {
            gov.object(kind, "same").await.unwrap().unwrap();
        }
        assert_eq!(gov.lookups(), 8, "only the team was read again");
    }

    /// Counters that record what admission and settlement asked of them, and refuse every
    /// request after the first.
    #[derive(Debug, Default)]
    struct Recording {
        admitted: Mutex<Vec<(Vec<String>, usize, f64)>>,
        settled: AtomicU64,
    }

    #[async_trait::async_trait]
    impl Counters for Recording {
        async fn admit(&self, claim: &Claim<'_>) -> Result<Held, state::Refusal> {
            let mut admitted = self.admitted.lock().unwrap();
            let scopes = claim.scopes.iter().map(|s| s.scope.clone()).collect();
            admitted.push((scopes, claim.budgets.len(), claim.estimate));
            if admitted.len() > 1 {
                return Err(state::Refusal::Limit(LimitExceeded {
                    scope: claim.scopes[0].scope.clone(),
                    what: "requests",
                    limit: 1,
                    reset_in_ms: 30_000,
                }));
            }
            Ok(Held::default())
        }
        fn settle(&self, _held: &Held, done: &Done<'_>) {
            assert_eq!(done.cost, 0.0);
            self.settled.fetch_add(1, Ordering::SeqCst);
        }
        fn extend(
            &self,
            _: &Held,
            _: &[((Kind, String), f64)],
            _: &[(Kind, String)],
            _: f64,
            _: i64,
            _: &Arc<AtomicBool>,
        ) -> bool {
            true
        }
        async fn spend(&self, owners: &[(Kind, String)]) -> Vec<Option<(f64, f64)>> {
            vec![Some((0.25, 0.0)); owners.len()]
        }
        async fn set_spend(&self, _: Kind, _: &str, _: f64, _: Option<i64>) {}
        async fn forget(&self, _: Kind, _: &str) {}
        async fn flush(&self) {}
    }

    /// The counters the builder is given are the ones admission, settlement and spend reads
    /// go through (no in-process limiter or ledger is consulted instead).
    #[tokio::test]
    async fn admission_counts_on_the_counters_the_builder_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store_with_key(dir.path()).await;
        let config = Config::default();
        let recording = Arc::new(Recording::default());
        let gov = Governance::builder(store, &config)
            .clock(Arc::new(|| 1_000))
            .counters({
                let recording = Arc::clone(&recording);
                move |_built| recording
            })
            .build();
        let client = Client::from_yaml(
            "model_list: [{model_name: demo, litellm_params: {model: mock/demo, input_cost_per_token: 0.001, output_cost_per_token: 0.002}}]",
        )
        .unwrap();
        let mut doc = serde_json::Map::new();
        doc.insert("rpm_limit".into(), json!(1));
        doc.insert("max_budget".into(), json!(1.0));
        let key = Arc::new(Governed::new(Object::new(Kind::Key, "k", doc)));
        let principal = Principal {
            role: Role::InternalUser,
            key: Some(key),
            user: None,
            team: None,
            organization: None,
        };
        let facts = || RequestFacts {
            model: "demo".into(),
            choices: 1,
            ..RequestFacts::default()
        };
        let first = gov
            .admit(&principal, facts(), &client, "completion")
            .await
            .unwrap();
        let refused = gov
            .admit(&principal, facts(), &client, "completion")
            .await
            .err()
            .unwrap();
        assert_eq!(refused.status, 429);
        assert_eq!(refused.body.code.as_deref(), Some("rate_limit_exceeded"));
        {
            let admitted = recording.admitted.lock().unwrap();
            assert_eq!(admitted[0].0, ["key:k"]);
            assert_eq!(admitted[0].1, 1, "the key's budget is claimed");
            assert!(admitted[0].2 > 0.0, "with an estimate");
        }
        assert_eq!(recording.settled.load(Ordering::SeqCst), 0);
        drop(first);
        assert_eq!(recording.settled.load(Ordering::SeqCst), 1);
        let owner = (Kind::Key, "k".to_owned());
        assert_eq!(gov.spend_and_reserved(&owner).await, (0.25, 0.0));
    }
}
