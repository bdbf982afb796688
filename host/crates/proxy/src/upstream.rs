//! The upstream side of one client connection: HTTP/1.1 connections to backends owned by
//! the client connection's task and driven inside it (no hand-off to another task), with
//! the worker's shared pool as the fallback.
//!
//! A proxied request through hyper-util's pool crosses a task boundary twice: the request
//! goes through a channel to the pooled connection's own task, and the response comes back
//! through another. An owned connection is polled by the client connection's task itself
//! (`Driver`, selected beside the served connection), so the request, the upstream socket
//! and the response are all handled in one task, as an nginx worker handles both sockets in
//! one event loop.
//!
//! When a request uses which:
//!
//! - The first request of a client connection goes through the pool: a client that sends
//!   one request per connection (`Connection: close`) never pays an upstream connect.
//! - A later request to a backend with no owned connection yet opens one (at most
//!   [`MAX_OWNED`] backends per client connection); the next ones reuse it.
//! - An owned connection that is busy (concurrent HTTP/2 streams) or closed is not waited
//!   for: the request goes through the pool. A request the owned connection hands back
//!   unsent (it closed before writing it) goes through the pool too.
//! - Upgrade requests (WebSocket) always go through the pool, whose connections can be
//!   upgraded and outlive the client connection's task.
//! - An owned connection is kept only while its backend is in the routing table: when a
//!   request sees a new table snapshot, connections to backends no longer routed by the
//!   domain they were opened for are closed (a drained instance keeps no connection).
//!
//! Owned connections close with their client connection (the task ends, the driver drops
//! them). In-flight counts, timeouts and retries are the request path's (`forward`) and
//! are the same on both paths.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::forward::{BoxError, UpstreamBody};
use crate::metrics::{ProxyMetrics, UpstreamPath};
use crate::table::RouteTable;

/// The pooled HTTP/1.1 client to backends. Each proxy worker thread has its own (see
/// `server`), so a request, its upstream connection task and its response never leave the
/// worker thread that serves the client connection.
pub(crate) type Pool = Client<HttpConnector, UpstreamBody>;

/// An owned connection's I/O future.
type Conn = http1::Connection<TokioIo<TcpStream>, UpstreamBody>;

/// How many backends one client connection keeps an owned connection to.
pub(crate) const MAX_OWNED: usize = 4;

/// Which upstream connections the requests of a client connection use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpstreamConnections {
    /// Owned connections driven in the client connection's own task, the worker's pool as
    /// the fallback (the default; see the `upstream` module).
    #[default]
    PerClient,
    /// Owned connections as with `PerClient`, but each driven in a task of its own on the
    /// worker: one hand-off per direction again. For comparison only.
    PerClientSpawned,
    /// The worker's shared pool only (what the proxy did before owned connections).
    PoolOnly,
}

/// Connecting to a backend for an owned connection failed or timed out; nothing of the
/// request was sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("HTTP/1.1 handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
}

/// What one request needs to know to choose its upstream connection.
pub(crate) struct Target<'a> {
    /// The chosen backend.
    pub(crate) addr: SocketAddr,
    /// The host the backend was routed by (as the client sent it; the table normalizes).
    pub(crate) domain: &'a str,
    /// The table snapshot the request routes by.
    pub(crate) table: &'a Arc<RouteTable>,
    /// Whether an owned connection may carry it (not for upgrades).
    pub(crate) ownable: bool,
    pub(crate) connect_timeout: Duration,
}

/// The upstream connections one client connection's requests use: its owned connections
/// and the worker's pool. Cloned into each request of the connection.
#[derive(Clone)]
pub(crate) struct Upstreams {
    mode: UpstreamConnections,
    pool: Pool,
    owned: Arc<Mutex<Owned>>,
    metrics: ProxyMetrics,
}

