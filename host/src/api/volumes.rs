//! `orca volume ls|rm`: the cluster's named volumes on every connected node with the
//! services and containers that use them (`GET /api/v1/volumes`, viewer), and the explicit
//! removal of one (`DELETE /api/v1/volumes/{project}/{name}`, admin), refused while
//! anything uses it.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::Json;
use orca_docker::{ContainerRuntime, RuntimeError, VolumeInfo};
use orca_store::DesiredState;
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::instance;
use crate::volumes::{docker_volume_name, LABEL_VOLUME};

fn runtime_error(e: RuntimeError) -> ApiError {
    match e {
        RuntimeError::NotFound { id } => ApiError::not_found(format!("no volume {id:?}")),
        RuntimeError::Engine { op, reason } if reason.contains("in use") => {
            ApiError::conflict(format!("cannot {op}: {reason}"))
        }
        other => ApiError::internal(other.to_string()),
    }
}

/// Services of `project` whose spec mounts volume `name`, with their desired state.
fn services_using<R: ContainerRuntime>(
    s: &AppState<R>,
    project: &str,
    name: &str,
) -> Result<Vec<(String, DesiredState)>, ApiError> {
    Ok(s.store
        .list_services()?
        .into_iter()
        .filter(|r| r.spec.project() == project)
        .filter(|r| r.spec.mounts().iter().any(|m| m.volume() == Some(name)))
        .map(|r| (r.spec.name.clone(), r.state))
        .collect())
}

/// How long one node's volume listing may take.
const NODE_LIST_TIMEOUT: Duration = Duration::from_secs(5);

/// The volumes of every connected node, (node, volume), and the nodes that did not answer.
async fn volumes_everywhere<R: ContainerRuntime>(
    s: &AppState<R>,
) -> Result<(Vec<(String, VolumeInfo)>, Vec<String>), ApiError> {
    let local = s.node.hostname.clone();
    let mut names = vec![local.clone()];
    names.extend(
        s.nodes
            .list()
            .into_iter()
            .map(|(r, _)| r.name)
            .filter(|n| *n != local),
    );
    let mut out = Vec::new();
    let mut unreachable = Vec::new();
    for name in names {
        let Some(runtime) = s.nodes.runtime_for(&name, &s.runtime, &local) else {
            unreachable.push(name);
            continue;
        };
        match tokio::time::timeout(NODE_LIST_TIMEOUT, runtime.list_volumes()).await {
            Ok(Ok(volumes)) => out.extend(volumes.into_iter().map(|v| (name.clone(), v))),
            // The master's own engine must answer; another node may be away.
            Ok(Err(e)) if name == local => return Err(runtime_error(e)),
            _ => unreachable.push(name),
        }
    }
    Ok((out, unreachable))
}

/// `GET /api/v1/volumes`: every named volume of this cluster on every connected node.
pub async fn list<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
) -> Result<Json<Value>, ApiError> {
    let (volumes, unreachable) = volumes_everywhere(&s).await?;
    let mut out = Vec::new();
    for (node, v) in volumes {
        if v.labels.get(instance::LABEL_CLUSTER) != Some(&s.cluster) {
            continue;
        }
        let (Some(project), Some(name)) = (
            v.labels.get(instance::LABEL_PROJECT),
            v.labels.get(LABEL_VOLUME),
        ) else {
            continue;
        };
        let services = services_using(&s, project, name)?;
        out.push(json!({
            "name": name,
            "project": project,
            "docker_name": v.name,
            "node": node,
            "created_at": v.created_at,
            "services": services.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            "containers": v.users,
        }));
    }
    Ok(Json(
        json!({ "volumes": out, "unreachable_nodes": unreachable }),
    ))
}

/// `DELETE /api/v1/volumes/{project}/{name}`: removes the volume and its data. Refused while
/// a container (running or not) mounts it or a running service declares it.
pub async fn remove<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    orca_config::validate_name("project", &project)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    orca_config::volumes::check_volume_name(&name).map_err(ApiError::bad_request)?;
    let docker_name = docker_volume_name(&s.cluster, &project, &name);
    let (volumes, unreachable) = volumes_everywhere(&s).await?;
    let found: Vec<&(String, VolumeInfo)> = volumes
        .iter()
        .filter(|(_, v)| v.name == docker_name)
        .collect();
    if found.is_empty() {
        let away = if unreachable.is_empty() {
            String::new()
        } else {
            format!(" (nodes not answering: {})", unreachable.join(", "))
        };
        return Err(ApiError::not_found(format!(
            "no volume \"{project}/{name}\" (Docker volume {docker_name:?}) in cluster {:?}{away}",
            s.cluster
        )));
    }
    let users: Vec<String> = found
        .iter()
        .flat_map(|(_, v)| v.users.iter().cloned())
        .collect();
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "volume \"{project}/{name}\" is in use by container(s) {}: stop its service first (orca stop SERVICE)",
            users.join(", ")
        )));
    }
    let running: Vec<String> = services_using(&s, &project, &name)?
        .into_iter()
        .filter(|(_, state)| *state == DesiredState::Running)
        .map(|(n, _)| n)
        .collect();
    if !running.is_empty() {
        return Err(ApiError::conflict(format!(
            "volume \"{project}/{name}\" is declared by running service(s) {}: stop them first (orca stop SERVICE)",
            running.join(", ")
        )));
    }
    let mut nodes = Vec::new();
    for (node, _) in found {
        let runtime = s
            .nodes
            .runtime_for(node, &s.runtime, &s.node.hostname)
            .ok_or_else(|| ApiError::conflict(format!("node {node} is not connected")))?;
        runtime
            .remove_volume(&docker_name)
            .await
            .map_err(runtime_error)?;
        tracing::info!(project = %project, volume = %name, docker = %docker_name, node = %node, "volume removed");
        nodes.push(node.clone());
    }
    Ok(Json(json!({
        "removed": { "project": project, "name": name, "docker_name": docker_name, "nodes": nodes },
    })))
}
