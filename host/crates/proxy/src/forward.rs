//! The request path: resolve the route from one table snapshot, pick a backend, rewrite
//! headers, send the request upstream (the client connection's own upstream connection or
//! the worker's pool, see `upstream`) within `request_timeout`, and return the response (or splice both connections after a `101 Switching Protocols`).

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Sleep;
use tracing::{debug, field, info_span, warn, Instrument, Span};

use crate::balance::{Balancer, InFlight, InFlightView};
use crate::challenge::{Challenges, ACME_CHALLENGE_PREFIX};
use crate::config::ProxyConfig;
use crate::error::ProxyError;
use crate::headers;
use crate::metrics::{ProxyMetrics, UNROUTED};
use crate::server::{phase_reached, Drain, Phase};
use crate::stats::RouteStats;
use crate::table::{normalize_host, Backend, Route, RouteTable, Routes};
use crate::tls::Certificates;
use crate::upstream::{self, ConnectError, Pool, UpstreamConnections, Upstreams};

/// A boxed error, as bodies and the upstream client produce them.
pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

/// The body of every response the proxy sends: a backend's streamed body or an error text.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// The body sent upstream: the client's body behind the `max_request_body` limit. Boxed so
/// that later features (buffered bodies for retries) can swap what is inside.
pub(crate) type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// Everything a request needs, shared by all connections and worker threads.
pub(crate) struct Forwarder {
    config: ProxyConfig,
    routes: Routes,
    metrics: ProxyMetrics,
    balancer: Balancer,
    stats: RouteStats,
    drain: Drain,
    /// Certificates served by the HTTPS listener; a plain-HTTP request for one of these
    /// domains is redirected (once an HTTPS listener runs).
    certificates: Certificates,
    /// Pending ACME HTTP-01 answers.
    challenges: Challenges,
    /// The HTTPS listener's port for redirects; 0 while none runs.
    https_port: AtomicU16,
}

/// Which listener a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// Plain HTTP/1.1.
    Http,
    /// TLS, with HTTP/1.1 or HTTP/2 by ALPN.
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Where a request goes, resolved from one routing-table snapshot.
#[derive(Debug)]
pub(crate) struct Target<'t> {
    /// The host as the client sent it (with a port, if any), for `X-Forwarded-Host`.
    pub(crate) authority: String,
    pub(crate) route: &'t Route,
}

/// Resolves a request's route. The URI authority (absolute-form requests, HTTP/2) wins
/// over the `Host` header, as RFC 9112 §3.2.2 requires; the same authority is what the
/// backend receives as `Host` (see `upstream_request`), so routing and forwarding never
/// disagree. Two `Host` headers are refused (RFC 9112 §3.2), whatever the URI says.
pub(crate) fn resolve<'t, B>(
    table: &'t RouteTable,
    req: &Request<B>,
) -> Result<Target<'t>, ProxyError> {
    let mut hosts = req.headers().get_all(HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        return Err(ProxyError::DuplicateHost);
    }
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(HOST)?.to_str().ok())
        // Userinfo never names a host.
        .map(|a| a.rsplit('@').next().unwrap_or(a).trim())
        .filter(|a| !a.is_empty())
        .ok_or(ProxyError::MissingHost)?;
    match table.get(authority) {
        Some(route) => Ok(Target {
            authority: authority.to_string(),
            route,
        }),
        None => Err(ProxyError::UnknownHost {
            host: normalize_host(authority),
        }),
    }
}

impl Forwarder {
    pub(crate) fn new(
        config: ProxyConfig,
        routes: Routes,
        metrics: ProxyMetrics,
        drain: Drain,
    ) -> Self {
        Forwarder {
            config,
            routes,
            metrics,
            balancer: Balancer::new(),
            stats: RouteStats::new(),
            drain,
            certificates: Certificates::new(),
            challenges: Challenges::new(),
            https_port: AtomicU16::new(0),
        }
    }

