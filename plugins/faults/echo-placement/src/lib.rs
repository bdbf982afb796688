//! A well-behaved placement: every node not draining with enough free memory is feasible;
//! every node scores its free memory in MiB; infeasible nodes say why.

wit_bindgen::generate!({ world: "placement", path: "../../../wit" });

use orca::plugin::types::Infeasible;

struct Echo;

impl Guest for Echo {
    fn place(request: PlacementRequest, nodes: Nodes) -> Result<Verdicts, String> {
        let scores = nodes
            .memory_bytes_free
            .iter()
            .map(|free| (free >> 20).min(u64::from(u32::MAX)) as u32)
            .collect();
        let mut infeasible: Vec<Infeasible> = nodes
            .draining
            .iter()
            .map(|&node| Infeasible {
                node,
                reason: "draining".into(),
            })
            .collect();
        for (free, node) in nodes.memory_bytes_free.iter().zip(0u32..) {
            if *free < request.memory_bytes && !nodes.draining.contains(&node) {
                infeasible.push(Infeasible {
                    node,
                    reason: "not enough free memory".into(),
                });
            }
        }
        Ok(Verdicts { scores, infeasible })
    }
}

export!(Echo);
