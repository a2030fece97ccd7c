//! Where admission's counters live: rate-limit windows, parallel slots, budget spend and the
//! reservations of requests in flight. `Counters` is the async seam admission and settlement go
//! through; `LocalCounters` counts in this process, `FleetCounters` in the fleet's Redis (one
//! round trip per admission, settlements batched off the request path) with this process's
//! counters as the fallback when Redis does not answer within its deadline.
//! `GovernanceBuilder` picks one (`crate::GovernanceBuilder::counters`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use llmux_store::Kind;

use crate::budget::{BudgetCheck, Exceeded, Ledger};
use crate::limits::{LimitExceeded, Limits, RateLimiter, Remaining};
use crate::shared::{self, SharedState};

/// What one request asks of the counters at admission.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    /// Its rate-limit scopes (key, user, team, key and model).
    pub scopes: &'a [Limits],
    /// Its budgets, with what the database knows of each.
    pub budgets: &'a [BudgetCheck],
    /// Every owner its spend counts on (with or without a budget).
    pub owners: &'a [(Kind, String)],
    /// The dollars reserved on each budget while it runs.
    pub estimate: f64,
    pub now: i64,
}

/// Why the counters refused a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Budget(Exceeded),
    Limit(LimitExceeded),
}

/// What an admitted request holds on the counters, given back by `Counters::settle`.
#[derive(Debug, Clone, Default)]
pub struct Held {
    /// What its tightest limits have left (the `x-ratelimit-*` headers).
    pub remaining: Remaining,
    /// The id its claim is known by in Redis (`None`: counted in this process).
    pub shared_id: Option<String>,
    /// A budget it counts against was near its end: its settlement goes out at once.
    pub urgent: bool,
}

/// A finished request's account.
#[derive(Debug, Clone, Copy)]
pub struct Done<'a> {
    pub claim: Claim<'a>,
    /// What it had reserved by the end (its estimate and any stream extension).
    pub reserved: f64,
    pub tokens: u64,
    pub cost: f64,
    /// When it finished (admission time is `claim.now`).
    pub now: i64,
}

