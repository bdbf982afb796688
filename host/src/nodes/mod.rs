//! Nodes: the master's side of `orca agent` — the cluster CA, join tokens, joins, agent
//! sessions and the node table (`ready`/`down`/`draining`), and the agent itself
//! (`agent.rs`). The master's own engine is node 0; remote nodes are reached through
//! [`RemoteRuntime`] over their session.
//!
//! - `ca.rs` — the cluster CA (rcgen), key sealed in the store.
//! - `token.rs` — join tokens `orcajoin1.<CA fingerprint>.<id>.<secret>`.
//! - `tls.rs` — rustls configs: master acceptor, agent join (CA pinned), agent session (mTLS).
//! - `proto.rs` — the wire types; `remote.rs` — the master's client; `agent.rs` — the agent.
//! - `stale.rs` — the guard that refuses commands arriving after the master gave up on them.
//! - `simulated.rs` — simulation only: an in-memory engine and a fleet of real agents over it.

pub mod agent;
pub mod any;
pub mod ca;
pub mod proto;
pub mod remote;
pub mod simulated;
pub mod stale;
pub mod tls;
pub mod token;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use futures::StreamExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use orca_store::{JoinRefusal, JoinTokenRecord, NodeRecord, Store};
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, info, warn};

pub use any::NodeRuntime;
pub use ca::ClusterCa;
pub use remote::RemoteRuntime;

use crate::controller::{now_ms, ControllerHandle};
use proto::{AgentEvent, JoinRequest, JoinResponse, JOIN_PATH, SESSION_ALPN};
use token::JoinToken;

/// Node liveness as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Connected and heartbeating.
    Ready,
    /// Not connected, or no heartbeat for `node_ttl`.
    Down,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Ready => "ready",
            NodeState::Down => "down",
        }
    }
}

/// One live agent session.
struct Session {
    id: u64,
    runtime: RemoteRuntime,
    advertise: IpAddr,
    /// The master's address this agent dialled (the swarm manager advertises it).
    master_ip: IpAddr,
    /// The engine's swarm membership when the session started.
    swarm: Option<orca_docker::SwarmInfo>,
    last_seen_ms: Arc<AtomicU64>,
    /// Cuts the connection itself (hyper's HTTP/2 client keeps it open while any request
    /// handle lives, so ending a session must sever the socket).
    cut: CancellationToken,
}

/// A connection that fails every read and write once `cut` is cancelled, so the HTTP/2
/// connection over it ends and the socket closes.
struct Severable<T> {
    io: T,
    cut: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

impl<T> Severable<T> {
    fn new(io: T, cut: &CancellationToken) -> Severable<T> {
        Severable {
            io,
            cut: Box::pin(cut.clone().cancelled_owned()),
        }
    }

