//! Backend choice: weighted power-of-two-choices on in-flight request counts.
//!
//! Two candidates are drawn at random in proportion to their weights and the one with the
//! lower in-flight count per unit of weight wins. With no load this is a plain weighted
//! random choice (so a 90/10 canary split gets ~10%); under load it steers away from a slow
//! replica without the herding of "least loaded wins" on stale counts.
//!
//! In-flight counts are kept per backend address, outside the routing table, so they
//! survive table swaps (a swap that keeps a backend keeps its count). The same counters
//! back [`InFlightView`], through which the controller waits for a removed backend to drain.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::table::Backend;

/// Above this many tracked addresses, idle ones are forgotten (addresses churn with deploys).
const PRUNE_ABOVE: usize = 1024;

/// In-flight counters by backend address. A std mutex: it is held only for a map lookup,
/// never across an await.
type Loads = Arc<Mutex<HashMap<SocketAddr, Arc<AtomicUsize>>>>;

/// Picks backends and tracks in-flight requests per backend address.
#[derive(Debug)]
pub(crate) struct Balancer {
    loads: Loads,
    rng: AtomicU64,
}

/// A read-only view of how many requests the proxy is proxying to each backend address
/// right now, including open upgraded (WebSocket) connections. Cloning is cheap; it stays
/// valid after the proxy is consumed by [`Proxy::serve`](crate::Proxy::serve).
///
/// A request counts from the moment it picks a backend until its response body is done
/// (or its tunnel closes). A request that loaded a routing table just before a swap may
/// still pick a backend the swap removed, so a drain should see 0 after the swap has been
/// published (and ideally for a short settle time); a request that then fails to connect
/// is retried on another replica when that is safe.
#[derive(Clone, Debug)]
pub struct InFlightView {
    loads: Loads,
}

