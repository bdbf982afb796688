//! The reconciler: a pure function from (desired groups, observed instances, now) to container actions.
//!
//! It does no I/O, reads no clock and draws no random numbers: everything it needs is passed
//! in, so it is table-tested below and replays identically after a crash. [`crate::decide`]
//! calls it; the host's executor applies the actions through the container runtime.
//!
//! A desired service is a list of *groups*, one per revision that should run, each a
//! fingerprint and an instance count. Outside a rollout there is one group; during a rollout
//! the strategy plugin sets the counts of the stable and the candidate group. Rules, per
//! service:
//! - an instance that has failed (exited, dead) is removed; its slot is then free; so is one
//!   stuck in `created` past [`crate::STUCK_AFTER_MS`] (a server killed between create and start);
//! - a stopped service has all its instances removed;
//! - each group's slots are `0..count`; a slot with no live instance of the group's
//!   fingerprint gets one started, unless the service is in crash back-off (`not_before`);
//! - a live instance in a slot `>= count` of its group is removed (scale down);
//! - two live instances of one fingerprint in one slot (a node back after a partition whose
//!   instances were replaced meanwhile) keep the better one: ready first, then the newer
//!   (the replacement), then the lower id;
//! - a live instance whose fingerprint is in no group is removed (superseded): keeping old
//!   instances serving while new ones start is the strategy's decision, expressed as groups;
//! - an instance whose service is not desired at all is an orphan and is removed;
//! - an instance to *evict* (its node is draining, or a rebalance moves it) keeps serving
//!   while a replacement of its slot starts (placed elsewhere by the executor); once the
//!   replacement is ready it is removed (`migrated`), and at its deadline it is removed
//!   whatever the replacement does (`drain-deadline`, the slot then refills as usual).
//!   Replacements in flight are bounded per service ([`DesiredService::max_migrating`])
//!   and cluster-wide (the `migrate_limit` of [`plan_with`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

/// Instances of one revision that should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredGroup {
    /// Hash of everything that requires a new container when it changes.
    pub fingerprint: String,
    /// Number of instances wanted.
    pub count: u32,
}

/// What the store (and the rollout driver) say one service should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredService {
    /// `project/name`.
    pub key: String,
    /// Revisions that should run, at most one group per fingerprint.
    pub groups: Vec<DesiredGroup>,
    /// `false` when the operator stopped the service.
    pub running: bool,
    /// Crash back-off: no instance is started before this time (milliseconds, caller's clock).
    pub not_before_ms: Option<u64>,
    /// How many of its evicted instances may be replaced at once (at least 1).
    pub max_migrating: u32,
}

/// How far an observed instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Created or running, readiness not (yet) established.
    Starting,
    /// Running and passing its readiness check: it receives traffic.
    Ready,
    /// Exited or dead; it will never serve again.
    Failed,
    /// Created but never started, for longer than [`crate::STUCK_AFTER_MS`].
    Stuck,
}

/// One container the runtime reports, reduced to what decisions need. Its strings borrow from
/// the caller's snapshot where they can (`decide` builds 10,000 of these per pass).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedInstance<'a> {
    /// Runtime id of the container.
    pub id: Cow<'a, str>,
    /// `project/name` of the service it belongs to.
    pub service: Cow<'a, str>,
    /// Fingerprint it was created with.
    pub fingerprint: Cow<'a, str>,
    /// Replica slot it fills.
    pub slot: u32,
    /// Where it is in its life.
    pub phase: Phase,
    /// `Some(deadline_ms)`: it must leave its node (drain, rebalance) — replaced first, and
    /// removed at the deadline at the latest (`u64::MAX`: none).
    pub evict: Option<u64>,
    /// When it was created (ms, its engine's clock): of two ready instances in one slot
    /// (a node came back after its instances were replaced) the newer, the replacement, stays.
    pub created_ms: u64,
}

/// Why an instance is removed; shown in logs and events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveReason {
    /// The container exited or died.
    Failed,
    /// The service was stopped.
    Stopped,
    /// The service has fewer replicas now.
    ScaledDown,
    /// A second instance in the same slot.
    Duplicate,
    /// Replaced by an instance of the current fingerprint.
    Superseded,
    /// Its service is unknown to the store.
    Orphan,
    /// Created but never started (the server died between create and start).
    Stuck,
    /// Evicted from its node (drain, rebalance), its replacement ready elsewhere.
    Migrated,
    /// Evicted from its node and its drain deadline passed.
    DrainDeadline,
}

