//! [`DockerRuntime`]: the container-runtime port over the Docker Engine API (bollard).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum,
    ContainerSummaryStateEnum, EndpointSettings, EventMessage, HostConfig, NetworkConnectRequest,
    NetworkCreateRequest, NetworkingConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    EventsOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, ListVolumesOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder, StatsOptions,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use tracing::{debug, info, warn};

use crate::model::{
    ClusterScope, ContainerInfo, ContainerSpec, ContainerState, ContainerStats, LogLine, LogStream,
    MountSourceSpec, NodeInfo, RuntimeEvent, VolumeInfo, LABEL_CLUSTER, LABEL_CLUSTER_ID,
    LABEL_MANAGED,
};
use crate::running::RunningCache;
use crate::runtime::ContainerRuntime;
use crate::time::rfc3339_to_unix;
use crate::RuntimeError;

/// How long pulling a missing image may take before `create_and_start` gives up.
const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(120);

/// bollard's per-request timeout (it bounds the wait for response headers, not streams).
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// How many containers `list` inspects concurrently.
const INSPECT_CONCURRENCY: usize = 8;

/// The Docker Engine, reached through its API socket. Cheap to clone; clones share the
/// connection pool.
#[derive(Clone)]
pub struct DockerRuntime {
    pub(crate) docker: Docker,
    pull_timeout: Duration,
    /// Serialises `ensure_network` within this process. The engine (API 1.41, without
    /// `CheckDuplicate`, which bollard no longer sends) happily creates two networks with the
    /// same name; this lock stops that for our own concurrent calls, and a dedupe pass after
    /// creation handles races with other processes.
    network_lock: Arc<tokio::sync::Mutex<()>>,
    /// The cluster this runtime works for, if scoped: it sees only that cluster's
    /// containers and labels what it creates with the cluster id.
    scope: Option<ClusterScope>,
    /// What the last inspect said of each container that was running: `list` takes a
    /// container the engine lists as running from here (its addresses from the listing)
    /// instead of inspecting it again, so listing N running containers is one engine call,
    /// not N + 1 — trusted only while an event subscription keeps it current
    /// ([`crate::running`]).
    running: RunningCache,
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime")
            .field("api_version", &self.docker.client_version().to_string())
            .field("pull_timeout", &self.pull_timeout)
            .finish()
    }
}

impl DockerRuntime {
    /// Connects to the engine named by `DOCKER_HOST` (default: the local Unix socket) and
    /// negotiates the API version down to what the engine speaks (bollard's default is newer
    /// than, e.g., Docker 20.10's 1.41).
    pub async fn connect() -> Result<DockerRuntime, RuntimeError> {
        let docker = Docker::connect_with_defaults()
            .map_err(|e| RuntimeError::Unavailable {
                reason: format!("cannot set up the engine client: {e}"),
            })?
            .with_timeout(Duration::from_secs(REQUEST_TIMEOUT_SECS));
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| RuntimeError::Unavailable {
                reason: format!("cannot reach the engine: {e}"),
            })?;
        debug!(api_version = %docker.client_version(), "connected to the container engine");
        Ok(DockerRuntime {
            docker,
            pull_timeout: DEFAULT_PULL_TIMEOUT,
            network_lock: Arc::new(tokio::sync::Mutex::new(())),
            scope: None,
            running: RunningCache::default(),
        })
    }

    /// Scopes this runtime to one cluster: `list` returns only containers the cluster owns
    /// (its id, or no id and its name), created containers and networks carry the id, and
    /// a network of another cluster id is never joined.
    pub fn scoped(mut self, scope: ClusterScope) -> DockerRuntime {
        self.scope = Some(scope);
        self
    }

    /// Containers on this engine that carry this scope's cluster name but another cluster
    /// id: another orca server with the same `[cluster] name`. Returns (container name,
    /// other id) pairs.
    pub async fn same_name_other_id(&self) -> Result<Vec<(String, String)>, RuntimeError> {
        let Some(scope) = &self.scope else {
            return Ok(Vec::new());
        };
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_CLUSTER}={}", scope.name),
            ],
        )]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| map_err("list containers", e))?;
        Ok(summaries
            .into_iter()
            .filter_map(|s| {
                let id = s.labels.as_ref()?.get(LABEL_CLUSTER_ID)?.clone();
                (id != scope.id).then(|| {
                    let name = s
                        .names
                        .and_then(|n| n.into_iter().next())
                        .unwrap_or_default();
                    (name.trim_start_matches('/').to_string(), id)
                })
            })
            .collect())
    }

    /// The labels of the network named exactly `name`, if there is one.
    async fn network_labels(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, RuntimeError> {
        let filters = HashMap::from([("name".to_string(), vec![name.to_string()])]);
        let networks = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .map_err(|e| map_err("list networks", e))?;
        Ok(networks
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .min_by(|a, b| a.id.cmp(&b.id))
            .map(|n| n.labels.unwrap_or_default().into_iter().collect()))
    }

    /// Bounds how long `create_and_start` waits for a missing image to be pulled.
    pub fn with_pull_timeout(mut self, timeout: Duration) -> DockerRuntime {
        self.pull_timeout = timeout;
        self
    }

    /// The API version negotiated with the engine, e.g. `1.41`.
    pub fn api_version(&self) -> String {
        self.docker.client_version().to_string()
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let resp = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| match status(&e) {
                Some(404) => RuntimeError::NotFound { id: id.to_string() },
                _ => map_err("inspect container", e),
            })?;
        Ok(container_info(resp))
    }

    /// Makes sure `image` is present, pulling it (bounded by `pull_timeout`) if not.
    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        if self.image_exists(image).await? {
            return Ok(());
        }
        info!(image, "image not present locally, pulling");
        let (from_image, tag) = split_reference(image);
        let mut options = CreateImageOptionsBuilder::new().from_image(from_image);
        if let Some(tag) = tag {
            options = options.tag(tag);
        }
        let pull = self
            .docker
            .create_image(Some(options.build()), None, None)
            .try_for_each(|_progress| async { Ok(()) });
        let not_found = |reason: String| RuntimeError::ImageNotFound {
            image: image.to_string(),
            reason,
        };
        match tokio::time::timeout(self.pull_timeout, pull).await {
            Err(_) => Err(not_found(format!(
                "pull timed out after {}s",
                self.pull_timeout.as_secs()
            ))),
            Ok(Err(e)) => Err(not_found(reason(&e))),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Best-effort removal used to undo a half-created container.
    async fn discard(&self, id: &str) {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        if let Err(e) = self.docker.remove_container(id, Some(options)).await {
            if status(&e) != Some(404) {
                warn!(container = id, error = %e, "could not remove a container that failed to start");
            }
        }
    }

    /// Exact-name matches among the engine's networks (the engine's `name` filter matches
    /// substrings), sorted by id.
    async fn networks_named(&self, name: &str) -> Result<Vec<String>, RuntimeError> {
        let filters = HashMap::from([("name".to_string(), vec![name.to_string()])]);
        let networks = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .map_err(|e| map_err("list networks", e))?;
        let mut ids: Vec<String> = networks
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| n.id)
            .collect();
        ids.sort();
        Ok(ids)
    }
}

