//! The proxy's Prometheus metrics (`orca_proxy_*`).

use std::time::Duration;

use http::StatusCode;
use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The `service` label of requests that matched no route (unknown or missing host).
pub const UNROUTED: &str = "unrouted";

/// The class of a response status; encoded as `1xx` ... `5xx`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum StatusClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
}

impl StatusClass {
    fn of(status: StatusCode) -> Self {
        match status.as_u16() {
            100..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirection,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }

    fn label(self) -> &'static str {
        match self {
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirection => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        }
    }
}

impl EncodeLabelValue for StatusClass {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.label())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    class: StatusClass,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamErrorLabels {
    service: String,
    /// `failed` (connect or protocol error, 502) or `timeout` (504).
    kind: String,
}

/// Which upstream connection carried a request (see `upstream`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum UpstreamPath {
    /// An owned connection of the client connection, already open.
    Owned,
    /// An owned connection opened for this request.
    OwnedNew,
    /// The worker's shared pool.
    Pooled,
}

impl EncodeLabelValue for UpstreamPath {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            UpstreamPath::Owned => "owned",
            UpstreamPath::OwnedNew => "owned_new",
            UpstreamPath::Pooled => "pooled",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    path: UpstreamPath,
}

type HistogramFamily = Family<ServiceLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms to ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The proxy's metrics. Cloning is cheap; clones share the same series.
#[derive(Clone, Debug)]
pub struct ProxyMetrics {
    requests: Family<RequestLabels, Counter>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    retries: Family<ServiceLabels, Counter>,
    duration: HistogramFamily,
    upstream_sends: Family<PathLabels, Counter>,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyMetrics {
    /// Fresh, unregistered metrics.
    pub fn new() -> Self {
        ProxyMetrics {
            requests: Family::default(),
            upstream_errors: Family::default(),
            retries: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            upstream_sends: Family::default(),
        }
    }

    /// Registers `orca_proxy_requests_total`, `orca_proxy_upstream_errors_total`,
    /// `orca_proxy_retries_total`, `orca_proxy_request_duration_seconds` and
    /// `orca_proxy_upstream_sends_total` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "orca_proxy_requests",
            "Requests answered by the proxy, by service and status class",
            self.requests.clone(),
        );
        registry.register(
            "orca_proxy_upstream_errors",
            "Requests whose upstream failed (502) or timed out (504), by service",
            self.upstream_errors.clone(),
        );
        registry.register(
            "orca_proxy_retries",
            "Requests sent again to another backend after the first could not be reached \
             (nothing had been sent), by service",
            self.retries.clone(),
        );
        registry.register(
            "orca_proxy_request_duration_seconds",
            "Time from receiving a request to sending the response head, by service",
            self.duration.clone(),
        );
        registry.register(
            "orca_proxy_upstream_sends",
            "Requests sent upstream, by the connection that carried them: `owned` (the client \
             connection's own upstream connection), `owned_new` (one opened for it) or \
             `pooled` (the worker's shared pool)",
            self.upstream_sends.clone(),
        );
    }

    /// Records one request sent upstream on `path`.
    pub(crate) fn upstream_send(&self, path: UpstreamPath) {
        self.upstream_sends
            .get_or_create(&PathLabels { path })
            .inc();
    }

    /// Records one answered request.
    pub(crate) fn record(&self, service: &str, status: StatusCode, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                service: service.to_string(),
                class: StatusClass::of(status),
            })
            .inc();
        self.duration
            .get_or_create(&ServiceLabels {
                service: service.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records one retry of a request of `service` on another backend.
    pub(crate) fn retry(&self, service: &str) {
        self.retries
            .get_or_create(&ServiceLabels {
                service: service.to_string(),
            })
            .inc();
    }

    /// Records an upstream failure of `kind`.
    pub(crate) fn upstream_error(&self, service: &str, kind: &str) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                service: service.to_string(),
                kind: kind.to_string(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn encodes_with_the_orca_proxy_prefix() {
        let metrics = ProxyMetrics::new();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.record("demo/web", StatusCode::OK, Duration::from_millis(3));
        metrics.record(
            "demo/web",
            StatusCode::BAD_GATEWAY,
            Duration::from_millis(3),
        );
        metrics.upstream_error("demo/web", "failed");
        metrics.retry("demo/web");
        metrics.upstream_send(UpstreamPath::Owned);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"orca_proxy_requests_total{service="demo/web",class="2xx"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"orca_proxy_requests_total{service="demo/web",class="5xx"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"orca_proxy_upstream_errors_total{service="demo/web",kind="failed"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"orca_proxy_retries_total{service="demo/web"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("orca_proxy_request_duration_seconds_count{service=\"demo/web\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(r#"orca_proxy_upstream_sends_total{path="owned"} 1"#),
            "{text}"
        );
    }
}
