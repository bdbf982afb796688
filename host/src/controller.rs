//! The controller, the impure shell of a pass: observe, drive rollouts, build the snapshot,
//! `orca_core::decide`, publish, execute.
//!
//! One loop runs passes one at a time, so two passes never race over the same container.
//! A pass is triggered by a store change (API), a Docker event (a container died), a
//! readiness flip (health checker), a timer the decision or a rollout asked for, or the
//! watchdog tick — the safety net when an event was missed. Each pass publishes the
//! decision's routing table, probe targets and status view before any container changes
//! (instances being removed are already out of them), so traffic leaves an instance before
//! it is stopped. The controller is the one writer of `rollouts`: operator requests are read
//! with the rest of the store and consumed in the step's transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use futures::StreamExt;
use orca_config::ServiceSpec;
use orca_core::{
    Decision, DesiredGroup, InstanceState, Remove, RevisionFacts, RunState, ServiceState, Snapshot,
    Start,
};
use orca_docker::{ContainerRuntime, ContainerSpec, ContainerState, NodeInfo, RuntimeError};
use orca_proxy::{Backend, Route, RouteTable, Routes};
use orca_store::{
    DesiredState, OperatorRequest, RequestKind, RevisionRecord, RolloutPhase, RolloutRecord,
    SecretBox, ServiceRecord, Store,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::deploy;
use crate::health::{Health, Target, Verdicts};
use crate::instance::{self, Instance};
use crate::metrics::Metrics;
use crate::nodes::{NodeRuntime, Nodes};
use crate::plugins::types::{self, NodeCount, PlacementRequest, Readiness, RolloutState, Traffic};
use crate::plugins::World;
use crate::reconciler;
use crate::registry::Registry;
use crate::rollout;

mod networks;
mod rebalance;
mod swarm;

/// Grace period between SIGTERM and SIGKILL when orca stops an instance.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What the last pass saw: the basis of `status`, `logs` and `cluster/info`.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Containers of this cluster (shared with the pass that observed them).
    pub instances: Arc<Vec<Instance>>,
    /// Last error per service key (start failure, unresolved secret, unplaceable...).
    pub errors: BTreeMap<String, String>,
    /// Services in crash back-off, with the time (ms since epoch) they may start again.
    pub backing_off: BTreeMap<String, u64>,
    /// Services whose starts wait, with why (`waiting for db`, `stop-first: volume data is
    /// not shared`).
    pub waiting: BTreeMap<String, String>,
    /// When a progressing rollout wants the next pass (ms since epoch).
    pub next_wake_ms: Option<u64>,
    /// Instances that were ready when the routing table was published: what `status` calls
    /// ready is exactly what the proxy routes to.
    pub ready: orca_core::FastSet<String>,
    /// Each instance's address on its own revision's port.
    pub addresses: orca_core::FastMap<String, SocketAddr>,
    /// Unix ms of the pass.
    pub observed_at_ms: u64,
}

/// Bookkeeping that survives between passes (in memory only: it is rebuilt from
/// observation after a restart).
#[derive(Default)]
struct Memory {
    /// Consecutive failures per service, for crash back-off.
    failures: HashMap<String, u32>,
    /// Earliest next start per service.
    not_before: HashMap<String, u64>,
    /// Failed containers already counted.
    counted: HashSet<String>,
    /// Instances being drained and stopped by a background task.
    removing: HashSet<String>,
    /// Last error per service.
    errors: BTreeMap<String, String>,
    /// Networks of this cluster that may exist (created or seen), removed once unused.
    networks: BTreeSet<String>,
    /// Legacy networks (see `instance::legacy_networks_to_join`) per project, this pass.
    legacy: HashMap<String, Vec<String>>,
    /// The cluster's swarm (overlay networks between nodes).
    swarm: swarm::SwarmMemory,
    /// Each remote node's last successful listing: while the node does not answer but is
    /// not `down` yet, its instances keep their slots (unrouted) instead of being replaced.
    listed: HashMap<String, Vec<Instance>>,
    /// Which nodes hold each named volume (Docker name → node names), from each node's last
    /// successful volume listing: an instance follows its volume, also while that node is
    /// down (it then stays pending rather than starting on a new, empty volume elsewhere).
    volume_nodes: BTreeMap<String, Vec<String>>,
}

/// Everything a pass needs.
pub struct Controller<R: ContainerRuntime> {
    runtime: Arc<R>,
    store: Store,
    secrets: Arc<SecretBox>,
    registry: Registry,
    routes: Routes,
    health: Health,
    metrics: Metrics,
    cluster: String,
    node: NodeInfo,
    wake: Arc<Notify>,
    view: Arc<ArcSwap<View>>,
    memory: Arc<Mutex<Memory>>,
    in_flight: InFlight,
    route_stats: orca_proxy::RouteStats,
    events: crate::events::Events,
    /// Remote nodes (agents); `None`: the master's engine only.
    nodes: Option<Arc<Nodes>>,
    /// Host ports remote instances are published on (`[nodes] host_ports`).
    host_ports: (u16, u16),
    /// The cluster's id (labels the swarm orca makes).
    cluster_id: String,
    /// `[nodes] overlay_pools`, for the swarm orca makes.
    overlay_pools: Vec<String>,
    /// `[nodes] drain_parallel`: evicted instances replaced at once, cluster-wide.
    drain_parallel: u32,
    /// `[volumes] host_paths`: where bind mounts may come from (checked again at start).
    host_paths: Vec<std::path::PathBuf>,
    /// Services being rebalanced (`orca rebalance`) and the instances moved for them.
    rebalancing: Arc<Mutex<rebalance::Rebalancing>>,
    /// One image shipment per (node, image) at a time.
    shipping: Mutex<HashMap<(String, String), ShipLock>>,
    /// Services held stopped (`project/name`) while a backup or restore works on their
    /// volumes: a pass treats them as stopped, their desired state untouched.
    held: Arc<Mutex<HashSet<String>>>,
}

/// How long a pass waits for a remote node's listing before using its last one.
const REMOTE_LIST_TIMEOUT: Duration = Duration::from_secs(5);

/// Held while an image is shipped to a node.
type ShipLock = Arc<tokio::sync::Mutex<()>>;

/// Where one start of a pass runs: the node, its runtime, and for a remote node the
/// address and host port its instance publishes.
struct Placed<R: ContainerRuntime> {
    node: String,
    runtime: NodeRuntime<R>,
    publish: Option<(std::net::IpAddr, u16)>,
    /// Whether the node's engine is in the cluster's swarm (its instances join overlays).
    overlay: bool,
}

/// A node as one pass sees it.
struct PassNode<R: ContainerRuntime> {
    name: String,
    runtime: NodeRuntime<R>,
    /// `None` for the master's own engine.
    remote: Option<crate::nodes::LiveNode>,
    /// Whether its engine is in the cluster's swarm this pass.
    on_overlay: bool,
}

/// A handle for the API: wake the controller, read its view.
#[derive(Clone)]
pub struct ControllerHandle {
    wake: Arc<Notify>,
    view: Arc<ArcSwap<View>>,
    health: Health,
    rebalancing: Arc<Mutex<rebalance::Rebalancing>>,
    held: Arc<Mutex<HashSet<String>>>,
}

impl ControllerHandle {
    /// Holds `service` (`project/name`) stopped: its instances are drained and removed as
    /// by `orca stop`, but its desired state stays as it is, until [`release`](Self::release).
    pub fn hold(&self, service: &str) {
        self.held
            .lock()
            .expect("hold lock")
            .insert(service.to_string());
        self.wake.notify_one();
    }

    /// Ends a [`hold`](Self::hold): the service runs again as its desired state says.
    pub fn release(&self, service: &str) {
        self.held.lock().expect("hold lock").remove(service);
        self.wake.notify_one();
    }

    /// Starts rebalancing `service` (`project/name`) over its eligible nodes.
    pub fn rebalance(&self, service: String) {
        self.rebalancing
            .lock()
            .expect("rebalance lock")
            .request(service);
        self.wake.notify_one();
    }

    /// Asks for a pass as soon as possible.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The last published view.
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// The health verdicts.
    pub fn health(&self) -> &Health {
        &self.health
    }
}

