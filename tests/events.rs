//! End-to-end: the operator's instruments on a real server and Docker Engine. The event
//! stream records a deploy, a crash (`docker kill`), a candidate failing readiness and its
//! rollback, found through `orca events --output json`, through a following CLI and through
//! the raw server-sent-events stream, and still there after a restart; `/metrics` serves every
//! family the README lists, parsed by a Prometheus text parser.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn web_toml(host: &str, env: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"web\"\nimage = \"{}\"\nreplicas = 1\nport = 8080\ndomain = \"{host}\"\nhealth = \"/healthz\"\n\n[service.env]\n{env}\n\n{extra}\n",
        testapp_image()
    )
}

/// `orca events --output json` with extra arguments, parsed.
fn events(s: &Server, token: &str, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["events", "--output", "json", "--limit", "1000"];
    all.extend_from_slice(args);
    let out = s.cli_in(token, None, &all);
    assert!(
        out.status.success(),
        "orca {all:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&s.log(), 40)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn kinds(evs: &[Value]) -> Vec<String> {
    evs.iter()
        .map(|e| e["kind"].as_str().unwrap_or("").to_string())
        .collect()
}

fn find<'a>(evs: &'a [Value], kind: &str, cond: impl Fn(&Value) -> bool) -> Option<&'a Value> {
    evs.iter().find(|e| e["kind"] == kind && cond(e))
}

