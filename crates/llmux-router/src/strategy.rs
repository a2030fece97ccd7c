//! Routing strategies: each orders a tier's available deployments, reading only the stats it is
//! given (no IO). The first deployment in the order that can take the request gets it.

use std::sync::atomic::{AtomicU64, Ordering};

use llmux_config::StrategyKind;
use rand::seq::SliceRandom;
use rand::Rng;

/// What a strategy may look at for one candidate.
#[derive(Debug, Clone, Copy, Default)]
pub struct CandidateView {
    pub index: usize,
    /// Static weight for simple-shuffle (weight, else rpm, else tpm, else 1).
    pub weight: f64,
    pub in_flight: u64,
    /// Moving average latency per output token, or time to first token for streams (ms).
    pub latency_ms: Option<f64>,
    pub tokens_this_minute: u64,
    /// Input + output price per token, when known.
    pub cost_per_token: Option<f64>,
}

/// Order `candidates` (best first) by `kind`.
pub fn rank(
    kind: StrategyKind,
    candidates: &mut [CandidateView],
    lowest_latency_buffer: f64,
    round_robin: &AtomicU64,
) {
    let mut rng = rand::rng();
    // Random first, then a stable sort: ties are broken at random, spreading load.
    candidates.shuffle(&mut rng);
    match kind {
        StrategyKind::SimpleShuffle => weighted_shuffle(candidates, &mut rng),
        StrategyKind::LeastBusy => candidates.sort_by_key(|c| c.in_flight),
        StrategyKind::UsageBased => candidates.sort_by_key(|c| c.tokens_this_minute),
        StrategyKind::CostBased => {
            candidates.sort_by(|a, b| {
                let a = a.cost_per_token.unwrap_or(f64::INFINITY);
                let b = b.cost_per_token.unwrap_or(f64::INFINITY);
                a.total_cmp(&b)
            });
        }
        StrategyKind::LatencyBased => {
            // No data yet counts as fastest, so a new deployment gets measured.
            candidates.sort_by(|a, b| {
                a.latency_ms
                    .unwrap_or(0.0)
                    .total_cmp(&b.latency_ms.unwrap_or(0.0))
            });
            if lowest_latency_buffer > 0.0 && candidates.len() > 1 {
                let lowest = candidates[0].latency_ms.unwrap_or(0.0);
                let bound = lowest * (1.0 + lowest_latency_buffer);
                let within = candidates
                    .iter()
                    .take_while(|c| c.latency_ms.unwrap_or(0.0) <= bound)
                    .count();
                candidates[..within].shuffle(&mut rng);
            }
        }
        StrategyKind::RoundRobin => {
            candidates.sort_by_key(|c| c.index);
            let n = candidates.len();
            if n > 1 {
                let turn = (round_robin.fetch_add(1, Ordering::Relaxed) % n as u64) as usize;
                candidates.rotate_left(turn);
            }
        }
    }
}

/// Weighted random order without replacement: each position drawn in proportion to weight.
fn weighted_shuffle(candidates: &mut [CandidateView], rng: &mut impl Rng) {
    for i in 0..candidates.len() {
        let total: f64 = candidates[i..].iter().map(|c| c.weight.max(0.0)).sum();
        if total.is_nan() || total <= 0.0 {
            return;
        }
        let mut point = rng.random_range(0.0..total);
        let mut chosen = candidates.len() - 1;
        for (j, c) in candidates.iter().enumerate().skip(i) {
            if point < c.weight.max(0.0) {
                chosen = j;
                break;
            }
            point -= c.weight.max(0.0);
        }
        candidates.swap(i, chosen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn views(n: usize) -> Vec<CandidateView> {
        (0..n)
            .map(|index| CandidateView {
                index,
                weight: 1.0,
                ..CandidateView::default()
            })
            .collect()
    }

    fn first_of(kind: StrategyKind, mut c: Vec<CandidateView>, counter: &AtomicU64) -> usize {
        rank(kind, &mut c, 0.0, counter);
        c[0].index
    }

    #[test]
    fn least_busy_prefers_fewest_in_flight() {
        let mut c = views(3);
        c[0].in_flight = 5;
        c[1].in_flight = 1;
        c[2].in_flight = 3;
        assert_eq!(first_of(StrategyKind::LeastBusy, c, &AtomicU64::new(0)), 1);
    }

    #[test]
    fn latency_prefers_fastest_and_buffer_spreads() {
        let mut c = views(3);
        c[0].latency_ms = Some(100.0);
        c[1].latency_ms = Some(10.0);
        c[2].latency_ms = Some(11.0);
        let counter = AtomicU64::new(0);
        for _ in 0..50 {
            assert_eq!(first_of(StrategyKind::LatencyBased, c.clone(), &counter), 1);
        }
        let mut seen = [0; 3];
        for _ in 0..400 {
            let mut cc = c.clone();
            rank(StrategyKind::LatencyBased, &mut cc, 0.5, &counter);
            seen[cc[0].index] += 1;
        }
        assert_eq!(seen[0], 0, "100ms is outside the 50% buffer");
        assert!(seen[1] > 100 && seen[2] > 100, "{seen:?}");
    }

    #[test]
    fn cost_prefers_cheapest_and_unknown_last() {
        let mut c = views(3);
        c[0].cost_per_token = None;
        c[1].cost_per_token = Some(3e-6);
        c[2].cost_per_token = Some(1e-6);
        let mut cc = c.clone();
        rank(StrategyKind::CostBased, &mut cc, 0.0, &AtomicU64::new(0));
        assert_eq!(
            cc.iter().map(|v| v.index).collect::<Vec<_>>(),
            vec![2, 1, 0]
        );
    }

    #[test]
    fn usage_prefers_least_used() {
        let mut c = views(2);
        c[0].tokens_this_minute = 900;
        c[1].tokens_this_minute = 100;
        assert_eq!(first_of(StrategyKind::UsageBased, c, &AtomicU64::new(0)), 1);
    }

    #[test]
    fn round_robin_cycles() {
        let counter = AtomicU64::new(0);
        let picks: Vec<usize> = (0..6)
            .map(|_| first_of(StrategyKind::RoundRobin, views(3), &counter))
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weighted_shuffle_follows_weights() {
        let mut c = views(2);
        c[0].weight = 3.0;
        c[1].weight = 1.0;
        let counter = AtomicU64::new(0);
        let firsts = (0..8000)
            .filter(|_| first_of(StrategyKind::SimpleShuffle, c.clone(), &counter) == 0)
            .count();
        assert!((5600..6400).contains(&firsts), "{firsts}");
        let mut zero = views(2);
        zero[0].weight = 0.0;
        zero[1].weight = 0.0;
        let mut z = zero.clone();
        rank(StrategyKind::SimpleShuffle, &mut z, 0.0, &counter);
        assert_eq!(z.len(), 2, "zero weights still yield every candidate");
    }
}
