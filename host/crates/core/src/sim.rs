//! A fake node runtime and a fake clock for tests of decisions: [`Sim`] holds a simulated
//! world of instances, applies a [`Decision`] to it the way the host's executor does (removes
//! drain, then go; starts create a running instance) and moves time forward, so a sequence of
//! passes can be replayed without Docker.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use crate::decide::{
    decide, Decision, InstanceState, RevisionFacts, RunState, ServiceState, Snapshot,
};

/// A simulated node and its clock.
#[derive(Debug, Clone, Default)]
pub struct Sim {
    /// The fake clock (ms since the epoch).
    pub now_ms: u64,
    /// Live containers.
    pub instances: Vec<InstanceState>,
    /// How long a started instance takes to pass readiness.
    pub ready_after_ms: u64,
    /// Revisions whose instances never pass readiness.
    pub never_ready: Vec<String>,
    /// When each draining instance is gone.
    gone_at: BTreeMap<String, u64>,
    next_id: u32,
}

impl Sim {
    /// An empty node at `now_ms`, whose instances become ready `ready_after_ms` after start.
    pub fn new(now_ms: u64, ready_after_ms: u64) -> Sim {
        Sim {
            now_ms,
            ready_after_ms,
            ..Sim::default()
        }
    }

    /// The snapshot a pass would take now.
    pub fn snapshot(
        &self,
        services: &[ServiceState],
        revisions: &BTreeMap<String, RevisionFacts>,
    ) -> Snapshot {
        Snapshot {
            now_ms: self.now_ms,
            services: services.to_vec(),
            revisions: revisions.clone(),
            instances: self.instances.clone(),
            migrate_limit: None,
        }
    }

    /// One pass: snapshot, decide, apply; returns the decision.
    pub fn pass(
        &mut self,
        services: &[ServiceState],
        revisions: &BTreeMap<String, RevisionFacts>,
    ) -> Decision {
        let d = decide(&self.snapshot(services, revisions));
        self.apply(&d);
        d
    }

    /// Applies a decision like the executor: a removed instance drains (immediately gone
    /// without a drain, `drain_ms` later with one); a start creates a running instance.
    pub fn apply(&mut self, d: &Decision) {
        self.apply_with_drain(d, 50);
    }

    /// [`Sim::apply`] with a chosen drain duration.
    pub fn apply_with_drain(&mut self, d: &Decision, drain_ms: u64) {
        for r in &d.removes {
            if let Some(i) = self.instances.iter_mut().find(|i| i.id == r.id) {
                i.draining = true;
                let wait = if r.drain.is_some() { drain_ms } else { 0 };
                self.gone_at.insert(r.id.clone(), self.now_ms + wait);
            }
        }
        self.collect();
        for s in &d.starts {
            self.next_id += 1;
            let n = self.next_id;
            self.instances.push(InstanceState {
                id: format!("i{n:04}"),
                service: s.service.clone(),
                fingerprint: s.fingerprint.clone(),
                slot: s.slot,
                run: RunState::Running,
                created_at_ms: self.now_ms,
                ip: Some(IpAddr::V4(Ipv4Addr::new(10, 0, (n >> 8) as u8, n as u8))),
                published: None,
                ready: false,
                restart: false,
                draining: false,
                evict: None,
            });
        }
    }

    /// Moves the clock forward: instances pass readiness, drains end.
    pub fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
        let (now, after) = (self.now_ms, self.ready_after_ms);
        for i in &mut self.instances {
            if i.run == RunState::Running
                && !self.never_ready.contains(&i.fingerprint)
                && now.saturating_sub(i.created_at_ms) >= after
            {
                i.ready = true;
            }
        }
        self.collect();
    }

    /// The container `id` dies.
    pub fn kill(&mut self, id: &str) {
        if let Some(i) = self.instances.iter_mut().find(|i| i.id == id) {
            i.run = RunState::Failed;
            i.ready = false;
        }
    }

    /// Adds a container as the runtime would report it (e.g. one left `created`).
    pub fn add(&mut self, i: InstanceState) {
        self.instances.push(i);
    }

    fn collect(&mut self) {
        let now = self.now_ms;
        let gone: Vec<String> = self
            .gone_at
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.gone_at.remove(&id);
            self.instances.retain(|i| i.id != id);
        }
    }
}