impl DockerRuntime {
    /// Creates the named volumes `spec` mounts that do not exist yet, with their labels and
    /// this runtime's cluster id; refuses one that exists and belongs to another cluster (or
    /// to no orca cluster at all), so a name clash never shares data between clusters.
    async fn ensure_volumes(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        for mount in &spec.mounts {
            let MountSourceSpec::Volume { name, labels } = &mount.source else {
                continue;
            };
            let op = || format!("use volume {name:?}");
            match self.docker.inspect_volume(name).await {
                Ok(existing) => {
                    let existing: BTreeMap<String, String> = existing.labels.into_iter().collect();
                    let managed = existing.get(LABEL_MANAGED).is_some_and(|v| v == "true");
                    let ours = self.scope.as_ref().is_none_or(|s| s.owns(&existing));
                    if !managed || !ours {
                        let owner = existing
                            .get(LABEL_CLUSTER_ID)
                            .or(existing.get(LABEL_CLUSTER))
                            .map_or("outside orca", String::as_str);
                        return Err(RuntimeError::Engine {
                            op: op(),
                            reason: format!(
                                "it belongs to another cluster ({owner}); remove it or rename the volume"
                            ),
                        });
                    }
                    continue;
                }
                Err(e) if status(&e) == Some(404) => {}
                Err(e) => return Err(map_err(&op(), e)),
            }
            let mut labels: HashMap<String, String> =
                labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            labels.insert(LABEL_MANAGED.to_string(), "true".to_string());
            if let Some(scope) = &self.scope {
                labels.insert(LABEL_CLUSTER_ID.to_string(), scope.id.clone());
            }
            let request = bollard::models::VolumeCreateRequest {
                name: Some(name.clone()),
                driver: Some("local".to_string()),
                labels: Some(labels),
                ..Default::default()
            };
            self.docker
                .create_volume(request)
                .await
                .map_err(|e| map_err(&format!("create volume {name:?}"), e))?;
            info!(volume = %name, "volume created");
        }
        Ok(())
    }

    /// `ensure_network` for a bridge, or (on a swarm manager) an attachable overlay.
    async fn ensure_network_of(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        overlay: bool,
    ) -> Result<(), RuntimeError> {
        let _guard = self.network_lock.lock().await;
        if let Some(existing) = self.network_labels(name).await? {
            // A network belongs to one cluster: joining another's would let its containers
            // claim this cluster's aliases (and the reverse).
            if let Some(scope) = &self.scope {
                if !scope.owns(&existing) {
                    let owner = existing
                        .get(LABEL_CLUSTER_ID)
                        .or(existing.get(LABEL_CLUSTER))
                        .map_or("outside orca", String::as_str);
                    return Err(RuntimeError::Engine {
                        op: format!("use network {name:?}"),
                        reason: format!(
                            "it belongs to another cluster ({owner}), not to cluster {:?} (id {}); \
                             remove it or give this cluster's project another name",
                            scope.name, scope.id
                        ),
                    });
                }
            }
            return Ok(());
        }
        let mut labels = labels.clone();
        if let Some(scope) = &self.scope {
            labels.insert(LABEL_CLUSTER_ID.to_string(), scope.id.clone());
        }
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some(if overlay { "overlay" } else { "bridge" }.to_string()),
            attachable: overlay.then_some(true),
            labels: Some(labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => info!(network = name, "network created"),
            // Newer engines refuse duplicates themselves: someone else created it first.
            Err(e) if status(&e) == Some(409) => return Ok(()),
            Err(e) => return Err(map_err(&format!("create network {name:?}"), e)),
        }
        // Another process may have raced us past the existence check. Every racer keeps the
        // network with the smallest id and removes the others, so all converge on one.
        let ids = self.networks_named(name).await?;
        for extra in ids.iter().skip(1) {
            warn!(network = name, id = %extra, "removing duplicate network created by a race");
            if let Err(e) = self.docker.remove_network(extra).await {
                if status(&e) != Some(404) {
                    warn!(network = name, id = %extra, error = %e, "could not remove duplicate network");
                }
            }
        }
        Ok(())
    }
}

