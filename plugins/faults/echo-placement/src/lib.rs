//! A well-behaved placement: every node not draining with enough free memory is feasible,
//! scored by its free memory in MiB.

wit_bindgen::generate!({ world: "placement", path: "../../../wit" });

struct Echo;

impl Guest for Echo {
    fn place(request: PlacementRequest, nodes: Vec<Node>) -> Result<Vec<Verdict>, String> {
        Ok(nodes
            .into_iter()
            .map(|n| {
                let fits = n.memory_bytes_free >= request.memory_bytes;
                let feasible = fits && !n.draining;
                Verdict {
                    node: n.id,
                    feasible,
                    score: (n.memory_bytes_free >> 20).min(u64::from(u32::MAX)) as u32,
                    reason: if feasible {
                        String::new()
                    } else if n.draining {
                        "draining".into()
                    } else {
                        "not enough free memory".into()
                    },
                }
            })
            .collect())
    }
}

export!(Echo);
