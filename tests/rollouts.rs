//! End-to-end: rollouts under load on the real Docker Engine. A bounded constant-rate load
//! goes through the proxy while `rolling` and `canary` rollouts replace instances, while an
//! operator promotes or rolls back, while a revision that never becomes ready is rolled back
//! by its deadline, and across a SIGKILL of the server mid-rollout; readiness and liveness
//! probes are flipped at runtime through the test app's `/admin/*` toggles.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// A service.toml for the test app named `web` with an explicit env and extra tables
/// (`extra` must not repeat `[service.env]`).
fn web_toml(host: &str, replicas: u32, env: &[(&str, &str)], probes: &str, extra: &str) -> String {
    let mut t = format!(
        "[[service]]\nname = \"web\"\nimage = \"{}\"\nreplicas = {replicas}\nport = 8080\ndomain = \"{host}\"\n{probes}\n\n[service.env]\n",
        testapp_image()
    );
    for (k, v) in env {
        t.push_str(&format!("{k} = \"{v}\"\n"));
    }
    t.push('\n');
    t.push_str(extra);
    t.push('\n');
    t
}

const HEALTH: &str = "health = \"/healthz\"";

/// Status JSON of the project and the server log tail (`ORCA_TEST_LOG_LINES`, default 60
/// lines; per-request proxy lines left out, they flood the log under load), for assertion
/// messages.
fn ctx(s: &Server, project: &str) -> String {
    let lines = std::env::var("ORCA_TEST_LOG_LINES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(60);
    format!(
        "status of {project}/web: {:#}\ncontainers: {:?}\nserver log tail:\n{}",
        s.service(project, "web"),
        containers(&s.cluster),
        tail(
            &s.log()
                .lines()
                .filter(|l| !l.contains("orca.proxy.request{"))
                .collect::<Vec<_>>()
                .join("\n"),
            lines
        )
    )
}

/// Waits up to `timeout` until `cond` holds on `project/web`'s status entry.
fn wait_for(
    s: &Server,
    project: &str,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let v = s.service(project, "web");
        if cond(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}\n{}",
            ctx(s, project)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn instances(v: &Value) -> Vec<Value> {
    v["instances"].as_array().cloned().unwrap_or_default()
}

/// Ready instances on `revision`.
fn ready_on(v: &Value, revision: u64) -> usize {
    instances(v)
        .iter()
        .filter(|i| i["ready"] == true && i["revision"] == revision)
        .count()
}

/// The test app's JSON answers to `n` sequential proxied GETs; every one must be a 200.
fn answers(s: &Server, project: &str, host: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|_| {
            let (code, body) = s
                .proxy_get(host, "/")
                .unwrap_or_else(|e| panic!("proxy request failed: {e}\n{}", ctx(s, project)));
            assert_eq!(code, 200, "{body}\n{}", ctx(s, project));
            serde_json::from_str(&body).expect("the test app answers JSON")
        })
        .collect()
}

fn field_counts(answers: &[Value], field: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in answers {
        *m.entry(a[field].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    m
}

/// The standard background load of these tests: 4 threads, one request every 10 ms each
/// (≤ 400 requests/s), at most 60 000 requests and 180 s.
fn load(s: &Server, host: &str) -> Load {
    Load::start(
        s.http,
        host,
        "/",
        4,
        Duration::from_millis(10),
        60_000,
        Duration::from_secs(180),
    )
}

fn assert_no_failures(r: &LoadReport, s: &Server, project: &str) {
    eprintln!("load: {}", r.summary());
    assert!(
        r.failures.is_empty() && !r.capped,
        "requests failed under load: {}\n{}",
        r.summary(),
        ctx(s, project)
    );
    assert!(r.ok > 100, "the load ran: {}", r.summary());
}

/// GET on an instance's own address (container bridge IP), bypassing the proxy.
fn direct(address: &str, path: &str) -> (u16, String) {
    http_raw("GET", &format!("http://{address}{path}"), None, &[], None)
        .unwrap_or_else(|e| panic!("GET {address}{path}: {e}"))
}

/// (slot, revision, state) of every container of the cluster, from their labels.
fn labelled(cluster: &str) -> Vec<(String, String, String)> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=orca.cluster={cluster}"),
            "--format",
            "{{.Label \"orca.slot\"}} {{.Label \"orca.revision\"}} {{.State}}",
        ])
        .output()
        .unwrap();
    let mut v: Vec<_> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            Some((
                p.next()?.to_string(),
                p.next()?.to_string(),
                p.next()?.to_string(),
            ))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn rolling_update_of_three_replicas_under_load_fails_no_request() {
    let s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    s.write_service(
        &project,
        &web_toml(&host, 3, &[("VERSION", "v1")], HEALTH, ""),
    );
    s.cli(&["deploy"]);
    assert_eq!(
        field_counts(&answers(&s, &project, &host, 10), "version"),
        BTreeMap::from([("v1".to_string(), 10)])
    );

    let l = load(&s, &host);
    std::thread::sleep(Duration::from_millis(500));
    s.write_service(
        &project,
        &web_toml(&host, 3, &[("VERSION", "v2")], HEALTH, ""),
    );
    let t0 = l.now_ms();
    let out = s.cli(&["deploy", "--timeout-secs", "90"]);
    let t1 = l.now_ms();
    // Keep the load on a little after "done": old instances are stopped around now.
    std::thread::sleep(Duration::from_secs(2));
    let report = l.stop();
    eprintln!("rolling update took {} ms (load +{t0}..+{t1} ms)", t1 - t0);
    assert!(
        out.contains("revision 2 (changed)") && out.contains("all 1 service(s) running"),
        "{out}"
    );
    assert_no_failures(&report, &s, &project);
    assert!(
        report.versions.contains_key("v1") && report.versions.contains_key("v2"),
        "the load saw both revisions: {}",
        report.summary()
    );

    let web = s.service(&project, "web");
    assert!(
        web["rollout"].is_null(),
        "rollout finished\n{}",
        ctx(&s, &project)
    );
    assert_eq!(ready_on(&web, 2), 3, "{}", ctx(&s, &project));
    assert_eq!(
        field_counts(&answers(&s, &project, &host, 30), "version"),
        BTreeMap::from([("v2".to_string(), 30)]),
        "only v2 answers after the rollout\n{}",
        ctx(&s, &project)
    );
}

/// A `web` service on `port`, ready on `health`, with the test app told to listen there.
fn web_on_port(host: &str, port: u16, health: &str, version: &str) -> String {
    format!(
        "[[service]]\nname = \"web\"\nimage = \"{}\"\nreplicas = 3\nport = {port}\ndomain = \"{host}\"\nhealth = \"{health}\"\n\n[service.env]\nPORT = \"{port}\"\nVERSION = \"{version}\"\nREADY_{version} = \"yes\"\n",
        testapp_image()
    )
}

/// Regression: stable instances were routed, probed and drained on the NEW revision's port
/// (the proxy sent traffic to `ip:9090` of instances listening on 8080), so a rolling update
/// that changed `port` answered hundreds of requests with 502 and sometimes never finished.
#[test]
fn rolling_update_changing_port_and_readiness_path_drops_no_request() {
    let s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    // v1 listens on 8080 and is ready on /env/READY_v1; v2 on 9090, ready on /env/READY_v2
    // (a path only v2 answers 200: probing v1 with v2's path fails).
    s.write_service(&project, &web_on_port(&host, 8080, "/env/READY_v1", "v1"));
    s.cli(&["deploy"]);
    answers(&s, &project, &host, 5);

    let l = load(&s, &host);
    std::thread::sleep(Duration::from_millis(500));
    s.write_service(&project, &web_on_port(&host, 9090, "/env/READY_v2", "v2"));
    let out = s.cli(&["deploy", "--timeout-secs", "90"]);
    std::thread::sleep(Duration::from_secs(2));
    let report = l.stop();
    assert!(out.contains("revision 2 (changed)"), "{out}");
    assert_no_failures(&report, &s, &project);
    assert!(
        report.versions.contains_key("v1") && report.versions.contains_key("v2"),
        "the load saw both revisions: {}",
        report.summary()
    );
    let web = wait_for(
        &s,
        &project,
        "3 ready on revision 2, rollout finished",
        Duration::from_secs(30),
        |v| ready_on(v, 2) == 3 && v["rollout"].is_null(),
    );
    // A v1 instance may still be listed while its stopped container is being removed (on a
    // loaded machine that takes a moment): it is not routed and not what is checked here.
    let v2: Vec<_> = instances(&web)
        .into_iter()
        .filter(|i| i["revision"] == 2 && i["ready"] == true)
        .collect();
    assert_eq!(v2.len(), 3, "{web:#}");
    for i in v2 {
        let addr = i["address"].as_str().unwrap_or_default();
        assert!(
            addr.ends_with(":9090"),
            "a v2 instance shown on its own port: {i}"
        );
        assert_eq!(direct(addr, "/env/READY_v2").0, 200, "{i}");
    }
}

/// Regression: a finished rollout was forgotten (its record deleted, "finished" kept only in
/// memory), so a server SIGKILLed while superseded instances drained found them on restart
/// and opened a new rollout back to them, routing traffic to the old revision again.
#[test]
fn sigkill_while_superseded_instances_drain_does_not_reopen_the_rollout() {
    let mut s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    let drain = "[service.deploy]\ndrain_timeout_secs = 60\n";
    s.write_service(
        &project,
        &web_toml(&host, 3, &[("VERSION", "v1")], HEALTH, drain),
    );
    s.cli(&["deploy"]);
    answers(&s, &project, &host, 3);
    // Slow requests keep every v1 instance busy, so its drain lasts after the rollout ends.
    let slow: Vec<_> = (0..6)
        .map(|_| {
            let (port, host) = (s.http, host.clone());
            std::thread::spawn(move || {
                let _ = http_raw(
                    "GET",
                    &format!("http://127.0.0.1:{port}/sleep/25000"),
                    None,
                    &[("Host", host.as_str())],
                    None,
                );
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    s.write_service(
        &project,
        &web_toml(&host, 3, &[("VERSION", "v2")], HEALTH, drain),
    );
    s.cli(&["deploy", "--no-wait"]);
    wait_for(
        &s,
        &project,
        "the rollout finished on revision 2",
        Duration::from_secs(60),
        |v| v["rollout"].is_null() && ready_on(v, 2) == 3,
    );
    let at_kill = labelled(&s.cluster);
    assert!(
        at_kill.iter().any(|c| c.1 == "1" && c.2 == "running"),
        "v1 instances still draining when the server is killed: {at_kill:?}"
    );
    s.kill9();
    std::thread::sleep(Duration::from_millis(300));
    s.spawn();
    wait_for(
        &s,
        &project,
        "the restarted server routing v2",
        Duration::from_secs(30),
        |v| ready_on(v, 2) == 3,
    );
    // For a while after the restart: no rollout is reopened and only v2 answers.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let web = s.service(&project, "web");
        assert!(
            web["rollout"].is_null(),
            "no new rollout after the restart\n{}",
            ctx(&s, &project)
        );
        assert_eq!(
            field_counts(&answers(&s, &project, &host, 3), "version"),
            BTreeMap::from([("v2".to_string(), 3)]),
            "{}",
            ctx(&s, &project)
        );
    }
    wait_for(
        &s,
        &project,
        "only the 3 v2 instances left",
        Duration::from_secs(60),
        |v| ready_on(v, 2) == 3 && labelled(&s.cluster).iter().all(|c| c.1 == "2"),
    );
    for t in slow {
        let _ = t.join();
    }
}

/// Regression: a server killed between a container's create and its start left the service
/// stuck — the container stayed `created`, filled its slot and never became ready. A container
/// not running after a bound (10 s) is replaced.
#[test]
fn container_left_created_by_a_killed_server_is_replaced() {
    let mut s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    s.write_service(
        &project,
        &web_toml(&host, 1, &[("VERSION", "v1")], HEALTH, ""),
    );
    s.cli(&["deploy"]);
    answers(&s, &project, &host, 2);
    s.kill9();
    // Recreate the instance as the killed server would have left it: created, never started.
    let ids = String::from_utf8(
        Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=orca.cluster={}", s.cluster),
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let id = ids.trim();
    assert_eq!(id.lines().count(), 1, "{ids}");
    let inspect = |fmt: &str| {
        let out = Command::new("docker")
            .args(["inspect", "--format", fmt, id])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let name = inspect("{{.Name}}").trim_start_matches('/').to_string();
    let labels: BTreeMap<String, String> =
        serde_json::from_str(&inspect("{{json .Config.Labels}}")).unwrap();
    let rm = Command::new("docker")
        .args(["rm", "-f", id])
        .output()
        .unwrap();
    assert!(rm.status.success());
    let mut create = Command::new("docker");
    create.args(["create", "--name", &name]);
    for (k, v) in &labels {
        create.args(["--label", &format!("{k}={v}")]);
    }
    let out = create.arg(testapp_image()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(labelled(&s.cluster)[0].2, "created");

    s.spawn();
    let t0 = Instant::now();
    wait_for(
        &s,
        &project,
        "the stuck container replaced and ready",
        Duration::from_secs(60),
        |v| {
            let cs = labelled(&s.cluster);
            ready_on(v, 1) == 1 && cs.len() == 1 && cs[0].2 == "running"
        },
    );
    eprintln!("stuck container replaced after {:?}", t0.elapsed());
    answers(&s, &project, &host, 3);
}

fn canary_extra() -> String {
    "[service.deploy]\nstrategy = \"canary\"\ncanary_weight = 20\n".to_string()
}

/// Deploys v1 of a 5-replica canary service, starts the load, deploys v2 without waiting,
/// and waits until the 80/20 split is live with the canary ready.
fn canary_split_under_load(s: &Server, project: &str, host: &str) -> Load {
    s.write_service(
        project,
        &web_toml(host, 5, &[("VERSION", "v1")], HEALTH, &canary_extra()),
    );
    s.cli(&["deploy"]);
    let l = load(s, host);
    std::thread::sleep(Duration::from_millis(500));
    s.write_service(
        project,
        &web_toml(host, 5, &[("VERSION", "v2")], HEALTH, &canary_extra()),
    );
    let out = s.cli(&["deploy", "--no-wait"]);
    assert!(out.contains("revision 2 (changed)"), "{out}");
    let web = wait_for(
        s,
        project,
        "the 80/20 split with a ready canary",
        Duration::from_secs(60),
        |v| {
            v["rollout"]["phase"] == "progressing"
                && v["rollout"]["traffic"]["stable"] == 80
                && v["rollout"]["traffic"]["candidate"] == 20
                && ready_on(v, 2) >= 1
                && ready_on(v, 1) == 5
        },
    );
    assert_eq!(web["rollout"]["strategy"], "canary", "{web:#}");
    assert_eq!(
        web["rollout"]["candidate_count"], 1,
        "ceil(5 × 20 %) = 1 canary: {web:#}"
    );
    assert_eq!(web["rollout"]["stable_count"], 5, "{web:#}");
    l
}

#[test]
fn canary_deploy_then_promote_under_load() {
    let s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    let l = canary_split_under_load(&s, &project, &host);

    // The split, measured: 2000 requests from 4 threads, as fast as they go.
    let sample = Load::start(
        s.http,
        &host,
        "/",
        4,
        Duration::ZERO,
        2_000,
        Duration::from_secs(120),
    )
    .join();
    assert!(
        sample.failures.is_empty() && sample.ok == 2_000,
        "sample: {}\n{}",
        sample.summary(),
        ctx(&s, &project)
    );
    let share = sample.share("v2");
    eprintln!("canary share: {share:.1} % ({:?})", sample.versions);
    assert!(
        (16.0..=24.0).contains(&share),
        "v2 gets 20 ± 4 % of the traffic, got {share:.1} %: {}\n{}",
        sample.summary(),
        ctx(&s, &project)
    );
    assert_eq!(sample.versions.len(), 2, "{:?}", sample.versions);

    let out = s.cli(&["promote", "web"]);
    assert!(out.contains("promote of revision 2 requested"), "{out}");
    wait_for(
        &s,
        &project,
        "promotion: no rollout, 5 ready v2 instances and no other ready one",
        Duration::from_secs(90),
        |v| {
            v["rollout"].is_null()
                && ready_on(v, 2) == 5
                && instances(v)
                    .iter()
                    .all(|i| i["ready"] != true || i["revision"] == 2)
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let report = l.stop();
    assert_no_failures(&report, &s, &project);
    assert_eq!(
        field_counts(&answers(&s, &project, &host, 30), "version"),
        BTreeMap::from([("v2".to_string(), 30)]),
        "only v2 answers after the promotion\n{}",
        ctx(&s, &project)
    );
    assert_eq!(s.service(&project, "web")["revision"], 2);
}

#[test]
fn canary_rollback_under_load() {
    let s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    let l = canary_split_under_load(&s, &project, &host);
    // Both revisions serve before the rollback.
    let seen = field_counts(&answers(&s, &project, &host, 60), "version");
    assert!(
        seen.contains_key("v2") && seen.contains_key("v1"),
        "{seen:?}"
    );

    let out = s.cli(&["rollback", "web"]);
    assert!(out.contains("rollout of revision 2 abandoned"), "{out}");
    let web = wait_for(
        &s,
        &project,
        "rolled back: only v1 instances, 5 ready",
        Duration::from_secs(60),
        |v| {
            (v["rollout"].is_null() || v["rollout"]["phase"] == "rolled-back")
                && ready_on(v, 1) == 5
                && instances(v).iter().all(|i| i["revision"] == 1)
        },
    );
    if !web["rollout"].is_null() {
        assert!(
            web["rollout"]["reason"]
                .as_str()
                .unwrap_or("")
                .contains("operator"),
            "{web:#}"
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    let report = l.stop();
    assert_no_failures(&report, &s, &project);
    assert_eq!(
        field_counts(&answers(&s, &project, &host, 30), "version"),
        BTreeMap::from([("v1".to_string(), 30)]),
        "only v1 answers after the rollback\n{}",
        ctx(&s, &project)
    );
    // Status tells the truth: revision 1 serves; revision 2 was rolled back, and why; the
    // ended rollout splits no traffic.
    let web = s.service(&project, "web");
    assert_eq!(web["revision"], 1, "{web:#}");
    assert_eq!(web["desired_revision"], 2, "{web:#}");
    assert_eq!(web["rolled_back"]["revision"], 2, "{web:#}");
    assert!(
        web["rolled_back"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("operator")),
        "{web:#}"
    );
    assert!(web["rollout"]["traffic"].is_null(), "{web:#}");
    let text = s.cli(&["status"]);
    assert!(
        text.contains("rolled back: revision 2") && text.contains("rolled back by the operator"),
        "{text}"
    );
}

/// Regression: `orca deploy` of a manual canary waited for the whole rollout and failed after
/// its timeout ("rollout in progress"); it returns 0 once the canary serves its weight,
/// printing the split and the promote command, and `orca promote` then completes it.
#[test]
fn canary_deploy_returns_once_the_canary_serves_and_promote_completes_it() {
    let s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    s.write_service(
        &project,
        &web_toml(&host, 3, &[("VERSION", "v1")], HEALTH, &canary_extra()),
    );
    s.cli(&["deploy"]);
    s.write_service(
        &project,
        &web_toml(&host, 3, &[("VERSION", "v2")], HEALTH, &canary_extra()),
    );
    let t0 = Instant::now();
    let out = s.cli(&["deploy", "--timeout-secs", "60"]);
    let took = t0.elapsed();
    eprintln!("canary deploy returned after {took:?}:\n{out}");
    assert!(
        out.contains("serves 20% of the traffic")
            && out.contains("stable revision 1 serves 80%")
            && out.contains("orca promote web"),
        "{out}"
    );
    assert!(
        took < Duration::from_secs(30),
        "returned once the canary served: {took:?}"
    );
    let web = s.service(&project, "web");
    assert_eq!(web["rollout"]["phase"], "progressing", "{web:#}");
    assert!(ready_on(&web, 2) >= 1, "{web:#}");
    let seen = field_counts(&answers(&s, &project, &host, 40), "version");
    assert!(
        seen.contains_key("v2") && seen.contains_key("v1"),
        "{seen:?}"
    );

    s.cli(&["promote", "web"]);
    wait_for(
        &s,
        &project,
        "promoted: 3 ready on revision 2",
        Duration::from_secs(60),
        |v| v["rollout"].is_null() && ready_on(v, 2) == 3 && instances(v).len() == 3,
    );
    assert_eq!(s.service(&project, "web")["revision"], 2);
}

#[test]
fn a_revision_that_never_becomes_ready_is_rolled_back_by_itself() {
    let s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    let deploy = "[service.deploy]\nprogress_deadline_secs = 5\n";
    s.write_service(
        &project,
        &web_toml(&host, 2, &[("VERSION", "v1")], HEALTH, deploy),
    );
    s.cli(&["deploy"]);

    let l = load(&s, &host);
    std::thread::sleep(Duration::from_millis(500));
    s.write_service(
        &project,
        &web_toml(
            &host,
            2,
            &[("VERSION", "v2"), ("NEVER_READY", "1")],
            HEALTH,
            deploy,
        ),
    );
    let started = Instant::now();
    let out = s.cli_in(ADMIN, None, &["deploy", "--timeout-secs", "60"]);
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success() && err.contains("rolled back"),
        "deploy reports the rollback (after {took:?}):\nstdout: {}\nstderr: {err}\n{}",
        String::from_utf8_lossy(&out.stdout),
        ctx(&s, &project)
    );
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(40),
        "rolled back by the 5 s deadline, took {took:?}"
    );
    let web = wait_for(
        &s,
        &project,
        "the candidate removed, v1 on both replicas",
        Duration::from_secs(30),
        |v| {
            v["rollout"]["phase"] == "rolled-back"
                && ready_on(v, 1) == 2
                && instances(v).iter().all(|i| i["revision"] == 1)
        },
    );
    let reason = web["rollout"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("no progress"), "{web:#}");
    std::thread::sleep(Duration::from_secs(1));
    let report = l.stop();
    assert_no_failures(&report, &s, &project);
    assert_eq!(
        report.versions.keys().collect::<Vec<_>>(),
        vec!["v1"],
        "the never-ready candidate was never routed: {}",
        report.summary()
    );
}

#[test]
fn readiness_failures_take_an_instance_out_of_routing_and_back() {
    let s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    let probes =
        "[service.readiness]\npath = \"/healthz\"\ninterval_secs = 1\nfailure_threshold = 1\n";
    s.write_service(&project, &web_toml(&host, 2, &[], probes, ""));
    s.cli(&["deploy"]);
    let web = s.service(&project, "web");
    let inst = instances(&web);
    assert_eq!(inst.len(), 2, "{web:#}");
    let (victim, other) = (&inst[0], &inst[1]);
    let (victim_id, other_id) = (
        victim["id"].as_str().unwrap().to_string(),
        other["id"].as_str().unwrap().to_string(),
    );
    let address = victim["address"].as_str().expect("instance address");
    let both: BTreeSet<String> = [victim_id.clone(), other_id.clone()].into();
    let seen: BTreeSet<String> = field_counts(&answers(&s, &project, &host, 20), "instance")
        .into_keys()
        .collect();
    assert_eq!(
        seen, both,
        "both replicas answer (the app's hostname is the short id)"
    );

    assert_eq!(direct(address, "/admin/ready/fail").0, 200);
    assert_eq!(direct(address, "/healthz").0, 503);
    let flipped = Instant::now();
    // Out of routing: 20 consecutive answers from the other instance.
    let deadline = flipped + Duration::from_secs(10);
    let mut streak = 0;
    while streak < 20 {
        let a = &answers(&s, &project, &host, 1)[0];
        streak = if a["instance"] == other_id.as_str() {
            streak + 1
        } else {
            0
        };
        assert!(
            Instant::now() < deadline,
            "the unready instance still gets traffic after 10 s\n{}",
            ctx(&s, &project)
        );
    }
    eprintln!("out of routing after {:?}", flipped.elapsed());
    let web = s.service(&project, "web");
    let v = instances(&web)
        .into_iter()
        .find(|i| i["id"] == victim_id.as_str())
        .expect("the unready instance keeps running");
    assert_eq!(v["ready"], false, "{web:#}");
    assert_eq!(v["state"], "running", "readiness never restarts: {web:#}");
    assert!(
        v["probe_error"].as_str().unwrap_or("").contains("503"),
        "{web:#}"
    );
    assert_eq!(web["ready_replicas"], 1, "{web:#}");
    assert_eq!(
        field_counts(&answers(&s, &project, &host, 30), "instance"),
        BTreeMap::from([(other_id.clone(), 30)])
    );

    assert_eq!(direct(address, "/admin/ready/ok").0, 200);
    let flipped = Instant::now();
    let deadline = flipped + Duration::from_secs(10);
    loop {
        let seen: BTreeSet<String> = field_counts(&answers(&s, &project, &host, 20), "instance")
            .into_keys()
            .collect();
        if seen == both {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the instance is not routed again 10 s after it became ready: {seen:?}\n{}",
            ctx(&s, &project)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("routed again after {:?}", flipped.elapsed());
    let web = wait_for(&s, &project, "2 ready", Duration::from_secs(5), |v| {
        v["ready_replicas"] == 2
    });
    assert_eq!(
        instances(&web)
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect::<BTreeSet<_>>(),
        both,
        "no container was replaced"
    );
}

#[test]
fn liveness_failures_restart_the_instance() {
    let s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    let probes = "health = \"/healthz\"\n\n[service.liveness]\npath = \"/livez\"\ninterval_secs = 1\nfailure_threshold = 2\n";
    s.write_service(&project, &web_toml(&host, 2, &[], probes, ""));
    s.cli(&["deploy"]);
    let web = s.service(&project, "web");
    let inst = instances(&web);
    assert_eq!(inst.len(), 2, "{web:#}");
    let victim_id = inst[0]["id"].as_str().unwrap().to_string();
    let slot = inst[0]["slot"].clone();
    let other_id = inst[1]["id"].as_str().unwrap().to_string();
    let address = inst[0]["address"].as_str().expect("instance address");

    assert_eq!(direct(address, "/admin/live/fail").0, 200);
    assert_eq!(direct(address, "/livez").0, 503);
    let flipped = Instant::now();
    let web = wait_for(
        &s,
        &project,
        "a new ready container in the slot whose liveness failed",
        Duration::from_secs(30),
        |v| {
            instances(v)
                .iter()
                .any(|i| i["slot"] == slot && i["id"] != victim_id.as_str() && i["ready"] == true)
                && v["ready_replicas"] == 2
        },
    );
    let took = flipped.elapsed();
    eprintln!("replaced after {took:?}");
    assert!(
        took < Duration::from_secs(20),
        "replaced within ~15 s, took {took:?}"
    );
    let new_id = instances(&web)
        .into_iter()
        .find(|i| i["slot"] == slot)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        instances(&web).iter().any(|i| i["id"] == other_id.as_str()),
        "the live instance is untouched: {web:#}"
    );
    // The old container is gone, the new one is routed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while containers(&s.cluster)
        .iter()
        .any(|c| c.0.starts_with(&victim_id))
    {
        assert!(
            Instant::now() < deadline,
            "the failed container is removed\n{}",
            ctx(&s, &project)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = field_counts(&answers(&s, &project, &host, 30), "instance");
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([new_id, other_id]),
        "the replacement is routed"
    );
}

#[test]
fn sigkill_mid_rollout_resumes_with_right_counts() {
    let mut s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    s.write_service(
        &project,
        &web_toml(&host, 3, &[("VERSION", "v1")], HEALTH, ""),
    );
    s.cli(&["deploy"]);
    s.write_service(
        &project,
        &web_toml(
            &host,
            3,
            &[("VERSION", "v2"), ("READY_AFTER_MS", "3000")],
            HEALTH,
            "",
        ),
    );
    s.cli(&["deploy", "--no-wait"]);
    let before = wait_for(
        &s,
        &project,
        "the rollout progressing with a candidate created",
        Duration::from_secs(30),
        |v| {
            v["rollout"]["phase"] == "progressing"
                && v["rollout"]["candidate_count"].as_u64() >= Some(1)
                && instances(v).iter().any(|i| i["revision"] == 2)
        },
    );
    s.kill9();
    let at_kill = labelled(&s.cluster);
    eprintln!("killed mid-rollout; containers: {at_kill:?}");
    assert!(
        at_kill.iter().any(|c| c.1 == "2") && at_kill.iter().any(|c| c.1 == "1"),
        "killed mid-rollout: {at_kill:?}\n{before:#}"
    );
    std::thread::sleep(Duration::from_millis(500));
    s.spawn();

    // It resumes the same rollout (same record), not a new one.
    let resumed = s.service(&project, "web");
    if !resumed["rollout"].is_null() {
        assert_eq!(
            resumed["rollout"]["started_at_ms"],
            before["rollout"]["started_at_ms"],
            "the persisted rollout is resumed\n{}",
            ctx(&s, &project)
        );
        assert_eq!(resumed["rollout"]["candidate_revision"], 2);
    }
    wait_for(
        &s,
        &project,
        "the rollout done: 3 ready v2 instances and nothing else",
        Duration::from_secs(90),
        |v| {
            v["rollout"].is_null()
                && ready_on(v, 2) == 3
                && instances(v).len() == 3
                && labelled(&s.cluster).len() == 3
        },
    );
    let web = s.service(&project, "web");
    let slots: BTreeSet<u64> = instances(&web)
        .iter()
        .map(|i| i["slot"].as_u64().unwrap())
        .collect();
    assert_eq!(slots, BTreeSet::from([0, 1, 2]), "distinct slots: {web:#}");
    let cs = labelled(&s.cluster);
    assert_eq!(
        cs,
        vec![
            ("0".to_string(), "2".to_string(), "running".to_string()),
            ("1".to_string(), "2".to_string(), "running".to_string()),
            ("2".to_string(), "2".to_string(), "running".to_string()),
        ],
        "exactly 3 v2 containers, one per slot, v1 gone\n{}",
        ctx(&s, &project)
    );
    assert_eq!(
        field_counts(&answers(&s, &project, &host, 20), "version"),
        BTreeMap::from([("v2".to_string(), 20)])
    );
}

#[test]
fn rollback_to_an_older_revision_restores_image_and_env() {
    let s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    s.write_service(
        &project,
        &web_toml(
            &host,
            2,
            &[("VERSION", "v1"), ("GREETING", "a")],
            HEALTH,
            "",
        ),
    );
    s.cli(&["deploy"]);
    let v1_fp = instances(&s.service(&project, "web"))[0]["fingerprint"].clone();
    // Revision 2 also runs another image (the same bytes under a second tag).
    let image_v1 = testapp_image();
    let image_v2 = "orca-testapp:rollback-v2";
    let tagged = std::process::Command::new("docker")
        .args(["tag", image_v1, image_v2])
        .status()
        .unwrap();
    assert!(tagged.success());
    s.write_service(
        &project,
        &web_toml(
            &host,
            2,
            &[("VERSION", "v2"), ("GREETING", "b")],
            HEALTH,
            "",
        )
        .replace(
            &format!("image = \"{image_v1}\""),
            &format!("image = \"{image_v2}\""),
        ),
    );
    let out = s.cli(&["deploy"]);
    assert!(out.contains("revision 2 (changed)"), "{out}");
    let a = answers(&s, &project, &host, 10);
    assert_eq!(
        field_counts(&a, "version"),
        BTreeMap::from([("v2".into(), 10)])
    );
    assert_eq!(
        field_counts(&a, "greeting"),
        BTreeMap::from([("b".into(), 10)])
    );
    let v2 = s.service(&project, "web");
    let on = |v: &Value, rev: u64| -> Vec<Value> {
        instances(v)
            .into_iter()
            .filter(|i| i["revision"] == rev)
            .collect()
    };
    assert!(
        on(&v2, 2).len() == 2 && on(&v2, 2).iter().all(|i| i["image"] == image_v2),
        "revision 2 runs {image_v2}: {v2:#}"
    );

    let out = s.cli(&["rollback", "web", "--to", "1"]);
    assert!(
        out.contains("revision 1 restored as revision 3"),
        "{out}\n{}",
        ctx(&s, &project)
    );
    let web = wait_for(
        &s,
        &project,
        "revision 3 on both replicas, nothing else",
        Duration::from_secs(60),
        |v| {
            v["revision"] == 3
                && v["rollout"].is_null()
                && ready_on(v, 3) == 2
                && instances(v).len() == 2
        },
    );
    eprintln!(
        "v1 fingerprint {v1_fp}, restored {}",
        instances(&web)[0]["fingerprint"]
    );
    let a = answers(&s, &project, &host, 20);
    assert_eq!(
        field_counts(&a, "version"),
        BTreeMap::from([("v1".into(), 20)]),
        "{}",
        ctx(&s, &project)
    );
    assert_eq!(
        field_counts(&a, "greeting"),
        BTreeMap::from([("a".into(), 20)])
    );
    let restored = s.service(&project, "web");
    assert_eq!(restored["revision"], 3);
    assert_eq!(restored["image"], image_v1, "{restored:#}");
    assert!(
        on(&restored, 3).len() == 2 && on(&restored, 3).iter().all(|i| i["image"] == image_v1),
        "the rollback restored revision 1's image: {restored:#}"
    );
}

/// Operator requests are never lost: while a canary's automatic steps run (the strategy is
/// called every second and at each instance change), bursts of concurrent promote and
/// rollback requests hit ten successive rollouts. Every request the API accepted (200) is
/// consumed by the controller exactly once — one `rollout.request_applied` event each, applied
/// to its rollout or dropped because that rollout had already ended — and every rollout ends
/// (promoted or rolled back); a request the API refused (409: no rollout in progress) was
/// never recorded. 100 requests in all.
#[test]
fn promote_and_rollback_requests_sent_while_steps_run_are_never_lost() {
    const ROUNDS: usize = 10;
    const BURST: usize = 10;
    let s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    let extra = "[service.deploy]\nstrategy = \"canary\"\nsteps = [10, 20, 30, 40, 50, 60, 70, 80, 90]\nstep_interval_secs = 1\n";
    s.write_service(
        &project,
        &web_toml(&host, 2, &[("VERSION", "v1")], HEALTH, extra),
    );
    s.cli(&["deploy"]);
    let mut accepted = 0usize;
    let mut refused = 0usize;
    for round in 0..ROUNDS {
        let revision = round as u64 + 2;
        s.write_service(
            &project,
            &web_toml(
                &host,
                2,
                &[("VERSION", &format!("v{revision}"))],
                HEALTH,
                extra,
            ),
        );
        s.cli(&["deploy", "--no-wait"]);
        wait_for(
            &s,
            &project,
            &format!("rollout of revision {revision} progressing"),
            Duration::from_secs(60),
            |v| {
                v["rollout"]["phase"] == "progressing"
                    && v["rollout"]["candidate_revision"] == revision
            },
        );
        // A burst from BURST threads at once: promotes and rollbacks interleaved.
        let answers: Vec<(u16, String)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..BURST)
                .map(|i| {
                    let (api, project) = (s.api.clone(), project.clone());
                    scope.spawn(move || {
                        let what = if (round + i) % 3 == 0 {
                            "rollback"
                        } else {
                            "promote"
                        };
                        http_raw(
                            "POST",
                            &format!("{api}/api/v1/services/web/{what}?project={project}"),
                            Some(ADMIN),
                            &[],
                            None,
                        )
                        .expect("request")
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (code, body) in &answers {
            match code {
                200 => accepted += 1,
                409 => {
                    assert!(body.contains("no rollout in progress"), "{body}");
                    refused += 1;
                }
                _ => panic!("unexpected answer {code}: {body}\n{}", ctx(&s, &project)),
            }
        }
        wait_for(
            &s,
            &project,
            &format!("rollout of revision {revision} ended"),
            Duration::from_secs(60),
            |v| v["rollout"].is_null() || v["rollout"]["phase"] != "progressing",
        );
    }
    eprintln!("{accepted} requests accepted, {refused} refused (their rollout had ended)");
    assert_eq!(accepted + refused, ROUNDS * BURST);
    assert!(
        accepted >= ROUNDS,
        "at least the first of each burst is accepted"
    );

    // One applied event per accepted request (the event writer is asynchronous: poll).
    let deadline = Instant::now() + Duration::from_secs(30);
    let applied = loop {
        let (code, body) = http_raw(
            "GET",
            &format!(
                "{}/api/v1/events?service={project}/web&kind=rollout.request_applied&limit=1000",
                s.api
            ),
            Some(ADMIN),
            &[],
            None,
        )
        .unwrap();
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let events = v
            .as_array()
            .or_else(|| v["events"].as_array())
            .cloned()
            .unwrap_or_default();
        if events.len() >= accepted || Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let outcomes = field_counts(
        &applied
            .iter()
            .map(|e| e["fields"].clone())
            .collect::<Vec<_>>(),
        "outcome",
    );
    assert_eq!(
        applied.len(),
        accepted,
        "every accepted request consumed exactly once: {outcomes:?}\n{}",
        ctx(&s, &project)
    );
    assert!(
        outcomes.keys().any(|o| o.starts_with("applied")),
        "{outcomes:?}"
    );
    // Nothing is left pending: the last rollout ended and the service serves one revision.
    let web = s.service(&project, "web");
    assert!(
        web["rollout"].is_null() || web["rollout"]["phase"] != "progressing",
        "{web:#}"
    );
}
