//! orca's HTTP reverse proxy: the front door that routes each request by its `Host` to one
//! of the ready replicas of the service with that domain.
//!
//! # Module map
//!
//! - [`table`] — the routing table (`domain -> Route`) and the [`Routes`] handle through
//!   which the reconciler swaps a whole new table in atomically.
//! - [`config`] — [`ProxyConfig`]: timeouts and limits, each documented with what it stops.
//! - `balance` — picks a backend for a request: weighted power-of-two-choices on in-flight
//!   counts (weights are what canary splits will set); [`InFlightView`] reads those counts
//!   so the controller can drain a backend before stopping it.
//! - `headers` — hop-by-hop stripping, `X-Forwarded-*`, and upgrade detection; pure
//!   functions over `HeaderMap`.
//! - `error` — [`ProxyError`]: every response the proxy makes itself (404, 502, 504, ...),
//!   marked with `x-orca-error: 1`.
//! - `forward` — the request path: `(table, request) -> response`; retries bodiless idempotent requests on another backend when the first gave
//!   no response head; also splices upgraded (WebSocket) connections.
//! - `upstream` — the upstream side of one client connection: HTTP/1.1 connections owned
//!   by (and driven in) the client connection's task, the worker's shared pool as fallback.
//! - `server` — [`Proxy`]: worker threads (one current-thread runtime each) accepting on
//!   shared listeners (plain HTTP/1.1, and TLS with HTTP/2 or HTTP/1.1 by ALPN),
//!   per-connection tasks, [`ConnectionLimits`], the `EMFILE` fd reserve, graceful drain.
//! - [`tls`] — [`Certificates`]: the SNI certificate set, hot-swapped; PEM parsing; the
//!   rustls server configuration.
//! - [`challenge`] — [`Challenges`]: pending ACME HTTP-01 answers, served on plain HTTP.
//! - [`metrics`] — [`ProxyMetrics`], the `orca_proxy_*` Prometheus metrics.
//! - `stats` — [`RouteStats`], cumulative per-service request and 5xx counts for the host.
//!
//! # Invariants
//!
//! - A client connection, its requests and the upstream connections they use run on one
//!   worker thread (the one that accepted it, or the one it handed the new connection to
//!   before reading a byte, to even out the workers' connections): no request crosses
//!   threads.
//! - A request is routed and forwarded by one authority: an absolute-form URI's authority
//!   wins over `Host` and replaces it upstream; two `Host` headers are a 400.
//! - A request reads one snapshot of the routing table: a swap never changes the route of a
//!   request that already started.
//! - Nothing the proxy waits on is unbounded: client headers (`header_read_timeout`), the
//!   upstream connect (`connect_timeout`) and the upstream response head (`request_timeout`)
//!   all have deadlines, and every client connection is its own task.
//! - The ACME challenge path (`/.well-known/acme-challenge/`) is answered by the proxy on
//!   any host and never redirected; other plain-HTTP requests for a domain with a
//!   certificate get a 308 to HTTPS once an HTTPS listener runs.
//! - A request is sent to a second backend only if it is idempotent and bodiless and the
//!   first gave no response head (connect failure, reset, or closed mid-request, as a replica
//!   killed under load does; nginx's `proxy_next_upstream error`); at most `2` retries, on
//!   backends not yet tried; never after a response head or the response timeout.

mod balance;
pub mod challenge;
pub mod config;
mod error;
mod forward;
mod headers;
pub mod metrics;
mod server;
mod stats;
pub mod table;
pub mod tls;
mod upstream;

pub use balance::InFlightView;
pub use challenge::{Challenges, ACME_CHALLENGE_PREFIX};
pub use config::ProxyConfig;
pub use error::ProxyError;
pub use metrics::ProxyMetrics;
pub use server::{ConnectionLimits, Proxy, DEFAULT_CLOSE_LINGER, DEFAULT_SHUTDOWN_GRACE};
pub use stats::RouteStats;
pub use table::{Backend, Route, RouteTable, Routes};
pub use tls::{certified_key, Certificates, TlsError};
pub use upstream::UpstreamConnections;
