//! Budgets: `budget_duration` periods and their reset boundaries, and the in-memory ledger that
//! makes enforcement hold under concurrency. Each owner's current spend is what the database
//! had when it was loaded, plus what this instance settled since (written or not), plus what
//! in-flight requests have reserved. A request is admitted while that total is below every
//! budget that applies (LiteLLM's rule, which its users rely on: a fresh key with a budget
//! smaller than one request's estimate still answers its first request, and a budget's last
//! cents are usable), and its estimate stays reserved until it settles, so concurrent requests
//! see each other.
//!
//! A fleet sharing Redis keeps the same ledger in Redis (`shared.rs`), so the rule and the
//! bound below hold fleet-wide; this ledger then mirrors the instance's own share, for the time
//! Redis does not answer.
//!
//! Worst-case overspend (one instance, or a fleet on Redis): the last request admitted before the total reaches the
//! budget (its cost), plus, over requests in flight at that moment, what each costs beyond its
//! estimate. The estimate prices the prompt plus the request's `max_tokens` (else
//! `DEFAULT_OUTPUT_ESTIMATE` tokens) of output for every choice asked for, so with `max_tokens`
//! set and honoured that second part is zero (`budget_stream_cutoff` bounds it when upstreams
//! ignore `max_tokens`).

use foldhash::HashMap;
use std::sync::Mutex;

use llmux_store::{civil_from_days as civil, days_from_civil, Kind};

/// Output tokens assumed for a request that does not cap them.
pub const DEFAULT_OUTPUT_ESTIMATE: u64 = 1024;

const DAY_MS: i64 = 86_400_000;

/// A `budget_duration`: `30s`, `30m`, `24h`, `7d`, `1mo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Millis(i64),
    Days(i64),
    Months(i64),
}