/// The owned connections of one client connection.
#[derive(Default)]
struct Owned {
    entries: Vec<Entry>,
    /// The client connection task's waker, to poll a connection just added.
    waker: Option<Waker>,
    /// Requests sent upstream so far on this client connection.
    sent: u64,
    /// The table snapshot last seen, to prune on a change. Weak: an idle client connection
    /// does not keep old tables alive, and the allocation is not reused while this points
    /// at it (so a new snapshot never looks like the old one).
    table: Weak<RouteTable>,
    /// The driver is gone (the client connection's task ended): nothing would poll a new
    /// connection, so none is opened.
    closed: bool,
}

struct Entry {
    addr: SocketAddr,
    domain: String,
    sender: http1::SendRequest<UpstreamBody>,
    /// `None` when the connection runs in its own task (`PerClientSpawned`).
    conn: Option<Conn>,
}

/// A request queued on an owned connection: its response, or the request handed back
/// unsent.
type OwnedSend = Pin<
    Box<
        dyn Future<
                Output = Result<
                    Response<Incoming>,
                    hyper::client::conn::TrySendError<Request<UpstreamBody>>,
                >,
            > + Send,
    >,
>;

/// What a request does, decided under the lock.
enum Plan {
    Pool(Request<UpstreamBody>),
    Connect(Request<UpstreamBody>),
    Owned(OwnedSend),
}

