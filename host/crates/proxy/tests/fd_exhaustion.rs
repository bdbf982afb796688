//! The proxy out of file descriptors (`EMFILE`), over real loopback sockets. Its own test
//! binary: it lowers this process's descriptor limit and uses up every descriptor, which
//! would break any test running beside it.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use orca_proxy::{Backend, Proxy, ProxyConfig, ProxyMetrics, Route, RouteTable, Routes};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// CPU time (user + system, in clock ticks) of this process's threads named `orca-proxy-*`.
fn proxy_threads_cpu_ticks() -> u64 {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with("orca-proxy-") {
            continue;
        }
        // Fields after the name: state is field 3; utime and stime are fields 14 and 15.
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        ticks += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    }
    ticks
}

fn get(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

#[test]
fn accept_on_fd_exhaustion_sheds_waiting_connections_and_does_not_spin() {
    // A low soft limit keeps the test quick wherever it runs (prlimit, from util-linux,
    // sets this process's limit).
    let pid = std::process::id().to_string();
    let old = limits(&pid);
    set_limit(&pid, &format!("512:{}", old.1));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let (addr, task) = runtime.block_on(async move {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend_addr = backend.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = backend.accept().await {
                tokio::spawn(async move {
                    let service = service_fn(|_req| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("a"))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let routes = Routes::new();
        let mut table = RouteTable::new();
        table.insert(
            "a.test",
            Route {
                service: "demo/a".into(),
                backends: vec![Backend::new("demo/a-0", backend_addr)],
            },
        );
        routes.swap(table);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Proxy::new(ProxyConfig::default(), routes, ProxyMetrics::new()).with_workers(1);
        let task = tokio::spawn(proxy.serve(listener, async move {
            let _ = rx.await;
        }));
        (addr, task)
    });
    let answer = get(addr).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Use up every descriptor, then free exactly one at a time for a client socket: the
    // proxy's accept then fails with EMFILE.
    // (/proc is read before and after: reading it takes a descriptor.)
    let cpu_before = proxy_threads_cpu_ticks();
    let started = Instant::now();
    let mut hoard = Vec::new();
    while let Ok(file) = std::fs::File::open("/dev/null") {
        hoard.push(file);
    }
    assert!(!hoard.is_empty());
    for round in 0..5 {
        hoard.pop();
        let mut stream =
            std::net::TcpStream::connect(addr).expect("the kernel completes the handshake");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
        let mut buf = [0u8; 256];
        // Closed at once (EOF or reset), not left hanging in the backlog until the
        // descriptors come back.
        match stream.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Ok(n) => panic!(
                "round {round}: answered while out of descriptors: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) => {
                panic!("round {round}: connection left waiting while out of descriptors: {e}")
            }
        }
        drop(stream);
        // Take the descriptor back, so the proxy stays out of them.
        if let Ok(file) = std::fs::File::open("/dev/null") {
            hoard.push(file);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(hoard);
    let elapsed = started.elapsed();
    let ticks_per_sec = 100; // USER_HZ on Linux
    let cpu =
        Duration::from_millis((proxy_threads_cpu_ticks() - cpu_before) * 1000 / ticks_per_sec);
    // Spinning on the failing accept would burn a whole core for `elapsed`.
    assert!(
        cpu < elapsed / 4,
        "proxy threads used {cpu:?} of CPU in {elapsed:?} while out of descriptors"
    );

    let answer = get(addr).expect("served again once descriptors are back");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let _ = tx.send(());
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(15), task).await })
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
    set_limit(&pid, &format!("{}:{}", old.0, old.1));
}

/// This process's soft and hard `RLIMIT_NOFILE`, as `prlimit` prints them.
fn limits(pid: &str) -> (String, String) {
    let out = std::process::Command::new("prlimit")
        .args([
            "--pid",
            pid,
            "--nofile",
            "--noheadings",
            "--raw",
            "--output",
            "SOFT,HARD",
        ])
        .output()
        .expect("prlimit (util-linux) runs");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut fields = text.split_whitespace().map(str::to_string);
    (fields.next().unwrap(), fields.next().unwrap())
}

fn set_limit(pid: &str, limit: &str) {
    let status = std::process::Command::new("prlimit")
        .args(["--pid", pid, &format!("--nofile={limit}")])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success(), "prlimit --nofile={limit} failed");
}
