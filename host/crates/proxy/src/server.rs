//! The accept loops: worker threads (one current-thread runtime each, by default one per
//! core) sharing the listening sockets, new connections spread evenly over them, one task
//! per client connection on its worker, connection limits, an fd reserve for `EMFILE`, and
//! a graceful drain.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::FutureExt;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::balance::InFlightView;
use crate::challenge::Challenges;
use crate::config::ProxyConfig;
use crate::forward::{Forwarder, Scheme};
use crate::metrics::ProxyMetrics;
use crate::stats::RouteStats;
use crate::table::Routes;
use crate::tls::{self, Certificates, ALPN_H2};
use crate::upstream::{Pool, UpstreamConnections};

/// Drives one served connection until it ends, starting a graceful shutdown (finish the
/// request in progress, then close; idle connections close at once) when the drain phase
/// begins, and cutting it off when the shutdown grace expires. `$driver` (the client
/// connection's owned upstream connections, see `upstream`) is polled in the same task
/// until then, and dropped with it. A macro, not a function: hyper's HTTP/1 (upgradeable)
/// and HTTP/2 connections share no trait for this.
macro_rules! drive_connection {
    ($conn:expr, $driver:expr, $phase:expr, $peer:expr) => {{
        let driver = $driver;
        tokio::pin!(driver);
        tokio::select! {
            biased;
            () = driver.as_mut() => {}
            () = async { drive_served!($conn, $phase, $peer) } => {}
        }
    }};
}

/// The served half of [`drive_connection`].
macro_rules! drive_served {
    ($conn:expr, $phase:expr, $peer:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            () = phase_reached(&mut $phase, Phase::Draining) => {
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    result = conn.as_mut() => result,
                    () = phase_reached(&mut $phase, Phase::Abort) => {
                        debug!(peer = %$peer, "connection cut off: shutdown grace expired");
                        return;
                    }
                }
            }
        };
        // A broken client connection is that client's problem, never the loop's.
        if let Err(e) = result {
            debug!(peer = %$peer, error = %e, "client connection error");
        }
    }};
}

/// How long in-flight requests (and upgraded connections) may run after shutdown begins.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long, after the listeners close, open HTTP/1.1 keep-alive connections are still
/// served (each response then says `Connection: close`) before idle ones are closed.
/// Closing an idle keep-alive connection races with a client sending on it (the client
/// sees a reset, not an answer); a client that is sending gets its answer and reconnects
/// instead, on the listening socket a successor (socket hand-over) now accepts on.
pub const DEFAULT_CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Caps on open client connections, checked when a connection is accepted; a connection
/// over a cap is closed at once (before any byte is read), so one client (or one address)
/// cannot take every connection and file descriptor of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections per listener (plain HTTP and HTTPS each have their own count).
    pub per_listener: usize,
    /// Open connections per listener from one source IP address.
    pub per_source: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            per_listener: 16_384,
            per_source: 2_048,
        }
    }
}

/// The reverse proxy. Build it with [`Proxy::new`], run it with [`Proxy::serve`].
pub struct Proxy {
    forwarder: Arc<Forwarder>,
    drain: Drain,
    http: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    grace: Duration,
    linger: Duration,
    handshake_timeout: Duration,
    limits: ConnectionLimits,
    workers: usize,
    upstreams: UpstreamConnections,
}