impl RemoveReason {
    /// Stable lowercase name for logs and events.
    pub fn as_str(self) -> &'static str {
        match self {
            RemoveReason::Failed => "failed",
            RemoveReason::Stopped => "stopped",
            RemoveReason::ScaledDown => "scaled-down",
            RemoveReason::Duplicate => "duplicate",
            RemoveReason::Superseded => "superseded",
            RemoveReason::Orphan => "orphan",
            RemoveReason::Stuck => "stuck-created",
            RemoveReason::Migrated => "migrated",
            RemoveReason::DrainDeadline => "drain-deadline",
        }
    }
}

/// One step the executor performs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create and start an instance of `service` in `slot`.
    Start {
        /// `project/name`.
        service: String,
        /// Replica slot to fill.
        slot: u32,
        /// Fingerprint the new instance carries.
        fingerprint: String,
    },
    /// Stop and remove a container.
    Remove {
        /// Runtime id.
        id: String,
        /// `project/name`.
        service: String,
        /// Why.
        reason: RemoveReason,
    },
}

/// The reconciler's output: removals first, then starts, both in a stable order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Actions in execution order.
    pub actions: Vec<Action>,
    /// Services that need a start but are held back by crash back-off, with the time they may.
    pub backing_off: BTreeMap<String, u64>,
}

