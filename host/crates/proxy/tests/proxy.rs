//! End-to-end tests of the proxy over real loopback sockets: tiny hyper backends, the proxy
//! on 127.0.0.1:0, and a hyper (or raw TCP) client.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use orca_proxy::{
    Backend, InFlightView, Proxy, ProxyConfig, ProxyMetrics, Route, RouteStats, RouteTable, Routes,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

type TestClient = Client<HttpConnector, http_body_util::combinators::BoxBody<Bytes, Infallible>>;

/// Short timeouts so failure paths are quick to test.
fn test_config() -> ProxyConfig {
    ProxyConfig {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(600),
        header_read_timeout: Duration::from_millis(500),
        body_read_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(5),
        max_request_body: 1024,
    }
}

struct RunningProxy {
    addr: SocketAddr,
    in_flight: InFlightView,
    stats: RouteStats,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningProxy {
    async fn start(routes: Routes, config: ProxyConfig, metrics: ProxyMetrics) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let proxy = Proxy::new(config, routes, metrics);
        let in_flight = proxy.in_flight();
        let stats = proxy.route_stats();
        let task = tokio::spawn(proxy.serve(listener, async move {
            let _ = rx.await;
        }));
        RunningProxy {
            addr,
            in_flight,
            stats,
            shutdown: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
    }
}

/// Starts a hyper HTTP/1.1 backend (with upgrade support) answering with `handler`.
async fn spawn_backend<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// A backend that answers every request with its `name` and counts requests in `hits`.
async fn named_backend(name: &'static str, hits: Arc<AtomicUsize>) -> SocketAddr {
    spawn_backend(move |_req| {
        let hits = hits.clone();
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            Response::new(Full::new(Bytes::from(name)))
        }
    })
    .await
}

fn route(service: &str, addrs: &[SocketAddr]) -> Route {
    Route {
        service: service.to_string(),
        backends: addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| Backend::new(format!("{service}-{i}"), *addr))
            .collect(),
    }
}

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn empty() -> http_body_util::combinators::BoxBody<Bytes, Infallible> {
    Full::new(Bytes::new()).boxed()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

async fn send(client: &TestClient, proxy: SocketAddr, host: &str, path: &str) -> Answer {
    let req = Request::builder()
        .uri(format!("http://{proxy}{path}"))
        .header("host", host)
        .body(empty())
        .unwrap();
    answer(client.request(req).await.expect("proxy answers")).await
}

async fn answer(response: Response<Incoming>) -> Answer {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A distinct loopback address with nothing listening on it: connecting is refused at once.
/// (Binding port 0 and dropping the listener is not enough: the next call, or a parallel
/// test, may get the same port back, which makes two "dead" backends one.)
async fn closed_port() -> SocketAddr {
    static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    SocketAddr::from(([127, 0, 9, n], 9))
}

/// A backend that accepts connections and never answers.
async fn silent_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

#[tokio::test]
async fn routes_by_host_and_refuses_unknown_or_empty_routes() {
    let (hits_a, hits_b) = (Arc::default(), Arc::default());
    let a = named_backend("a", Arc::clone(&hits_a)).await;
    let b = named_backend("b", Arc::clone(&hits_b)).await;
    let routes = Routes::new();
    let mut table = RouteTable::new();
    table.insert("a.test", route("demo/a", &[a]));
    table.insert("b.test", route("demo/b", &[b]));
    table.insert("empty.test", route("demo/empty", &[]));
    routes.swap(table);
    let metrics = ProxyMetrics::new();
    let proxy = RunningProxy::start(routes, test_config(), metrics.clone()).await;
    let client = client();

    let r = send(&client, proxy.addr, "a.test", "/").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "a"));
    assert!(r.headers.get("x-orca-error").is_none());
    let r = send(&client, proxy.addr, "B.Test:8080", "/x?y=1").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "b"));

    let r = send(&client, proxy.addr, "nope.test", "/").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        r.body.trim(),
        r#"no service is routed for host "nope.test""#
    );
    assert_eq!(r.headers["x-orca-error"], "1");

    let r = send(&client, proxy.addr, "empty.test", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.body.trim(),
        r#"service "demo/empty" has no ready replica"#
    );
    assert_eq!(r.headers["x-orca-error"], "1");

    assert_eq!(hits_a.load(Ordering::SeqCst), 1);
    assert_eq!(hits_b.load(Ordering::SeqCst), 1);

    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        r#"orca_proxy_requests_total{service="demo/a",class="2xx"} 1"#,
        r#"orca_proxy_requests_total{service="unrouted",class="4xx"} 1"#,
        r#"orca_proxy_requests_total{service="demo/empty",class="5xx"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn an_application_error_is_not_marked_as_a_proxy_error() {
    let app = spawn_backend(|_req| async {
        let mut response = Response::new(Full::new(Bytes::from("app says no")));
        *response.status_mut() = StatusCode::NOT_FOUND;
        response
    })
    .await;
    let routes = Routes::new();
    let mut table = RouteTable::new();
    table.insert("app.test", route("demo/app", &[app]));
    routes.swap(table);
    let proxy = RunningProxy::start(routes, test_config(), ProxyMetrics::new()).await;
    let r = send(&client(), proxy.addr, "app.test", "/").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::NOT_FOUND, "app says no")
    );
    assert!(r.headers.get("x-orca-error").is_none());
    proxy.stop().await;
}

