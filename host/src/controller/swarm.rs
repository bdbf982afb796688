//! The cluster's swarm, used for overlay networking only: the master's engine is its one
//! manager (made when the first node with a swarm-capable engine connects), every connected
//! node's engine is joined to it as a worker, and engines of removed nodes are dropped from
//! it. Projects then get an attachable overlay network each, on which their instances reach
//! each other by service name and alias on any node; single-node clusters never make one.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use tracing::{info, warn};

use orca_docker::{ContainerRuntime, SwarmInit, SwarmJoin};

use super::{now_ms, Controller, PassNode};

/// Label on the swarm orca made: the cluster's id (a swarm without it is not orca's).
pub const LABEL_SWARM_CLUSTER_ID: &str = "orca.cluster.id";
/// Label on the swarm orca made: the cluster's name (informational).
pub const LABEL_SWARM_CLUSTER: &str = "orca.cluster";

/// How long the manager's facts (managers, worker token) are reused before re-reading.
const MANAGER_TTL_MS: u64 = 60_000;
/// How long after a failed join the same session is not asked again.
const JOIN_RETRY_MS: u64 = 30_000;

/// The swarm as the controller last saw it.
#[derive(Default)]
pub(super) struct SwarmMemory {
    /// The master's engine as the manager of the cluster's swarm, once known.
    manager: Option<Manager>,
    /// When the manager was last read.
    checked_ms: u64,
    /// Why the overlay is unavailable (the master's engine is in another swarm), once said.
    refused: Option<String>,
    /// Node name → the session whose engine is in the swarm.
    joined: BTreeMap<String, u64>,
    /// Node name → (session, when) of a join in flight or failed.
    tried: BTreeMap<String, (u64, u64)>,
}

#[derive(Clone)]
struct Manager {
    managers: Vec<String>,
    token: String,
}

