//! `orca server`: wires the store, the Docker runtime, the controller, the proxy and the API
//! into one process, and shuts them down gracefully (containers keep running); takes its
//! listening sockets over from a running server of the same state dir (`handover`).

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use orca_docker::{ContainerRuntime, DockerRuntime};
use orca_proxy::{Proxy, ProxyConfig, ProxyMetrics, Routes};
use orca_store::{SecretBox, Store, StoredToken};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{self, AppState};
use crate::certs::CertManager;
use crate::controller::Controller;
use crate::handover;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::plugins::{PluginOrigin, PluginRuntime, RuntimeLimits};
use crate::registry::Registry;
use crate::stats::Stats;

/// Where the server keeps things and listens.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// State dir (`ORCA_HOME`): `cluster.db`, `secret.key`, `credentials`.
    pub home: PathBuf,
    /// Config dir (`ORCA_CONFIG_DIR`): `cluster.toml`, `services/`.
    pub config_dir: PathBuf,
    /// REST API listen address.
    pub api_addr: SocketAddr,
    /// HTTP proxy listen address.
    pub http_addr: SocketAddr,
    /// HTTPS listen address (TLS, certificates by SNI, HTTP/2 or HTTP/1.1 by ALPN).
    pub https_addr: SocketAddr,
}

/// Store file inside the state dir.
pub fn store_path(home: &Path) -> PathBuf {
    home.join("cluster.db")
}

/// Credentials file the server writes at bootstrap and the CLI reads.
pub fn credentials_path(home: &Path) -> PathBuf {
    home.join("credentials")
}

/// How a server run ended.
#[derive(Debug)]
pub enum Exit {
    /// Stopped (a signal, or its sockets were handed over to a successor).
    Stopped,
    /// Asked to re-execute its (replaced) binary: call [`ReExec::exec`].
    ReExec(ReExec),
}

/// A re-exec of the server binary in place, keeping the listening sockets.
#[derive(Debug)]
pub struct ReExec {
    exe: PathBuf,
    args: Vec<std::ffi::OsString>,
    listeners: handover::Listeners,
}

impl ReExec {
    /// Replaces this process with the server binary; returns only on failure.
    pub fn exec(self) -> anyhow::Error {
        let e = handover::reexec(&self.exe, &self.args, &self.listeners);
        anyhow::anyhow!("re-executing {}: {e}", self.exe.display())
    }
}

/// Binds a listening socket (address reuse, backlog 1024 as tokio's `bind`), for the
/// hand-over as a std listener.
fn bind_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)?.into_std()
}