#[tokio::test]
async fn spreads_requests_over_backends() {
    let (hits_1, hits_2) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let one = named_backend("1", Arc::clone(&hits_1)).await;
    let two = named_backend("2", Arc::clone(&hits_2)).await;
    let routes = Routes::new();
    let mut table = RouteTable::new();
    table.insert("app.test", route("demo/app", &[one, two]));
    routes.swap(table);
    let proxy = RunningProxy::start(routes, test_config(), ProxyMetrics::new()).await;
    let client = client();
    for _ in 0..200 {
        let r = send(&client, proxy.addr, "app.test", "/").await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let (n1, n2) = (hits_1.load(Ordering::SeqCst), hits_2.load(Ordering::SeqCst));
    assert_eq!(n1 + n2, 200);
    // Expected 100 each; 60 is more than five standard deviations away.
    assert!(n1 >= 60 && n2 >= 60, "unbalanced: {n1} / {n2}");
    proxy.stop().await;
}

#[tokio::test]
async fn backend_sees_forwarded_headers_and_no_hop_by_hop_headers() {
    let echo = spawn_backend(|req| async move {
        let h = req.headers();
        let get = |name: &str| {
            h.get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
                .join("|")
        };
        let body = format!(
            "xff={}\nxfp={}\nxfh={}\nhost={}\nx-hop={}\nkeep-alive={}\nproxy-authorization={}\nuri={}\n",
            get("x-forwarded-for"),
            get("x-forwarded-proto"),
            get("x-forwarded-host"),
            get("host"),
            get("x-hop"),
            get("keep-alive"),
            get("proxy-authorization"),
            req.uri(),
        );
        Response::new(Full::new(Bytes::from(body)))
    })
    .await;
    let routes = Routes::new();
    let mut table = RouteTable::new();
    table.insert("app.test", route("demo/app", &[echo]));
    routes.swap(table);
    let proxy = RunningProxy::start(routes, test_config(), ProxyMetrics::new()).await;
    let req = Request::builder()
        .uri(format!("http://{}/path?q=1", proxy.addr))
        .header("host", "App.Test:8080")
        .header("x-forwarded-for", "10.1.2.3")
        .header("connection", "x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .body(empty())
        .unwrap();
    let r = answer(client().request(req).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK);
    let expected = "xff=10.1.2.3, 127.0.0.1\nxfp=http\nxfh=App.Test:8080\nhost=App.Test:8080\n\
                    x-hop=\nkeep-alive=\nproxy-authorization=\nuri=/path?q=1\n";
    assert_eq!(r.body, expected);
    proxy.stop().await;
}

#[tokio::test]
async fn table_swaps_while_requests_are_in_flight_never_fail_a_request() {
    let (hits_1, hits_2) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let one = named_backend("1", Arc::clone(&hits_1)).await;
    let two = named_backend("2", Arc::clone(&hits_2)).await;
    let routes = Routes::new();
    let table_with = move |addr: SocketAddr| {
        let mut table = RouteTable::new();
        table.insert("app.test", route("demo/app", &[addr]));
        table.insert("other.test", route("demo/other", &[one, two]));
        table
    };
    routes.swap(table_with(one));
    let proxy = RunningProxy::start(routes.clone(), test_config(), ProxyMetrics::new()).await;

    let swapping = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let swapper = {
        let (routes, swapping) = (routes.clone(), Arc::clone(&swapping));
        tokio::spawn(async move {
            let mut swaps = 0usize;
            while swapping.load(Ordering::SeqCst) {
                routes.swap(table_with(if swaps.is_multiple_of(2) { two } else { one }));
                swaps += 1;
                tokio::task::yield_now().await;
            }
            swaps
        })
    };
    let mut workers = Vec::new();
    for _ in 0..4 {
        let addr = proxy.addr;
        workers.push(tokio::spawn(async move {
            let client = client();
            for i in 0..100u32 {
                let host = if i.is_multiple_of(2) {
                    "app.test"
                } else {
                    "other.test"
                };
                let r = send(&client, addr, host, "/").await;
                assert_eq!(r.status, StatusCode::OK, "request {i} failed: {}", r.body);
                assert!(r.body == "1" || r.body == "2");
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    swapping.store(false, Ordering::SeqCst);
    let swaps = swapper.await.unwrap();
    assert!(
        swaps > 100,
        "only {swaps} swaps happened during the requests"
    );
    assert!(hits_1.load(Ordering::SeqCst) > 0 && hits_2.load(Ordering::SeqCst) > 0);
    proxy.stop().await;
}

#[tokio::test]
async fn dead_backend_is_a_quick_502_naming_the_upstream() {
    let dead = closed_port().await;
    let routes = Routes::new();
    let mut table = RouteTable::new();
    table.insert("dead.test", route("demo/dead", &[dead]));
    routes.swap(table);
    let metrics = ProxyMetrics::new();
    // A refused connect fails at once (a few ms measured), long before a connect timeout:
    // the timeout is set far above the bound (>= 5x a busy machine's measurement) so the
    // bound tells the two apart.
    let config = ProxyConfig {
        connect_timeout: Duration::from_secs(10),
        ..test_config()
    };
    let proxy = RunningProxy::start(routes, config, metrics.clone()).await;
    let started = Instant::now();
    let r = send(&client(), proxy.addr, "dead.test", "/").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.headers["x-orca-error"], "1");
    let prefix = format!("upstream {dead} for \"demo/dead\" failed: ");
    assert!(r.body.starts_with(&prefix), "{}", r.body);

    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(r#"orca_proxy_upstream_errors_total{service="demo/dead",kind="failed"} 1"#),
        "{text}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn silent_backend_is_a_504_and_does_not_hold_up_other_routes() {
    let silent = silent_backend().await;
    let fast = named_backend("fast", Arc::default()).await;
    let routes = Routes::new();
    let mut table = RouteTable::new();
    table.insert("slow.test", route("demo/slow", &[silent]));
    table.insert("fast.test", route("demo/fast", &[fast]));
    routes.swap(table);
    // The slow request waits 5 s; the fast ones take a few ms each (measured), bounded
    // at 1 s each, so all ten finish well before the slow one could.
    let config = ProxyConfig {
        request_timeout: Duration::from_secs(5),
        ..test_config()
    };
    let timeout = config.request_timeout;
    let proxy = RunningProxy::start(routes, config, ProxyMetrics::new()).await;
    let addr = proxy.addr;

    let started = Instant::now();
    let slow = tokio::spawn(async move { send(&client(), addr, "slow.test", "/").await });
    // While the slow request hangs, the other route answers at once, many times over.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let client = client();
    for _ in 0..10 {
        let t = Instant::now();
        let r = send(&client, addr, "fast.test", "/").await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "fast"));
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
    assert!(
        !slow.is_finished(),
        "the slow request cannot have finished yet"
    );

    let r = slow.await.unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= timeout,
        "answered before the timeout: {elapsed:?}"
    );
    assert!(
        elapsed < timeout + Duration::from_millis(2500),
        "{elapsed:?}"
    );
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.headers["x-orca-error"], "1");
    assert_eq!(
        r.body.trim(),
        format!("upstream {silent} for \"demo/slow\" did not answer within 5s")
    );
    proxy.stop().await;
}

#[tokio::test]
async fn oversize_bodies_are_refused_with_413() {
    let received = Arc::new(AtomicUsize::new(0));
    let sink = {
        let received = Arc::clone(&received);
        spawn_backend(move |req| {
            let received = received.clone();
            async move {
                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                if let Ok(body) = body {
                    received.fetch_add(body.len(), Ordering::SeqCst);
                }
                Response::new(Full::new(Bytes::from("ok")))
            }
        })
        .await
    };
    let routes = Routes::new();
    let mut table = RouteTable::new();
    table.insert("app.test", route("demo/app", &[sink]));
    routes.swap(table);
    let proxy = RunningProxy::start(routes, test_config(), ProxyMetrics::new()).await;
    let client = client();

    // At the limit: forwarded.
    let req = Request::post(format!("http://{}/", proxy.addr))
        .header("host", "app.test")
        .body(Full::new(Bytes::from(vec![b'x'; 1024])).boxed())
        .unwrap();
    let r = answer(client.request(req).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(received.load(Ordering::SeqCst), 1024);

    // Over the limit with a Content-Length: refused up front, nothing reaches the backend.
    let req = Request::post(format!("http://{}/", proxy.addr))
        .header("host", "app.test")
        .body(Full::new(Bytes::from(vec![b'x'; 2048])).boxed())
        .unwrap();
    let r = answer(client.request(req).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.headers["x-orca-error"], "1");
    assert_eq!(
        r.body.trim(),
        "request body exceeds the limit of 1024 bytes"
    );
    assert_eq!(received.load(Ordering::SeqCst), 1024);

    // Over the limit while streaming (chunked, no Content-Length).
    let chunks = (0..8).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'y'; 512]))));
    let body = StreamBody::new(futures::stream::iter(chunks));
    let req = Request::post(format!("http://{}/", proxy.addr))
        .header("host", "app.test")
        .body(body.boxed())
        .unwrap();
    let r = answer(client.request(req).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    assert_eq!(
        received.load(Ordering::SeqCst),
        1024,
        "a cut-off body is never delivered whole"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn upgraded_connections_are_spliced_both_ways() {
    let echo = spawn_backend(|mut req| async move {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let mut io = TokioIo::new(upgrade.await.unwrap());
            let mut buf = [0u8; 1024];
            loop {
                let n = io.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                io.write_all(&buf[..n]).await.unwrap();
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(Full::new(Bytes::new()))
            .unwrap()
    })
    .await;
    let routes = Routes::new();
    let mut table = RouteTable::new();
    table.insert("ws.test", route("demo/ws", &[echo]));
    routes.swap(table);
    let proxy = RunningProxy::start(routes, test_config(), ProxyMetrics::new()).await;

    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: echo"),
        "{head}"
    );
    assert_eq!(proxy.in_flight.get(echo), 1, "an open tunnel is in flight");
    for message in [&b"hello"[..], b"through the proxy"] {
        stream.write_all(message).await.unwrap();
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut back))
            .await
            .expect("echo arrives")
            .unwrap();
        assert_eq!(back, message);
    }
    drop(stream);
    eventually_zero(&proxy.in_flight, echo).await;
    proxy.stop().await;
}

/// Reads an HTTP response head byte by byte, so no byte after it is consumed.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut byte))
            .await
            .expect("head arrives")
            .unwrap();
        assert_eq!(
            n,
            1,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn client_that_never_sends_headers_is_dropped() {
    let routes = Routes::new();
    let proxy = RunningProxy::start(routes, test_config(), ProxyMetrics::new()).await;
    for opening in [&b""[..], b"GET / HTTP/1.1\r\nHost: a"] {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(opening).await.unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "connection still open after 3s");
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(400),
            "closed too early: {elapsed:?}"
        );
    }
    proxy.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let slow = spawn_backend(|_req| async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Response::new(Full::new(Bytes::from("finished")))
    })
    .await;
    let routes = Routes::new();
    let mut table = RouteTable::new();
    table.insert("slow.test", route("demo/slow", &[slow]));
    routes.swap(table);
    let proxy = RunningProxy::start(routes, test_config(), ProxyMetrics::new()).await;
    let addr = proxy.addr;
    let in_flight = tokio::spawn(async move { send(&client(), addr, "slow.test", "/").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopped = tokio::spawn(proxy.stop());

    let r = in_flight.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "finished"));
    tokio::time::timeout(Duration::from_secs(2), stopped)
        .await
        .expect("serve returns once the request is done")
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