impl InFlightView {
    /// Requests in flight to `addr`; 0 for an address the proxy has never used (or has
    /// forgotten, which it only does for addresses with nothing in flight).
    pub fn get(&self, addr: SocketAddr) -> usize {
        let loads = self.loads.lock().unwrap_or_else(PoisonError::into_inner);
        loads
            .get(&addr)
            .map_or(0, |count| count.load(Ordering::Relaxed))
    }
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
            loads: Arc::default(),
            rng: AtomicU64::new(seed),
        }
    }

    /// A view of the in-flight counts, sharing this balancer's counters.
    pub(crate) fn view(&self) -> InFlightView {
        InFlightView {
            loads: self.loads.clone(),
        }
    }

    /// Picks one of `backends` whose address is not in `exclude` and counts a request
    /// against it; `None` if no backend is left. Excluding backends (the ones a request
    /// already failed on) never brings a weight-0 backend into rotation, unless every
    /// backend of the route has weight 0.
    pub(crate) fn pick<'b>(
        &self,
        backends: &'b [Backend],
        exclude: &[SocketAddr],
    ) -> Option<(&'b Backend, InFlight)> {
        let any_weight = backends.iter().any(|b| b.weight > 0);
        let eligible = |b: &Backend| !exclude.contains(&b.addr) && (b.weight > 0 || !any_weight);
        // The candidates' indices, on the stack for the usual handful of replicas: this
        // runs for every request.
        let mut inline = [0usize; INLINE_CANDIDATES];
        let mut spilled = Vec::new();
        let mut count = 0;
        for (i, b) in backends.iter().enumerate() {
            if eligible(b) {
                if count < INLINE_CANDIDATES {
                    inline[count] = i;
                } else {
                    if spilled.is_empty() {
                        spilled.extend_from_slice(&inline);
                    }
                    spilled.push(i);
                }
                count += 1;
            }
        }
        let candidates: &[usize] = if count <= INLINE_CANDIDATES {
            &inline[..count]
        } else {
            &spilled
        };
        if candidates.is_empty() {
            return None;
        }
        let weight = |i: usize| backends[candidates[i]].weight;
        let (a, b) = draw_two(
            candidates.len(),
            weight,
            self.next_random(),
            self.next_random(),
        );
        let mut loads = self.loads.lock().unwrap_or_else(PoisonError::into_inner);
        if loads.len() > PRUNE_ABOVE {
            // Only counters nobody holds are dropped: a held counter is an in-flight
            // request (or a pick in progress), and every count above 0 has a holder, so
            // forgetting an address never changes what `InFlightView::get` answers.
            loads.retain(|_, count| Arc::strong_count(count) > 1);
        }
        let mut counter_of = |i: usize| {
            loads
                .entry(backends[candidates[i]].addr)
                .or_default()
                .clone()
        };
        let counter_a = counter_of(a);
        let (index, counter) = if a == b {
            (a, counter_a)
        } else {
            let counter_b = counter_of(b);
            let current = [
                counter_a.load(Ordering::Relaxed),
                counter_b.load(Ordering::Relaxed),
            ];
            if less_loaded(
                current,
                [weight(a), weight(b)],
                all_zero(backends, candidates),
            ) {
                (b, counter_b)
            } else {
                (a, counter_a)
            }
        };
        drop(loads);
        counter.fetch_add(1, Ordering::Relaxed);
        Some((&backends[candidates[index]], InFlight(counter)))
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

/// Up to this many candidates are gathered on the stack.
const INLINE_CANDIDATES: usize = 16;

/// Whether every candidate has weight 0 (they are then treated as equally weighted).
fn all_zero(backends: &[Backend], candidates: &[usize]) -> bool {
    candidates.iter().all(|&i| backends[i].weight == 0)
}

/// Draws two of `n` candidates with `r1` and `r2` in proportion to `weight` (equal shares
/// if every weight is 0).
fn draw_two(n: usize, weight: impl Fn(usize) -> u32, r1: u64, r2: u64) -> (usize, usize) {
    debug_assert!(n > 0);
    if n == 1 {
        return (0, 0);
    }
    let total: u64 = (0..n).map(|i| u64::from(weight(i))).sum();
    let share = |i: usize| if total == 0 { 1 } else { u64::from(weight(i)) };
    let total = if total == 0 { n as u64 } else { total };
    let draw = |r: u64| {
        let mut point = r % total;
        for i in 0..n {
            let w = share(i);
            if point < w {
                return i;
            }
            point -= w;
        }
        unreachable!("point < total weight")
    };
    (draw(r1), draw(r2))
}

/// Whether the second of two candidates has fewer in-flight requests per unit of weight
/// than the first (a tie keeps the first). `equal` treats the weights as equal (all 0).
fn less_loaded(in_flight: [usize; 2], weights: [u32; 2], equal: bool) -> bool {
    let w = |i: usize| if equal { 1 } else { u128::from(weights[i]) };
    // Compare in_flight[0] / w(0) with in_flight[1] / w(1) without dividing.
    let load_a = in_flight[0] as u128 * w(1);
    let load_b = in_flight[1] as u128 * w(0);
    load_b < load_a
}

/// The pure choice among candidates with `weights`: draws two candidates with `r1` and
/// `r2` in proportion to weight and returns the index of the one with fewer in-flight
/// requests per unit of weight (the first on a tie). If every weight is 0 the candidates
/// are treated as equally weighted.
#[cfg(test)]
pub(crate) fn choose(weights: &[u32], in_flight: &[usize], r1: u64, r2: u64) -> usize {
    debug_assert_eq!(weights.len(), in_flight.len());
    let (a, b) = draw_two(weights.len(), |i| weights[i], r1, r2);
    let equal = weights.iter().all(|&w| w == 0);
    if a != b
        && less_loaded(
            [in_flight[a], in_flight[b]],
            [weights[a], weights[b]],
            equal,
        )
    {
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
        let w = [1, 1];
        // r % 2 selects the candidate: 0 draws backend 0, 1 draws backend 1.
        assert_eq!(choose(&w, &[5, 0], 0, 1), 1);
        assert_eq!(choose(&w, &[0, 5], 1, 0), 0);
        assert_eq!(choose(&w, &[2, 2], 1, 0), 1, "ties go to the first draw");
    }

    #[test]
    fn zero_weight_is_never_chosen() {
        for r in 0..100 {
            assert_eq!(choose(&[0, 3], &[0, 100], r, r + 7), 1);
        }
    }

    #[test]
    fn all_zero_weights_fall_back_to_equal_shares() {
        assert_eq!(choose(&[0, 0], &[0, 0], 0, 0), 0);
        assert_eq!(choose(&[0, 0], &[0, 0], 1, 1), 1);
    }

    #[test]
    fn idle_split_follows_weights() {
        let balancer = Balancer::new();
        let b = backends(&[9, 1]);
        let mut hits = [0usize; 2];
        for _ in 0..10_000 {
            let (chosen, _guard) = balancer.pick(&b, &[]).unwrap();
            hits[usize::from(chosen.addr.port() - 9000)] += 1;
        }
        assert!((800..=1200).contains(&hits[1]), "canary share {hits:?}");
    }

    #[test]
    fn in_flight_guard_counts_and_releases() {
        let balancer = Balancer::new();
        let b = backends(&[1, 1]);
        let guards: Vec<_> = (0..10).map(|_| balancer.pick(&b, &[]).unwrap().1).collect();
        let total: usize = {
            let loads = balancer.loads.lock().unwrap();
            loads.values().map(|c| c.load(Ordering::Relaxed)).sum()
        };
        assert_eq!(total, 10);
        drop(guards);
        let loads = balancer.loads.lock().unwrap();
        assert!(loads.values().all(|c| c.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn view_shares_the_counters() {
        let balancer = Balancer::new();
        let view = balancer.view();
        let b = backends(&[1]);
        assert_eq!(view.get(b[0].addr), 0, "unknown address");
        let guard = balancer.pick(&b, &[]).unwrap().1;
        assert_eq!(view.get(b[0].addr), 1);
        drop(guard);
        assert_eq!(view.get(b[0].addr), 0);
    }

    #[test]
    fn excluded_and_out_of_rotation_backends_are_not_picked() {
        let balancer = Balancer::new();
        let b = backends(&[1, 0, 1]);
        for _ in 0..100 {
            let (chosen, _guard) = balancer.pick(&b, &[b[0].addr]).unwrap();
            assert_eq!(chosen.addr, b[2].addr);
        }
        assert!(balancer.pick(&b, &[b[0].addr, b[2].addr]).is_none());
        let zero = backends(&[0, 0]);
        assert_eq!(
            balancer.pick(&zero, &[zero[0].addr]).unwrap().0.addr,
            zero[1].addr
        );
    }

    #[test]
    fn pruning_keeps_counters_in_use() {
        let balancer = Balancer::new();
        let view = balancer.view();
        let held = backends(&[1]);
        let _guard = balancer.pick(&held, &[]).unwrap().1;
        for port in 0..=PRUNE_ABOVE as u16 + 1 {
            let other = [Backend::new("x", SocketAddr::from(([127, 0, 0, 2], port)))];
            drop(balancer.pick(&other, &[]));
        }
        assert_eq!(view.get(held[0].addr), 1);
        assert!(balancer.loads.lock().unwrap().len() <= PRUNE_ABOVE + 2);
    }
}
