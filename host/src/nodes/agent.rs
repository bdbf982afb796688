//! `orca agent`: joins a node to a cluster and serves its Docker Engine to the master.
//!
//! The agent dials out only (works behind NAT): it joins once with a token (pinning the
//! cluster CA by the token's fingerprint, proving the one-time secret, receiving a node
//! certificate kept under its own `ORCA_HOME`), then holds one mTLS connection to the master
//! on which it is the HTTP/2 *server*: the master sends runtime calls, the agent answers
//! from its engine and streams events with a heartbeat. A lost connection is retried with
//! exponential back-off (5 s doubling to 60 s, with jitter); containers keep running.
//! [`run`] serves the node's Docker Engine; [`run_with`] runs the same code over any
//! [`ContainerRuntime`] (the simulation's `SimRuntime`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use orca_docker::{
    ClusterScope, ContainerRuntime, ContainerSpec, DockerRuntime, NodeInfo, RuntimeError,
    SwarmInfo, SwarmJoin,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::proto::{path, AgentEvent, EnsureNetwork, Hello, JoinRequest, JoinResponse, JOIN_PATH};
use super::remote::status_of;
use super::token::JoinToken;

/// What `orca agent` was asked to do.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The master, `https://HOST:PORT`.
    pub join: String,
    /// The join token; needed only until the agent has its certificate.
    pub token: Option<String>,
    pub name: Option<String>,
    pub advertise_addr: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The agent's state dir (`ORCA_HOME`): identity and CA.
    pub home: PathBuf,
    pub heartbeat: Duration,
}

/// The agent's identity, kept in `ORCA_HOME/agent.json` (0600) beside its key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Identity {
    master: String,
    name: String,
    advertise_addr: String,
    labels: BTreeMap<String, String>,
    cluster: String,
    cluster_id: String,
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn identity_path(home: &Path) -> PathBuf {
    home.join("agent.json")
}

type RespBody = UnsyncBoxBody<Bytes, std::io::Error>;

fn full(bytes: impl Into<Bytes>) -> RespBody {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// `host:port` of an `https://host:port` master URL (port 6880 if absent).
pub fn master_authority(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("https://")
        .with_context(|| format!("--join {url:?}: the master URL must start with https://"))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        bail!("--join {url:?}: expected https://HOST:PORT");
    }
    Ok(
        if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:6880")
        },
    )
}

/// Runs the agent over this node's Docker Engine until `shutdown`.
pub async fn run(opts: AgentOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let engine = DockerRuntime::connect().await.context(
        "connecting to this node's Docker Engine (DOCKER_HOST, else the default socket)",
    )?;
    let node = engine
        .node_info()
        .await
        .context("reading Docker Engine info")?;
    run_with(
        opts,
        engine,
        node,
        |engine, scope| Arc::new(engine.scoped(scope)),
        shutdown,
    )
    .await
}

