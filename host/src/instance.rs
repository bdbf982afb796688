//! Instances as containers: the labels orca puts on them, their names, and the spec fingerprint.
//!
//! Labels are the only link between a container and the service it belongs to, which is what
//! lets a restarted server adopt the containers it finds instead of creating duplicates.

use std::collections::BTreeMap;

use orca_config::ServiceSpec;
use orca_docker::{ContainerInfo, ContainerState};
use sha2::{Digest, Sha256};

use crate::reconciler::{ObservedInstance, Phase};

/// Label: the cluster that owns the container (several orca clusters may share an engine).
pub const LABEL_CLUSTER: &str = orca_docker::LABEL_CLUSTER;
/// Label: project of the service.
pub const LABEL_PROJECT: &str = "orca.project";
/// Label: service name.
pub const LABEL_SERVICE: &str = "orca.service";
/// Label: replica slot.
pub const LABEL_SLOT: &str = "orca.slot";
/// Label: spec fingerprint the container was created from.
pub const LABEL_FINGERPRINT: &str = "orca.fingerprint";
/// Label: store revision of the service when the container was created (informational).
pub const LABEL_REVISION: &str = "orca.revision";

/// Name of the Docker network of a project.
pub fn project_network(project: &str) -> String {
    format!("orca-{project}")
}

/// Name of the shared network of `internal = true` services.
pub const INTERNAL_NETWORK: &str = "orca-internal";

/// Container name of an instance. Unique per (service, slot, fingerprint), so a second
/// create of the same instance fails with a conflict instead of making a duplicate.
pub fn container_name(cluster: &str, project: &str, service: &str, slot: u32, fp: &str) -> String {
    format!("orca-{cluster}-{project}-{service}-{slot}-{}", short(fp))
}

/// First 12 characters of a fingerprint or id, for names and display.
pub fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}

/// Fingerprint of a service: everything that needs a new container when it changes.
/// Replicas are left out (scaling must not replace containers); the resolved environment
/// enters only as a keyed MAC (`env_mac`) so labels never carry secret material.
pub fn fingerprint(spec: &ServiceSpec, env_mac: &[u8; 32], commit: Option<&str>) -> String {
    let mut spec = spec.clone();
    spec.replicas = 0;
    // Certificates are the proxy's business, not the container's: a new certificate
    // never replaces instances.
    spec.tls_cert = None;
    spec.tls_key = None;
    let canonical = serde_json::to_vec(&spec).expect("a service spec always serializes");
    let mut h = Sha256::new();
    h.update(b"orca.fingerprint.v1\0");
    h.update(&canonical);
    h.update(env_mac);
    // Absent for plain-image deploys, so their fingerprints stay what they were.
    if let Some(commit) = commit {
        h.update(b"\0commit\0");
        h.update(commit.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// Label: the node an instance was placed on (informational; the listing node is the truth).
pub const LABEL_NODE: &str = "orca.node";

/// Label: the host port a remote instance publishes on its node's advertise address.
pub const LABEL_HOST_PORT: &str = "orca.host_port";

/// Labels of a new instance.
pub fn labels(
    cluster: &str,
    spec: &ServiceSpec,
    slot: u32,
    fp: &str,
    revision: u64,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_CLUSTER.to_string(), cluster.to_string()),
        (LABEL_PROJECT.to_string(), spec.project().to_string()),
        (LABEL_SERVICE.to_string(), spec.name.clone()),
        (LABEL_SLOT.to_string(), slot.to_string()),
        (LABEL_FINGERPRINT.to_string(), fp.to_string()),
        (LABEL_REVISION.to_string(), revision.to_string()),
    ])
}

/// A container of this cluster, decoded from its labels.
#[derive(Debug, Clone)]
pub struct Instance {
    /// What the runtime reports.
    pub info: ContainerInfo,
    /// `project/name`.
    pub service: String,
    /// Project.
    pub project: String,
    /// Replica slot.
    pub slot: u32,
    /// Spec fingerprint it runs.
    pub fingerprint: String,
    /// Store revision it was created from.
    pub revision: u64,
    /// The node it runs on (the master's own engine is the master's hostname).
    pub node: String,
    /// Where the master reaches it when it runs on a remote node: its port published on
    /// the node's advertise address.
    pub published: Option<std::net::SocketAddr>,
}

impl Instance {
    /// Decodes a container; `None` if it belongs to another cluster or lacks orca's labels.
    pub fn from_container(cluster: &str, info: ContainerInfo) -> Option<Instance> {
        let l = &info.labels;
        if l.get(LABEL_CLUSTER).map(String::as_str) != Some(cluster) {
            return None;
        }
        let project = l.get(LABEL_PROJECT)?.clone();
        let service = format!("{project}/{}", l.get(LABEL_SERVICE)?);
        let slot = l.get(LABEL_SLOT)?.parse().ok()?;
        let fingerprint = l.get(LABEL_FINGERPRINT)?.clone();
        let revision = l
            .get(LABEL_REVISION)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        Some(Instance {
            info,
            service,
            project,
            slot,
            fingerprint,
            revision,
            node: String::new(),
            published: None,
        })
    }

    /// True when the container process is up.
    pub fn is_running(&self) -> bool {
        self.info.state == ContainerState::Running
    }

    /// True when the container will never serve again.
    pub fn is_failed(&self) -> bool {
        matches!(
            self.info.state,
            ContainerState::Exited | ContainerState::Dead
        )
    }

    /// Reduces to the reconciler's view, given the readiness verdict.
    pub fn observed(&self, ready: bool) -> ObservedInstance {
        let phase = if self.is_failed() {
            Phase::Failed
        } else if ready && self.is_running() {
            Phase::Ready
        } else {
            Phase::Starting
        };
        ObservedInstance {
            id: self.info.id.clone(),
            service: self.service.clone(),
            fingerprint: self.fingerprint.clone(),
            slot: self.slot,
            phase,
        }
    }
}