impl Plan {
    /// True when nothing is to be done.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// Computes the plan with no cluster-wide bound on migrations. Pure: same inputs, same plan.
pub fn plan(desired: &[DesiredService], observed: &[ObservedInstance], now_ms: u64) -> Plan {
    plan_with(desired, observed, now_ms, u32::MAX)
}

/// Computes the plan; at most `migrate_limit` replacements of evicted instances are in
/// flight cluster-wide (started and not yet ready, counting those this plan starts).
pub fn plan_with(
    desired: &[DesiredService],
    observed: &[ObservedInstance],
    now_ms: u64,
    migrate_limit: u32,
) -> Plan {
    let mut removes = Vec::new();
    // Slots whose only live instance is to be evicted: (service, slot, fingerprint), and
    // per service how many replacements are already starting.
    let mut to_migrate: Vec<(&DesiredService, u32, &str)> = Vec::new();
    let mut migrating: BTreeMap<&str, u32> = BTreeMap::new();
    let mut starts = Vec::new();
    let mut backing_off = BTreeMap::new();

    let mut by_service: crate::FastMap<&str, Vec<&ObservedInstance>> =
        crate::FastMap::with_capacity_and_hasher(desired.len(), Default::default());
    for inst in observed {
        by_service
            .entry(inst.service.as_ref())
            .or_default()
            .push(inst);
    }
    let desired_keys: crate::FastSet<&str> = desired.iter().map(|d| d.key.as_str()).collect();

    // Orphans in key order (the map's order is not the plan's).
    let mut services: Vec<(&&str, &Vec<&ObservedInstance>)> = by_service.iter().collect();
    services.sort_unstable_by_key(|(k, _)| **k);
    for (service, instances) in services {
        if !desired_keys.contains(service) {
            for inst in instances {
                removes.push(remove(inst, RemoveReason::Orphan));
            }
        }
    }

    for d in desired {
        let instances = by_service.get(d.key.as_str()).cloned().unwrap_or_default();
        let (failed, live): (Vec<_>, Vec<_>) = instances
            .into_iter()
            .partition(|i| matches!(i.phase, Phase::Failed | Phase::Stuck));
        for inst in &failed {
            let reason = if inst.phase == Phase::Stuck {
                RemoveReason::Stuck
            } else {
                RemoveReason::Failed
            };
            removes.push(remove(inst, reason));
        }
        if !d.running {
            for inst in &live {
                removes.push(remove(inst, RemoveReason::Stopped));
            }
            continue;
        }

        let mut held_back = false;
        for group in &d.groups {
            let members: Vec<&ObservedInstance> = live
                .iter()
                .copied()
                .filter(|i| i.fingerprint == group.fingerprint)
                .collect();
            // Best instance per slot; the rest of the slot are duplicates.
            let mut by_slot: BTreeMap<u32, Vec<&ObservedInstance>> = BTreeMap::new();
            for inst in members {
                by_slot.entry(inst.slot).or_default().push(inst);
            }
            let mut filled = BTreeSet::new();
            for (slot, mut insts) in by_slot {
                // Staying before evicted, ready before starting, then by id for a
                // deterministic choice.
                insts.sort_by(|a, b| {
                    a.evict
                        .is_some()
                        .cmp(&b.evict.is_some())
                        .then(b.phase.cmp(&a.phase))
                        .then(b.created_ms.cmp(&a.created_ms))
                        .then(a.id.cmp(&b.id))
                });
                let (keep, dups) = insts.split_first().expect("slot group is never empty");
                for dup in dups {
                    match dup.evict {
                        // Evicted, its replacement (`keep`) not ready yet: it keeps serving.
                        Some(deadline)
                            if keep.evict.is_none()
                                && keep.phase != Phase::Ready
                                && deadline > now_ms =>
                        {
                            *migrating.entry(d.key.as_str()).or_default() += 1;
                        }
                        Some(deadline) if keep.evict.is_none() => {
                            let reason = if deadline > now_ms {
                                RemoveReason::Migrated
                            } else {
                                RemoveReason::DrainDeadline
                            };
                            removes.push(remove(dup, reason));
                        }
                        _ => removes.push(remove(dup, RemoveReason::Duplicate)),
                    }
                }
                if slot >= group.count {
                    removes.push(remove(keep, RemoveReason::ScaledDown));
                    continue;
                }
                match keep.evict {
                    Some(deadline) if deadline <= now_ms => {
                        removes.push(remove(keep, RemoveReason::DrainDeadline));
                    }
                    Some(_) => {
                        filled.insert(slot);
                        to_migrate.push((d, slot, group.fingerprint.as_str()));
                    }
                    None => {
                        filled.insert(slot);
                    }
                }
            }
            let missing: Vec<u32> = (0..group.count).filter(|s| !filled.contains(s)).collect();
            if missing.is_empty() {
                continue;
            }
            match d.not_before_ms {
                Some(t) if t > now_ms => held_back = true,
                _ => {
                    for slot in missing {
                        starts.push(Action::Start {
                            service: d.key.clone(),
                            slot,
                            fingerprint: group.fingerprint.clone(),
                        });
                    }
                }
            }
        }
        if held_back {
            if let Some(t) = d.not_before_ms {
                backing_off.insert(d.key.clone(), t);
            }
        }
        for inst in live
            .iter()
            .filter(|i| !d.groups.iter().any(|g| g.fingerprint == i.fingerprint))
        {
            removes.push(remove(inst, RemoveReason::Superseded));
        }
    }

    // Replacements of evicted instances, in a stable order, within both bounds.
    let mut in_flight: u32 = migrating.values().sum();
    for (d, slot, fingerprint) in to_migrate {
        if in_flight >= migrate_limit {
            break;
        }
        let n = migrating.entry(d.key.as_str()).or_default();
        if *n >= d.max_migrating.max(1) || d.not_before_ms.is_some_and(|t| t > now_ms) {
            continue;
        }
        *n += 1;
        in_flight += 1;
        starts.push(Action::Start {
            service: d.key.clone(),
            slot,
            fingerprint: fingerprint.to_string(),
        });
    }

    let mut actions = removes;
    actions.extend(starts);
    Plan {
        actions,
        backing_off,
    }
}

fn remove(inst: &ObservedInstance<'_>, reason: RemoveReason) -> Action {
    Action::Remove {
        id: inst.id.to_string(),
        service: inst.service.to_string(),
        reason,
    }
}

/// Crash back-off: how long to wait before starting again after `failures` consecutive
/// failures. The first failure restarts at once (a killed replica must come back fast);
/// a crash loop backs off exponentially to 30 s.
pub fn backoff_ms(failures: u32) -> u64 {
    match failures {
        0 | 1 => 0,
        n => (500u64 << (n - 2).min(6)).min(30_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(key: &str, fp: &str, replicas: u32) -> DesiredService {
        groups(key, &[(fp, replicas)])
    }

    fn groups(key: &str, gs: &[(&str, u32)]) -> DesiredService {
        DesiredService {
            key: key.into(),
            groups: gs
                .iter()
                .map(|(fp, count)| DesiredGroup {
                    fingerprint: fp.to_string(),
                    count: *count,
                })
                .collect(),
            running: true,
            not_before_ms: None,
            max_migrating: 1,
        }
    }

    fn inst(
        id: &str,
        service: &str,
        fp: &str,
        slot: u32,
        phase: Phase,
    ) -> ObservedInstance<'static> {
        ObservedInstance {
            id: id.to_string().into(),
            service: service.to_string().into(),
            fingerprint: fp.to_string().into(),
            slot,
            phase,
            evict: None,
            created_ms: 0,
        }
    }

    fn starts(p: &Plan) -> Vec<(String, u32)> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { service, slot, .. } => Some((service.clone(), *slot)),
                _ => None,
            })
            .collect()
    }

    fn removes(p: &Plan) -> Vec<(String, RemoveReason)> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::Remove { id, reason, .. } => Some((id.clone(), *reason)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn fresh_service_starts_every_slot() {
        let p = plan(&[svc("p/web", "a", 2)], &[], 0);
        assert_eq!(starts(&p), vec![("p/web".into(), 0), ("p/web".into(), 1)]);
        assert!(removes(&p).is_empty());
    }

    #[test]
    fn converged_service_is_a_no_op() {
        let obs = [
            inst("1", "p/web", "a", 0, Phase::Ready),
            inst("2", "p/web", "a", 1, Phase::Starting),
        ];
        assert!(plan(&[svc("p/web", "a", 2)], &obs, 0).is_empty());
    }

    #[test]
    fn scale_up_fills_only_missing_slots() {
        let obs = [
            inst("1", "p/web", "a", 0, Phase::Ready),
            inst("2", "p/web", "a", 1, Phase::Ready),
        ];
        let p = plan(&[svc("p/web", "a", 4)], &obs, 0);
        assert_eq!(starts(&p), vec![("p/web".into(), 2), ("p/web".into(), 3)]);
        assert!(removes(&p).is_empty());
    }

    #[test]
    fn scale_down_removes_highest_slots() {
        let obs = [
            inst("1", "p/web", "a", 0, Phase::Ready),
            inst("2", "p/web", "a", 1, Phase::Ready),
            inst("3", "p/web", "a", 2, Phase::Ready),
        ];
        let p = plan(&[svc("p/web", "a", 1)], &obs, 0);
        assert_eq!(
            removes(&p),
            vec![
                ("2".into(), RemoveReason::ScaledDown),
                ("3".into(), RemoveReason::ScaledDown)
            ]
        );
        assert!(starts(&p).is_empty());
    }

    #[test]
    fn failed_instance_is_removed_and_replaced_in_its_slot() {
        let obs = [
            inst("1", "p/web", "a", 0, Phase::Ready),
            inst("2", "p/web", "a", 1, Phase::Failed),
        ];
        let p = plan(&[svc("p/web", "a", 2)], &obs, 0);
        assert_eq!(removes(&p), vec![("2".into(), RemoveReason::Failed)]);
        assert_eq!(starts(&p), vec![("p/web".into(), 1)]);
        // Removals come before starts so a reused container name is free.
        assert!(matches!(p.actions[0], Action::Remove { .. }));
    }

    #[test]
    fn crash_backoff_holds_starts_until_its_time() {
        let mut d = svc("p/web", "a", 1);
        d.not_before_ms = Some(5_000);
        let p = plan(std::slice::from_ref(&d), &[], 1_000);
        assert!(starts(&p).is_empty());
        assert_eq!(p.backing_off.get("p/web"), Some(&5_000));
        let p = plan(&[d], &[], 5_000);
        assert_eq!(starts(&p), vec![("p/web".into(), 0)]);
    }

    #[test]
    fn stopped_service_removes_everything_and_starts_nothing() {
        let mut d = svc("p/web", "a", 2);
        d.running = false;
        let obs = [
            inst("1", "p/web", "a", 0, Phase::Ready),
            inst("2", "p/web", "old", 1, Phase::Starting),
        ];
        let p = plan(&[d], &obs, 0);
        assert_eq!(
            removes(&p),
            vec![
                ("1".into(), RemoveReason::Stopped),
                ("2".into(), RemoveReason::Stopped)
            ]
        );
        assert!(starts(&p).is_empty());
    }

    #[test]
    fn duplicate_in_slot_keeps_the_ready_one() {
        let obs = [
            inst("a1", "p/web", "a", 0, Phase::Starting),
            inst("b2", "p/web", "a", 0, Phase::Ready),
        ];
        let p = plan(&[svc("p/web", "a", 1)], &obs, 0);
        assert_eq!(removes(&p), vec![("a1".into(), RemoveReason::Duplicate)]);
        assert!(starts(&p).is_empty());
    }

    #[test]
    fn two_groups_run_side_by_side_and_a_dropped_group_is_superseded() {
        let obs = [
            inst("o1", "p/web", "old", 0, Phase::Ready),
            inst("o2", "p/web", "old", 1, Phase::Ready),
        ];
        // A rollout step: keep 2 old, start 1 new.
        let p = plan(&[groups("p/web", &[("old", 2), ("new", 1)])], &obs, 0);
        assert_eq!(starts(&p), vec![("p/web".into(), 0)]);
        assert!(removes(&p).is_empty(), "old instances keep serving");

        // Next step: old down to 1.
        let obs2 = [
            obs[0].clone(),
            obs[1].clone(),
            inst("n1", "p/web", "new", 0, Phase::Ready),
        ];
        let p = plan(&[groups("p/web", &[("old", 1), ("new", 2)])], &obs2, 0);
        assert_eq!(removes(&p), vec![("o2".into(), RemoveReason::ScaledDown)]);
        assert_eq!(starts(&p), vec![("p/web".into(), 1)]);

        // Promoted: the old group is gone.
        let p = plan(&[svc("p/web", "new", 1)], &obs2, 0);
        assert_eq!(
            removes(&p),
            vec![
                ("o1".into(), RemoveReason::Superseded),
                ("o2".into(), RemoveReason::Superseded)
            ]
        );
    }

    #[test]
    fn a_node_back_after_its_instances_were_replaced_loses_to_the_ready_replacements() {
        let d = vec![svc("p/s", "f", 1)];
        let mut old = inst("zz-old", "p/s", "f", 0, Phase::Ready);
        old.created_ms = 1_000;
        let mut new = inst("aa-new", "p/s", "f", 0, Phase::Ready);
        new.created_ms = 5_000;
        let p = plan(&d, &[old.clone(), new.clone()], 10_000);
        assert_eq!(
            removes(&p),
            vec![("zz-old".to_string(), RemoveReason::Duplicate)]
        );
        // The replacement not ready yet: the one that serves stays, the other goes.
        new.phase = Phase::Starting;
        let p = plan(&d, &[old, new], 10_000);
        assert_eq!(
            removes(&p),
            vec![("aa-new".to_string(), RemoveReason::Duplicate)]
        );
    }

    fn evicted(mut i: ObservedInstance<'static>, deadline: u64) -> ObservedInstance<'static> {
        i.evict = Some(deadline);
        i
    }

    #[test]
    fn an_evicted_instance_serves_until_its_replacement_is_ready() {
        let d = vec![svc("p/s", "f", 2)];
        let on_drained = evicted(inst("a", "p/s", "f", 0, Phase::Ready), u64::MAX);
        let other = inst("b", "p/s", "f", 1, Phase::Ready);
        // First its slot gets a replacement (placed elsewhere); nothing is removed.
        let p = plan(&d, &[on_drained.clone(), other.clone()], 0);
        assert_eq!(starts(&p), vec![("p/s".to_string(), 0)]);
        assert!(removes(&p).is_empty());
        // The replacement starting: nothing more (no second replacement either).
        let repl = inst("c", "p/s", "f", 0, Phase::Starting);
        let p = plan(&d, &[on_drained.clone(), other.clone(), repl.clone()], 0);
        assert!(p.is_empty(), "{p:?}");
        // Ready: the evicted one goes, drained as migrated.
        let repl = inst("c", "p/s", "f", 0, Phase::Ready);
        let p = plan(&d, &[on_drained, other, repl], 0);
        assert_eq!(removes(&p), vec![("a".to_string(), RemoveReason::Migrated)]);
        assert!(starts(&p).is_empty());
    }

    #[test]
    fn evictions_are_bounded_per_service_and_cluster_wide() {
        let mut d = vec![svc("p/a", "f", 3), svc("p/b", "g", 3)];
        let mut world = Vec::new();
        for slot in 0..3 {
            world.push(evicted(
                inst(&format!("a{slot}"), "p/a", "f", slot, Phase::Ready),
                u64::MAX,
            ));
            world.push(evicted(
                inst(&format!("b{slot}"), "p/b", "g", slot, Phase::Ready),
                u64::MAX,
            ));
        }
        // One per service by default.
        let p = plan_with(&d, &world, 0, 10);
        assert_eq!(
            starts(&p),
            vec![("p/a".to_string(), 0), ("p/b".to_string(), 0)]
        );
        // Cluster-wide bound of one.
        let p = plan_with(&d, &world, 0, 1);
        assert_eq!(starts(&p), vec![("p/a".to_string(), 0)]);
        // A service allowing two at once; one replacement of p/a already starting.
        d[0].max_migrating = 2;
        world.push(inst("r", "p/a", "f", 0, Phase::Starting));
        let p = plan_with(&d, &world, 0, 10);
        assert_eq!(
            starts(&p),
            vec![("p/a".to_string(), 1), ("p/b".to_string(), 0)]
        );
        let p = plan_with(&d, &world, 0, 1);
        assert!(starts(&p).is_empty(), "the one in flight uses the bound");
    }

    #[test]
    fn at_the_drain_deadline_what_remains_is_removed_and_refilled() {
        let d = vec![svc("p/s", "f", 1)];
        let late = evicted(inst("a", "p/s", "f", 0, Phase::Ready), 1_000);
        let p = plan(&d, std::slice::from_ref(&late), 1_000);
        assert_eq!(
            removes(&p),
            vec![("a".to_string(), RemoveReason::DrainDeadline)]
        );
        assert_eq!(starts(&p), vec![("p/s".to_string(), 0)]);
        // With its replacement still starting: removed all the same, the replacement kept.
        let repl = inst("c", "p/s", "f", 0, Phase::Starting);
        let p = plan(&d, &[late, repl], 1_000);
        assert_eq!(
            removes(&p),
            vec![("a".to_string(), RemoveReason::DrainDeadline)]
        );
        assert!(starts(&p).is_empty());
    }

    #[test]
    fn orphans_are_removed_and_other_services_untouched() {
        let obs = [
            inst("1", "p/gone", "a", 0, Phase::Ready),
            inst("2", "p/web", "a", 0, Phase::Ready),
        ];
        let p = plan(&[svc("p/web", "a", 1)], &obs, 0);
        assert_eq!(removes(&p), vec![("1".into(), RemoveReason::Orphan)]);
        assert!(starts(&p).is_empty());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff_ms(0), 0);
        assert_eq!(backoff_ms(1), 0);
        assert_eq!(backoff_ms(2), 500);
        assert_eq!(backoff_ms(3), 1_000);
        assert_eq!(backoff_ms(50), 30_000);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn phase() -> impl Strategy<Value = Phase> {
            prop_oneof![
                Just(Phase::Starting),
                Just(Phase::Ready),
                Just(Phase::Failed)
            ]
        }

        proptest! {
            /// Applying the plan (removes, then starts that become ready) converges: the next
            /// plan is empty and exactly `replicas` current instances exist, one per slot.
            #[test]
            fn plan_converges(
                replicas in 0u32..6,
                running in any::<bool>(),
                obs in proptest::collection::vec((0u32..8, any::<bool>(), phase()), 0..10),
            ) {
                let d = DesiredService { key: "p/s".into(), groups: vec![DesiredGroup { fingerprint: "cur".into(), count: replicas }], running, not_before_ms: None, max_migrating: 1 };
                let mut world: Vec<ObservedInstance> = obs.iter().enumerate().map(|(i, (slot, cur, ph))| {
                    inst(&format!("i{i}"), "p/s", if *cur { "cur" } else { "old" }, *slot, *ph)
                }).collect();
                let mut next_id = 100;
                for _round in 0..4 {
                    // Time passes: everything that was starting passes readiness.
                    for i in world.iter_mut().filter(|i| i.phase == Phase::Starting) {
                        i.phase = Phase::Ready;
                    }
                    let p = plan(std::slice::from_ref(&d), &world, 0);
                    if p.is_empty() { break; }
                    for a in p.actions {
                        match a {
                            Action::Remove { id, .. } => world.retain(|i| i.id != id),
                            Action::Start { service, slot, fingerprint } => {
                                next_id += 1;
                                world.push(ObservedInstance { id: format!("n{next_id}").into(), service: service.into(), fingerprint: fingerprint.into(), slot, phase: Phase::Ready, evict: None, created_ms: 0 });
                            }
                        }
                    }
                }
                prop_assert!(plan(std::slice::from_ref(&d), &world, 0).is_empty());
                let want = if running { replicas as usize } else { 0 };
                prop_assert_eq!(world.len(), want);
                let slots: BTreeSet<u32> = world.iter().map(|i| i.slot).collect();
                prop_assert_eq!(slots.len(), want);
                prop_assert!(world.iter().all(|i| i.fingerprint == "cur" && i.slot < replicas));
            }
        }
    }
}
