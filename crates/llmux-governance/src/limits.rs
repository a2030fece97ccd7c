//! Rate limits: requests and tokens per minute and requests in parallel, per key, user, team,
//! and per key and model. Fixed one-minute windows, as LiteLLM counts them, so the
//! `x-ratelimit-*` headers mean the same thing. In-process here; `RateLimiter` is the seam a
//! shared (Redis) limiter implements for a fleet.

// hashbrown for `entry_ref`: a scope's name is copied into the map only when first seen.
use hashbrown::HashMap;
use std::sync::Mutex;

const WINDOW_MS: i64 = 60_000;

/// Start of the one-minute window `now` falls in.
fn window_start(now: i64) -> i64 {
    now - now.rem_euclid(WINDOW_MS)
}

/// The limits of one scope (`key:<hash>`, `user:<id>`, `team:<id>`, `key:<hash>:model:<m>`).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub scope: String,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_parallel: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none() && self.max_parallel.is_none()
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitExceeded {
    pub scope: String,
    /// `requests`, `tokens` or `parallel_requests`.
    pub what: &'static str,
    pub limit: u64,
    /// Milliseconds until the window resets (0 for parallel limits).
    pub reset_in_ms: i64,
}

/// What is left in the tightest window, for the response headers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Remaining {
    pub requests: Option<(u64, u64)>,
    pub tokens: Option<(u64, u64)>,
    pub reset_in_ms: i64,
}

pub trait RateLimiter: Send + Sync + std::fmt::Debug {
    /// Count one request against every scope, or none if any limit is reached.
    fn acquire(&self, scopes: &[Limits], now_ms: i64) -> Result<Remaining, LimitExceeded>;
    /// The request is over: it used `tokens` (counted against tpm of this window).
    fn release(&self, scopes: &[Limits], tokens: u64, now_ms: i64);
}

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    start: i64,
    requests: u64,
    tokens: u64,
    in_flight: u64,
}

/// One process's counters.
#[derive(Debug, Default)]
pub struct InMemoryLimiter {
    windows: Mutex<Windows>,
}

#[derive(Debug, Default)]
struct Windows {
    by_scope: HashMap<String, Window>,
    /// Start of the window in which stale entries were last dropped.
    swept_at: i64,
}

impl Windows {
    /// Once per window, drop the scopes whose window is over and that have nothing in flight:
    /// they count nothing any more (a new window starts from zero), and without this every key,
    /// user, team and key-model pair ever seen would stay in the map until restart.
    fn sweep(&mut self, now: i64) {
        let start = window_start(now);
        if start > self.swept_at {
            self.by_scope
                .retain(|_, w| w.start == start || w.in_flight > 0);
            self.swept_at = start;
        }
    }
}

impl InMemoryLimiter {
    /// The scope's counters, reset when a new window has begun.
    fn window<'m>(map: &'m mut HashMap<String, Window>, scope: &str, now: i64) -> &'m mut Window {
        let start = window_start(now);
        let w = map.entry_ref(scope).or_default();
        if w.start != start {
            w.start = start;
            w.requests = 0;
            w.tokens = 0;
        }
        w
    }
}

impl RateLimiter for InMemoryLimiter {
    fn acquire(&self, scopes: &[Limits], now: i64) -> Result<Remaining, LimitExceeded> {
        let reset_in_ms = window_start(now) + WINDOW_MS - now;
        if scopes.iter().all(Limits::is_empty) {
            return Ok(Remaining {
                reset_in_ms,
                ..Remaining::default()
            });
        }
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        windows.sweep(now);
        let map = &mut windows.by_scope;
        let mut remaining = Remaining {
            reset_in_ms,
            ..Remaining::default()
        };
        for l in scopes.iter().filter(|l| !l.is_empty()) {
            let w = *Self::window(map, &l.scope, now);
            let refuse = |what, limit| LimitExceeded {
                scope: l.scope.clone(),
                what,
                limit,
                reset_in_ms: if what == "parallel_requests" {
                    0
                } else {
                    reset_in_ms
                },
            };
            if let Some(rpm) = l.rpm.filter(|r| w.requests >= *r) {
                return Err(refuse("requests", rpm));
            }
            if let Some(tpm) = l.tpm.filter(|t| w.tokens >= *t) {
                return Err(refuse("tokens", tpm));
            }
            if let Some(p) = l.max_parallel.filter(|p| w.in_flight >= *p) {
                return Err(refuse("parallel_requests", p));
            }
        }
        for l in scopes.iter().filter(|l| !l.is_empty()) {
            let w = Self::window(map, &l.scope, now);
            w.requests += 1;
            w.in_flight += 1;
            if let Some(rpm) = l.rpm {
                let left = rpm.saturating_sub(w.requests);
                if remaining.requests.is_none_or(|(_, r)| left < r) {
                    remaining.requests = Some((rpm, left));
                }
            }
            if let Some(tpm) = l.tpm {
                let left = tpm.saturating_sub(w.tokens);
                if remaining.tokens.is_none_or(|(_, r)| left < r) {
                    remaining.tokens = Some((tpm, left));
                }
            }
        }
        Ok(remaining)
    }

