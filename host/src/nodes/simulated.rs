//! Simulation only: `SimRuntime`, an in-memory [`ContainerRuntime`] standing in for a node's
//! Docker Engine, and `run_fleet`, many real agents (`agent::run_with`) in one process, each
//! over its own `SimRuntime` — for `bench/agents.sh` and `tests/sim_agents.rs`. Never used
//! by `orca server` or `orca agent`.
//!
//! A simulated container is believable to the master: it is listed with its labels (plus
//! `orca.managed` and the cluster id, as `DockerRuntime::scoped` adds them), its state, start
//! time and a bridge-like IP; `start`/`die`/`destroy` events are streamed; and a published
//! port is a real TCP listener on `host_ip:host_port` (the agent's advertise address) that
//! answers every HTTP request with 200, so instances become ready through the master's real
//! readiness probes and are reached through its real proxy. The simulated node has every
//! image (nothing is pulled or shipped) and builds none.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use orca_docker::{
    ClusterScope, ContainerInfo, ContainerRuntime, ContainerSpec, ContainerState, ContainerStats,
    LogLine, LogStream, NodeInfo, RuntimeError, RuntimeEvent, LABEL_CLUSTER_ID, LABEL_MANAGED,
};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::agent::{self, AgentOptions};

/// Memory a simulated container reports in use.
const SIM_MEMORY_BYTES: u64 = 2 << 20;

/// One simulated container.
struct SimContainer {
    info: ContainerInfo,
    /// Stops its listener (and its open connections).
    stop: CancellationToken,
    /// Requests its listener answered.
    served: Arc<AtomicU64>,
    memory_limit: u64,
}

/// An in-memory container engine for one simulated node.
pub struct SimRuntime {
    /// Set once the agent knows its cluster: then it sees only that cluster's containers.
    scope: Option<ClusterScope>,
    node: NodeInfo,
    /// The third and fourth octet of this node's fake bridge addresses come from here.
    bridge_prefix: [u8; 2],
    containers: Mutex<BTreeMap<String, SimContainer>>,
    networks: Mutex<BTreeSet<String>>,
    events: broadcast::Sender<RuntimeEvent>,
    next: AtomicU64,
}

impl SimRuntime {
    /// An empty engine of the node `node`, not scoped to a cluster yet.
    pub fn new(node: NodeInfo, bridge_prefix: [u8; 2]) -> SimRuntime {
        let (events, _) = broadcast::channel(4096);
        SimRuntime {
            scope: None,
            node,
            bridge_prefix,
            containers: Mutex::new(BTreeMap::new()),
            networks: Mutex::new(BTreeSet::new()),
            events,
            next: AtomicU64::new(1),
        }
    }

    /// Scoped to `scope`, like `DockerRuntime::scoped`: what it creates carries the cluster
    /// id, and it lists only what carries it.
    pub fn scoped(mut self, scope: ClusterScope) -> SimRuntime {
        self.scope = Some(scope);
        self
    }

    fn containers(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SimContainer>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn emit(&self, info: &ContainerInfo, action: &str, extra: &[(&str, String)]) {
        let mut labels = (*info.labels).clone();
        labels.insert("name".into(), info.name.clone());
        labels.insert("image".into(), info.image.clone());
        for (k, v) in extra {
            labels.insert((*k).to_string(), v.clone());
        }
        // No subscriber is fine: the master subscribes per session.
        let _ = self.events.send(RuntimeEvent {
            id: info.id.clone(),
            action: action.to_string(),
            labels,
        });
    }

    /// Total requests answered by this node's simulated containers.
    pub fn requests_served(&self) -> u64 {
        self.containers()
            .values()
            .map(|c| c.served.load(Ordering::Relaxed))
            .sum()
    }
}

/// A 64-hex-digit id, unique per node and creation.
fn container_id(node: &str, name: &str, n: u64) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(format!("{node}\0{name}\0{n}")))
}

