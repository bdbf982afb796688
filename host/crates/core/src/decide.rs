//! `decide`: one controller pass's decision from one snapshot — container starts and removes
//! (with how each removed instance is drained), the routing table, the probe targets and the
//! addresses the status view shows.
//!
//! Rule of ownership: an instance is routed, probed, drained and shown with the facts of its
//! **own** revision ([`Snapshot::revisions`], keyed by fingerprint), never with the service's
//! current spec; the current spec only shapes instances being created.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use orca_config::{Probe, ServiceSpec};

use crate::reconcile::RemoveReason;
use crate::reconcile::{self, Action, DesiredGroup, DesiredService, ObservedInstance, Phase};

/// A container that stays `created` (never started) this long is stuck — the server died
/// between create and start — and is replaced.
pub const STUCK_AFTER_MS: u64 = 10_000;

/// Longest wait for an instance's in-flight requests before it is stopped, unless its
/// revision sets `[service.deploy] drain_timeout_secs`.
pub const DEFAULT_DRAIN_MS: u64 = 30_000;

/// Everything one pass knows, read once at its start.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// The clock of the pass (ms since the epoch); the only clock a decision has.
    pub now_ms: u64,
    /// Services in the store, in a stable order.
    pub services: Vec<ServiceState>,
    /// Facts of every revision an instance runs or may be created from, by fingerprint.
    pub revisions: BTreeMap<String, RevisionFacts>,
    /// Containers of this cluster, with their verdicts.
    pub instances: Vec<InstanceState>,
    /// Cluster-wide bound on evicted instances being replaced at once (`[nodes]
    /// drain_parallel`); `None`: no bound.
    pub migrate_limit: Option<u32>,
}

/// One service as the pass wants it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceState {
    /// `project/name`.
    pub key: String,
    /// `false` when the operator stopped it.
    pub running: bool,
    /// Domain the proxy routes to it, if any.
    pub domain: Option<String>,
    /// Revisions that should run (one group outside a rollout; stable and candidate during one).
    pub groups: Vec<DesiredGroup>,
    /// The traffic split of a rollout in progress; `None` = equal weight per ready instance.
    pub traffic: Option<Traffic>,
    /// Crash back-off: nothing starts before this time.
    pub not_before_ms: Option<u64>,
    /// How many of its evicted instances may be replaced at once (its rollout's
    /// `max_unavailable`, at least 1).
    pub max_migrating: u32,
    /// `Some(volume)`: it mounts this writable, not shared volume, so it is stop-first: no
    /// instance starts while another of the service still exists (running, starting or
    /// draining) — never two writers on one volume.
    pub exclusive: Option<String>,
    /// Keys (`project/name`) of the services that must have a ready instance before any
    /// of its instances starts (`depends_on`).
    pub depends_on: Vec<String>,
}

/// A rollout's traffic split: weights of the stable group and of the candidate group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traffic {
    /// Fingerprint of the candidate revision; every other revision is the stable group.
    pub candidate_fingerprint: String,
    /// Relative weight of the stable group.
    pub stable: u32,
    /// Relative weight of the candidate group.
    pub candidate: u32,
}

/// What a revision says about how its instances are reached and retired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionFacts {
    /// The port its instances listen on (`None`: not reachable, ready once running).
    pub port: Option<u16>,
    /// Readiness probe (defaults when the revision has none).
    pub readiness: Probe,
    /// Liveness probe, if the revision has one.
    pub liveness: Option<Probe>,
    /// Longest drain of one of its instances.
    pub drain_timeout_ms: u64,
}

impl RevisionFacts {
    /// The facts of a revision's spec.
    pub fn of(spec: &ServiceSpec) -> RevisionFacts {
        RevisionFacts {
            port: spec.port,
            readiness: spec.readiness_probe().unwrap_or_default(),
            liveness: spec.liveness.clone(),
            drain_timeout_ms: spec
                .deploy
                .as_ref()
                .and_then(|d| d.drain_timeout_secs)
                .map_or(DEFAULT_DRAIN_MS, |s| s.saturating_mul(1000)),
        }
    }
}