/// Reads one HTTP/1.1 response (Content-Length body) from `stream`: (head, body).
async fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "closed inside a head"
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    (head, String::from_utf8_lossy(&body).to_string())
}

#[tokio::test]
async fn on_shutdown_keep_alive_connections_are_answered_with_connection_close_not_cut() {
    let a = named_backend("a", Arc::default()).await;
    let routes = Routes::new();
    let mut table = RouteTable::new();
    table.insert("a.test", route("demo/a", &[a]));
    routes.swap(table);
    let proxy = RunningProxy::start(routes, test_config(), ProxyMetrics::new()).await;
    let addr = proxy.addr;
    let mut kept = TcpStream::connect(addr).await.unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
    kept.write_all(request).await.unwrap();
    let (head, body) = read_response(&mut kept).await;
    assert!(!head.contains("connection: close"), "{head}");
    assert_eq!(body, "a");

    // Shutdown begins: the listener closes, but the open connection is still served
    // (within the close linger), and its answer tells the client to reconnect.
    let stopped = tokio::spawn(proxy.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
    kept.write_all(request).await.unwrap();
    let (head, body) = read_response(&mut kept).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(body, "a");
    let mut rest = Vec::new();
    kept.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "the proxy closed after that answer");
    tokio::time::timeout(Duration::from_secs(3), stopped)
        .await
        .expect("serve returns once the connection closed")
        .unwrap();
}

