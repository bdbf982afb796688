//! Node endpoints: the node list (`cluster/info`), join tokens, drain/undrain, node removal.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use orca_docker::ContainerRuntime;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_json, ApiError, AppState, RawBody};

/// Body of `POST /api/v1/cluster/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJoinToken {
    /// Validity in seconds (default 3600, at most 30 days).
    #[serde(default = "default_ttl")]
    ttl_secs: u64,
    /// May join many nodes until it expires.
    #[serde(default)]
    reusable: bool,
}

fn default_ttl() -> u64 {
    3600
}

const MAX_TTL_SECS: u64 = 30 * 24 * 3600;

/// `POST /api/v1/cluster/tokens` (admin): a join token, shown once, and the command to run
/// on the node.
pub async fn create_join_token<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let req: CreateJoinToken = if body.is_empty() {
        CreateJoinToken {
            ttl_secs: default_ttl(),
            reusable: false,
        }
    } else {
        parse_json(&body)?
    };
    if req.ttl_secs == 0 || req.ttl_secs > MAX_TTL_SECS {
        return Err(ApiError::bad_request(format!(
            "ttl_secs {} is out of range: allowed 1 to {MAX_TTL_SECS}",
            req.ttl_secs
        )));
    }
    let (token, expires_ms) = s
        .nodes
        .create_token(Duration::from_secs(req.ttl_secs), req.reusable)?;
    let host = if s.api_addr.ip().is_unspecified() {
        "MASTER_ADDRESS".to_string()
    } else {
        s.api_addr.ip().to_string()
    };
    let join = format!("https://{host}:{}", s.api_addr.port());
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token": token.to_string(),
            "id": token.id,
            "expires_at_ms": expires_ms,
            "reusable": req.reusable,
            "ca_fingerprint": token.ca_fingerprint,
            "join_url": join,
            "command": format!("orca agent --join {join} --token {token}"),
        })),
    )
        .into_response())
}

/// `DELETE /api/v1/cluster/nodes/{id}` (admin): removes a node; its certificate is refused
/// from now on and its session ends.
pub async fn remove_node<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if name == s.node.hostname {
        return Err(ApiError::bad_request(format!(
            "{name} is the master's own node; it cannot be removed"
        )));
    }
    if !s.nodes.remove(&name)? {
        return Err(ApiError::not_found(format!("no node named \"{name}\"")));
    }
    s.controller.wake();
    Ok(Json(json!({ "name": name, "removed": true })))
}

/// Body of `POST /api/v1/cluster/nodes/{id}/drain` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainNode {
    /// Stop what is still on the node this long after the drain starts (default: no
    /// deadline, instances move as fast as their replacements become ready).
    #[serde(default)]
    deadline_secs: Option<u64>,
}

const MAX_DRAIN_DEADLINE_SECS: u64 = 7 * 24 * 3600;

/// `POST /api/v1/cluster/nodes/{id}/drain` (admin): no new instances on the node; its
/// instances migrate to other nodes through the rollout path.
pub async fn drain_node<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    Path(name): Path<String>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    let req: DrainNode = if body.is_empty() {
        DrainNode::default()
    } else {
        parse_json(&body)?
    };
    if let Some(d) = req.deadline_secs {
        if d == 0 || d > MAX_DRAIN_DEADLINE_SECS {
            return Err(ApiError::bad_request(format!(
                "deadline_secs {d} is out of range: allowed 1 to {MAX_DRAIN_DEADLINE_SECS}"
            )));
        }
    }
    if name == s.node.hostname {
        return Err(ApiError::bad_request(format!(
            "{name} is the master's own node; draining the master is not supported yet \
             (drain agent nodes, or pin services away from it with [service.placement])"
        )));
    }
    if !s
        .nodes
        .drain(&name, req.deadline_secs.map(Duration::from_secs))?
    {
        return Err(ApiError::not_found(format!("no node named \"{name}\"")));
    }
    s.controller.wake();
    Ok(Json(json!({
        "name": name,
        "draining": true,
        "deadline_secs": req.deadline_secs,
    })))
}

/// `POST /api/v1/cluster/nodes/{id}/undrain` (admin): the node takes new instances again.
pub async fn undrain_node<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if name == s.node.hostname {
        return Err(ApiError::bad_request(format!(
            "{name} is the master's own node; it is never drained"
        )));
    }
    if !s.nodes.undrain(&name)? {
        return Err(ApiError::not_found(format!("no node named \"{name}\"")));
    }
    s.controller.wake();
    Ok(Json(json!({ "name": name, "draining": false })))
}

/// `GET /api/v1/cluster/info`: the master and every joined node, with state, addresses,
/// labels, capacity, allocation and instance count.
pub async fn cluster_info<R: ContainerRuntime>(State(s): State<AppState<R>>) -> Json<Value> {
    let view = s.controller.view();
    let count = |node: &str| view.instances.iter().filter(|i| i.node == node).count();
    let mut nodes = vec![json!({
        "id": s.node.hostname,
        "name": s.node.hostname,
        "role": "master",
        "status": "ready",
        "address": s.api_addr.ip().to_string(),
        "api": s.api_addr.to_string(),
        "labels": {},
        "engine_version": s.node.engine_version,
        "api_version": s.node.api_version,
        "agent_version": env!("CARGO_PKG_VERSION"),
        "os": s.node.os,
        "cpus": s.node.cpus,
        "memory_bytes": s.node.memory_bytes,
        "instances": count(&s.node.hostname),
        "last_seen_ms": view.observed_at_ms,
    })];
    for (r, state) in s.nodes.list() {
        nodes.push(json!({
            "id": r.name,
            "name": r.name,
            "role": "agent",
            "status": if r.draining && state == crate::nodes::NodeState::Ready { "draining" } else { state.as_str() },
            "address": r.advertise_addr,
            "labels": r.labels,
            "engine_version": r.engine_version,
            "agent_version": r.agent_version,
            "cpus": r.cpus,
            "memory_bytes": r.memory_bytes,
            "instances": count(&r.name),
            "joined_ms": r.joined_ms,
            "last_seen_ms": r.last_seen_ms,
            "draining": r.draining,
            "drain_started_ms": r.drain_started_ms,
            "drain_deadline_ms": r.drain_deadline_ms,
        }));
    }
    Json(json!({
        "cluster": s.cluster,
        "ca_fingerprint": s.nodes.ca().fingerprint(),
        "nodes": nodes,
    }))
}
