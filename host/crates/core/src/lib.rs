//! orca's decision core: [`decide`] turns one [`Snapshot`] of a controller pass into one
//! [`Decision`], with no I/O.
//!
//! This crate depends on nothing that can do I/O or wait: no tokio, redb, bollard, wasmtime or
//! hyper (`tests/deps.rs` checks the dependency graph). Everything a decision needs — the
//! desired groups, every instance's own revision's facts (port, probes, drain timeout), the
//! readiness verdicts and `now` — arrives in the snapshot, so every decision can be replayed
//! in a test (`tests/scenarios.rs`).
//!
//! - [`reconcile`]: desired groups × observed instances → starts and removes.
//! - [`decide`](mod@decide): the whole pass decision — container actions with their drains,
//!   the routing table, the probe targets and the addresses the status view shows.
//! - [`sim`]: a fake node runtime and clock that apply decisions, for tests and benchmarks.

pub mod decide;
pub mod reconcile;
pub mod sim;

pub use decide::{
    decide, instance_weight, Backend, Decision, Drain, FastMap, FastSet, InstanceState,
    ProbeTarget, Remove, RevisionFacts, Route, RunState, ServiceState, Snapshot, Start, Traffic,
    DEFAULT_DRAIN_MS, STUCK_AFTER_MS,
};
pub use reconcile::{DesiredGroup, Phase, RemoveReason};