impl<R: ContainerRuntime> Controller<R> {
    /// Builds a controller; nothing runs until `run`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        runtime: Arc<R>,
        store: Store,
        secrets: Arc<SecretBox>,
        registry: Registry,
        routes: Routes,
        health: Health,
        metrics: Metrics,
        cluster: String,
        node: NodeInfo,
        in_flight: InFlight,
        route_stats: orca_proxy::RouteStats,
    ) -> Controller<R> {
        Controller {
            runtime,
            store,
            secrets,
            registry,
            routes,
            health,
            metrics,
            cluster,
            node,
            wake: Arc::new(Notify::new()),
            view: Arc::new(ArcSwap::from_pointee(View::default())),
            memory: Arc::new(Mutex::new(Memory::default())),
            in_flight,
            route_stats,
            events: crate::events::Events::disabled(),
            nodes: None,
            host_ports: (20000, 29999),
            cluster_id: String::new(),
            overlay_pools: Vec::new(),
            drain_parallel: 2,
            host_paths: Vec::new(),
            rebalancing: Arc::default(),
            shipping: Mutex::new(HashMap::new()),
            held: Arc::default(),
        }
    }

    /// Places instances on the agent nodes of `nodes` too, publishing remote instances on
    /// host ports from `host_ports`.
    pub fn with_nodes(
        mut self,
        nodes: Arc<Nodes>,
        host_ports: (u16, u16),
        overlay_pools: Vec<String>,
        drain_parallel: u32,
    ) -> Controller<R> {
        self.cluster_id = nodes.cluster_id().to_string();
        self.overlay_pools = overlay_pools;
        self.drain_parallel = drain_parallel.max(1);
        self.nodes = Some(nodes);
        self.host_ports = host_ports;
        self
    }

    /// Allows bind mounts of host paths under `host_paths` (`[volumes]` of cluster.toml).
    pub fn with_host_paths(mut self, host_paths: Vec<std::path::PathBuf>) -> Controller<R> {
        self.host_paths = host_paths;
        self
    }

    /// Updates which nodes hold which named volumes from every node of this pass that
    /// answers its volume listing (bounded); a node that does not keeps what it last said.
    async fn refresh_volume_nodes(&self, nodes: &[PassNode<R>]) {
        let listed = futures::future::join_all(nodes.iter().map(|n| async move {
            let listing = tokio::time::timeout(REMOTE_LIST_TIMEOUT, n.runtime.list_volumes()).await;
            (n.name.clone(), listing)
        }))
        .await;
        let mut mem = self.memory.lock().expect("controller memory lock");
        for (node, listing) in listed {
            let Ok(Ok(volumes)) = listing else {
                debug!(node = %node, "no volume listing from a node; keeping what it last said");
                continue;
            };
            for holders in mem.volume_nodes.values_mut() {
                holders.retain(|n| *n != node);
            }
            for v in volumes {
                if v.labels.get(instance::LABEL_CLUSTER) == Some(&self.cluster) {
                    mem.volume_nodes
                        .entry(v.name)
                        .or_default()
                        .push(node.clone());
                }
            }
            mem.volume_nodes.retain(|_, holders| !holders.is_empty());
        }
    }

    /// The nodes of this pass: the master's engine, then every ready agent node; and the
    /// names of nodes whose state is not known yet (their instances may be running).
    fn pass_nodes(&self) -> (Vec<PassNode<R>>, Vec<String>) {
        let mut out = vec![PassNode {
            name: self.node.hostname.clone(),
            runtime: NodeRuntime::Local(self.runtime.clone()),
            remote: None,
            on_overlay: false,
        }];
        let mut unsure = Vec::new();
        if let Some(nodes) = &self.nodes {
            let (live, not_yet) = nodes.live();
            unsure = not_yet;
            for n in live {
                out.push(PassNode {
                    name: n.record.name.clone(),
                    runtime: NodeRuntime::Remote(n.runtime.clone()),
                    remote: Some(n),
                    on_overlay: false,
                });
            }
        }
        (out, unsure)
    }

    /// Emits events through `events` (the default discards them).
    pub fn with_events(mut self, events: crate::events::Events) -> Controller<R> {
        self.events = events;
        self
    }

    /// Handle for the API layer.
    pub fn handle(&self) -> ControllerHandle {
        ControllerHandle {
            wake: self.wake.clone(),
            view: self.view.clone(),
            health: self.health.clone(),
            rebalancing: self.rebalancing.clone(),
            held: self.held.clone(),
        }
    }

    /// Runs the pass loop, the event watcher and the health checker until `shutdown`.
    pub async fn run(self: Arc<Self>, watchdog: Duration, shutdown: CancellationToken) {
        tokio::spawn(self.health.clone().run(self.wake.clone(), shutdown.clone()));
        tokio::spawn(self.clone().watch_events(shutdown.clone()));
        loop {
            let started = std::time::Instant::now();
            if let Err(e) = self
                .pass()
                .instrument(info_span!("orca.controller.pass"))
                .await
            {
                warn!(error = %e, "controller pass failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
            self.metrics.observe_pass(started.elapsed());
            // Wake at the earliest back-off expiry or rollout timer too, so neither is late.
            let view = self.view.load();
            let next_backoff = view
                .backing_off
                .values()
                .copied()
                .chain(view.next_wake_ms)
                .min();
            let until_backoff = next_backoff
                .map(|t| Duration::from_millis(t.saturating_sub(now_ms())))
                .unwrap_or(watchdog);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(watchdog.min(until_backoff)) => {}
            }
        }
    }

    /// Subscribes to the runtime's events and wakes a pass on each event of this cluster.
    async fn watch_events(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let mut events = self.runtime.events();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    ev = events.next() => match ev {
                        Some(Ok(ev)) => {
                            if ev.labels.get(instance::LABEL_CLUSTER) == Some(&self.cluster) {
                                debug!(id = %instance::short(&ev.id), action = %ev.action, "container event");
                                if matches!(ev.action.as_str(), "die" | "oom" | "destroy" | "stop" | "kill" | "start") {
                                    self.wake.notify_one();
                                }
                            }
                        }
                        Some(Err(e)) => { warn!(error = %e, "event stream error; resubscribing"); break; }
                        None => { warn!("event stream ended; resubscribing"); break; }
                    }
                }
            }
            // The watchdog covers the gap; resubscribe after a short pause.
            self.wake.notify_one();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// One observe → plan → publish → execute cycle.
    pub async fn pass(&self) -> anyhow::Result<()> {
        // The store as of one moment: services, their current revisions, rollouts, requests.
        let read = self.store.read_for_pass()?;
        let mut current_of = read.current;
        let mut records = read.services;
        {
            let held = self.held.lock().expect("hold lock");
            for rec in records.iter_mut().filter(|r| held.contains(&r.spec.key())) {
                rec.state = DesiredState::Stopped;
            }
        }
        let mut rollouts: HashMap<String, RolloutRecord> = read
            .rollouts
            .into_iter()
            .map(|((p, n), r)| (format!("{p}/{n}"), r))
            .collect();
        let mut requests: HashMap<String, Vec<OperatorRequest>> = HashMap::new();
        for ((p, n), q) in read.requests {
            requests.entry(format!("{p}/{n}")).or_default().push(q);
        }
        // Instances being drained and stopped are on their way out: decisions ignore them
        // (they are neither failures nor members of any revision's group). The snapshot is
        // taken BEFORE listing: an id leaves the set only once its container is gone, so every
        // listed container that is being removed is in this snapshot.
        let draining = self
            .memory
            .lock()
            .expect("controller memory lock")
            .removing
            .clone();
        let (mut pass_nodes, mut unsure) = self.pass_nodes();
        let on_overlay = self.ensure_swarm(&pass_nodes).await;
        for n in &mut pass_nodes {
            n.on_overlay = on_overlay.contains(&n.name);
        }
        // A remote node gets a short bound: a partitioned one must not stall the pass.
        let listed = futures::future::join_all(pass_nodes.iter().map(|n| async move {
            match n.remote {
                None => n.runtime.list().await,
                Some(_) => tokio::time::timeout(REMOTE_LIST_TIMEOUT, n.runtime.list())
                    .await
                    .unwrap_or_else(|_| {
                        Err(RuntimeError::Unavailable {
                            reason: format!("no answer in {REMOTE_LIST_TIMEOUT:?}"),
                        })
                    }),
            }
        }))
        .await;
        let now = now_ms();
        let mut instances: Vec<Instance> = Vec::new();
        // Nodes not answering, not yet `down`: their last listing stands in (unrouted).
        let mut stand_in: Vec<String> = Vec::new();
        for (n, result) in pass_nodes.iter().zip(listed) {
            let containers = match (result, &n.remote) {
                (Ok(c), _) => c,
                // The master's own engine must answer; a remote node that does not is
                // treated like one not yet reconnected (its instances may be running).
                (Err(e), None) => return Err(e.into()),
                (Err(e), Some(_)) => {
                    warn!(node = %n.name, error = %e, "listing a node's containers failed");
                    stand_in.push(n.name.clone());
                    continue;
                }
            };
            for c in containers {
                let Some(mut i) = Instance::from_container(&self.cluster, c) else {
                    continue;
                };
                i.node = n.name.clone();
                if let Some(remote) = &n.remote {
                    i.published = i
                        .info
                        .labels
                        .get(instance::LABEL_HOST_PORT)
                        .and_then(|p| p.parse::<u16>().ok())
                        .map(|port| SocketAddr::new(remote.advertise, port));
                }
                instances.push(i);
            }
            if n.remote.is_some() {
                let mine: Vec<Instance> = instances
                    .iter()
                    .filter(|i| i.node == n.name)
                    .cloned()
                    .collect();
                let mut mem = self.memory.lock().expect("controller memory lock");
                mem.listed.insert(n.name.clone(), mine);
            }
        }
        stand_in.append(&mut unsure);
        {
            let mem = self.memory.lock().expect("controller memory lock");
            for node in stand_in {
                match mem.listed.get(&node) {
                    Some(known) => instances.extend(known.iter().cloned().map(|mut i| {
                        i.unreachable = true;
                        i
                    })),
                    // Never listed by this master (it just restarted): unknown, so no
                    // start anywhere may replace what it runs.
                    None => unsure.push(node),
                }
            }
        }
        let lost_hold_until = self.keep_lost(&records, &pass_nodes, &unsure, now, &mut instances);
        // Shared with the status view at publish, without a copy.
        let instances: Arc<Vec<Instance>> = Arc::new(instances);
        let active: Vec<&Instance> = instances
            .iter()
            .filter(|i| !draining.contains(&i.info.id))
            .collect();
        // Each service's instances, indexed once: the per-service work below touches only
        // its own (O(instances) per pass, not O(services × instances)).
        let mut of_service: orca_core::FastMap<&str, Vec<&Instance>> =
            orca_core::FastMap::with_capacity_and_hasher(records.len(), Default::default());
        for i in &active {
            of_service.entry(i.service.as_str()).or_default().push(i);
        }
        // Readiness and liveness as of now, read once for the whole pass.
        let verdicts = self
            .health
            .verdicts(instances.iter().map(|i| i.info.id.as_str()));
        {
            let mut mem = self.memory.lock().expect("controller memory lock");
            self.account_failures(&mut mem, &records, &active, &verdicts);
        }
        self.events.observe_instances(&active, &verdicts);

        let mut revisions: HashMap<String, RevisionRecord> = HashMap::new();
        let mut splits: HashMap<String, Split> = HashMap::new();
        let mut desired = Vec::with_capacity(records.len());
        for rec in &records {
            let key = rec.spec.key();
            let mine = of_service
                .get(key.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let running = rec.state == DesiredState::Running;
            let not_before = self
                .memory
                .lock()
                .expect("controller memory lock")
                .not_before
                .get(&key)
                .copied();
            // A record that cannot be decoded affects only its own service: it is named in
            // its status and its running instances are kept.
            let current = match current_of.remove(&key).unwrap_or(Ok(None)) {
                Ok(current) => current,
                Err(e) => {
                    self.set_error(&key, e);
                    desired.push(ServiceState {
                        groups: keep_running(mine),
                        domain: rec.spec.domain.clone(),
                        traffic: None,
                        key,
                        running,
                        not_before_ms: not_before,
                        max_migrating: max_migrating(&rec.spec),
                        exclusive: exclusive_volume(&rec.spec),
                        depends_on: dependency_keys(&rec.spec),
                    });
                    continue;
                }
            };
            let groups = match current {
                None => {
                    self.set_error(&key, "no revision record: deploy the service again".into());
                    keep_running(mine)
                }
                Some(cur) if !running => {
                    // A stopped service ends its rollout and the requests made against it.
                    let pending = requests.get(&key).map(Vec::as_slice).unwrap_or_default();
                    if rollouts.remove(&key).is_some() || !pending.is_empty() {
                        self.step_rollout(&key, rec.spec.project(), &rec.spec.name, pending, None)?;
                    }
                    revisions.insert(cur.fingerprint.clone(), cur);
                    Vec::new()
                }
                Some(cur) => {
                    let groups = self
                        .drive(
                            rec,
                            &cur,
                            rollouts.remove(&key),
                            requests.get(&key).map(Vec::as_slice).unwrap_or_default(),
                            mine,
                            &verdicts,
                            now,
                            &mut revisions,
                            &mut splits,
                        )
                        .await;
                    let groups = match groups {
                        Ok(groups) => groups,
                        Err(e) => {
                            self.set_error(&key, format!("{e:#}"));
                            keep_running(mine)
                        }
                    };
                    revisions.insert(cur.fingerprint.clone(), cur);
                    groups
                }
            };
            let traffic = splits.get(&key).and_then(|s| s.traffic.clone());
            desired.push(ServiceState {
                key,
                running,
                domain: rec.spec.domain.clone(),
                groups,
                traffic,
                not_before_ms: not_before,
                max_migrating: max_migrating(&rec.spec),
                exclusive: exclusive_volume(&rec.spec),
                depends_on: dependency_keys(&rec.spec),
            });
        }
        // Rollout records (and requests) of services that no longer exist.
        let known: HashSet<String> = records.iter().map(|r| r.spec.key()).collect();
        let gone: BTreeSet<&String> = rollouts
            .keys()
            .chain(requests.keys().filter(|k| !known.contains(*k)))
            .collect();
        for key in gone {
            if let Some((p, n)) = key.split_once('/') {
                let pending = requests.get(key).map(Vec::as_slice).unwrap_or_default();
                self.step_rollout(key, p, n, pending, None)?;
            }
        }

        // Every instance is handled with its own revision's facts: look up the revision of
        // each fingerprint not yet known (instances of older revisions, still running).
        let by_key: HashMap<String, &ServiceRecord> =
            records.iter().map(|r| (r.spec.key(), r)).collect();
        for i in instances.iter() {
            if revisions.contains_key(&i.fingerprint) {
                continue;
            }
            let Some((project, name)) = i.service.split_once('/') else {
                continue;
            };
            match self.store.get_revision(project, name, i.revision) {
                Ok(Some(rev)) if rev.fingerprint == i.fingerprint => {
                    revisions.insert(rev.fingerprint.clone(), rev);
                }
                // A revision record that cannot be decoded affects only its own service.
                Err(e) => self.set_error(&i.service, e.to_string()),
                _ => {
                    debug!(service = %i.service, revision = i.revision, "no revision record for an instance; using the service's spec")
                }
            }
        }
        let mut facts: BTreeMap<String, RevisionFacts> = revisions
            .iter()
            .map(|(fp, rev)| (fp.clone(), RevisionFacts::of(&rev.spec)))
            .collect();
        for i in instances.iter() {
            if let (false, Some(rec)) = (facts.contains_key(&i.fingerprint), by_key.get(&i.service))
            {
                facts.insert(i.fingerprint.clone(), RevisionFacts::of(&rec.spec));
            }
        }
        // Instances on a draining node are to leave it (by its deadline, if it has one).
        let evict_at: HashMap<&str, u64> = pass_nodes
            .iter()
            .filter_map(|n| n.remote.as_ref())
            .filter(|r| r.record.draining)
            .map(|r| {
                (
                    r.record.name.as_str(),
                    r.record.drain_deadline_ms.unwrap_or(u64::MAX),
                )
            })
            .collect();
        let specs: BTreeMap<String, &ServiceSpec> = records
            .iter()
            .filter(|r| r.state == DesiredState::Running)
            .map(|r| (r.spec.key(), &r.spec))
            .collect();
        let moved = self.rebalance_evictions(&specs, &active, &pass_nodes, &verdicts);
        let snapshot = Snapshot {
            now_ms: now,
            services: desired,
            revisions: facts,
            migrate_limit: Some(self.drain_parallel),
            instances: instances
                .iter()
                .map(|i| {
                    let verdict = verdicts.get(&i.info.id);
                    InstanceState {
                        id: i.info.id.clone(),
                        service: i.service.clone(),
                        fingerprint: i.fingerprint.clone(),
                        slot: i.slot,
                        run: match i.info.state {
                            ContainerState::Created => RunState::Created,
                            ContainerState::Running => RunState::Running,
                            ContainerState::Exited | ContainerState::Dead => RunState::Failed,
                            _ => RunState::Other,
                        },
                        created_at_ms: (i.info.created_unix.max(0) as u64).saturating_mul(1000),
                        ip: i.project_ip(&self.cluster),
                        published: i.published,
                        ready: verdict.ready && !i.unreachable,
                        restart: verdict.restart.is_some() && !i.unreachable,
                        draining: draining.contains(&i.info.id),
                        evict: evict_at
                            .get(i.node.as_str())
                            .copied()
                            .or_else(|| moved.contains(&i.info.id).then_some(u64::MAX)),
                    }
                })
                .collect(),
        };
        let mut decision = orca_core::decide(&snapshot);
        if !decision.starts.is_empty() && records.iter().any(has_named_volume) {
            self.refresh_volume_nodes(&pass_nodes).await;
        }
        let next_wake = splits
            .values()
            .filter_map(|s| s.wake_at_ms)
            .chain(decision.wake_at_ms)
            .chain(self.nodes.as_ref().and_then(|n| n.next_change_ms()))
            .chain(lost_hold_until)
            .min();
        if !unsure.is_empty() && !decision.starts.is_empty() {
            // A node not heard from yet (master just restarted, or within node_ttl of its
            // last heartbeat) may still run the instances these starts would replace: hold
            // them until it reconnects or is down.
            debug!(nodes = ?unsure, held = decision.starts.len(), "starts held until every node's state is known");
            decision.starts.clear();
        }
        self.publish(
            &records,
            &instances,
            &verdicts,
            &mut decision,
            next_wake,
            now,
        );
        let unused_networks = self.unused_networks(&records, &instances);

        if decision.is_idle() {
            self.remove_networks(unused_networks).await;
            return Ok(());
        }
        info!(
            removes = decision.removes.len(),
            starts = decision.starts.len(),
            "executing decision"
        );
        let acted = self
            .execute(decision, &records, &revisions, &instances, &pass_nodes)
            .await;
        self.remove_networks(unused_networks).await;
        if acted {
            // Observe the result right away. (When nothing could be done, such as a start
            // blocked by a container still draining under the same name, the drain's end
            // wakes the loop instead.)
            self.wake.notify_one();
        }
        Ok(())
    }

    fn account_failures(
        &self,
        mem: &mut Memory,
        records: &[ServiceRecord],
        instances: &[&Instance],
        verdicts: &Verdicts,
    ) {
        if !mem.counted.is_empty() {
            let live_ids: orca_core::FastSet<&str> =
                instances.iter().map(|i| i.info.id.as_str()).collect();
            mem.counted.retain(|id| live_ids.contains(id.as_str()));
        }
        for i in instances {
            if let Some(reason) = &verdicts.get(&i.info.id).restart {
                if mem.counted.insert(i.info.id.clone()) {
                    let n = mem.failures.entry(i.service.clone()).or_default();
                    *n += 1;
                    let delay = reconciler::backoff_ms(*n);
                    mem.not_before.insert(i.service.clone(), now_ms() + delay);
                    let reason = format!("instance {} restarted: {reason}", i.info.name);
                    warn!(service = %i.service, %reason, "liveness failure");
                    mem.errors.insert(i.service.clone(), reason);
                }
                continue;
            }
            if i.is_failed() && mem.counted.insert(i.info.id.clone()) {
                let n = mem.failures.entry(i.service.clone()).or_default();
                *n += 1;
                let delay = reconciler::backoff_ms(*n);
                mem.not_before.insert(i.service.clone(), now_ms() + delay);
                let mut reason = format!(
                    "instance {} exited with code {}",
                    i.info.name,
                    i.info.exit_code.unwrap_or(-1)
                );
                if i.info.oom_killed {
                    reason.push_str(" (OOM killed: raise resources.memory)");
                }
                warn!(service = %i.service, %reason, "instance failed");
                mem.errors.insert(i.service.clone(), reason);
            }
        }
        // A ready instance ends a crash loop.
        for i in instances {
            if i.is_running() && verdicts.ready(&i.info.id) {
                mem.failures.remove(&i.service);
                mem.not_before.remove(&i.service);
                mem.errors.remove(&i.service);
            }
        }
        let keys: HashSet<String> = records.iter().map(|r| r.spec.key()).collect();
        mem.errors.retain(|k, _| keys.contains(k));
    }

    fn set_error(&self, key: &str, reason: String) {
        self.memory
            .lock()
            .expect("controller memory lock")
            .errors
            .insert(key.to_string(), reason);
    }

    /// Drives the rollout of one running service and returns the instance groups it needs.
    ///
    /// The controller is the one writer of the service's rollout record: each step is one
    /// store transaction that also consumes the operator requests (`requests`, read in this
    /// pass's snapshot) it acted on. A step the store refuses — a request arrived while the
    /// strategy was being called — is planned again on the next pass, with the request.
    #[allow(clippy::too_many_arguments)]
    async fn drive(
        &self,
        rec: &ServiceRecord,
        cur: &RevisionRecord,
        rollout: Option<RolloutRecord>,
        requests: &[OperatorRequest],
        instances: &[&Instance],
        verdicts: &Verdicts<'_>,
        now: u64,
        revisions: &mut HashMap<String, RevisionRecord>,
        splits: &mut HashMap<String, Split>,
    ) -> anyhow::Result<Vec<DesiredGroup>> {
        let key = rec.spec.key();
        let (project, name) = (rec.spec.project(), rec.spec.name.as_str());
        let steady = vec![DesiredGroup {
            fingerprint: cur.fingerprint.clone(),
            count: rec.spec.replicas,
        }];
        // `instances` are this service's only.
        let live: Vec<&Instance> = instances
            .iter()
            .copied()
            .filter(|i| !i.is_failed())
            .collect();
        let seen: Vec<u64> = requests.iter().map(|q| q.seq).collect();

        let mut r = match rollout {
            // The rollout of this revision finished: whatever else runs is superseded.
            Some(r) if r.candidate_revision == cur.number && r.phase == RolloutPhase::Finished => {
                if !seen.is_empty() {
                    self.step_rollout(&key, project, name, requests, Some(&r))?;
                }
                return Ok(steady);
            }
            Some(r) if r.candidate_revision == cur.number => r,
            previous => {
                let others: Vec<&&Instance> = live
                    .iter()
                    .filter(|i| i.fingerprint != cur.fingerprint)
                    .collect();
                if others.is_empty() {
                    if previous.is_some() || !seen.is_empty() {
                        self.step_rollout(&key, project, name, requests, None)?;
                    }
                    return Ok(steady);
                }
                // Roll out from the revision most live instances run (ties: the newest).
                let mut counts: BTreeMap<u64, u32> = BTreeMap::new();
                for i in &others {
                    *counts.entry(i.revision).or_default() += 1;
                }
                let (stable, running) = counts
                    .iter()
                    .max_by_key(|(rev, n)| (**n, **rev))
                    .map(|(r, n)| (*r, *n))
                    .expect("others is not empty");
                let strategy = cur
                    .spec
                    .deploy
                    .as_ref()
                    .and_then(|d| d.strategy.clone())
                    .unwrap_or_else(|| rollout::DEFAULT_STRATEGY.to_string());
                info!(service = %key, from = stable, to = cur.number, %strategy, "rollout started");
                let r = rollout::start(Some(stable), running, cur.number, &strategy, now);
                self.events.rollout_started(&key, &r);
                // Requests made against the replaced rollout end with it.
                if !self.step_rollout(&key, project, name, requests, Some(&r))? {
                    self.wake.notify_one();
                }
                r
            }
        };

        let stable_rec = match r.stable_revision {
            Some(n) => self.store.get_revision(project, name, n)?,
            None => None,
        };
        let stable_fp = stable_rec
            .as_ref()
            .map(|s| s.fingerprint.clone())
            .or_else(|| {
                live.iter()
                    .find(|i| Some(i.revision) == r.stable_revision)
                    .map(|i| i.fingerprint.clone())
            });
        if let Some(s) = stable_rec {
            revisions.insert(s.fingerprint.clone(), s);
        }

        if r.phase == RolloutPhase::Progressing {
            // Apply the operator's requests made against this rollout (others are stale).
            let mut asked = r.clone();
            for q in requests
                .iter()
                .filter(|q| q.candidate_revision == r.candidate_revision)
            {
                info!(service = %key, request = ?q.kind, seq = q.seq, "operator request applied");
                match q.kind {
                    RequestKind::Promote => asked.promote_requested = true,
                    RequestKind::Rollback => asked.rollback_requested = true,
                }
            }
            // Every request reaches the strategy, a rollback too (`rollback-requested`): it
            // decides how to return; the host overrules one that does not roll back.
            let state = self.rollout_state(
                rec,
                cur,
                &asked,
                stable_fp.as_deref(),
                instances,
                verdicts,
                now,
            );
            let registry = self.registry.clone();
            let strategy = asked.strategy.clone();
            let result = tokio::task::spawn_blocking(move || {
                let plugin = registry
                    .resolve(&strategy, World::Strategy)
                    .map_err(|e| e.to_string())?;
                plugin.plan(&state).map_err(|e| e.to_string())
            })
            .instrument(info_span!("orca.rollout.plan", service = %key))
            .await
            .unwrap_or_else(|e| Err(format!("strategy call panicked: {e}")));
            let outcome = if asked.rollback_requested {
                rollout::operator_rollback(&asked, result, now)
            } else {
                match result {
                    Ok(step) => rollout::apply(asked.clone(), step, now),
                    Err(reason) => {
                        rollout::Outcome::RolledBack(rollout::fail(asked.clone(), reason, now))
                    }
                }
            };
            let next = match outcome {
                rollout::Outcome::Progressing(next) => next,
                rollout::Outcome::Finished => {
                    let mut done = asked.clone();
                    done.phase = RolloutPhase::Finished;
                    done.updated_at_ms = now;
                    done.wait_until_ms = None;
                    done.traffic = None;
                    done
                }
                rollout::Outcome::RolledBack(next) => next,
            };
            if !self.step_rollout(&key, project, name, requests, Some(&next))? {
                // A request arrived during the strategy call: plan again with it, keeping
                // the groups of the last stored step meanwhile.
                debug!(service = %key, "operator request arrived during the step; planning again");
                self.wake.notify_one();
            } else {
                self.events.rollout_progress(&key, &r, &next);
                match &next.phase {
                    RolloutPhase::Finished => {
                        info!(service = %key, revision = cur.number, "rollout finished");
                        self.events.rollout_finished(&key, cur.number);
                        return Ok(steady);
                    }
                    RolloutPhase::RolledBack { reason } | RolloutPhase::Failed { reason } => {
                        warn!(service = %key, revision = cur.number, %reason, "rollout rolled back");
                    }
                    RolloutPhase::Progressing => {}
                }
                r = next;
            }
        } else if !seen.is_empty() {
            // Requests against a rollout that already ended change nothing; consume them.
            self.step_rollout(&key, project, name, requests, Some(&r))?;
        }

        let progressing = r.phase == RolloutPhase::Progressing;
        splits.insert(
            key,
            Split {
                // Weights apply while a rollout progresses from a stable revision.
                traffic: match (progressing, &stable_fp, r.traffic) {
                    (true, Some(_), Some((stable, candidate))) => Some(orca_core::Traffic {
                        candidate_fingerprint: cur.fingerprint.clone(),
                        stable,
                        candidate,
                    }),
                    _ => None,
                },
                // A progressing rollout is re-planned at least every second and at its wait time.
                wake_at_ms: progressing
                    .then(|| r.wait_until_ms.unwrap_or(u64::MAX).min(now + 1_000)),
            },
        );
        Ok(rollout::groups(
            &r,
            stable_fp.as_deref(),
            &cur.fingerprint,
            rec.spec.replicas,
        ))
    }

    /// One rollout step in one store transaction, consuming `requests` (false: a newer
    /// request arrived meanwhile, nothing written); each consumed request is an event.
    fn step_rollout(
        &self,
        key: &str,
        project: &str,
        name: &str,
        requests: &[OperatorRequest],
        next: Option<&RolloutRecord>,
    ) -> anyhow::Result<bool> {
        let seen: Vec<u64> = requests.iter().map(|q| q.seq).collect();
        let stored = self.store.step_rollout(project, name, next, &seen)?;
        if stored {
            for q in requests {
                self.events.request_applied(key, q, next);
            }
        }
        Ok(stored)
    }

    #[allow(clippy::too_many_arguments)]
    fn rollout_state(
        &self,
        rec: &ServiceRecord,
        cur: &RevisionRecord,
        r: &RolloutRecord,
        stable_fp: Option<&str>,
        instances: &[&Instance],
        verdicts: &Verdicts<'_>,
        now: u64,
    ) -> RolloutState {
        // `instances` are this service's only.
        let view = |fp: Option<&str>| -> Vec<types::Instance> {
            instances
                .iter()
                .filter(|i| Some(i.fingerprint.as_str()) == fp)
                .map(|i| types::Instance {
                    id: i.info.id.clone(),
                    node: self.node.hostname.clone(),
                    revision: i.revision,
                    readiness: if i.is_failed() {
                        Readiness::Failed
                    } else if i.is_running() && verdicts.ready(&i.info.id) {
                        Readiness::Ready
                    } else {
                        Readiness::Starting
                    },
                    age_ms: now.saturating_sub((i.info.created_unix.max(0) as u64) * 1000),
                })
                .collect()
        };
        let stable = view(stable_fp);
        let candidate = view(Some(&cur.fingerprint));
        // Candidates are created during the rollout, so their counters are this rollout's.
        let (candidate_requests, candidate_errors) = candidate
            .iter()
            .map(|i| self.route_stats.get_instance(&i.id))
            .fold((0, 0), |(r, e), (ri, ei)| (r + ri, e + ei));
        let ready = |v: &[types::Instance]| {
            v.iter().filter(|i| i.readiness == Readiness::Ready).count() as u32
        };
        let traffic = match r.traffic {
            Some((s, c)) => Traffic {
                stable: s,
                candidate: c,
            },
            None => Traffic {
                stable: ready(&stable),
                candidate: ready(&candidate),
            },
        };
        RolloutState {
            service: plugin_service(&cur.spec, rec.spec.replicas),
            stable_revision: r.stable_revision,
            candidate_revision: r.candidate_revision,
            stable,
            candidate,
            traffic,
            candidate_requests,
            candidate_errors,
            elapsed_ms: now.saturating_sub(r.started_at_ms),
            now_ms: now,
            promote_requested: r.promote_requested,
            rollback_requested: r.rollback_requested,
            plugin_state: r.plugin_state.clone(),
        }
    }

    /// Publishes a decision's routing table, probe targets and status view, before any
    /// container changes: traffic leaves an instance before it is stopped.
    fn publish(
        &self,
        records: &[ServiceRecord],
        instances: &Arc<Vec<Instance>>,
        verdicts: &Verdicts<'_>,
        d: &mut Decision,
        next_wake_ms: Option<u64>,
        now: u64,
    ) {
        // What is published is moved out of the decision (execution needs only its
        // removes and starts).
        self.health.set_targets(
            std::mem::take(&mut d.probes)
                .into_iter()
                .map(|p| Target {
                    id: p.id,
                    addr: p.addr,
                    probe: p.readiness,
                    liveness: p.liveness,
                })
                .collect(),
        );
        let mut table = RouteTable::new();
        for r in std::mem::take(&mut d.routes) {
            table.insert(
                &r.domain,
                Route {
                    service: r.service,
                    backends: r
                        .backends
                        .into_iter()
                        .map(|b| Backend {
                            id: b.id,
                            addr: b.addr,
                            weight: b.weight,
                        })
                        .collect(),
                },
            );
        }
        self.routes.swap(table);

        let errors = self
            .memory
            .lock()
            .expect("controller memory lock")
            .errors
            .clone();
        self.metrics.observe_state(records, instances, verdicts);
        let mut states = vec!["ready"];
        if let Some(nodes) = &self.nodes {
            for (r, state) in nodes.list() {
                states.push(match state {
                    crate::nodes::NodeState::Ready if r.draining => "draining",
                    s => s.as_str(),
                });
            }
        }
        self.metrics.observe_nodes(&states);
        self.view.store(Arc::new(View {
            instances: instances.clone(),
            errors,
            backing_off: std::mem::take(&mut d.backing_off),
            waiting: std::mem::take(&mut d.waiting),
            next_wake_ms,
            ready: std::mem::take(&mut d.ready),
            addresses: std::mem::take(&mut d.addresses),
            observed_at_ms: now,
        }));
    }

    async fn execute(
        &self,
        decision: Decision,
        records: &[ServiceRecord],
        revisions: &HashMap<String, RevisionRecord>,
        instances: &[Instance],
        nodes: &[PassNode<R>],
    ) -> bool {
        let mut acted = false;
        let node_of: HashMap<&str, &str> = instances
            .iter()
            .map(|i| (i.info.id.as_str(), i.node.as_str()))
            .collect();
        let by_key: HashMap<String, &ServiceRecord> =
            records.iter().map(|r| (r.spec.key(), r)).collect();
        let by_key = &by_key;

        for Remove {
            id,
            service,
            reason,
            drain: how,
        } in decision.removes
        {
            if !self
                .memory
                .lock()
                .expect("controller memory lock")
                .removing
                .insert(id.clone())
            {
                continue; // already draining
            }
            acted = true;
            // The decision drains with the instance's own revision's port and timeout.
            let drain_from = how.map(|d| (d.addr, Duration::from_millis(d.timeout_ms)));
            info!(%service, id = %instance::short(&id), reason = reason.as_str(), draining = drain_from.is_some(), "removing instance");
            self.events
                .removing(&service, instances, &id, reason.as_str());
            let Some(runtime) = node_of
                .get(id.as_str())
                .and_then(|n| nodes.iter().find(|p| p.name == *n))
                .map(|p| p.runtime.clone())
            else {
                warn!(id = %instance::short(&id), "instance to remove is on no reachable node");
                self.memory
                    .lock()
                    .expect("controller memory lock")
                    .removing
                    .remove(&id);
                continue;
            };
            let memory = self.memory.clone();
            let wake = self.wake.clone();
            let in_flight = self.in_flight.clone();
            tokio::spawn(
                async move {
                    if let Some((addr, timeout)) = drain_from {
                        drain(&in_flight, addr, timeout).await;
                    }
                    if let Err(e) = runtime.stop_and_remove(&id, STOP_GRACE).await {
                        warn!(id = %instance::short(&id), error = %e, "remove failed");
                    }
                    memory
                        .lock()
                        .expect("controller memory lock")
                        .removing
                        .remove(&id);
                    wake.notify_one();
                }
                .instrument(info_span!("orca.instance.remove", %service)),
            );
        }

        // Place every start first, one after the other, so the counts each placement sees
        // include the starts placed before it; then start them all at once.
        let mut placer = Placer::new(self, records, instances, nodes);
        let mut placed = Vec::new();
        for a in decision.starts {
            let (Some(rec), Some(rev)) = (by_key.get(&a.service), revisions.get(&a.fingerprint))
            else {
                warn!(service = %a.service, fingerprint = %a.fingerprint, "no revision record for a start; skipped");
                continue;
            };
            let at = placer.place(&rev.spec, &rev.fingerprint);
            placed.push((a, *rec, rev, at));
        }
        let starts = placed.into_iter().map(|(a, rec, rev, at)| async move {
            let Start { service, slot, .. } = a;
            let result = match at {
                Ok(at) => self.start(rec, rev, slot, at).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(true) => true,
                Ok(false) => false,
                Err(e) => {
                    warn!(%service, slot, error = %e, "start failed");
                    self.events.start_failed(&service, slot, &e);
                    let mut mem = self.memory.lock().expect("controller memory lock");
                    let n = mem.failures.entry(service.clone()).or_default();
                    *n += 1;
                    let delay = reconciler::backoff_ms(*n).max(1_000);
                    mem.not_before.insert(service.clone(), now_ms() + delay);
                    mem.errors.insert(service, e);
                    true
                }
            }
        });
        let started = futures::future::join_all(starts).await;
        acted || started.into_iter().any(|progressed| progressed)
    }

    /// Makes `image` present on a remote node: pulled by the node's engine first when the
    /// reference names a registry (`registry.example:5000/app:1`), else (or when that pull
    /// fails) the master's engine saves it and the node loads it through the agent session
    /// (no registry needed). One shipment per node and image at a time; the others wait.
    async fn ship_image(
        &self,
        remote: &crate::nodes::RemoteRuntime,
        image: &str,
    ) -> Result<(), String> {
        let lock = {
            let mut locks = self.shipping.lock().expect("shipping lock");
            locks
                .entry((remote.node().to_string(), image.to_string()))
                .or_default()
                .clone()
        };
        let _guard = lock.lock().await;
        if remote
            .image_exists(image)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(());
        }
        let mut pull_error = None;
        if names_registry(image) {
            let started = std::time::Instant::now();
            match remote.pull_image(image).await {
                Ok(()) => {
                    info!(node = %remote.node(), %image, ms = started.elapsed().as_millis() as u64, "image pulled by the node");
                    return Ok(());
                }
                Err(e) => {
                    info!(node = %remote.node(), %image, error = %e, "the node could not pull the image; shipping it from the master");
                    pull_error = Some(e.to_string());
                }
            }
        }
        if !self
            .runtime
            .image_exists(image)
            .await
            .map_err(|e| e.to_string())?
        {
            return Err(match pull_error {
                Some(e) => format!(
                    "image {image} is not on the master's engine and node {} could not pull it: {e}",
                    remote.node()
                ),
                None => format!(
                    "image {image} is on neither node {} nor the master's engine",
                    remote.node()
                ),
            });
        }
        let started = std::time::Instant::now();
        info!(node = %remote.node(), %image, "shipping image to node");
        remote
            .import_image(self.runtime.export_image(image))
            .await
            .map_err(|e| format!("shipping image {image} to node {}: {e}", remote.node()))?;
        info!(node = %remote.node(), %image, ms = started.elapsed().as_millis() as u64, "image shipped");
        Ok(())
    }

    async fn start(
        &self,
        rec: &ServiceRecord,
        rev: &RevisionRecord,
        slot: u32,
        at: Placed<R>,
    ) -> Result<bool, String> {
        let spec: &ServiceSpec = &rev.spec;
        let project = spec.project();
        let Some(image) = spec.image.clone() else {
            return Err("no image: building from [service.build] is not available yet".into());
        };
        if let NodeRuntime::Remote(remote) = &at.runtime {
            self.ship_image(remote, &image).await?;
        }
        let env = deploy::open_env(&self.secrets, rev)?;
        let net_labels = BTreeMap::from([
            (instance::LABEL_CLUSTER.to_string(), self.cluster.clone()),
            (instance::LABEL_PROJECT.to_string(), project.to_string()),
        ]);
        let cluster_labels =
            BTreeMap::from([(instance::LABEL_CLUSTER.to_string(), self.cluster.clone())]);
        // With nodes in the cluster's swarm, a project's instances also share its overlay
        // network (made on the master's engine, the swarm's manager), on which they reach
        // each other on any node. Instances on the master keep their bridge network too:
        // the proxy reaches them on it. Instances on other nodes are reached through their
        // published port and join only the overlay.
        let overlays = if at.overlay {
            let mut nets = vec![instance::project_overlay(&self.cluster, project)];
            if spec.internal {
                nets.push(instance::internal_overlay(&self.cluster));
            }
            for net in &nets {
                if net.len() > instance::MAX_OVERLAY_NAME {
                    return Err(format!(
                        "overlay network name {net:?} is longer than {} characters: shorten the cluster or project name",
                        instance::MAX_OVERLAY_NAME
                    ));
                }
                let labels = if net.ends_with("__internal") {
                    &cluster_labels
                } else {
                    &net_labels
                };
                self.runtime
                    .ensure_overlay_network(net, labels)
                    .await
                    .map_err(|e| e.to_string())?;
                self.remember_network(net);
            }
            nets
        } else {
            Vec::new()
        };
        let remote = matches!(at.runtime, NodeRuntime::Remote(_));
        let (network, mut extra_networks) = if remote && !overlays.is_empty() {
            (overlays[0].clone(), overlays[1..].to_vec())
        } else {
            let network = instance::project_network(&self.cluster, project);
            at.runtime
                .ensure_network(&network, &net_labels)
                .await
                .map_err(|e| e.to_string())?;
            // Only once it is known to be this cluster's: another's is never removed.
            self.remember_network(&network);
            let mut extra = Vec::new();
            if spec.internal {
                let internal = instance::internal_network(&self.cluster);
                at.runtime
                    .ensure_network(&internal, &cluster_labels)
                    .await
                    .map_err(|e| e.to_string())?;
                self.remember_network(&internal);
                extra.push(internal);
            }
            extra.extend(overlays);
            (network, extra)
        };
        extra_networks.extend(self.legacy_networks(project, spec.internal));
        let mut aliases = vec![spec.name.clone()];
        aliases.extend(spec.aliases.iter().cloned());
        let resources = spec.resources.as_ref();
        let cspec = ContainerSpec {
            name: instance::container_name(
                &self.cluster,
                project,
                &spec.name,
                slot,
                &rev.fingerprint,
            ),
            image,
            env: env.into_iter().collect(),
            labels: {
                let mut labels =
                    instance::labels(&self.cluster, spec, slot, &rev.fingerprint, rev.number);
                labels.insert(instance::LABEL_NODE.to_string(), at.node.clone());
                if let (Some((_, port)), Some(_)) = (at.publish, spec.port) {
                    labels.insert(instance::LABEL_HOST_PORT.to_string(), port.to_string());
                }
                labels
            },
            network,
            aliases,
            extra_networks,
            memory_bytes: resources.and_then(|r| r.memory.as_ref()).map(|m| m.0),
            nano_cpus: resources
                .and_then(|r| r.cpu)
                .map(|c| (c * 1_000_000_000.0) as i64),
            stop_grace: STOP_GRACE,
            mounts: crate::volumes::mounts(&self.cluster, spec, &self.host_paths)?,
            publish: match (at.publish, spec.port) {
                (Some((host_ip, host_port)), Some(container_port)) => Some(orca_docker::Publish {
                    host_ip,
                    host_port,
                    container_port,
                }),
                _ => None,
            },
        };
        match at.runtime.create_and_start(&cspec).await {
            Ok(info) => {
                info!(service = %rec.spec.key(), revision = rev.number, slot, node = %at.node, id = %instance::short(&info.id), "started instance");
                Ok(true)
            }
            // The name is taken: an earlier pass created it (adopted on the next list), or an
            // instance of the same slot and revision is still draining (retried after it goes).
            Err(RuntimeError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Places the starts of one pass over its nodes, one after the other: each placement sees
/// the instances and host ports of the ones before it.
struct Placer<'a, R: ContainerRuntime> {
    ctl: &'a Controller<R>,
    nodes: Vec<(&'a PassNode<R>, types::Node)>,
    /// Instances per (service key, revision fingerprint, node): a start spreads among
    /// its own revision's instances, so a rolling update ends as evenly spread as it began.
    counts: HashMap<(String, String, String), u32>,
    /// Host ports taken per node.
    ports: HashMap<String, HashSet<u16>>,
    /// Every known node name with its address (ready or not), for pins.
    known: Vec<(String, String)>,
    /// Which nodes hold each named volume (see `Memory::volume_nodes`).
    volume_nodes: BTreeMap<String, Vec<String>>,
}

fn requests_of(spec: &ServiceSpec) -> (u64, u64) {
    let res = spec.resources.as_ref();
    (
        res.and_then(|r| r.memory.as_ref()).map_or(0, |m| m.0),
        res.and_then(|r| r.cpu).map_or(0, |c| (c * 1000.0) as u64),
    )
}

impl<'a, R: ContainerRuntime> Placer<'a, R> {
    fn new(
        ctl: &'a Controller<R>,
        records: &[ServiceRecord],
        instances: &[Instance],
        nodes: &'a [PassNode<R>],
    ) -> Placer<'a, R> {
        let by_key: HashMap<String, &ServiceRecord> =
            records.iter().map(|r| (r.spec.key(), r)).collect();
        let mut counts: HashMap<(String, String, String), u32> = HashMap::new();
        let mut ports: HashMap<String, HashSet<u16>> = HashMap::new();
        let mut used: HashMap<&str, (u64, u64, u32)> = HashMap::new();
        for i in instances {
            if let Some(p) = i
                .info
                .labels
                .get(instance::LABEL_HOST_PORT)
                .and_then(|p| p.parse().ok())
            {
                ports.entry(i.node.clone()).or_default().insert(p);
            }
            if i.is_failed() {
                continue;
            }
            *counts
                .entry((i.service.clone(), i.fingerprint.clone(), i.node.clone()))
                .or_default() += 1;
            let (mem, cpu) = by_key
                .get(&i.service)
                .map_or((0, 0), |r| requests_of(&r.spec));
            let u = used.entry(i.node.as_str()).or_default();
            u.0 += mem;
            u.1 += cpu;
            u.2 += 1;
        }
        let planned: Vec<(&'a PassNode<R>, types::Node)> = nodes
            .iter()
            .map(|n| {
                let (cpus, memory, address, labels, draining) = match &n.remote {
                    None => (
                        ctl.node.cpus,
                        ctl.node.memory_bytes,
                        "127.0.0.1".to_string(),
                        Vec::new(),
                        false,
                    ),
                    Some(r) => (
                        r.record.cpus,
                        r.record.memory_bytes,
                        r.advertise.to_string(),
                        r.record
                            .labels
                            .iter()
                            .map(|(k, v)| types::Pair {
                                key: k.clone(),
                                value: v.clone(),
                            })
                            .collect(),
                        r.record.draining,
                    ),
                };
                let (mem_used, cpu_used, count) =
                    used.get(n.name.as_str()).copied().unwrap_or_default();
                let cpu_total = u64::from(cpus) * 1000;
                let node = types::Node {
                    id: n.name.clone(),
                    name: n.name.clone(),
                    address,
                    cpu_millis: cpu_total.min(u64::from(u32::MAX)) as u32,
                    // CPU is shared, not reserved: overcommit up to 4x before refusing.
                    cpu_millis_free: (cpu_total * 4)
                        .saturating_sub(cpu_used)
                        .min(u64::from(u32::MAX)) as u32,
                    memory_bytes: memory,
                    memory_bytes_free: memory.saturating_sub(mem_used),
                    instances: count,
                    draining,
                    labels,
                };
                (n, node)
            })
            .collect();
        let mut known: Vec<(String, String)> = planned
            .iter()
            .map(|(_, n)| (n.name.clone(), n.address.clone()))
            .collect();
        if let Some(all) = &ctl.nodes {
            for (r, _) in all.list() {
                if !known.iter().any(|(n, _)| *n == r.name) {
                    known.push((r.name.clone(), r.advertise_addr.clone()));
                }
            }
        }
        let volume_nodes = ctl
            .memory
            .lock()
            .expect("controller memory lock")
            .volume_nodes
            .clone();
        Placer {
            ctl,
            nodes: planned,
            counts,
            ports,
            known,
            volume_nodes,
        }
    }

    /// The node a pin names: exactly by name, else the one node whose name or address
    /// contains it.
    fn resolve_pin(&self, pin: &str) -> Result<String, String> {
        if let Some((name, _)) = self.known.iter().find(|(n, _)| n == pin) {
            return Ok(name.clone());
        }
        let matches: Vec<&String> = self
            .known
            .iter()
            .filter(|(n, a)| n.contains(pin) || a.contains(pin))
            .map(|(n, _)| n)
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(format!(
                "placement.node {pin:?} matches no node (nodes: {})",
                self.known
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            many => Err(format!(
                "placement.node {pin:?} is ambiguous: it matches {}; give a node's full name",
                many.iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    fn place(&mut self, spec: &ServiceSpec, fingerprint: &str) -> Result<Placed<R>, String> {
        let key = spec.key();
        let placement = spec.placement.as_ref();
        let pinned = match placement.and_then(|p| p.node.as_deref()) {
            Some(pin) => Some(self.resolve_pin(pin)?),
            None => None,
        };
        let labels = placement.map(|p| p.labels.clone()).unwrap_or_default();
        // An instance with named volumes goes where they are (once they exist somewhere).
        let volumes: Vec<String> = spec
            .mounts()
            .iter()
            .filter_map(|m| m.volume())
            .map(|v| crate::volumes::docker_volume_name(&self.ctl.cluster, spec.project(), v))
            .collect();
        let volume_node = if volumes.is_empty() {
            None
        } else {
            crate::volumes::volume_node(&volumes, &self.volume_nodes, |node| {
                self.nodes.iter().any(|(_, n)| n.name == node)
            })?
        };
        let candidates: Vec<types::Node> = self
            .nodes
            .iter()
            .map(|(_, n)| n)
            .filter(|n| volume_node.as_ref().is_none_or(|v| *v == n.name))
            .filter(|n| pinned.as_ref().is_none_or(|p| *p == n.name))
            .filter(|n| {
                labels
                    .iter()
                    .all(|(k, v)| n.labels.iter().any(|l| l.key == *k && l.value == *v))
            })
            .cloned()
            .collect();
        if candidates.is_empty() {
            return Err(match (&pinned, labels.is_empty()) {
                (Some(p), _) => format!("pending: node {p} (its placement.node pin) is not ready"),
                (None, false) => format!(
                    "pending: no ready node has the labels {}",
                    labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                (None, true) => "pending: no ready node".to_string(),
            });
        }
        let plugin = self
            .ctl
            .registry
            .resolve(PLACEMENT, World::Placement)
            .map_err(|e| e.to_string())?;
        let (memory_bytes, cpu_millis) = requests_of(spec);
        let request = PlacementRequest {
            service: plugin_service(spec, spec.replicas),
            pin: None,
            memory_bytes,
            cpu_millis: cpu_millis as u32,
            existing: candidates
                .iter()
                .map(|n| NodeCount {
                    node: n.id.clone(),
                    count: self
                        .counts
                        .get(&(key.clone(), fingerprint.to_string(), n.name.clone()))
                        .copied()
                        .unwrap_or(0),
                })
                .collect(),
        };
        let verdicts = plugin
            .place(&request, &candidates)
            .map_err(|e| format!("placement failed: {e}"))?;
        let Some(best) = verdicts
            .iter()
            .filter(|v| v.feasible)
            .max_by(|a, b| a.score.cmp(&b.score).then(b.node.cmp(&a.node)))
        else {
            return Err(format!(
                "no node can run it: {}",
                verdicts
                    .iter()
                    .map(|v| format!("{}: {}", v.node, v.reason))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        };
        let Some((pass_node, node)) = self.nodes.iter_mut().find(|(_, n)| n.id == best.node) else {
            return Err(format!("placement chose an unknown node {:?}", best.node));
        };
        node.instances += 1;
        node.memory_bytes_free = node.memory_bytes_free.saturating_sub(memory_bytes);
        node.cpu_millis_free = node.cpu_millis_free.saturating_sub(cpu_millis as u32);
        *self
            .counts
            .entry((key, fingerprint.to_string(), node.name.clone()))
            .or_default() += 1;
        let publish = match &pass_node.remote {
            None => None,
            Some(remote) => {
                let taken = self.ports.entry(node.name.clone()).or_default();
                let (first, last) = self.ctl.host_ports;
                let port = (first..=last).find(|p| !taken.contains(p)).ok_or_else(|| {
                    format!(
                        "node {}: every host port in [nodes] host_ports is taken",
                        node.name
                    )
                })?;
                taken.insert(port);
                Some((remote.advertise, port))
            }
        };
        Ok(Placed {
            node: node.name.clone(),
            runtime: pass_node.runtime.clone(),
            publish,
            overlay: pass_node.on_overlay,
        })
    }
}

/// The placement plugin used for every service.
const PLACEMENT: &str = "spread";

/// How many requests the proxy has in flight to an address.
pub type InFlight = Arc<dyn Fn(SocketAddr) -> usize + Send + Sync>;

/// Waits until the proxy has no request in flight to `addr` (it is already out of the routing
/// table), or `timeout`. A short settle first lets a request that picked the backend from the
/// previous table register.
async fn drain(in_flight: &InFlight, addr: SocketAddr, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    tokio::time::sleep(Duration::from_millis(100)).await;
    while in_flight(addr) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How one service's traffic is split during a rollout.
#[derive(Debug, Clone)]
struct Split {
    traffic: Option<orca_core::Traffic>,
    wake_at_ms: Option<u64>,
}

/// Groups that keep whatever runs (when the desired revision cannot be known).
impl<R: ContainerRuntime> Controller<R> {
    /// Instances of services with `[service.placement] lost_after` on a node that is
    /// `down`: within that time after the node went down, its last listing stands in for
    /// them (unrouted, holding their slots), so they are not replaced yet. Returns when the
    /// earliest such hold ends (a pass must look again then).
    fn keep_lost(
        &self,
        records: &[ServiceRecord],
        live: &[PassNode<R>],
        unsure: &[String],
        now: u64,
        instances: &mut Vec<Instance>,
    ) -> Option<u64> {
        let nodes = self.nodes.as_ref()?;
        let hold: HashMap<String, u64> = records
            .iter()
            .filter_map(|r| {
                let secs = r.spec.placement.as_ref()?.lost_after_secs()?;
                Some((r.spec.key(), secs.saturating_mul(1000)))
            })
            .collect();
        if hold.is_empty() {
            return None;
        }
        let ttl = nodes.node_ttl().as_millis() as u64;
        let mem = self.memory.lock().expect("controller memory lock");
        let mut earliest: Option<u64> = None;
        for (record, _) in nodes.list() {
            if live.iter().any(|n| n.name == record.name) || unsure.contains(&record.name) {
                continue;
            }
            let Some(known) = mem.listed.get(&record.name) else {
                continue;
            };
            let down_at = record.last_seen_ms.saturating_add(ttl);
            for i in known {
                let Some(until) = hold.get(&i.service).map(|h| down_at.saturating_add(*h)) else {
                    continue;
                };
                if now < until && !instances.iter().any(|x| x.info.id == i.info.id) {
                    debug!(node = %record.name, service = %i.service, until_ms = until, "lost node's instance kept (placement.lost_after)");
                    let mut i = i.clone();
                    i.unreachable = true;
                    instances.push(i);
                    earliest = Some(earliest.map_or(until, |e| e.min(until)));
                }
            }
        }
        earliest
    }
}

/// Whether an image reference names its registry (`host.tld/…`, `host:port/…`,
/// `localhost/…`): such an image is pulled by a node before the master ships it. A name
/// without one (`app:1`, `library/app`) is taken for a local build and shipped.
fn names_registry(image: &str) -> bool {
    image.split_once('/').is_some_and(|(first, _)| {
        first.contains('.') || first.contains(':') || first == "localhost"
    })
}

/// How many of a service's evicted instances are replaced at once: its rollout's
/// `max_unavailable` (at least 1).
fn max_migrating(spec: &ServiceSpec) -> u32 {
    spec.deploy
        .as_ref()
        .and_then(|d| d.max_unavailable)
        .unwrap_or(1)
        .max(1)
}

/// The writable, not shared volume that makes a service stop-first, if any.
fn exclusive_volume(spec: &ServiceSpec) -> Option<String> {
    spec.exclusive_volume()
        .and_then(|m| m.volume().map(str::to_string))
}

/// `depends_on` as service keys of the same project.
fn dependency_keys(spec: &ServiceSpec) -> Vec<String> {
    spec.depends_on
        .iter()
        .map(|d| format!("{}/{d}", spec.project()))
        .collect()
}

/// Whether a running service mounts a named volume (its placement follows the volume).
fn has_named_volume(rec: &ServiceRecord) -> bool {
    rec.state == DesiredState::Running && rec.spec.mounts().iter().any(|m| m.volume().is_some())
}

/// The groups that keep a service's `instances` (its own only) running as they are.
fn keep_running(instances: &[&Instance]) -> Vec<DesiredGroup> {
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for i in instances.iter().filter(|i| !i.is_failed()) {
        *counts.entry(i.fingerprint.as_str()).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(fp, count)| DesiredGroup {
            fingerprint: fp.to_string(),
            count,
        })
        .collect()
}

/// A service as plugins see it; deploy settings become JSON-text params.
pub fn plugin_service(spec: &ServiceSpec, replicas: u32) -> types::Service {
    let mut params = Vec::new();
    if let Some(d) = &spec.deploy {
        let mut put = |key: &str, v: serde_json::Value| {
            params.push(types::Pair {
                key: key.to_string(),
                value: v.to_string(),
            })
        };
        if let Some(v) = d.canary_weight {
            put("canary_weight", v.into());
        }
        if let Some(v) = d.max_surge {
            put("max_surge", v.into());
        }
        if let Some(v) = d.max_unavailable {
            put("max_unavailable", v.into());
        }
        if let Some(v) = &d.steps {
            put("steps", serde_json::json!(v));
        }
        if let Some(v) = d.step_interval_secs {
            put("step_interval_secs", v.into());
        }
        if let Some(v) = d.drain_timeout_secs {
            put("drain_timeout_secs", v.into());
        }
        if let Some(v) = d.progress_deadline_secs {
            put("progress_deadline_secs", v.into());
        }
        for (k, v) in &d.params {
            put(k, v.clone());
        }
    }
    // Never two writers on one volume: a stop-first service's rollout retires the old
    // instance before the new one exists (the decision core holds the start until then).
    if spec.exclusive_volume().is_some() {
        params.retain(|p| p.key != "max_surge" && p.key != "max_unavailable");
        for (key, value) in [("max_surge", "0"), ("max_unavailable", "1")] {
            params.push(types::Pair {
                key: key.to_string(),
                value: value.to_string(),
            });
        }
    }
    types::Service {
        project: spec.project().to_string(),
        name: spec.name.clone(),
        image: spec.image.clone().unwrap_or_default(),
        replicas,
        port: spec.port,
        domain: spec.domain.clone(),
        params,
    }
}

/// Wall clock in ms since the epoch; read only here, in the impure shell.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::names_registry;

    #[test]
    fn an_image_naming_its_registry_is_pulled_first_a_local_name_is_shipped() {
        for pulled in [
            "registry.example.com/team/app:1",
            "10.0.0.5:5000/app",
            "localhost/app:dev",
            "ghcr.io/owner/app@sha256:0123",
        ] {
            assert!(names_registry(pulled), "{pulled}");
        }
        for shipped in ["orca-testapp:latest", "library/app", "app", "team/app:1.2"] {
            assert!(!names_registry(shipped), "{shipped}");
        }
    }
}
