//! orca's HTTP reverse proxy: the front door that routes each request by its `Host` to one
//! of the ready replicas of the service with that domain.
//!
//! # Module map
//!
//! - [`table`] — the routing table (`domain -> Route`) and the [`Routes`] handle through
//!   which the reconciler swaps a whole new table in atomically.
//! - [`config`] — [`ProxyConfig`]: timeouts and limits, each documented with what it stops.
//! - `balance` — picks a backend for a request: weighted power-of-two-choices on in-flight
//!   counts (weights are what canary splits will set).
//! - `headers` — hop-by-hop stripping, `X-Forwarded-*`, and upgrade detection; pure
//!   functions over `HeaderMap`.
//! - `error` — [`ProxyError`]: every response the proxy makes itself (404, 502, 504, ...),
//!   marked with `x-orca-error: 1`.
//! - `forward` — the request path: `(table, request) -> response`, using a pooled upstream
//!   client; also splices upgraded (WebSocket) connections.
//! - `server` — [`Proxy`]: the accept loop, per-connection tasks, graceful drain.
//! - [`metrics`] — [`ProxyMetrics`], the `orca_proxy_*` Prometheus metrics.
//!
//! # Invariants
//!
//! - A request reads one snapshot of the routing table: a swap never changes the route of a
//!   request that already started.
//! - Nothing the proxy waits on is unbounded: client headers (`header_read_timeout`), the
//!   upstream connect (`connect_timeout`) and the upstream response head (`request_timeout`)
//!   all have deadlines, and every client connection is its own task.

mod balance;
pub mod config;
mod error;
mod forward;
mod headers;
pub mod metrics;
mod server;
pub mod table;

pub use config::ProxyConfig;
pub use error::ProxyError;
pub use metrics::ProxyMetrics;
pub use server::{Proxy, DEFAULT_SHUTDOWN_GRACE};
pub use table::{Backend, Route, RouteTable, Routes};
