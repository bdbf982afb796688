//! [`RouteStats`]: cumulative outcome counters per service, for the host to compute error
//! rates (a canary's, say) without scraping Prometheus text.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use http::StatusCode;

/// Cumulative request counts per service (the route's `service`, `"project/name"`).
/// Cloning is cheap; all clones share the counters, and they stay valid after the proxy is
/// consumed by [`Proxy::serve`](crate::Proxy::serve).
///
/// Only routed requests count (unknown hosts belong to no service). Every answered request
/// counts once, by the status of its response head, including the proxy's own 502, 503 and
/// 504 answers. Counters only grow; take differences between two reads for a rate.
#[derive(Clone, Debug, Default)]
pub struct RouteStats {
    services: Counters,
    instances: Counters,
}

/// Outcome counters by key (a service, or an instance id).
type Counters = Arc<RwLock<HashMap<String, Arc<Outcomes>>>>;

#[derive(Debug, Default)]
struct Outcomes {
    total: AtomicU64,
    errors_5xx: AtomicU64,
}

impl RouteStats {
    /// Fresh, empty counters.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// `(total, errors_5xx)` answered for `service` since the proxy started; `(0, 0)` for
    /// a service that has had no request.
    pub fn get(&self, service: &str) -> (u64, u64) {
        read(&self.services, service)
    }

    /// `(total, errors_5xx)` answered by the backend instance `id` (a [`Backend::id`]) since
    /// the proxy started, counting the proxy's own 502/504 for a failed upstream.
    ///
    /// [`Backend::id`]: crate::Backend::id
    pub fn get_instance(&self, id: &str) -> (u64, u64) {
        read(&self.instances, id)
    }

    /// Counts one answer attributed to the backend instance `id`.
    pub(crate) fn record_instance(&self, id: &str, status: StatusCode) {
        record(&self.instances, id, status);
    }

    /// Counts one answered request of `service`.
    pub(crate) fn record(&self, service: &str, status: StatusCode) {
        record(&self.services, service, status);
    }
}

fn read(counters: &Counters, key: &str) -> (u64, u64) {
    let counters = counters.read().unwrap_or_else(PoisonError::into_inner);
    counters.get(key).map_or((0, 0), |o| {
        (
            o.total.load(Ordering::Relaxed),
            o.errors_5xx.load(Ordering::Relaxed),
        )
    })
}

/// Counts one answer under `key`; allocates only the first time a key is seen.
fn record(counters: &Counters, key: &str, status: StatusCode) {
    let counted = |outcomes: &Outcomes| {
        // Errors first, so a reader never sees more errors than requests.
        if status.is_server_error() {
            outcomes.errors_5xx.fetch_add(1, Ordering::Relaxed);
        }
        outcomes.total.fetch_add(1, Ordering::Relaxed);
    };
    if let Some(outcomes) = counters
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(key)
    {
        counted(outcomes);
        return;
    }
    let mut counters = counters.write().unwrap_or_else(PoisonError::into_inner);
    counted(counters.entry(key.to_string()).or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_totals_and_server_errors_per_service() {
        let stats = RouteStats::new();
        let view = stats.clone();
        stats.record("demo/web", StatusCode::OK);
        stats.record("demo/web", StatusCode::NOT_FOUND);
        stats.record("demo/web", StatusCode::BAD_GATEWAY);
        stats.record("demo/api", StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(view.get("demo/web"), (3, 1));
        assert_eq!(view.get("demo/api"), (1, 1));
        assert_eq!(view.get("demo/none"), (0, 0));
        stats.record_instance("demo/web", StatusCode::OK);
        assert_eq!(view.get_instance("demo/web"), (1, 0));
        assert_eq!(view.get("demo/web"), (3, 1), "instances are counted apart");
    }
}