/// Rate-limit and budget counters. Admission awaits `admit`; everything else is off the
/// request path or at most a deadline long.
#[async_trait]
pub trait Counters: Send + Sync + std::fmt::Debug {
    /// Count one request against every scope and reserve its estimate on every budget, or
    /// refuse it (nothing counted). LiteLLM's rule: admitted while committed spend plus
    /// reservations are below the budget; its own estimate need not fit.
    async fn admit(&self, claim: &Claim<'_>) -> Result<Held, Refusal>;

    /// Give back what `held` holds and count what the request used.
    fn settle(&self, held: &Held, done: &Done<'_>);

    /// Reserve `step` more for a running stream on its budgets (owner, max budget): `false`
    /// when one has no room here. A fleet's own answer arrives later: `refused_more` is set
    /// when the fleet had no room (the stream ends at its next step).
    fn extend(
        &self,
        held: &Held,
        budgets: &[((Kind, String), f64)],
        owners: &[(Kind, String)],
        step: f64,
        now: i64,
        refused_more: &Arc<AtomicBool>,
    ) -> bool;

    /// Each owner's settled spend and the reservations of its requests in flight, as the
    /// counters know them; `None` where they do not track it (the database's value stands).
    async fn spend(&self, owners: &[(Kind, String)]) -> Vec<Option<(f64, f64)>>;

    /// An administrator set an owner's spend, or its period was reset: count from `spend`.
    async fn set_spend(&self, kind: Kind, id: &str, spend: f64, reset_at: Option<i64>);

    /// An owner was deleted: forget what was counted for it.
    async fn forget(&self, kind: Kind, id: &str);

    /// Send whatever is queued (a graceful stop).
    async fn flush(&self);
}

/// Counters in this process: the budget ledger and a rate limiter.
#[derive(Debug)]
pub struct LocalCounters {
    pub ledger: Arc<Ledger>,
    pub limiter: Arc<dyn RateLimiter>,
}

impl LocalCounters {
    fn admit_here(&self, claim: &Claim<'_>) -> Result<Remaining, Refusal> {
        self.ledger
            .reserve(claim.budgets, claim.owners, claim.estimate, claim.now)
            .map_err(Refusal::Budget)?;
        self.limiter.acquire(claim.scopes, claim.now).map_err(|e| {
            self.ledger.settle(claim.owners, claim.estimate, 0.0);
            Refusal::Limit(e)
        })
    }
}

#[async_trait]
impl Counters for LocalCounters {
    async fn admit(&self, claim: &Claim<'_>) -> Result<Held, Refusal> {
        Ok(Held {
            remaining: self.admit_here(claim)?,
            ..Held::default()
        })
    }

    fn settle(&self, _held: &Held, done: &Done<'_>) {
        self.ledger
            .settle(done.claim.owners, done.reserved, done.cost);
        self.limiter
            .release(done.claim.scopes, done.tokens, done.now);
    }

    fn extend(
        &self,
        _held: &Held,
        budgets: &[((Kind, String), f64)],
        owners: &[(Kind, String)],
        step: f64,
        now: i64,
        _refused_more: &Arc<AtomicBool>,
    ) -> bool {
        self.ledger.extend(budgets, owners, step, now)
    }

    async fn spend(&self, owners: &[(Kind, String)]) -> Vec<Option<(f64, f64)>> {
        owners.iter().map(|o| self.ledger.tracked(o)).collect()
    }

    async fn set_spend(&self, kind: Kind, id: &str, spend: f64, reset_at: Option<i64>) {
        self.ledger.reset(&(kind, id.to_owned()), spend, reset_at);
    }

    async fn forget(&self, kind: Kind, id: &str) {
        self.ledger.forget(&(kind, id.to_owned()));
    }

    async fn flush(&self) {}
}

/// Counters shared by a fleet through Redis. This process's counters keep their own view
/// current (settled spend, requests in flight) and take over while Redis does not answer.
#[derive(Debug)]
pub struct FleetCounters {
    pub local: LocalCounters,
    pub shared: Arc<SharedState>,
}

#[async_trait]
impl Counters for FleetCounters {
    async fn admit(&self, claim: &Claim<'_>) -> Result<Held, Refusal> {
        if claim.scopes.is_empty() && claim.budgets.is_empty() {
            return self.local.admit(claim).await;
        }
        let id = llmux::new_request_id();
        let admitted = self
            .shared
            .acquire(claim.scopes, claim.budgets, claim.estimate, &id, claim.now)
            .await;
        match admitted {
            Ok(Ok(admitted)) => {
                self.local
                    .ledger
                    .track(claim.budgets, claim.owners, claim.estimate, claim.now);
                Ok(Held {
                    remaining: admitted.remaining,
                    shared_id: Some(id),
                    // Near a budget's end (room for fewer than ten such requests), the
                    // settlement goes out at once so the next request sees it.
                    urgent: admitted
                        .budget_room
                        .is_some_and(|room| room < 10.0 * claim.estimate.max(1e-9)),
                })
            }
            Ok(Err(shared::Refusal::Budget(e))) => Err(Refusal::Budget(e)),
            Ok(Err(shared::Refusal::Limit(e))) => Err(Refusal::Limit(e)),
            Err(shared::Unavailable) => self.local.admit(claim).await,
        }
    }

    fn settle(&self, held: &Held, done: &Done<'_>) {
        let Some(id) = &held.shared_id else {
            return self.local.settle(held, done);
        };
        self.local
            .ledger
            .settle(done.claim.owners, done.reserved, done.cost);
        let budget_owners: Vec<(Kind, String)> = done
            .claim
            .budgets
            .iter()
            .map(|b| (b.kind, b.id.clone()))
            .collect();
        self.shared.release(shared::Settlement {
            scopes: done.claim.scopes,
            budgets: &budget_owners,
            request_id: id,
            tokens: done.tokens,
            cost: done.cost,
            started: done.claim.now,
            urgent: held.urgent,
        });
    }

    fn extend(
        &self,
        held: &Held,
        budgets: &[((Kind, String), f64)],
        owners: &[(Kind, String)],
        step: f64,
        now: i64,
        refused_more: &Arc<AtomicBool>,
    ) -> bool {
        if !self
            .local
            .extend(held, budgets, owners, step, now, refused_more)
        {
            return false;
        }
        // The step is reserved in Redis too, off the stream's path: when the fleet has no
        // room for it, the stream ends at its next step (one step late).
        if let Some(id) = &held.shared_id {
            let answer = self.shared.extend(budgets, id, step);
            let refused = Arc::clone(refused_more);
            tokio::spawn(async move {
                if let Ok(false) = answer.await {
                    refused.store(true, Ordering::Release);
                }
            });
        }
        true
    }

    async fn spend(&self, owners: &[(Kind, String)]) -> Vec<Option<(f64, f64)>> {
        let mut out = self.local.spend(owners).await;
        if let Ok(rows) = self.shared.spend(owners).await {
            for (slot, row) in out.iter_mut().zip(rows) {
                if let Some((spend, reserved)) = row {
                    // The fleet's reservations; settled spend as the larger view (this
                    // instance may have settled what Redis has not been sent yet).
                    let here = slot.map_or(0.0, |(s, _)| s);
                    *slot = Some((spend.max(here), reserved.max(0.0)));
                }
            }
        }
        out
    }

    async fn set_spend(&self, kind: Kind, id: &str, spend: f64, reset_at: Option<i64>) {
        self.local.set_spend(kind, id, spend, reset_at).await;
        self.shared.set_spend(kind, id, spend, reset_at).await;
    }

    async fn forget(&self, kind: Kind, id: &str) {
        self.local.forget(kind, id).await;
        self.shared.forget(kind, id).await;
    }

    async fn flush(&self) {
        self.shared.flush_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::InMemoryLimiter;

    fn local() -> LocalCounters {
        LocalCounters {
            ledger: Arc::new(Ledger::default()),
            limiter: Arc::new(InMemoryLimiter::default()),
        }
    }

    /// LiteLLM's rule: a request is admitted while settled spend and reservations are below the
    /// budget, even when its own estimate is larger than what is left; the refusal states the
    /// real spend.
    #[tokio::test]
    async fn a_budget_smaller_than_one_estimate_admits_its_first_request() {
        let counters = local();
        let budgets = [BudgetCheck {
            kind: Kind::Key,
            id: "k".into(),
            max_budget: 0.0005,
            stored_spend: 0.0,
            reset_at: None,
        }];
        let owners = [(Kind::Key, "k".to_owned())];
        let claim = Claim {
            scopes: &[],
            budgets: &budgets,
            owners: &owners,
            estimate: 0.01,
            now: 1_000,
        };
        let held = counters
            .admit(&claim)
            .await
            .expect("first request admitted");
        // While it runs, its reservation fills the budget.
        assert!(matches!(
            counters.admit(&claim).await,
            Err(Refusal::Budget(Exceeded { current, .. })) if current == 0.0
        ));
        counters.settle(
            &held,
            &Done {
                claim,
                reserved: 0.01,
                tokens: 10,
                cost: 0.0006,
                now: 2_000,
            },
        );
        assert_eq!(
            counters.spend(&owners).await,
            [Some((0.0006, 0.0))],
            "the reservation is given back and the cost counted"
        );
        match counters.admit(&claim).await {
            Err(Refusal::Budget(e)) => {
                assert_eq!((e.max_budget, e.current), (0.0005, 0.0006));
            }
            other => panic!("expected a budget refusal, got {other:?}"),
        }
    }

    /// A limit that refuses gives back the budget reservation made before it.
    #[tokio::test]
    async fn a_rate_limit_refusal_leaves_nothing_reserved() {
        let counters = local();
        let budgets = [BudgetCheck {
            kind: Kind::Team,
            id: "t".into(),
            max_budget: 10.0,
            stored_spend: 0.0,
            reset_at: None,
        }];
        let owners = [(Kind::Team, "t".to_owned())];
        let scopes = [Limits {
            scope: "team:t".into(),
            rpm: Some(1),
            tpm: None,
            max_parallel: None,
        }];
        let claim = Claim {
            scopes: &scopes,
            budgets: &budgets,
            owners: &owners,
            estimate: 1.0,
            now: 1_000,
        };
        let held = counters.admit(&claim).await.expect("admitted");
        assert_eq!(held.remaining.requests, Some((1, 0)));
        assert!(matches!(
            counters.admit(&claim).await,
            Err(Refusal::Limit(LimitExceeded {
                what: "requests",
                ..
            }))
        ));
        assert_eq!(counters.ledger.spend_and_reserved(&owners[0]), (0.0, 1.0));
    }
}
