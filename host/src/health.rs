//! Health checking of running instances: readiness verdicts that gate traffic, and liveness
//! verdicts that get an instance restarted.
//!
//! The controller publishes the set of instances to watch (`set_targets`); one task probes
//! them and keeps verdicts per instance. A change wakes the controller so the routing table
//! follows within milliseconds.
//! - **Readiness**: an instance not yet ready is probed at once (after `initial_delay_secs`),
//!   then again after 10 ms, doubling to every 200 ms, so a new replica joins the routes
//!   within milliseconds of listening; a ready one at its `interval_secs`; it leaves the routes
//!   after `failure_threshold` consecutive failures and comes back on the next success.
//! - Probes run when they are due, not on a tick: the checker sleeps until the earliest due
//!   probe and is woken early by a new watched set or a finished probe.
//! - **Liveness** (only when the service has `[service.liveness]`): probed every
//!   `interval_secs` after `initial_delay_secs`; `failure_threshold` consecutive failures
//!   mark the instance for restart, which the controller carries out.
//!
//! At most `PROBE_CONCURRENCY` probes run at once; due probes beyond it wait for a slot.
//!
//! The checks themselves are probe plugins (the `probe` world): `http-probe` when the probe
//! has a path, `tcp-probe` otherwise. Each gets an endpoint capability bound to the one
//! instance it probes and nothing else. A plugin failure counts as a failed probe.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orca_config::Probe;
use tokio::sync::Notify;

use crate::plugins::{ProbeSettings, TcpEndpoint, World};
use crate::registry::Registry;

/// How often a not-yet-ready instance is probed once it has failed a few times; the first
/// retries come sooner ([`starting_interval`]).
const STARTING_INTERVAL: Duration = Duration::from_millis(200);

/// The first retry of a not-yet-ready instance; each further failure doubles it, up to
/// [`STARTING_INTERVAL`].
const FIRST_RETRY: Duration = Duration::from_millis(10);

/// The longest the checker sleeps without looking at its table (a safety net: every change
/// to the table wakes it).
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// Probes running at the same time; the others wait for a slot. Below the plugin runtime's
/// concurrent-call cap (64 by default), so probes never crowd out placement and strategy
/// calls, and a burst of due probes (10,000 instances made ready together come due together)
/// queues instead of failing as "plugin calls already running" and flipping ready instances.
const PROBE_CONCURRENCY: usize = 48;

/// One instance to watch.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Container id.
    pub id: String,
    /// Address to probe; `None` for a service without a port (ready when running).
    pub addr: Option<SocketAddr>,
    /// Readiness probe settings (defaults when the service has none).
    pub probe: Probe,
    /// Liveness probe settings, if the service has any.
    pub liveness: Option<Probe>,
}

/// Current verdicts on one instance.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Passing readiness: receives traffic.
    pub ready: bool,
    /// Consecutive failed readiness probes.
    pub failures: u32,
    /// Reason of the last failed readiness probe, if the last one failed.
    pub last_error: Option<String>,
    /// Consecutive failed liveness probes.
    pub live_failures: u32,
    /// Set once liveness failed `failure_threshold` times: restart it (with the reason).
    pub restart: Option<String>,
}

/// The verdicts of one moment ([`Health::verdicts`]); an id it does not hold is not ready.
#[derive(Debug, Default)]
pub struct Verdicts<'a> {
    by_id: orca_core::FastMap<&'a str, Verdict>,
}

/// What an instance the checker does not watch (yet) gets: not ready, no restart.
static UNKNOWN: Verdict = Verdict {
    ready: false,
    failures: 0,
    last_error: None,
    live_failures: 0,
    restart: None,
};

impl Verdicts<'_> {
    /// The verdict on `id`.
    pub fn get(&self, id: &str) -> &Verdict {
        self.by_id.get(id).unwrap_or(&UNKNOWN)
    }

    /// Whether `id` passes readiness.
    pub fn ready(&self, id: &str) -> bool {
        self.get(id).ready
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Readiness,
    Liveness,
}

#[derive(Debug)]
struct Entry {
    target: Target,
    verdict: Verdict,
    next_due: Instant,
    in_flight: bool,
    live_next_due: Instant,
    live_in_flight: bool,
    /// Set by each `set_targets` for the entries it names; the others are dropped.
    listed: bool,
}

/// Verdicts by container id, shared by the checker task, the controller and the API.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Mutex<orca_core::FastMap<String, Entry>>>,
    registry: Registry,
    /// Slots of [`PROBE_CONCURRENCY`].
    slots: Arc<tokio::sync::Semaphore>,
    /// Instances a predecessor server judged ready (socket hand-over): they start ready
    /// here too, until this server's own probes say otherwise.
    seeded: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Wakes the checker when the table changed (new targets, a probe finished).
    kick: Arc<Notify>,
}

