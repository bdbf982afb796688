//! `NodeRuntime`: one node's [`ContainerRuntime`], local (the master's engine, node 0) or
//! remote (an agent's engine over its session) — the one code path the controller, logs and
//! stats use for every node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use orca_docker::{
    ContainerInfo, ContainerRuntime, ContainerSpec, ContainerStats, LogLine, NodeInfo,
    RuntimeError, RuntimeEvent, SwarmInfo, SwarmInit, SwarmJoin, SwarmNode,
};

use super::RemoteRuntime;

/// A node's runtime.
pub enum NodeRuntime<R: ContainerRuntime> {
    Local(Arc<R>),
    Remote(RemoteRuntime),
}

impl<R: ContainerRuntime> Clone for NodeRuntime<R> {
    fn clone(&self) -> Self {
        match self {
            NodeRuntime::Local(r) => NodeRuntime::Local(r.clone()),
            NodeRuntime::Remote(r) => NodeRuntime::Remote(r.clone()),
        }
    }
}

macro_rules! both {
    ($self:ident, $r:ident => $e:expr) => {
        match $self {
            NodeRuntime::Local($r) => $e,
            NodeRuntime::Remote($r) => $e,
        }
    };
}

impl<R: ContainerRuntime> ContainerRuntime for NodeRuntime<R> {
    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        both!(self, r => r.list().await)
    }

    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<ContainerInfo, RuntimeError> {
        both!(self, r => r.create_and_start(spec).await)
    }

    async fn stop_and_remove(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        both!(self, r => r.stop_and_remove(id, grace).await)
    }

    async fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        both!(self, r => r.ensure_network(name, labels).await)
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        both!(self, r => r.remove_network(name).await)
    }

    fn logs(
        &self,
        id: &str,
        tail: Option<usize>,
        follow: bool,
    ) -> BoxStream<'static, Result<LogLine, RuntimeError>> {
        both!(self, r => r.logs(id, tail, follow))
    }

    fn events(&self) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        both!(self, r => r.events())
    }

    async fn node_info(&self) -> Result<NodeInfo, RuntimeError> {
        both!(self, r => r.node_info().await)
    }

    async fn list_volumes(&self) -> Result<Vec<orca_docker::VolumeInfo>, RuntimeError> {
        both!(self, r => r.list_volumes().await)
    }

    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        both!(self, r => r.remove_volume(name).await)
    }

    async fn image_exists(&self, image: &str) -> Result<bool, RuntimeError> {
        both!(self, r => r.image_exists(image).await)
    }

    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        both!(self, r => r.stats(id).await)
    }

    fn export_image(&self, image: &str) -> BoxStream<'static, Result<Bytes, RuntimeError>> {
        both!(self, r => r.export_image(image))
    }

    async fn import_image(
        &self,
        tar: BoxStream<'static, Result<Bytes, RuntimeError>>,
    ) -> Result<(), RuntimeError> {
        both!(self, r => r.import_image(tar).await)
    }

    async fn build_image(
        &self,
        context_tar: Vec<u8>,
        dockerfile: &str,
        tag: &str,
        on_line: Box<dyn FnMut(&str) + Send>,
    ) -> Result<String, RuntimeError> {
        both!(self, r => r.build_image(context_tar, dockerfile, tag, on_line).await)
    }

    async fn ensure_overlay_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        both!(self, r => r.ensure_overlay_network(name, labels).await)
    }

    async fn pull_image(&self, image: &str) -> Result<(), RuntimeError> {
        both!(self, r => r.pull_image(image).await)
    }

    async fn swarm(&self) -> Result<Option<SwarmInfo>, RuntimeError> {
        both!(self, r => r.swarm().await)
    }

    async fn swarm_init(&self, init: &SwarmInit) -> Result<SwarmInfo, RuntimeError> {
        both!(self, r => r.swarm_init(init).await)
    }

    async fn swarm_join(&self, join: &SwarmJoin) -> Result<(), RuntimeError> {
        both!(self, r => r.swarm_join(join).await)
    }

    async fn swarm_leave(&self) -> Result<(), RuntimeError> {
        both!(self, r => r.swarm_leave().await)
    }

    async fn swarm_worker_token(&self) -> Result<String, RuntimeError> {
        both!(self, r => r.swarm_worker_token().await)
    }

    async fn swarm_nodes(&self) -> Result<Vec<SwarmNode>, RuntimeError> {
        both!(self, r => r.swarm_nodes().await)
    }

    async fn swarm_remove_node(&self, id: &str) -> Result<(), RuntimeError> {
        both!(self, r => r.swarm_remove_node(id).await)
    }
}
