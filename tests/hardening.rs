//! End-to-end regression tests of issue #11 ("what a new user and an attacker found"): each
//! test is named after the item it pins, and drives the real server, CLI, proxy and Docker.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// A TCP connection to `to` from the loopback address `from` (all of 127/8 is loopback).
fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((from, 0)).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

/// An unfinished request head, like a slowloris client.
const HALF_REQUEST: &[u8] = b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n";

/// True once the peer closed `s` (EOF or reset) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn api_addr(s: &Server) -> SocketAddr {
    s.api.strip_prefix("http://").unwrap().parse().unwrap()
}

fn health(s: &Server) -> u16 {
    http_raw("GET", &format!("{}/api/v1/health", s.api), None, &[], None)
        .map(|(c, _)| c)
        .unwrap_or(0)
}

/// How many of `pid`'s descriptors are TCP sockets whose local port is `port` (the accepted
/// connections of a listener on it, plus the listener itself), from /proc.
fn api_sockets(pid: u32, port: u16) -> usize {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
    let port_hex = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.len() > 9
                && cols[1].ends_with(&port_hex)
                && cols[3] != "0A" // not the listener
                && inodes.contains(cols[9])
        })
        .count()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn api_idle_connections_time_out_and_are_capped_per_source() {
    let s = Server::start_with(
        "[api]\nheader_read_timeout_secs = 2\nmax_connections_per_source = 40\n",
    );
    let to = api_addr(&s);
    let mut held: Vec<TcpStream> = (0..60)
        .map(|_| {
            let mut c = connect_from([127, 0, 0, 2], to).unwrap();
            let _ = c.write_all(HALF_REQUEST);
            c
        })
        .collect();
    // Beyond the per-source cap, connections are closed as soon as they are accepted.
    let mut refused = 0;
    for c in held.iter_mut().skip(40) {
        if closed_within(c, Duration::from_secs(2)) {
            refused += 1;
        }
    }
    assert_eq!(
        refused, 20,
        "the 20 connections over the cap of 40 are closed at once"
    );
    // Another source address is not affected.
    assert_eq!(health(&s), 200, "the API answers other addresses");
    // The 40 admitted ones are closed by the header-read timeout (2 s; bound 5x).
    let start = Instant::now();
    for c in held.iter_mut().take(40) {
        assert!(
            closed_within(c, Duration::from_secs(10)),
            "an unfinished request head is closed after header_read_timeout"
        );
    }
    assert!(start.elapsed() < Duration::from_secs(12));
    // An idle keep-alive connection (nothing sent) is closed too.
    let mut idle = connect_from([127, 0, 0, 3], to).unwrap();
    assert!(
        closed_within(&mut idle, Duration::from_secs(10)),
        "idle connections close"
    );
}