    /// A new upstream client (with its own connection pool) for the calling worker: its
    /// connection tasks are spawned on the runtime that first uses them.
    pub(crate) fn upstream_pool(&self) -> Pool {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(self.config.connect_timeout));
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(self.config.idle_timeout)
            .pool_timer(TokioTimer::new())
            .build(connector)
    }

    /// The upstream side of a new client connection: its owned connections, falling back
    /// to the worker's `pool`.
    pub(crate) fn upstreams(&self, pool: &Pool, mode: UpstreamConnections) -> Upstreams {
        Upstreams::new(mode, pool.clone(), self.metrics.clone())
    }

    /// The certificate set the HTTPS listener serves.
    pub(crate) fn certificates(&self) -> Certificates {
        self.certificates.clone()
    }

    /// The pending ACME challenges the HTTP listener answers.
    pub(crate) fn challenges(&self) -> Challenges {
        self.challenges.clone()
    }

    /// Enables redirects of plain-HTTP requests for domains with a certificate to `port`.
    pub(crate) fn set_https_port(&self, port: u16) {
        self.https_port.store(port, Ordering::Relaxed);
    }

    /// A view of the balancer's in-flight counters.
    pub(crate) fn in_flight(&self) -> InFlightView {
        self.balancer.view()
    }

    /// The per-service outcome counters.
    pub(crate) fn route_stats(&self) -> RouteStats {
        self.stats.clone()
    }

    /// Answers one client request; never fails (proxy errors become responses).
    ///
    /// Order of precedence: an ACME HTTP-01 challenge path is answered by the proxy itself
    /// (never redirected, never routed); a plain-HTTP request for a domain that has a
    /// certificate is redirected to HTTPS (308); everything else is routed.
    pub(crate) async fn handle(
        &self,
        upstream: &Upstreams,
        req: Request<Incoming>,
        client: SocketAddr,
        scheme: Scheme,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let span = info_span!(
            "orca.proxy.request",
            method = %req.method(),
            path = %req.uri().path(),
            scheme = scheme.as_str(),
            version = ?req.version(),
            host = field::Empty,
            service = field::Empty,
            upstream = field::Empty,
            status = field::Empty,
        );
        async move {
            // The request line is only formatted when the access log is on.
            let line = if tracing::enabled!(target: "orca::access", tracing::Level::INFO) {
                req_line(&req)
            } else {
                String::new()
            };
            if let Some(token) = req.uri().path().strip_prefix(ACME_CHALLENGE_PREFIX) {
                let response = self.challenge(token);
                self.log_access(&line, response.status(), started);
                return response;
            }
            // One snapshot for the whole request: a concurrent swap cannot change its route.
            let table = self.routes.load();
            if scheme == Scheme::Http {
                if let Some(response) = self.redirect(&table, &req) {
                    Span::current().record("status", response.status().as_u16());
                    self.log_access(&line, response.status(), started);
                    return response;
                }
            }
            let (service, routed, result) = match resolve(&table, &req) {
                Ok(target) => {
                    let span = Span::current();
                    span.record("host", target.authority.as_str());
                    span.record("service", target.route.service.as_str());
                    let route = target.route;
                    let result = self
                        .forward(upstream, &table, &target, req, client, scheme)
                        .await;
                    (route.service.as_str(), true, result)
                }
                Err(e) => {
                    if let ProxyError::UnknownHost { host } = &e {
                        Span::current().record("host", host.as_str());
                    }
                    (UNROUTED, false, Err(e))
                }
            };
            let response = match result {
                Ok(response) => response,
                Err(e) => {
                    if let Some(kind) = e.upstream_kind() {
                        self.metrics.upstream_error(service, kind);
                        warn!(error = %e, "upstream error");
                    } else {
                        debug!(error = %e, "request refused");
                    }
                    e.into_response()
                }
            };
            Span::current().record("status", response.status().as_u16());
            self.metrics
                .record(service, response.status(), started.elapsed());
            if routed {
                self.stats.record(service, response.status());
            }
            self.log_access(&line, response.status(), started);
            response
        }
        .instrument(span)
        .await
    }

    /// One access-log line per request (target `orca::access`, inside the request span
    /// that carries host, service and upstream). The response head is ready at this
    /// point; the body may still be streaming.
    fn log_access(&self, line: &str, status: StatusCode, started: Instant) {
        tracing::info!(
            target: "orca::access",
            request = line,
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "access"
        );
    }

    /// The answer to an ACME HTTP-01 challenge request: the key authorization of a pending
    /// token, or 404.
    fn challenge(&self, token: &str) -> Response<ProxyBody> {
        match self.challenges.get(token) {
            Some(key_authorization) => {
                let mut response = Response::new(
                    http_body_util::Full::new(Bytes::from(key_authorization))
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                );
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                response
            }
            None => ProxyError::UnknownChallenge.into_response(),
        }
    }

    /// A 308 to the same URL on HTTPS, if an HTTPS listener runs and the request's host has
    /// a certificate.
    fn redirect<B>(&self, table: &RouteTable, req: &Request<B>) -> Option<Response<ProxyBody>> {
        let port = self.https_port.load(Ordering::Relaxed);
        if port == 0 {
            return None;
        }
        let target = resolve(table, req).ok()?;
        if !self.certificates.contains(&target.authority) {
            return None;
        }
        let host = normalize_host(&target.authority);
        let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let location = if port == 443 {
            format!("https://{host}{path}")
        } else {
            format!("https://{host}:{port}{path}")
        };
        let location = HeaderValue::from_str(&location).ok()?;
        let mut response =
            Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
        *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
        response
            .headers_mut()
            .insert(http::header::LOCATION, location);
        Some(response)
    }

    async fn forward(
        &self,
        upstream: &Upstreams,
        table: &Arc<RouteTable>,
        target: &Target<'_>,
        mut req: Request<Incoming>,
        client: SocketAddr,
        scheme: Scheme,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (route, authority) = (target.route, target.authority.as_str());
        if route.backends.is_empty() {
            return Err(ProxyError::NoReadyReplica {
                service: route.service.clone(),
            });
        }
        let limit = self.config.max_request_body;
        if content_length(&req).is_some_and(|len| len > limit) {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        let Some((mut backend, mut in_flight)) = self.balancer.pick(&route.backends, &[]) else {
            // Every backend has weight 0 and none is excluded: `pick` treats them as equal,
            // so this only happens for an empty route, handled above.
            return Err(ProxyError::NoReadyReplica {
                service: route.service.clone(),
            });
        };

        let upgrade = headers::upgrade_request(req.headers());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let is_upgrade = upgrade.is_some();
        // A bodiless request: no `Content-Length`/`Transfer-Encoding` on HTTP/1, and the
        // stream already ended with the headers on HTTP/2 (where a body needs no header).
        let replayable = replayable(&req) && req.body().is_end_stream();
        let body_done = Arc::new(AtomicBool::new(req.body().is_end_stream()));
        let mut upstream_req = self.upstream_request(
            req,
            backend,
            route,
            authority,
            client,
            upgrade,
            scheme,
            body_done.clone(),
        )?;
        // What a retry sends: the rewritten request again, with its (empty) body.
        let replay = replayable.then(|| Replay::of(&upstream_req));
        let mut failed: Vec<SocketAddr> = Vec::new();

        let response = loop {
            Span::current().record("upstream", field::display(backend.addr));
            let send = upstream.send(
                upstream_req,
                upstream::Target {
                    addr: backend.addr,
                    domain: authority,
                    table,
                    ownable: !is_upgrade,
                    connect_timeout: self.config.connect_timeout,
                },
            );
            let error = match tokio::time::timeout(self.config.request_timeout, send).await {
                Ok(Ok(response)) => {
                    self.stats.record_instance(&backend.id, response.status());
                    break response;
                }
                Ok(Err(e)) if caused_by::<LengthLimitError>(&*e) => {
                    return Err(ProxyError::BodyTooLarge { limit });
                }
                Ok(Err(e)) if caused_by::<BodyReadTimeout>(&*e) => {
                    return Err(ProxyError::ClientBodyTimeout {
                        timeout: self.config.body_read_timeout,
                    });
                }
                Ok(Err(e)) => e,
                // Dropping the request future closes that upstream connection, so a
                // backend that answers late cannot confuse a pooled connection.
                // The client had not even finished its body: the client was slow, not the
                // backend.
                Err(_elapsed) if !body_done.load(Ordering::Acquire) => {
                    return Err(ProxyError::ClientBodyIncomplete {
                        timeout: self.config.request_timeout,
                    });
                }
                Err(_elapsed) => {
                    self.stats
                        .record_instance(&backend.id, StatusCode::GATEWAY_TIMEOUT);
                    return Err(ProxyError::UpstreamTimeout {
                        addr: backend.addr,
                        service: route.service.clone(),
                        timeout: self.config.request_timeout,
                    });
                }
            };
            let failure = ProxyError::UpstreamFailed {
                addr: backend.addr,
                service: route.service.clone(),
                reason: error_chain(&*error),
            };
            let Some(replay) = replay.as_ref() else {
                self.stats
                    .record_instance(&backend.id, StatusCode::BAD_GATEWAY);
                return Err(failure);
            };
            // A bodiless idempotent request is sent again whenever the backend gave no
            // response head (refused, reset, or closed after reading it: a replica killed
            // mid-request), as nginx's `proxy_next_upstream error` does; RFC 9110 §9.2.2
            // allows it for idempotent methods. Never after a response head, never a body.
            if failed.len() >= MAX_RETRIES {
                self.stats
                    .record_instance(&backend.id, StatusCode::BAD_GATEWAY);
                return Err(failure);
            }
            failed.push(backend.addr);
            // The failed backend no longer has this request in flight.
            drop(in_flight);
            let Some((next, guard)) = self.balancer.pick(&route.backends, &failed) else {
                return Err(failure);
            };
            debug!(error = %failure, retry_on = %next.addr, sent = !not_sent(&*error), "upstream gave no answer; retrying");
            self.metrics.retry(&route.service);
            (backend, in_flight) = (next, guard);
            upstream_req = replay.request(backend, route)?;
        };

        if response.status() == StatusCode::SWITCHING_PROTOCOLS && is_upgrade {
            let mut response = response;
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            if let Some(client_upgrade) = client_upgrade {
                let task = self.drain.track();
                let phase = self.drain.subscribe();
                let addr = backend.addr;
                tokio::spawn(
                    async move {
                        let _task = task;
                        splice(client_upgrade, upstream_upgrade, phase, in_flight, addr).await;
                    }
                    .instrument(Span::current()),
                );
            }
            // The upgrade handshake headers (Connection, Upgrade) go back to the client.
            return Ok(response.map(|body| body.map_err(BoxError::from).boxed_unsync()));
        }

        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, None);
        let body = Counted {
            inner: body.map_err(BoxError::from).boxed_unsync(),
            _in_flight: in_flight,
        };
        Ok(Response::from_parts(parts, body.boxed_unsync()))
    }

    /// Rewrites a client request into the request for `backend`; `body_done` is set once
    /// the client's body has been read to its end.
    #[allow(clippy::too_many_arguments)]
    fn upstream_request(
        &self,
        req: Request<Incoming>,
        backend: &Backend,
        route: &Route,
        authority: &str,
        client: SocketAddr,
        upgrade: Option<HeaderValue>,
        scheme: Scheme,
        body_done: Arc<AtomicBool>,
    ) -> Result<Request<UpstreamBody>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        headers::add_forwarded(&mut parts.headers, client.ip(), scheme.as_str(), authority);
        // Applications see the host the client asked for, not the replica's address: the
        // authority the request was routed by, which replaces any other `Host` (an
        // absolute-form URI's authority wins over the header, RFC 9112 §3.2.2).
        if let Ok(host) = HeaderValue::from_str(authority) {
            parts.headers.insert(HOST, host);
        }
        let path = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        parts.uri = upstream_uri(backend, route, path)?;
        // HTTP/1.1 to backends whatever the client spoke, so upstream connections pool.
        parts.version = Version::HTTP_11;
        let limit = usize::try_from(self.config.max_request_body).unwrap_or(usize::MAX);
        let body = Limited::new(
            ReadDeadline::new(body, self.config.body_read_timeout, body_done),
            limit,
        )
        .boxed_unsync();
        Ok(Request::from_parts(parts, body))
    }
}