impl<R: ContainerRuntime> Controller<R> {
    /// Makes sure the cluster's swarm exists once a node with a swarm-capable engine is
    /// connected, and joins every such node's engine to it (in the background: a join takes
    /// up to seconds; the pass that follows it uses the node's overlay). Returns the names
    /// of the nodes whose engines are in the swarm now (the master's included).
    pub(super) async fn ensure_swarm(&self, nodes: &[PassNode<R>]) -> HashSet<String> {
        let remotes: Vec<&crate::nodes::LiveNode> = nodes
            .iter()
            .filter_map(|n| n.remote.as_ref())
            .filter(|n| n.swarm.is_some())
            .collect();
        let Some(manager) = self.swarm_manager(remotes.first().copied()).await else {
            return HashSet::new();
        };
        let mut on = HashSet::from([self.node.hostname.clone()]);
        let now = now_ms();
        let mut mem = self.memory.lock().expect("controller memory lock");
        let swarm = &mut mem.swarm;
        for node in remotes {
            let name = &node.record.name;
            if swarm.joined.get(name) == Some(&node.session) {
                on.insert(name.clone());
                continue;
            }
            let hello = node.swarm.as_ref().expect("filtered on swarm support");
            if hello.is_member() && hello.managers.iter().any(|m| manager.managers.contains(m)) {
                swarm.joined.insert(name.clone(), node.session);
                on.insert(name.clone());
                continue;
            }
            if let Some((session, at)) = swarm.tried.get(name) {
                if *session == node.session && now.saturating_sub(*at) < JOIN_RETRY_MS {
                    continue;
                }
            }
            swarm.tried.insert(name.clone(), (node.session, now));
            let join = SwarmJoin {
                managers: manager.managers.clone(),
                token: manager.token.clone(),
                advertise_addr: node.advertise,
            };
            let runtime = node.runtime.clone();
            let (name, session) = (name.clone(), node.session);
            let memory = self.memory.clone();
            let wake = self.wake.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                match runtime.swarm_join(&join).await {
                    Ok(()) => {
                        info!(node = %name, ms = started.elapsed().as_millis() as u64, "node's engine joined the cluster's swarm");
                        let mut mem = memory.lock().expect("controller memory lock");
                        mem.swarm.joined.insert(name.clone(), session);
                        mem.swarm.tried.remove(&name);
                        wake.notify_one();
                    }
                    Err(e) => {
                        warn!(node = %name, error = %e, "node's engine could not join the cluster's swarm: its instances are on no overlay network (retried in 30 s)")
                    }
                }
            });
        }
        on
    }

    /// The cluster's swarm with the master's engine as its manager: read (cached), or made
    /// when `first` (a connected node with a swarm-capable engine) exists and the master's
    /// engine is in no swarm. `None`: no overlay (single node, no swarm support, or the
    /// master's engine belongs to another swarm — said once in the log).
    async fn swarm_manager(&self, first: Option<&crate::nodes::LiveNode>) -> Option<Manager> {
        let now = now_ms();
        {
            let mut mem = self.memory.lock().expect("controller memory lock");
            let fresh = now.saturating_sub(mem.swarm.checked_ms) < MANAGER_TTL_MS;
            // Re-read at most once a minute, except to make the swarm for a node just come.
            if fresh
                && (mem.swarm.manager.is_some() || first.is_none() || mem.swarm.refused.is_some())
            {
                return mem.swarm.manager.clone();
            }
            mem.swarm.checked_ms = now;
        }
        let info = match self.runtime.swarm().await {
            Ok(Some(info)) => info,
            Ok(None) => return None,
            Err(e) => {
                warn!(error = %e, "reading the master engine's swarm membership");
                // Keep what was known: a blip of the engine does not drop the overlay.
                return self
                    .memory
                    .lock()
                    .expect("controller memory lock")
                    .swarm
                    .manager
                    .clone();
            }
        };
        let ours = info.labels.get(LABEL_SWARM_CLUSTER_ID) == Some(&self.cluster_id);
        let info = if info.is_member() {
            if !(ours && info.manager) {
                let why = format!(
                    "the master's Docker Engine belongs to a swarm orca did not make for this \
                     cluster (node state {:?}, swarm {:?}): services on different nodes cannot \
                     reach each other by name until it leaves that swarm (`docker swarm leave`)",
                    info.state, info.swarm_id
                );
                let mut mem = self.memory.lock().expect("controller memory lock");
                if mem.swarm.refused.as_deref() != Some(why.as_str()) {
                    warn!("{why}");
                    mem.swarm.refused = Some(why);
                }
                return None;
            }
            info
        } else {
            let first = first?;
            let init = SwarmInit {
                advertise_addr: first.master_ip,
                address_pools: self.overlay_pools.clone(),
                labels: BTreeMap::from([
                    (LABEL_SWARM_CLUSTER_ID.to_string(), self.cluster_id.clone()),
                    (LABEL_SWARM_CLUSTER.to_string(), self.cluster.clone()),
                ]),
            };
            match self.runtime.swarm_init(&init).await {
                Ok(info) => {
                    info!(advertise = %first.master_ip, pools = ?self.overlay_pools, "made the cluster's swarm (overlay networking between nodes)");
                    info
                }
                Err(e) => {
                    warn!(error = %e, "could not make the cluster's swarm: no overlay networking");
                    return None;
                }
            }
        };
        let token = match self.runtime.swarm_worker_token().await {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "reading the swarm's worker token");
                return None;
            }
        };
        let manager = Manager {
            managers: info.managers.clone(),
            token,
        };
        if let Some(nodes) = &self.nodes {
            nodes.set_swarm_managers(manager.managers.clone());
        }
        {
            let mut mem = self.memory.lock().expect("controller memory lock");
            mem.swarm.manager = Some(manager.clone());
            mem.swarm.checked_ms = now;
            mem.swarm.refused = None;
        }
        self.forget_removed_engines().await;
        Some(manager)
    }

    /// Drops from the swarm the worker engines that left it (down) and belong to no known
    /// node any more (`orca node remove`), so the manager's list stays the cluster's.
    async fn forget_removed_engines(&self) {
        let Some(nodes) = &self.nodes else { return };
        let known: HashSet<String> = nodes
            .list()
            .into_iter()
            .map(|(r, _)| r.advertise_addr)
            .collect();
        let Ok(engines) = self.runtime.swarm_nodes().await else {
            return;
        };
        for e in engines {
            if e.manager || e.state != "down" || known.contains(&e.addr) {
                continue;
            }
            if let Err(err) = tokio::time::timeout(
                Duration::from_secs(10),
                self.runtime.swarm_remove_node(&e.id),
            )
            .await
            .unwrap_or_else(|_| {
                Err(orca_docker::RuntimeError::Unavailable {
                    reason: "no answer in 10 s".into(),
                })
            }) {
                warn!(engine = %e.id, addr = %e.addr, error = %err, "removing a departed engine from the swarm");
            }
        }
    }
}