/// Where a container is in its life, as the runtime reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunState {
    /// Created, not started.
    Created,
    /// Running.
    #[default]
    Running,
    /// Exited or dead.
    Failed,
    /// Paused, restarting, being removed: neither serving nor failed.
    Other,
}

/// One container of this cluster with the verdicts on it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InstanceState {
    /// Runtime id.
    pub id: String,
    /// `project/name`.
    pub service: String,
    /// Fingerprint of the revision it runs (the key into [`Snapshot::revisions`]).
    pub fingerprint: String,
    /// Replica slot.
    pub slot: u32,
    /// Runtime state.
    pub run: RunState,
    /// When it was created (ms since the epoch).
    pub created_at_ms: u64,
    /// Its address on its project network, once it has one.
    pub ip: Option<IpAddr>,
    /// Where the master reaches it instead, when it runs on a remote node: its port published
    /// on the node's advertise address (the bridge IP is not reachable from the master).
    pub published: Option<SocketAddr>,
    /// Passing readiness.
    pub ready: bool,
    /// Liveness failed past its threshold: replace it.
    pub restart: bool,
    /// Being drained and stopped by an earlier pass: no decision touches it again.
    pub draining: bool,
    /// `Some(deadline_ms)`: it must leave its node (the node drains, or a rebalance moves
    /// it): replaced elsewhere first, removed at the deadline at the latest.
    pub evict: Option<u64>,
}

/// Create and start an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// `project/name`.
    pub service: String,
    /// Slot to fill.
    pub slot: u32,
    /// Revision (fingerprint) to create it from.
    pub fingerprint: String,
}

/// Stop and remove an instance, draining it first when it may still serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remove {
    /// Runtime id.
    pub id: String,
    /// `project/name`.
    pub service: String,
    /// Why.
    pub reason: RemoveReason,
    /// How to wait for its in-flight requests, from its own revision; `None`: stop at once.
    pub drain: Option<Drain>,
}

/// Wait until the proxy has nothing in flight to `addr`, at most `timeout_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    /// The instance's own address (its own revision's port).
    pub addr: SocketAddr,
    /// Its own revision's drain timeout.
    pub timeout_ms: u64,
}

/// One domain of the routing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Host name.
    pub domain: String,
    /// `project/name`.
    pub service: String,
    /// Ready instances, each on its own revision's port.
    pub backends: Vec<Backend>,
}

/// One ready instance in a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Runtime id.
    pub id: String,
    /// Address on its own revision's port.
    pub addr: SocketAddr,
    /// Relative weight.
    pub weight: u32,
}

/// One instance for the health checker, with its own revision's probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// Runtime id.
    pub id: String,
    /// Address to probe; `None` for a revision without a port.
    pub addr: Option<SocketAddr>,
    /// Readiness probe.
    pub readiness: Probe,
    /// Liveness probe.
    pub liveness: Option<Probe>,
}

/// What a pass does; the host's executor applies it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Instances to remove (applied before the starts, so a reused name is free).
    pub removes: Vec<Remove>,
    /// Instances to start.
    pub starts: Vec<Start>,
    /// The routing table.
    pub routes: Vec<Route>,
    /// What the health checker probes.
    pub probes: Vec<ProbeTarget>,
    /// Every addressable instance's own address, for status.
    pub addresses: BTreeMap<String, SocketAddr>,
    /// Instances routed as ready (what status calls ready is what the proxy routes to).
    pub ready: BTreeSet<String>,
    /// Services held back by crash back-off, with the time they may start.
    pub backing_off: BTreeMap<String, u64>,
    /// Services whose starts this pass held back, with why: `waiting for db` (a dependency
    /// has no ready instance) or `stop-first: volume data is not shared` (the old instance
    /// is still there).
    pub waiting: BTreeMap<String, String>,
    /// When a pass must look again even if nothing happens: the earliest time a container
    /// still `created` becomes stuck.
    pub wake_at_ms: Option<u64>,
}