impl ContainerRuntime for DockerRuntime {
    #[tracing::instrument(name = "orca.docker.list", skip(self))]
    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_MANAGED}=true")])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| map_err("list containers", e))?;
        let listing: Vec<(String, bool)> = summaries
            .iter()
            .filter_map(|s| {
                let running = s.state == Some(ContainerSummaryStateEnum::RUNNING);
                s.id.clone().map(|id| (id, running))
            })
            .collect();
        let lookup = self.running.lookup(&listing);
        let mut networks: HashMap<String, _> = summaries
            .into_iter()
            .filter_map(|s| Some((s.id?, s.network_settings.and_then(|n| n.networks)?)))
            .collect();
        // Known running: the cached inspect, with the listing's addresses.
        let known: Vec<ContainerInfo> = lookup
            .known
            .into_iter()
            .map(|(id, mut info)| {
                if let Some(n) = networks.remove(&id) {
                    info.ips = endpoint_ips(n);
                }
                info
            })
            .collect();
        let to_inspect = lookup.to_inspect;
        let inspected: Vec<Result<ContainerInfo, RuntimeError>> = stream::iter(to_inspect)
            .map(|id| async move { self.inspect(&id).await })
            .buffer_unordered(INSPECT_CONCURRENCY)
            .collect()
            .await;
        let mut out = Vec::with_capacity(known.len() + inspected.len());
        let mut now_running = Vec::new();
        for info in inspected {
            match info {
                Ok(info) if self.scope.as_ref().is_none_or(|s| s.owns(&info.labels)) => {
                    if info.state == ContainerState::Running {
                        now_running.push(info.clone());
                    }
                    out.push(info)
                }
                // Another cluster's container: never seen, so never touched.
                Ok(_) => {}
                // Removed between listing and inspecting: it is simply not there any more.
                Err(RuntimeError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.running.remember(lookup.generation, now_running);
        out.extend(known);
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    #[tracing::instrument(
        name = "orca.docker.create_and_start",
        skip(self, spec),
        fields(container = %spec.name, image = %spec.image, network = %spec.network)
    )]
    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<ContainerInfo, RuntimeError> {
        if let Some(p) = spec.publish.filter(|p| p.host_ip.is_unspecified()) {
            return Err(RuntimeError::Engine {
                op: "create container".into(),
                reason: format!(
                    "refusing to publish port {} on {}: ports are published on one node address only",
                    p.host_port, p.host_ip
                ),
            });
        }
        self.ensure_image(&spec.image).await?;
        self.ensure_volumes(spec).await?;

        let options = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        let mut body = create_body(spec);
        if let (Some(scope), Some(labels)) = (&self.scope, body.labels.as_mut()) {
            labels.insert(LABEL_CLUSTER_ID.to_string(), scope.id.clone());
        }
        let id = match self.docker.create_container(Some(options), body).await {
            Ok(resp) => {
                for warning in &resp.warnings {
                    warn!(container = %spec.name, warning, "engine warning on create");
                }
                resp.id
            }
            Err(e) => {
                return Err(match status(&e) {
                    Some(409) => RuntimeError::Conflict {
                        name: spec.name.clone(),
                    },
                    Some(404) if reason(&e).to_lowercase().contains("no such image") => {
                        RuntimeError::ImageNotFound {
                            image: spec.image.clone(),
                            reason: reason(&e),
                        }
                    }
                    _ => map_err("create container", e),
                });
            }
        };

        // From here on a failure must not leave a created-but-never-started container behind.
        let started = async {
            for network in &spec.extra_networks {
                if network == &spec.network {
                    continue;
                }
                let request = NetworkConnectRequest {
                    container: id.clone(),
                    endpoint_config: Some(endpoint(spec)),
                };
                self.docker
                    .connect_network(network, request)
                    .await
                    .map_err(|e| map_err(&format!("connect network {network:?}"), e))?;
            }
            self.docker
                .start_container(&id, None)
                .await
                .map_err(|e| map_err("start container", e))?;
            self.inspect(&id).await
        }
        .await;
        match started {
            Ok(info) => {
                info!(container = %spec.name, id = %info.id, ips = ?info.ips, "container started");
                Ok(info)
            }
            Err(e) => {
                self.discard(&id).await;
                Err(e)
            }
        }
    }

    #[tracing::instrument(name = "orca.docker.stop_and_remove", skip(self))]
    async fn stop_and_remove(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.running.forget(id);
        let grace_secs = i32::try_from(grace.as_secs_f64().ceil() as u64).unwrap_or(i32::MAX);
        // The engine answers a stop only after the grace period; make sure the client waits.
        let docker = if u64::try_from(grace_secs).unwrap_or(u64::MAX) + 30 > REQUEST_TIMEOUT_SECS {
            self.docker
                .clone()
                .with_timeout(Duration::from_secs(grace_secs as u64 + 30))
        } else {
            self.docker.clone()
        };
        match docker
            .stop_container(
                id,
                Some(StopContainerOptionsBuilder::new().t(grace_secs).build()),
            )
            .await
        {
            Ok(()) => {}
            Err(e) if status(&e) == Some(404) => return Ok(()),
            Err(e) => {
                // Still try to remove it: `force` kills it anyway.
                warn!(container = id, error = %e, "stop failed, removing with force");
            }
        }
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            // "removal of container ... is already in progress": someone else is removing it.
            Err(e) if status(&e) == Some(409) && reason(&e).contains("already in progress") => {
                Ok(())
            }
            Err(e) => Err(map_err("remove container", e)),
        }
    }

    #[tracing::instrument(name = "orca.docker.list_volumes", skip(self))]
    async fn list_volumes(&self) -> Result<Vec<VolumeInfo>, RuntimeError> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_MANAGED}=true")])]);
        let listed = self
            .docker
            .list_volumes(Some(
                ListVolumesOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .map_err(|e| map_err("list volumes", e))?;
        // Who mounts what: one listing of every managed container, any state.
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| map_err("list containers", e))?;
        let mut users: HashMap<String, Vec<String>> = HashMap::new();
        for c in containers {
            let name = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default();
            for m in c.mounts.unwrap_or_default() {
                if let Some(volume) = m.name {
                    users.entry(volume).or_default().push(name.clone());
                }
            }
        }
        let mut out: Vec<VolumeInfo> = listed
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| {
                let mut users = users.remove(&v.name).unwrap_or_default();
                users.sort();
                VolumeInfo {
                    labels: v.labels.into_iter().collect(),
                    created_at: v.created_at.map(|t| t.to_string()),
                    users,
                    name: v.name,
                }
            })
            .filter(|v| self.scope.as_ref().is_none_or(|s| s.owns(&v.labels)))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    #[tracing::instrument(name = "orca.docker.remove_volume", skip(self))]
    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        let op = || format!("remove volume {name:?}");
        let existing = match self.docker.inspect_volume(name).await {
            Ok(v) => v,
            Err(e) if status(&e) == Some(404) => {
                return Err(RuntimeError::NotFound {
                    id: name.to_string(),
                })
            }
            Err(e) => return Err(map_err(&op(), e)),
        };
        let labels: BTreeMap<String, String> = existing.labels.into_iter().collect();
        let managed = labels.get(LABEL_MANAGED).is_some_and(|v| v == "true");
        if !managed || self.scope.as_ref().is_some_and(|s| !s.owns(&labels)) {
            return Err(RuntimeError::NotFound {
                id: name.to_string(),
            });
        }
        // Never forced: the engine refuses a volume any container (running or not) mounts.
        match self
            .docker
            .remove_volume(
                name,
                Some(RemoveVolumeOptionsBuilder::new().force(false).build()),
            )
            .await
        {
            Ok(()) => {
                info!(volume = name, "volume removed");
                Ok(())
            }
            Err(e) if status(&e) == Some(404) => Err(RuntimeError::NotFound {
                id: name.to_string(),
            }),
            Err(e) if status(&e) == Some(409) => Err(RuntimeError::Engine {
                op: op(),
                reason: format!("it is in use by a container: {}", reason(&e)),
            }),
            Err(e) => Err(map_err(&op(), e)),
        }
    }

    #[tracing::instrument(
        name = "orca.docker.create_volume_helper",
        skip(self, volume_labels, labels)
    )]
    async fn create_volume_helper(
        &self,
        name: &str,
        image: &str,
        volume: &str,
        volume_labels: &BTreeMap<String, String>,
        labels: &BTreeMap<String, String>,
    ) -> Result<String, RuntimeError> {
        if !self.image_exists(image).await? {
            return Err(RuntimeError::ImageNotFound {
                image: image.to_string(),
                reason: "a volume helper needs the service's image present on this node (nothing is pulled)".into(),
            });
        }
        let spec = ContainerSpec {
            mounts: vec![crate::model::MountSpec {
                source: MountSourceSpec::Volume {
                    name: volume.to_string(),
                    labels: volume_labels.clone(),
                },
                target: crate::HELPER_MOUNT.to_string(),
                read_only: false,
            }],
            ..Default::default()
        };
        self.ensure_volumes(&spec).await?;
        let mut labels: HashMap<String, String> =
            labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if let Some(scope) = &self.scope {
            labels.insert(LABEL_CLUSTER_ID.to_string(), scope.id.clone());
        }
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            labels: Some(labels),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                network_mode: Some("none".to_string()),
                privileged: Some(false),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                mounts: Some(vec![bollard::models::Mount {
                    target: Some(crate::HELPER_MOUNT.to_string()),
                    source: Some(volume.to_string()),
                    typ: Some(bollard::models::MountType::VOLUME),
                    read_only: Some(false),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        match self.docker.create_container(Some(options), body).await {
            Ok(resp) => Ok(resp.id),
            Err(e) if status(&e) == Some(409) => Err(RuntimeError::Conflict {
                name: name.to_string(),
            }),
            Err(e) => Err(map_err("create volume helper", e)),
        }
    }

    fn download_archive(
        &self,
        id: &str,
        path: &str,
    ) -> BoxStream<'static, Result<bytes::Bytes, RuntimeError>> {
        let options = bollard::query_parameters::DownloadFromContainerOptionsBuilder::new()
            .path(path)
            .build();
        self.docker
            .download_from_container(id, Some(options))
            .map_err(|e| map_err("download archive", e))
            .boxed()
    }

    async fn upload_archive(
        &self,
        id: &str,
        path: &str,
        tar: BoxStream<'static, Result<bytes::Bytes, std::io::Error>>,
    ) -> Result<(), RuntimeError> {
        let options = bollard::query_parameters::UploadToContainerOptionsBuilder::new()
            .path(path)
            .build();
        // A large archive takes longer than the default request timeout.
        self.docker
            .clone()
            .with_timeout(Duration::from_secs(3600))
            .upload_to_container(id, Some(options), bollard::body_try_stream(tar))
            .await
            .map_err(|e| map_err("upload archive", e))
    }

    #[tracing::instrument(name = "orca.docker.ensure_network", skip(self, labels))]
    async fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        self.ensure_network_of(name, labels, false).await
    }

    #[tracing::instrument(name = "orca.docker.ensure_overlay_network", skip(self, labels))]
    async fn ensure_overlay_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        self.ensure_network_of(name, labels, true).await
    }

    async fn pull_image(&self, image: &str) -> Result<(), RuntimeError> {
        self.ensure_image(image).await
    }

    async fn swarm(&self) -> Result<Option<crate::SwarmInfo>, RuntimeError> {
        self.swarm_info().await.map(Some)
    }

    async fn swarm_init(&self, init: &crate::SwarmInit) -> Result<crate::SwarmInfo, RuntimeError> {
        self.swarm_init_impl(init).await
    }

    async fn swarm_join(&self, join: &crate::SwarmJoin) -> Result<(), RuntimeError> {
        self.swarm_join_impl(join).await
    }

    async fn swarm_leave(&self) -> Result<(), RuntimeError> {
        self.swarm_leave_impl().await
    }

    async fn swarm_worker_token(&self) -> Result<String, RuntimeError> {
        self.swarm_worker_token_impl().await
    }

    async fn swarm_nodes(&self) -> Result<Vec<crate::SwarmNode>, RuntimeError> {
        self.swarm_nodes_impl().await
    }

    async fn swarm_remove_node(&self, id: &str) -> Result<(), RuntimeError> {
        self.swarm_remove_node_impl(id).await
    }

    #[tracing::instrument(name = "orca.docker.remove_network", skip(self))]
    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        match self.docker.remove_network(name).await {
            Ok(()) => {
                info!(network = name, "network removed");
                Ok(())
            }
            Err(e) if status(&e) == Some(404) => Ok(()),
            // 403/409: it still has endpoints; it is removed when it is next found unused.
            Err(e) if matches!(status(&e), Some(403) | Some(409)) => {
                warn!(network = name, reason = %reason(&e), "network still in use, not removed");
                Ok(())
            }
            Err(e) => Err(map_err(&format!("remove network {name:?}"), e)),
        }
    }

    fn logs(
        &self,
        id: &str,
        tail: Option<usize>,
        follow: bool,
    ) -> BoxStream<'static, Result<LogLine, RuntimeError>> {
        let tail = tail.map_or_else(|| "all".to_string(), |n| n.to_string());
        let options = LogsOptionsBuilder::new()
            .follow(follow)
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .tail(&tail)
            .build();
        let id_owned = id.to_string();
        self.docker
            .logs(id, Some(options))
            .map(move |chunk| match chunk {
                Ok(output) => Ok(log_lines(output)),
                Err(e) if status(&e) == Some(404) => Err(RuntimeError::NotFound {
                    id: id_owned.clone(),
                }),
                Err(e) => Err(map_err("read logs", e)),
            })
            .flat_map(|res| match res {
                Ok(lines) => stream::iter(lines.into_iter().map(Ok).collect::<Vec<_>>()),
                Err(e) => stream::iter(vec![Err(e)]),
            })
            .boxed()
    }

    fn events(&self) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("label".to_string(), vec![format!("{LABEL_MANAGED}=true")]),
        ]);
        // The request is only sent when the stream is first polled. Asking for events `since`
        // now makes the subscription start when `events()` is called, so nothing that happens
        // in between (e.g. a container started right after subscribing) is missed.
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let options = EventsOptionsBuilder::new()
            .filters(&filters)
            .since(&format!("{}.{:09}", since.as_secs(), since.subsec_nanos()))
            .build();
        // Counted from now (events since now are replayed when the request goes out); every
        // event drops its container's cached inspect before the subscriber sees it.
        let subscription = self.running.subscribe();
        let cache = self.running.clone();
        let events = self.docker.events(Some(options)).filter_map(move |msg| {
            let item = match msg {
                Ok(msg) => runtime_event(msg).map(Ok),
                Err(e) => Some(Err(map_err("watch events", e))),
            };
            match &item {
                Some(Ok(ev)) => cache.forget(&ev.id),
                Some(Err(_)) => cache.forget_all(),
                None => {}
            }
            async move { item }
        });
        // The engine never ends an event stream on its own; if it ends, the connection broke
        // (daemon restart). Say so, so the caller resubscribes instead of waiting forever.
        let ended = stream::once(async {
            Err(RuntimeError::Unavailable {
                reason: "the engine closed the event stream".to_string(),
            })
        });
        events
            .chain(ended)
            .scan(false, move |failed, item| {
                let _live = &subscription;
                // End the stream after its first error.
                let done = *failed;
                *failed |= item.is_err();
                async move { (!done).then_some(item) }
            })
            .boxed()
    }

    #[tracing::instrument(name = "orca.docker.node_info", skip(self))]
    async fn node_info(&self) -> Result<NodeInfo, RuntimeError> {
        let (info, version) = futures::try_join!(
            async {
                self.docker
                    .info()
                    .await
                    .map_err(|e| map_err("read engine info", e))
            },
            async {
                self.docker
                    .version()
                    .await
                    .map_err(|e| map_err("read engine version", e))
            },
        )?;
        Ok(NodeInfo {
            hostname: info.name.unwrap_or_default(),
            engine_version: version.version.or(info.server_version).unwrap_or_default(),
            api_version: version.api_version.unwrap_or_else(|| self.api_version()),
            cpus: info.ncpu.and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
            memory_bytes: info
                .mem_total
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0),
            os: info.operating_system.or(info.os_type).unwrap_or_default(),
        })
    }

    #[tracing::instrument(name = "orca.docker.image_exists", skip(self))]
    async fn image_exists(&self, image: &str) -> Result<bool, RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if status(&e) == Some(404) => Ok(false),
            Err(e) => Err(map_err("inspect image", e)),
        }
    }

    fn export_image(&self, image: &str) -> BoxStream<'static, Result<bytes::Bytes, RuntimeError>> {
        self.docker
            .export_image(image)
            .map(|item| item.map_err(|e| map_err("export image", e)))
            .boxed()
    }

    #[tracing::instrument(name = "orca.docker.import_image", skip(self, tar))]
    async fn import_image(
        &self,
        tar: BoxStream<'static, Result<bytes::Bytes, RuntimeError>>,
    ) -> Result<(), RuntimeError> {
        let options = bollard::query_parameters::ImportImageOptionsBuilder::default()
            .quiet(true)
            .build();
        let mut stream = self.docker.import_image_stream(options, tar, None);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| map_err("load image", e))?;
            if let Some(error) = info.error_detail.and_then(|d| d.message) {
                return Err(RuntimeError::Engine {
                    op: "load image".into(),
                    reason: error,
                });
            }
        }
        Ok(())
    }

    #[tracing::instrument(name = "orca.docker.build_image", skip(self, context_tar, on_line), fields(bytes = context_tar.len()))]
    async fn build_image(
        &self,
        context_tar: Vec<u8>,
        dockerfile: &str,
        tag: &str,
        mut on_line: Box<dyn FnMut(&str) + Send>,
    ) -> Result<String, RuntimeError> {
        let options = BuildImageOptionsBuilder::default()
            .dockerfile(dockerfile)
            .t(tag)
            .rm(true)
            .forcerm(true)
            .build();
        let mut stream =
            self.docker
                .build_image(options, None, Some(bollard::body_full(context_tar.into())));
        // The legacy builder announces each step as `Step N/M : INSTRUCTION`; the last one
        // seen is the step a failure belongs to.
        let mut step = String::from("the build context");
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                Err(e @ BollardError::DockerStreamError { .. }) => {
                    return Err(RuntimeError::Build {
                        step,
                        reason: reason(&e),
                    })
                }
                Err(e) if status(&e).is_some() => {
                    return Err(RuntimeError::Build {
                        step,
                        reason: reason(&e),
                    })
                }
                Err(e) => return Err(map_err("build image", e)),
            };
            if let Some(text) = info.stream.as_deref().or(info.status.as_deref()) {
                for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
                    if line.starts_with("Step ") {
                        step = line.to_string();
                    }
                    on_line(line);
                }
            }
            if let Some(detail) = info.error_detail {
                let message = detail.message.unwrap_or_else(|| "unknown error".into());
                on_line(&message);
                return Err(RuntimeError::Build {
                    step,
                    reason: message,
                });
            }
        }
        let image = self
            .docker
            .inspect_image(tag)
            .await
            .map_err(|e| map_err("inspect built image", e))?;
        image.id.ok_or_else(|| RuntimeError::Engine {
            op: "inspect built image".into(),
            reason: format!("image {tag} has no id"),
        })
    }

    #[tracing::instrument(name = "orca.docker.stats", skip(self))]
    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        let options = StatsOptions {
            stream: false,
            one_shot: true,
        };
        let mut stream = self.docker.stats(id, Some(options));
        match stream.next().await {
            Some(Ok(s)) => {
                let mem = s.memory_stats.unwrap_or_default();
                let cpu = s
                    .cpu_stats
                    .and_then(|c| c.cpu_usage)
                    .and_then(|u| u.total_usage)
                    .unwrap_or(0);
                Ok(ContainerStats {
                    memory_bytes: mem.usage.unwrap_or(0),
                    memory_limit_bytes: mem.limit.unwrap_or(0),
                    cpu_total_ns: cpu,
                })
            }
            Some(Err(e)) if status(&e) == Some(404) => {
                Err(RuntimeError::NotFound { id: id.to_string() })
            }
            Some(Err(e)) => Err(map_err("container stats", e)),
            None => Err(RuntimeError::Engine {
                op: "container stats".into(),
                reason: "the engine sent no sample".into(),
            }),
        }
    }
}