impl Upstreams {
    /// The upstream side of a new client connection, falling back to `pool`.
    pub(crate) fn new(mode: UpstreamConnections, pool: Pool, metrics: ProxyMetrics) -> Self {
        Upstreams {
            mode,
            pool,
            owned: Arc::default(),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Owned> {
        self.owned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The future that drives this client connection's owned connections. Poll it in the
    /// client connection's task beside the served connection; it never completes, and
    /// dropping it closes every owned connection.
    pub(crate) fn driver(&self) -> Driver {
        Driver {
            owned: self.owned.clone(),
        }
    }

    /// Sends `req` to `target.addr` on an owned connection when one is ready (opening it
    /// if this is not the connection's first request), else through the pool.
    pub(crate) async fn send(
        &self,
        req: Request<UpstreamBody>,
        target: Target<'_>,
    ) -> Result<Response<Incoming>, BoxError> {
        let fut = match self.plan(req, &target) {
            Plan::Pool(req) => return self.pooled(req).await,
            Plan::Owned(fut) => {
                self.metrics.upstream_send(UpstreamPath::Owned);
                fut
            }
            Plan::Connect(req) => match self.connect(req, &target).await? {
                Ok(fut) => {
                    self.metrics.upstream_send(UpstreamPath::OwnedNew);
                    fut
                }
                Err(req) => return self.pooled(req).await,
            },
        };
        match fut.await {
            Ok(response) => Ok(response),
            Err(mut e) => match e.take_message() {
                // Handed back unsent (the connection closed first): the pool sends it, to
                // the absolute URI it connects by.
                Some(mut req) => {
                    debug!(error = %e.error(), "owned upstream connection closed before the request; using the pool");
                    *req.uri_mut() = absolute_form(target.addr, req.uri());
                    self.pooled(req).await
                }
                None => Err(e.into_error().into()),
            },
        }
    }

    async fn pooled(&self, req: Request<UpstreamBody>) -> Result<Response<Incoming>, BoxError> {
        self.metrics.upstream_send(UpstreamPath::Pooled);
        Ok(self.pool.request(req).await?)
    }

    fn plan(&self, req: Request<UpstreamBody>, target: &Target<'_>) -> Plan {
        let mut owned = self.lock();
        owned.sent += 1;
        let first = owned.sent == 1;
        if !std::ptr::eq(owned.table.as_ptr(), Arc::as_ptr(target.table)) {
            owned.table = Arc::downgrade(target.table);
            owned.prune(target.table);
        }
        if !target.ownable || owned.closed || self.mode == UpstreamConnections::PoolOnly {
            return Plan::Pool(req);
        }
        match owned.entries.iter().position(|e| e.addr == target.addr) {
            Some(i) if owned.entries[i].sender.is_ready() => {
                let req = origin_form(req);
                Plan::Owned(Box::pin(owned.entries[i].sender.try_send_request(req)))
            }
            Some(i) if owned.entries[i].sender.is_closed() => {
                owned.entries.swap_remove(i);
                Plan::Connect(req)
            }
            // Busy: another request (an HTTP/2 stream) is on it.
            Some(_) => Plan::Pool(req),
            None if first || owned.entries.len() >= MAX_OWNED => Plan::Pool(req),
            None => Plan::Connect(req),
        }
    }

    /// Opens an owned connection to `target.addr` and queues `req` on it; hands `req` back
    /// when the connection cannot be kept (the client connection ended meanwhile, or
    /// another request opened one to the same backend first).
    async fn connect(
        &self,
        req: Request<UpstreamBody>,
        target: &Target<'_>,
    ) -> Result<Result<OwnedSend, Request<UpstreamBody>>, ConnectError> {
        let stream = tokio::time::timeout(target.connect_timeout, TcpStream::connect(target.addr))
            .await
            .map_err(|_| ConnectError::Timeout(target.connect_timeout))??;
        if let Err(e) = stream.set_nodelay(true) {
            debug!(upstream = %target.addr, error = %e, "set_nodelay failed");
        }
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        let mut owned = self.lock();
        if owned.closed || owned.entries.iter().any(|e| e.addr == target.addr) {
            return Ok(Err(req));
        }
        // A fresh connection takes its first request before it is first polled.
        let send: OwnedSend = Box::pin(sender.try_send_request(origin_form(req)));
        let conn = match self.mode {
            UpstreamConnections::PerClientSpawned => {
                tokio::spawn(conn);
                None
            }
            _ => Some(conn),
        };
        owned.entries.push(Entry {
            addr: target.addr,
            domain: target.domain.to_string(),
            sender,
            conn,
        });
        if let Some(waker) = &owned.waker {
            waker.wake_by_ref();
        }
        Ok(Ok(send))
    }
}

/// `req` with its request target in origin form (`/path?query`), as an origin server
/// expects it: a `client::conn` connection writes the URI as it is, where the pool rewrites
/// the absolute URI it connects by (`http://addr/path`).
fn origin_form(mut req: Request<UpstreamBody>) -> Request<UpstreamBody> {
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = req.uri().path_and_query().cloned();
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    req
}

/// The absolute URI of `uri`'s path on `addr`, for the pool.
fn absolute_form(addr: SocketAddr, uri: &http::Uri) -> http::Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = http::uri::Authority::try_from(addr.to_string()).ok();
    parts.path_and_query = uri.path_and_query().cloned();
    http::Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

impl Owned {
    /// Closes connections to backends the table no longer routes their domain to.
    fn prune(&mut self, table: &RouteTable) {
        self.entries.retain(|e| {
            let kept = table
                .get(&e.domain)
                .is_some_and(|route| route.backends.iter().any(|b| b.addr == e.addr));
            if !kept {
                debug!(upstream = %e.addr, domain = %e.domain, "closing owned upstream connection: backend left the routing table");
            }
            kept
        });
    }
}

/// Polls the owned connections of one client connection; see [`Upstreams::driver`].
pub(crate) struct Driver {
    owned: Arc<Mutex<Owned>>,
}

impl Future for Driver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
        match &owned.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => owned.waker = Some(cx.waker().clone()),
        }
        owned.entries.retain_mut(|e| match &mut e.conn {
            None => !e.sender.is_closed(),
            Some(conn) => match Pin::new(conn).poll(cx) {
                Poll::Pending => true,
                Poll::Ready(result) => {
                    if let Err(error) = result {
                        debug!(upstream = %e.addr, %error, "owned upstream connection failed");
                    }
                    false
                }
            },
        });
        Poll::Pending
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let mut owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
        owned.closed = true;
        owned.waker = None;
        owned.entries.clear();
    }
}