fn tokio_listener(listener: std::net::TcpListener) -> std::io::Result<TcpListener> {
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// Runs the server until `shutdown` is cancelled (or a hand-over request cancels it).
pub async fn run(cfg: ServerConfig, shutdown: CancellationToken) -> anyhow::Result<Exit> {
    let exe = std::env::current_exe().context("locating the server binary")?;
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    // One crypto provider for every TLS user in the process (proxy, ACME client). An error
    // means one is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    crate::process::private_umask();
    let fd_limit = match crate::process::raise_fd_limit() {
        Ok(limit) => Some(limit),
        Err(e) => {
            warn!(error = %e, "could not raise the file descriptor limit");
            None
        }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.home)
        .with_context(|| format!("creating state dir {}", cfg.home.display()))?;
    let cluster =
        orca_config::load_cluster_config(&cfg.config_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let store_file = store_path(&cfg.home);
    // The state dir may exist already (made by hand, or by an older orca): it is private.
    fs::set_permissions(&cfg.home, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making state dir {} private (0700)", cfg.home.display()))?;

    // What takes long and needs no store comes first: while a predecessor still serves,
    // and before the sockets are taken over, so the gap in which nobody accepts is short.
    let limits = RuntimeLimits {
        call_deadline: Duration::from_millis(cluster.plugins.call_deadline_ms),
        memory_bytes: (cluster.plugins.memory_limit_mib as usize) << 20,
        build_deadline: Duration::from_secs(cluster.build.timeout_secs),
        ..RuntimeLimits::default()
    };
    let plugin_runtime = PluginRuntime::new(limits, Some(crate::plugins::cache_dir(&cfg.home)))
        .context("starting the plugin runtime")?;
    let registry = Registry::new(plugin_runtime, &cfg.home);
    // Load every built-in once at start: a broken embedded plugin fails here, not mid-rollout.
    for name in crate::plugins::builtin_names() {
        let bytes = crate::plugins::builtin(name).expect("listed built-ins exist");
        registry
            .runtime()
            .load(bytes, PluginOrigin::Builtin(name.to_string()))
            .with_context(|| format!("loading built-in plugin {name}"))?;
    }

    // Settings that can be refused are checked before a running server is asked to hand
    // over: a successor that fails after taking the sockets leaves nobody serving.
    let acme = match &cluster.acme {
        Some(settings) => Some(crate::certs::AcmePolicy::from_settings(
            settings,
            &cfg.config_dir,
        )?),
        None => None,
    };
    crate::notify::check(&cluster.notify).map_err(|e| anyhow::anyhow!("{e}"))?;
    let git = crate::build::git::GitAccess::new(&cluster.build, &cfg.home)
        .map_err(|e| anyhow::anyhow!("cluster.toml: {e}"))?;
    let (listeners, origin) = handover::acquire(&cfg.home, || {
        Ok(handover::Listeners {
            api: bind_listener(cfg.api_addr)
                .with_context(|| format!("binding the API to {}", cfg.api_addr))?,
            http: bind_listener(cfg.http_addr)
                .with_context(|| format!("binding the HTTP proxy to {}", cfg.http_addr))?,
            https: bind_listener(cfg.https_addr)
                .with_context(|| format!("binding the HTTPS proxy to {}", cfg.https_addr))?,
        })
    })?;
    let kept = listeners
        .try_clone()
        .context("keeping the listening sockets for a hand-over")?;
    let inherited = !matches!(origin, handover::Origin::Bound);
    if let handover::Origin::Predecessor(predecessor) = origin {
        let pid = predecessor.pid;
        let waited = std::time::Instant::now();
        tokio::task::spawn_blocking(move || predecessor.wait_released())
            .await
            .context("waiting for the previous server")??;
        info!(
            pid,
            waited_ms = waited.elapsed().as_millis() as u64,
            "previous server exited; opening the store"
        );
    }
    let store = Store::open(&store_file)?;
    fs::set_permissions(&store_file, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making store {} private (0600)", store_file.display()))?;
    let secrets = Arc::new(
        SecretBox::load_or_create(&cfg.home.join("secret.key")).context("loading secrets key")?,
    );

    let config_tokens: Vec<_> = cluster
        .tokens
        .iter()
        .map(|t| (t.name.clone(), orca_store::hash_token(&t.value), t.role))
        .collect();
    let mut stored_tokens = store.list_tokens()?;
    if config_tokens.is_empty() && stored_tokens.is_empty() {
        stored_tokens.push(bootstrap_admin(&store, &cfg)?);
    }
    let tokens = Arc::new(ArcSwap::from_pointee(api::admin::token_set(
        &config_tokens,
        &stored_tokens,
    )));

    let cluster_id = store.cluster_id_or_init(&new_cluster_id())?;
    let scope = orca_docker::ClusterScope {
        name: cluster.cluster.name.clone(),
        id: cluster_id.clone(),
    };
    let runtime = DockerRuntime::connect()
        .await
        .context("connecting to the Docker Engine (is dockerd running and DOCKER_HOST right?)")?
        .scoped(scope);
    let others = runtime
        .same_name_other_id()
        .await
        .context("listing containers")?;
    if let Some((container, other_id)) = others.first() {
        bail!(
            "cluster name {:?} is already used on this Docker Engine by another orca server \
             (cluster id {other_id}, {} container(s), e.g. {container}); this server's cluster id \
             is {cluster_id}. Give this server its own [cluster] name in {}/cluster.toml",
            cluster.cluster.name,
            others.len(),
            cfg.config_dir.display()
        );
    }
    info!(cluster = %cluster.cluster.name, id = %cluster_id, "cluster identity");
    let runtime = Arc::new(runtime);
    let node = runtime
        .node_info()
        .await
        .context("reading Docker Engine info")?;

    let api_listener = tokio_listener(listeners.api)?;
    let http_listener = tokio_listener(listeners.http)?;
    let https_listener = tokio_listener(listeners.https)?;
    let api_addr = api_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let https_addr = https_listener.local_addr()?;

    let routes = Routes::new();
    let proxy_metrics = ProxyMetrics::new();
    let metrics = Metrics::new(|r| proxy_metrics.register(r));
    let health = Health::new(registry.clone());
    let left = handover::take_ready(&cfg.home, crate::controller::now_ms());
    if inherited {
        info!(
            instances = left.len(),
            "starting with the previous server's ready instances"
        );
        health.seed_ready(left);
    }
    let proxy = Proxy::new(
        proxy_config(&cluster.proxy),
        routes.clone(),
        proxy_metrics.clone(),
    );
    let in_flight = proxy.in_flight();
    let route_stats = proxy.route_stats();
    if let Some(policy) = &acme {
        info!(directory = %crate::certs::describe(policy), "ACME enabled");
    }
    let notifier =
        crate::notify::Notifier::start(cluster.notify.clone(), cluster.cluster.name.clone());
    let events = crate::events::Events::start(
        store.clone(),
        vec![notifier.clone() as Arc<dyn crate::events::Sink>],
        shutdown.clone(),
    );
    let cert_manager = CertManager::new(
        store.clone(),
        secrets.clone(),
        proxy.certificates(),
        proxy.challenges(),
        acme,
    )
    .with_events(events.clone());
    tokio::spawn(cert_manager.run(shutdown.clone()));
    let ca = crate::nodes::ClusterCa::load_or_create(&store, &secrets, &cluster.cluster.name)?;
    let nodes = crate::nodes::Nodes::new(
        store.clone(),
        ca,
        cluster.cluster.name.clone(),
        cluster_id.clone(),
        node.hostname.clone(),
        Duration::from_secs(cluster.nodes.node_ttl_secs),
    )?;
    info!(ca = %nodes.ca().fingerprint(), "cluster CA");
    let host_ports = cluster
        .nodes
        .host_port_range()
        .expect("checked when cluster.toml was loaded");
    let host_paths: Vec<std::path::PathBuf> = cluster
        .volumes
        .host_paths
        .iter()
        .map(std::path::PathBuf::from)
        .collect();
    let controller = Arc::new(
        Controller::new(
            runtime.clone(),
            store.clone(),
            secrets.clone(),
            registry.clone(),
            routes.clone(),
            health,
            metrics.clone(),
            cluster.cluster.name.clone(),
            node.clone(),
            Arc::new(move |addr| in_flight.get(addr)),
            route_stats,
        )
        .with_events(events.clone())
        .with_nodes(
            nodes.clone(),
            host_ports,
            cluster.nodes.overlay_pools.clone(),
            cluster.nodes.drain_parallel,
        )
        .with_host_paths(host_paths.clone()),
    );
    let handle = controller.handle();
    nodes.set_controller(handle.clone());
    let watchdog = Duration::from_secs(cluster.cluster.watchdog_interval_secs.max(1));
    let controller_task = tokio::spawn(controller.run(watchdog, shutdown.clone()));
    let stats = Stats::new();
    tokio::spawn(stats.clone().run(
        runtime.clone(),
        nodes.clone(),
        node.hostname.clone(),
        handle.clone(),
        metrics.clone(),
        Duration::from_secs(cluster.cluster.stats_interval_secs.max(1)),
        shutdown.clone(),
    ));

    // Accept only once the first pass published a routing table: a connection taken
    // before would find no route (the kernel's backlog holds it meanwhile).
    let first_pass = std::time::Instant::now();
    while handle.view().observed_at_ms == 0 && first_pass.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    info!(
        waited_ms = first_pass.elapsed().as_millis() as u64,
        "first controller pass published"
    );
    let last_view = handle.clone();
    let proxy_shutdown = shutdown.clone();
    let proxy_task = tokio::spawn(async move {
        proxy
            .serve_with_tls(http_listener, https_listener, async move {
                proxy_shutdown.cancelled().await
            })
            .await
    });

    let builds = Arc::new(
        crate::build::Builds::new(
            runtime.clone(),
            store.clone(),
            registry.clone(),
            git,
            &cfg.home,
        )
        .with_events(events.clone()),
    );
    let webhooks = Arc::new(
        crate::webhooks::Webhooks::new(
            store.clone(),
            secrets.clone(),
            registry.clone(),
            handle.clone(),
            builds.clone(),
        )
        .with_events(events.clone()),
    );
    let backups = Arc::new(crate::backup::Backups::new(
        &cfg.home,
        store.clone(),
        runtime.clone(),
        handle.clone(),
        events.clone(),
        cluster.cluster.name.clone(),
        cluster.backup.clone(),
    ));
    tokio::spawn(backups.clone().run_schedule(shutdown.clone()));
    let state = AppState {
        backups,
        store,
        secrets,
        registry,
        tokens,
        config_tokens: Arc::new(config_tokens),
        controller: handle,
        stats,
        runtime,
        metrics,
        cluster: cluster.cluster.name.clone(),
        node,
        api_addr,
        webhooks,
        builds,
        events,
        notifier,
        nodes: nodes.clone(),
        host_paths: Arc::new(host_paths),
    };
    let app = api::app(state);
    let tls_app = app.clone();
    let tls: api::listener::TlsHandler = Arc::new(move |stream, peer| {
        Box::pin(nodes.clone().accept_tls(stream, peer, tls_app.clone()))
    });
    let requests = handover::serve(&cfg.home, kept.try_clone()?, exe.clone(), shutdown.clone())
        .context("serving the hand-over socket")?;
    // Start-up's transient allocations (compiling the built-ins on a first start, the
    // first pass) are freed by now; give their pages back instead of keeping them resident.
    crate::process::release_free_heap();
    info!(
        version = crate::version::current(),
        api = %api_addr,
        http = %http_addr,
        https = %https_addr,
        cluster = %cluster.cluster.name,
        home = %cfg.home.display(),
        config = %cfg.config_dir.display(),
        fd_limit = fd_limit.unwrap_or(0),
        "orca server ready"
    );
    api::listener::serve(
        api_listener,
        app,
        api::listener::Limits::from_settings(&cluster.api, fd_limit),
        Some(tls),
        shutdown.clone(),
    )
    .await
    .context("serving the API")?;

    // The API stopped because shutdown was requested; let the rest wind down.
    match tokio::time::timeout(Duration::from_secs(15), proxy_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "proxy ended with an error"),
        Ok(Err(e)) => warn!(error = %e, "proxy task failed"),
        Err(_) => warn!("proxy did not finish in-flight requests within 15 s"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), controller_task).await;
    if requests.succeeded() {
        handover::save_ready(
            &cfg.home,
            &last_view.view().ready,
            crate::controller::now_ms(),
        );
    }
    if requests.reexec() {
        info!(exe = %exe.display(), "orca server stopped; re-executing; containers keep running");
        return Ok(Exit::ReExec(ReExec {
            exe,
            args,
            listeners: kept,
        }));
    }
    info!("orca server stopped; containers keep running");
    Ok(Exit::Stopped)
}

/// A fresh random cluster id (64 bits, hex), stored at first start.
fn new_cluster_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// The proxy's timeouts and limits from `[proxy]`.
fn proxy_config(settings: &orca_config::ProxySettings) -> ProxyConfig {
    ProxyConfig {
        connect_timeout: Duration::from_millis(settings.connect_timeout_ms),
        request_timeout: Duration::from_secs(settings.request_timeout_secs),
        header_read_timeout: Duration::from_secs(settings.header_read_timeout_secs),
        body_read_timeout: Duration::from_secs(settings.body_read_timeout_secs),
        idle_timeout: Duration::from_secs(settings.idle_timeout_secs),
        max_request_body: settings.max_request_body.0,
    }
}

/// First start with no token anywhere: create an admin token and write it, with the API
/// address, to the credentials file (mode 0600) the CLI reads.
fn bootstrap_admin(store: &Store, cfg: &ServerConfig) -> anyhow::Result<StoredToken> {
    let value = orca_store::generate_token();
    let token = StoredToken {
        name: "admin".into(),
        hash: orca_store::hash_token(&value),
        role: orca_config::Role::Admin,
        created_at: crate::controller::now_ms() / 1000,
    };
    store.put_token(&token)?;
    let api = if cfg.api_addr.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", cfg.api_addr.port())
    } else {
        format!("http://{}", cfg.api_addr)
    };
    let path = credentials_path(&cfg.home);
    write_private(
        &path,
        &format!("# written by orca server at first start\napi = \"{api}\"\ntoken = \"{value}\"\n"),
    )?;
    info!(credentials = %path.display(), "no tokens configured: created admin token \"admin\"");
    Ok(token)
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    if path.exists() {
        fs::remove_file(path).with_context(|| format!("replacing {}", path.display()))?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    let mode = f.metadata()?.permissions().mode() & 0o777;
    if mode != 0o600 {
        bail!("{} has mode {mode:o}, expected 600", path.display());
    }
    Ok(())
}