impl Decision {
    /// True when no container changes.
    pub fn is_idle(&self) -> bool {
        self.removes.is_empty() && self.starts.is_empty()
    }
}

/// The phase the reconciler sees.
fn phase(i: &InstanceState, now_ms: u64) -> Phase {
    match i.run {
        RunState::Failed => Phase::Failed,
        _ if i.restart => Phase::Failed,
        RunState::Created if now_ms.saturating_sub(i.created_at_ms) >= STUCK_AFTER_MS => {
            Phase::Stuck
        }
        RunState::Running if i.ready => Phase::Ready,
        _ => Phase::Starting,
    }
}

/// The decision of one pass. Pure: same snapshot, same decision.
pub fn decide(s: &Snapshot) -> Decision {
    let desired: Vec<DesiredService> = s
        .services
        .iter()
        .map(|svc| DesiredService {
            key: svc.key.clone(),
            groups: svc.groups.clone(),
            running: svc.running,
            not_before_ms: svc.not_before_ms,
            max_migrating: svc.max_migrating,
        })
        .collect();
    let observed: Vec<ObservedInstance> = s
        .instances
        .iter()
        .filter(|i| !i.draining)
        .map(|i| ObservedInstance {
            id: i.id.clone(),
            service: i.service.clone(),
            fingerprint: i.fingerprint.clone(),
            slot: i.slot,
            phase: phase(i, s.now_ms),
            evict: i.evict,
            created_ms: i.created_at_ms,
        })
        .collect();
    let plan = reconcile::plan_with(
        &desired,
        &observed,
        s.now_ms,
        s.migrate_limit.unwrap_or(u32::MAX),
    );

    let by_id: BTreeMap<&str, &InstanceState> =
        s.instances.iter().map(|i| (i.id.as_str(), i)).collect();
    let held = held_starts(s);
    let addr_of = |i: &InstanceState| -> Option<SocketAddr> {
        let port = s.revisions.get(&i.fingerprint)?.port?;
        if let Some(published) = i.published {
            return Some(published);
        }
        Some(SocketAddr::new(i.ip?, port))
    };

    let mut d = Decision {
        backing_off: plan.backing_off,
        wake_at_ms: s
            .instances
            .iter()
            .filter(|i| i.run == RunState::Created && !i.draining)
            .map(|i| i.created_at_ms.saturating_add(STUCK_AFTER_MS))
            .filter(|t| *t > s.now_ms)
            .min(),
        ..Decision::default()
    };
    for a in plan.actions {
        match a {
            Action::Start {
                service,
                slot,
                fingerprint,
            } => {
                if let Some(why) = held.get(service.as_str()) {
                    d.waiting.insert(service, why.clone());
                    continue;
                }
                d.starts.push(Start {
                    service,
                    slot,
                    fingerprint,
                })
            }
            Action::Remove {
                id,
                service,
                reason,
            } => {
                // Only an instance that may still be serving is drained.
                let drain = match reason {
                    RemoveReason::Failed | RemoveReason::Orphan | RemoveReason::Stuck => None,
                    _ => by_id.get(id.as_str()).and_then(|i| {
                        Some(Drain {
                            addr: addr_of(i)?,
                            timeout_ms: s.revisions.get(&i.fingerprint)?.drain_timeout_ms,
                        })
                    }),
                };
                d.removes.push(Remove {
                    id,
                    service,
                    reason,
                    drain,
                });
            }
        }
    }

    let removing: BTreeSet<&str> = d
        .removes
        .iter()
        .map(|r| r.id.as_str())
        .chain(
            s.instances
                .iter()
                .filter(|i| i.draining)
                .map(|i| i.id.as_str()),
        )
        .collect();
    let services: BTreeMap<&str, &ServiceState> = s
        .services
        .iter()
        .map(|svc| (svc.key.as_str(), svc))
        .collect();

    // (service, is candidate) → ready (id, addr), in snapshot order.
    let mut groups: BTreeMap<(&str, bool), Vec<(String, SocketAddr)>> = BTreeMap::new();
    for i in &s.instances {
        let addr = addr_of(i);
        if let Some(a) = addr {
            d.addresses.insert(i.id.clone(), a);
        }
        if i.run != RunState::Running || removing.contains(i.id.as_str()) {
            continue;
        }
        let (Some(svc), Some(facts)) = (
            services.get(i.service.as_str()),
            s.revisions.get(&i.fingerprint),
        ) else {
            continue;
        };
        d.probes.push(ProbeTarget {
            id: i.id.clone(),
            addr,
            readiness: facts.readiness.clone(),
            liveness: facts.liveness.clone(),
        });
        if !i.ready {
            continue;
        }
        d.ready.insert(i.id.clone());
        if let Some(addr) = addr {
            let candidate = svc
                .traffic
                .as_ref()
                .is_some_and(|t| t.candidate_fingerprint == i.fingerprint);
            groups
                .entry((i.service.as_str(), candidate))
                .or_default()
                .push((i.id.clone(), addr));
        }
    }
    for svc in &s.services {
        let (Some(domain), true) = (&svc.domain, svc.running) else {
            continue;
        };
        let mut backends = Vec::new();
        for candidate in [false, true] {
            let group = groups
                .remove(&(svc.key.as_str(), candidate))
                .unwrap_or_default();
            let weight = instance_weight(svc.traffic.as_ref(), candidate, group.len());
            backends.extend(
                group
                    .into_iter()
                    .map(|(id, addr)| Backend { id, addr, weight }),
            );
        }
        d.routes.push(Route {
            domain: domain.clone(),
            service: svc.key.clone(),
            backends,
        });
    }
    d
}

