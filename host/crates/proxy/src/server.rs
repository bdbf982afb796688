//! The accept loop: one task per client connection, and a graceful drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
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

/// Drives one served connection until it ends, starting a graceful shutdown (finish the
/// request in progress, then close; idle connections close at once) when the drain phase
/// begins, and cutting it off when the shutdown grace expires. A macro, not a function:
/// hyper's HTTP/1 (upgradeable) and HTTP/2 connections share no trait for this.
macro_rules! drive_connection {
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

/// The reverse proxy. Build it with [`Proxy::new`], run it with [`Proxy::serve`].
pub struct Proxy {
    forwarder: Arc<Forwarder>,
    drain: Drain,
    http: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    grace: Duration,
    handshake_timeout: Duration,
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
            handshake_timeout,
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

    /// Serves connections from `listener` until `shutdown` completes, then stops accepting,
    /// closes idle connections, and waits up to the shutdown grace for in-flight requests
    /// and upgraded (WebSocket) connections before returning; what is still running then is
    /// cut off. Errors on one connection are logged at debug and never end the loop.
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
        info!(%local, "proxy listening");
        let acceptor = match &https {
            Some(https) => {
                let local = https.local_addr()?;
                let config = tls::server_config(&self.forwarder.certificates())
                    .map_err(std::io::Error::other)?;
                self.forwarder.set_https_port(local.port());
                info!(%local, "proxy listening (TLS)");
                Some(TlsAcceptor::from(config))
            }
            None => None,
        };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => self.spawn_connection(stream, peer),
                    Err(e) => accept_failed(e).await,
                },
                accepted = accept_tls(https.as_ref()) => match (accepted, &acceptor) {
                    (Ok((stream, peer)), Some(acceptor)) => {
                        self.spawn_tls_connection(acceptor.clone(), stream, peer);
                    }
                    (Ok(_), None) => {}
                    (Err(e), _) => accept_failed(e).await,
                },
            }
        }
        drop(listener);
        drop(https);
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
        Ok(())
    }

    fn spawn_connection(&self, stream: TcpStream, peer: SocketAddr) {
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, error = %e, "set_nodelay failed");
        }
        let forwarder = self.forwarder.clone();
        let service = service_fn(move |req| {
            let forwarder = forwarder.clone();
            async move { Ok::<_, Infallible>(forwarder.handle(req, peer, Scheme::Http).await) }
        });
        let conn = self
            .http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let task = self.drain.track();
        let mut phase = self.drain.subscribe();
        tokio::spawn(async move {
            let _task = task;
            drive_connection!(conn, phase, peer);
        });
    }

    /// One TLS client connection: the handshake (bounded by `header_read_timeout`), then
    /// HTTP/2 if the client chose `h2` by ALPN, else HTTP/1.1 with upgrades (WebSocket).
    fn spawn_tls_connection(&self, acceptor: TlsAcceptor, stream: TcpStream, peer: SocketAddr) {
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, error = %e, "set_nodelay failed");
        }
        let forwarder = self.forwarder.clone();
        let http1 = self.http.clone();
        let http2 = self.http2.clone();
        let handshake_timeout = self.handshake_timeout;
        let task = self.drain.track();
        let mut phase = self.drain.subscribe();
        tokio::spawn(async move {
            let _task = task;
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
            let service = service_fn(move |req| {
                let forwarder = forwarder.clone();
                async move { Ok::<_, Infallible>(forwarder.handle(req, peer, Scheme::Https).await) }
            });
            let io = TokioIo::new(stream);
            if h2 {
                drive_connection!(http2.serve_connection(io, service), phase, peer);
            } else {
                drive_connection!(
                    http1.serve_connection(io, service).with_upgrades(),
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

/// Usually out of file descriptors: back off instead of spinning, and keep serving the
/// connections we have.
async fn accept_failed(e: std::io::Error) {
    warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Where shutdown is; phases only move forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Running,
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