impl Proxy {
    /// A proxy routing by `routes` (swap tables in through any clone of it).
    pub fn new(config: ProxyConfig, routes: Routes, metrics: ProxyMetrics) -> Proxy {
        // Plain HTTP is HTTP/1.1 only. On TLS the protocol is chosen by ALPN, not sniffed:
        // hyper-util's `auto` builder sniffs with no deadline of its own, which would lose
        // the slowloris protection of `header_read_timeout`.
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .keep_alive(true);
        // HTTP/2 has no header timeout; pings find dead peers, and the TLS handshake before
        // it is bounded by `header_read_timeout`.
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20))
            .max_concurrent_streams(256);
        let handshake_timeout = config.header_read_timeout;
        let drain = Drain::new();
        Proxy {
            forwarder: Arc::new(Forwarder::new(config, routes, metrics, drain.clone())),
            drain,
            http,
            http2,
            grace: DEFAULT_SHUTDOWN_GRACE,
            linger: DEFAULT_CLOSE_LINGER,
            handshake_timeout,
            limits: ConnectionLimits::default(),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            upstreams: UpstreamConnections::default(),
        }
    }

    /// The certificates the HTTPS listener serves by SNI. Insert and remove through any
    /// clone, at any time; handshakes use the set as it is when they start.
    pub fn certificates(&self) -> Certificates {
        self.forwarder.certificates()
    }

    /// The pending ACME HTTP-01 challenges the plain-HTTP listener answers under
    /// `/.well-known/acme-challenge/`.
    pub fn challenges(&self) -> Challenges {
        self.forwarder.challenges()
    }

    /// A handle reporting how many requests are in flight to each backend address
    /// (including open upgraded connections), for draining a backend before stopping it.
    /// Take it before [`Proxy::serve`] consumes the proxy; it stays valid afterwards.
    pub fn in_flight(&self) -> InFlightView {
        self.forwarder.in_flight()
    }

    /// A handle to cumulative per-service request and 5xx counts. Take it before
    /// [`Proxy::serve`] consumes the proxy; it stays valid afterwards.
    pub fn route_stats(&self) -> RouteStats {
        self.forwarder.route_stats()
    }

    /// Sets how long in-flight requests may run after shutdown begins (default 10 s).
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Proxy {
        self.grace = grace;
        self
    }

    /// Sets how long keep-alive connections are still served, with `Connection: close`,
    /// after the listeners close (default [`DEFAULT_CLOSE_LINGER`]).
    pub fn with_close_linger(mut self, linger: Duration) -> Proxy {
        self.linger = linger;
        self
    }

    /// Sets the caps on open client connections (default [`ConnectionLimits::default`]).
    pub fn with_connection_limits(mut self, limits: ConnectionLimits) -> Proxy {
        self.limits = limits;
        self
    }

    /// Sets how many worker threads serve connections (default: one per available core;
    /// at least 1).
    pub fn with_workers(mut self, workers: usize) -> Proxy {
        self.workers = workers.max(1);
        self
    }

    /// Sets which upstream connections requests use (default
    /// [`UpstreamConnections::PerClient`]); the others are for comparisons.
    pub fn with_upstream_connections(mut self, upstreams: UpstreamConnections) -> Proxy {
        self.upstreams = upstreams;
        self
    }

    /// Serves connections from `listener` until `shutdown` completes, then stops accepting,
    /// closes idle connections, and waits up to the shutdown grace for in-flight requests
    /// and upgraded (WebSocket) connections before returning; what is still running then is
    /// cut off. Errors on one connection are logged at debug and never end the loop.
    ///
    /// Connections are served on the proxy's own worker threads, not on the caller's
    /// runtime: whatever else the process runs there (the API, the controller) cannot
    /// starve the proxy, nor the reverse.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve_listeners(listener, None, shutdown).await
    }

    /// Like [`Proxy::serve`], and also terminates TLS on `https` (certificates by SNI from
    /// [`Proxy::certificates`], HTTP/2 or HTTP/1.1 by ALPN). Plain-HTTP requests for a
    /// domain with a certificate are redirected to `https`'s port from then on.
    pub async fn serve_with_tls(
        self,
        http: TcpListener,
        https: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve_listeners(http, Some(https), shutdown).await
    }

    async fn serve_listeners(
        self,
        listener: TcpListener,
        https: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let local = listener.local_addr()?;
        let tls = match https {
            Some(https) => {
                let local = https.local_addr()?;
                let config = tls::server_config(&self.forwarder.certificates())
                    .map_err(std::io::Error::other)?;
                self.forwarder.set_https_port(local.port());
                info!(%local, "proxy listening (TLS)");
                Some((https.into_std()?, TlsAcceptor::from(config)))
            }
            None => None,
        };
        let plain = listener.into_std()?;
        info!(%local, workers = self.workers, "proxy listening");
        let plain_admission = Arc::new(Admission::new(self.limits));
        let tls_admission = Arc::new(Admission::new(self.limits));
        // Every worker accepts on its own handle of the same sockets (each registered with
        // its own runtime): whichever is free takes the next connection, and hands it to
        // another worker when that one has fewer open (`Spread`).
        let mut workers = Vec::with_capacity(self.workers);
        let (inboxes, mut receivers): (Vec<_>, Vec<_>) =
            (0..self.workers).map(|_| mpsc::unbounded_channel()).unzip();
        let spread = Arc::new(Spread {
            open: (0..self.workers).map(|_| AtomicUsize::new(0)).collect(),
            inboxes,
        });
        for index in 0..self.workers {
            let tls = match &tls {
                Some((listener, acceptor)) => Some(WorkerListener {
                    listener: Some(listener.try_clone()?),
                    admission: tls_admission.clone(),
                    acceptor: Some(acceptor.clone()),
                }),
                None => None,
            };
            workers.push(Worker {
                index,
                spread: spread.clone(),
                inbox: receivers.remove(0),
                forwarder: self.forwarder.clone(),
                drain: self.drain.clone(),
                http: self.http.clone(),
                http2: self.http2.clone(),
                handshake_timeout: self.handshake_timeout,
                upstreams: self.upstreams,
                plain: WorkerListener {
                    listener: Some(plain.try_clone()?),
                    admission: plain_admission.clone(),
                    acceptor: None,
                },
                tls,
            });
        }
        drop(plain);
        drop(tls);
        let mut done = Vec::with_capacity(workers.len());
        for worker in workers {
            let (tx, rx) = oneshot::channel::<()>();
            let name = format!("orca-proxy-{}", worker.index);
            let spawned = std::thread::Builder::new().name(name).spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(worker.run()),
                    Err(e) => warn!(error = %e, "cannot start a proxy worker runtime"),
                }
                let _ = tx.send(());
            });
            match spawned {
                Ok(_) => done.push(rx),
                Err(e) => {
                    // Workers already running stop at once.
                    self.drain.set(Phase::Abort);
                    return Err(e);
                }
            }
        }
        shutdown.await;
        info!(in_flight = self.drain.count(), "proxy closing");
        // Workers stop accepting (and close their listener handles) on this phase; open
        // keep-alive connections are served a while longer, each answer closing its
        // connection, so no client sends on a connection closed under it.
        self.drain.set(Phase::Closing);
        let _ = tokio::time::timeout(self.linger, self.drain.idle()).await;
        info!(in_flight = self.drain.count(), "proxy draining");
        self.drain.set(Phase::Draining);
        if tokio::time::timeout(self.grace, self.drain.idle())
            .await
            .is_err()
        {
            warn!(
                remaining = self.drain.count(),
                grace = ?self.grace,
                "shutdown grace expired; closing remaining connections"
            );
            self.drain.set(Phase::Abort);
        }
        for worker in done {
            // An error means the worker thread ended without sending (a panic): done too.
            let _ = worker.await;
        }
        Ok(())
    }
}