/// How many times a request is sent again to another backend after a failure that
/// happened before anything was sent.
const MAX_RETRIES: usize = 2;

/// The URI of `path` on `backend`.
fn upstream_uri(backend: &Backend, route: &Route, path: &str) -> Result<Uri, ProxyError> {
    Uri::builder()
        .scheme("http")
        .authority(backend.addr.to_string())
        .path_and_query(path)
        .build()
        .map_err(|e| ProxyError::UpstreamFailed {
            addr: backend.addr,
            service: route.service.clone(),
            reason: format!("cannot build the upstream URI: {e}"),
        })
}

/// Whether a request may be sent to another backend when the first could not be reached:
/// an idempotent method and no body (so nothing of it is lost with the failed attempt).
/// Upgrade requests qualify too; they are retried on the same (not-sent) failures.
fn replayable<B>(req: &Request<B>) -> bool {
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    let bodiless = !req.headers().contains_key(TRANSFER_ENCODING)
        && (!req.headers().contains_key(CONTENT_LENGTH) || content_length(req) == Some(0));
    idempotent && bodiless
}

/// Whether the upstream send failed before any byte of the request reached the backend:
/// the connection could not be made (refused, reset, connect timeout: the pool's connect
/// error or an owned connection's [`ConnectError`]), or the pooled connection closed before
/// the request was written (hyper hands the request back, which hyper-util reports as
/// `Canceled` with hyper's canceled error as the source; a reused connection is already
/// retried inside hyper-util, a fresh one surfaces here; an owned connection's unsent
/// request goes to the pool instead). For the debug log only: retries are decided by
/// `Replay`, not by this.
fn not_sent(error: &(dyn StdError + 'static)) -> bool {
    caused_by::<ConnectError>(error)
        || error
            .downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(|e| {
                e.is_connect()
                    || e.source()
                        .and_then(|source| source.downcast_ref::<hyper::Error>())
                        .is_some_and(hyper::Error::is_canceled)
            })
}

/// A bodiless request as sent upstream, to send again to another backend.
struct Replay {
    method: Method,
    path: String,
    headers: http::HeaderMap,
}

impl Replay {
    fn of(req: &Request<UpstreamBody>) -> Self {
        Replay {
            method: req.method().clone(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_string(), |pq| pq.as_str().to_string()),
            headers: req.headers().clone(),
        }
    }

    fn request(
        &self,
        backend: &Backend,
        route: &Route,
    ) -> Result<Request<UpstreamBody>, ProxyError> {
        let mut req = Request::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = upstream_uri(backend, route, &self.path)?;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = self.headers.clone();
        Ok(req)
    }
}

/// Copies bytes both ways between the upgraded client and upstream connections until either
/// side closes, or the shutdown grace runs out.
async fn splice(
    client: OnUpgrade,
    upstream: OnUpgrade,
    mut phase: tokio::sync::watch::Receiver<Phase>,
    _in_flight: InFlight,
    addr: SocketAddr,
) {
    let copy = async {
        let (client, upstream) = tokio::try_join!(client, upstream)?;
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        Ok::<_, BoxError>(())
    };
    tokio::select! {
        result = copy => match result {
            Ok(()) => debug!(upstream = %addr, "upgraded connection closed"),
            Err(e) => debug!(upstream = %addr, error = %e, "upgraded connection failed"),
        },
        () = phase_reached(&mut phase, Phase::Abort) => {
            debug!(upstream = %addr, "upgraded connection closed: shutdown grace expired");
        }
    }
}

/// A response body that keeps its backend's in-flight count until the body is done.
struct Counted {
    inner: ProxyBody,
    _in_flight: InFlight,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client stopped sending its request body for longer than `body_read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body data for {0:?}")]
pub(crate) struct BodyReadTimeout(Duration);

/// A request body that fails with [`BodyReadTimeout`] when no frame arrives for `timeout`:
/// a client trickling (or stalling) its body cannot hold a backend connection forever.
/// It also reports (`done`) when the body has been read to its end.
struct ReadDeadline {
    inner: Incoming,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    done: Arc<AtomicBool>,
}

impl ReadDeadline {
    fn new(inner: Incoming, timeout: Duration, done: Arc<AtomicBool>) -> Self {
        ReadDeadline {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            done,
        }
    }
}

impl Body for ReadDeadline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if frame.is_none() || this.inner.is_end_stream() {
                    this.done.store(true, Ordering::Release);
                }
                let deadline = tokio::time::Instant::now() + this.timeout;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyReadTimeout(this.timeout).into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `METHOD path HTTP/x` for the access log.
fn req_line<B>(req: &Request<B>) -> String {
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    format!("{} {} {:?}", req.method(), path, req.version())
}

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `E` is anywhere in the source chain of `error`.
fn caused_by<E: StdError + 'static>(error: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<E>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// `outer: inner: root`, skipping repeats (some layers repeat their source's text).
fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let mut table = RouteTable::new();
        table.insert(
            "app.test",
            Route {
                service: "demo/app".into(),
                backends: vec![],
            },
        );
        table
    }

    fn request(uri: &str, host: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().uri(uri);
        if let Some(host) = host {
            builder = builder.header(HOST, host);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn resolves_by_host_header_ignoring_case_and_port() {
        let table = table();
        let req = request("/x", Some("APP.test:8080"));
        let target = resolve(&table, &req).unwrap();
        assert_eq!(target.route.service, "demo/app");
        assert_eq!(target.authority, "APP.test:8080");
    }

    #[test]
    fn absolute_form_authority_wins_over_host() {
        let table = table();
        let req = request("http://app.test/x", Some("other.test"));
        assert_eq!(resolve(&table, &req).unwrap().route.service, "demo/app");
    }

    #[test]
    fn unknown_and_missing_hosts() {
        let table = table();
        let req = request("/", Some("Nope.test:80"));
        assert_eq!(
            resolve(&table, &req).unwrap_err().to_string(),
            "no service is routed for host \"nope.test\""
        );
        let req = request("/", None);
        assert!(matches!(
            resolve(&table, &req),
            Err(ProxyError::MissingHost)
        ));
    }

    #[test]
    fn error_chain_skips_repeats() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(error_chain(&io), "refused");
    }
}
