//! `spread`: orca's default placement policy, in the Kubernetes scheduler framework's shape.
//!
//! **Filter** (every reason that applies is reported, joined by `; `):
//! - a draining node is infeasible (`node is draining`);
//! - with `[service.placement] node = "X"`, a node whose name and address both do not contain
//!   `X` (ASCII case-insensitively) is infeasible (`does not match placement.node = X`);
//! - a node with less free memory or CPU than the instance asks for is infeasible, with both
//!   numbers.
//!
//! **Score** (feasible nodes): fewer instances of this service on the node first (spreading
//! replicas over nodes), then more memory left free after placing the instance.
//!
//! Every node of the request gets exactly one verdict (the host requires it).

#![deny(unsafe_code)]

use orca_plugin_sdk::placement::Placement;
use orca_plugin_sdk::types::{Node, PlacementRequest, Verdict};

/// The spread placement policy.
#[derive(Default)]
pub struct Spread;

/// Bits of the score given to the memory left free (in MiB, capped).
const MEMORY_BITS: u32 = 22;
/// Instance counts at or above this all score the same.
const MAX_COUNTED: u32 = (1 << (32 - MEMORY_BITS)) - 1;

/// The score of a feasible node: the spread term in the high bits, free memory (MiB after
/// placement, capped at 4 TiB) in the low bits.
pub fn score(existing: u32, memory_free_after: u64) -> u32 {
    let spread = MAX_COUNTED - existing.min(MAX_COUNTED);
    let memory = (memory_free_after >> 20).min((1 << MEMORY_BITS) - 1) as u32;
    (spread << MEMORY_BITS) | memory
}