/// One listening socket as a worker sees it.
struct WorkerListener {
    /// Taken by the worker when it starts (registered with its runtime).
    listener: Option<std::net::TcpListener>,
    admission: Arc<Admission>,
    /// The TLS acceptor, for the HTTPS listener.
    acceptor: Option<TlsAcceptor>,
}

/// One worker thread's share of the proxy: it accepts on every listener, and serves the
/// connections it accepted (or was handed by another worker, see [`Spread`]) on its own
/// current-thread runtime with its own upstream pool, so a proxied request (client task,
/// upstream connection, response) never crosses threads.
struct Worker {
    index: usize,
    spread: Arc<Spread>,
    /// New connections other workers accepted and handed to this one.
    inbox: mpsc::UnboundedReceiver<Handoff>,
    forwarder: Arc<Forwarder>,
    drain: Drain,
    http: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    handshake_timeout: Duration,
    upstreams: UpstreamConnections,
    plain: WorkerListener,
    tls: Option<WorkerListener>,
}

impl Worker {
    async fn run(mut self) {
        let upstream = self.forwarder.upstream_pool();
        let plain = match self.plain.listener.take().map(TcpListener::from_std) {
            Some(Ok(listener)) => listener,
            Some(Err(e)) => {
                warn!(worker = self.index, error = %e, "proxy worker cannot listen");
                return;
            }
            None => return,
        };
        let tls = match self.tls.as_mut().and_then(|tls| tls.listener.take()) {
            Some(listener) => match TcpListener::from_std(listener) {
                Ok(listener) => Some(listener),
                Err(e) => {
                    warn!(worker = self.index, error = %e, "proxy worker cannot listen (TLS)");
                    return;
                }
            },
            None => None,
        };
        let mut reserve = FdReserve::new();
        let mut phase = self.drain.subscribe();
        loop {
            tokio::select! {
                () = phase_reached(&mut phase, Phase::Closing) => break,
                Some(handoff) = self.inbox.recv() => self.serve_handoff(&upstream, handoff),
                accepted = plain.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if let Some(admitted) = self.plain.admission.admit(peer) {
                            self.dispatch(&upstream, stream, peer, admitted, false);
                        }
                    }
                    Err(e) => reserve.accept_failed(&plain, e).await,
                },
                accepted = accept_tls(tls.as_ref()) => match (accepted, &self.tls) {
                    (Ok((stream, peer)), Some(listener)) => {
                        if let Some(admitted) = listener.admission.admit(peer) {
                            self.dispatch(&upstream, stream, peer, admitted, true);
                        }
                    }
                    (Ok(_), None) => {}
                    (Err(e), _) => {
                        if let Some(tls) = &tls {
                            reserve.accept_failed(tls, e).await;
                        }
                    }
                },
            }
        }
        drop(plain);
        drop(tls);
        // Keep driving this worker's connections until the drain is over (and serve what
        // another worker handed over just before it stopped accepting).
        loop {
            tokio::select! {
                () = self.drain.idle() => break,
                () = phase_reached(&mut phase, Phase::Abort) => break,
                Some(handoff) = self.inbox.recv() => self.serve_handoff(&upstream, handoff),
            }
        }
    }

    /// Serves a connection this worker accepted, or hands it to a worker with fewer open
    /// connections (see [`Spread`]).
    fn dispatch(
        &self,
        upstream: &Pool,
        stream: TcpStream,
        peer: SocketAddr,
        admitted: Admitted,
        tls: bool,
    ) {
        let (target, open) = self.spread.claim(self.index);
        if target == self.index {
            return self.serve(upstream, stream, peer, (admitted, open), tls);
        }
        // Deregistered from this worker's reactor; the target registers it with its own.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                debug!(%peer, error = %e, "cannot hand over a connection");
                return;
            }
        };
        let handoff = Handoff {
            stream,
            peer,
            admitted,
            open,
            tls,
        };
        if let Err(returned) = self.spread.inboxes[target].send(handoff) {
            // That worker is gone (shutting down): serve it here.
            self.serve_handoff(upstream, returned.0);
        }
    }

    /// Serves a connection another worker accepted and handed over.
    fn serve_handoff(&self, upstream: &Pool, handoff: Handoff) {
        let Handoff {
            stream,
            peer,
            admitted,
            open,
            tls,
        } = handoff;
        match TcpStream::from_std(stream) {
            Ok(stream) => self.serve(upstream, stream, peer, (admitted, open), tls),
            Err(e) => debug!(%peer, error = %e, "cannot take over a connection"),
        }
    }

    fn serve(
        &self,
        upstream: &Pool,
        stream: TcpStream,
        peer: SocketAddr,
        admitted: (Admitted, Open),
        tls: bool,
    ) {
        if !tls {
            return self.spawn_connection(upstream, stream, peer, admitted);
        }
        if let Some(acceptor) = self.tls.as_ref().and_then(|l| l.acceptor.clone()) {
            self.spawn_tls_connection(upstream, acceptor, stream, peer, admitted);
        }
    }

    fn spawn_connection(
        &self,
        upstream: &Pool,
        stream: TcpStream,
        peer: SocketAddr,
        admitted: (Admitted, Open),
    ) {
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, error = %e, "set_nodelay failed");
        }
        let forwarder = self.forwarder.clone();
        let upstream = Arc::new(self.forwarder.upstreams(upstream, self.upstreams));
        let driver = upstream.driver();
        let drain = self.drain.clone();
        let service = service_fn(move |req| {
            let forwarder = forwarder.clone();
            let upstream = upstream.clone();
            let drain = drain.clone();
            async move {
                let response = forwarder.handle(&upstream, req, peer, Scheme::Http).await;
                Ok::<_, Infallible>(drain.close_if_closing(response))
            }
        });
        let conn = self
            .http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let task = self.drain.track();
        let mut phase = self.drain.subscribe();
        tokio::spawn(async move {
            let _task = task;
            let _admitted = admitted;
            drive_connection!(conn, driver, phase, peer);
        });
    }

    /// One TLS client connection: the handshake (bounded by `header_read_timeout`), then
    /// HTTP/2 if the client chose `h2` by ALPN, else HTTP/1.1 with upgrades (WebSocket).
    fn spawn_tls_connection(
        &self,
        upstream: &Pool,
        acceptor: TlsAcceptor,
        stream: TcpStream,
        peer: SocketAddr,
        admitted: (Admitted, Open),
    ) {
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, error = %e, "set_nodelay failed");
        }
        let forwarder = self.forwarder.clone();
        let upstream = Arc::new(self.forwarder.upstreams(upstream, self.upstreams));
        let http1 = self.http.clone();
        let http2 = self.http2.clone();
        let handshake_timeout = self.handshake_timeout;
        let drain = self.drain.clone();
        let task = self.drain.track();
        let mut phase = self.drain.subscribe();
        tokio::spawn(async move {
            let _task = task;
            let _admitted = admitted;
            let handshake = tokio::select! {
                result = tokio::time::timeout(handshake_timeout, acceptor.accept(stream)) => result,
                () = phase_reached(&mut phase, Phase::Draining) => return,
            };
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let h2 = stream.get_ref().1.alpn_protocol() == Some(ALPN_H2);
            let driver = upstream.driver();
            let service = service_fn(move |req| {
                let forwarder = forwarder.clone();
                let upstream = upstream.clone();
                let drain = drain.clone();
                async move {
                    let response = forwarder.handle(&upstream, req, peer, Scheme::Https).await;
                    // HTTP/2 has no `Connection` header: its graceful close is GOAWAY.
                    Ok::<_, Infallible>(if h2 {
                        response
                    } else {
                        drain.close_if_closing(response)
                    })
                }
            });
            let io = TokioIo::new(stream);
            if h2 {
                drive_connection!(http2.serve_connection(io, service), driver, phase, peer);
            } else {
                drive_connection!(
                    http1.serve_connection(io, service).with_upgrades(),
                    driver,
                    phase,
                    peer
                );
            }
        });
    }
}