impl Health {
    /// Empty table; probes run through `registry`'s probe plugins.
    pub fn new(registry: Registry) -> Health {
        Health {
            inner: Arc::default(),
            registry,
            slots: Arc::new(tokio::sync::Semaphore::new(PROBE_CONCURRENCY)),
            seeded: Arc::default(),
            kick: Arc::default(),
        }
    }

    /// Instances to take as ready when first watched (the predecessor's verdicts after a
    /// hand-over), so the new server routes to them from its first pass; their probes run
    /// as scheduled and flip them if they fail.
    pub fn seed_ready(&self, ids: impl IntoIterator<Item = String>) {
        self.seeded.lock().expect("health seed lock").extend(ids);
    }

    /// Replaces the watched set; verdicts of instances still present are kept. Updated in
    /// place (a pass that changes nothing allocates nothing here), and the checker is woken
    /// only when an instance is new or its probe settings changed.
    pub fn set_targets(&self, targets: Vec<Target>) {
        let now = Instant::now();
        let mut seeded = self.seeded.lock().expect("health seed lock");
        let mut map = self.inner.lock().expect("health lock");
        let mut changed = false;
        for t in targets {
            if let Some(e) = map.get_mut(&t.id) {
                e.listed = true;
                if e.target != t {
                    e.target = t;
                    changed = true;
                }
                continue;
            }
            changed = true;
            let delay = Duration::from_secs(t.probe.initial_delay_secs);
            let live_delay = t
                .liveness
                .as_ref()
                .map(|l| Duration::from_secs(l.initial_delay_secs.max(l.interval_secs.max(1))))
                .unwrap_or_default();
            let ready = t.addr.is_none() || seeded.remove(&t.id);
            map.insert(
                t.id.clone(),
                Entry {
                    target: t,
                    verdict: Verdict {
                        ready,
                        ..Verdict::default()
                    },
                    next_due: now + delay,
                    in_flight: false,
                    live_next_due: now + live_delay,
                    live_in_flight: false,
                    listed: true,
                },
            );
        }
        // Not in this set: no longer watched. The mark is reset for the next call.
        map.retain(|_, e| std::mem::take(&mut e.listed));
        if changed {
            self.kick.notify_one();
        }
    }

    /// The verdicts on one instance (not ready when unknown, unless seeded ready).
    pub fn verdict(&self, id: &str) -> Verdict {
        if let Some(e) = self.inner.lock().expect("health lock").get(id) {
            return e.verdict.clone();
        }
        Verdict {
            ready: self.seeded.lock().expect("health seed lock").contains(id),
            ..Verdict::default()
        }
    }