/// The engine's create request for `spec`. Deliberately minimal on privileges: no port
/// bindings (but the one `publish` of a remote node's instance, on one address), no
/// privileged mode, no host network, no engine restarts.
fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let mut labels: HashMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(LABEL_MANAGED.to_string(), "true".to_string());
    let host_config = HostConfig {
        memory: spec
            .memory_bytes
            .map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
        nano_cpus: spec.nano_cpus,
        network_mode: Some(spec.network.clone()),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        privileged: Some(false),
        publish_all_ports: Some(false),
        mounts: (!spec.mounts.is_empty()).then(|| {
            spec.mounts
                .iter()
                .map(|m| {
                    let (typ, source) = match &m.source {
                        MountSourceSpec::Volume { name, .. } => {
                            (bollard::models::MountType::VOLUME, name.clone())
                        }
                        MountSourceSpec::HostPath(path) => {
                            (bollard::models::MountType::BIND, path.clone())
                        }
                    };
                    bollard::models::Mount {
                        target: Some(m.target.clone()),
                        source: Some(source),
                        typ: Some(typ),
                        read_only: Some(m.read_only),
                        ..Default::default()
                    }
                })
                .collect()
        }),
        port_bindings: spec.publish.map(|p| {
            HashMap::from([(
                format!("{}/tcp", p.container_port),
                Some(vec![bollard::models::PortBinding {
                    host_ip: Some(p.host_ip.to_string()),
                    host_port: Some(p.host_port.to_string()),
                }]),
            )])
        }),
        ..Default::default()
    };
    ContainerCreateBody {
        exposed_ports: spec
            .publish
            .map(|p| vec![format!("{}/tcp", p.container_port)]),
        image: Some(spec.image.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(labels),
        stop_timeout: Some(i64::try_from(spec.stop_grace.as_secs()).unwrap_or(i64::MAX)),
        host_config: Some(host_config),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(spec.network.clone(), endpoint(spec))])),
        }),
        ..Default::default()
    }
}

