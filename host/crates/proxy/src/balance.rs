//! Backend choice: weighted power-of-two-choices on in-flight request counts.
//!
//! Two candidates are drawn at random in proportion to their weights and the one with the
//! lower in-flight count per unit of weight wins. With no load this is a plain weighted
//! random choice (so a 90/10 canary split gets ~10%); under load it steers away from a slow
//! replica without the herding of "least loaded wins" on stale counts.
//!
//! In-flight counts are kept per backend address, outside the routing table, so they
//! survive table swaps (a swap that keeps a backend keeps its count).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::table::Backend;

/// Above this many tracked addresses, idle ones are forgotten (addresses churn with deploys).
const PRUNE_ABOVE: usize = 1024;

/// Picks backends and tracks in-flight requests per backend address.
#[derive(Debug)]
pub(crate) struct Balancer {
    // A std mutex: it is held only for a map lookup, never across an await.
    loads: Mutex<HashMap<SocketAddr, Arc<AtomicUsize>>>,
    rng: AtomicU64,
}

/// Counts one in-flight request against a backend until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    pub(crate) fn new() -> Self {
        // Seeded from std's per-process random keys; the sequence only spreads load, it
        // guards nothing.
        let seed = RandomState::new().build_hasher().finish();
        Balancer {
            loads: Mutex::new(HashMap::new()),
            rng: AtomicU64::new(seed),
        }
    }

    /// Picks one of `backends` (which must not be empty) and counts a request against it.
    pub(crate) fn pick<'b>(&self, backends: &'b [Backend]) -> (&'b Backend, InFlight) {
        let mut loads = self.loads.lock().unwrap_or_else(PoisonError::into_inner);
        if loads.len() > PRUNE_ABOVE {
            loads.retain(|_, count| Arc::strong_count(count) > 1);
        }
        let counters: Vec<Arc<AtomicUsize>> = backends
            .iter()
            .map(|b| loads.entry(b.addr).or_default().clone())
            .collect();
        drop(loads);
        let current: Vec<usize> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let index = choose(backends, &current, self.next_random(), self.next_random());
        let counter = counters[index].clone();
        counter.fetch_add(1, Ordering::Relaxed);
        (&backends[index], InFlight(counter))
    }

    /// splitmix64 over an atomic counter: lock-free and well spread.
    fn next_random(&self) -> u64 {
        let mut z = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The pure choice: draws two candidates with `r1` and `r2` in proportion to weight and
/// returns the index of the one with fewer in-flight requests per unit of weight (the first
/// on a tie). If every weight is 0 the backends are treated as equally weighted.
pub(crate) fn choose(backends: &[Backend], in_flight: &[usize], r1: u64, r2: u64) -> usize {
    debug_assert!(!backends.is_empty());
    debug_assert_eq!(backends.len(), in_flight.len());
    if backends.len() == 1 {
        return 0;
    }
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    let weight = |i: usize| {
        if total == 0 {
            1
        } else {
            u64::from(backends[i].weight)
        }
    };
    let total = if total == 0 {
        backends.len() as u64
    } else {
        total
    };
    let draw = |r: u64| {
        let mut point = r % total;
        for i in 0..backends.len() {
            let w = weight(i);
            if point < w {
                return i;
            }
            point -= w;
        }
        unreachable!("point < total weight")
    };
    let (a, b) = (draw(r1), draw(r2));
    // Compare in_flight[a] / weight(a) with in_flight[b] / weight(b) without dividing.
    let load_a = in_flight[a] as u128 * u128::from(weight(b));
    let load_b = in_flight[b] as u128 * u128::from(weight(a));
    if load_b < load_a {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(weights: &[u32]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Backend {
                id: format!("i{i}"),
                addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                weight,
            })
            .collect()
    }

    #[test]
    fn prefers_the_less_loaded_candidate() {
        let b = backends(&[1, 1]);
        // r % 2 selects the candidate: 0 draws backend 0, 1 draws backend 1.
        assert_eq!(choose(&b, &[5, 0], 0, 1), 1);
        assert_eq!(choose(&b, &[0, 5], 1, 0), 0);
        assert_eq!(choose(&b, &[2, 2], 1, 0), 1, "ties go to the first draw");
    }

    #[test]
    fn zero_weight_is_never_chosen() {
        let b = backends(&[0, 3]);
        for r in 0..100 {
            assert_eq!(choose(&b, &[0, 100], r, r + 7), 1);
        }
    }

    #[test]
    fn all_zero_weights_fall_back_to_equal_shares() {
        let b = backends(&[0, 0]);
        assert_eq!(choose(&b, &[0, 0], 0, 0), 0);
        assert_eq!(choose(&b, &[0, 0], 1, 1), 1);
    }

    #[test]
    fn idle_split_follows_weights() {
        let balancer = Balancer::new();
        let b = backends(&[9, 1]);
        let mut hits = [0usize; 2];
        for _ in 0..10_000 {
            let (chosen, _guard) = balancer.pick(&b);
            hits[usize::from(chosen.addr.port() - 9000)] += 1;
        }
        assert!((800..=1200).contains(&hits[1]), "canary share {hits:?}");
    }

    #[test]
    fn in_flight_guard_counts_and_releases() {
        let balancer = Balancer::new();
        let b = backends(&[1, 1]);
        let guards: Vec<_> = (0..10).map(|_| balancer.pick(&b).1).collect();
        let total: usize = {
            let loads = balancer.loads.lock().unwrap();
            loads.values().map(|c| c.load(Ordering::Relaxed)).sum()
        };
        assert_eq!(total, 10);
        drop(guards);
        let loads = balancer.loads.lock().unwrap();
        assert!(loads.values().all(|c| c.load(Ordering::Relaxed) == 0));
    }
}