/// RFC 3339 (UTC, seconds) of Unix seconds, as the engine writes start times.
fn rfc3339(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn unix_now() -> i64 {
    (crate::controller::now_ms() / 1000) as i64
}

/// Serves HTTP/1.1 on `listener` until `stop`: every request gets 200 and the container's
/// name, as the test app would answer.
async fn respond(
    listener: TcpListener,
    name: String,
    served: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let body = Bytes::from(format!("sim {name}\n"));
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    debug!(error = %e, "simulated container accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let body = body.clone();
        let served = served.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                served.fetch_add(1, Ordering::Relaxed);
                let body = body.clone();
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                () = stop.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}

impl ContainerRuntime for SimRuntime {
    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        // Sorted by name: the map is keyed by name.
        Ok(self
            .containers()
            .values()
            .filter(|c| self.scope.as_ref().is_none_or(|s| s.owns(&c.info.labels)))
            .map(|c| c.info.clone())
            .collect())
    }

    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<ContainerInfo, RuntimeError> {
        if self.containers().contains_key(&spec.name) {
            return Err(RuntimeError::Conflict {
                name: spec.name.clone(),
            });
        }
        if !self
            .networks
            .lock()
            .expect("networks")
            .contains(&spec.network)
        {
            return Err(RuntimeError::Engine {
                op: "create container".into(),
                reason: format!("network {} not found", spec.network),
            });
        }
        let listener = match spec.publish {
            Some(p) if p.host_ip.is_unspecified() => {
                return Err(RuntimeError::Engine {
                    op: "create container".into(),
                    reason: "refusing to publish a port on an unspecified address".into(),
                })
            }
            Some(p) => Some(
                TcpListener::bind(SocketAddr::new(p.host_ip, p.host_port))
                    .await
                    .map_err(|e| RuntimeError::Engine {
                        op: "start container".into(),
                        reason: format!(
                            "driver failed programming external connectivity on {}:{}: {e}",
                            p.host_ip, p.host_port
                        ),
                    })?,
            ),
            None => None,
        };
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut labels = spec.labels.clone();
        labels.insert(LABEL_MANAGED.into(), "true".into());
        if let Some(scope) = &self.scope {
            labels.insert(LABEL_CLUSTER_ID.into(), scope.id.clone());
        }
        let bridge = IpAddr::V4(Ipv4Addr::new(
            10,
            self.bridge_prefix[0],
            self.bridge_prefix[1].wrapping_add((n / 250) as u8),
            (n % 250) as u8 + 2,
        ));
        let now = unix_now();
        let info = ContainerInfo {
            id: container_id(&self.node.hostname, &spec.name, n),
            name: spec.name.clone(),
            image: spec.image.clone(),
            labels: std::sync::Arc::new(labels),
            state: ContainerState::Running,
            ips: std::iter::once(spec.network.clone())
                .chain(spec.extra_networks.iter().cloned())
                .map(|net| (net, bridge))
                .collect(),
            exit_code: None,
            oom_killed: false,
            created_unix: now,
            started_at: Some(rfc3339(now)),
            finished_at: None,
        };
        let stop = CancellationToken::new();
        let served = Arc::new(AtomicU64::new(0));
        {
            let mut containers = self.containers();
            if containers.contains_key(&spec.name) {
                return Err(RuntimeError::Conflict {
                    name: spec.name.clone(),
                });
            }
            containers.insert(
                spec.name.clone(),
                SimContainer {
                    info: info.clone(),
                    stop: stop.clone(),
                    served: served.clone(),
                    memory_limit: spec.memory_bytes.unwrap_or(self.node.memory_bytes),
                },
            );
        }
        if let Some(listener) = listener {
            tokio::spawn(respond(listener, spec.name.clone(), served, stop));
        }
        self.emit(&info, "create", &[]);
        self.emit(&info, "start", &[]);
        Ok(info)
    }

    async fn stop_and_remove(&self, id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        let removed = {
            let mut containers = self.containers();
            let name = containers
                .iter()
                .find(|(name, c)| c.info.id == id || *name == id)
                .map(|(name, _)| name.clone());
            name.and_then(|n| containers.remove(&n))
        };
        // A container that is already gone is success.
        if let Some(c) = removed {
            c.stop.cancel();
            self.emit(&c.info, "kill", &[("signal", "15".into())]);
            self.emit(&c.info, "die", &[("exitCode", "0".into())]);
            self.emit(&c.info, "stop", &[]);
            self.emit(&c.info, "destroy", &[]);
        }
        Ok(())
    }

    async fn ensure_network(
        &self,
        name: &str,
        _labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        self.networks
            .lock()
            .expect("networks")
            .insert(name.to_string());
        Ok(())
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        let in_use = self
            .containers()
            .values()
            .any(|c| c.info.ips.contains_key(name));
        if !in_use {
            self.networks.lock().expect("networks").remove(name);
        }
        Ok(())
    }

    fn logs(
        &self,
        id: &str,
        _tail: Option<usize>,
        follow: bool,
    ) -> BoxStream<'static, Result<LogLine, RuntimeError>> {
        let found = self
            .containers()
            .values()
            .find(|c| c.info.id == id || c.info.name == id)
            .map(|c| (c.info.clone(), c.stop.clone()));
        let Some((info, stop)) = found else {
            let err = RuntimeError::NotFound { id: id.to_string() };
            return futures::stream::once(async move { Err(err) }).boxed();
        };
        let line = LogLine {
            stream: LogStream::Stdout,
            text: format!("simulated container {} started", info.name),
            time: info.started_at.clone(),
        };
        let first = futures::stream::once(async move { Ok(line) });
        if follow {
            // No further output; the stream ends when the container stops.
            let end = futures::stream::once(async move { stop.cancelled_owned().await })
                .filter_map(|()| async { None });
            first.chain(end).boxed()
        } else {
            first.boxed()
        }
    }

    fn events(&self) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        let rx = self.events.subscribe();
        futures::stream::unfold(Some(rx), |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                Ok(event) => Some((Ok(event), Some(rx))),
                // Like a broken engine stream: one error, then the end (the caller re-lists).
                Err(broadcast::error::RecvError::Lagged(n)) => Some((
                    Err(RuntimeError::Unavailable {
                        reason: format!("simulated event stream lagged by {n} events"),
                    }),
                    None,
                )),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
        .boxed()
    }

    async fn node_info(&self) -> Result<NodeInfo, RuntimeError> {
        Ok(self.node.clone())
    }

    async fn image_exists(&self, _image: &str) -> Result<bool, RuntimeError> {
        Ok(true)
    }

    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        self.containers()
            .values()
            .find(|c| c.info.id == id || c.info.name == id)
            .map(|c| ContainerStats {
                memory_bytes: SIM_MEMORY_BYTES,
                memory_limit_bytes: c.memory_limit,
                // 20 µs of CPU per request served.
                cpu_total_ns: c.served.load(Ordering::Relaxed) * 20_000,
            })
            .ok_or_else(|| RuntimeError::NotFound { id: id.to_string() })
    }

    fn export_image(&self, image: &str) -> BoxStream<'static, Result<Bytes, RuntimeError>> {
        let err = RuntimeError::ImageNotFound {
            image: image.to_string(),
            reason: "a simulated node exports no images".into(),
        };
        futures::stream::once(async move { Err(err) }).boxed()
    }

    async fn import_image(
        &self,
        mut tar: BoxStream<'static, Result<Bytes, RuntimeError>>,
    ) -> Result<(), RuntimeError> {
        while let Some(chunk) = tar.next().await {
            chunk?;
        }
        Ok(())
    }

    async fn build_image(
        &self,
        _context_tar: Vec<u8>,
        _dockerfile: &str,
        _tag: &str,
        _on_line: Box<dyn FnMut(&str) + Send>,
    ) -> Result<String, RuntimeError> {
        Err(RuntimeError::Engine {
            op: "build image".into(),
            reason: "a simulated node builds no images".into(),
        })
    }
}