/// Runs the agent over any container runtime until `shutdown`: the same join, session,
/// heartbeats and events as [`run`]. `node` is what the agent reports about its machine;
/// `scoped` scopes `engine` to the cluster once the agent knows it (after the join, or from
/// its stored identity).
pub async fn run_with<R, F>(
    opts: AgentOptions,
    engine: R,
    node: NodeInfo,
    scoped: F,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    R: ContainerRuntime,
    F: FnOnce(R, ClusterScope) -> Arc<R>,
{
    let _ = rustls::crypto::ring::default_provider().install_default();
    crate::process::private_umask();
    std::fs::create_dir_all(&opts.home)
        .with_context(|| format!("creating {}", opts.home.display()))?;
    let authority = master_authority(&opts.join)?;
    let identity = match load_identity(&opts.home)? {
        Some(id) if id.master == authority => id,
        existing => {
            if let Some(old) = existing {
                info!(old = %old.master, new = %authority, "joining another master");
            }
            let token = opts.token.as_deref().context(
                "this node has not joined yet: pass --token (from `orca node token create` on the master)",
            )?;
            let name = opts.name.clone().unwrap_or_else(|| node.hostname.clone());
            let advertise = match &opts.advertise_addr {
                Some(a) => a.clone(),
                None => local_addr_towards(&authority).await?,
            };
            let swarm = engine
                .swarm()
                .await
                .context("reading this engine's swarm membership")?;
            let id = join(&authority, token, &name, &advertise, &opts.labels, swarm).await?;
            crate::server::write_private(
                &identity_path(&opts.home),
                &serde_json::to_string_pretty(&id)?,
            )?;
            info!(node = %id.name, master = %authority, "joined the cluster");
            id
        }
    };
    let engine = scoped(
        engine,
        ClusterScope {
            name: identity.cluster.clone(),
            id: identity.cluster_id.clone(),
        },
    );
    let config =
        super::tls::session_config(&identity.ca_pem, &identity.cert_pem, &identity.key_pem)?;
    let hello = Hello {
        name: identity.name.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        advertise_addr: identity.advertise_addr.clone(),
        labels: identity.labels.clone(),
        node,
        swarm: None,
    };
    let mut backoff = Backoff::new();
    loop {
        let connected = std::sync::atomic::AtomicBool::new(false);
        let result = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            r = session(&authority, config.clone(), engine.clone(), hello.clone(), opts.heartbeat, &connected) => r,
        };
        // A session that was established starts the back-off over: only failures to reach
        // the master in a row make it grow.
        if connected.load(std::sync::atomic::Ordering::Relaxed) {
            backoff = Backoff::new();
        }
        let wait = backoff.next();
        match result {
            Ok(()) => {
                warn!(master = %authority, retry_in_ms = wait.as_millis() as u64, "session with the master ended; reconnecting")
            }
            Err(e) => {
                warn!(master = %authority, error = %format!("{e:#}"), retry_in_ms = wait.as_millis() as u64, "cannot reach the master; retrying")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Exponential back-off: 5 s doubling to 60 s, each wait with up to 20 % jitter.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(Duration::from_secs(5))
    }

    fn next(&mut self) -> Duration {
        let base = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(60));
        let jitter = rand::random::<f64>() * 0.2;
        base.mul_f64(1.0 - jitter / 2.0)
    }
}

fn load_identity(home: &Path) -> anyhow::Result<Option<Identity>> {
    let path = identity_path(home);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| {
            format!("{} is unreadable; remove it to join again", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The local address this machine uses to reach the master: the default advertise address.
async fn local_addr_towards(authority: &str) -> anyhow::Result<String> {
    let stream = TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to the master at {authority}"))?;
    Ok(stream.local_addr()?.ip().to_string())
}

async fn tls_connect(
    authority: &str,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(authority))
        .await
        .map_err(|_| {
            anyhow::anyhow!("connecting to the master at {authority}: timed out after 10 s")
        })?
        .with_context(|| format!("connecting to the master at {authority}"))?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        TlsConnector::from(config).connect(super::tls::master_name(), tcp),
    )
    .await
    .map_err(|_| anyhow::anyhow!("TLS with the master at {authority}: timed out"))?
    .with_context(|| format!("TLS with the master at {authority}"))?;
    Ok(tls)
}

/// Joins with `token`: returns the new identity.
async fn join(
    authority: &str,
    token: &str,
    name: &str,
    advertise_addr: &str,
    labels: &BTreeMap<String, String>,
    swarm: Option<SwarmInfo>,
) -> anyhow::Result<Identity> {
    let parsed = JoinToken::parse(token).map_err(|e| anyhow::anyhow!("--token: {e}"))?;
    let (key_pem, csr_pem) = super::ca::node_key_and_request(name)?;
    let tls = tls_connect(authority, super::tls::join_config(&parsed.ca_fingerprint)?).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let body = serde_json::to_vec(&JoinRequest {
        token: token.to_string(),
        name: name.to_string(),
        csr_pem,
        advertise_addr: advertise_addr.to_string(),
        labels: labels.clone(),
        swarm,
    })?;
    let req = Request::builder()
        .method(Method::POST)
        .uri(JOIN_PATH)
        .header(hyper::header::HOST, super::ca::MASTER_NAME)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = send
        .send_request(req)
        .await
        .context("sending the join request")?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        let reason = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        bail!("the master refused the join ({status}): {reason}");
    }
    let answer: JoinResponse = serde_json::from_slice(&bytes).context("reading the join answer")?;
    // The CA the master sent must be the pinned one (the TLS verifier checked the chain).
    let ca_der =
        <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::from_pem_slice(
            answer.ca_pem.as_bytes(),
        )
        .context("reading the cluster CA from the join answer")?;
    if super::ca::fingerprint(&ca_der) != parsed.ca_fingerprint {
        bail!("the master's join answer carries another CA than the token pins");
    }
    Ok(Identity {
        master: authority.to_string(),
        name: answer.name,
        advertise_addr: advertise_addr.to_string(),
        labels: labels.clone(),
        cluster: answer.cluster,
        cluster_id: answer.cluster_id,
        ca_pem: answer.ca_pem,
        cert_pem: answer.cert_pem,
        key_pem,
    })
}

/// Joins this node's engine to the cluster's swarm (overlay networking), unless it already
/// is in it. An engine in another swarm is never moved: that is the operator's call.
async fn join_swarm<R: ContainerRuntime>(engine: &R, join: &SwarmJoin) -> Result<(), RuntimeError> {
    let now = engine.swarm().await?.unwrap_or_default();
    if now.is_member() {
        if now.managers.iter().any(|m| join.managers.contains(m)) {
            return Ok(());
        }
        return Err(RuntimeError::Engine {
            op: "join the cluster's swarm".into(),
            reason: format!(
                "this node's engine already belongs to another swarm (managers {:?}); \
                 run `docker swarm leave` on it first",
                now.managers
            ),
        });
    }
    engine.swarm_join(join).await
}

/// One session: connect, then serve the master's calls until the connection ends.
async fn session<R: ContainerRuntime>(
    authority: &str,
    config: Arc<rustls::ClientConfig>,
    engine: Arc<R>,
    hello: Hello,
    heartbeat: Duration,
    connected: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<()> {
    let tls = tls_connect(authority, config).await?;
    if tls.get_ref().1.alpn_protocol() != Some(super::proto::SESSION_ALPN) {
        bail!("the master at {authority} does not speak the agent protocol");
    }
    connected.store(true, std::sync::atomic::Ordering::Relaxed);
    info!(master = %authority, node = %hello.name, "connected to the master");
    let hello = Arc::new(hello);
    let clock = Arc::new(super::stale::SessionClock::default());
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let engine = engine.clone();
        let hello = hello.clone();
        let clock = clock.clone();
        async move {
            // A command the master gave up on is never acted on when it arrives late.
            let now = crate::controller::now_ms() as i64;
            clock.observe(&req, now);
            if let Err(why) = clock.check(&req, now) {
                warn!(reason = %why, "refused a stale command");
                let mut resp = answer::<()>(Err(RuntimeError::Engine {
                    op: req.uri().path().to_string(),
                    reason: why,
                }));
                *resp.status_mut() = StatusCode::GONE;
                return Ok::<_, Infallible>(resp);
            }
            Ok::<_, Infallible>(route(req, &engine, &hello, heartbeat).await)
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .keep_alive_timeout(Duration::from_secs(15))
        .max_concurrent_streams(1024);
    builder
        .serve_connection(TokioIo::new(tls), service)
        .await
        .context("agent session")?;
    Ok(())
}

fn json<T: Serialize>(value: &T) -> Response<RespBody> {
    let mut resp = Response::new(full(serde_json::to_vec(value).expect("serializable")));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn answer<T: Serialize>(result: Result<T, RuntimeError>) -> Response<RespBody> {
    match result {
        Ok(v) => json(&v),
        Err(e) => {
            let mut resp = json(&e);
            *resp.status_mut() = status_of(&e);
            resp
        }
    }
}

fn bad_request(why: &str) -> Response<RespBody> {
    answer::<()>(Err(RuntimeError::Engine {
        op: "agent request".into(),
        reason: why.to_string(),
    }))
}

/// A stream of JSON lines, each a `Result<T, RuntimeError>`.
fn lines<T: Serialize + Send + 'static>(
    stream: BoxStream<'static, Result<T, RuntimeError>>,
) -> Response<RespBody> {
    let body = StreamBody::new(stream.map(|item| {
        let mut line = serde_json::to_vec(&item).expect("serializable");
        line.push(b'\n');
        Ok::<_, std::io::Error>(Frame::data(Bytes::from(line)))
    }));
    Response::new(BodyExt::boxed_unsync(body))
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), crate::cli::client::dec(v)))
        .collect()
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, String> {
    let bytes = req
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// The agent's routes: each one [`ContainerRuntime`] call on the node's engine.
async fn route<R: ContainerRuntime>(
    req: Request<Incoming>,
    engine: &Arc<R>,
    hello: &Hello,
    heartbeat: Duration,
) -> Response<RespBody> {
    let method = req.method().clone();
    let uri_path = req.uri().path().to_string();
    let q = query(&req);
    let container = uri_path
        .strip_prefix(path::CONTAINERS)
        .and_then(|rest| rest.strip_prefix('/'))
        .map(|rest| {
            let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
            (crate::cli::client::dec(id), action.to_string())
        });
    match (method, uri_path.as_str(), container) {
        (Method::GET, path::HELLO, _) => {
            // The swarm membership as it is now (the master joins the engine to the
            // cluster's swarm between sessions).
            let mut hello = hello.clone();
            hello.swarm = engine.swarm().await.unwrap_or_else(|e| {
                warn!(error = %e, "reading this engine's swarm membership");
                None
            });
            json(&hello)
        }
        (Method::GET, path::SWARM, _) => answer(engine.swarm().await),
        (Method::POST, path::SWARM_JOIN, _) => match read_json::<SwarmJoin>(req).await {
            Ok(join) => answer(join_swarm(engine.as_ref(), &join).await),
            Err(e) => bad_request(&e),
        },
        (Method::POST, path::SWARM_LEAVE, _) => answer(engine.swarm_leave().await),
        (Method::GET, path::NODE, _) => answer(engine.node_info().await),
        (Method::GET, path::CONTAINERS, _) => answer(engine.list().await),
        (Method::GET, path::VOLUMES, _) => answer(engine.list_volumes().await),
        (Method::POST, path::VOLUMES_REMOVE, _) => match read_json::<String>(req).await {
            Ok(name) => answer(engine.remove_volume(&name).await),
            Err(e) => bad_request(&e),
        },
        (Method::POST, path::CONTAINERS, _) => match read_json::<ContainerSpec>(req).await {
            Ok(spec) => answer(engine.create_and_start(&spec).await),
            Err(e) => bad_request(&e),
        },
        (Method::POST, path::NETWORKS_ENSURE, _) => match read_json::<EnsureNetwork>(req).await {
            Ok(n) => answer(engine.ensure_network(&n.name, &n.labels).await),
            Err(e) => bad_request(&e),
        },
        (Method::POST, path::NETWORKS_REMOVE, _) => match read_json::<String>(req).await {
            Ok(name) => answer(engine.remove_network(&name).await),
            Err(e) => bad_request(&e),
        },
        (Method::GET, path::IMAGE_EXISTS, _) => match q.get("image") {
            Some(image) => answer(engine.image_exists(image).await),
            None => bad_request("missing image"),
        },
        (Method::POST, path::IMAGE_PULL, _) => match q.get("image") {
            Some(image) => answer(engine.pull_image(image).await),
            None => bad_request("missing image"),
        },
        (Method::POST, path::IMAGE_LOAD, _) => {
            let tar = BodyStream::new(req.into_body())
                .filter_map(|frame| async move {
                    match frame {
                        Ok(f) => f.into_data().ok().map(Ok),
                        Err(e) => Some(Err(RuntimeError::Unavailable {
                            reason: format!("image stream from the master broke: {e}"),
                        })),
                    }
                })
                .boxed();
            answer(engine.import_image(tar).await)
        }
        (Method::GET, path::EVENTS, _) => {
            let ticks = futures::stream::unfold(
                tokio::time::interval(heartbeat),
                |mut interval| async move {
                    interval.tick().await;
                    let now = crate::controller::now_ms();
                    Some((Ok(AgentEvent::Heartbeat { unix_ms: now }), interval))
                },
            );
            let events = engine.events().map(|item| {
                Ok(match item {
                    Ok(event) => AgentEvent::Runtime { event },
                    Err(e) => AgentEvent::EngineError {
                        reason: e.to_string(),
                    },
                })
            });
            lines(futures::stream::select(ticks, events).boxed())
        }
        (Method::POST, _, Some((id, action))) if action.starts_with("remove") => {
            let grace = q
                .get("grace_ms")
                .and_then(|g| g.parse::<u64>().ok())
                .unwrap_or(10_000);
            answer(
                engine
                    .stop_and_remove(&id, Duration::from_millis(grace))
                    .await,
            )
        }
        (Method::GET, _, Some((id, action))) if action == "logs" => {
            let tail = q.get("tail").and_then(|t| t.parse().ok());
            let follow = q.get("follow").is_some_and(|f| f == "true");
            lines(engine.logs(&id, tail, follow))
        }
        (Method::GET, _, Some((id, action))) if action == "stats" => {
            answer(engine.stats(&id).await)
        }
        _ => {
            let mut resp = bad_request("no such agent route");
            *resp.status_mut() = StatusCode::NOT_FOUND;
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_url_needs_https_and_defaults_the_port() {
        assert_eq!(
            master_authority("https://10.0.0.1:7000").unwrap(),
            "10.0.0.1:7000"
        );
        assert_eq!(
            master_authority("https://m.example/").unwrap(),
            "m.example:6880"
        );
        assert!(master_authority("http://m:6880").is_err());
        assert!(master_authority("https://m:6880/x").is_err());
    }

    #[test]
    fn backoff_doubles_from_5_to_60_seconds_with_jitter() {
        let mut b = Backoff::new();
        let waits: Vec<u64> = (0..6).map(|_| b.next().as_millis() as u64).collect();
        assert!((4500..=5000).contains(&waits[0]), "{waits:?}");
        assert!((9000..=10000).contains(&waits[1]), "{waits:?}");
        assert!((54000..=60000).contains(&waits[5]), "{waits:?}");
    }
}
