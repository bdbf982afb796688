//! A placement policy built against the released, frozen `orca:plugin@0.1.0`
//! (`wit/released/0.1.0`), as a plugin author's component from before 0.2.0 is: nodes by id
//! with name, address and labels, `existing` counts by node id, verdicts naming nodes by id.
//! The host must keep loading it and apply its verdicts (tests/plugins.rs).
//!
//! Policy: a node is infeasible when draining, when `pin` is set and neither its name nor
//! its address contains it, or when its free memory is short; a feasible node scores its free
//! memory in MiB minus 1000 per instance of the service already on it. It logs once, so it
//! imports `orca:plugin/logging@0.1.0`.

wit_bindgen::generate!({ world: "placement", path: "../../../wit/released/0.1.0" });

use orca::plugin::logging::{log, Level};

struct Compat;

impl Guest for Compat {
    fn place(request: PlacementRequest, nodes: Vec<Node>) -> Result<Vec<Verdict>, String> {
        log(Level::Info, &format!("placing over {} nodes", nodes.len()));
        Ok(nodes
            .into_iter()
            .map(|n| {
                let existing: u32 = request
                    .existing
                    .iter()
                    .filter(|c| c.node == n.id)
                    .map(|c| c.count)
                    .sum();
                let mut reasons = Vec::new();
                if n.draining {
                    reasons.push("draining".to_string());
                }
                if let Some(pin) = &request.pin {
                    if !n.name.contains(pin.as_str()) && !n.address.contains(pin.as_str()) {
                        reasons.push(format!("not {pin}"));
                    }
                }
                if n.memory_bytes_free < request.memory_bytes {
                    reasons.push("not enough free memory".into());
                }
                let mib = (n.memory_bytes_free >> 20).min(u64::from(u32::MAX)) as u32;
                Verdict {
                    node: n.id,
                    feasible: reasons.is_empty(),
                    score: mib.saturating_sub(existing * 1000),
                    reason: reasons.join("; "),
                }
            })
            .collect())
    }
}

export!(Compat);