    fn is_cut(&mut self, cx: &mut Context<'_>) -> bool {
        self.cut.as_mut().poll(cx).is_ready()
    }
}

fn severed() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "agent session ended by the master",
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for Severable<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(severed()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Severable<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(severed()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(severed()));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A remote node the controller may use this pass.
#[derive(Clone)]
pub struct LiveNode {
    pub record: NodeRecord,
    pub runtime: RemoteRuntime,
    /// Where its instances publish their ports.
    pub advertise: IpAddr,
    /// The master's address as this node reaches it.
    pub master_ip: IpAddr,
    /// The session's id: a new session (agent restart, reconnect) is a new id.
    pub session: u64,
    /// Its engine's swarm membership at session start; `None`: no swarm support.
    pub swarm: Option<orca_docker::SwarmInfo>,
}

/// The master's node registry.
pub struct Nodes {
    store: Store,
    ca: Arc<ClusterCa>,
    cluster: String,
    cluster_id: String,
    /// The master's own node name (node 0): no agent may take it.
    master: String,
    node_ttl: Duration,
    acceptor: TlsAcceptor,
    sessions: Mutex<BTreeMap<String, Session>>,
    next_session: AtomicU64,
    controller: OnceLock<ControllerHandle>,
    /// When this master started: a node not yet reconnected is `unknown` (not `down`) until
    /// `node_ttl` after it, so a master restart never replaces what runs on its nodes.
    started_ms: u64,
    /// The managers (`ip:port`) of the cluster's swarm once the controller made or found it.
    swarm_managers: Mutex<Vec<String>>,
}

/// A join refused, with the status and message the agent sees.
#[derive(Debug)]
pub struct Refused(pub StatusCode, pub String);

impl Nodes {
    pub fn new(
        store: Store,
        ca: Arc<ClusterCa>,
        cluster: String,
        cluster_id: String,
        master: String,
        node_ttl: Duration,
    ) -> anyhow::Result<Arc<Nodes>> {
        let acceptor = TlsAcceptor::from(tls::master_config(&ca)?);
        Ok(Arc::new(Nodes {
            store,
            ca,
            cluster,
            cluster_id,
            master,
            node_ttl,
            acceptor,
            sessions: Mutex::new(BTreeMap::new()),
            next_session: AtomicU64::new(1),
            controller: OnceLock::new(),
            started_ms: now_ms(),
            swarm_managers: Mutex::new(Vec::new()),
        }))
    }

    /// Lets sessions wake the controller (set once the controller exists).
    pub fn set_controller(&self, handle: ControllerHandle) {
        let _ = self.controller.set(handle);
    }

    fn wake(&self) {
        if let Some(c) = self.controller.get() {
            c.wake();
        }
    }

    /// Records the managers of the cluster's swarm (the controller owns the swarm).
    pub fn set_swarm_managers(&self, managers: Vec<String>) {
        *self
            .swarm_managers
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = managers;
    }

    /// Why a joining engine's swarm membership keeps it out, if it does: an engine in a
    /// swarm that is not the cluster's is never moved (leaving is the operator's call).
    fn swarm_refusal(&self, name: &str, swarm: Option<&orca_docker::SwarmInfo>) -> Option<String> {
        let swarm = swarm.filter(|s| s.is_member())?;
        let ours = self
            .swarm_managers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if swarm.managers.iter().any(|m| ours.contains(m)) {
            return None;
        }
        Some(format!(
            "node {name:?}: its Docker Engine already belongs to another swarm (managers {:?}); \
             orca joins node engines to the cluster's own swarm (overlay networking): run \
             `docker swarm leave` on that node, or use another engine, and join again",
            swarm.managers
        ))
    }

    /// How long without a heartbeat before a node is `down`.
    pub fn node_ttl(&self) -> Duration {
        self.node_ttl
    }

    /// The cluster's id.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn ca(&self) -> &ClusterCa {
        &self.ca
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes a join token valid for `ttl` (single-use unless `reusable`).
    pub fn create_token(
        &self,
        ttl: Duration,
        reusable: bool,
    ) -> Result<(JoinToken, u64), orca_store::StoreError> {
        let token = JoinToken::generate(&self.ca.fingerprint());
        let now = now_ms();
        let expires = now + ttl.as_millis() as u64;
        self.store.put_join_token(&JoinTokenRecord {
            schema: JoinTokenRecord::SCHEMA,
            id: token.id.clone(),
            secret_sha256: token.secret_hash().to_vec(),
            created_ms: now,
            expires_ms: expires,
            reusable,
            used_by: None,
        })?;
        info!(id = %token.id, reusable, ttl_secs = ttl.as_secs(), "join token created");
        Ok((token, expires))
    }

    /// A join: checks the token, signs the node's certificate, stores the node.
    pub fn join(&self, req: JoinRequest, peer: SocketAddr) -> Result<JoinResponse, Refused> {
        let bad = |why: String| Refused(StatusCode::BAD_REQUEST, why);
        let token = JoinToken::parse(&req.token).map_err(bad)?;
        if token.ca_fingerprint != self.ca.fingerprint() {
            return Err(Refused(
                StatusCode::FORBIDDEN,
                "the join token was made for another cluster CA".into(),
            ));
        }
        check_node_name(&req.name).map_err(bad)?;
        if req.name == self.master {
            return Err(Refused(
                StatusCode::CONFLICT,
                format!("node name {:?} is the master's own; pass --name", req.name),
            ));
        }
        let advertise: IpAddr = req.advertise_addr.parse().map_err(|_| {
            bad(format!(
                "advertise address {:?} is not an IP address",
                req.advertise_addr
            ))
        })?;
        if advertise.is_unspecified() || advertise.is_multicast() {
            return Err(bad(format!(
                "advertise address {advertise} cannot be dialled: give the node's own address"
            )));
        }
        for (k, v) in &req.labels {
            check_label(k, v).map_err(bad)?;
        }
        if let Some(why) = self.swarm_refusal(&req.name, req.swarm.as_ref()) {
            warn!(node = %req.name, %peer, reason = %why, "join refused");
            return Err(Refused(StatusCode::CONFLICT, why));
        }
        let (cert_pem, cert_sha256) = self
            .ca
            .sign_node(&req.name, &req.csr_pem)
            .map_err(|e| bad(format!("{e:#}")))?;
        let now = now_ms();
        let record = NodeRecord {
            schema: NodeRecord::SCHEMA,
            name: req.name.clone(),
            advertise_addr: advertise.to_string(),
            labels: req.labels.clone(),
            cert_sha256,
            cpus: 0,
            memory_bytes: 0,
            agent_version: String::new(),
            engine_version: String::new(),
            joined_ms: now,
            last_seen_ms: now,
            draining: false,
            drain_started_ms: None,
            drain_deadline_ms: None,
        };
        let outcome = self
            .store
            .join_node(&token.id, |h| token.secret_matches(h), now, &record, false)
            .map_err(|e| Refused(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        match outcome {
            Ok(()) => {
                info!(node = %req.name, %peer, advertise = %advertise, "node joined");
                Ok(JoinResponse {
                    name: req.name,
                    cert_pem,
                    ca_pem: self.ca.cert_pem().to_string(),
                    cluster: self.cluster.clone(),
                    cluster_id: self.cluster_id.clone(),
                })
            }
            Err(refusal) => {
                warn!(node = %req.name, %peer, reason = %refusal, "join refused");
                let status = match refusal {
                    JoinRefusal::NameTaken(_) => StatusCode::CONFLICT,
                    _ => StatusCode::FORBIDDEN,
                };
                Err(Refused(status, refusal.to_string()))
            }
        }
    }

    /// Drains a node: no new instances go there and its instances move to other nodes
    /// (replacement first); at `deadline` (if any) what is left there is stopped. Draining
    /// again restarts the deadline. `Ok(false)`: no such node.
    pub fn drain(
        &self,
        name: &str,
        deadline: Option<Duration>,
    ) -> Result<bool, orca_store::StoreError> {
        let now = now_ms();
        let found = self.store.update_node(name, |n| {
            n.draining = true;
            n.drain_started_ms = Some(now);
            n.drain_deadline_ms = deadline.map(|d| now.saturating_add(d.as_millis() as u64));
        })?;
        if found {
            info!(node = %name, deadline_secs = deadline.map(|d| d.as_secs()), "node draining");
            self.wake();
        }
        Ok(found)
    }

    /// Makes a drained node eligible for new instances again (nothing moves back by itself:
    /// `orca rebalance` does that). `Ok(false)`: no such node.
    pub fn undrain(&self, name: &str) -> Result<bool, orca_store::StoreError> {
        let found = self.store.update_node(name, |n| {
            n.draining = false;
            n.drain_started_ms = None;
            n.drain_deadline_ms = None;
        })?;
        if found {
            info!(node = %name, "node undrained");
            self.wake();
        }
        Ok(found)
    }

    /// Removes a node: its certificate stops being accepted and its session ends now.
    pub fn remove(&self, name: &str) -> Result<bool, orca_store::StoreError> {
        let existed = self.store.remove_node(name)?;
        if let Some(s) = self.sessions().remove(name) {
            // No controller call reaches it any more; the engine is asked to leave the
            // cluster's swarm (bounded) before the connection is cut.
            let node = name.to_string();
            tokio::spawn(async move {
                match tokio::time::timeout(
                    Duration::from_secs(10),
                    orca_docker::ContainerRuntime::swarm_leave(&s.runtime),
                )
                .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        warn!(%node, error = %e, "removed node's engine did not leave the swarm")
                    }
                    Err(_) => warn!(%node, "removed node's engine did not leave the swarm in 10 s"),
                }
                s.cut.cancel();
            });
        }
        if existed {
            info!(node = %name, "node removed; its certificate is revoked");
            self.wake();
        }
        Ok(existed)
    }

    /// The runtime of the node named `node`: the master's own (`local`, named `local_name`)
    /// or a connected agent's. `None` if that node is not connected.
    pub fn runtime_for<R: orca_docker::ContainerRuntime>(
        &self,
        node: &str,
        local: &Arc<R>,
        local_name: &str,
    ) -> Option<NodeRuntime<R>> {
        if node == local_name || node.is_empty() {
            return Some(NodeRuntime::Local(local.clone()));
        }
        self.sessions()
            .get(node)
            .filter(|s| s.runtime.is_open())
            .map(|s| NodeRuntime::Remote(s.runtime.clone()))
    }

    /// Every joined node with its state.
    pub fn list(&self) -> Vec<(NodeRecord, NodeState)> {
        // Sessions first: a session is registered only after its hello updated the record,
        // so a node seen connected here is read with its hello's facts below.
        let sessions = self.sessions();
        let records = self.store.list_nodes().unwrap_or_default();
        let now = now_ms();
        records
            .into_iter()
            .map(|mut r| {
                let state = match sessions.get(&r.name) {
                    Some(s) if s.runtime.is_open() => {
                        r.last_seen_ms = s.last_seen_ms.load(Ordering::Relaxed);
                        if now.saturating_sub(r.last_seen_ms) <= self.node_ttl.as_millis() as u64 {
                            NodeState::Ready
                        } else {
                            NodeState::Down
                        }
                    }
                    _ => NodeState::Down,
                };
                (r, state)
            })
            .collect()
    }

    /// The remote nodes the controller can use now (ready ones), and whether some known node
    /// is neither ready nor yet `down` for long enough to replace its instances (just after a
    /// master restart, or within `node_ttl` of its last heartbeat).
    pub fn live(&self) -> (Vec<LiveNode>, Vec<String>) {
        let sessions = self.sessions();
        let now = now_ms();
        let ttl = self.node_ttl.as_millis() as u64;
        let mut live = Vec::new();
        let mut unsure = Vec::new();
        for record in self.store.list_nodes().unwrap_or_default() {
            match sessions.get(&record.name) {
                Some(s)
                    if s.runtime.is_open()
                        && now.saturating_sub(s.last_seen_ms.load(Ordering::Relaxed)) <= ttl =>
                {
                    live.push(LiveNode {
                        runtime: s.runtime.clone(),
                        advertise: s.advertise,
                        master_ip: s.master_ip,
                        session: s.id,
                        swarm: s.swarm.clone(),
                        record,
                    });
                }
                other => {
                    let seen = other
                        .map(|s| s.last_seen_ms.load(Ordering::Relaxed))
                        .unwrap_or(record.last_seen_ms)
                        .max(self.started_ms);
                    if now.saturating_sub(seen) <= ttl {
                        unsure.push(record.name.clone());
                    }
                }
            }
        }
        (live, unsure)
    }

    /// The earliest time an unsure node becomes `down` (so the controller wakes then). A
    /// node with an open session is left out: its session ends (and wakes the controller)
    /// when no heartbeat came for `node_ttl`, so it needs no timer — with 100 nodes one would
    /// fire a pass every few seconds.
    pub fn next_change_ms(&self) -> Option<u64> {
        let ttl = self.node_ttl.as_millis() as u64;
        let sessions = self.sessions();
        self.store
            .list_nodes()
            .unwrap_or_default()
            .iter()
            .filter(|r| !sessions.get(&r.name).is_some_and(|s| s.runtime.is_open()))
            .map(|r| {
                sessions
                    .get(&r.name)
                    .map(|s| s.last_seen_ms.load(Ordering::Relaxed))
                    .unwrap_or(r.last_seen_ms)
                    .max(self.started_ms)
                    + ttl
                    + 1
            })
            .filter(|t| *t > now_ms())
            .min()
    }

    /// Handles one TLS connection on the API port: an agent session (ALPN `orca-agent/1`),
    /// else HTTPS: the join, and the API itself.
    pub async fn accept_tls(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, app: Router) {
        let tls = match tokio::time::timeout(Duration::from_secs(10), self.acceptor.accept(stream))
            .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "TLS handshake on the API port failed");
                return;
            }
            Err(_) => {
                debug!(%peer, "TLS handshake on the API port timed out");
                return;
            }
        };
        let (_, conn) = tls.get_ref();
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        let cert = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned());
        if alpn.as_deref() == Some(SESSION_ALPN) {
            match cert {
                Some(cert) => self.session(tls, cert, peer).await,
                None => warn!(%peer, "agent session without a node certificate refused"),
            }
            return;
        }
        let nodes = self.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let nodes = nodes.clone();
            let app = app.clone();
            async move {
                if req.uri().path() == JOIN_PATH && req.method() == hyper::Method::POST {
                    return Ok::<_, Infallible>(nodes.join_http(req, peer).await);
                }
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                Ok(app.oneshot(req).await.unwrap_or_else(|e| match e {}))
            }
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10));
        if let Err(e) = http.serve_connection(TokioIo::new(tls), service).await {
            debug!(%peer, error = %e, "HTTPS API connection ended with an error");
        }
    }

    async fn join_http(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<axum::body::Body> {
        let limited = http_body_util::Limited::new(req.into_body(), 64 * 1024);
        let reply = |status: StatusCode, body: serde_json::Value| {
            let mut resp = Response::new(axum::body::Body::from(body.to_string()));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            resp
        };
        let bytes = match limited.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": format!("join request body: {e}")}),
                )
            }
        };
        let req: JoinRequest = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": format!("join request: {e}")}),
                )
            }
        };
        match self.join(req, peer) {
            Ok(answer) => reply(
                StatusCode::OK,
                serde_json::to_value(answer).expect("serializable"),
            ),
            Err(Refused(status, why)) => reply(status, serde_json::json!({"error": why})),
        }
    }

    /// Runs one agent session until it ends.
    async fn session(
        self: Arc<Self>,
        tls: tokio_rustls::server::TlsStream<TcpStream>,
        cert: CertificateDer<'static>,
        peer: SocketAddr,
    ) {
        let sha = ca::fingerprint(&cert);
        let master_ip = match tls.get_ref().0.local_addr() {
            Ok(a) => a.ip(),
            Err(e) => {
                warn!(%peer, error = %e, "agent session: no local address");
                return;
            }
        };
        let Some(record) = self
            .store
            .list_nodes()
            .unwrap_or_default()
            .into_iter()
            .find(|n| n.cert_sha256 == sha)
        else {
            warn!(%peer, "agent session refused: its certificate belongs to no joined node (removed, or another cluster)");
            return;
        };
        let name = record.name.clone();
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(5)))
            .keep_alive_timeout(Duration::from_secs(15))
            .keep_alive_while_idle(true);
        let cut = CancellationToken::new();
        let (send, conn) = match builder
            .handshake(TokioIo::new(Severable::new(tls, &cut)))
            .await
        {
            Ok(pair) => pair,
            Err(e) => {
                warn!(node = %name, %peer, error = %e, "agent session handshake failed");
                return;
            }
        };
        let conn_task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "agent connection ended");
            }
        });
        let runtime = RemoteRuntime::new(&name, send);
        let hello = match runtime.hello().await {
            Ok(h) => h,
            Err(e) => {
                warn!(node = %name, error = %e, "agent hello failed");
                conn_task.abort();
                return;
            }
        };
        if hello.name != name {
            warn!(node = %name, said = %hello.name, "agent names itself differently from its certificate; refused");
            conn_task.abort();
            return;
        }
        let advertise: IpAddr = hello
            .advertise_addr
            .parse()
            .or_else(|_| record.advertise_addr.parse())
            .unwrap_or(peer.ip());
        let now = now_ms();
        let _ = self.store.update_node(&name, |n| {
            n.cpus = hello.node.cpus;
            n.memory_bytes = hello.node.memory_bytes;
            n.agent_version = hello.version.clone();
            n.engine_version = hello.node.engine_version.clone();
            n.advertise_addr = advertise.to_string();
            n.labels = hello.labels.clone();
            n.last_seen_ms = now;
        });
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let last_seen = Arc::new(AtomicU64::new(now));
        {
            let mut sessions = self.sessions();
            if let Some(old) = sessions.insert(
                name.clone(),
                Session {
                    id,
                    runtime: runtime.clone(),
                    advertise,
                    master_ip,
                    swarm: hello.swarm.clone(),
                    last_seen_ms: last_seen.clone(),
                    cut: cut.clone(),
                },
            ) {
                old.cut.cancel();
            }
        }
        info!(node = %name, %peer, version = %hello.version, cpus = hello.node.cpus, "node connected");
        self.wake();
        // Heartbeats and engine events until the session ends.
        let mut events = runtime.agent_events();
        let mut persisted = now;
        loop {
            let next = tokio::select! {
                () = cut.cancelled() => break,
                next = tokio::time::timeout(self.node_ttl, events.next()) => next,
            };
            match next {
                Ok(Some(Ok(event))) => {
                    let t = now_ms();
                    last_seen.store(t, Ordering::Relaxed);
                    if t.saturating_sub(persisted) > 30_000 {
                        persisted = t;
                        let _ = self.store.update_node(&name, |n| n.last_seen_ms = t);
                    }
                    if let AgentEvent::Runtime { event } = event {
                        if matches!(
                            event.action.as_str(),
                            "die" | "oom" | "destroy" | "stop" | "kill" | "start"
                        ) {
                            self.wake();
                        }
                    }
                }
                Ok(Some(Err(e))) => {
                    warn!(node = %name, error = %e, "agent event stream failed");
                    break;
                }
                Ok(None) => break,
                Err(_) => {
                    warn!(node = %name, ttl_secs = self.node_ttl.as_secs(), "no heartbeat within node_ttl");
                    break;
                }
            }
        }
        let t = last_seen.load(Ordering::Relaxed);
        let _ = self.store.update_node(&name, |n| n.last_seen_ms = t);
        {
            let mut sessions = self.sessions();
            if sessions.get(&name).is_some_and(|s| s.id == id) {
                sessions.remove(&name);
            }
        }
        cut.cancel();
        conn_task.abort();
        info!(node = %name, "node disconnected");
        self.wake();
    }
}