/// Why `node` cannot take the instance, if it cannot.
pub fn infeasibility(request: &PlacementRequest, node: &Node) -> Option<String> {
    let mut reasons = Vec::new();
    if node.draining {
        reasons.push("node is draining".to_string());
    }
    if let Some(pin) = request.pin.as_deref().filter(|p| !p.is_empty()) {
        let matches =
            contains_ignore_case(&node.name, pin) || contains_ignore_case(&node.address, pin);
        if !matches {
            reasons.push(format!("does not match placement.node = {pin}"));
        }
    }
    if request.memory_bytes > node.memory_bytes_free {
        reasons.push(format!(
            "needs {} bytes of memory, {} free",
            request.memory_bytes, node.memory_bytes_free
        ));
    }
    if request.cpu_millis > node.cpu_millis_free {
        reasons.push(format!(
            "needs {} millicores of CPU, {} free",
            request.cpu_millis, node.cpu_millis_free
        ));
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .to_ascii_lowercase()
        .contains(&needle.to_ascii_lowercase())
}

impl Placement for Spread {
    fn place(&self, request: &PlacementRequest, nodes: &[Node]) -> Result<Vec<Verdict>, String> {
        Ok(nodes
            .iter()
            .map(|node| match infeasibility(request, node) {
                Some(reason) => Verdict::infeasible(node.id.clone(), reason),
                None => Verdict::feasible(
                    node.id.clone(),
                    score(
                        request.existing_on(&node.id),
                        node.memory_bytes_free - request.memory_bytes,
                    ),
                ),
            })
            .collect())
    }
}

orca_plugin_sdk::export_placement!(Spread);

#[cfg(test)]
mod tests {
    use super::*;
    use orca_plugin_sdk::types::NodeCount;

    const GIB: u64 = 1 << 30;

    fn node(id: &str, name: &str, address: &str, mem_free: u64, cpu_free: u32) -> Node {
        Node {
            id: id.into(),
            name: name.into(),
            address: address.into(),
            cpu_millis: 4000,
            cpu_millis_free: cpu_free,
            memory_bytes: 16 * GIB,
            memory_bytes_free: mem_free,
            instances: 0,
            draining: false,
            labels: Vec::new(),
        }
    }

    fn request(existing: &[(&str, u32)]) -> PlacementRequest {
        PlacementRequest {
            memory_bytes: GIB,
            cpu_millis: 500,
            existing: existing
                .iter()
                .map(|(n, c)| NodeCount {
                    node: (*n).into(),
                    count: *c,
                })
                .collect(),
            ..PlacementRequest::default()
        }
    }

    fn best(verdicts: &[Verdict]) -> &str {
        verdicts
            .iter()
            .filter(|v| v.feasible)
            .max_by_key(|v| v.score)
            .map(|v| v.node.as_str())
            .unwrap()
    }

    #[test]
    fn spreads_first_then_prefers_free_memory() {
        let nodes = [
            node("a", "alpha", "10.0.0.1", 8 * GIB, 2000),
            node("b", "beta", "10.0.0.2", 4 * GIB, 2000),
            node("c", "gamma", "10.0.0.3", 12 * GIB, 2000),
        ];
        // No instance anywhere: most free memory wins.
        let v = Spread.place(&request(&[]), &nodes).unwrap();
        assert_eq!(v.len(), 3);
        assert!(v.iter().all(|v| v.feasible));
        assert_eq!(best(&v), "c");
        // c already runs one: a (more memory than b) wins.
        let v = Spread.place(&request(&[("c", 1)]), &nodes).unwrap();
        assert_eq!(best(&v), "a");
        // Fewer instances beat any amount of memory.
        let v = Spread
            .place(&request(&[("c", 1), ("a", 1)]), &nodes)
            .unwrap();
        assert_eq!(best(&v), "b");
        assert!(score(0, 0) > score(1, u64::MAX));
        assert_eq!(score(5000, 0), score(MAX_COUNTED, 0));
    }

    #[test]
    fn filters_with_reasons_and_answers_for_every_node() {
        let mut draining = node("d", "delta", "10.0.0.4", 8 * GIB, 2000);
        draining.draining = true;
        let nodes = [
            draining,
            node("s", "small", "10.0.0.5", GIB / 2, 2000),
            node("c", "cpuless", "10.0.0.6", 8 * GIB, 100),
            node("o", "ok", "10.0.0.7", 8 * GIB, 2000),
        ];
        let v = Spread.place(&request(&[]), &nodes).unwrap();
        assert_eq!(
            v.iter().map(|v| v.node.as_str()).collect::<Vec<_>>(),
            ["d", "s", "c", "o"]
        );
        assert!(!v[0].feasible);
        assert_eq!(v[0].reason, "node is draining");
        assert!(!v[1].feasible);
        assert_eq!(
            v[1].reason,
            format!("needs {GIB} bytes of memory, {} free", GIB / 2)
        );
        assert!(!v[2].feasible);
        assert_eq!(v[2].reason, "needs 500 millicores of CPU, 100 free");
        assert!(v[3].feasible);
        assert!(v[3].reason.is_empty());
    }

    #[test]
    fn pinning_matches_name_or_address() {
        let nodes = [
            node("1", "web-1.example.com", "10.0.0.1", 8 * GIB, 2000),
            node("2", "db-1.example.com", "10.0.0.2", 8 * GIB, 2000),
        ];
        let mut req = request(&[]);
        req.pin = Some("WEB-1".into());
        let v = Spread.place(&req, &nodes).unwrap();
        assert!(v[0].feasible);
        assert!(!v[1].feasible);
        assert_eq!(v[1].reason, "does not match placement.node = WEB-1");
        req.pin = Some("10.0.0.2".into());
        let v = Spread.place(&req, &nodes).unwrap();
        assert!(!v[0].feasible);
        assert!(v[1].feasible);
        // Every reason is given.
        let mut drained = nodes[0].clone();
        drained.draining = true;
        let v = Spread.place(&req, &[drained]).unwrap();
        assert_eq!(
            v[0].reason,
            "node is draining; does not match placement.node = 10.0.0.2"
        );
    }

    #[test]
    fn no_nodes_no_verdicts() {
        assert!(Spread.place(&request(&[]), &[]).unwrap().is_empty());
    }
}
