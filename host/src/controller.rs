//! The controller: observes, plans (through the pure reconciler), executes, and publishes.
//!
//! One loop runs passes one at a time, so two passes never race over the same container.
//! A pass is triggered by a store change (API), a Docker event (a container died), a
//! readiness flip (health checker), or the watchdog tick — the safety net when an event was
//! missed. Each pass publishes the routing table, the health checker's targets, the status
//! view and the metrics from what it observed, excluding instances it is about to remove, so
//! traffic leaves an instance before the instance is stopped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use futures::StreamExt;
use orca_config::ServiceSpec;
use orca_docker::{ContainerRuntime, ContainerSpec, NodeInfo, RuntimeError};
use orca_proxy::{Backend, Route, RouteTable, Routes};
use orca_store::{DesiredState, SecretBox, ServiceRecord, Store};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::health::{Health, Target};
use crate::instance::{self, Instance};
use crate::metrics::Metrics;
use crate::reconciler::{self, Action, DesiredService};

/// Grace period between SIGTERM and SIGKILL when orca stops an instance.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What the last pass saw: the basis of `status`, `logs` and `cluster/info`.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Containers of this cluster.
    pub instances: Vec<Instance>,
    /// Last error per service key (start failure, unresolved secret, unplaceable...).
    pub errors: BTreeMap<String, String>,
    /// Services in crash back-off, with the time (ms since epoch) they may start again.
    pub backing_off: BTreeMap<String, u64>,
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
    /// Last error per service.
    errors: BTreeMap<String, String>,
}

/// Everything a pass needs.
pub struct Controller<R: ContainerRuntime> {
    runtime: Arc<R>,
    store: Store,
    secrets: Arc<SecretBox>,
    routes: Routes,
    health: Health,
    metrics: Metrics,
    cluster: String,
    node: NodeInfo,
    wake: Arc<Notify>,
    view: Arc<ArcSwap<View>>,
    memory: Mutex<Memory>,
}

/// A handle for the API: wake the controller, read its view.
#[derive(Clone)]
pub struct ControllerHandle {
    wake: Arc<Notify>,
    view: Arc<ArcSwap<View>>,
    health: Health,
}

