//! A well-behaved placement: every node not draining with enough free memory is feasible,
//! scored by its free memory in MiB; infeasible nodes say why.

wit_bindgen::generate!({ world: "placement", path: "../../../wit" });

struct Echo;

impl Guest for Echo {
    fn place(request: PlacementRequest, nodes: Vec<Node>) -> Result<Vec<Verdict>, String> {
        Ok(nodes
            .into_iter()
            .zip(0u32..)
            .map(|(n, index)| Verdict {
                node: index,
                score: (n.memory_bytes_free >> 20).min(u64::from(u32::MAX)) as u32,
                infeasible: if n.draining {
                    Some("draining".into())
                } else if n.memory_bytes_free < request.memory_bytes {
                    Some("not enough free memory".into())
                } else {
                    None
                },
            })
            .collect())
    }
}

export!(Echo);
