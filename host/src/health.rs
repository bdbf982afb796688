//! Readiness checking of running instances: the verdicts that gate traffic.
//!
//! The controller publishes the set of instances to watch (`set_targets`); one task probes
//! them (HTTP GET on the readiness path, else a TCP connect to the service port) and keeps a
//! verdict per instance. A verdict change wakes the controller so the routing table follows
//! within milliseconds. An instance not yet ready is probed every 200 ms so a new replica
//! joins the routes quickly; a ready one at its `interval_secs`, and it leaves the routes
//! after `failure_threshold` consecutive failures.
//!
//! The checks themselves are probe plugins (the `probe` world): `http-probe` when the service
//! has a readiness path, `tcp-probe` otherwise. Each gets an endpoint capability bound to the
//! one instance it probes and nothing else. A plugin failure counts as a failed probe.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orca_config::Probe;
use tokio::sync::Notify;

use crate::plugins::{ProbeSettings, TcpEndpoint, World};
use crate::registry::Registry;

/// How often a not-yet-ready instance is probed.
const STARTING_INTERVAL: Duration = Duration::from_millis(200);

/// One instance to watch.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Container id.
    pub id: String,
    /// Address to probe; `None` for a service without a port (ready when running).
    pub addr: Option<SocketAddr>,
    /// Readiness probe settings (defaults when the service has none).
    pub probe: Probe,
}

/// Current verdict on one instance.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Passing readiness: receives traffic.
    pub ready: bool,
    /// Consecutive failed probes.
    pub failures: u32,
    /// Reason of the last failed probe, if the last probe failed.
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Entry {
    target: Target,
    verdict: Verdict,
    next_due: Instant,
    in_flight: bool,
}

/// Verdicts by container id, shared by the checker task, the controller and the API.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
    registry: Registry,
}

impl Health {
    /// Empty table; probes run through `registry`'s probe plugins.
    pub fn new(registry: Registry) -> Health {
        Health {
            inner: Arc::default(),
            registry,
        }
    }

    /// Replaces the watched set; verdicts of instances still present are kept.
    pub fn set_targets(&self, targets: Vec<Target>) {
        let now = Instant::now();
        let mut map = self.inner.lock().expect("health lock");
        let mut next: HashMap<String, Entry> = HashMap::with_capacity(targets.len());
        for t in targets {
            match map.remove(&t.id) {
                Some(mut e) => {
                    e.target = t;
                    next.insert(e.target.id.clone(), e);
                }
                None => {
                    let delay = Duration::from_secs(t.probe.initial_delay_secs);
                    let ready = t.addr.is_none();
                    next.insert(
                        t.id.clone(),
                        Entry {
                            target: t,
                            verdict: Verdict {
                                ready,
                                ..Verdict::default()
                            },
                            next_due: now + delay,
                            in_flight: false,
                        },
                    );
                }
            }
        }
        *map = next;
    }

    /// The verdict on one instance (not ready when unknown).
    pub fn verdict(&self, id: &str) -> Verdict {
        self.inner
            .lock()
            .expect("health lock")
            .get(id)
            .map(|e| e.verdict.clone())
            .unwrap_or_default()
    }

    /// Runs the checker until `shutdown` resolves; `changed` is notified on every verdict flip.
    pub async fn run(self, changed: Arc<Notify>, shutdown: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            for target in self.take_due(Instant::now()) {
                let this = self.clone();
                let changed = changed.clone();
                tokio::spawn(async move {
                    let registry = this.registry.clone();
                    let t = target.clone();
                    // Probe plugins block (up to their timeout): keep them off the async workers.
                    let result = tokio::task::spawn_blocking(move || check(&registry, &t))
                        .await
                        .unwrap_or_else(|e| Err(format!("probe panicked: {e}")));
                    if this.record(&target.id, result) {
                        changed.notify_one();
                    }
                });
            }
        }
    }

    fn take_due(&self, now: Instant) -> Vec<Target> {
        let mut map = self.inner.lock().expect("health lock");
        map.values_mut()
            .filter(|e| !e.in_flight && e.next_due <= now && e.target.addr.is_some())
            .map(|e| {
                e.in_flight = true;
                e.target.clone()
            })
            .collect()
    }

    /// Records one probe result; returns true when the ready verdict flipped.
    fn record(&self, id: &str, result: Result<(), String>) -> bool {
        let mut map = self.inner.lock().expect("health lock");
        let Some(e) = map.get_mut(id) else {
            return false;
        };
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
            STARTING_INTERVAL
        };
        e.next_due = Instant::now() + interval;
        before != e.verdict.ready
    }
}

/// Runs the probe plugin for one target.
fn check(registry: &Registry, target: &Target) -> Result<(), String> {
    let Some(addr) = target.addr else {
        return Ok(());
    };
    let plugin_name = if target.probe.path.is_some() {
        "http-probe"
    } else {
        "tcp-probe"
    };
    let plugin = registry
        .resolve(plugin_name, World::Probe)
        .map_err(|e| e.to_string())?;
    let settings = ProbeSettings {
        path: target.probe.path.clone(),
        timeout_ms: (target.probe.timeout_secs.max(1) * 1000).min(u64::from(u32::MAX)) as u32,
        params: Vec::new(),
    };
    match plugin.check(&settings, Arc::new(TcpEndpoint::new(addr))) {
        Ok(verdict) => verdict,
        Err(e) => Err(e.to_string()),
    }
}