impl Period {
    pub fn parse(text: &str) -> Option<Period> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit())?;
        let (n, unit) = t.split_at(split);
        let n: i64 = n.parse().ok().filter(|n| *n > 0 && *n < 100_000)?;
        Some(match unit {
            "s" => Period::Millis(n * 1000),
            "m" | "min" => Period::Millis(n * 60_000),
            "h" => Period::Millis(n * 3_600_000),
            "d" => Period::Days(n),
            "w" => Period::Days(n * 7),
            "mo" => Period::Months(n),
            _ => return None,
        })
    }

    /// When a key with this `duration` expires: `now` plus the duration (months: at the start
    /// of the month it ends in, like budget periods).
    pub fn expires_at(self, now: i64) -> i64 {
        match self {
            Period::Millis(ms) => now + ms,
            Period::Days(d) => now + d * DAY_MS,
            Period::Months(_) => self.next_reset(now),
        }
    }

    /// When a period that starts at `now` (unix ms) ends. Seconds, minutes and hours count from
    /// now; days end at a UTC midnight (`1d` = the next one); months at 00:00 UTC on the 1st.
    pub fn next_reset(self, now: i64) -> i64 {
        match self {
            Period::Millis(ms) => now + ms,
            Period::Days(n) => (now.div_euclid(DAY_MS) + n) * DAY_MS,
            Period::Months(n) => {
                let (y, m, _) = civil(now.div_euclid(DAY_MS));
                let total = y * 12 + (m - 1) + n;
                days_from_civil(total.div_euclid(12), total.rem_euclid(12) + 1, 1) * DAY_MS
            }
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    /// Spend in the database when last loaded (or reset).
    base: f64,
    /// Settled here, not yet written.
    unflushed: f64,
    /// Estimates of requests in flight.
    reserved: f64,
    /// Unix ms the period of `base` ends (a reset is due then).
    reset_at: Option<i64>,
}

/// One owner's budget as checked at admission.
#[derive(Debug, Clone)]
pub struct BudgetCheck {
    pub kind: Kind,
    pub id: String,
    pub max_budget: f64,
    /// Database spend and period end as last loaded.
    pub stored_spend: f64,
    pub reset_at: Option<i64>,
}

/// Exceeded: which owner, its budget and current spend.
#[derive(Debug, Clone, PartialEq)]
pub struct Exceeded {
    pub kind: Kind,
    pub id: String,
    pub max_budget: f64,
    pub current: f64,
}

/// Spend per owner, shared by every request of this instance.
#[derive(Debug, Default)]
pub struct Ledger {
    entries: Mutex<HashMap<(Kind, String), Entry>>,
}

impl Ledger {
    /// Reserve `estimate` against every budget in `checks`, or none of them if one is already
    /// spent or reserved to its limit. `now` decides whether a period has ended (its spend then counts as 0).
    pub fn reserve(
        &self,
        checks: &[BudgetCheck],
        owners: &[(Kind, String)],
        estimate: f64,
        now: i64,
    ) -> Result<(), Exceeded> {
        self.reserve_checked(checks, owners, estimate, now, true)
    }

    /// Reserve `estimate` as `reserve` does without refusing: the fleet's shared state admitted
    /// the request, and this instance keeps its own view current (its settled spend and
    /// requests in flight) for the time Redis does not answer.
    pub fn track(
        &self,
        checks: &[BudgetCheck],
        owners: &[(Kind, String)],
        estimate: f64,
        now: i64,
    ) {
        let _ = self.reserve_checked(checks, owners, estimate, now, false);
    }

    fn reserve_checked(
        &self,
        checks: &[BudgetCheck],
        owners: &[(Kind, String)],
        estimate: f64,
        now: i64,
        refuse: bool,
    ) -> Result<(), Exceeded> {
        if owners.is_empty() {
            return Ok(());
        }
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for check in checks {
            let e = entries
                .entry((check.kind, check.id.clone()))
                .or_insert(Entry {
                    base: check.stored_spend,
                    reset_at: check.reset_at,
                    ..Entry::default()
                });
            if e.reset_at == check.reset_at {
                // Same period: spend other instances wrote shows up as the stored value grows.
                e.base = e.base.max(check.stored_spend);
            }
            if e.reset_at.is_some_and(|r| r <= now) {
                // The period is over: its spend no longer counts, whatever the database says yet.
                e.base = 0.0;
                e.unflushed = 0.0;
                e.reset_at = check.reset_at.filter(|r| *r > now);
            }
            let current = e.base + e.unflushed + e.reserved;
            if refuse && current >= check.max_budget {
                return Err(Exceeded {
                    kind: check.kind,
                    id: check.id.clone(),
                    max_budget: check.max_budget,
                    current: e.base + e.unflushed,
                });
            }
        }
        for owner in owners {
            entries.entry(owner.clone()).or_default().reserved += estimate;
        }
        Ok(())
    }

    /// A request is over: drop its reservation and count what it cost.
    pub fn settle(&self, owners: &[(Kind, String)], estimate: f64, cost: f64) {
        if owners.is_empty() {
            return;
        }
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for owner in owners {
            let e = entries.entry(owner.clone()).or_default();
            e.reserved = (e.reserved - estimate).max(0.0);
            e.unflushed += cost;
        }
    }

    /// Spend written to the database: it moves from `unflushed` to `base`.
    pub fn flushed(&self, owner: &(Kind, String), amount: f64) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(e) = entries.get_mut(owner) {
            let moved = amount.min(e.unflushed);
            e.unflushed -= moved;
            e.base += moved;
        }
    }

    /// A new period began (or an admin set the spend): start from `spend`.
    pub fn reset(&self, owner: &(Kind, String), spend: f64, reset_at: Option<i64>) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let e = entries.entry(owner.clone()).or_default();
        e.base = spend;
        e.unflushed = 0.0;
        e.reset_at = reset_at;
    }

    /// Forget an owner (deleted, or to reload its stored spend on next use).
    pub fn forget(&self, owner: &(Kind, String)) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries
            .get(owner)
            .is_some_and(|e| e.reserved == 0.0 && e.unflushed == 0.0)
        {
            entries.remove(owner);
        }
    }

    /// Grow a running request's reservation by `delta` on every owner, if every budget in
    /// `budgets` (owner, max) has room for it on top of its settled spend and all reservations;
    /// `false` (and nothing reserved) otherwise.
    pub fn extend(
        &self,
        budgets: &[((Kind, String), f64)],
        owners: &[(Kind, String)],
        delta: f64,
        now: i64,
    ) -> bool {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fits = budgets.iter().all(|(owner, max)| {
            entries.get(owner).is_none_or(|e| {
                // A period that ended while the stream ran counts from zero, as at admission.
                let settled = if e.reset_at.is_some_and(|r| r <= now) {
                    0.0
                } else {
                    e.base + e.unflushed
                };
                settled + e.reserved + delta <= max + 1e-12
            })
        });
        if fits {
            for owner in owners {
                entries.entry(owner.clone()).or_default().reserved += delta;
            }
        }
        fits
    }

    /// Settled spend (including unwritten) and what requests in flight have reserved.
    pub fn spend_and_reserved(&self, owner: &(Kind, String)) -> (f64, f64) {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries
            .get(owner)
            .map_or((0.0, 0.0), |e| (e.base + e.unflushed, e.reserved))
    }

    /// Settled spend (including unwritten) and reservations of an owner this instance tracks,
    /// read at one moment.
    pub fn tracked(&self, owner: &(Kind, String)) -> Option<(f64, f64)> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries
            .get(owner)
            .map(|e| (e.base + e.unflushed, e.reserved))
    }

    /// Current spend (settled, including unwritten) of an owner this instance tracks.
    pub fn spend(&self, owner: &(Kind, String)) -> Option<f64> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.get(owner).map(|e| e.base + e.unflushed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOV_23_2026: i64 = 1_795_392_000_000; // 2026-11-23T00:00:00Z

    #[test]
    fn durations_parse_and_reset_at_their_boundaries() {
        let now = NOV_23_2026 + 10 * 3_600_000 + 123; // 10:00:00.123
        assert_eq!(Period::parse("30s").unwrap().next_reset(now), now + 30_000);
        assert_eq!(
            Period::parse("30m").unwrap().next_reset(now),
            now + 1_800_000
        );
        assert_eq!(Period::parse("24h").unwrap().next_reset(now), now + DAY_MS);
        assert_eq!(
            Period::parse("1d").unwrap().next_reset(now),
            NOV_23_2026 + DAY_MS
        );
        assert_eq!(
            Period::parse("7d").unwrap().next_reset(now),
            NOV_23_2026 + 7 * DAY_MS
        );
        // 2026-12-01T00:00:00Z and 2027-01-01T00:00:00Z
        assert_eq!(
            Period::parse("1mo").unwrap().next_reset(now),
            1_796_083_200_000
        );
        assert_eq!(
            Period::parse("2mo").unwrap().next_reset(now),
            1_798_761_600_000
        );
        assert_eq!(civil(days_from_civil(2028, 2, 29)), (2028, 2, 29));
        for bad in ["", "5", "d", "0d", "-1d", "3y", "1.5h"] {
            assert!(Period::parse(bad).is_none(), "{bad}");
        }
    }

    fn check(max: f64, stored: f64, reset_at: Option<i64>) -> BudgetCheck {
        BudgetCheck {
            kind: Kind::Key,
            id: "k".into(),
            max_budget: max,
            stored_spend: stored,
            reset_at,
        }
    }

    #[test]
    fn reservations_hold_the_budget_until_settled() {
        let ledger = Ledger::default();
        let owners = vec![(Kind::Key, "k".to_owned())];
        let c = [check(1.0, 0.2, None)];
        assert!(ledger.reserve(&c, &owners, 0.4, 0).is_ok());
        assert!(ledger.reserve(&c, &owners, 0.4, 0).is_ok());
        let e = ledger.reserve(&c, &owners, 0.4, 0).unwrap_err();
        assert_eq!(e.current, 0.2, "reservations are not spend yet");
        ledger.settle(&owners, 0.4, 0.0);
        assert!(
            ledger.reserve(&c, &owners, 0.4, 0).is_ok(),
            "a free answer frees its reservation"
        );
        ledger.settle(&owners, 0.4, 0.4);
        ledger.settle(&owners, 0.4, 0.4);
        assert!((ledger.spend(&owners[0]).unwrap() - 1.0).abs() < 1e-9);
        ledger.flushed(&owners[0], 0.9);
        assert!(
            (ledger.spend(&owners[0]).unwrap() - 1.0).abs() < 1e-9,
            "writing moves, not adds"
        );
        assert!(
            ledger.reserve(&c, &owners, 0.0, 0).is_err(),
            "at or over budget"
        );
    }

    #[test]
    fn a_request_is_admitted_while_the_budget_has_room_even_if_its_estimate_does_not_fit() {
        let ledger = Ledger::default();
        let owners = vec![(Kind::Key, "k".to_owned())];
        let c = [check(0.0005, 0.0, None)];
        assert!(
            ledger.reserve(&c, &owners, 0.01, 0).is_ok(),
            "a fresh small budget answers"
        );
        let e = ledger.reserve(&c, &owners, 0.01, 0).unwrap_err();
        assert_eq!(e.current, 0.0, "the message states the real spend");
        assert_eq!(e.max_budget, 0.0005);
        ledger.settle(&owners, 0.01, 0.0003);
        assert!(
            ledger.reserve(&c, &owners, 0.01, 0).is_ok(),
            "the last cents are usable"
        );
        ledger.settle(&owners, 0.01, 0.0003);
        assert!(ledger.reserve(&c, &owners, 0.01, 0).is_err(), "spent");
    }

    #[test]
    fn an_ended_period_no_longer_counts() {
        let ledger = Ledger::default();
        let owners = vec![(Kind::Key, "k".to_owned())];
        assert!(ledger
            .reserve(&[check(1.0, 1.0, Some(5000))], &owners, 0.1, 4999)
            .is_err());
        assert!(ledger
            .reserve(&[check(1.0, 1.0, Some(5000))], &owners, 0.1, 5000)
            .is_ok());
    }
}