fn endpoint(spec: &ContainerSpec) -> EndpointSettings {
    EndpointSettings {
        aliases: (!spec.aliases.is_empty()).then(|| spec.aliases.clone()),
        ..Default::default()
    }
}

/// The addresses of a container by network name; networks without an address are left out.
fn endpoint_ips(networks: HashMap<String, EndpointSettings>) -> BTreeMap<String, IpAddr> {
    networks
        .into_iter()
        .filter_map(|(network, endpoint)| {
            let ip: IpAddr = endpoint.ip_address.as_deref()?.parse().ok()?;
            Some((network, ip))
        })
        .collect()
}

fn container_info(resp: ContainerInspectResponse) -> ContainerInfo {
    let config = resp.config.unwrap_or_default();
    let state = resp.state.unwrap_or_default();
    let status = match state.status {
        Some(ContainerStateStatusEnum::CREATED) => ContainerState::Created,
        Some(ContainerStateStatusEnum::RUNNING) => ContainerState::Running,
        Some(ContainerStateStatusEnum::PAUSED) => ContainerState::Paused,
        Some(ContainerStateStatusEnum::RESTARTING) => ContainerState::Restarting,
        Some(ContainerStateStatusEnum::REMOVING) => ContainerState::Removing,
        Some(ContainerStateStatusEnum::EXITED) => ContainerState::Exited,
        Some(ContainerStateStatusEnum::DEAD) => ContainerState::Dead,
        // "stopping" only exists in newer engines; the process is still there.
        Some(ContainerStateStatusEnum::STOPPING) => ContainerState::Running,
        Some(ContainerStateStatusEnum::EMPTY) | None => ContainerState::Unknown,
    };
    let ips = endpoint_ips(
        resp.network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default(),
    );
    ContainerInfo {
        id: resp.id.unwrap_or_default(),
        name: resp
            .name
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default(),
        // The reference the container was created from (`orca-testapp:latest`), not the
        // image id the engine resolved it to.
        image: config.image.or(resp.image).unwrap_or_default(),
        labels: Arc::new(config.labels.unwrap_or_default().into_iter().collect()),
        state: status,
        ips,
        exit_code: matches!(status, ContainerState::Exited | ContainerState::Dead)
            .then_some(state.exit_code)
            .flatten(),
        oom_killed: state.oom_killed.unwrap_or(false),
        created_unix: resp
            .created
            .as_deref()
            .and_then(rfc3339_to_unix)
            .unwrap_or(0),
        started_at: state.started_at.filter(|t| is_set(t)),
        finished_at: state.finished_at.filter(|t| is_set(t)),
    }
}

