//! `orca-docker`: the container-runtime port of orca and its Docker Engine implementation.
//!
//! Map of the crate:
//!
//! - [`runtime`] — the [`ContainerRuntime`] trait: the one interface the node agent uses to run
//!   containers. Everything above this crate programs against it, so a fake can stand in for
//!   Docker in unit tests.
//! - [`model`] — the plain data crossing the port: [`ContainerSpec`] in, [`ContainerInfo`],
//!   [`RuntimeEvent`], [`LogLine`], [`NodeInfo`] out, plus the [`LABEL_MANAGED`] label.
//! - [`error`] — [`RuntimeError`], the errors every runtime method returns.
//! - [`docker`] — [`DockerRuntime`], the implementation over the Docker Engine API;
//!   [`swarm`] — its swarm membership, used for overlay networks between nodes only.
//!
//! **Architecture invariant:** only this crate knows bollard. No bollard type appears in the
//! public API; callers see the types above and nothing else.
//!
//! **Security invariant:** containers are created without port bindings (orca's proxy reaches
//! them on their bridge IP) — except instances on remote nodes, which publish one port on the
//! node's advertise address only (an unspecified address is refused), unprivileged, on a user-defined bridge
//! network or the cluster's attachable overlay (never the host network), with restart policy `no` (orca restarts containers itself, so the engine must not
//! race it).

pub mod docker;
pub mod error;
pub mod model;
pub mod runtime;
pub mod swarm;

mod running;
mod time;

pub use docker::DockerRuntime;
pub use error::RuntimeError;
pub use model::{
    ClusterScope, ContainerInfo, ContainerSpec, ContainerState, ContainerStats, LogLine, LogStream,
    MountSourceSpec, MountSpec, NodeInfo, Publish, RuntimeEvent, SwarmInfo, SwarmInit, SwarmJoin,
    SwarmNode, VolumeInfo, LABEL_CLUSTER, LABEL_CLUSTER_ID, LABEL_MANAGED,
};
pub use runtime::ContainerRuntime;

/// Where a volume helper (see [`ContainerRuntime::create_volume_helper`]) mounts its volume.
pub const HELPER_MOUNT: &str = "/orca-volume";
