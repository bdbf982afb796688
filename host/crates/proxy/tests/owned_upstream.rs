//! The upstream HTTP/1.1 connections a client connection owns (`upstream` module): reused
//! for that connection's sequential requests, closed when their backend leaves the routing
//! table, and the shared pool as the fallback when one is busy or closed. Real loopback
//! sockets; backends report the peer port each request came from.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use orca_proxy::{
    Backend, Proxy, ProxyConfig, ProxyMetrics, Route, RouteTable, Routes, UpstreamConnections,
};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

fn config() -> ProxyConfig {
    ProxyConfig {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(5),
        header_read_timeout: Duration::from_secs(5),
        body_read_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        max_request_body: 1024,
    }
}

/// A backend answering `NAME PEER_PORT`, with the peer ports of its open connections.
struct PortBackend {
    addr: SocketAddr,
    open: Arc<Mutex<HashSet<u16>>>,
}

/// Starts a [`PortBackend`]; `idle_close` makes it close a keep-alive connection idle for
/// that long (hyper's header read timeout), `delay` holds every answer.
async fn port_backend(
    name: &'static str,
    idle_close: Option<Duration>,
    delay: Duration,
) -> PortBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open: Arc<Mutex<HashSet<u16>>> = Arc::default();
    let tracked = open.clone();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let open = tracked.clone();
            open.lock().unwrap().insert(peer.port());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| async move {
                    // A request target in absolute form (`GET http://addr/ HTTP/1.1`) is
                    // what a proxy sends to another proxy, not to an origin server; many
                    // applications refuse it.
                    if req.uri().authority().is_some() {
                        let mut refused = Response::new(Full::new(Bytes::from(format!(
                            "absolute-form request target {}",
                            req.uri()
                        ))));
                        *refused.status_mut() = StatusCode::BAD_REQUEST;
                        return Ok::<_, Infallible>(refused);
                    }
                    let _ = req.into_body().collect().await;
                    tokio::time::sleep(delay).await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                        "{name} {}",
                        peer.port()
                    )))))
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder.timer(TokioTimer::new());
                if let Some(idle) = idle_close {
                    builder.header_read_timeout(idle);
                }
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                open.lock().unwrap().remove(&peer.port());
            });
        }
    });
    PortBackend { addr, open }
}

fn table(domain: &str, addrs: &[SocketAddr]) -> RouteTable {
    let mut table = RouteTable::new();
    table.insert(
        domain,
        Route {
            service: "demo/app".into(),
            backends: addrs
                .iter()
                .enumerate()
                .map(|(i, addr)| Backend::new(format!("i{i}"), *addr))
                .collect(),
        },
    );
    table
}

/// A proxy with one worker (so every client connection shares one pool) on 127.0.0.1:0.
async fn start(routes: Routes, metrics: ProxyMetrics) -> (SocketAddr, oneshot::Sender<()>) {
    start_with(routes, metrics, UpstreamConnections::default()).await
}