/// A node name: 1–63 of `a-z`, `0-9`, `-`, `.`, not starting or ending with `-`/`.`.
pub fn check_node_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "node name {name:?} is invalid: use 1-63 of a-z, 0-9, '-', '.' (pass --name)"
        ))
    }
}

fn check_label(k: &str, v: &str) -> Result<(), String> {
    let good = |s: &str, max: usize| {
        s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
    };
    if !k.is_empty() && good(k, 63) && good(v, 63) {
        Ok(())
    } else {
        Err(format!(
            "label {k:?}={v:?} is invalid: keys and values are up to 63 of a-z, A-Z, 0-9, '-', '_', '.', '/'"
        ))
    }
}

/// Parses `--labels zone=eu-1,disk=ssd`.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("label {pair:?} is not KEY=VALUE"))?;
        check_label(k, v)?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_and_labels_are_checked() {
        assert!(check_node_name("worker-1").is_ok());
        assert!(check_node_name("Worker").is_err());
        assert!(check_node_name("-a").is_err());
        assert!(check_node_name("").is_err());
        assert_eq!(
            parse_labels("zone=eu-1, disk=ssd").unwrap(),
            BTreeMap::from([
                ("disk".into(), "ssd".into()),
                ("zone".into(), "eu-1".into())
            ])
        );
        assert!(parse_labels("zone").is_err());
        assert!(parse_labels("a=b c").is_err());
    }
}