/// The engine writes Go's zero time (`0001-01-01T00:00:00Z`) for "never".
fn is_set(timestamp: &str) -> bool {
    !timestamp.is_empty() && !timestamp.starts_with("0001-01-01")
}

fn runtime_event(msg: EventMessage) -> Option<RuntimeEvent> {
    let actor = msg.actor?;
    Some(RuntimeEvent {
        id: actor.id?,
        action: msg.action?,
        labels: actor.attributes.unwrap_or_default().into_iter().collect(),
    })
}

fn log_lines(output: bollard::container::LogOutput) -> Vec<LogLine> {
    use bollard::container::LogOutput;
    let (stream, message) = match output {
        LogOutput::StdOut { message } | LogOutput::Console { message } => {
            (LogStream::Stdout, message)
        }
        LogOutput::StdErr { message } => (LogStream::Stderr, message),
        LogOutput::StdIn { .. } => return Vec::new(),
    };
    let text = String::from_utf8_lossy(&message);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    text.split('\n')
        .map(|line| {
            let line = line.strip_suffix('\r').unwrap_or(line);
            // With `timestamps`, every line starts with the engine's RFC 3339 time and a space.
            let (time, text) = match line.split_once(' ') {
                Some((t, rest)) if is_log_timestamp(t) => (Some(t.to_string()), rest),
                _ => (None, line),
            };
            LogLine {
                stream,
                text: text.to_string(),
                time,
            }
        })
        .collect()
}