async fn start_with(
    routes: Routes,
    metrics: ProxyMetrics,
    upstreams: UpstreamConnections,
) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let proxy = Proxy::new(config(), routes, metrics)
        .with_workers(1)
        .with_upstream_connections(upstreams);
    tokio::spawn(proxy.serve(listener, async move {
        let _ = rx.await;
    }));
    (addr, tx)
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// One HTTP/1.1 client connection to the proxy (exactly one TCP connection).
async fn connection(proxy: SocketAddr) -> hyper::client::conn::http1::SendRequest<Body> {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// Sends one request on `sender`; `(status, body)`.
async fn call(
    sender: &mut hyper::client::conn::http1::SendRequest<Body>,
    method: &str,
    body: &'static str,
) -> (StatusCode, String) {
    sender.ready().await.unwrap();
    let req = Request::builder()
        .method(method)
        .uri("/")
        .header("host", "app.test")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The port part of a `NAME PORT` answer.
fn port(answer: &str) -> u16 {
    answer.rsplit(' ').next().unwrap().parse().unwrap()
}

fn sends(metrics: &ProxyMetrics, path: &str) -> u64 {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let series = format!("orca_proxy_upstream_sends_total{{path=\"{path}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn sequential_requests_of_a_client_connection_reuse_its_own_upstream_connection() {
    reuse(UpstreamConnections::PerClient).await;
}

#[tokio::test]
async fn owned_connections_in_their_own_tasks_are_reused_too() {
    reuse(UpstreamConnections::PerClientSpawned).await;
}

#[tokio::test]
async fn pool_only_opens_no_owned_connection() {
    let backend = port_backend("b", None, Duration::ZERO).await;
    let routes = Routes::new();
    routes.swap(table("app.test", &[backend.addr]));
    let metrics = ProxyMetrics::new();
    let (proxy, _stop) = start_with(routes, metrics.clone(), UpstreamConnections::PoolOnly).await;
    let mut client = connection(proxy).await;
    for _ in 0..4 {
        assert_eq!(call(&mut client, "GET", "").await.0, StatusCode::OK);
    }
    assert_eq!(sends(&metrics, "pooled"), 4);
    assert_eq!(sends(&metrics, "owned_new") + sends(&metrics, "owned"), 0);
}

async fn reuse(upstreams: UpstreamConnections) {
    let backend = port_backend("b", None, Duration::ZERO).await;
    let routes = Routes::new();
    routes.swap(table("app.test", &[backend.addr]));
    let metrics = ProxyMetrics::new();
    let (proxy, _stop) = start_with(routes, metrics.clone(), upstreams).await;

    // Two client connections, their requests interleaved: through a shared pool alone both
    // would take turns on one idle upstream connection.
    let (mut a, mut b) = (connection(proxy).await, connection(proxy).await);
    let (mut ports_a, mut ports_b) = (Vec::new(), Vec::new());
    for _ in 0..6 {
        let (status, body) = call(&mut a, "GET", "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        ports_a.push(port(&body));
        let (status, body) = call(&mut b, "GET", "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        ports_b.push(port(&body));
    }
    // The first request of each goes through the pool; from the second on, each client
    // connection has its own upstream connection.
    assert!(
        ports_a[1..].iter().all(|p| *p == ports_a[1]),
        "client a's requests moved between upstream connections: {ports_a:?}"
    );
    assert!(
        ports_b[1..].iter().all(|p| *p == ports_b[1]),
        "client b's requests moved between upstream connections: {ports_b:?}"
    );
    assert_ne!(
        ports_a[1], ports_b[1],
        "both client connections used one upstream connection: {ports_a:?} {ports_b:?}"
    );
    assert_eq!(sends(&metrics, "pooled"), 2);
    assert_eq!(sends(&metrics, "owned_new"), 2);
    assert_eq!(sends(&metrics, "owned"), 8);
}

#[tokio::test]
async fn a_client_with_one_request_per_connection_opens_no_owned_connection() {
    let backend = port_backend("b", None, Duration::ZERO).await;
    let routes = Routes::new();
    routes.swap(table("app.test", &[backend.addr]));
    let metrics = ProxyMetrics::new();
    let (proxy, _stop) = start(routes, metrics.clone()).await;
    for _ in 0..5 {
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert_eq!(sends(&metrics, "pooled"), 5);
    assert_eq!(sends(&metrics, "owned_new"), 0);
    // The pool reuses one upstream connection for all of them.
    assert_eq!(backend.open.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn an_owned_connection_to_a_backend_that_left_the_table_is_closed_not_used() {
    let one = port_backend("one", None, Duration::ZERO).await;
    let two = port_backend("two", None, Duration::ZERO).await;
    let routes = Routes::new();
    routes.swap(table("app.test", &[one.addr]));
    let metrics = ProxyMetrics::new();
    let (proxy, _stop) = start(routes.clone(), metrics.clone()).await;
    let mut client = connection(proxy).await;
    let mut owned = 0;
    for _ in 0..3 {
        let (status, body) = call(&mut client, "GET", "").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with("one "), "{body}");
        owned = port(&body);
    }
    assert!(one.open.lock().unwrap().contains(&owned));

    // The instance leaves the table (as a replaced replica does before its drain).
    routes.swap(table("app.test", &[two.addr]));
    let (status, body) = call(&mut client, "GET", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("two "), "{body}");
    // The client connection's connection to the removed backend is closed (the pool's own
    // idle connection to it would only go after `idle_timeout`, 30 s here).
    let deadline = Instant::now() + Duration::from_secs(2);
    while one.open.lock().unwrap().contains(&owned) {
        assert!(
            Instant::now() < deadline,
            "the owned connection to the removed backend is still open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // And the client connection goes on with its own connection to the new backend.
    let (_, first) = call(&mut client, "GET", "").await;
    let (_, second) = call(&mut client, "GET", "").await;
    assert!(
        first.starts_with("two ") && first == second,
        "{first} / {second}"
    );
}

#[tokio::test]
async fn an_owned_connection_the_backend_closed_is_replaced_without_failing_a_request() {
    // The backend closes keep-alive connections idle for 50 ms; the client pauses longer
    // between its requests, which carry bodies (never retried): none may fail.
    let backend = port_backend("b", Some(Duration::from_millis(50)), Duration::ZERO).await;
    let routes = Routes::new();
    routes.swap(table("app.test", &[backend.addr]));
    let metrics = ProxyMetrics::new();
    let (proxy, _stop) = start(routes, metrics.clone()).await;
    let mut client = connection(proxy).await;
    let mut ports = Vec::new();
    for i in 0..5 {
        let (status, body) = call(&mut client, "POST", "payload").await;
        assert_eq!(status, StatusCode::OK, "request {i}: {body}");
        ports.push(port(&body));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let distinct: HashSet<_> = ports.iter().collect();
    assert_eq!(
        distinct.len(),
        ports.len(),
        "closed connections reused: {ports:?}"
    );
    assert!(
        sends(&metrics, "owned_new") >= 3,
        "owned connections replaced"
    );
}

#[tokio::test]
async fn concurrent_http2_streams_fall_back_to_the_pool_while_the_owned_connection_is_busy() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let backend = port_backend("b", None, Duration::from_millis(100)).await;
    let routes = Routes::new();
    routes.swap(table("app.test", &[backend.addr]));
    let metrics = ProxyMetrics::new();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https_addr = https.local_addr().unwrap();
    let proxy = Proxy::new(config(), routes, metrics.clone()).with_workers(1);
    let cert = rcgen::generate_simple_self_signed(vec!["app.test".to_string()]).unwrap();
    let key =
        orca_proxy::certified_key(&cert.cert.pem(), &cert.signing_key.serialize_pem()).unwrap();
    proxy.certificates().insert("app.test", Arc::new(key));
    let (_stop, rx) = oneshot::channel::<()>();
    tokio::spawn(proxy.serve_with_tls(http, https, async move {
        let _ = rx.await;
    }));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(
            rustls::pki_types::ServerName::try_from("app.test").unwrap(),
            TcpStream::connect(https_addr).await.unwrap(),
        )
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake::<_, _, Body>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let get = |sender: hyper::client::conn::http2::SendRequest<Body>| async move {
        let mut sender = sender;
        let req = Request::get("https://app.test/")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap();
        let response = sender.send_request(req).await.unwrap();
        let status = response.status();
        let _ = response.into_body().collect().await.unwrap();
        status
    };
    // Two sequential streams (the second opens the owned connection), then 10 at once:
    // one can take the owned connection, the others must not wait for it.
    assert_eq!(get(sender.clone()).await, StatusCode::OK);
    assert_eq!(get(sender.clone()).await, StatusCode::OK);
    let started = Instant::now();
    let all: Vec<_> = (0..10).map(|_| tokio::spawn(get(sender.clone()))).collect();
    for one in all {
        assert_eq!(one.await.unwrap(), StatusCode::OK);
    }
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "concurrent streams were serialized on one upstream connection: {:?}",
        started.elapsed()
    );
    assert_eq!(sends(&metrics, "owned_new"), 1);
    assert!(
        sends(&metrics, "pooled") >= 9,
        "busy owned connection fell back to the pool"
    );
}
