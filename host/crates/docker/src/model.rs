//! The plain data that crosses the container-runtime port.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The label every container orca creates carries, with the value `true`. Listing and event
/// subscriptions filter on it so orca never touches containers it does not own.
pub const LABEL_MANAGED: &str = "orca.managed";

/// Label: the name of the cluster that owns a container or network.
pub const LABEL_CLUSTER: &str = "orca.cluster";

/// Label: the id of the cluster that owns a container or network (random, made at the
/// cluster's first start). Two clusters may share a name by mistake; never an id.
pub const LABEL_CLUSTER_ID: &str = "orca.cluster.id";

/// The cluster a [`DockerRuntime`](crate::DockerRuntime) is scoped to: it labels what it
/// creates with the id and sees only what carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterScope {
    /// `[cluster] name`.
    pub name: String,
    /// The cluster id from the store.
    pub id: String,
}

impl ClusterScope {
    /// Whether a container or network with these labels belongs to this cluster: it carries
    /// this id, or (made before cluster ids existed) no id and this cluster's name.
    pub fn owns(&self, labels: &BTreeMap<String, String>) -> bool {
        match labels.get(LABEL_CLUSTER_ID) {
            Some(id) => *id == self.id,
            None => labels.get(LABEL_CLUSTER) == Some(&self.name),
        }
    }
}

/// What to run: everything [`ContainerRuntime::create_and_start`](crate::ContainerRuntime::create_and_start)
/// needs to create one container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Container name; unique on the node.
    pub name: String,
    /// Image reference, e.g. `orca-testapp:latest`.
    pub image: String,
    /// Environment variables, in order.
    pub env: Vec<(String, String)>,
    /// Labels; [`LABEL_MANAGED`] is added by the runtime.
    pub labels: BTreeMap<String, String>,
    /// The bridge network the container joins first (its primary network).
    pub network: String,
    /// DNS aliases of the container on its networks.
    pub aliases: Vec<String>,
    /// Further networks to connect after creation.
    pub extra_networks: Vec<String>,
    /// Hard memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit in billionths of a CPU (`1_500_000_000` = 1.5 CPUs).
    pub nano_cpus: Option<i64>,
    /// Time between SIGTERM and SIGKILL when the engine itself stops the container.
    pub stop_grace: Duration,
    /// A port published on one host address: only instances on remote nodes have one (the
    /// master's proxy cannot reach a remote bridge), and never on an unspecified address.
    #[serde(default)]
    pub publish: Option<Publish>,
    /// Named volumes (created with their labels if absent) and host paths to mount.
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
}

/// One mount of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// What is mounted.
    pub source: MountSourceSpec,
    /// Absolute path inside the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Where a mount's files live on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountSourceSpec {
    /// A named volume: created with `labels` (plus the runtime's cluster id) on first use,
    /// never removed with the container. One of another cluster id is refused.
    Volume {
        /// Docker volume name.
        name: String,
        /// Labels for a volume created now.
        labels: BTreeMap<String, String>,
    },
    /// A host path, bind-mounted (it must exist; the engine creates nothing).
    HostPath(String),
}

/// A named volume as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// Docker volume name.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// RFC 3339 creation time, if the engine reports it.
    pub created_at: Option<String>,
    /// Names of the managed containers (any state) that mount it.
    pub users: Vec<String>,
}

/// One published port: `host_ip:host_port` on the node forwards to `container_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// The node's advertise address; `0.0.0.0`/`::` is refused by the runtime.
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub container_port: u16,
}

/// A container as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// Engine id (full length).
    pub id: String,
    /// Name, without Docker's leading `/`.
    pub name: String,
    /// The image reference the container was created from.
    pub image: String,
    /// Shared: a listing hands out the labels of a container it already knows without
    /// copying them (a container's labels never change).
    pub labels: std::sync::Arc<BTreeMap<String, String>>,
    pub state: ContainerState,
    /// IP address per network name; networks without an address are left out.
    pub ips: BTreeMap<String, IpAddr>,
    /// Exit code, once the container has exited.
    pub exit_code: Option<i64>,
    /// Whether the kernel OOM killer killed the container's process.
    pub oom_killed: bool,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: i64,
    /// RFC 3339 start time, if it ever started.
    pub started_at: Option<String>,
    /// RFC 3339 finish time, if it ever finished.
    pub finished_at: Option<String>,
}

