//! The released, frozen contract `orca:plugin@0.2.0` (`wit/released/0.2.0/types.wit`): its
//! `bindgen!` (one module per world, like `bindings`) and its host interfaces delegating to
//! the live ones.
//!
//! How a 0.2.0 component is served:
//! - **Imports**: every world's linker defines the host interfaces under the `@0.2.0` names
//!   too (each version's imports resolve to their own definitions, one implementation).
//! - **Exports of `placement`, `probe`, `webhook`, `builder`**: called through the live
//!   bindings; their records did not change in 0.3.0 (the load-time type check confirms it).
//! - **`strategy`**: 0.3.0 added the `check-params` export, so a 0.2.0 (or 0.1.0) strategy
//!   is called through `runtime::PlanOnly` (its `plan` with the live records, unchanged
//!   since 0.1.0) and its parameters are not checked at deploy.

#![allow(clippy::all, missing_docs, dead_code)]

use super::bindings as live;
use super::host::HostState;

pub(crate) mod strategy {
    wasmtime::component::bindgen!({ world: "strategy", path: "../wit/released/0.2.0" });
}

pub(crate) mod placement {
    wasmtime::component::bindgen!({
        world: "placement",
        path: "../wit/released/0.2.0",
        with: {
            "orca:plugin/types": crate::plugins::v0_2::strategy::orca::plugin::types,
            "orca:plugin/logging": crate::plugins::v0_2::strategy::orca::plugin::logging,
        },
    });
}

pub(crate) mod probe {
    wasmtime::component::bindgen!({
        world: "probe",
        path: "../wit/released/0.2.0",
        with: {
            "orca:plugin/types": crate::plugins::v0_2::strategy::orca::plugin::types,
            "orca:plugin/logging": crate::plugins::v0_2::strategy::orca::plugin::logging,
        },
    });
}

pub(crate) mod webhook {
    wasmtime::component::bindgen!({
        world: "webhook",
        path: "../wit/released/0.2.0",
        with: {
            "orca:plugin/types": crate::plugins::v0_2::strategy::orca::plugin::types,
            "orca:plugin/logging": crate::plugins::v0_2::strategy::orca::plugin::logging,
        },
    });
}

pub(crate) mod builder {
    wasmtime::component::bindgen!({
        world: "builder",
        path: "../wit/released/0.2.0",
        with: {
            "orca:plugin/types": crate::plugins::v0_2::strategy::orca::plugin::types,
            "orca:plugin/logging": crate::plugins::v0_2::strategy::orca::plugin::logging,
        },
    });
}

use strategy::orca::plugin::logging;
use strategy::orca::plugin::types as wit;

// ---- host interfaces: the live implementation under the 0.2.0 names ----

super::released::delegate_host_interfaces_to_live!();
