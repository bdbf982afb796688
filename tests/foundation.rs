//! End-to-end: `orca server` deploys real containers on the real Docker Engine, routes to
//! them through its proxy, scales, stops, survives SIGKILL, and replaces killed replicas.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// Distinct instances answering through the proxy over `n` requests.
fn instances_seen(s: &Server, host: &str, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let (code, body) = s.proxy_get(host, "/").expect("proxy request");
        assert_eq!(code, 200, "proxy answered {code}: {body}");
        let v: Value = serde_json::from_str(&body).expect("test app answers JSON");
        seen.insert(v["instance"].as_str().unwrap().to_string());
    }
    seen
}

fn ready(n: u64) -> impl Fn(&Value) -> bool {
    move |s: &Value| {
        s["ready_replicas"] == n && s["running_replicas"] == n && s["status"] == "running"
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
fn deploy_routes_to_every_replica_then_scales_and_stops() {
    let s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    s.write_service(&project, &testapp_service("web", 2, &host, ""));

    let out = s.cli(&["deploy"]);
    assert!(
        out.contains(&format!("{project}/web: revision 1 (changed)")),
        "{out}"
    );
    assert!(out.contains("all 1 service(s) running"), "{out}");

    let st: Value =
        serde_json::from_str(&s.cli(&["status", "--project", &project, "--output", "json"]))
            .unwrap();
    let web = &st["services"][0];
    assert_eq!(web["status"], "running", "{st:#}");
    assert_eq!(web["running_replicas"], 2);
    assert_eq!(web["instances"].as_array().unwrap().len(), 2);
    let text = s.cli(&["status"]);
    assert!(
        text.contains(&format!("{project}/web")) && text.contains("running"),
        "{text}"
    );

    assert_eq!(
        instances_seen(&s, &host, 20).len(),
        2,
        "both replicas receive requests"
    );

    // Same spec again: no container churn.
    let before = running_ids(&s.cluster);
    let out = s.cli(&["deploy"]);
    assert!(out.contains("revision 1 (unchanged)"), "{out}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        running_ids(&s.cluster),
        before,
        "an identical deploy changes no container"
    );

    s.cli(&["scale", "web", "4"]);
    s.wait_service(&project, "web", "4 ready", ready(4));
    assert_eq!(
        instances_seen(&s, &host, 40).len(),
        4,
        "the proxy follows scale-up"
    );
    let four = running_ids(&s.cluster);
    assert!(
        before.iter().all(|id| four.contains(id)),
        "scale-up keeps existing containers"
    );

    s.cli(&["scale", "web", "1"]);
    s.wait_service(&project, "web", "1 ready", ready(1));
    let deadline = Instant::now() + Duration::from_secs(30);
    while containers(&s.cluster).len() != 1 {
        assert!(
            Instant::now() < deadline,
            "scale-down leaves one container: {:?}",
            containers(&s.cluster)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        instances_seen(&s, &host, 10).len(),
        1,
        "the proxy follows scale-down"
    );

    // `orca stop` returns once the containers are drained and gone (regression: the
    // quick start's cleanup, `orca stop --all && kill SERVER`, left containers behind).
    let out = s.cli(&["stop", "web"]);
    assert!(out.contains("stopped (config kept)"), "{out}");
    assert!(
        containers(&s.cluster).is_empty(),
        "stop returns once every container is gone: {:?}",
        containers(&s.cluster)
    );
    let web = s.service(&project, "web");
    assert_eq!(web["status"], "stopped");
    assert_eq!(web["replicas"], 1, "config kept");
    let (code, body) = s.proxy_get(&host, "/").unwrap();
    assert_eq!(code, 404, "a stopped service is not routed: {body}");
}

#[test]
fn restart_adopts_containers_and_killed_replica_is_replaced() {
    let mut s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    s.write_service(&project, &testapp_service("api", 2, &host, ""));
    s.cli(&["deploy"]);
    let before = running_ids(&s.cluster);
    assert_eq!(before.len(), 2);

    // Crash: SIGKILL, then start again on the same state.
    s.kill9();
    assert_eq!(
        running_ids(&s.cluster),
        before,
        "containers outlive the server"
    );
    s.spawn();
    s.wait_service(&project, "api", "2 ready after restart", ready(2));
    // No duplicates at any moment of a window of several controller passes (a fixed sleep
    // then one look could miss a duplicate created and removed in between).
    let window = Instant::now() + Duration::from_secs(3);
    while Instant::now() < window {
        assert_eq!(
            containers(&s.cluster).len(),
            2,
            "no duplicates after restart"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        running_ids(&s.cluster),
        before,
        "the same containers are adopted"
    );
    assert_eq!(s.service(&project, "api")["revision"], 1, "config intact");
    assert_eq!(instances_seen(&s, &host, 20).len(), 2);

    // A replica dies: Docker's event stream brings a replacement into the routes quickly.
    let victim = before[0].clone();
    let started = Instant::now();
    docker_kill(&victim);
    loop {
        let svc = s.service(&project, "api");
        let ids: Vec<&str> = svc["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["ready"] == true)
            .map(|i| i["id"].as_str().unwrap())
            .collect();
        if ids.len() == 2 && !ids.iter().any(|id| victim.starts_with(id)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "replacement not ready in 15 s: {svc:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = started.elapsed();
    eprintln!("killed replica replaced and routed again in {took:?}");
    assert_eq!(
        instances_seen(&s, &host, 20).len(),
        2,
        "the replacement receives traffic"
    );
    assert!(!running_ids(&s.cluster).contains(&victim));

    // Graceful shutdown leaves containers running.
    let now = running_ids(&s.cluster);
    assert!(
        s.terminate(),
        "SIGTERM exits cleanly:\n{}",
        tail(&s.log(), 20)
    );
    assert_eq!(
        running_ids(&s.cluster),
        now,
        "SIGTERM leaves containers running"
    );
}

#[test]
fn missing_containers_are_recreated_after_restart() {
    let mut s = Server::start();
    let project = unique("p");
    s.write_service(
        &project,
        &testapp_service("job", 2, &format!("{project}.test"), ""),
    );
    s.cli(&["deploy"]);
    s.kill9();
    // While the server is down, one container disappears entirely.
    let ids = running_ids(&s.cluster);
    let st = std::process::Command::new("docker")
        .args(["rm", "-f", &ids[0]])
        .output()
        .unwrap();
    assert!(st.status.success());
    s.spawn();
    s.wait_service(&project, "job", "2 ready", ready(2));
    let now = running_ids(&s.cluster);
    assert_eq!(now.len(), 2);
    assert!(now.contains(&ids[1]), "the surviving container is adopted");
}

#[test]
fn secrets_are_injected_encrypted_at_rest_and_never_shown() {
    let s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    let dir = s.write_service(
        &project,
        &testapp_service("app", 1, &host, "[service.env]\nDB_URL = \"postgres://u:${secrets.DB_PASS}@db/x\"\nPLAIN = \"visible\"\n"),
    );
    let secret = "s3cret-value-Zq9";
    // Run inside the project directory: the project comes from the directory name.
    let out = s.cli_in(ADMIN, Some(&dir), &["secrets", "set", "DB_PASS", secret]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = s.cli(&["secrets", "list", "--project", &project]);
    assert_eq!(keys.trim(), "DB_PASS");
    s.cli(&["deploy"]);

    let (code, body) = s.proxy_get(&host, "/env/DB_URL").unwrap();
    assert_eq!(
        (code, body.as_str()),
        (200, format!("postgres://u:{secret}@db/x").as_str())
    );

    let status = s.cli(&["status", "--output", "json"]);
    let logs = s.cli(&["logs", "app", "--tail", "50"]);
    let tokens = s.cli(&["secrets", "list", "--project", &project, "--output", "json"]);
    for (what, text) in [
        ("status", status),
        ("logs", logs),
        ("secrets list", tokens),
        ("server log", s.log()),
    ] {
        assert!(
            !text.contains(secret),
            "the secret value leaked into {what}"
        );
    }
    let db = std::fs::read(s.home().join("cluster.db")).unwrap();
    assert!(
        !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the secret is stored in plaintext"
    );
    let key = std::fs::metadata(s.home().join("secret.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
}

#[test]
fn logs_metrics_and_stats_cover_every_replica() {
    let s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    s.write_service(&project, &testapp_service("chatty", 2, &host, ""));
    s.cli(&["deploy"]);
    for _ in 0..4 {
        s.proxy_get(&host, "/").unwrap();
    }
    let logs = s.cli(&["logs", "chatty", "--tail", "20"]);
    assert!(
        logs.contains("[chatty.0]") && logs.contains("[chatty.1]"),
        "{logs}"
    );

    // The stats loop (1 s in tests) samples every instance.
    s.wait_service(&project, "chatty", "sampled", |v| {
        v["instances"].as_array().is_some_and(|is| {
            is.len() == 2
                && is
                    .iter()
                    .all(|i| i["memory_bytes"].as_u64().is_some_and(|m| m > 0))
        })
    });
    let (code, metrics) = http_raw("GET", &format!("{}/metrics", s.api), None, &[], None).unwrap();
    assert_eq!(code, 200);
    let ready_line =
        format!("orca_instances{{service=\"chatty\",project=\"{project}\",status=\"ready\"}} 2");
    assert!(metrics.contains(&ready_line), "{metrics}");
    assert!(
        metrics.contains("orca_services 1") && metrics.contains("orca_nodes 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("orca_instance_memory_bytes{service=\"chatty\""),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "orca_proxy_requests_total{{service=\"{project}/chatty\",class=\"2xx\"}} 4"
        )),
        "{metrics}"
    );
}

#[test]
fn changed_spec_replaces_instances_start_first() {
    let s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    s.write_service(
        &project,
        &testapp_service("app", 2, &host, "[service.env]\nVERSION = \"v1\"\n"),
    );
    s.cli(&["deploy"]);
    let v1 = running_ids(&s.cluster);
    let (_, body) = s.proxy_get(&host, "/").unwrap();
    assert!(body.contains("\"version\":\"v1\""), "{body}");

    s.write_service(
        &project,
        &testapp_service("app", 2, &host, "[service.env]\nVERSION = \"v2\"\n"),
    );
    let out = s.cli(&["deploy"]);
    assert!(out.contains("revision 2 (changed)"), "{out}");
    // Old instances go only after the new ones are ready; then only v2 answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ids = running_ids(&s.cluster);
        if ids.len() == 2 && ids.iter().all(|id| !v1.contains(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "v1 not replaced: {:?}",
            containers(&s.cluster)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..10 {
        let (code, body) = s.proxy_get(&host, "/").unwrap();
        assert_eq!(code, 200);
        assert!(body.contains("\"version\":\"v2\""), "{body}");
    }
}

#[test]
fn projects_get_networks_aliases_and_the_internal_network() {
    let s = Server::start();
    let project = unique("p");
    s.write_service(
        &project,
        &format!(
            "[[service]]\nname = \"db\"\nimage = \"{img}\"\nport = 8080\ninternal = true\naliases = [\"database\"]\n\n\
             [[service]]\nname = \"web\"\nimage = \"{img}\"\nport = 8080\n",
            img = testapp_image()
        ),
    );
    s.cli(&["deploy"]);
    let inspect = |id: &str| -> Value {
        let out = std::process::Command::new("docker")
            .args(["inspect", id])
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap()[0].clone()
    };
    let net = format!("orca-{}.{project}", s.cluster);
    let internal = format!("orca-{}_internal", s.cluster);
    let mut saw = 0;
    for (id, name, _) in containers(&s.cluster) {
        let c = inspect(&id);
        let nets = &c["NetworkSettings"]["Networks"];
        let aliases: Vec<String> = nets[&net]["Aliases"]
            .as_array()
            .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        if name.contains("-db-") {
            assert!(
                aliases.contains(&"db".to_string()) && aliases.contains(&"database".to_string()),
                "{aliases:?}"
            );
            assert!(
                nets[&internal].is_object(),
                "internal service joins the cluster's internal network: {nets:#}"
            );
        } else {
            assert!(aliases.contains(&"web".to_string()), "{aliases:?}");
            assert!(
                nets[&internal].is_null(),
                "non-internal service stays off the internal network"
            );
        }
        // Never published on any host address.
        assert!(
            c["HostConfig"]["PortBindings"]
                .as_object()
                .is_none_or(|m| m.is_empty()),
            "{:#}",
            c["HostConfig"]["PortBindings"]
        );
        assert_eq!(c["HostConfig"]["RestartPolicy"]["Name"], "no");
        saw += 1;
    }
    assert_eq!(saw, 2);
}

#[test]
fn an_image_that_cannot_be_pulled_fails_clearly_without_harming_others() {
    let s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    s.write_service(
        &project,
        &format!(
            "{}\n[[service]]\nname = \"ghost\"\nimage = \"registry.invalid/nope:1\"\nport = 80\n",
            testapp_service("ok", 1, &host, "")
        ),
    );
    let out = s.cli_in(ADMIN, None, &["deploy", "--timeout-secs", "5"]);
    assert!(
        !out.status.success(),
        "deploy waits for readiness and reports the failure"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ghost") && err.contains("registry.invalid/nope:1"),
        "{err}"
    );
    let ghost = s.service(&project, "ghost");
    assert_eq!(ghost["status"], "failed", "{ghost:#}");
    assert!(
        ghost["error"]
            .as_str()
            .unwrap()
            .contains("registry.invalid/nope:1"),
        "{ghost:#}"
    );
    assert_eq!(s.service(&project, "ok")["status"], "running");
    assert_eq!(s.proxy_get(&host, "/").unwrap().0, 200);
}

#[test]
fn proxy_forwards_headers_and_websocket_upgrades_to_instances() {
    use std::io::{Read, Write};
    let s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    s.write_service(&project, &testapp_service("ws", 1, &host, ""));
    s.cli(&["deploy"]);

    let (code, headers) = s.proxy_get(&host, "/headers").unwrap();
    assert_eq!(code, 200);
    let lower = headers.to_ascii_lowercase();
    assert!(lower.contains("x-forwarded-for: 127.0.0.1"), "{headers}");
    assert!(lower.contains("x-forwarded-proto: http"), "{headers}");
    assert!(
        lower.contains(&format!("x-forwarded-host: {host}")),
        "{headers}"
    );

    let mut c = std::net::TcpStream::connect(s.http).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    c.write_all(b"ping through orca").unwrap();
    let mut echo = [0u8; 17];
    c.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping through orca");
}