/// Accepts on the TLS listener, or never completes when there is none.
async fn accept_tls(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Spreads client connections evenly over the workers. Every worker accepts on the same
/// sockets, and whichever the kernel wakes first takes every connection waiting: a burst
/// (a client opening 64 connections at once) could land on one worker while the other
/// cores idle (measured: one worker of two served all 64 connections of a wrk run). So
/// each worker counts its open connections, and one that accepted a connection while
/// another has at least [`SPREAD_SLACK`] fewer hands it over (once per connection, before
/// any byte is read; its requests then never cross threads).
struct Spread {
    open: Vec<AtomicUsize>,
    inboxes: Vec<mpsc::UnboundedSender<Handoff>>,
}

/// How many more open connections a worker keeps before it hands new ones over.
const SPREAD_SLACK: usize = 2;

impl Spread {
    /// The worker that serves a connection worker `index` accepted, counted against it at
    /// once (so a burst spreads before the first hand-over is even received).
    fn claim(self: &Arc<Self>, index: usize) -> (usize, Open) {
        let mine = self.open[index].load(Ordering::Relaxed);
        let (least, fewest) = self
            .open
            .iter()
            .map(|open| open.load(Ordering::Relaxed))
            .enumerate()
            .min_by_key(|&(_, open)| open)
            .unwrap_or((index, mine));
        let target = if fewest + SPREAD_SLACK <= mine {
            least
        } else {
            index
        };
        self.open[target].fetch_add(1, Ordering::Relaxed);
        (
            target,
            Open {
                spread: self.clone(),
                worker: target,
            },
        )
    }
}

/// One open connection counted against a worker until dropped.
struct Open {
    spread: Arc<Spread>,
    worker: usize,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.spread.open[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

/// A new connection handed from the worker that accepted it to the one that serves it.
struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
    open: Open,
    tls: bool,
}

/// Open connections of one listener, in total and by source address.
#[derive(Debug)]
struct Admission {
    limits: ConnectionLimits,
    open: AtomicUsize,
    by_source: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; gives its place back when dropped.
#[derive(Debug)]
struct Admitted {
    admission: Arc<Admission>,
    source: IpAddr,
}

impl Admission {
    fn new(limits: ConnectionLimits) -> Self {
        Admission {
            limits,
            open: AtomicUsize::new(0),
            by_source: Mutex::new(HashMap::new()),
        }
    }

    /// A place for a connection from `peer`, or `None` (logged) when a cap is reached.
    fn admit(self: &Arc<Self>, peer: SocketAddr) -> Option<Admitted> {
        let source = peer.ip();
        let mut by_source = self
            .by_source
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let open = self.open.load(Ordering::Relaxed);
        if open >= self.limits.per_listener {
            debug!(%peer, open, cap = self.limits.per_listener, "connection refused: listener at its connection cap");
            return None;
        }
        let from_source = by_source.entry(source).or_insert(0);
        if *from_source >= self.limits.per_source {
            debug!(%peer, open = *from_source, cap = self.limits.per_source, "connection refused: source address at its connection cap");
            return None;
        }
        *from_source += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Some(Admitted {
            admission: self.clone(),
            source,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut by_source = self
            .admission
            .by_source
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = by_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                by_source.remove(&self.source);
            }
        }
        self.admission.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One spare file descriptor, kept so that running out of descriptors (`EMFILE`/`ENFILE`)
/// never leaves the accept loop spinning on a connection it cannot take: the spare is
/// closed, the waiting connections are accepted and closed at once (their clients see a
/// closed connection instead of hanging), and the spare is taken again.
struct FdReserve {
    spare: Option<std::fs::File>,
    last_warning: Option<Instant>,
}

/// How many waiting connections one `EMFILE` sheds at most before the loop goes on.
const SHED_AT_ONCE: usize = 64;

impl FdReserve {
    fn new() -> Self {
        FdReserve {
            spare: Self::take(),
            last_warning: None,
        }
    }

    fn take() -> Option<std::fs::File> {
        std::fs::File::open("/dev/null").ok()
    }

    async fn accept_failed(&mut self, listener: &TcpListener, e: std::io::Error) {
        let exhausted = matches!(e.raw_os_error(), Some(code) if code == EMFILE || code == ENFILE);
        if !exhausted {
            // Per-connection failures (the peer reset before accept, ...): go on, with a
            // pause so that an error that repeats cannot spin.
            debug!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(5)).await;
            return;
        }
        let mut shed = 0;
        if self.spare.take().is_some() {
            while shed < SHED_AT_ONCE {
                match listener.accept().now_or_never() {
                    Some(Ok((stream, _))) => {
                        drop(stream);
                        shed += 1;
                    }
                    _ => break,
                }
            }
            self.spare = Self::take();
        }
        if self
            .last_warning
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            self.last_warning = Some(Instant::now());
            warn!(error = %e, shed, "accept failed: out of file descriptors; closing waiting connections");
        }
        if self.spare.is_none() {
            // Someone else took the freed descriptor: back off before trying again.
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.spare = Self::take();
        }
    }
}

/// `EMFILE` and `ENFILE` on Linux (the process's and the system's descriptor limits).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// Where shutdown is; phases only move forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Running,
    /// Listeners closed; open connections still served, HTTP/1.1 answers closing them.
    Closing,
    /// Stop taking new requests; finish the ones in flight.
    Draining,
    /// The grace is over: drop everything.
    Abort,
}

/// Completes once shutdown has reached `phase` (at once if it already has).
pub(crate) async fn phase_reached(rx: &mut watch::Receiver<Phase>, phase: Phase) {
    // An error means the sender is gone, which only happens when the proxy itself is gone:
    // nothing is left to wait for. The borrowed value is dropped here, before any await of
    // the caller, because it is not `Send`.
    let _ = rx.wait_for(|current| *current >= phase).await;
}

/// Tracks connection and tunnel tasks so shutdown can wait for them, and tells them the
/// shutdown phase.
#[derive(Clone, Debug)]
pub(crate) struct Drain {
    inner: Arc<DrainInner>,
}

#[derive(Debug)]
struct DrainInner {
    phase: watch::Sender<Phase>,
    tasks: AtomicUsize,
    idle: Notify,
}

/// Counts one running task until dropped.
#[derive(Debug)]
pub(crate) struct TaskGuard(Arc<DrainInner>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.tasks.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    fn new() -> Self {
        Drain {
            inner: Arc::new(DrainInner {
                phase: watch::Sender::new(Phase::Running),
                tasks: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }

    pub(crate) fn track(&self) -> TaskGuard {
        self.inner.tasks.fetch_add(1, Ordering::AcqRel);
        TaskGuard(self.inner.clone())
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Phase> {
        self.inner.phase.subscribe()
    }

    fn set(&self, phase: Phase) {
        self.inner.phase.send_replace(phase);
    }

    /// Marks an HTTP/1.1 `response` as the connection's last once shutdown began (not a
    /// protocol switch, whose `Connection: upgrade` must stand).
    fn close_if_closing<B>(&self, mut response: hyper::Response<B>) -> hyper::Response<B> {
        let closing = *self.inner.phase.borrow() >= Phase::Closing;
        if closing && response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
            response.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
        }
        response
    }

    fn count(&self) -> usize {
        self.inner.tasks.load(Ordering::Acquire)
    }

    /// Waits until no tracked task is running.
    async fn idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            // Register before checking, so a task ending in between still wakes us.
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(workers: usize) -> Arc<Spread> {
        let (inboxes, _receivers): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        Arc::new(Spread {
            open: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            inboxes,
        })
    }

    fn counts(spread: &Spread) -> Vec<usize> {
        spread
            .open
            .iter()
            .map(|o| o.load(Ordering::Relaxed))
            .collect()
    }

    #[test]
    fn a_burst_accepted_by_one_worker_is_spread_over_all() {
        let spread = spread(2);
        // Worker 0 wins every accept of a burst of 64, as a kernel wake-up can make it.
        let held: Vec<_> = (0..64).map(|_| spread.claim(0)).collect();
        let open = counts(&spread);
        assert!(open[0].abs_diff(open[1]) <= SPREAD_SLACK, "{open:?}");
        assert_eq!(open.iter().sum::<usize>(), 64);
        assert!(held.iter().any(|(target, _)| *target == 1));
        drop(held);
        assert_eq!(
            counts(&spread),
            vec![0, 0],
            "closed connections are uncounted"
        );
    }

    #[test]
    fn a_worker_keeps_what_it_accepts_while_the_load_is_even() {
        let spread = spread(3);
        let (a, _a) = spread.claim(1);
        let (b, _b) = spread.claim(1);
        assert_eq!((a, b), (1, 1), "within the slack, no hand-over");
        let (c, _c) = spread.claim(1);
        assert_ne!(c, 1, "the third goes to a worker with none");
        let single = self::spread(1);
        assert!((0..10).map(|_| single.claim(0)).all(|(t, _)| t == 0));
    }
}
