//! The container-runtime port: what the node agent needs from a container engine.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use futures::stream::BoxStream;

use crate::model::{
    ContainerInfo, ContainerSpec, ContainerStats, LogLine, NodeInfo, RuntimeEvent, SwarmInfo,
    SwarmInit, SwarmJoin, SwarmNode, VolumeInfo,
};
use crate::RuntimeError;

/// A container engine on one node.
///
/// Implementations only ever see containers orca manages: every container they create carries
/// [`LABEL_MANAGED`](crate::LABEL_MANAGED)`=true`, and [`list`](Self::list) and
/// [`events`](Self::events) filter on it, so orca never touches a container it did not create.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// All managed containers, running or not, inspected: state, IP per network, exit code,
    /// OOM kill, start and finish times. Sorted by name.
    fn list(&self) -> impl Future<Output = Result<Vec<ContainerInfo>, RuntimeError>> + Send;

    /// Creates and starts a container and returns it inspected (with its IPs).
    ///
    /// Pulls the image if it is absent (bounded by a timeout; failure is
    /// [`RuntimeError::ImageNotFound`]). The container gets `spec.labels` plus
    /// `orca.managed=true`, joins `spec.network` with `spec.aliases` and then every network in
    /// `spec.extra_networks`. If any step after creation fails the container is removed again.
    /// A name already in use is [`RuntimeError::Conflict`].
    fn create_and_start(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<ContainerInfo, RuntimeError>> + Send;

    /// Stops a container (SIGTERM, then SIGKILL after `grace`) and removes it with its
    /// anonymous volumes. A container that is already gone is success.
    fn stop_and_remove(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Creates the bridge network `name` with `labels` unless it exists. Idempotent, also under
    /// concurrent calls.
    fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Removes a network. A missing network, or one still in use, is logged and is success.
    fn remove_network(&self, name: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// A container's stdout and stderr, line by line: the last `tail` lines (all if `None`),
    /// then, if `follow`, new lines until the container stops.
    fn logs(
        &self,
        id: &str,
        tail: Option<usize>,
        follow: bool,
    ) -> BoxStream<'static, Result<LogLine, RuntimeError>>;

    /// Lifecycle events of managed containers (`start`, `die`, `oom`, `destroy`,
    /// `health_status: ...`, ...), as they happen.
    ///
    /// The stream never ends quietly: if the engine connection breaks (daemon restart) it
    /// yields an error and ends; the caller resubscribes and re-lists to catch up.
    fn events(&self) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>>;

    /// Facts about the node the engine runs on.
    fn node_info(&self) -> impl Future<Output = Result<NodeInfo, RuntimeError>> + Send;

    /// Pulls `image` from its registry (bounded by the runtime's pull timeout; failure is
    /// [`RuntimeError::ImageNotFound`]). Present already: success at once.
    fn pull_image(&self, image: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        let image = image.to_string();
        async move {
            Err(RuntimeError::ImageNotFound {
                image,
                reason: "this container runtime pulls no images".into(),
            })
        }
    }

    /// Whether `image` is present locally.
    fn image_exists(&self, image: &str) -> impl Future<Output = Result<bool, RuntimeError>> + Send;

    /// One resource-usage sample of a running container.
    fn stats(&self, id: &str) -> impl Future<Output = Result<ContainerStats, RuntimeError>> + Send;

    /// The image `image` as a `docker save` tar stream (to ship it to a node without a
    /// registry).
    fn export_image(&self, image: &str) -> BoxStream<'static, Result<bytes::Bytes, RuntimeError>>;

    /// Loads images from a `docker save` tar stream (what [`export_image`](Self::export_image)
    /// gives).
    fn import_image(
        &self,
        tar: BoxStream<'static, Result<bytes::Bytes, RuntimeError>>,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Builds an image from a build context (an uncompressed tar holding `dockerfile`, a path
    /// inside the tar) and tags it `tag`. Every line of build output goes to `on_line` as it
    /// arrives. Returns the image id. A failed build is [`RuntimeError::Build`], naming the
    /// step that failed.
    fn build_image(
        &self,
        context_tar: Vec<u8>,
        dockerfile: &str,
        tag: &str,
        on_line: Box<dyn FnMut(&str) + Send>,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;

    /// The named volumes this runtime's cluster owns (labelled `orca.managed=true` and, when
    /// scoped, its cluster id), each with the managed containers that mount it. A runtime
    /// without volumes has none.
    fn list_volumes(&self) -> impl Future<Output = Result<Vec<VolumeInfo>, RuntimeError>> + Send {
        async { Ok(Vec::new()) }
    }

    /// Removes a named volume this cluster owns. One still mounted by a container (of any
    /// state) is refused ([`RuntimeError::Engine`] saying so); a missing one is
    /// [`RuntimeError::NotFound`].
    fn remove_volume(&self, name: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        let name = name.to_string();
        async move { Err(RuntimeError::NotFound { id: name }) }
    }

    /// Creates a volume helper: a container of `image` that is created and never started
    /// (nothing is executed in it), with the named volume `volume` mounted at
    /// [`HELPER_MOUNT`](crate::HELPER_MOUNT). The volume is created with `volume_labels` (and
    /// this runtime's cluster id) if it is missing; one of another cluster is refused. The
    /// helper carries `labels` but not `orca.managed`, so no controller ever sees it. Returns
    /// its id; remove it with [`stop_and_remove`](Self::stop_and_remove).
    fn create_volume_helper(
        &self,
        name: &str,
        image: &str,
        volume: &str,
        volume_labels: &BTreeMap<String, String>,
        labels: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send {
        let _ = (name, image, volume_labels, labels);
        let volume = volume.to_string();
        async move {
            Err(RuntimeError::Engine {
                op: format!("read volume {volume:?}"),
                reason: "this container runtime has no archive API".into(),
            })
        }
    }

    /// A tar stream of `path` in container `id` (the engine's archive API; works on a
    /// container that never ran, its volumes mounted).
    fn download_archive(
        &self,
        id: &str,
        path: &str,
    ) -> BoxStream<'static, Result<bytes::Bytes, RuntimeError>> {
        let _ = (id, path);
        Box::pin(futures::stream::once(async {
            Err(RuntimeError::Engine {
                op: "download archive".into(),
                reason: "this container runtime has no archive API".into(),
            })
        }))
    }

    /// Extracts the tar stream `tar` into directory `path` of container `id`.
    fn upload_archive(
        &self,
        id: &str,
        path: &str,
        tar: BoxStream<'static, Result<bytes::Bytes, std::io::Error>>,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        let _ = (id, path, tar);
        async {
            Err(RuntimeError::Engine {
                op: "upload archive".into(),
                reason: "this container runtime has no archive API".into(),
            })
        }
    }

    /// Creates the attachable overlay network `name` with `labels` unless it exists, on a
    /// swarm manager (workers attach to it when a container joins it). Idempotent.
    fn ensure_overlay_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        let _ = labels;
        async move { Err(no_swarm(&format!("create overlay network {name:?}"))) }
    }

    /// The engine's swarm membership; `None` for a runtime that has no swarm at all (a
    /// simulated engine), which then is on no overlay network.
    fn swarm(&self) -> impl Future<Output = Result<Option<SwarmInfo>, RuntimeError>> + Send {
        async { Ok(None) }
    }

    /// Makes a new swarm with this engine as its only manager.
    fn swarm_init(
        &self,
        init: &SwarmInit,
    ) -> impl Future<Output = Result<SwarmInfo, RuntimeError>> + Send {
        let _ = init;
        async { Err(no_swarm("init a swarm")) }
    }

    /// Joins this engine to a swarm as a worker (returns once it has joined).
    fn swarm_join(
        &self,
        join: &SwarmJoin,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        let _ = join;
        async { Err(no_swarm("join a swarm")) }
    }

    /// Makes this engine leave its swarm (`force`, as a last manager must). Not being in a
    /// swarm is success.
    fn swarm_leave(&self) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        async { Ok(()) }
    }

    /// The worker join token of the swarm this engine manages.
    fn swarm_worker_token(&self) -> impl Future<Output = Result<String, RuntimeError>> + Send {
        async { Err(no_swarm("read the swarm's join token")) }
    }

    /// The engines of the swarm this engine manages.
    fn swarm_nodes(&self) -> impl Future<Output = Result<Vec<SwarmNode>, RuntimeError>> + Send {
        async { Err(no_swarm("list the swarm's nodes")) }
    }

    /// Removes an engine (by swarm node id) from the swarm this engine manages.
    fn swarm_remove_node(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        let _ = id;
        async { Err(no_swarm("remove a swarm node")) }
    }
}

fn no_swarm(op: &str) -> RuntimeError {
    RuntimeError::Engine {
        op: op.to_string(),
        reason: "this container runtime has no swarm (overlay networking)".to_string(),
    }
}