fn metrics_text(metrics: &ProxyMetrics) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}

/// The value of the series `name{labels}` in `text`, 0 if absent.
fn series(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits (up to 2 s) until the view reports nothing in flight to `addr`: the count drops
/// when the proxy has finished with the response body, a moment after the client has it.
async fn eventually_zero(view: &InFlightView, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while view.get(addr) != 0 {
        assert!(
            Instant::now() < deadline,
            "still {} in flight",
            view.get(addr)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn requests_to_a_refused_backend_are_retried_on_another() {
    let hits = Arc::new(AtomicUsize::new(0));
    let live = named_backend("live", Arc::clone(&hits)).await;
    let (dead_1, dead_2) = (closed_port().await, closed_port().await);
    let routes = Routes::new();
    let mut table = RouteTable::new();
    table.insert("app.test", route("demo/app", &[dead_1, live]));
    table.insert("two.test", route("demo/two", &[dead_1, dead_2, live]));
    table.insert(
        "none.test",
        route("demo/none", &[dead_1, dead_2, closed_port().await]),
    );
    routes.swap(table);
    let metrics = ProxyMetrics::new();
    let proxy = RunningProxy::start(routes, test_config(), metrics.clone()).await;
    let client = client();

    for i in 0..200 {
        let r = send(&client, proxy.addr, "app.test", "/").await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::OK, "live"),
            "request {i}"
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 200);
    let text = metrics_text(&metrics);
    let retries = series(&text, r#"orca_proxy_retries_total{service="demo/app"}"#);
    // Half the requests pick the dead backend first; 200 draws at 50% give 100 ± 7.
    assert!((50..=150).contains(&retries), "{retries} retries\n{text}");
    assert_eq!(
        series(
            &text,
            r#"orca_proxy_upstream_errors_total{service="demo/app",kind="failed"}"#
        ),
        0
    );
    assert_eq!(proxy.stats.get("demo/app"), (200, 0));
    assert_eq!(proxy.in_flight.get(dead_1), 0);

    // Two dead backends before the live one: two retries are still enough.
    for i in 0..50 {
        let r = send(&client, proxy.addr, "two.test", "/").await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::OK, "live"),
            "request {i}"
        );
    }

    // Nothing alive: two retries, then the 502 of the last backend tried.
    let r = send(&client, proxy.addr, "none.test", "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.headers["x-orca-error"], "1");
    let text = metrics_text(&metrics);
    assert_eq!(
        series(&text, r#"orca_proxy_retries_total{service="demo/none"}"#),
        2,
        "{text}"
    );
    assert_eq!(
        series(
            &text,
            r#"orca_proxy_upstream_errors_total{service="demo/none",kind="failed"}"#
        ),
        1
    );
    proxy.stop().await;
}

/// Regression (tests/edge.rs, a replica killed under load answered one GET with 502): a
/// backend that reads a GET and closes without answering is like a replica that died
/// mid-request; the GET is sent to another replica.
#[tokio::test]
async fn a_get_whose_backend_closed_without_answering_is_retried() {
    let hits = Arc::new(AtomicUsize::new(0));
    let live = named_backend("live", Arc::clone(&hits)).await;
    let dying = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buf = [0u8; 4096];
                    // Read the request head, then die without a byte of answer.
                    let _ = stream.read(&mut buf).await;
                    drop(stream);
                });
            }
        });
        addr
    };
    let routes = Routes::new();
    let mut table = RouteTable::new();
    table.insert("app.test", route("demo/app", &[dying, live]));
    routes.swap(table);
    let metrics = ProxyMetrics::new();
    let proxy = RunningProxy::start(routes, test_config(), metrics.clone()).await;
    let client = client();
    for i in 0..50 {
        let r = send(&client, proxy.addr, "app.test", "/").await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::OK, "live"),
            "request {i}"
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 50);
    let text = metrics_text(&metrics);
    assert!(
        series(&text, r#"orca_proxy_retries_total{service="demo/app"}"#) > 0,
        "{text}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_request_with_a_body_is_not_retried() {
    let received = Arc::new(AtomicUsize::new(0));
    let live = {
        let received = Arc::clone(&received);
        spawn_backend(move |req| {
            let received = received.clone();
            async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&body[..], b"payload");
                received.fetch_add(1, Ordering::SeqCst);
                Response::new(Full::new(Bytes::from("stored")))
            }
        })
        .await
    };
    let dead = closed_port().await;
    let routes = Routes::new();
    let mut table = RouteTable::new();
    table.insert("app.test", route("demo/app", &[dead, live]));
    routes.swap(table);
    let metrics = ProxyMetrics::new();
    let proxy = RunningProxy::start(routes, test_config(), metrics.clone()).await;
    let client = client();

    let (mut ok, mut failed) = (0, 0);
    for _ in 0..40 {
        let req = Request::post(format!("http://{}/", proxy.addr))
            .header("host", "app.test")
            .body(Full::new(Bytes::from("payload")).boxed())
            .unwrap();
        let r = answer(client.request(req).await.unwrap()).await;
        match r.status {
            StatusCode::OK => ok += 1,
            StatusCode::BAD_GATEWAY => {
                let prefix = format!("upstream {dead} for \"demo/app\" failed: ");
                assert!(r.body.starts_with(&prefix), "{}", r.body);
                failed += 1;
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    // 40 draws at 50%: all on one side has a chance of 2^-39.
    assert!(failed > 0 && ok > 0, "{ok} ok / {failed} failed");
    assert_eq!(received.load(Ordering::SeqCst), ok);
    let text = metrics_text(&metrics);
    assert_eq!(
        series(&text, r#"orca_proxy_retries_total{service="demo/app"}"#),
        0,
        "{text}"
    );
    assert_eq!(proxy.stats.get("demo/app"), (40, failed as u64));
    proxy.stop().await;
}

#[tokio::test]
async fn in_flight_view_counts_a_slow_request_until_it_completes() {
    let slow = spawn_backend(|_req| async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Response::new(Full::new(Bytes::from("done")))
    })
    .await;
    let routes = Routes::new();
    let mut table = RouteTable::new();
    table.insert("slow.test", route("demo/slow", &[slow]));
    routes.swap(table);
    let proxy = RunningProxy::start(routes, test_config(), ProxyMetrics::new()).await;
    let view = proxy.in_flight.clone();
    assert_eq!(view.get(slow), 0);
    let addr = proxy.addr;
    let request = tokio::spawn(async move { send(&client(), addr, "slow.test", "/").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(view.get(slow), 1);
    assert_eq!(view.get(closed_port().await), 0, "an unknown address");
    let r = request.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "done"));
    eventually_zero(&view, slow).await;
    proxy.stop().await;
    assert_eq!(view.get(slow), 0, "the view outlives the proxy");
}

#[tokio::test]
async fn route_stats_count_requests_and_server_errors() {
    let app = spawn_backend(|req| async move {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = match req.uri().path() {
            "/fail" => StatusCode::INTERNAL_SERVER_ERROR,
            "/missing" => StatusCode::NOT_FOUND,
            _ => StatusCode::OK,
        };
        response
    })
    .await;
    let dead = closed_port().await;
    let routes = Routes::new();
    let mut table = RouteTable::new();
    table.insert("app.test", route("demo/app", &[app]));
    table.insert("dead.test", route("demo/dead", &[dead]));
    table.insert("empty.test", route("demo/empty", &[]));
    routes.swap(table);
    let proxy = RunningProxy::start(routes, test_config(), ProxyMetrics::new()).await;
    let client = client();
    for (host, path) in [
        ("app.test", "/"),
        ("app.test", "/fail"),
        ("app.test", "/missing"),
        ("app.test", "/fail"),
        ("dead.test", "/"),
        ("empty.test", "/"),
        ("nope.test", "/"),
    ] {
        send(&client, proxy.addr, host, path).await;
    }
    assert_eq!(proxy.stats.get("demo/app"), (4, 2));
    assert_eq!(proxy.stats.get("demo/dead"), (1, 1), "the proxy's own 502");
    assert_eq!(proxy.stats.get("demo/empty"), (1, 1), "the proxy's own 503");
    assert_eq!(proxy.stats.get("demo/other"), (0, 0));
    assert_eq!(proxy.stats.get("unrouted"), (0, 0));
    proxy.stop().await;
}

/// A self-signed certificate for `name`, as rustls serves it, and its DER for clients.
fn self_signed(
    name: &str,
) -> (
    Arc<rustls::sign::CertifiedKey>,
    rustls::pki_types::CertificateDer<'static>,
) {
    let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let key =
        orca_proxy::certified_key(&cert.cert.pem(), &cert.signing_key.serialize_pem()).unwrap();
    (Arc::new(key), cert.cert.der().clone())
}

/// A TLS client connection to `addr` for `sni`, trusting `root`, offering `alpn`.
async fn tls_client(
    addr: SocketAddr,
    sni: &str,
    root: &rustls::pki_types::CertificateDer<'static>,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    connector.connect(name, tcp).await
}

struct TlsProxy {
    http: SocketAddr,
    https: SocketAddr,
    certificates: orca_proxy::Certificates,
    challenges: orca_proxy::Challenges,
    shutdown: Option<oneshot::Sender<()>>,
}

async fn start_tls_proxy(routes: Routes, metrics: ProxyMetrics) -> TlsProxy {
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http_addr, https_addr) = (http.local_addr().unwrap(), https.local_addr().unwrap());
    let proxy = Proxy::new(test_config(), routes, metrics);
    let certificates = proxy.certificates();
    let challenges = proxy.challenges();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(proxy.serve_with_tls(http, https, async move {
        let _ = rx.await;
    }));
    TlsProxy {
        http: http_addr,
        https: https_addr,
        certificates,
        challenges,
        shutdown: Some(tx),
    }
}

#[tokio::test]
async fn h2_over_tls_retries_a_refused_backend_and_keeps_connections_across_a_certificate_swap() {
    let hits = Arc::new(AtomicUsize::new(0));
    let live = named_backend("live", Arc::clone(&hits)).await;
    let routes = Routes::new();
    let mut table = RouteTable::new();
    table.insert("app.test", route("demo/app", &[closed_port().await, live]));
    routes.swap(table);
    let metrics = ProxyMetrics::new();
    let mut proxy = start_tls_proxy(routes, metrics.clone()).await;
    let (key, root) = self_signed("app.test");
    proxy.certificates.insert("app.test", key);

    let tls = tls_client(proxy.https, "app.test", &root, &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    for i in 0..60 {
        let req = Request::get("https://app.test/x").body(empty()).unwrap();
        let r = answer(sender.send_request(req).await.unwrap()).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::OK, "live"),
            "request {i}"
        );
    }
    let retries = series(
        &metrics_text(&metrics),
        r#"orca_proxy_retries_total{service="demo/app"}"#,
    );
    assert!(
        retries > 0,
        "HTTP/2 requests that could not reach a backend are retried"
    );

    // A new certificate: the open HTTP/2 connection keeps working, new handshakes get it.
    let (new_key, new_root) = self_signed("app.test");
    proxy.certificates.insert("app.test", new_key);
    let req = Request::get("https://app.test/after-swap")
        .body(empty())
        .unwrap();
    let r = answer(sender.send_request(req).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(tls_client(proxy.https, "app.test", &root, &[b"h2"])
        .await
        .is_err());
    assert!(tls_client(proxy.https, "app.test", &new_root, &[b"h2"])
        .await
        .is_ok());
    // No certificate for a name: the handshake fails.
    assert!(tls_client(proxy.https, "other.test", &new_root, &[b"h2"])
        .await
        .is_err());
    let _ = proxy.shutdown.take().map(|tx| tx.send(()));
}

#[tokio::test]
async fn plain_http_redirects_domains_with_a_certificate_except_the_acme_path() {
    let hits = Arc::new(AtomicUsize::new(0));
    let live = named_backend("live", Arc::clone(&hits)).await;
    let routes = Routes::new();
    let mut table = RouteTable::new();
    table.insert("app.test", route("demo/app", &[live]));
    table.insert("plain.test", route("demo/plain", &[live]));
    routes.swap(table);
    let mut proxy = start_tls_proxy(routes, ProxyMetrics::new()).await;
    let (key, _) = self_signed("app.test");
    proxy.certificates.insert("app.test", key);
    proxy.challenges.insert("tok-1", "tok-1.thumbprint");
    let client = client();

    let r = send(&client, proxy.http, "APP.test:80", "/a/b?c=d").await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        r.headers["location"],
        format!("https://app.test:{}/a/b?c=d", proxy.https.port()).as_str()
    );
    let r = send(
        &client,
        proxy.http,
        "app.test",
        "/.well-known/acme-challenge/tok-1",
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "tok-1.thumbprint")
    );
    let r = send(
        &client,
        proxy.http,
        "app.test",
        "/.well-known/acme-challenge/nope",
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.headers["x-orca-error"], "1");
    // No certificate: served on plain HTTP.
    let r = send(&client, proxy.http, "plain.test", "/").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "live"));
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the ACME path never reaches a backend"
    );
    let _ = proxy.shutdown.take().map(|tx| tx.send(()));
}