/// Lifecycle state of a container, as the engine names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
    Unknown,
}

impl ContainerState {
    /// The lowercase name, as the engine and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Paused => "paused",
            ContainerState::Restarting => "restarting",
            ContainerState::Removing => "removing",
            ContainerState::Exited => "exited",
            ContainerState::Dead => "dead",
            ContainerState::Unknown => "unknown",
        }
    }

    /// Whether the container's process is (or is about to be) running.
    pub fn is_running(self) -> bool {
        matches!(self, ContainerState::Running | ContainerState::Restarting)
    }
}

impl fmt::Display for ContainerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One container lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeEvent {
    /// Container id.
    pub id: String,
    /// What happened: `create`, `start`, `die`, `oom`, `kill`, `stop`, `destroy`,
    /// `health_status: healthy`, ...
    pub action: String,
    /// The event's attributes: the container's labels, plus the engine's own `name`, `image`
    /// and, for `die`, `exitCode`.
    pub labels: BTreeMap<String, String>,
}

/// Which output stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One line of container output, without its trailing newline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub stream: LogStream,
    pub text: String,
    /// When the engine received the line (RFC 3339 with nanoseconds, UTC), if it said.
    pub time: Option<String>,
}

/// Facts about a node's engine and machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The engine host's hostname.
    pub hostname: String,
    /// Engine version, e.g. `20.10.24+dfsg1`.
    pub engine_version: String,
    /// The engine's API version, e.g. `1.41`.
    pub api_version: String,
    /// Logical CPUs.
    pub cpus: u32,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// Operating system, e.g. `Debian GNU/Linux 12 (bookworm)`.
    pub os: String,
}

/// One resource-usage sample of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    /// Memory in use, in bytes (the engine's `usage`, page cache included on cgroup v1).
    pub memory_bytes: u64,
    /// Memory limit in bytes (the node's memory when the container has none).
    pub memory_limit_bytes: u64,
    /// CPU time consumed since the container started, in nanoseconds.
    pub cpu_total_ns: u64,
}

/// An engine's swarm membership. orca uses Docker's swarm for overlay networking only
/// (attachable overlay networks joined by plain containers), never for swarm services.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmInfo {
    /// The engine's local node state: `inactive`, `pending`, `active`, `error` or `locked`.
    pub state: String,
    /// This engine's node id in its swarm (empty when inactive).
    #[serde(default)]
    pub node_id: String,
    /// Whether this engine is a manager (it can create overlay networks).
    #[serde(default)]
    pub manager: bool,
    /// The swarm's id; only a manager knows it.
    #[serde(default)]
    pub swarm_id: String,
    /// The swarm's labels (a manager only): orca marks the swarms it made with its cluster.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The managers this engine knows, `ip:port`.
    #[serde(default)]
    pub managers: Vec<String>,
    /// The engine's own swarm error, if any.
    #[serde(default)]
    pub error: String,
}

impl SwarmInfo {
    /// Whether the engine belongs to a swarm (or is joining one).
    pub fn is_member(&self) -> bool {
        !(self.state.is_empty() || self.state == "inactive")
    }
}

/// How to make a new swarm with this engine as its manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmInit {
    /// The address the other engines reach this one on (the manager port is 2377 on it).
    pub advertise_addr: IpAddr,
    /// Address pools for overlay subnets (CIDRs); empty: the engine's default.
    pub address_pools: Vec<String>,
    /// Labels of the swarm (who made it).
    pub labels: BTreeMap<String, String>,
}

/// How to join this engine to a swarm as a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmJoin {
    /// The managers, `ip:port`.
    pub managers: Vec<String>,
    /// The swarm's worker join token.
    pub token: String,
    /// This engine's own address (gossip, VXLAN and the swarm port listen on it only).
    pub advertise_addr: IpAddr,
}

/// One engine of a swarm, as its manager sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmNode {
    pub id: String,
    /// The node's address as the swarm sees it.
    pub addr: String,
    /// `ready`, `down`, `unknown` or `disconnected`.
    pub state: String,
    pub manager: bool,
}
