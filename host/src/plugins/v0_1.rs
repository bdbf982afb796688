//! The released, frozen contract `orca:plugin@0.1.0` (`wit/released/0.1.0/types.wit`): its
//! `bindgen!` (one module per world, like `bindings`), its host interfaces delegating to the
//! live ones, and the adapter of the one world whose types changed in 0.2.0 (`placement`).
//!
//! How a 0.1.0 component is served:
//! - **Imports**: every world's linker defines the host interfaces under both names
//!   (`orca:plugin/logging@0.1.0` here, `@0.2.0` in `bindings`); wasmtime's linker treats
//!   0.1.x and 0.2.x as incompatible, so each version's imports resolve to its own
//!   definitions, which share one implementation.
//! - **Exports of unchanged worlds** (`strategy`, `probe`, `webhook`, `builder`): called
//!   through the live bindings. The component model type-checks structurally (record fields
//!   by name and type); only interface names carry the version, and these worlds' records did
//!   not change, which the load-time type check confirms.
//! - **`placement`**: called through these bindings; orca's types are converted to the 0.1.0
//!   records (nodes by id with name, address and labels) and its verdicts back.

#![allow(clippy::all, missing_docs, dead_code)]

use super::bindings as live;
use super::host::HostState;
use super::types as orca;

pub(crate) mod strategy {
    wasmtime::component::bindgen!({ world: "strategy", path: "../wit/released/0.1.0" });
}

pub(crate) mod placement {
    wasmtime::component::bindgen!({
        world: "placement",
        path: "../wit/released/0.1.0",
        with: {
            "orca:plugin/types": crate::plugins::v0_1::strategy::orca::plugin::types,
            "orca:plugin/logging": crate::plugins::v0_1::strategy::orca::plugin::logging,
        },
    });
}

pub(crate) mod probe {
    wasmtime::component::bindgen!({
        world: "probe",
        path: "../wit/released/0.1.0",
        with: {
            "orca:plugin/types": crate::plugins::v0_1::strategy::orca::plugin::types,
            "orca:plugin/logging": crate::plugins::v0_1::strategy::orca::plugin::logging,
        },
    });
}

pub(crate) mod webhook {
    wasmtime::component::bindgen!({
        world: "webhook",
        path: "../wit/released/0.1.0",
        with: {
            "orca:plugin/types": crate::plugins::v0_1::strategy::orca::plugin::types,
            "orca:plugin/logging": crate::plugins::v0_1::strategy::orca::plugin::logging,
        },
    });
}

pub(crate) mod builder {
    wasmtime::component::bindgen!({
        world: "builder",
        path: "../wit/released/0.1.0",
        with: {
            "orca:plugin/types": crate::plugins::v0_1::strategy::orca::plugin::types,
            "orca:plugin/logging": crate::plugins::v0_1::strategy::orca::plugin::logging,
        },
    });
}

use strategy::orca::plugin::logging;
use strategy::orca::plugin::types as wit;

// ---- host interfaces: the live implementation under the 0.1.0 names ----

super::released::delegate_host_interfaces_to_live!();

// ---- placement adapter: orca's types ↔ the 0.1.0 records ----

fn pairs(p: &[orca::Pair]) -> Vec<wit::Pair> {
    p.iter()
        .map(|p| wit::Pair {
            key: p.key.clone(),
            value: p.value.clone(),
        })
        .collect()
}

fn service(s: &orca::Service) -> wit::Service {
    wit::Service {
        project: s.project.clone(),
        name: s.name.clone(),
        image: s.image.clone(),
        replicas: s.replicas,
        port: s.port,
        domain: s.domain.clone(),
        params: pairs(&s.params),
    }
}

pub(crate) fn placement_request(r: &orca::PlacementRequest) -> wit::PlacementRequest {
    wit::PlacementRequest {
        service: service(&r.service),
        pin: r.pin.clone(),
        memory_bytes: r.memory_bytes,
        cpu_millis: r.cpu_millis,
        existing: r
            .existing
            .iter()
            .map(|c| wit::NodeCount {
                node: c.node.clone(),
                count: c.count,
            })
            .collect(),
    }
}

pub(crate) fn node(n: &orca::Node) -> wit::Node {
    wit::Node {
        id: n.id.clone(),
        name: n.name.clone(),
        address: n.address.clone(),
        cpu_millis: n.cpu_millis,
        cpu_millis_free: n.cpu_millis_free,
        memory_bytes: n.memory_bytes,
        memory_bytes_free: n.memory_bytes_free,
        instances: n.instances,
        draining: n.draining,
        labels: pairs(&n.labels),
    }
}

pub(crate) fn verdict(v: wit::Verdict) -> orca::Verdict {
    orca::Verdict {
        node: v.node,
        feasible: v.feasible,
        score: v.score,
        reason: v.reason,
    }
}