    fn release(&self, scopes: &[Limits], tokens: u64, now: i64) {
        if scopes.iter().all(Limits::is_empty) {
            return;
        }
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for l in scopes.iter().filter(|l| !l.is_empty()) {
            let w = Self::window(&mut windows.by_scope, &l.scope, now);
            w.in_flight = w.in_flight.saturating_sub(1);
            w.tokens += tokens;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rpm: Option<u64>, tpm: Option<u64>, par: Option<u64>) -> Vec<Limits> {
        vec![Limits {
            scope: "key:k".into(),
            rpm,
            tpm,
            max_parallel: par,
        }]
    }

    #[test]
    fn requests_per_minute_reset_with_the_window() {
        let l = InMemoryLimiter::default();
        let s = limits(Some(2), None, None);
        let r = l.acquire(&s, 1_000).unwrap();
        assert_eq!(r.requests, Some((2, 1)));
        assert_eq!(r.reset_in_ms, 59_000);
        l.release(&s, 0, 1_000);
        l.acquire(&s, 2_000).unwrap();
        l.release(&s, 0, 2_000);
        let e = l.acquire(&s, 59_999).unwrap_err();
        assert_eq!((e.what, e.limit, e.reset_in_ms), ("requests", 2, 1));
        assert!(l.acquire(&s, 60_000).is_ok(), "a new minute");
    }

    #[test]
    fn tokens_count_after_the_fact_and_parallel_counts_in_flight() {
        let l = InMemoryLimiter::default();
        let s = limits(None, Some(100), Some(2));
        l.acquire(&s, 0).unwrap();
        l.acquire(&s, 0).unwrap();
        assert_eq!(l.acquire(&s, 0).unwrap_err().what, "parallel_requests");
        l.release(&s, 60, 0);
        l.release(&s, 60, 0);
        assert_eq!(
            l.acquire(&s, 0).unwrap_err().what,
            "tokens",
            "120 of 100 used"
        );
        assert!(l.acquire(&s, 60_000).is_ok());
    }

    #[test]
    fn a_refusal_counts_against_no_scope() {
        let l = InMemoryLimiter::default();
        let s = vec![
            Limits {
                scope: "key:k".into(),
                rpm: Some(10),
                tpm: None,
                max_parallel: None,
            },
            Limits {
                scope: "team:t".into(),
                rpm: Some(1),
                tpm: None,
                max_parallel: None,
            },
        ];
        l.acquire(&s, 0).unwrap();
        assert!(l.acquire(&s, 0).is_err());
        let key_only = &s[..1];
        assert_eq!(l.acquire(key_only, 0).unwrap().requests, Some((10, 8)));
    }

    #[test]
    fn scopes_of_a_past_window_are_dropped_unless_in_flight() {
        let l = InMemoryLimiter::default();
        let scope = |name: &str| {
            vec![Limits {
                scope: name.into(),
                rpm: Some(100),
                tpm: None,
                max_parallel: None,
            }]
        };
        for i in 0..50 {
            let s = scope(&format!("key:{i}"));
            l.acquire(&s, 1_000).unwrap();
            l.release(&s, 0, 1_000);
        }
        let busy = scope("key:busy");
        l.acquire(&busy, 1_000).unwrap(); // still in flight in the next minute
        let size = |l: &InMemoryLimiter| l.windows.lock().unwrap().by_scope.len();
        assert_eq!(size(&l), 51);
        l.acquire(&scope("key:new"), 61_000).unwrap();
        assert_eq!(size(&l), 2, "the busy scope and the new one");
        l.release(&busy, 10, 61_000);
        // The one in flight was kept, so its release still counted (tokens, parallel).
        let w = l.windows.lock().unwrap().by_scope["key:busy"];
        assert_eq!((w.in_flight, w.tokens), (0, 10));
    }
}