/// What `run_fleet` starts.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// The master, `https://HOST:PORT`.
    pub join: String,
    /// A reusable join token (every agent joins with it).
    pub token: String,
    /// How many agents.
    pub agents: usize,
    /// Agent `i` is named `{prefix}{i:03}`.
    pub prefix: String,
    /// Labels of every agent (e.g. `sim=1`, so placement can select simulated nodes only).
    pub labels: BTreeMap<String, String>,
    /// Each agent's `ORCA_HOME` is `{home}/{name}`.
    pub home: PathBuf,
    pub heartbeat: Duration,
    /// CPUs and memory each simulated node reports.
    pub cpus: u32,
    pub memory_bytes: u64,
}

/// The loopback address agent `i` advertises (and its containers listen on): 127.0.1.1,
/// 127.0.1.2, ... (250 per third octet).
pub fn advertise_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8)
}

/// The simulated engines of a running fleet, by node name.
pub type Fleet = Arc<Mutex<BTreeMap<String, Arc<SimRuntime>>>>;

/// Starts `opts.agents` real agents, each over its own [`SimRuntime`], on the current tokio
/// runtime; they run until `shutdown`. Returns their engines (filled in as each agent knows
/// its cluster) and the agents' tasks.
pub fn run_fleet(
    opts: &FleetOptions,
    shutdown: &CancellationToken,
) -> (Fleet, Vec<tokio::task::JoinHandle<anyhow::Result<()>>>) {
    let fleet: Fleet = Arc::default();
    let mut tasks = Vec::with_capacity(opts.agents);
    for i in 0..opts.agents {
        let name = format!("{}{i:03}", opts.prefix);
        let addr = advertise_addr(i);
        let node = NodeInfo {
            hostname: name.clone(),
            engine_version: "simulated".into(),
            api_version: "1.41".into(),
            cpus: opts.cpus,
            memory_bytes: opts.memory_bytes,
            os: "orca simulation".into(),
        };
        let agent_opts = AgentOptions {
            join: opts.join.clone(),
            token: Some(opts.token.clone()),
            name: Some(name.clone()),
            advertise_addr: Some(addr.to_string()),
            labels: opts.labels.clone(),
            home: opts.home.join(&name),
            heartbeat: opts.heartbeat,
        };
        let fleet = fleet.clone();
        let shutdown = shutdown.clone();
        let prefix = [(i / 250) as u8, ((i % 250) as u8).wrapping_mul(4)];
        tasks.push(tokio::spawn(async move {
            let engine = SimRuntime::new(node.clone(), prefix);
            let scoped = {
                let name = name.clone();
                move |engine: SimRuntime, scope: ClusterScope| {
                    let runtime = Arc::new(engine.scoped(scope));
                    fleet
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(name, runtime.clone());
                    runtime
                }
            };
            let result = agent::run_with(agent_opts, engine, node, scoped, shutdown).await;
            if let Err(e) = &result {
                warn!(node = %name, error = %format!("{e:#}"), "simulated agent ended");
            }
            result
        }));
    }
    (fleet, tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> SimRuntime {
        SimRuntime::new(
            NodeInfo {
                hostname: "sim-a".into(),
                engine_version: "simulated".into(),
                api_version: "1.41".into(),
                cpus: 4,
                memory_bytes: 8 << 30,
                os: "test".into(),
            },
            [0, 0],
        )
        .scoped(ClusterScope {
            name: "c".into(),
            id: "id-1".into(),
        })
    }

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_780_000_000), "2026-05-28T20:26:40Z");
    }

    #[tokio::test]
    async fn a_published_container_answers_http_and_stops_with_its_events() {
        let rt = runtime();
        let mut events = rt.events();
        rt.ensure_network("net", &BTreeMap::new()).await.unwrap();
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let spec = ContainerSpec {
            name: "web-0".into(),
            image: "sim/app:1".into(),
            labels: BTreeMap::from([("orca.cluster".into(), "c".into())]),
            network: "net".into(),
            publish: Some(orca_docker::Publish {
                host_ip: "127.0.0.1".parse().unwrap(),
                host_port: port,
                container_port: 8080,
            }),
            ..ContainerSpec::default()
        };
        let info = rt.create_and_start(&spec).await.unwrap();
        assert_eq!(info.labels[LABEL_CLUSTER_ID], "id-1");
        assert_eq!(info.state, ContainerState::Running);
        assert!(matches!(
            rt.create_and_start(&spec).await,
            Err(RuntimeError::Conflict { .. })
        ));
        assert_eq!(rt.list().await.unwrap().len(), 1);

        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("sim web-0\n"), "{answer}");
        assert_eq!(rt.requests_served(), 1);

        rt.stop_and_remove(&info.id, Duration::ZERO).await.unwrap();
        assert!(rt.list().await.unwrap().is_empty());
        let actions: Vec<String> = events
            .by_ref()
            .take(6)
            .map(|e| e.unwrap().action)
            .collect()
            .await;
        assert_eq!(
            actions,
            ["create", "start", "kill", "die", "stop", "destroy"]
        );
        // The port is free again: the listener closed with the container.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            assert!(std::time::Instant::now() < deadline, "listener still open");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn unknown_networks_are_refused_and_the_cluster_id_is_the_runtimes_own() {
        let rt = runtime();
        let spec = ContainerSpec {
            name: "x".into(),
            network: "missing".into(),
            ..ContainerSpec::default()
        };
        assert!(rt.create_and_start(&spec).await.is_err());
        rt.ensure_network("missing", &BTreeMap::new())
            .await
            .unwrap();
        let mut other = spec.clone();
        other.labels.insert(LABEL_CLUSTER_ID.into(), "id-2".into());
        // The runtime overwrites the id with its own scope's, like DockerRuntime::scoped.
        let info = rt.create_and_start(&other).await.unwrap();
        assert_eq!(info.labels[LABEL_CLUSTER_ID], "id-1");
        assert_eq!(rt.list().await.unwrap().len(), 1);
        rt.stop_and_remove("no-such-id", Duration::ZERO)
            .await
            .unwrap();
    }
}
