//! The routing table: which ready backends serve which domain, and the shared handle the
//! reconciler swaps a whole new table into.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// One ready replica of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The instance id, for logs.
    pub id: String,
    /// Where the replica listens (HTTP/1.1).
    pub addr: SocketAddr,
    /// Relative share of traffic (stable/canary splits). `1` by default; `0` takes the
    /// backend out of rotation while leaving it in the table.
    pub weight: u32,
}

impl Backend {
    /// A backend with the default weight of 1.
    pub fn new(id: impl Into<String>, addr: SocketAddr) -> Self {
        Backend {
            id: id.into(),
            addr,
            weight: 1,
        }
    }
}

/// Where requests for one domain go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// The service, as `"project/name"`; used in metrics, logs and error bodies.
    pub service: String,
    /// The ready replicas. Empty means the service exists but nothing can serve it (503).
    pub backends: Vec<Backend>,
}

/// An immutable-once-published map from domain (lowercase, no port) to [`Route`].
///
/// Built whole by the reconciler and published with [`Routes::swap`]; the proxy never
/// mutates a published table.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    routes: HashMap<String, Route>,
}

impl RouteTable {
    /// An empty table: every request gets a 404.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes `domain` to `route`, replacing any previous route for it. The domain is
    /// normalized like request hosts are (lowercase, port and trailing dot removed).
    pub fn insert(&mut self, domain: &str, route: Route) {
        self.routes.insert(normalize_host(domain), route);
    }

    /// The route for a request host; `host` may carry a port and any letter case.
    pub fn get(&self, host: &str) -> Option<&Route> {
        self.routes.get(&normalize_host(host))
    }

    /// The number of routed domains.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether no domain is routed.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The routed domains, in no particular order.
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }
}

/// The shared handle to the current [`RouteTable`]. Cloning is cheap; all clones see the
/// same table.
///
/// Readers never block writers and vice versa (`ArcSwap`): each request loads one snapshot
/// and keeps it for its whole life, so a swap is atomic from a request's point of view.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    current: Arc<ArcSwap<RouteTable>>,
}

impl Routes {
    /// A handle holding an empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes `table`; requests that start afterwards use it.
    pub fn swap(&self, table: RouteTable) {
        self.current.store(Arc::new(table));
    }

    /// The current table.
    pub fn load(&self) -> Arc<RouteTable> {
        self.current.load_full()
    }
}

/// Lowercases a host and strips a port and a trailing dot: `"App.Example.COM.:8080"` →
/// `"app.example.com"`. IPv6 literals keep their brackets: `"[::1]:80"` → `"[::1]"`.
pub(crate) fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            // Only strip what looks like a port, so a malformed host is left recognisable.
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    without_port
        .strip_suffix('.')
        .unwrap_or(without_port)
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(service: &str) -> Route {
        Route {
            service: service.to_string(),
            backends: vec![Backend::new("i1", "127.0.0.1:9000".parse().unwrap())],
        }
    }

    #[test]
    fn normalizes_hosts() {
        assert_eq!(normalize_host("App.Example.COM"), "app.example.com");
        assert_eq!(normalize_host("app.example.com:8080"), "app.example.com");
        assert_eq!(normalize_host("app.example.com."), "app.example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
        assert_eq!(normalize_host("127.0.0.1:80"), "127.0.0.1");
    }

    #[test]
    fn lookup_ignores_case_and_port() {
        let mut table = RouteTable::new();
        table.insert("Shop.Example.com", route("demo/shop"));
        assert_eq!(table.len(), 1);
        assert_eq!(
            table.get("shop.example.COM:80").map(|r| r.service.as_str()),
            Some("demo/shop")
        );
        assert!(table.get("other.example.com").is_none());
        assert_eq!(
            table.domains().collect::<Vec<_>>(),
            vec!["shop.example.com"]
        );
    }

    #[test]
    fn swap_replaces_the_whole_table() {
        let routes = Routes::new();
        let before = routes.load();
        let mut table = RouteTable::new();
        table.insert("a.test", route("p/a"));
        routes.swap(table);
        assert!(before.is_empty(), "an old snapshot is never mutated");
        assert!(routes.clone().load().get("a.test").is_some());
    }
}
