//! The engine's swarm, for overlay networking only: membership, init, join, leave, the
//! manager's node list. orca never creates swarm services (no IPVS on the kernels it targets,
//! and orca places and restarts containers itself).

use std::time::Duration;

use bollard::models::{SwarmInitRequest, SwarmJoinRequest, SwarmSpec};
use bollard::query_parameters::{DeleteNodeOptionsBuilder, LeaveSwarmOptionsBuilder};
use tracing::info;

use crate::docker::{map_err, reason, status};
use crate::model::{SwarmInfo, SwarmInit, SwarmJoin, SwarmNode};
use crate::{DockerRuntime, RuntimeError};

/// The swarm's manager (control) port; the data port (VXLAN 4789/udp) and gossip
/// (7946) keep the engine's defaults.
pub const SWARM_PORT: u16 = 2377;

/// How long a join may take (the engine answers once it has joined or given up).
const JOIN_TIMEOUT: Duration = Duration::from_secs(40);

impl DockerRuntime {
    pub(crate) async fn swarm_info(&self) -> Result<SwarmInfo, RuntimeError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| map_err("read engine info", e))?;
        let Some(s) = info.swarm else {
            return Ok(SwarmInfo {
                state: "inactive".into(),
                ..SwarmInfo::default()
            });
        };
        let state = s
            .local_node_state
            .map(|st| st.to_string())
            .filter(|st| !st.is_empty())
            .unwrap_or_else(|| "inactive".into());
        let cluster = s.cluster.unwrap_or_default();
        Ok(SwarmInfo {
            state,
            node_id: s.node_id.unwrap_or_default(),
            manager: s.control_available.unwrap_or(false),
            swarm_id: cluster.id.unwrap_or_default(),
            labels: cluster
                .spec
                .and_then(|sp| sp.labels)
                .unwrap_or_default()
                .into_iter()
                .collect(),
            managers: s
                .remote_managers
                .unwrap_or_default()
                .into_iter()
                .filter_map(|m| m.addr)
                .collect(),
            error: s.error.unwrap_or_default(),
        })
    }

    pub(crate) async fn swarm_init_impl(
        &self,
        init: &SwarmInit,
    ) -> Result<SwarmInfo, RuntimeError> {
        let addr = init.advertise_addr.to_string();
        let request = SwarmInitRequest {
            listen_addr: Some(format!("{}:{SWARM_PORT}", bracket(&addr))),
            advertise_addr: Some(addr.clone()),
            data_path_addr: Some(addr.clone()),
            default_addr_pool: (!init.address_pools.is_empty()).then(|| init.address_pools.clone()),
            subnet_size: (!init.address_pools.is_empty()).then_some(24),
            spec: Some(SwarmSpec {
                labels: Some(init.labels.clone().into_iter().collect()),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.docker
            .init_swarm(request)
            .await
            .map_err(|e| map_err("init a swarm", e))?;
        info!(advertise = %addr, "swarm initialised (overlay networking)");
        self.swarm_info().await
    }

    pub(crate) async fn swarm_join_impl(&self, join: &SwarmJoin) -> Result<(), RuntimeError> {
        let addr = join.advertise_addr.to_string();
        let request = SwarmJoinRequest {
            listen_addr: Some(format!("{}:{SWARM_PORT}", bracket(&addr))),
            advertise_addr: Some(addr.clone()),
            data_path_addr: Some(addr),
            remote_addrs: Some(join.managers.clone()),
            join_token: Some(join.token.clone()),
        };
        let docker = self.docker.clone().with_timeout(JOIN_TIMEOUT);
        docker
            .join_swarm(request)
            .await
            .map_err(|e| map_err("join the cluster's swarm", e))?;
        info!(managers = ?join.managers, "joined the cluster's swarm");
        Ok(())
    }

    pub(crate) async fn swarm_leave_impl(&self) -> Result<(), RuntimeError> {
        match self
            .docker
            .leave_swarm(Some(LeaveSwarmOptionsBuilder::new().force(true).build()))
            .await
        {
            Ok(()) => {
                info!("left the swarm");
                Ok(())
            }
            // "This node is not part of a swarm".
            Err(e) if status(&e) == Some(503) && reason(&e).contains("not part of a swarm") => {
                Ok(())
            }
            Err(e) => Err(map_err("leave the swarm", e)),
        }
    }

    pub(crate) async fn swarm_worker_token_impl(&self) -> Result<String, RuntimeError> {
        let swarm = self
            .docker
            .inspect_swarm()
            .await
            .map_err(|e| map_err("inspect the swarm", e))?;
        swarm
            .join_tokens
            .and_then(|t| t.worker)
            .ok_or_else(|| RuntimeError::Engine {
                op: "read the swarm's join token".into(),
                reason: "the engine returned no worker token".into(),
            })
    }

    pub(crate) async fn swarm_nodes_impl(&self) -> Result<Vec<SwarmNode>, RuntimeError> {
        let nodes = self
            .docker
            .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
            .await
            .map_err(|e| map_err("list the swarm's nodes", e))?;
        Ok(nodes
            .into_iter()
            .map(|n| {
                let status = n.status.unwrap_or_default();
                SwarmNode {
                    id: n.id.unwrap_or_default(),
                    addr: status.addr.unwrap_or_default(),
                    state: status.state.map(|s| s.to_string()).unwrap_or_default(),
                    manager: n.manager_status.is_some(),
                }
            })
            .collect())
    }

    pub(crate) async fn swarm_remove_node_impl(&self, id: &str) -> Result<(), RuntimeError> {
        match self
            .docker
            .delete_node(
                id,
                Some(DeleteNodeOptionsBuilder::new().force(true).build()),
            )
            .await
        {
            Ok(()) => {
                info!(node = id, "removed an engine from the swarm");
                Ok(())
            }
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(map_err("remove a swarm node", e)),
        }
    }
}

/// An IPv6 address in brackets for `ip:port`.
fn bracket(addr: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_string()
    }
}
