//! The API's accept loop: a header-read timeout on every connection, caps on open connections
//! per listener and per source address, and an fd reserve so an exhausted descriptor table
//! sheds the pending connection instead of making `accept` fail in a busy loop.
//!
//! Each limit stops one attack: unfinished request heads (slowloris) are closed after
//! `header_read_timeout`; many idle sockets from one address hit `max_per_source`; many
//! addresses hit `max_connections`, which stays below the process's fd limit so the proxy,
//! the store and Docker keep their descriptors.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use futures::FutureExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, info, warn};

/// How long requests in progress may run after shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The listener's limits (from `[api]` in cluster.toml).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest wait for a request head, also the idle keep-alive time.
    pub header_read_timeout: Duration,
    /// Most open connections.
    pub max_connections: usize,
    /// Most open connections from one source address.
    pub max_per_source: usize,
}

impl Limits {
    /// The limits configured in `[api]`, with the listener's cap also held to a quarter of
    /// the process's fd limit (`fd_limit`), so the API can never take the descriptors the
    /// proxy, the store and Docker need.
    pub fn from_settings(s: &orca_config::ApiSettings, fd_limit: Option<u64>) -> Limits {
        let share = fd_limit.map_or(usize::MAX, |l| (l / 4).max(16) as usize);
        Limits {
            header_read_timeout: Duration::from_secs(s.header_read_timeout_secs),
            max_connections: (s.max_connections as usize).min(share),
            max_per_source: s.max_connections_per_source as usize,
        }
    }
}

/// Open connections, in total and per source address.
#[derive(Default)]
struct Open {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// Counts connections; a [`Slot`] is held for each open one.
#[derive(Clone, Default)]
struct Counter {
    open: Arc<Mutex<Open>>,
    closed: Arc<Notify>,
}

/// Why a connection was refused.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    Listener,
    Source,
}

impl Counter {
    fn admit(&self, ip: IpAddr, limits: &Limits) -> Result<Slot, Refused> {
        let mut open = self.open.lock().expect("counter lock");
        if open.total >= limits.max_connections {
            return Err(Refused::Listener);
        }
        let from_source = open.by_source.entry(ip).or_insert(0);
        if *from_source >= limits.max_per_source {
            return Err(Refused::Source);
        }
        *from_source += 1;
        open.total += 1;
        Ok(Slot {
            counter: self.clone(),
            ip,
        })
    }

    fn total(&self) -> usize {
        self.open.lock().expect("counter lock").total
    }
}

/// One admitted connection; dropping it frees its place.
struct Slot {
    counter: Counter,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.counter.open.lock().expect("counter lock");
        open.total -= 1;
        if let Some(n) = open.by_source.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.by_source.remove(&self.ip);
            }
        }
        drop(open);
        self.counter.closed.notify_waiters();
    }
}

/// A spare descriptor, given up for a moment when the process is out of them so the
/// pending connection can be accepted and closed (otherwise it stays in the backlog and
/// every `accept` fails at once, forever).
struct Reserve(Option<std::fs::File>);

impl Reserve {
    fn new() -> Reserve {
        Reserve(std::fs::File::open("/dev/null").ok())
    }
}

/// Takes over a connection whose first byte is a TLS handshake (agents, HTTPS clients).
pub type TlsHandler = Arc<
    dyn Fn(tokio::net::TcpStream, SocketAddr) -> futures::future::BoxFuture<'static, ()>
        + Send
        + Sync,
>;

/// The first byte of a TLS connection (a handshake record).
const TLS_HANDSHAKE: u8 = 0x16;

/// Serves `app` on `listener` until `shutdown` is cancelled, then closes idle connections
/// and gives requests in progress up to [`SHUTDOWN_GRACE`]. A connection that opens with a
/// TLS handshake goes to `tls` (one port for the API, HTTPS and agent sessions); the caps
/// and the header-read timeout apply to both.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<TlsHandler>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let counter = Counter::default();
    let mut reserve = Reserve::new();
    let mut last_warning: Option<Instant> = None;
    let mut warn_limited = |what: &str, error: &dyn std::fmt::Display| {
        if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
            warn!(error = %error, "API {what}");
            last_warning = Some(Instant::now());
        }
    };
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                if is_out_of_descriptors(&e) {
                    warn_limited(
                        "accept failed: out of file descriptors; shedding the pending connection",
                        &e,
                    );
                    reserve.0.take();
                    if let Some(Ok((stream, _))) = listener.accept().now_or_never() {
                        drop(stream);
                    }
                    reserve = Reserve::new();
                } else {
                    warn_limited("accept failed", &e);
                }
                // Never spin: whatever failed, the next accept waits a moment.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let slot = match counter.admit(peer.ip(), &limits) {
            Ok(slot) => slot,
            Err(why) => {
                debug!(%peer, ?why, "API connection refused: connection cap reached");
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.oneshot(req).await.unwrap_or_else(|e| match e {})) }
            },
        );
        let http = http.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        let first_byte_within = limits.header_read_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            if let Some(tls) = tls {
                let mut first = [0u8; 1];
                match tokio::time::timeout(first_byte_within, stream.peek(&mut first)).await {
                    Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {
                        tokio::select! {
                            () = tls(stream, peer) => {}
                            () = shutdown.cancelled() => {}
                        }
                        return;
                    }
                    Ok(Ok(_)) => {}
                    // Nothing sent within the header-read timeout, or the peer left.
                    _ => return,
                }
            }
            let conn = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                        Ok(result) => result,
                        Err(_) => return,
                    }
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "API connection ended with an error");
            }
        });
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    loop {
        let closed = counter.closed.notified();
        if counter.total() == 0 {
            break;
        }
        if tokio::time::timeout_at(deadline, closed).await.is_err() {
            info!(open = counter.total(), "API shutdown grace expired");
            break;
        }
    }
    Ok(())
}

fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_source: usize) -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(1),
            max_connections: total,
            max_per_source: per_source,
        }
    }

    #[test]
    fn caps_count_per_listener_and_per_source_and_free_on_drop() {
        let c = Counter::default();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let l = limits(3, 2);
        let s1 = c.admit(a, &l).unwrap();
        let _s2 = c.admit(a, &l).unwrap();
        assert_eq!(c.admit(a, &l).err(), Some(Refused::Source));
        let _s3 = c.admit(b, &l).unwrap();
        assert_eq!(c.admit(b, &l).err(), Some(Refused::Listener));
        drop(s1);
        assert_eq!(c.total(), 2);
        let _s4 = c.admit(a, &l).unwrap();
    }
}