/// Waits until `cond` holds on the events `fetch` returns.
fn wait_events(
    what: &str,
    timeout: Duration,
    fetch: impl Fn() -> Vec<Value>,
    cond: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let evs = fetch();
        if cond(&evs) {
            return evs;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; events: {:?}",
            kinds(&evs)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A follower: `orca events --follow --output json` whose lines are collected.
struct Follower {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Follower {
    fn start(s: &Server, args: &[&str]) -> Follower {
        let mut child = Command::new(env!("CARGO_BIN_EXE_orca"))
            .args(["events", "--follow", "--output", "json"])
            .args(args)
            .env("ORCA_API", &s.api)
            .env("ORCA_TOKEN", ADMIN)
            .env("ORCA_HOME", s.home())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Follower { child, lines }
    }

    fn seen(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The raw SSE stream of `GET /api/v1/events?follow=true` with a viewer token: frames
/// (id, event, data) as they arrive.
fn raw_sse(s: &Server, query: &str) -> Arc<Mutex<Vec<(String, String, Value)>>> {
    let authority = s.api.strip_prefix("http://").unwrap().to_string();
    let mut stream = std::net::TcpStream::connect(&authority).unwrap();
    write!(
        stream,
        "GET /api/v1/events?follow=true{query} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {VIEWER}\r\n\r\n"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let frames = Arc::new(Mutex::new(Vec::new()));
    let sink = frames.clone();
    std::thread::spawn(move || {
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                return;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            // Chunk-size lines of the chunked encoding are not `field: value` lines; SSE
            // frames end with a blank line.
            while let Some(end) = text.find("\n\n") {
                let frame: String = text.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
                for l in frame.lines() {
                    if let Some(v) = l.strip_prefix("id: ") {
                        id = v.to_string();
                    } else if let Some(v) = l.strip_prefix("event: ") {
                        event = v.to_string();
                    } else if let Some(v) = l.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if let Ok(v) = serde_json::from_str::<Value>(&data) {
                    sink.lock().unwrap().push((id, event, v));
                }
            }
        }
    });
    frames
}

#[test]
fn events_record_deploy_crash_failed_readiness_and_rollback_and_survive_a_restart() {
    let mut s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    let svc = format!("{project}/web");
    let follower = Follower::start(&s, &["--service", &svc]);
    let sse = raw_sse(&s, &format!("&project={project}"));
    // Both followers are connected before anything happens.
    std::thread::sleep(Duration::from_millis(500));

    s.write_service(&project, &web_toml(&host, "VERSION = \"v1\"", ""));
    s.cli(&["deploy"]);
    let fetch = || events(&s, ADMIN, &["--service", &svc]);
    let evs = wait_events(
        "deploy, start and ready",
        Duration::from_secs(30),
        fetch,
        |e| {
            find(e, "deploy", |e| e["revision"] == 1).is_some()
                && find(e, "instance.started", |_| true).is_some()
                && find(e, "instance.ready", |_| true).is_some()
        },
    );
    let started = find(&evs, "instance.started", |_| true).unwrap();
    assert_eq!(started["project"], project.as_str());
    assert_eq!(started["service"], "web");
    assert_eq!(started["revision"], 1);
    assert!(started["instance"].as_str().unwrap().contains("-web-0-"));

    // A crash: docker kill (SIGKILL, exit code 137).
    let web = s.wait_service(&project, "web", "ready", |v| v["ready_replicas"] == 1);
    let victim = web["instances"][0]["name"].as_str().unwrap().to_string();
    let victim_id = web["instances"][0]["id"].as_str().unwrap().to_string();
    docker_kill(&victim_id);
    let evs = wait_events("the crash", Duration::from_secs(30), fetch, |e| {
        find(e, "instance.crashed", |_| true).is_some()
    });
    let crash = find(&evs, "instance.crashed", |_| true).unwrap();
    assert_eq!(
        crash["instance"],
        victim.trim_start_matches('/'),
        "{crash:#}"
    );
    assert_eq!(crash["fields"]["exit_code"], 137, "{crash:#}");
    assert_eq!(crash["severity"], "error");
    assert!(
        crash["message"].as_str().unwrap().contains("137"),
        "{crash:#}"
    );
    s.wait_service(&project, "web", "replaced after the crash", |v| {
        v["ready_replicas"] == 1 && v["instances"][0]["id"] != victim_id.as_str()
    });

    // A candidate that never passes readiness: readiness failures, then a rollback by the
    // progress deadline, with its reason.
    s.write_service(
        &project,
        &web_toml(
            &host,
            "VERSION = \"v2\"\nNEVER_READY = \"1\"",
            "[service.deploy]\nprogress_deadline_secs = 5\n",
        ),
    );
    let out = s.cli_in(ADMIN, None, &["deploy", "--timeout-secs", "60"]);
    assert!(!out.status.success(), "the deploy reports the rollback");
    let evs = wait_events(
        "readiness failure and rollback",
        Duration::from_secs(60),
        fetch,
        |e| {
            find(e, "instance.readiness_failed", |e| e["revision"] == 2).is_some()
                && find(e, "rollout.rolled_back", |_| true).is_some()
        },
    );
    let failed = find(&evs, "instance.readiness_failed", |e| e["revision"] == 2).unwrap();
    assert!(
        failed["fields"]["failures"].as_u64().unwrap() >= 3,
        "{failed:#}"
    );
    assert!(failed["fields"]["error"].as_str().is_some(), "{failed:#}");
    let back = find(&evs, "rollout.rolled_back", |_| true).unwrap();
    assert_eq!(back["revision"], 2);
    assert!(
        back["fields"]["reason"]
            .as_str()
            .unwrap()
            .contains("no progress"),
        "{back:#}"
    );
    assert!(find(&evs, "rollout.started", |e| e["revision"] == 2).is_some());
    assert!(find(&evs, "deploy", |e| e["revision"] == 2).is_some());
    // In order, with increasing sequence numbers.
    let seqs: Vec<u64> = evs.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // The CLI follower and the raw SSE stream (viewer) saw the same events, live.
    let wanted = [
        "deploy",
        "instance.started",
        "instance.ready",
        "instance.crashed",
        "instance.readiness_failed",
        "rollout.rolled_back",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let followed = kinds(&follower.seen());
        let streamed: Vec<String> = sse.lock().unwrap().iter().map(|f| f.1.clone()).collect();
        let missing: Vec<_> = wanted
            .iter()
            .filter(|k| !followed.iter().any(|f| f == *k) || !streamed.iter().any(|f| f == *k))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "followers missed {missing:?}: cli {followed:?}, sse {streamed:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for (id, event, data) in sse.lock().unwrap().iter() {
        assert_eq!(data["seq"].to_string(), *id);
        assert_eq!(data["kind"], event.as_str());
        assert_eq!(data["project"], project.as_str());
    }
    let followed = follower.seen();
    let fseqs: Vec<u64> = followed
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(fseqs.windows(2).all(|w| w[0] < w[1]), "{fseqs:?}");

    // Filters: kind family, since, project; bad input is refused with the reason.
    let rollouts = events(&s, VIEWER, &["--service", &svc, "--kind", "rollout"]);
    assert!(!rollouts.is_empty());
    assert!(rollouts
        .iter()
        .all(|e| e["kind"].as_str().unwrap().starts_with("rollout.")));
    assert!(events(&s, ADMIN, &["--service", &svc, "--since", "10m"]).len() >= evs.len());
    let out = s.cli_in(ADMIN, None, &["events", "--since", "ten minutes"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("since") && err.contains("10m"), "{err}");
    let (code, body) = http_raw(
        "GET",
        &format!("{}/api/v1/events?colour=red", s.api),
        Some(VIEWER),
        &[],
        None,
    )
    .unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("colour"), "{body}");

    // `orca status` shows the service's last events.
    let text = s.cli(&["status", "--project", &project]);
    assert!(text.contains("  event "), "{text}");
    assert!(
        text.contains("rollout.rolled_back") || text.contains("instance."),
        "{text}"
    );

    // Survive a restart: the same events, then new ones after them. The followers are still
    // connected: a graceful shutdown must end their streams, not wait on them
    // (regression: SIGTERM hung with an SSE follower open).
    let before = events(&s, ADMIN, &[]);
    assert!(
        s.terminate(),
        "SIGTERM with followers connected:\n{}",
        tail(&s.log(), 20)
    );
    drop(follower);
    s.spawn();
    let after = events(&s, ADMIN, &[]);
    assert!(after.len() >= before.len());
    for (a, b) in before.iter().zip(after.iter()) {
        assert_eq!(a, b);
    }
    // The restarted server does not re-announce the instance that was already running.
    std::thread::sleep(Duration::from_secs(2));
    let after = events(&s, ADMIN, &["--service", &svc]);
    let last_seq = before.last().unwrap()["seq"].as_u64().unwrap();
    let restarted: Vec<_> = after
        .iter()
        .filter(|e| e["seq"].as_u64().unwrap() > last_seq && e["kind"] == "instance.started")
        .collect();
    assert!(restarted.is_empty(), "{restarted:?}");
    s.cli(&["scale", "web", "2", "--project", &project]);
    let evs = wait_events(
        "scale after the restart",
        Duration::from_secs(30),
        || events(&s, ADMIN, &["--service", &svc]),
        |e| find(e, "service.scaled", |e| e["fields"]["replicas"] == 2).is_some(),
    );
    let scaled = find(&evs, "service.scaled", |_| true).unwrap();
    assert!(scaled["seq"].as_u64().unwrap() > last_seq);
}

/// Metric family names listed in README.md's metrics table.
fn readme_families() -> Vec<String> {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let start = readme
        .find("<!-- metrics -->")
        .expect("README has a metrics table");
    let end = readme[start..].find("<!-- /metrics -->").unwrap() + start;
    readme[start..end]
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn metrics_serve_every_family_the_readme_lists() {
    let s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    s.write_service(&project, &testapp_service("api", 2, &host, ""));
    s.cli(&["deploy"]);
    for _ in 0..3 {
        assert_eq!(s.proxy_get(&host, "/").unwrap().0, 200);
    }
    s.wait_service(&project, "api", "sampled", |v| {
        v["instances"]
            .as_array()
            .is_some_and(|is| is.iter().all(|i| i["memory_bytes"].as_u64().is_some()))
    });
    let (code, text) = http_raw("GET", &format!("{}/metrics", s.api), None, &[], None).unwrap();
    assert_eq!(code, 200);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("the exposition parses");
    let families = readme_families();
    assert!(families.len() >= 10, "{families:?}");
    for f in &families {
        assert!(
            scrape.samples.iter().any(|s| s.metric == *f),
            "family {f} (listed in README.md) has no sample in /metrics:\n{text}"
        );
    }
    let value = |metric: &str, labels: &[(&str, &str)]| -> Option<f64> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .and_then(|s| match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => Some(v),
                _ => None,
            })
    };
    // The reference's names with the documented labels.
    assert_eq!(value("orca_services_total", &[]), Some(1.0), "{text}");
    assert_eq!(value("orca_nodes_total", &[]), Some(1.0), "{text}");
    assert_eq!(
        value(
            "orca_instances_total",
            &[
                ("service", "api"),
                ("project", &project),
                ("status", "ready")
            ]
        ),
        Some(2.0),
        "{text}"
    );
    // The older names stay, with the same values.
    assert_eq!(value("orca_services", &[]), Some(1.0), "{text}");
    assert_eq!(
        value(
            "orca_instances",
            &[
                ("service", "api"),
                ("project", &project),
                ("status", "ready")
            ]
        ),
        Some(2.0),
        "{text}"
    );
}

#[test]
fn a_stream_follower_reads_what_it_may_and_is_refused_without_a_token() {
    let s = Server::start();
    let (code, body) = http_raw(
        "GET",
        &format!("{}/api/v1/events?follow=true", s.api),
        None,
        &[],
        None,
    )
    .unwrap();
    assert_eq!(code, 401, "{body}");
    let (code, body) = http_raw(
        "GET",
        &format!("{}/api/v1/events?limit=20000", s.api),
        Some(VIEWER),
        &[],
        None,
    )
    .unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("limit"), "{body}");
}

/// One request the loopback receiver got: headers (lowercase names) and body.
#[derive(Clone, Debug)]
struct Received {
    headers: Vec<(String, String)>,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A notification receiver on loopback that answers 500 to its first `fail_first` requests
/// and 200 after that.
/// What the loopback receiver answered and got, in order.
type Log = Arc<Mutex<Vec<(u16, Received)>>>;

fn receiver(fail_first: usize) -> (String, Log) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.trim().split_once(':') {
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let mut all = sink.lock().unwrap();
            let code = if all.len() < fail_first { 500 } else { 200 };
            all.push((
                code,
                Received {
                    headers,
                    body: String::from_utf8_lossy(&body).to_string(),
                },
            ));
            drop(all);
            let _ = write!(
                conn,
                "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (url, got)
}

#[test]
fn a_notification_is_delivered_once_signed_after_the_receiver_failed_twice() {
    let (url, got) = receiver(2);
    let secret = "notify-secret-0123456789";
    let s = Server::start_with(&format!(
        "[[notify]]\nname = \"ops\"\nurl = \"{url}\"\nsecret = \"{secret}\"\nevents = [\"service.scaled\"]\n"
    ));
    let project = unique("p");
    s.write_service(
        &project,
        &testapp_service("web", 1, &format!("{project}.test"), ""),
    );
    s.cli(&["deploy"]);
    s.cli(&["scale", "web", "2", "--project", &project]);

    let deadline = Instant::now() + Duration::from_secs(30);
    while !got.lock().unwrap().iter().any(|(code, _)| *code == 200) {
        assert!(
            Instant::now() < deadline,
            "no delivery accepted: {:?}\n{}",
            got.lock().unwrap(),
            tail(&s.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Time for a (wrong) second delivery or for deliveries of events outside the filter.
    std::thread::sleep(Duration::from_secs(3));
    let all = got.lock().unwrap().clone();
    assert_eq!(
        all.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        vec![500, 500, 200],
        "two failed attempts, then one accepted delivery, and nothing else: {all:?}"
    );
    let ids: Vec<_> = all
        .iter()
        .map(|(_, r)| r.header("x-orca-delivery").unwrap().to_string())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "one delivery id: {ids:?}"
    );
    for (_, r) in &all {
        assert_eq!(r.header("x-orca-event"), Some("service.scaled"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        // The signature verifies against the secret (HMAC-SHA256 over the body).
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(r.body.as_bytes());
        let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(r.header("x-orca-signature-256"), Some(want.as_str()));
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["event"]["kind"], "service.scaled");
        assert_eq!(v["event"]["project"], project.as_str());
        assert_eq!(v["event"]["fields"]["replicas"], 2);
        assert_eq!(v["cluster"], s.cluster.as_str());
    }
    // Delivery status is visible.
    let (code, body) = http_raw(
        "GET",
        &format!("{}/api/v1/notifications", s.api),
        Some(VIEWER),
        &[],
        None,
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(!body.contains(secret), "the secret never shows: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let d = &v["deliveries"][0];
    assert_eq!(d["state"], "delivered", "{v:#}");
    assert_eq!(d["attempts"], 3, "{v:#}");
    assert_eq!(d["target"], "ops");
    assert_eq!(v["targets"][0]["events"][0], "service.scaled");
}

#[test]
fn an_unknown_notify_event_kind_is_refused_at_start() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join("cluster.toml"),
        "[[notify]]\nname = \"ops\"\nurl = \"http://127.0.0.1:9/\"\nsecret = \"0123456789abcdef0123\"\nevents = [\"crash\"]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_orca"))
        .arg("server")
        .env("ORCA_HOME", root.path().join("home"))
        .env("ORCA_CONFIG_DIR", root.path())
        .env("ORCA_API_ADDR", "127.0.0.1:0")
        .env("ORCA_HTTP_ADDR", "127.0.0.1:0")
        .env("ORCA_HTTPS_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("notify[0].events[0]") && err.contains("\"crash\""),
        "{err}"
    );
}

#[test]
fn a_webhook_delivery_is_an_event_with_its_outcome() {
    let s = Server::start();
    let (code, body) = http_raw(
        "POST",
        &format!("{}/api/v1/webhooks/github", s.api),
        None,
        &[
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "d-events-1"),
        ],
        Some(br#"{"ref":"refs/heads/main"}"#),
    )
    .unwrap();
    assert!(
        code >= 400,
        "an unsigned delivery is refused: {code} {body}"
    );
    let evs = wait_events(
        "the delivery event",
        Duration::from_secs(10),
        || events(&s, VIEWER, &["--kind", "webhook"]),
        |e| !e.is_empty(),
    );
    let d = &evs[0];
    assert_eq!(d["kind"], "webhook.delivery");
    assert_eq!(d["fields"]["forge"], "github");
    assert_eq!(d["fields"]["delivery"], "d-events-1");
    assert_eq!(d["fields"]["status"], code);
    assert!(d["fields"]["outcome"].as_str().is_some(), "{d:#}");
}

/// A tmux session running `orca tui` at 80x24; killed on drop.
struct Tmux {
    name: String,
}

impl Tmux {
    fn start(s: &Server, token: &str) -> Tmux {
        let name = unique("tui");
        let cmd = format!(
            "env ORCA_API={} ORCA_TOKEN={token} ORCA_HOME={} TERM=xterm-256color {} tui",
            s.api,
            s.home().display(),
            env!("CARGO_BIN_EXE_orca")
        );
        let st = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &name,
                "-x",
                "80",
                "-y",
                "24",
                &cmd,
            ])
            .status()
            .expect("tmux is installed (.ci/run installs it)");
        assert!(st.success());
        // Keep the pane after the program exits, so a crash stays visible.
        let _ = Command::new("tmux")
            .args(["set-option", "-t", &name, "remain-on-exit", "on"])
            .status();
        Tmux { name }
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            let st = Command::new("tmux")
                .args(["send-keys", "-t", &self.name, k])
                .status()
                .unwrap();
            assert!(st.success());
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn wait(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen();
            if cond(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn dead(&self) -> bool {
        let out = Command::new("tmux")
            .args(["display-message", "-p", "-t", &self.name, "#{pane_dead}"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .status();
    }
}

#[test]
fn tui_in_a_real_terminal_lists_filters_shows_logs_scales_refuses_viewers_and_survives_the_server()
{
    let mut s = Server::start();
    let project = unique("p");
    let key = format!("{project}/web");
    s.write_service(
        &project,
        &web_toml(&format!("{project}.test"), "LOG_REQUESTS = \"1\"", ""),
    );
    s.cli(&["deploy"]);
    s.proxy_get(&format!("{project}.test"), "/tui-was-here")
        .unwrap();

    let t = Tmux::start(&s, ADMIN);
    let screen = t.wait("the service with its ready count", |sc| {
        sc.lines().any(|l| l.contains(&key) && l.contains("1/1"))
    });
    assert!(
        screen.contains("/ filter") && screen.contains("s scale"),
        "{screen}"
    );
    assert!(screen.contains("connected"), "{screen}");
    assert_eq!(screen.lines().count(), 24, "80x24:\n{screen}");

    // Filter: nothing matches, then the filter is cleared.
    t.keys(&["/", "nomatch", "Enter"]);
    t.wait("an empty filtered list", |sc| sc.contains("services (0)"));
    t.keys(&["Escape"]);
    t.wait("the list back", |sc| sc.contains(&key));
    t.keys(&["/", &project[..4], "Enter"]);
    t.wait("the filtered list", |sc| {
        sc.contains("services (1)") && sc.contains(&key)
    });

    // Logs of the selected service, then back.
    t.keys(&["l"]);
    t.wait("the logs view", |sc| {
        sc.contains(&format!("logs {key}")) && sc.contains("tui-was-here")
    });
    t.keys(&["Escape"]);
    t.wait("the services view", |sc| sc.contains("services (1)"));

    // Scale with the prompt.
    t.keys(&["s", "2", "Enter"]);
    t.wait("the scale outcome", |sc| {
        sc.contains("scale to 2 requested")
    });
    s.wait_service(&project, "web", "scaled to 2", |v| v["replicas"] == 2);
    t.wait("2 wanted", |sc| {
        sc.lines().any(|l| l.contains(&key) && l.contains("/2"))
    });

    // A viewer's scale is refused with the reason.
    let v = Tmux::start(&s, VIEWER);
    v.wait("the service (viewer)", |sc| sc.contains(&key));
    v.keys(&["s", "5", "Enter"]);
    let screen = v.wait("the refusal", |sc| sc.contains("refused"));
    assert!(screen.contains("read-only"), "{screen}");
    assert_eq!(s.service(&project, "web")["replicas"], 2);
    drop(v);

    // The server goes away: the dashboard says so and keeps running.
    s.kill9();
    let screen = t.wait("the disconnected line", |sc| {
        sc.contains("disconnected, retrying")
    });
    assert!(!screen.contains("panicked"), "{screen}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!t.dead(), "the TUI exited:\n{}", t.screen());
    // It comes back with the server.
    s.spawn();
    t.wait("connected again", |sc| {
        !sc.contains("disconnected") && sc.contains(&key)
    });
    t.keys(&["q"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !t.dead() {
        assert!(Instant::now() < deadline, "q did not quit:\n{}", t.screen());
        std::thread::sleep(Duration::from_millis(100));
    }
}
