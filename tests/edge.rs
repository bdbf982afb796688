//! End-to-end: slow, silent and dead peers cannot hang orca's proxy. The real binary with
//! short `[proxy]` timeouts in front of the test app: a backend that accepts and never
//! answers gets a 504 within the response-head timeout, a replica killed under load is
//! retried on the other one (no failed request), a client that stalls its body gets a 408
//! and one that never finishes its headers is disconnected, and oversize bodies get a 413.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

const PROXY: &str = "[proxy]\nconnect_timeout_ms = 300\nrequest_timeout_secs = 2\n\
    header_read_timeout_secs = 2\nbody_read_timeout_secs = 2\nmax_request_body = \"1Ki\"\n";

/// Sends `head` (and `body`), then reads whatever comes back until the server closes or
/// `limit` passes; returns (what came back, how long until the status line arrived or the
/// connection closed).
fn raw_exchange(
    addr: std::net::SocketAddr,
    head: &str,
    body: &[u8],
    limit: Duration,
) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(limit)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut first = None;
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                first.get_or_insert_with(|| started.elapsed());
                buf.extend_from_slice(&chunk[..n]);
                if String::from_utf8_lossy(&buf).contains("\r\n\r\n") {
                    // Enough for the status and head; the body is short.
                    std::thread::sleep(Duration::from_millis(50));
                    if let Ok(n) = stream.read(&mut chunk) {
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    break;
                }
            }
            Err(_) => break,
        }
    }
    (
        String::from_utf8_lossy(&buf).to_string(),
        first.unwrap_or_else(|| started.elapsed()),
    )
}

#[test]
fn slow_silent_and_dead_peers_cannot_hang_the_proxy() {
    let s = Server::start_with(PROXY);
    let host = "edge.orca.test";
    s.write_service("edge", &testapp_service("web", 2, host, ""));
    s.cli(&["deploy", "--timeout-secs", "120"]);
    let (code, _) = s.proxy_get(host, "/").unwrap();
    assert_eq!(code, 200);

    // A backend that accepts and never answers (the test app sleeping far longer than the
    // timeout): 504 within the 2 s response-head timeout, naming the upstream.
    let started = Instant::now();
    let (code, body) = s.proxy_get(host, "/sleep/60000").unwrap();
    let took = started.elapsed();
    assert_eq!(code, 504, "{body}");
    assert!(body.contains("did not answer within 2s"), "{body}");
    assert!(took < Duration::from_secs(5), "504 took {took:?}");

    // A client that stalls its body: 408 after the 2 s body timeout, not a held connection.
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100\r\nConnection: close\r\n\r\n"
    );
    let (answer, took) = raw_exchange(s.http, &head, b"only ten b", Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request body"), "{answer}");
    assert!(took < Duration::from_secs(5), "408 took {took:?}");

    // A client that never finishes its head is disconnected after the header timeout.
    let (answer, took) = raw_exchange(
        s.http,
        &format!("GET / HTTP/1.1\r\nHost: {host}\r\n"),
        b"",
        Duration::from_secs(10),
    );
    assert!(!answer.contains("200 OK"), "{answer}");
    assert!(took < Duration::from_secs(5), "slowloris held {took:?}");

    // Bodies over `max_request_body` are refused up front.
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4096\r\nConnection: close\r\n\r\n"
    );
    let (answer, _) = raw_exchange(s.http, &head, &[b'x'; 4096], Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // A replica killed under load: its address is dead until the controller takes it out
    // of the routing table; idempotent requests that could not reach it are retried on the
    // other replica, so none fails.
    let victim = containers(&s.cluster)
        .into_iter()
        .find(|(_, name, _)| name.contains("web"))
        .expect("a web container");
    let load = std::thread::spawn({
        let addr = s.http;
        move || {
            let deadline = Instant::now() + Duration::from_secs(4);
            let mut results = Vec::new();
            while Instant::now() < deadline {
                let r = http_raw(
                    "GET",
                    &format!("http://{addr}/"),
                    None,
                    &[("Host", "edge.orca.test")],
                    None,
                );
                results.push(r.map(|(code, _)| code));
                std::thread::sleep(Duration::from_millis(10));
            }
            results
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    docker_kill(&victim.0);
    let results = load.join().unwrap();
    let failed: Vec<_> = results.iter().filter(|r| !matches!(r, Ok(200))).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed while a replica died: {:?}\n{}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(5)],
        tail(&s.log(), 40)
    );
    assert!(results.len() > 50, "only {} requests", results.len());
}