#[test]
fn api_connection_cap_per_listener_keeps_fds_bounded() {
    let s = Server::start_with("[api]\nmax_connections = 50\n");
    let to = api_addr(&s);
    let pid = s.pid().unwrap();
    let mut held: Vec<TcpStream> = (0..120u8)
        .map(|i| {
            let mut c = connect_from([127, 0, 1, i % 100 + 1], to).unwrap();
            let _ = c.write_all(HALF_REQUEST);
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // Counted exactly (the server's own sockets on the API port), not as a difference of
    // fd counts: the server opens other descriptors while it settles (regression: CI saw
    // 61 more fds, most of them not API connections).
    let during = api_sockets(pid, to.port());
    assert!(
        during <= 50,
        "at most max_connections API sockets are held: {during}"
    );
    let closed = held
        .iter_mut()
        .filter_map(|c| closed_within(c, Duration::from_millis(300)).then_some(()))
        .count();
    assert!(
        closed >= 60,
        "connections over the listener's cap are closed: {closed}"
    );
}

#[test]
fn every_error_answer_is_json_including_bad_query_strings_and_405() {
    let s = Server::start();
    let cases = [
        ("GET", "/api/v1/status?project=", 400),
        ("GET", "/api/v1/services/web/logs?tail=many", 400),
        ("PUT", "/api/v1/status", 405),
        ("GET", "/api/v1/deploy", 405),
        ("GET", "/api/v1/nope", 404),
    ];
    for (method, path, want) in cases {
        let (code, body) =
            http_raw(method, &format!("{}{path}", s.api), Some(ADMIN), &[], None).unwrap();
        if path.contains("project=") && code == 200 {
            continue; // an empty project filter may be valid; the others must not be.
        }
        assert_eq!(code, want, "{method} {path}: {body}");
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{method} {path}: body is not JSON ({e}): {body:?}"));
        assert!(
            v["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{method} {path}: {body}"
        );
    }
}

#[test]
fn authorization_scheme_is_case_insensitive() {
    let s = Server::start();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} {VIEWER}");
        let (code, body) = http_raw(
            "GET",
            &format!("{}/api/v1/status", s.api),
            None,
            &[("Authorization", &auth)],
            None,
        )
        .unwrap();
        assert_eq!(code, 200, "{scheme}: {body}");
    }
    let (code, _) = http_raw(
        "GET",
        &format!("{}/api/v1/status", s.api),
        None,
        &[("Authorization", &format!("Basic {VIEWER}"))],
        None,
    )
    .unwrap();
    assert_eq!(code, 401, "another scheme is not a bearer token");
}

#[test]
fn token_revoke_and_rotate_take_effect_immediately() {
    let s = Server::start();
    let created = s.cli(&["token", "create", "--name", "bot", "--role", "viewer"]);
    let value = created.trim().to_string();
    let status_with = |token: &str| {
        http_raw(
            "GET",
            &format!("{}/api/v1/status", s.api),
            Some(token),
            &[],
            None,
        )
        .unwrap()
        .0
    };
    assert_eq!(status_with(&value), 200);

    let rotated = s.cli(&["token", "rotate", "bot"]).trim().to_string();
    assert_ne!(rotated, value);
    assert_eq!(status_with(&value), 401, "the old value fails at once");
    assert_eq!(status_with(&rotated), 200, "the new value works");

    let out = s.cli(&["token", "revoke", "bot"]);
    assert!(out.contains("revoked"), "{out}");
    assert_eq!(status_with(&rotated), 401, "a revoked token fails at once");
    let listed = s.cli(&["token", "list"]);
    assert!(!listed.contains("bot"), "{listed}");

    // Unknown and cluster.toml tokens: clear errors, nothing changes.
    let out = s.cli_in(ADMIN, None, &["token", "revoke", "nosuch"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token named"));
    let out = s.cli_in(ADMIN, None, &["token", "revoke", "ci"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cluster.toml"));
    assert_eq!(status_with(DEPLOYER), 200);
    // Only admins revoke.
    let (code, _) = http_raw(
        "DELETE",
        &format!("{}/api/v1/tokens/root", s.api),
        Some(DEPLOYER),
        &[],
        None,
    )
    .unwrap();
    assert_eq!(code, 403);
}

#[test]
fn bootstrap_admin_token_can_be_rotated_and_credentials_follow() {
    let home = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    let cluster = unique("t");
    std::fs::write(
        config.path().join("cluster.toml"),
        format!("[cluster]\nname = \"{cluster}\"\n"),
    )
    .unwrap();
    let port = |_: ()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let api = format!("127.0.0.1:{}", port(()));
    struct Kill(std::process::Child, String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            remove_cluster_containers(&self.1);
        }
    }
    let server = Command::new(env!("CARGO_BIN_EXE_orca"))
        .arg("server")
        .env("ORCA_HOME", home.path())
        .env("ORCA_CONFIG_DIR", config.path())
        .env("ORCA_API_ADDR", &api)
        .env("ORCA_HTTP_ADDR", format!("127.0.0.1:{}", port(())))
        .env("ORCA_HTTPS_ADDR", format!("127.0.0.1:{}", port(())))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _server = Kill(server, cluster.clone());
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_orca"))
            .args(args)
            .env("ORCA_HOME", home.path())
            .env_remove("ORCA_TOKEN")
            .env_remove("ORCA_API")
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cli(&["status"]).status.success() {
        assert!(Instant::now() < deadline, "bootstrap server not up");
        std::thread::sleep(Duration::from_millis(200));
    }
    let creds = home.path().join("credentials");
    let before = std::fs::read_to_string(&creds).unwrap();
    let old = before
        .lines()
        .find_map(|l| l.strip_prefix("token = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    let out = cli(&["token", "rotate", "admin"]);
    {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let new = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let after = std::fs::read_to_string(&creds).unwrap();
        assert!(
            after.contains(&new) && !after.contains(&old),
            "credentials updated"
        );
        assert_eq!(
            std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            cli(&["status"]).status.success(),
            "the CLI works with the new token"
        );
        let (code, _) = http_raw(
            "GET",
            &format!("http://{api}/api/v1/status"),
            Some(&old),
            &[],
            None,
        )
        .unwrap();
        assert_eq!(code, 401, "the old bootstrap token fails");
    }
}

#[test]
fn token_create_with_an_unknown_role_lists_the_roles() {
    let s = Server::start();
    let out = s.cli_in(
        ADMIN,
        None,
        &["token", "create", "--name", "x", "--role", "superuser"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("superuser") && err.contains("admin, deployer, viewer"),
        "{err}"
    );
    assert!(!err.contains("invalid JSON body"), "{err}");
}

#[test]
fn cli_piped_into_a_closed_reader_exits_quietly() {
    let s = Server::start();
    for args in [
        &["status"][..],
        &["completions", "bash"],
        &["token", "list"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_orca"))
            .args(args)
            .env("ORCA_API", &s.api)
            .env("ORCA_TOKEN", ADMIN)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Like `| head` having exited: the reading end is gone before orca writes.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "orca {args:?} on a broken pipe: {err}"
        );
    }
}

#[test]
fn state_files_are_private_even_when_orca_home_exists() {
    let mut s = Server::start();
    s.kill9();
    let home = s.home();
    // As if made by hand (or by an older orca) with a permissive umask.
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        home.join("cluster.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    s.spawn();
    // A deploy makes the server write more state (plugin cache, revisions).
    s.write_service("p", &testapp_service("web", 1, "priv.test", ""));
    s.cli(&["deploy", "--no-wait"]);
    fn walk(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, u32, bool)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            out.push((e.path(), meta.permissions().mode() & 0o777, meta.is_dir()));
            if meta.is_dir() {
                walk(&e.path(), out);
            }
        }
    }
    let mut entries = vec![(
        home.clone(),
        std::fs::metadata(&home).unwrap().permissions().mode() & 0o777,
        true,
    )];
    walk(&home, &mut entries);
    for (path, mode, dir) in entries {
        assert_eq!(
            mode & 0o077,
            0,
            "{} ({}) has mode {mode:o}: state is private",
            path.display(),
            if dir { "dir" } else { "file" }
        );
    }
}

#[test]
fn orca_server_on_a_store_that_cannot_be_opened_says_so_plainly() {
    let home = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("cluster.toml"),
        format!("[cluster]\nname = \"{}\"\n", unique("t")),
    )
    .unwrap();
    // A truncated database: the first bytes of a real one would do; garbage is the same.
    std::fs::write(
        home.path().join("cluster.db"),
        b"redb\x1a\x0a\xa9\x0d\x0a-truncated",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_orca"))
        .arg("server")
        .env("ORCA_HOME", home.path())
        .env("ORCA_CONFIG_DIR", config.path())
        .env("ORCA_API_ADDR", "127.0.0.1:0")
        .env("ORCA_HTTP_ADDR", "127.0.0.1:0")
        .env("ORCA_HTTPS_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be opened"), "{err}");
    assert!(err.contains("cluster.db"), "{err}");
    assert!(
        !err.contains("another orca server"),
        "not blamed on a lock: {err}"
    );
}

#[test]
fn deploy_input_is_validated_env_control_chars_image_references_duplicate_keys() {
    let s = Server::start();
    let img = testapp_image();
    let deploy = |body: String| {
        http_raw(
            "POST",
            &format!("{}/api/v1/deploy", s.api),
            Some(ADMIN),
            &[],
            Some(body.as_bytes()),
        )
        .unwrap()
    };
    let before = s.status()["services"].clone();
    for (body, want) in [
        (
            format!(
                r#"{{"services":[{{"project":"p","name":"a","image":"{img}","env":{{"K":"x\u0000y"}}}}]}}"#
            ),
            "control character",
        ),
        (
            format!(
                r#"{{"services":[{{"project":"p","name":"a","image":"{img}","env":{{"K":"line\nbreak"}}}}]}}"#
            ),
            "control character",
        ),
        (
            r#"{"services":[{"project":"p","name":"a","image":"$(id)"}]}"#.to_string(),
            "invalid image",
        ),
        (
            r#"{"services":[{"project":"p","name":"a","image":"-v"}]}"#.to_string(),
            "invalid image",
        ),
        (
            r#"{"services":[{"project":"p","name":"a","image":"../../etc/passwd"}]}"#.to_string(),
            "invalid image",
        ),
        (
            format!(
                r#"{{"services":[{{"project":"p","name":"a","image":"{img}","env":{{"K":"1","K":"2"}}}}]}}"#
            ),
            "duplicate key `K`",
        ),
        (
            format!(r#"{{"services":[{{"project":"p","name":"a","name":"b","image":"{img}"}}]}}"#),
            "duplicate key `name`",
        ),
    ] {
        let (code, answer) = deploy(body.clone());
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(answer.contains(want), "{body}: {answer}");
    }
    // A tab is allowed.
    let (code, answer) = deploy(format!(
        r#"{{"services":[{{"project":"p","name":"tab","image":"{img}","replicas":0,"env":{{"K":"a\tb"}}}}]}}"#
    ));
    assert_eq!(code, 200, "{answer}");
    let after: Vec<Value> = s.status()["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["name"] != "tab")
        .cloned()
        .collect();
    assert_eq!(
        Value::Array(after),
        before,
        "refused deploys change nothing"
    );
    assert!(!s.log().contains('\0'), "no raw NUL reaches the server log");
}

/// Holds `n` unfinished requests against `to`, spread over source addresses 127.0.<net>.x
/// (200 per address, under the API's per-source cap of 512).
fn hold_idle(n: usize, net: u8, to: SocketAddr) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|i| {
            let from = [127, 0, net, (i / 200) as u8 + 1];
            let mut c = connect_from(from, to).ok()?;
            let _ = c.write_all(HALF_REQUEST);
            Some(c)
        })
        .collect()
}

#[test]
fn soak_1000_idle_sockets_each_against_api_and_proxy_while_deploying_scaling_requesting() {
    // The test process holds 2,000 sockets plus its own: raise its own fd limit.
    orca::process::raise_fd_limit().unwrap();
    let s = Server::start();
    let pid = s.pid().unwrap();
    let project = unique("soak");
    let host = format!("{project}.test");
    s.write_service(&project, &testapp_service("web", 2, &host, ""));
    s.cli(&["deploy"]);
    assert_eq!(s.proxy_get(&host, "/").unwrap().0, 200);
    std::thread::sleep(Duration::from_secs(1));
    let baseline = open_fds(pid);

    let api_idle = hold_idle(1000, 10, api_addr(&s));
    let proxy_idle = hold_idle(1000, 11, s.http);
    assert_eq!(api_idle.len(), 1000, "the test opened its API sockets");
    assert_eq!(proxy_idle.len(), 1000, "the test opened its proxy sockets");

    let mut requests = 0;
    let mut failures = Vec::new();
    let mut get = |what: &str, failures: &mut Vec<String>| {
        requests += 1;
        match s.proxy_get(&host, "/") {
            Ok((200, _)) => {}
            other => failures.push(format!("{what}: {other:?}")),
        }
    };
    for round in 0..3u32 {
        for _ in 0..20 {
            get("request", &mut failures);
        }
        let n = (3 + round).to_string();
        s.cli(&["scale", "web", &n]);
        s.wait_service(&project, "web", "scaled", |v| {
            v["ready_replicas"].as_u64() == Some(3 + u64::from(round))
        });
        for _ in 0..20 {
            get("request after scale", &mut failures);
        }
        // A changed spec: a rollout while the idle sockets are held.
        s.write_service(
            &project,
            &testapp_service(
                "web",
                2,
                &host,
                &format!("[service.env]\nROUND = \"{round}\"\n"),
            ),
        );
        s.cli(&["deploy"]);
        for _ in 0..20 {
            get("request after deploy", &mut failures);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed: {failures:?}",
        failures.len()
    );

    drop(api_idle);
    drop(proxy_idle);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = open_fds(pid);
        if now <= baseline + 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server's open fds return to baseline: baseline {baseline}, now {now}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn idle_api_sockets_never_take_the_proxys_file_descriptors() {
    orca::process::raise_fd_limit().unwrap();
    // `ulimit -n 256` as in the report: 300 unauthenticated idle sockets used to stop both
    // the API and the proxy (`accept failed error=Too many open files`).
    let s = Server::start_under("", &["prlimit", "--nofile=256:256"]);
    let project = unique("fd");
    let host = format!("{project}.test");
    s.write_service(&project, &testapp_service("web", 1, &host, ""));
    s.cli(&["deploy"]);
    let held = hold_idle(300, 12, api_addr(&s));
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..50 {
        let answer = s.proxy_get(&host, "/");
        assert!(
            matches!(answer, Ok((200, _))),
            "request {i} through the proxy while the API is flooded: {answer:?}\n{}",
            tail(&s.log(), 20)
        );
    }
    assert!(
        !s.log().contains("Too many open files"),
        "the process never ran out of descriptors:\n{}",
        tail(&s.log(), 20)
    );
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    while health(&s) != 200 {
        assert!(
            Instant::now() < deadline,
            "the API answers again once the flood ends"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn running_ids(cluster: &str) -> Vec<String> {
    containers(cluster)
        .into_iter()
        .filter(|c| c.2 == "running")
        .map(|c| c.0)
        .collect()
}

#[test]
fn two_servers_with_the_same_cluster_name_never_remove_each_others_containers() {
    // Two servers with default settings share the name `orca`; a name of this test's own
    // stands in for it so no other cluster on this engine is involved.
    let name = unique("same");
    let a = Server::start_named(&name);
    let mut b = Server::start_named(&name);
    b.cleanup = false;
    let (pa, pb) = (unique("pa"), unique("pb"));
    a.write_service(&pa, &testapp_service("web", 2, &format!("{pa}.test"), ""));
    a.cli(&["deploy"]);
    b.write_service(&pb, &testapp_service("web", 1, &format!("{pb}.test"), ""));
    b.cli(&["deploy"]);
    let all = running_ids(&name);
    assert_eq!(all.len(), 3, "both servers' containers run side by side");
    // Several controller passes (watchdog, events of the other's containers).
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        running_ids(&name),
        all,
        "neither server removed the other's containers"
    );
    for (s, other) in [(&a, &pb), (&b, &pa)] {
        assert!(
            !s.log().contains("orphan"),
            "no orphan removals:\n{}",
            tail(&s.log(), 30)
        );
        let status = s.status().to_string();
        assert!(
            !status.contains(other.as_str()),
            "status shows only its own services"
        );
    }
    assert_eq!(a.proxy_get(&format!("{pa}.test"), "/").unwrap().0, 200);
    assert_eq!(b.proxy_get(&format!("{pb}.test"), "/").unwrap().0, 200);
    // `stop --all` on one leaves the other's containers.
    b.cli(&["stop", "--all"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while running_ids(&name).len() != 2 {
        assert!(Instant::now() < deadline, "b stops only its own");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(running_ids(&name).len(), 2, "a's containers still run");
    drop(b);

    // A third server of that name, started while a's containers exist, is refused clearly.
    match Server::try_start_named(&name) {
        Ok(_) => {
            panic!("a server whose name matches another cluster id's containers must be refused")
        }
        Err(refused) => {
            let (mut refused, log) = *refused;
            refused.cleanup = false;
            assert!(log.contains("already used on this Docker Engine"), "{log}");
            assert!(log.contains("cluster.toml"), "{log}");
        }
    }
    assert_eq!(
        running_ids(&name).len(),
        2,
        "the refused server touched nothing"
    );
}

#[test]
fn networks_belong_to_one_cluster_and_another_clusters_is_never_joined() {
    let s = Server::start();
    let project = unique("net");
    let network = format!("orca-{}.{project}", s.cluster);
    // Another cluster's project network of the same name (as its server would make it).
    let made = Command::new("docker")
        .args([
            "network",
            "create",
            "--label",
            &format!("orca.cluster={}", s.cluster),
            "--label",
            "orca.cluster.id=0123456789abcdef",
            &network,
        ])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    struct RmNet(String);
    impl Drop for RmNet {
        fn drop(&mut self) {
            let _ = Command::new("docker")
                .args(["network", "rm", &self.0])
                .output();
        }
    }
    let _net = RmNet(network.clone());
    s.write_service(
        &project,
        &testapp_service("web", 1, &format!("{project}.test"), ""),
    );
    s.cli(&["deploy", "--no-wait"]);
    let web = s.wait_service(&project, "web", "refused", |v| {
        v.to_string().contains("belongs to another cluster")
    });
    assert!(web.to_string().contains(&network), "{web}");
    assert!(
        containers(&s.cluster).is_empty(),
        "no container joined the other cluster's network"
    );
}

#[test]
fn one_corrupt_record_affects_only_its_own_service() {
    let mut s = Server::start();
    let (pa, pb) = (unique("ok"), unique("bad"));
    let (ha, hb) = (format!("{pa}.test"), format!("{pb}.test"));
    s.write_service(&pa, &testapp_service("web", 1, &ha, ""));
    s.cli(&["deploy"]);
    s.write_service(&pb, &testapp_service("web", 1, &hb, ""));
    s.cli(&["deploy"]);
    s.kill9();
    {
        let store = orca_store::Store::open(&s.home().join("cluster.db")).unwrap();
        let key = format!("{pb}/web/{:020}", 1);
        store
            .write_raw_for_tests("revisions", &key, b"\x8f\x00random garbage\xff")
            .unwrap();
        store
            .write_raw_for_tests("services", &format!("{pb}/ghost"), b"{not json")
            .unwrap();
    }
    s.spawn();
    // Status answers (not 500), names the broken records, and the other service converges.
    let bad = s.wait_service(&pb, "web", "reported", |v| {
        v["error"].as_str().is_some_and(|e| e.contains("revisions"))
    });
    let err = bad["error"].as_str().unwrap();
    assert!(
        err.contains(&format!("{pb}/web/")),
        "the error names the key: {err}"
    );
    let status = s.status();
    let broken = status["broken_records"].to_string();
    assert!(
        broken.contains("services") && broken.contains(&format!("{pb}/ghost")),
        "{broken}"
    );
    assert!(broken.contains("revisions"), "{broken}");
    let (code, body) =
        http_raw("GET", &format!("{}/api/v1/health", s.api), None, &[], None).unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("degraded"), "{body}");
    assert!(
        s.log().contains("corrupt store record"),
        "a log line names the record"
    );
    // The healthy service keeps being routed and converged.
    s.wait_service(&pa, "web", "ready", |v| v["ready_replicas"] == 1);
    assert_eq!(
        s.proxy_get(&ha, "/").unwrap().0,
        200,
        "the other service is routed"
    );
    s.cli(&["scale", "web", "2", "--project", &pa]);
    s.wait_service(&pa, "web", "scaled", |v| v["ready_replicas"] == 2);
    // The broken service's running instance is kept, not torn down.
    assert_eq!(
        s.proxy_get(&hb, "/").unwrap().0,
        200,
        "its running instance keeps serving"
    );
}

#[test]
fn every_example_in_services_is_deployed_and_becomes_ready() {
    let s = Server::start();
    testapp_image();
    let examples = workspace().join("services");
    let mut projects = Vec::new();
    for entry in std::fs::read_dir(&examples).unwrap() {
        let dir = entry.unwrap().path();
        let file = dir.join("service.toml");
        if !file.exists() {
            continue;
        }
        let project = dir.file_name().unwrap().to_string_lossy().to_string();
        s.write_service(&project, &std::fs::read_to_string(&file).unwrap());
        projects.push(project);
    }
    assert!(
        projects.len() >= 2,
        "services/ holds the examples: {projects:?}"
    );
    // What the shop example's comment says to run first.
    s.cli(&[
        "secrets",
        "set",
        "DB_PASSWORD",
        "example-password",
        "--project",
        "shop",
    ]);
    for project in &projects {
        let dir = s.config_dir().join("services").join(project);
        let out = s.cli_in(ADMIN, Some(&dir), &["deploy"]);
        assert!(
            out.status.success(),
            "deploying services/{project}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            tail(&s.log(), 30)
        );
    }
    let status = s.status();
    let services = status["services"].as_array().unwrap().clone();
    assert!(services.len() >= 3, "{status:#}");
    for svc in services {
        let (project, name) = (
            svc["project"].as_str().unwrap(),
            svc["name"].as_str().unwrap(),
        );
        let replicas = svc["replicas"].as_u64().unwrap();
        s.wait_service(project, name, "ready", |v| {
            v["ready_replicas"].as_u64() == Some(replicas) && v["status"] == "running"
        });
    }
}

#[test]
fn deploy_says_when_it_resets_a_replica_count_changed_by_scale() {
    let s = Server::start();
    let project = unique("sc");
    s.write_service(
        &project,
        &testapp_service("web", 1, &format!("{project}.test"), ""),
    );
    let dir = s.config_dir().join("services").join(&project);
    let deploy = || {
        let out = s.cli_in(ADMIN, Some(&dir), &["deploy", "--no-wait"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let first = deploy();
    assert!(!first.contains("replicas reset"), "{first}");
    s.cli(&["scale", "web", "3", "--project", &project]);
    let again = deploy();
    assert!(
        again.contains("replicas reset from 3 (set by `orca scale`) to 1"),
        "{again}"
    );
    let third = deploy();
    assert!(
        !third.contains("replicas reset"),
        "said once, when it happens: {third}"
    );
}

/// Names of the Docker networks labelled with a cluster's name.
fn cluster_networks(cluster: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "network",
            "ls",
            "--filter",
            &format!("label=orca.cluster={cluster}"),
            "--format",
            "{{.Name}}",
        ])
        .output()
        .unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// `docker inspect` of one object, as JSON.
fn inspect(id: &str) -> Value {
    let out = Command::new("docker")
        .args(["inspect", id])
        .output()
        .unwrap();
    serde_json::from_slice::<Value>(&out.stdout).unwrap()[0].clone()
}

#[test]
fn clusters_never_share_docker_networks_nor_resolve_each_others_aliases() {
    let a = Server::start();
    let b = Server::start();
    // The same project name in both clusters, on one engine.
    let project = unique("shared");
    let img = testapp_image();
    // In a: a database with an alias, and a web that waits for it by that alias (so its
    // becoming ready proves aliases resolve within a cluster).
    a.write_service(
        &project,
        &format!(
            "[[service]]\nname = \"db\"\nimage = \"{img}\"\nport = 8080\naliases = [\"only-in-a\"]\n\n\
             [[service]]\nname = \"web\"\nimage = \"{img}\"\nport = 8080\n\n\
             [service.env]\nDEPENDS_ON = \"only-in-a:8080\"\n"
        ),
    );
    a.cli(&["deploy"]);
    a.wait_service(&project, "web", "ready (resolved only-in-a)", |v| {
        v["ready_replicas"] == 1
    });
    // In b: the same web, whose dependency exists only in a.
    b.write_service(
        &project,
        &format!(
            "[[service]]\nname = \"web\"\nimage = \"{img}\"\nport = 8080\n\n\
             [service.env]\nDEPENDS_ON = \"only-in-a:8080\"\n"
        ),
    );
    b.cli(&["deploy", "--no-wait"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let b_web = loop {
        if let Some(c) = containers(&b.cluster)
            .into_iter()
            .find(|c| c.2 == "running")
        {
            break c.0;
        }
        assert!(
            Instant::now() < deadline,
            "b's web never started:\n{}",
            tail(&b.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Each cluster's containers are on its own network, labelled with its own id.
    let nets_of = |id: &str| -> Vec<String> {
        inspect(id)["NetworkSettings"]["Networks"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    let net_a = format!("orca-{}.{project}", a.cluster);
    let net_b = format!("orca-{}.{project}", b.cluster);
    for (id, _, _) in containers(&a.cluster) {
        assert_eq!(nets_of(&id), vec![net_a.clone()]);
    }
    assert_eq!(nets_of(&b_web), vec![net_b.clone()]);
    let id_label = |net: &str| inspect(net)["Labels"]["orca.cluster.id"].clone();
    assert!(id_label(&net_a).is_string() && id_label(&net_b).is_string());
    assert_ne!(
        id_label(&net_a),
        id_label(&net_b),
        "each network carries its cluster's id"
    );
    // b's web cannot resolve a's alias: it keeps logging that, and never becomes ready.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let logs = b.cli(&["logs", "web", "--tail", "50"]);
        assert!(
            !logs.contains("is up"),
            "b's container reached a's alias:\n{logs}"
        );
        if logs
            .matches("cannot connect to dependency only-in-a:8080")
            .count()
            >= 3
        {
            break;
        }
        assert!(Instant::now() < deadline, "{logs}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(b.service(&project, "web")["ready_replicas"], 0);
}

#[test]
fn stop_all_leaves_no_network_of_the_cluster_behind() {
    let s = Server::start();
    let (p1, p2) = (unique("na"), unique("nb"));
    let img = testapp_image();
    s.write_service(
        &p1,
        &format!(
            "[[service]]\nname = \"db\"\nimage = \"{img}\"\nport = 8080\ninternal = true\n\n\
             [[service]]\nname = \"web\"\nimage = \"{img}\"\nport = 8080\n"
        ),
    );
    s.write_service(&p2, &testapp_service("web", 2, &format!("{p2}.test"), ""));
    s.cli(&["deploy"]);
    let (n1, n2, internal) = (
        format!("orca-{}.{p1}", s.cluster),
        format!("orca-{}.{p2}", s.cluster),
        format!("orca-{}_internal", s.cluster),
    );
    let mut all = vec![n1.clone(), n2.clone(), internal.clone()];
    all.sort();
    assert_eq!(cluster_networks(&s.cluster), all);
    let wait_networks = |want: &[String], what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = cluster_networks(&s.cluster);
            if now == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: networks {now:?}, want {want:?}\n{}",
                tail(&s.log(), 30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // Stopping one project removes its network once its containers are gone, only its.
    s.cli(&["stop", "--project", &p2]);
    let mut left = vec![n1.clone(), internal.clone()];
    left.sort();
    wait_networks(&left, "after stopping one project");
    assert!(containers(&s.cluster).len() == 2);
    // `stop --all`: nothing of this cluster is left on the engine.
    s.cli(&["stop", "--all"]);
    wait_networks(&[], "after stop --all");
    assert!(containers(&s.cluster).is_empty());
    // A later deploy makes the network again.
    let dir = s.config_dir().join("services").join(&p2);
    let out = s.cli_in(ADMIN, Some(&dir), &["deploy"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(cluster_networks(&s.cluster), vec![n2]);
    assert_eq!(s.proxy_get(&format!("{p2}.test"), "/").unwrap().0, 200);
}

#[test]
fn orca_logs_json_output_order_within_an_instance_tail_per_instance_and_stderr_prefix() {
    let s = Server::start();
    let project = unique("lg");
    let host = format!("{project}.test");
    s.write_service(
        &project,
        &testapp_service("web", 2, &host, "[service.env]\nLOG_REQUESTS = \"1\"\n"),
    );
    s.cli(&["deploy"]);
    // Numbered requests, one after another: each instance logs its share in order.
    for n in 0..40 {
        let (code, _) = s.proxy_get(&host, &format!("/?seq={n}")).unwrap();
        assert_eq!(code, 200);
    }
    // The engine's log files may lag the responses by a moment on a loaded machine: read
    // until every numbered line is there (bounded), then check order and shape.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (json, seqs, instances_in_order, saw_stderr) = loop {
        let json = s.cli(&["logs", "web", "--tail", "1000", "--output", "json"]);
        let mut seqs: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
        let mut instances_in_order = Vec::new();
        let mut saw_stderr = false;
        for line in json.lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\nin:\n{json}"));
            let instance = v["instance"].as_str().unwrap().to_string();
            assert!(instance == "web.0" || instance == "web.1", "{v}");
            assert!(v["time"].as_str().is_some_and(|t| t.contains('T')), "{v}");
            let text = v["text"].as_str().unwrap();
            assert!(!text.starts_with('!') && !text.starts_with('['), "{v}");
            match v["stream"].as_str().unwrap() {
                "stderr" => {
                    saw_stderr |= text == "orca-testapp: ready";
                }
                "stdout" => {}
                other => panic!("stream {other}"),
            }
            if instances_in_order.last() != Some(&instance) {
                instances_in_order.push(instance.clone());
            }
            if let Some(n) = text.strip_prefix("GET /?seq=") {
                seqs.entry(instance).or_default().push(n.parse().unwrap());
            }
        }
        let total: usize = seqs.values().map(Vec::len).sum();
        if total >= 40 || Instant::now() > deadline {
            break (json, seqs, instances_in_order, saw_stderr);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(saw_stderr, "the ready line is on stderr:\n{json}");
    assert_eq!(
        instances_in_order,
        ["web.0", "web.1"],
        "without --follow, instance after instance in slot order:\n{json}"
    );
    let total: usize = seqs.values().map(Vec::len).sum();
    assert_eq!(total, 40, "{seqs:?}");
    for (instance, ns) in &seqs {
        let mut sorted = ns.clone();
        sorted.sort();
        assert_eq!(ns, &sorted, "{instance}'s lines are in order");
    }

    // Text: stderr lines carry `!` after the prefix; --tail is per instance.
    let text = s.cli(&["logs", "web", "--tail", "1000"]);
    assert!(text.contains("[web.0] !orca-testapp: ready"), "{text}");
    assert!(text.contains("[web.1] GET /?seq="), "{text}");
    let two = s.cli(&["logs", "web", "--tail", "2"]);
    let lines: Vec<&str> = two.lines().collect();
    assert_eq!(lines.len(), 4, "2 lines of each of 2 instances:\n{two}");
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("[web.0] ")).count(),
        2
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("[web.1] ")).count(),
        2
    );
    let one_json = s.cli(&["logs", "web", "--tail", "1", "--output", "json"]);
    assert_eq!(one_json.lines().count(), 2, "{one_json}");

    // Both are documented where a user looks.
    let help = s.cli(&["logs", "--help"]);
    assert!(help.contains("per instance, not in total"), "{help}");
    assert!(help.contains("stderr") && help.contains('!'), "{help}");
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    assert!(readme.contains("per instance"), "README documents --tail");
    assert!(readme.contains("`!`"), "README documents the stderr prefix");
}

/// GET an API path as admin: (status, body).
fn api_get(s: &Server, path: &str) -> (u16, String) {
    http_raw("GET", &format!("{}{path}", s.api), Some(ADMIN), &[], None).unwrap()
}

#[test]
fn a_canary_secret_is_found_nowhere_but_the_containers_environment() {
    use hmac::Mac;
    let s = Server::start();
    let canary = format!("canary-{}-5e3c7a91d2b84f06", unique("k"));
    let project = unique("cs");
    let host = format!("{project}.test");
    let img = testapp_image();

    // A git repository whose Dockerfile packs the test app.
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("app-repo");
    std::fs::create_dir_all(repo.join("bin")).unwrap();
    std::fs::copy(
        workspace().join("target/testapp/x86_64-unknown-linux-gnu/release/orca-testapp"),
        repo.join("bin/testapp"),
    )
    .unwrap();
    git(&repo, &["init", "--quiet", "-b", "main"]);
    let commit = |version: &str| {
        std::fs::write(
            repo.join("Dockerfile"),
            format!(
                "FROM scratch\nCOPY bin/testapp /testapp\nENV VERSION={version}\nEXPOSE 8080\nENTRYPOINT [\"/testapp\"]\n"
            ),
        )
        .unwrap();
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "--quiet", "-m", version]);
        git(&repo, &["rev-parse", "HEAD"])
    };
    commit("v1");

    // The secret, used by a plain service's env, a git-built service's env and a webhook.
    s.cli(&["secrets", "set", "CANARY", &canary, "--project", &project]);
    s.write_service(
        &project,
        &format!(
            "[[service]]\nname = \"web\"\nimage = \"{img}\"\nport = 8080\ndomain = \"{host}\"\nhealth = \"/healthz\"\n\n\
             [service.env]\nAPI_KEY = \"${{secrets.CANARY}}\"\nDSN = \"postgres://u:${{secrets.CANARY}}@db/x\"\n\n\
             [[service]]\nname = \"built\"\nport = 8080\nhealth = \"/healthz\"\n\n\
             [service.env]\nAPI_KEY = \"${{secrets.CANARY}}\"\n\n\
             [service.build]\nrepo = \"{}\"\nbranch = \"main\"\n",
            repo.display()
        ),
    );
    let mut outputs: Vec<(String, String)> = Vec::new();
    outputs.push(("deploy output".into(), s.cli(&["deploy"])));
    outputs.push((
        "webhooks add output".into(),
        s.cli(&[
            "webhooks",
            "add",
            "--repo",
            "acme/app",
            "--service",
            "built",
            "--branch",
            "main",
            "--secret",
            &canary,
        ]),
    ));
    // A push signed with the secret builds and redeploys `built`.
    let head2 = commit("v2");
    let body = String::from_utf8(
        std::fs::read(workspace().join("tests/fixtures/webhooks/github/push-branch.json")).unwrap(),
    )
    .unwrap()
    .replace("woodpecker-ci/woodpecker", "acme/app")
    .replace("366701fde727cb7a9e7f21eb88264f59f6f9b89c", &head2);
    let sign = |key: &str| {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    let deliver = |sig: &str, id: &str| {
        http_raw(
            "POST",
            &format!("{}/api/v1/webhooks/github", s.api),
            None,
            &[
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", id),
                ("X-Hub-Signature-256", sig),
            ],
            Some(body.as_bytes()),
        )
        .unwrap()
    };
    let (code, answer) = deliver(&sign(&canary), "canary-1");
    assert_eq!(code, 202, "{answer}");
    outputs.push(("delivery answer".into(), answer));
    s.wait_service(&project, "built", "rebuilt at the push", |v| {
        v["commit"] == head2.as_str() && v["status"] == "running" && v["ready_replicas"] == 1
    });
    assert_eq!(s.proxy_get(&host, "/").unwrap().0, 200);

    // Errors that carry the secret in their request.
    let errors: Vec<(&str, String, String)> = vec![
        (
            "PUT",
            "/api/v1/projects/nosuch/secrets/bad%20key".into(),
            format!("{{\"value\":\"{canary}\"}}"),
        ),
        (
            "PUT",
            format!("/api/v1/projects/{project}/secrets/OTHER"),
            format!("{{\"value\":\"{canary}\",\"x\":1}}"),
        ),
        (
            "POST",
            "/api/v1/webhooks".into(),
            format!("{{\"repo\":\"acme/app\",\"service\":\"built\",\"branch\":\"main\",\"secret\":\"{canary}\"}}"),
        ),
        (
            "POST",
            "/api/v1/webhooks".into(),
            format!("{{\"repo\":\"acme/app\",\"service\":\"nosuch\",\"branch\":\"main\",\"secret\":\"{canary}\"}}"),
        ),
        (
            "POST",
            "/api/v1/webhooks".into(),
            format!("{{\"repo\":\"a b\",\"service\":\"built\",\"branch\":\"main\",\"secret\":\"{canary}\"}}"),
        ),
    ];
    for (method, path, body) in &errors {
        let (code, answer) = http_raw(
            method,
            &format!("{}{path}", s.api),
            Some(ADMIN),
            &[],
            Some(body.as_bytes()),
        )
        .unwrap();
        assert!(code >= 400, "{method} {path} is an error: {code} {answer}");
        outputs.push((format!("error answer of {method} {path}"), answer));
    }
    let (code, answer) = deliver(&sign("not-the-secret"), "canary-2");
    assert_eq!(code, 401, "{answer}");
    outputs.push(("refused delivery".into(), answer));
    let (code, answer) = deliver(&sign(&canary), "canary-1");
    assert_eq!(code, 200, "a duplicate: {answer}");
    outputs.push(("duplicate delivery".into(), answer));

    // Every read the API has.
    for path in [
        "/api/v1/status".to_string(),
        format!("/api/v1/status?project={project}"),
        "/api/v1/webhooks".into(),
        format!("/api/v1/projects/{project}/secrets"),
        "/api/v1/tokens".into(),
        "/api/v1/events?limit=1000".into(),
        "/api/v1/notifications".into(),
        "/api/v1/cluster/info".into(),
        "/api/v1/plugins".into(),
        "/api/v1/whoami".into(),
        "/api/v1/health".into(),
        "/metrics".into(),
        format!("/api/v1/services/web/diagnosis?project={project}"),
        format!("/api/v1/services/built/diagnosis?project={project}"),
        format!("/api/v1/services/web/logs?project={project}&tail=1000"),
        format!("/api/v1/services/built/logs?project={project}&build=true"),
        format!("/api/v1/services/built/logs?project={project}&build=true&format=json"),
    ] {
        let (code, answer) = api_get(&s, &path);
        assert_eq!(code, 200, "{path}: {answer}");
        outputs.push((format!("GET {path}"), answer));
    }
    // The CLI's views, text and JSON.
    for args in [
        vec!["status"],
        vec!["--output", "json", "status"],
        vec!["webhooks"],
        vec!["--output", "json", "webhooks"],
        vec!["secrets", "list", "--project", &project],
        vec!["events"],
        vec!["logs", "built", "--build", "--project", &project],
        vec!["logs", "web", "--project", &project, "--output", "json"],
        vec!["doctor", "web", "--project", &project],
    ] {
        outputs.push((format!("orca {args:?}"), s.cli(&args)));
    }
    outputs.push(("server log".into(), s.log()));
    for (what, text) in &outputs {
        assert!(
            !text.contains(&canary),
            "the secret leaked into {what}:\n{text}"
        );
    }

    // Docker: everything about the containers but their environment.
    let mut envs = 0;
    for (id, _, _) in containers(&s.cluster) {
        let mut c = inspect(&id);
        if c.is_null() {
            // Removed between listing and inspecting (a drained instance of the first build).
            continue;
        }
        let env = c["Config"]["Env"].take();
        assert!(
            !c.to_string().contains(&canary),
            "the secret leaked into docker inspect (labels, ...) of {id}: {c:#}"
        );
        let env = env.to_string();
        assert!(env.contains(&format!("API_KEY={canary}")), "{env}");
        envs += 1;
    }
    // web's and built's (an instance of built's first build may still be draining).
    assert!(envs >= 2, "{envs} containers");
    for net in cluster_networks(&s.cluster) {
        assert!(
            !inspect(&net).to_string().contains(&canary),
            "network {net}"
        );
    }
    let built_image = s.service(&project, "built")["image"]
        .as_str()
        .unwrap()
        .to_string();
    let image = Command::new("docker")
        .args(["image", "inspect", &built_image])
        .output()
        .unwrap();
    assert!(image.status.success());
    assert!(
        !String::from_utf8_lossy(&image.stdout).contains(&canary),
        "the built image"
    );

    // The store file, byte for byte, and everything else under ORCA_HOME.
    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                files(&p, out);
            } else if p.is_file() {
                // Not the server's hand-over socket (`handover.sock`), which holds no bytes.
                out.push(p);
            }
        }
    }
    let mut all = Vec::new();
    files(&s.home(), &mut all);
    assert!(all.iter().any(|p| p.ends_with("cluster.db")), "{all:?}");
    for p in all {
        let bytes = std::fs::read(&p).unwrap();
        assert!(
            !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
            "the secret is stored in plaintext in {}",
            p.display()
        );
    }
}
