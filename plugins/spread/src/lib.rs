//! `spread`: orca's default placement policy, in the Kubernetes scheduler framework's shape.
//!
//! **Filter** (every reason that applies is reported, joined by `; `):
//! - a draining node is infeasible (`node is draining`);
//! - with `[service.placement] node = "X"`, a node whose name and address both do not contain
//!   `X` (ASCII case-insensitively; the host evaluates this as `node.selected`) is infeasible
//!   (`does not match placement.node = X`);
//! - a node with less free memory or CPU than the instance asks for is infeasible, with both
//!   numbers.
//!
//! **Score** (feasible nodes): fewer instances of this service on the node first (spreading
//! replicas over nodes), then more memory left free after placing the instance.
//!
//! Every node of the request gets exactly one verdict, in the order given (naming nodes by
//! index).

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

/// Why `node` cannot take the instance, if it cannot: every reason that applies, joined by
/// `; `, built in one string (this runs for every infeasible node of every call).
pub fn infeasibility(request: &PlacementRequest, node: &Node) -> Option<String> {
    use std::fmt::Write as _;
    let mut reasons = String::new();
    fn next(reasons: &mut String) {
        if !reasons.is_empty() {
            reasons.push_str("; ");
        }
    }
    if node.draining {
        next(&mut reasons);
        reasons.push_str("node is draining");
    }
    if !node.selected {
        next(&mut reasons);
        match request.pin.as_deref() {
            Some(pin) => {
                reasons.push_str("does not match placement.node = ");
                reasons.push_str(pin);
            }
            None => reasons.push_str("not selected by the service's placement"),
        }
    }
    if request.memory_bytes > node.memory_bytes_free {
        next(&mut reasons);
        let _ = write!(
            reasons,
            "needs {} bytes of memory, {} free",
            request.memory_bytes, node.memory_bytes_free
        );
    }
    if request.cpu_millis > node.cpu_millis_free {
        next(&mut reasons);
        let _ = write!(
            reasons,
            "needs {} millicores of CPU, {} free",
            request.cpu_millis, node.cpu_millis_free
        );
    }
    (!reasons.is_empty()).then_some(reasons)
}

impl Placement for Spread {
    fn place(&self, request: &PlacementRequest, nodes: &[Node]) -> Result<Vec<Verdict>, String> {
        Ok(nodes
            .iter()
            .zip(0u32..)
            .map(|(node, index)| match infeasibility(request, node) {
                Some(reason) => Verdict::infeasible(index, reason),
                None => Verdict::feasible(
                    index,
                    score(node.existing, node.memory_bytes_free - request.memory_bytes),
                ),
            })
            .collect())
    }
}

orca_plugin_sdk::export_placement!(Spread);

// A call allocates a few bytes per node and the instance is discarded afterwards.
#[cfg(target_family = "wasm")]
#[global_allocator]
static ALLOC: orca_plugin_sdk::CallArena = orca_plugin_sdk::CallArena::new();

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn node(mem_free: u64, cpu_free: u32) -> Node {
        Node {
            cpu_millis: 4000,
            cpu_millis_free: cpu_free,
            memory_bytes: 16 * GIB,
            memory_bytes_free: mem_free,
            ..Node::default()
        }
    }

    fn with_existing(mut n: Node, existing: u32) -> Node {
        n.existing = existing;
        n
    }

    fn request() -> PlacementRequest {
        PlacementRequest {
            memory_bytes: GIB,
            cpu_millis: 500,
            ..PlacementRequest::default()
        }
    }

    fn best(verdicts: &[Verdict]) -> u32 {
        verdicts
            .iter()
            .filter(|v| v.is_feasible())
            .max_by_key(|v| v.score)
            .map(|v| v.node)
            .unwrap()
    }

    #[test]
    fn spreads_first_then_prefers_free_memory() {
        let (a, b, c) = (
            node(8 * GIB, 2000),
            node(4 * GIB, 2000),
            node(12 * GIB, 2000),
        );
        // No instance anywhere: most free memory wins.
        let v = Spread
            .place(&request(), &[a.clone(), b.clone(), c.clone()])
            .unwrap();
        assert_eq!(v.len(), 3);
        assert!(v.iter().all(|v| v.is_feasible()));
        assert_eq!(best(&v), 2);
        // c already runs one: a (more memory than b) wins.
        let nodes = [a.clone(), b.clone(), with_existing(c.clone(), 1)];
        let v = Spread.place(&request(), &nodes).unwrap();
        assert_eq!(best(&v), 0);
        // Fewer instances beat any amount of memory.
        let nodes = [with_existing(a, 1), b, with_existing(c, 1)];
        let v = Spread.place(&request(), &nodes).unwrap();
        assert_eq!(best(&v), 1);
        assert!(score(0, 0) > score(1, u64::MAX));
        assert_eq!(score(5000, 0), score(MAX_COUNTED, 0));
    }

    #[test]
    fn filters_with_reasons_and_answers_for_every_node() {
        let mut draining = node(8 * GIB, 2000);
        draining.draining = true;
        let nodes = [
            draining,
            node(GIB / 2, 2000),
            node(8 * GIB, 100),
            node(8 * GIB, 2000),
        ];
        let v = Spread.place(&request(), &nodes).unwrap();
        assert_eq!(v.iter().map(|v| v.node).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(v[0].infeasible.as_deref(), Some("node is draining"));
        assert_eq!(
            v[1].infeasible,
            Some(format!("needs {GIB} bytes of memory, {} free", GIB / 2))
        );
        assert_eq!(
            v[2].infeasible.as_deref(),
            Some("needs 500 millicores of CPU, 100 free")
        );
        assert!(v[3].is_feasible());
    }

    #[test]
    fn pinning_follows_the_hosts_selection() {
        let mut other = node(8 * GIB, 2000);
        other.selected = false;
        let nodes = [node(8 * GIB, 2000), other.clone()];
        let mut req = request();
        req.pin = Some("WEB-1".into());
        let v = Spread.place(&req, &nodes).unwrap();
        assert!(v[0].is_feasible());
        assert_eq!(
            v[1].infeasible.as_deref(),
            Some("does not match placement.node = WEB-1")
        );
        // Every reason is given.
        other.draining = true;
        let v = Spread.place(&req, &[other]).unwrap();
        assert_eq!(
            v[0].infeasible.as_deref(),
            Some("node is draining; does not match placement.node = WEB-1")
        );
    }

    #[test]
    fn no_nodes_no_verdicts() {
        assert!(Spread.place(&request(), &[]).unwrap().is_empty());
    }
}