/// Services whose starts wait this pass, with why: a dependency without a ready instance,
/// or (stop-first) another instance of the service that still exists. A failed container
/// writes nothing, so only running, starting, paused or draining ones hold the volume.
fn held_starts(s: &Snapshot) -> BTreeMap<&str, String> {
    let mut ready: BTreeSet<&str> = BTreeSet::new();
    let mut holding: BTreeSet<&str> = BTreeSet::new();
    for i in &s.instances {
        if i.run == RunState::Running && i.ready && !i.draining {
            ready.insert(i.service.as_str());
        }
        if i.run != RunState::Failed {
            holding.insert(i.service.as_str());
        }
    }
    let mut held = BTreeMap::new();
    for svc in &s.services {
        let missing: Vec<&str> = svc
            .depends_on
            .iter()
            .filter(|dep| !ready.contains(dep.as_str()))
            .map(|dep| dep.rsplit_once('/').map_or(dep.as_str(), |(_, name)| name))
            .collect();
        if !missing.is_empty() {
            held.insert(
                svc.key.as_str(),
                format!("waiting for {}", missing.join(", ")),
            );
        } else if let Some(volume) = &svc.exclusive {
            if holding.contains(svc.key.as_str()) {
                held.insert(
                    svc.key.as_str(),
                    format!("stop-first: volume {volume} is not shared"),
                );
            }
        }
    }
    held
}

/// Proxy weight of one ready instance: its group's traffic weight shared among the group's
/// ready instances (scaled by 1000 to stay integral). Equal weights when no split is set.
pub fn instance_weight(traffic: Option<&Traffic>, candidate: bool, ready_in_group: usize) -> u32 {
    match traffic {
        None => 1,
        Some(t) => {
            let group = u64::from(if candidate { t.candidate } else { t.stable });
            let n = ready_in_group.max(1) as u64;
            (group * 1000 / n).min(u64::from(u32::MAX)) as u32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u32, c: u32) -> Traffic {
        Traffic {
            candidate_fingerprint: "c".into(),
            stable: s,
            candidate: c,
        }
    }

    #[test]
    fn weights_split_a_group_among_its_ready_instances() {
        assert_eq!(instance_weight(None, true, 3), 1);
        assert_eq!(instance_weight(Some(&t(80, 20)), false, 4), 20_000);
        assert_eq!(instance_weight(Some(&t(80, 20)), true, 1), 20_000);
        assert_eq!(instance_weight(Some(&t(100, 0)), true, 2), 0);
    }
}
