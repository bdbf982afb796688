//! The accept loop: one task per client connection, and a graceful drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use crate::balance::InFlightView;
use crate::config::ProxyConfig;
use crate::forward::Forwarder;
use crate::metrics::ProxyMetrics;
use crate::stats::RouteStats;
use crate::table::Routes;

/// How long in-flight requests (and upgraded connections) may run after shutdown begins.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The reverse proxy. Build it with [`Proxy::new`], run it with [`Proxy::serve`].
pub struct Proxy {
    forwarder: Arc<Forwarder>,
    drain: Drain,
    http: http1::Builder,
    grace: Duration,
}

impl Proxy {
    /// A proxy routing by `routes` (swap tables in through any clone of it).
    pub fn new(config: ProxyConfig, routes: Routes, metrics: ProxyMetrics) -> Proxy {
        // HTTP/1 only for now. When HTTP/2 comes (TLS + ALPN), note that hyper-util's `auto`
        // builder sniffs the protocol with no deadline of its own, so the sniffing must be
        // wrapped in `header_read_timeout` or slowloris protection is lost.
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .keep_alive(true);
        let drain = Drain::new();
        Proxy {
            forwarder: Arc::new(Forwarder::new(config, routes, metrics, drain.clone())),
            drain,
            http,
            grace: DEFAULT_SHUTDOWN_GRACE,
        }
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
        let local = listener.local_addr()?;
        info!(%local, "proxy listening");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => self.spawn_connection(stream, peer),
                    Err(e) => {
                        // Usually out of file descriptors: back off instead of spinning, and
                        // keep serving the connections we have.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
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
            async move { Ok::<_, Infallible>(forwarder.handle(req, peer).await) }
        });
        let conn = self
            .http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let task = self.drain.track();
        let mut phase = self.drain.subscribe();
        tokio::spawn(async move {
            let _task = task;
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = phase_reached(&mut phase, Phase::Draining) => {
                    // Finish the request in progress, then close; idle connections close now.
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        result = conn.as_mut() => result,
                        () = phase_reached(&mut phase, Phase::Abort) => {
                            debug!(%peer, "connection cut off: shutdown grace expired");
                            return;
                        }
                    }
                }
            };
            // A broken client connection is that client's problem, never the loop's.
            if let Err(e) = result {
                debug!(%peer, error = %e, "client connection error");
            }
        });
    }
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