#[tokio::test]
async fn a_client_that_stalls_its_body_gets_a_408() {
    let backend = spawn_backend(|req: Request<Incoming>| async move {
        let body = req.into_body().collect().await.map(|b| b.to_bytes());
        Response::new(Full::new(body.unwrap_or_default()))
    })
    .await;
    let routes = Routes::new();
    let mut table = RouteTable::new();
    table.insert("app.test", route("demo/app", &[backend]));
    routes.swap(table);
    let mut config = test_config();
    config.request_timeout = Duration::from_secs(5);
    let proxy = RunningProxy::start(routes, config, ProxyMetrics::new()).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"PUT /x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\nten bytes!")
        .await
        .unwrap();
    let started = Instant::now();
    let head = tokio::time::timeout(Duration::from_secs(3), read_head(&mut stream))
        .await
        .expect("answered within the body timeout");
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(started.elapsed() < Duration::from_secs(2));
    proxy.stop().await;
}

/// A config whose client connections may stay idle for long (the connection-cap tests hold
/// idle connections open).
fn patient_config() -> ProxyConfig {
    ProxyConfig {
        header_read_timeout: Duration::from_secs(30),
        ..test_config()
    }
}

/// A backend answering with the `Host` and `X-Forwarded-Host` it received.
async fn host_echo_backend(name: &'static str) -> SocketAddr {
    spawn_backend(move |req| async move {
        let header = |n: &str| {
            req.headers()
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let body = format!(
            "{name} host={} xfh={}",
            header("host"),
            header("x-forwarded-host")
        );
        Response::new(Full::new(Bytes::from(body)))
    })
    .await
}

/// Sends `raw` on a new connection and reads the whole answer (the request must ask for
/// `Connection: close`, or the proxy must close).
async fn raw_exchange(proxy: SocketAddr, raw: &str) -> String {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the proxy answers and closes")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn absolute_form_request_uri_routes_and_forwards_by_one_authority() {
    let a = host_echo_backend("a").await;
    let b = host_echo_backend("b").await;
    let routes = Routes::new();
    let mut table = RouteTable::new();
    table.insert("a.test", route("demo/a", &[a]));
    table.insert("b.test", route("demo/b", &[b]));
    routes.swap(table);
    let proxy = RunningProxy::start(routes, test_config(), ProxyMetrics::new()).await;
    // RFC 9112 §3.2.2: the URI's authority wins, and it is also the Host the backend sees.
    let answer = raw_exchange(
        proxy.addr,
        "GET http://a.test/x HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with("a host=a.test xfh=a.test"),
        "routed and forwarded by different authorities: {answer}"
    );
    // Origin form keeps routing by Host.
    let answer = raw_exchange(
        proxy.addr,
        "GET /x HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.ends_with("b host=b.test xfh=b.test"), "{answer}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_request_with_two_host_headers_is_a_400() {
    let hits = Arc::new(AtomicUsize::new(0));
    let a = named_backend("a", hits.clone()).await;
    let routes = Routes::new();
    let mut table = RouteTable::new();
    table.insert("a.test", route("demo/a", &[a]));
    routes.swap(table);
    let proxy = RunningProxy::start(routes, test_config(), ProxyMetrics::new()).await;
    for raw in [
        "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        "GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw_exchange(proxy.addr, raw).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{raw:?}: {answer}");
        assert!(
            answer.contains("request has more than one Host header"),
            "{answer}"
        );
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "nothing reached the backend"
    );
    proxy.stop().await;
}

/// A connection from `source` (a loopback address) to `proxy`.
async fn connect_from(source: [u8; 4], proxy: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(proxy).await.unwrap()
}

/// Whether the proxy closes `stream` without answering within a few seconds.
async fn closed_without_answer(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// One request on `stream`, answered 200 by backend `name`.
async fn served(stream: &mut TcpStream, name: &str) -> bool {
    let request = "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    matches!(read, Ok(Ok(_))) && answer.starts_with("HTTP/1.1 200") && answer.ends_with(name)
}

async fn capped_proxy(limits: orca_proxy::ConnectionLimits) -> (RunningProxy, SocketAddr) {
    let a = named_backend("a", Arc::default()).await;
    let routes = Routes::new();
    let mut table = RouteTable::new();
    table.insert("a.test", route("demo/a", &[a]));
    routes.swap(table);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let proxy =
        Proxy::new(patient_config(), routes, ProxyMetrics::new()).with_connection_limits(limits);
    let in_flight = proxy.in_flight();
    let stats = proxy.route_stats();
    let task = tokio::spawn(proxy.serve(listener, async move {
        let _ = rx.await;
    }));
    let running = RunningProxy {
        addr,
        in_flight,
        stats,
        shutdown: Some(tx),
        task,
    };
    (running, addr)
}

#[tokio::test]
async fn connections_over_the_per_source_cap_are_closed_at_accept() {
    let limits = orca_proxy::ConnectionLimits {
        per_listener: 100,
        per_source: 2,
    };
    let (proxy, addr) = capped_proxy(limits).await;
    let idle1 = connect_from([127, 0, 0, 1], addr).await;
    let mut idle2 = connect_from([127, 0, 0, 1], addr).await;
    // Both are admitted (the second is served), and then a third from the same address
    // is closed unanswered, while another address is still served.
    let mut third = connect_from([127, 0, 0, 1], addr).await;
    assert!(
        closed_without_answer(&mut third).await,
        "a third connection from one address is refused"
    );
    let mut other = connect_from([127, 0, 0, 2], addr).await;
    assert!(served(&mut other, "a").await, "another address is served");
    // Giving a place back admits the next connection from that address.
    drop(idle1);
    let mut admitted = false;
    for _ in 0..50 {
        let mut next = connect_from([127, 0, 0, 1], addr).await;
        if served(&mut next, "a").await {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(admitted, "a freed place is given to the next connection");
    assert!(
        served(&mut idle2, "a").await,
        "admitted connections are served"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn connections_over_the_per_listener_cap_are_closed_at_accept() {
    let limits = orca_proxy::ConnectionLimits {
        per_listener: 2,
        per_source: 100,
    };
    let (proxy, addr) = capped_proxy(limits).await;
    let idle1 = connect_from([127, 0, 0, 3], addr).await;
    let _idle2 = connect_from([127, 0, 0, 4], addr).await;
    let mut third = connect_from([127, 0, 0, 5], addr).await;
    assert!(
        closed_without_answer(&mut third).await,
        "a connection over the listener's cap is refused"
    );
    drop(idle1);
    let mut admitted = false;
    for _ in 0..50 {
        let mut next = connect_from([127, 0, 0, 5], addr).await;
        if served(&mut next, "a").await {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(admitted, "a freed place is given to the next connection");
    proxy.stop().await;
}

#[test]
fn proxy_keeps_serving_while_the_runtime_that_started_it_is_stalled() {
    // The proxy serves on its own worker threads: when the runtime that started it stalls
    // (as the API's could, under a flood of connections or a handler that blocks), the
    // proxy keeps answering. Here that runtime is not driven at all while requests run.
    let backends = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let a = backends.block_on(named_backend("a", Arc::default()));
    let caller = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let (addr, task) = caller.block_on(async move {
        let routes = Routes::new();
        let mut table = RouteTable::new();
        table.insert("a.test", route("demo/a", &[a]));
        routes.swap(table);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Proxy::new(test_config(), routes, ProxyMetrics::new());
        let task = tokio::spawn(proxy.serve(listener, async move {
            let _ = rx.await;
        }));
        // Let the serve task start its workers, then stop driving this runtime.
        tokio::time::sleep(Duration::from_millis(100)).await;
        (addr, task)
    });
    let client = std::thread::spawn(move || {
        use std::io::{Read, Write};
        (0..20)
            .map(|_| {
                let mut stream = std::net::TcpStream::connect(addr).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                stream
                    .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let mut answer = String::new();
                let _ = stream.read_to_string(&mut answer);
                answer
            })
            .collect::<Vec<_>>()
    });
    let answers = client.join().unwrap();
    for answer in &answers {
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with('a'),
            "not served while the caller's runtime stalls: {answer:?}"
        );
    }
    let _ = tx.send(());
    caller
        .block_on(async { tokio::time::timeout(Duration::from_secs(15), task).await })
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
}
