//! The agent protocol's wire types. Two exchanges:
//!
//! - **Join**, HTTPS/1.1 to the master's API port, no client certificate: `POST
//!   /agent/v1/join` with a [`JoinRequest`]; the answer is a [`JoinResponse`] (the node
//!   certificate) or `{"error": ...}`.
//! - **Session**, one mutually authenticated TLS connection (ALPN [`SESSION_ALPN`]) dialled by
//!   the agent, over which the *master* is the HTTP/2 client and the agent the server: each
//!   [`ContainerRuntime`](orca_docker::ContainerRuntime) call is one request (multiplexed),
//!   streams (logs, events, image loads) are streamed bodies of JSON lines or bytes. An error
//!   answer's body is a [`orca_docker::RuntimeError`] as JSON.

use std::collections::BTreeMap;

use orca_docker::{NodeInfo, RuntimeEvent, SwarmInfo};
use serde::{Deserialize, Serialize};

/// ALPN protocol id of an agent session.
pub const SESSION_ALPN: &[u8] = b"orca-agent/1";

/// The join path on the master (TLS only).
pub const JOIN_PATH: &str = "/agent/v1/join";

/// What an agent sends to join.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The whole join token.
    pub token: String,
    /// The node name it asks for.
    pub name: String,
    /// A PEM certificate request for the agent's own key.
    pub csr_pem: String,
    /// Where the node publishes instance ports.
    pub advertise_addr: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The node engine's swarm membership (`None`: an engine without swarm): an engine in
    /// a swarm other than the cluster's is refused.
    #[serde(default)]
    pub swarm: Option<SwarmInfo>,
}

/// What the master answers to a join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    /// The node's name in the cluster.
    pub name: String,
    /// The node certificate (PEM), signed by the cluster CA.
    pub cert_pem: String,
    /// The cluster CA certificate (PEM).
    pub ca_pem: String,
    /// The cluster's name and id: the agent scopes its engine to them (labels, listing).
    pub cluster: String,
    pub cluster_id: String,
}

/// The agent's answer to `GET /v1/hello`, the first request of every session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub name: String,
    /// orca version of the agent.
    pub version: String,
    pub advertise_addr: String,
    pub labels: BTreeMap<String, String>,
    pub node: NodeInfo,
    /// The engine's swarm membership at session start (`None`: no swarm support).
    #[serde(default)]
    pub swarm: Option<SwarmInfo>,
}

/// One line of the `GET /v1/events` stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentEvent {
    /// Sent every heartbeat interval, whatever else happens.
    Heartbeat { unix_ms: u64 },
    /// A container lifecycle event of the node's engine.
    Runtime { event: RuntimeEvent },
    /// The engine's event stream broke (daemon restart); the master re-lists.
    EngineError { reason: String },
}

/// `POST /v1/networks/ensure` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnsureNetwork {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// Agent paths (on the session).
pub mod path {
    pub const HELLO: &str = "/v1/hello";
    pub const CONTAINERS: &str = "/v1/containers";
    pub const NETWORKS_ENSURE: &str = "/v1/networks/ensure";
    pub const NETWORKS_REMOVE: &str = "/v1/networks/remove";
    pub const EVENTS: &str = "/v1/events";
    pub const NODE: &str = "/v1/node";
    pub const IMAGE_EXISTS: &str = "/v1/images/exists";
    pub const VOLUMES: &str = "/v1/volumes";
    pub const VOLUMES_REMOVE: &str = "/v1/volumes/remove";
    pub const IMAGE_LOAD: &str = "/v1/images/load";
    pub const IMAGE_PULL: &str = "/v1/images/pull";
    pub const SWARM: &str = "/v1/swarm";
    pub const SWARM_JOIN: &str = "/v1/swarm/join";
    pub const SWARM_LEAVE: &str = "/v1/swarm/leave";
}
