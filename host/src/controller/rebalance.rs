//! `orca rebalance`: spreads a service over its eligible nodes again, one instance at a time,
//! through the same path as a drain (the moved instance is *evicted*: a replacement starts
//! on the least loaded node and becomes ready before the evicted one is drained and stopped).
//! Which instance moves is [`pick`], a pure function of the service's instances and nodes.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use orca_config::ServiceSpec;
use orca_docker::ContainerRuntime;
use tracing::info;

use super::{Controller, PassNode};
use crate::instance::Instance;

/// Services being rebalanced, and the instances evicted for it (until they are gone).
#[derive(Debug, Default)]
pub struct Rebalancing {
    wanted: BTreeSet<String>,
    /// Instance id → its service.
    evicted: BTreeMap<String, String>,
}

impl Rebalancing {
    /// Starts rebalancing `service` (`project/name`).
    pub fn request(&mut self, service: String) {
        self.wanted.insert(service);
    }
}

/// The instance to move so the service gets closer to even: none while an earlier move is
/// in flight (some slot holds two instances) or an instance is not ready; else one on the
/// most loaded eligible node (or on a node that is not eligible), when that node holds at
/// least two more than the least loaded one. `instances`: (id, node, slot, ready).
pub fn pick(instances: &[(&str, &str, u32, bool)], eligible: &[&str]) -> Option<String> {
    let mut slots = HashSet::new();
    for (_, _, slot, ready) in instances {
        if !ready || !slots.insert(*slot) {
            return None;
        }
    }
    if eligible.is_empty() {
        return None;
    }
    // An instance on a node it may not be on moves first.
    if let Some((id, ..)) = instances.iter().find(|(_, n, ..)| !eligible.contains(n)) {
        return Some(id.to_string());
    }
    let mut counts: BTreeMap<&str, u32> = eligible.iter().map(|n| (*n, 0)).collect();
    for (_, node, ..) in instances {
        *counts.entry(node).or_default() += 1;
    }
    let (min_node, min) = counts.iter().min_by_key(|(n, c)| (**c, **n))?;
    let (max_node, max) = counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))?;
    if max.saturating_sub(*min) < 2 || min_node == max_node {
        return None;
    }
    instances
        .iter()
        .filter(|(_, n, ..)| n == max_node)
        .max_by_key(|(_, _, slot, _)| *slot)
        .map(|(id, ..)| id.to_string())
}

/// Whether a service may run on a node, as placement sees it: not draining, its pin (by
/// exact name) and labels.
fn eligible<R: ContainerRuntime>(spec: &ServiceSpec, node: &PassNode<R>) -> bool {
    let placement = spec.placement.as_ref();
    let labels = node.remote.as_ref().map(|r| &r.record.labels);
    let draining = node.remote.as_ref().is_some_and(|r| r.record.draining);
    let pin_ok = placement
        .and_then(|p| p.node.as_deref())
        .is_none_or(|pin| pin == node.name);
    let labels_ok = placement.is_none_or(|p| {
        p.labels
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
    });
    !draining && pin_ok && labels_ok
}

impl<R: ContainerRuntime> Controller<R> {
    /// The instances evicted by rebalances this pass: earlier picks still present, and at
    /// most one new pick per service; a service that is even is done.
    pub(super) fn rebalance_evictions(
        &self,
        specs: &BTreeMap<String, &ServiceSpec>,
        instances: &[&Instance],
        nodes: &[PassNode<R>],
        verdicts: &crate::health::Verdicts<'_>,
    ) -> HashSet<String> {
        let mut r = self.rebalancing.lock().expect("rebalance lock");
        if !r.evicted.is_empty() {
            let present: orca_core::FastSet<&str> =
                instances.iter().map(|i| i.info.id.as_str()).collect();
            r.evicted.retain(|id, _| present.contains(id.as_str()));
        }
        let wanted: Vec<String> = r.wanted.iter().cloned().collect();
        for key in wanted {
            let Some(spec) = specs.get(&key) else {
                r.wanted.remove(&key);
                continue;
            };
            if r.evicted.values().any(|s| *s == key) {
                continue;
            }
            // A named volume lives on its node: moving the instance would leave its data
            // behind (and a stop-first service could never start the replacement beside it).
            if spec.mounts().iter().any(|m| m.volume().is_some()) {
                info!(service = %key, "rebalance leaves a service with named volumes where it is");
                r.wanted.remove(&key);
                continue;
            }
            let mine: Vec<(&str, &str, u32, bool)> = instances
                .iter()
                .filter(|i| i.service == key && !i.is_failed())
                .map(|i| {
                    (
                        i.info.id.as_str(),
                        i.node.as_str(),
                        i.slot,
                        verdicts.ready(&i.info.id),
                    )
                })
                .collect();
            let eligible: Vec<&str> = nodes
                .iter()
                .filter(|n| eligible(spec, n))
                .map(|n| n.name.as_str())
                .collect();
            match pick(&mine, &eligible) {
                Some(id) => {
                    info!(service = %key, id = %crate::instance::short(&id), "rebalance moves an instance");
                    r.evicted.insert(id, key);
                }
                None if mine.iter().all(|(_, _, _, ready)| *ready)
                    && mine.len() as u32 >= spec.replicas =>
                {
                    info!(service = %key, "rebalanced");
                    r.wanted.remove(&key);
                }
                None => {}
            }
        }
        r.evicted.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_one_from_the_fullest_node_until_even() {
        let all = [
            ("a", "n0", 0, true),
            ("b", "n0", 1, true),
            ("c", "n0", 2, true),
            ("d", "n2", 3, true),
            ("e", "n2", 4, true),
            ("f", "n2", 5, true),
        ];
        // n1 is empty: one of the fullest (the highest slot of the later name on a tie
        // goes by name: n0 first) moves.
        assert_eq!(pick(&all, &["n0", "n1", "n2"]), Some("c".into()));
        // Even already (or within one): nothing moves.
        let even = [
            ("a", "n0", 0, true),
            ("b", "n1", 1, true),
            ("c", "n0", 2, true),
        ];
        assert_eq!(pick(&even, &["n0", "n1"]), None);
        // A move in flight (slot 2 twice) or an instance not ready: wait.
        let mut moving = all.to_vec();
        moving.push(("g", "n1", 2, true));
        assert_eq!(pick(&moving, &["n0", "n1", "n2"]), None);
        let mut starting = all.to_vec();
        starting[5].3 = false;
        assert_eq!(pick(&starting, &["n0", "n1", "n2"]), None);
        // On a node it may no longer be on: that one first.
        assert_eq!(pick(&even, &["n1", "n2"]), Some("a".into()));
        assert_eq!(pick(&even, &[]), None);
    }
}