impl ControllerHandle {
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
        routes: Routes,
        health: Health,
        metrics: Metrics,
        cluster: String,
        node: NodeInfo,
    ) -> Controller<R> {
        Controller {
            runtime,
            store,
            secrets,
            routes,
            health,
            metrics,
            cluster,
            node,
            wake: Arc::new(Notify::new()),
            view: Arc::new(ArcSwap::from_pointee(View::default())),
            memory: Mutex::new(Memory::default()),
        }
    }

    /// Handle for the API layer.
    pub fn handle(&self) -> ControllerHandle {
        ControllerHandle {
            wake: self.wake.clone(),
            view: self.view.clone(),
            health: self.health.clone(),
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
            // Wake at the earliest back-off expiry too, so a held-back start is not late.
            let next_backoff = self.view.load().backing_off.values().min().copied();
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
        let records = self.store.list_services()?;
        let containers = self.runtime.list().await?;
        let now = now_ms();
        let instances: Vec<Instance> = containers
            .into_iter()
            .filter_map(|c| Instance::from_container(&self.cluster, c))
            .collect();

        let mut resolved: HashMap<String, Resolved> = HashMap::new();
        let mut desired = Vec::with_capacity(records.len());
        {
            let mut mem = self.memory.lock().expect("controller memory lock");
            self.account_failures(&mut mem, &records, &instances);
            for rec in &records {
                let key = rec.spec.key();
                let mut d = DesiredService {
                    key: key.clone(),
                    fingerprint: String::new(),
                    replicas: rec.spec.replicas,
                    running: rec.state == DesiredState::Running,
                    not_before_ms: mem.not_before.get(&key).copied(),
                };
                match self.resolve(rec) {
                    Ok(r) => {
                        d.fingerprint = r.fingerprint.clone();
                        resolved.insert(key.clone(), r);
                    }
                    Err(reason) => {
                        // Keep what runs; start nothing new until the problem is fixed.
                        mem.errors.insert(key.clone(), reason);
                        d.fingerprint = current_fingerprint(&instances, &key);
                        d.not_before_ms = Some(u64::MAX);
                    }
                }
                desired.push(d);
            }
        }

        let observed: Vec<_> = instances
            .iter()
            .map(|i| i.observed(self.health.verdict(&i.info.id).ready))
            .collect();
        let plan = reconciler::plan(&desired, &observed, now);
        let removing: HashSet<&str> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Remove { id, .. } => Some(id.as_str()),
                _ => None,
            })
            .collect();
        self.publish(&records, &instances, &removing, &plan.backing_off, now);

        if plan.is_empty() {
            return Ok(());
        }
        info!(actions = plan.actions.len(), "executing plan");
        self.execute(plan.actions, &records, &resolved).await;
        // Observe the result right away.
        self.wake.notify_one();
        Ok(())
    }

    fn account_failures(
        &self,
        mem: &mut Memory,
        records: &[ServiceRecord],
        instances: &[Instance],
    ) {
        let live_ids: HashSet<&str> = instances.iter().map(|i| i.info.id.as_str()).collect();
        mem.counted.retain(|id| live_ids.contains(id.as_str()));
        for i in instances {
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
            if i.is_running() && self.health.verdict(&i.info.id).ready {
                mem.failures.remove(&i.service);
                mem.not_before.remove(&i.service);
                mem.errors.remove(&i.service);
            }
        }
        let keys: HashSet<String> = records.iter().map(|r| r.spec.key()).collect();
        mem.errors.retain(|k, _| keys.contains(k));
    }

    /// Resolves secrets and placement; the fingerprint covers the resolved environment.
    fn resolve(&self, rec: &ServiceRecord) -> Result<Resolved, String> {
        let spec = &rec.spec;
        if let Some(node) = spec.placement.as_ref().and_then(|p| p.node.as_deref()) {
            if !self.node.hostname.contains(node) {
                return Err(format!(
                    "no node matches placement.node = \"{node}\" (nodes: {})",
                    self.node.hostname
                ));
            }
        }
        let Some(image) = spec.image.clone() else {
            return Err("no image: building from [service.build] is not available yet".into());
        };
        let env = crate::secrets::resolve_env(&self.store, &self.secrets, spec)
            .map_err(|e| e.to_string())?;
        let env_json = serde_json::to_vec(&env).expect("a string map always serializes");
        let fingerprint = instance::fingerprint(spec, &self.secrets.fingerprint(&env_json));
        Ok(Resolved {
            image,
            env,
            fingerprint,
        })
    }

    fn publish(
        &self,
        records: &[ServiceRecord],
        instances: &[Instance],
        removing: &HashSet<&str>,
        backing_off: &BTreeMap<String, u64>,
        now: u64,
    ) {
        let by_key: HashMap<String, &ServiceRecord> =
            records.iter().map(|r| (r.spec.key(), r)).collect();

        let mut targets = Vec::new();
        let mut table = RouteTable::new();
        let mut backends: BTreeMap<String, Vec<Backend>> = BTreeMap::new();
        for i in instances {
            if !i.is_running() || removing.contains(i.info.id.as_str()) {
                continue;
            }
            let Some(rec) = by_key.get(&i.service) else {
                continue;
            };
            let addr = rec.spec.port.and_then(|port| {
                i.info
                    .ips
                    .get(&instance::project_network(&i.project))
                    .map(|ip| SocketAddr::new(*ip, port))
            });
            targets.push(Target {
                id: i.info.id.clone(),
                addr,
                probe: rec.spec.readiness_probe().unwrap_or_default(),
            });
            if let Some(addr) = addr {
                if self.health.verdict(&i.info.id).ready {
                    backends
                        .entry(i.service.clone())
                        .or_default()
                        .push(Backend {
                            id: i.info.id.clone(),
                            addr,
                            weight: 1,
                        });
                }
            }
        }
        for rec in records {
            if let (Some(domain), DesiredState::Running) = (&rec.spec.domain, rec.state) {
                table.insert(
                    domain,
                    Route {
                        service: rec.spec.key(),
                        backends: backends.remove(&rec.spec.key()).unwrap_or_default(),
                    },
                );
            }
        }
        self.health.set_targets(targets);
        self.routes.swap(table);

        let errors = self
            .memory
            .lock()
            .expect("controller memory lock")
            .errors
            .clone();
        self.metrics.observe_state(records, instances, &self.health);
        self.view.store(Arc::new(View {
            instances: instances.to_vec(),
            errors,
            backing_off: backing_off.clone(),
            observed_at_ms: now,
        }));
    }

    async fn execute(
        &self,
        actions: Vec<Action>,
        records: &[ServiceRecord],
        resolved: &HashMap<String, Resolved>,
    ) {
        let by_key: HashMap<String, &ServiceRecord> =
            records.iter().map(|r| (r.spec.key(), r)).collect();
        let by_key = &by_key;
        let (removes, starts): (Vec<_>, Vec<_>) = actions
            .into_iter()
            .partition(|a| matches!(a, Action::Remove { .. }));

        let removals = removes.into_iter().map(|a| async move {
            let Action::Remove {
                id,
                service,
                reason,
            } = a
            else {
                return;
            };
            info!(%service, id = %instance::short(&id), reason = reason.as_str(), "removing instance");
            if let Err(e) = self.runtime.stop_and_remove(&id, STOP_GRACE).await {
                warn!(%service, id = %instance::short(&id), error = %e, "remove failed");
            }
        });
        futures::future::join_all(removals).await;

        let starts = starts.into_iter().map(|a| async move {
            let Action::Start {
                service,
                slot,
                fingerprint,
            } = a
            else {
                return;
            };
            let (Some(rec), Some(res)) = (by_key.get(&service), resolved.get(&service)) else {
                return;
            };
            if let Err(e) = self.start(rec, res, slot, &fingerprint).await {
                warn!(%service, slot, error = %e, "start failed");
                let mut mem = self.memory.lock().expect("controller memory lock");
                let n = mem.failures.entry(service.clone()).or_default();
                *n += 1;
                let delay = reconciler::backoff_ms(*n).max(1_000);
                mem.not_before.insert(service.clone(), now_ms() + delay);
                mem.errors.insert(service, e.to_string());
            }
        });
        futures::future::join_all(starts).await;
    }

    async fn start(
        &self,
        rec: &ServiceRecord,
        res: &Resolved,
        slot: u32,
        fingerprint: &str,
    ) -> Result<(), RuntimeError> {
        let spec: &ServiceSpec = &rec.spec;
        let project = spec.project();
        let network = instance::project_network(project);
        let net_labels = BTreeMap::from([
            (instance::LABEL_CLUSTER.to_string(), self.cluster.clone()),
            (instance::LABEL_PROJECT.to_string(), project.to_string()),
        ]);
        self.runtime.ensure_network(&network, &net_labels).await?;
        let mut extra_networks = Vec::new();
        if spec.internal {
            let labels =
                BTreeMap::from([(instance::LABEL_CLUSTER.to_string(), self.cluster.clone())]);
            self.runtime
                .ensure_network(instance::INTERNAL_NETWORK, &labels)
                .await?;
            extra_networks.push(instance::INTERNAL_NETWORK.to_string());
        }
        let mut aliases = vec![spec.name.clone()];
        aliases.extend(spec.aliases.iter().cloned());
        let resources = spec.resources.as_ref();
        let cspec = ContainerSpec {
            name: instance::container_name(&self.cluster, project, &spec.name, slot, fingerprint),
            image: res.image.clone(),
            env: res
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            labels: instance::labels(&self.cluster, spec, slot, fingerprint, rec.revision),
            network,
            aliases,
            extra_networks,
            memory_bytes: resources.and_then(|r| r.memory.as_ref()).map(|m| m.0),
            nano_cpus: resources
                .and_then(|r| r.cpu)
                .map(|c| (c * 1_000_000_000.0) as i64),
            stop_grace: STOP_GRACE,
        };
        match self.runtime.create_and_start(&cspec).await {
            Ok(info) => {
                info!(service = %spec.key(), slot, id = %instance::short(&info.id), "started instance");
                Ok(())
            }
            // Someone (an earlier pass that crashed half-way) created it already: adopt it.
            Err(RuntimeError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A service's spec made concrete for this pass.
struct Resolved {
    image: String,
    env: BTreeMap<String, String>,
    fingerprint: String,
}

/// The fingerprint running instances carry, used when the desired one cannot be computed
/// (so nothing running is replaced by a failed resolution).
fn current_fingerprint(instances: &[Instance], key: &str) -> String {
    instances
        .iter()
        .filter(|i| i.service == key && !i.is_failed())
        .map(|i| i.fingerprint.clone())
        .max()
        .unwrap_or_default()
}

/// Wall clock in ms since the epoch; read only here, in the impure shell.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