    /// The verdicts on `ids` at one moment, under one lock: a pass reads readiness and
    /// liveness once and decides with that, instead of asking per instance and per use.
    pub fn verdicts<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Verdicts<'a> {
        let map = self.inner.lock().expect("health lock");
        let seeded = self.seeded.lock().expect("health seed lock");
        let ids = ids.into_iter();
        let mut by_id =
            orca_core::FastMap::with_capacity_and_hasher(ids.size_hint().0, Default::default());
        for id in ids {
            let v = match map.get(id) {
                Some(e) => e.verdict.clone(),
                None if seeded.contains(id) => Verdict {
                    ready: true,
                    ..Verdict::default()
                },
                None => continue,
            };
            by_id.insert(id, v);
        }
        Verdicts { by_id }
    }

    /// Runs the checker until `shutdown` resolves; `changed` is notified on every verdict
    /// flip and every restart request.
    pub async fn run(self, changed: Arc<Notify>, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            let (due, next) = self.take_due(Instant::now());
            for (target, kind) in due {
                let this = self.clone();
                let changed = changed.clone();
                tokio::spawn(async move {
                    let registry = this.registry.clone();
                    let probe = match kind {
                        Kind::Readiness => target.probe.clone(),
                        Kind::Liveness => target.liveness.clone().unwrap_or_default(),
                    };
                    let addr = target.addr;
                    let Ok(_slot) = this.slots.clone().acquire_owned().await else {
                        return;
                    };
                    // Probe plugins block (up to their timeout): keep them off the async workers.
                    let result =
                        tokio::task::spawn_blocking(move || check(&registry, addr, &probe))
                            .await
                            .unwrap_or_else(|e| Err(format!("probe panicked: {e}")));
                    if this.record(&target.id, kind, result) {
                        changed.notify_one();
                    }
                });
            }
            let wake = next.unwrap_or_else(|| Instant::now() + IDLE_WAKE);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = self.kick.notified() => {}
            }
        }
    }

    /// The probes due at `now` (marked in flight), and when the next one not yet due is.
    fn take_due(&self, now: Instant) -> (Vec<(Target, Kind)>, Option<Instant>) {
        let mut map = self.inner.lock().expect("health lock");
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        let mut later = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        for e in map.values_mut() {
            if e.target.addr.is_none() {
                continue;
            }
            if !e.in_flight {
                if e.next_due <= now {
                    e.in_flight = true;
                    due.push((e.target.clone(), Kind::Readiness));
                } else {
                    later(e.next_due);
                }
            }
            if e.target.liveness.is_some() && e.verdict.restart.is_none() && !e.live_in_flight {
                if e.live_next_due <= now {
                    e.live_in_flight = true;
                    due.push((e.target.clone(), Kind::Liveness));
                } else {
                    later(e.live_next_due);
                }
            }
        }
        (due, next)
    }

    /// Records one probe result; returns true when the controller should look again.
    fn record(&self, id: &str, kind: Kind, result: Result<(), String>) -> bool {
        let mut map = self.inner.lock().expect("health lock");
        let Some(e) = map.get_mut(id) else {
            return false;
        };
        match kind {
            Kind::Readiness => {
                e.in_flight = false;
                let before = e.verdict.ready;
                match result {
                    Ok(()) => {
                        e.verdict.failures = 0;
                        e.verdict.last_error = None;
                        e.verdict.ready = true;
                    }
                    Err(reason) => {
                        e.verdict.failures += 1;
                        e.verdict.last_error = Some(reason);
                        if e.verdict.failures >= e.target.probe.failure_threshold.max(1) {
                            e.verdict.ready = false;
                        }
                    }
                }
                let interval = if e.verdict.ready {
                    Duration::from_secs(e.target.probe.interval_secs.max(1))
                } else {
                    starting_interval(e.verdict.failures)
                };
                e.next_due = Instant::now() + interval;
                // The checker looks again within IDLE_WAKE anyway: wake it only for sooner.
                if interval < IDLE_WAKE {
                    self.kick.notify_one();
                }
                before != e.verdict.ready
            }
            Kind::Liveness => {
                e.live_in_flight = false;
                let Some(live) = e.target.liveness.clone() else {
                    return false;
                };
                e.live_next_due = Instant::now() + Duration::from_secs(live.interval_secs.max(1));
                match result {
                    Ok(()) => {
                        e.verdict.live_failures = 0;
                        false
                    }
                    Err(reason) => {
                        e.verdict.live_failures += 1;
                        if e.verdict.live_failures >= live.failure_threshold.max(1) {
                            e.verdict.restart = Some(format!(
                                "liveness probe failed {} times: {reason}",
                                e.verdict.live_failures
                            ));
                            true
                        } else {
                            false
                        }
                    }
                }
            }
        }
    }
}

/// When a not-yet-ready instance that failed `failures` probes in a row is probed again:
/// 10 ms after the first failure, doubling, at most [`STARTING_INTERVAL`].
fn starting_interval(failures: u32) -> Duration {
    let doubled = FIRST_RETRY.saturating_mul(1u32 << failures.saturating_sub(1).min(8));
    doubled.min(STARTING_INTERVAL)
}

/// Runs the probe plugin for one address.
fn check(registry: &Registry, addr: Option<SocketAddr>, probe: &Probe) -> Result<(), String> {
    let Some(addr) = addr else {
        return Ok(());
    };
    let plugin_name = if probe.path.is_some() {
        "http-probe"
    } else {
        "tcp-probe"
    };
    let plugin = registry
        .resolve(plugin_name, World::Probe)
        .map_err(|e| e.to_string())?;
    let settings = ProbeSettings {
        path: probe.path.clone(),
        timeout_ms: (probe.timeout_secs.max(1) * 1000).min(u64::from(u32::MAX)) as u32,
        params: Vec::new(),
    };
    match plugin.check(&settings, Arc::new(TcpEndpoint::new(addr))) {
        Ok(verdict) => verdict,
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_starting_instance_is_retried_after_10_ms_doubling_to_200() {
        let ms = |f| starting_interval(f).as_millis();
        assert_eq!(
            [ms(0), ms(1), ms(2), ms(3), ms(4), ms(5), ms(6), ms(40)],
            [10, 10, 20, 40, 80, 160, 200, 200]
        );
    }
}
