//! Proxy configuration: the timeouts and limits that keep one slow or hostile peer from
//! tying up the proxy.

use std::time::Duration;

/// Timeouts and limits of the proxy. `Default` gives production values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// How long to wait for a TCP connection to a backend. Stops a blackholed backend
    /// address (SYNs dropped) from holding requests for the OS connect timeout (minutes).
    pub connect_timeout: Duration,
    /// How long the whole upstream response head may take, counted from when the proxy
    /// starts sending the request. Stops a backend that accepts but never answers from
    /// holding a client forever; the client gets a 504. The response body streams without
    /// a deadline (long polls, server-sent events). A retry on another backend (after the
    /// first could not be reached) starts its own `request_timeout`.
    pub request_timeout: Duration,
    /// How long a client may take to send a complete request head. Stops slowloris clients
    /// (connections that never finish their headers) from exhausting connections. It also
    /// bounds how long an idle keep-alive client connection is kept.
    pub header_read_timeout: Duration,
    /// How long a client may pause while sending a request body (between two reads). Stops
    /// a client that trickles or stalls its body from holding a backend connection; it gets
    /// a 408.
    pub body_read_timeout: Duration,
    /// How long an idle pooled connection to a backend is kept for reuse.
    pub idle_timeout: Duration,
    /// The largest request body the proxy forwards, in bytes; larger requests get a 413.
    /// Checked up front against `Content-Length` and enforced while streaming (chunked).
    pub max_request_body: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_request_body: 64 * 1024 * 1024,
        }
    }
}