/// Whether `t` looks like the engine's log timestamp (`2024-05-01T12:00:00.123456789Z`).
fn is_log_timestamp(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() >= 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[10] == b'T'
        && (b[b.len() - 1] == b'Z' || b[19..].iter().any(|c| matches!(c, b'+' | b'-')))
}

/// Splits an image reference into the `fromImage` and `tag` of a pull. Without a tag the
/// engine would pull *every* tag of the repository, so `latest` is made explicit.
fn split_reference(image: &str) -> (&str, Option<&str>) {
    if image.contains('@') {
        return (image, None);
    }
    let last_segment = image.rsplit('/').next().unwrap_or(image);
    match last_segment.rsplit_once(':') {
        Some((_, tag)) => (&image[..image.len() - tag.len() - 1], Some(tag)),
        None => (image, Some("latest")),
    }
}

/// The HTTP status of an engine error response, if it was one.
pub(crate) fn status(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The engine's own message for a failed request, or the client error.
pub(crate) fn reason(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        BollardError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

/// Classifies a bollard error: transport failures mean the engine is unavailable; anything
/// the engine answered is an engine error for `op`.
pub(crate) fn map_err(op: &str, e: BollardError) -> RuntimeError {
    match &e {
        BollardError::DockerResponseServerError { status_code, .. } => RuntimeError::Engine {
            op: op.to_string(),
            reason: format!("{} (HTTP {status_code})", reason(&e)),
        },
        BollardError::IOError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::HyperLegacyError { .. }
        | BollardError::SocketNotFoundError(_)
        | BollardError::RequestTimeoutError => RuntimeError::Unavailable {
            reason: format!("{op}: {e}"),
        },
        _ => RuntimeError::Engine {
            op: op.to_string(),
            reason: reason(&e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_pull_one_tag() {
        assert_eq!(split_reference("nginx"), ("nginx", Some("latest")));
        assert_eq!(split_reference("nginx:1.25"), ("nginx", Some("1.25")));
        assert_eq!(
            split_reference("localhost:5000/team/app"),
            ("localhost:5000/team/app", Some("latest"))
        );
        assert_eq!(
            split_reference("localhost:5000/team/app:v2"),
            ("localhost:5000/team/app", Some("v2"))
        );
        assert_eq!(
            split_reference("app@sha256:abcd"),
            ("app@sha256:abcd", None)
        );
    }

    #[test]
    fn create_body_is_locked_down() {
        let spec = ContainerSpec {
            name: "web-1".into(),
            image: "orca-testapp:latest".into(),
            env: vec![("A".into(), "1".into())],
            labels: BTreeMap::from([("orca.service".into(), "web".into())]),
            network: "orca-net".into(),
            aliases: vec!["web".into()],
            memory_bytes: Some(64 << 20),
            nano_cpus: Some(500_000_000),
            stop_grace: Duration::from_secs(7),
            ..Default::default()
        };
        let body = create_body(&spec);
        let labels = body.labels.as_ref().unwrap();
        assert_eq!(labels.get(LABEL_MANAGED).map(String::as_str), Some("true"));
        assert_eq!(labels.get("orca.service").map(String::as_str), Some("web"));
        assert_eq!(body.env, Some(vec!["A=1".to_string()]));
        assert_eq!(body.stop_timeout, Some(7));
        let host = body.host_config.as_ref().unwrap();
        assert_eq!(host.port_bindings, None);
        assert_eq!(host.publish_all_ports, Some(false));
        assert_eq!(host.privileged, Some(false));
        assert_eq!(host.network_mode.as_deref(), Some("orca-net"));
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(
            host.restart_policy.as_ref().unwrap().name,
            Some(RestartPolicyNameEnum::NO)
        );
        assert!(body.exposed_ports.is_none());
    }

    #[test]
    fn log_output_splits_into_lines() {
        let lines = log_lines(bollard::container::LogOutput::StdErr {
            message: bytes::Bytes::from_static(
                b"2024-05-01T12:00:00.000000001Z one\r\n2024-05-01T12:00:00.100000000Z two words\n",
            ),
        });
        assert_eq!(
            lines,
            vec![
                LogLine {
                    stream: LogStream::Stderr,
                    text: "one".into(),
                    time: Some("2024-05-01T12:00:00.000000001Z".into()),
                },
                LogLine {
                    stream: LogStream::Stderr,
                    text: "two words".into(),
                    time: Some("2024-05-01T12:00:00.100000000Z".into()),
                },
            ]
        );
        let plain = log_lines(bollard::container::LogOutput::StdOut {
            message: bytes::Bytes::from_static(b"no time here\n"),
        });
        assert_eq!(plain[0].text, "no time here");
        assert_eq!(plain[0].time, None);
    }
}
