//! End-to-end: strategy plugins drive real rollouts on the real Docker Engine.
//! A custom strategy built from its own crate (the SDK's blue-green example, for
//! `wasm32-wasip2`) is referenced by path in service.toml, uploaded by `orca deploy`, and its
//! decisions are applied; faulty strategies (an infinite loop, a memory bomb) are stopped,
//! their rollouts rolled back, while other services keep serving.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn version_of(s: &Server, host: &str) -> String {
    let (code, body) = s.proxy_get(host, "/").expect("proxy request");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["version"].as_str().unwrap().to_string()
}

fn running_count(cluster: &str) -> usize {
    containers(cluster)
        .iter()
        .filter(|c| c.2 == "running")
        .count()
}

fn service_toml(host: &str, version: &str, strategy: &str) -> String {
    testapp_service(
        "web",
        2,
        host,
        &format!("[service.env]\nVERSION = \"{version}\"\n\n[service.deploy]\nstrategy = \"{strategy}\"\n"),
    )
}

#[test]
fn custom_strategy_by_path_is_uploaded_and_its_decisions_applied() {
    let example = workspace().join("sdk/examples/blue-green");
    let wasm =
        build_guests(&example, "sdk-examples", "wasm32-wasip2", None).join("blue_green.wasm");
    let s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    let dir = s.write_service(&project, &service_toml(&host, "v1", "./blue-green.wasm"));
    std::fs::copy(&wasm, dir.join("blue-green.wasm")).unwrap();

    let inspect = s.cli(&[
        "plugin",
        "inspect",
        dir.join("blue-green.wasm").to_str().unwrap(),
    ]);
    assert!(
        inspect.contains("world:    strategy") && inspect.contains("orca:plugin@0.3.0"),
        "{inspect}"
    );

    s.cli(&["deploy"]);
    assert_eq!(version_of(&s, &host), "v1");

    // Watch the rollout from outside: blue-green starts a full candidate set beside the
    // stable one (4 containers at once), which the default rolling strategy (surge 1) never does.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (stop, peak, cluster) = (stop.clone(), peak.clone(), s.cluster.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(running_count(&cluster), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    s.write_service(&project, &service_toml(&host, "v2", "./blue-green.wasm"));
    let out = s.cli(&["deploy"]);
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    assert!(
        out.contains("revision 2 (changed)") && out.contains("all 1 service(s) running"),
        "{out}"
    );
    assert_eq!(
        peak.load(Ordering::Relaxed),
        4,
        "blue-green ran both full sets at once"
    );

    let web = s.service(&project, "web");
    assert!(web["rollout"].is_null(), "the rollout finished: {web:#}");
    for _ in 0..10 {
        assert_eq!(version_of(&s, &host), "v2");
    }
    // The old set is stopped once the new one serves (it may still be draining right now).
    let deadline = Instant::now() + Duration::from_secs(30);
    while running_count(&s.cluster) != 2 {
        assert!(
            Instant::now() < deadline,
            "old instances removed: {:?}",
            containers(&s.cluster)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Installed under a name, a component is listed with its world and usable by that name.
    let out = s.cli(&["plugin", "install", wasm.to_str().unwrap(), "--name", "bg"]);
    assert!(out.contains("installed bg (strategy plugin)"), "{out}");
    let plugins = s.cli(&["plugin", "list"]);
    for name in [
        "rolling",
        "canary",
        "spread",
        "http-probe",
        "tcp-probe",
        "github",
        "gitea",
        "gitlab",
        "git-build",
    ] {
        assert!(plugins.contains(name), "built-in {name} listed: {plugins}");
    }
    assert!(
        plugins
            .lines()
            .any(|l| l.starts_with("bg ") && l.contains("strategy") && l.contains("installed")),
        "{plugins}"
    );
    s.write_service(&project, &service_toml(&host, "v3", "bg"));
    let out = s.cli(&["deploy"]);
    assert!(out.contains("revision 3 (changed)"), "{out}");
    assert_eq!(version_of(&s, &host), "v3");
    // A reference to nothing is refused at deploy, naming the built-ins.
    s.write_service(&project, &service_toml(&host, "v4", "nosuch"));
    let out = s.cli_in(ADMIN, None, &["deploy"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown plugin \"nosuch\"") && err.contains("rolling"),
        "{err}"
    );
}

#[test]
fn faulty_strategies_roll_back_while_other_services_keep_serving() {
    let faults = workspace().join("plugins/faults");
    let guests = build_guests(&faults, "faults", "wasm32-unknown-unknown", None);
    // A generous deadline and a small memory cap, so each fault meets its own limit first.
    let s = Server::start_with("[plugins]\ncall_deadline_ms = 500\nmemory_limit_mib = 16\n");
    let project = unique("p");
    let steady_host = format!("{project}-steady.test");
    let mut toml = testapp_service("steady", 1, &steady_host, "");
    for (name, guest) in [("loop", "spin"), ("bomb", "membomb")] {
        toml.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\nimage = \"{}\"\nreplicas = 1\nport = 8080\ndomain = \"{name}-{project}.test\"\nhealth = \"/healthz\"\n[service.env]\nVERSION = \"v1\"\n[service.deploy]\nstrategy = \"./{guest}.wasm\"\n",
            testapp_image()
        ));
    }
    let dir = s.write_service(&project, &toml);
    for guest in ["spin", "membomb"] {
        std::fs::copy(
            guests.join(format!("{guest}.wasm")),
            dir.join(format!("{guest}.wasm")),
        )
        .unwrap();
    }
    // First deploy: nothing to roll out from, no strategy call.
    s.cli(&["deploy"]);

    // Keep calling the steady service while the faulty rollouts run.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, failures, calls, http, host) = (
            stop.clone(),
            failures.clone(),
            calls.clone(),
            s.http,
            steady_host.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let ok = matches!(
                    http_raw(
                        "GET",
                        &format!("http://{http}/"),
                        None,
                        &[("Host", &host)],
                        None
                    ),
                    Ok((200, _))
                );
                calls.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let started = Instant::now();
    let toml_v2 = toml.replace("VERSION = \"v1\"", "VERSION = \"v2\"");
    s.write_service(&project, &toml_v2);
    let out2 = s.cli_in(ADMIN, None, &["deploy", "--timeout-secs", "60"]);
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(
        !out2.status.success(),
        "the faulty rollouts are reported as rolled back"
    );
    let err = String::from_utf8_lossy(&out2.stderr);
    assert!(err.contains("rolled back"), "{err}");

    for (name, expect) in [("loop", "deadline"), ("bomb", "memory")] {
        let svc = s.wait_service(&project, name, "rolled back", |v| {
            v["rollout"]["phase"] == "rolled-back"
        });
        let reason = svc["rollout"]["reason"].as_str().unwrap().to_lowercase();
        assert!(reason.contains(expect), "{name}: {reason}");
        // The stable revision keeps serving.
        assert_eq!(version_of(&s, &format!("{name}-{project}.test")), "v1");
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "the steady service never failed"
    );
    assert!(calls.load(Ordering::Relaxed) > 10);
    assert!(
        took < Duration::from_secs(60),
        "faults are contained quickly: {took:?}"
    );
    let (code, _) = http_raw("GET", &format!("{}/api/v1/health", s.api), None, &[], None).unwrap();
    assert_eq!(code, 200);
}

#[test]
fn a_canary_whose_proxied_5xx_rate_exceeds_the_threshold_is_rolled_back() {
    let s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    let toml = |v: &str| {
        testapp_service(
            "web",
            2,
            &host,
            &format!("[service.env]\nVERSION = \"{v}\"\n\n[service.deploy]\nstrategy = \"canary\"\ncanary_weight = 50\n\n[service.deploy.params]\nmax_error_rate = 0.1\nmin_requests = 10\n"),
        )
    };
    s.write_service(&project, &toml("v1"));
    s.cli(&["deploy"]);
    s.write_service(&project, &toml("v2"));
    s.cli(&["deploy", "--no-wait"]);
    s.wait_service(&project, "web", "canary live", |v| {
        v["rollout"]["traffic"]["candidate"] == 50
            && v["instances"]
                .as_array()
                .is_some_and(|is| is.iter().any(|i| i["revision"] == 2 && i["ready"] == true))
    });
    // Requests that fail with 500 on whichever replica answers them: the canary's share
    // pushes its proxied 5xx rate over max_error_rate.
    for _ in 0..60 {
        let (code, _) = s.proxy_get(&host, "/status/500").unwrap();
        assert_eq!(code, 500);
    }
    let web = s.wait_service(&project, "web", "rolled back", |v| {
        v["rollout"]["phase"] == "rolled-back"
    });
    let reason = web["rollout"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("5xx rate") && reason.contains("max_error_rate"),
        "{reason}"
    );
    // Only the stable revision serves afterwards.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let versions: std::collections::BTreeSet<String> =
            (0..10).map(|_| version_of(&s, &host)).collect();
        if versions.len() == 1 && versions.contains("v1") {
            break;
        }
        assert!(Instant::now() < deadline, "still serving {versions:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The operator's rollback reaches the strategy (`rollback-requested`) and the strategy's own
/// answer is what happens: blue-green rolls back with its reason, not the host's.
#[test]
fn operator_rollback_reaches_the_strategy_and_its_reason_is_shown() {
    let example = workspace().join("sdk/examples/blue-green");
    let wasm =
        build_guests(&example, "sdk-examples", "wasm32-wasip2", None).join("blue_green.wasm");
    let s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    let toml = |version: &str, health: &str| {
        service_toml(&host, version, "./blue-green.wasm")
            .replace("health = \"/healthz\"", &format!("health = \"{health}\""))
            + "\n[service.deploy.params]\nready_timeout_ms = 120000\n"
    };
    let dir = s.write_service(&project, &toml("v1", "/healthz"));
    std::fs::copy(&wasm, dir.join("blue-green.wasm")).unwrap();
    s.cli(&["deploy"]);
    assert_eq!(version_of(&s, &host), "v1");

    // Revision 2's candidates never become ready: blue-green waits (up to 120 s) for them.
    s.write_service(&project, &toml("v2", "/nope"));
    s.cli(&["deploy", "--no-wait"]);
    s.wait_service(
        &project,
        "web",
        "blue-green waiting for its green set",
        |v| v["rollout"]["phase"] == "progressing" && instances_on(v, 2) == 2,
    );
    let out = s.cli(&["rollback", "web"]);
    assert!(out.contains("rollout of revision 2 abandoned"), "{out}");
    let web = s.wait_service(&project, "web", "rolled back by blue-green", |v| {
        !v["rolled_back"].is_null() && instances_on(v, 2) == 0
    });
    let reason = web["rolled_back"]["reason"].as_str().unwrap_or_default();
    assert_eq!(
        reason, "rollback requested by an operator",
        "the strategy's own reason, not the host's fallback: {web:#}"
    );
    assert_eq!(web["revision"], 1, "{web:#}");
    assert_eq!(version_of(&s, &host), "v1");
}

fn instances_on(v: &Value, revision: u64) -> usize {
    v["instances"].as_array().map_or(0, |a| {
        a.iter().filter(|i| i["revision"] == revision).count()
    })
}

/// `check-params` (orca:plugin@0.3.0): a strategy refuses a bad parameter at `orca deploy`,
/// the error names the service, the plugin as the file wrote it and the parameter, and nothing
/// is stored (the next deploy of the good file is "unchanged", the old revision keeps serving).
#[test]
fn bad_strategy_parameters_are_refused_at_deploy_naming_parameter_and_plugin() {
    let example = workspace().join("sdk/examples/blue-green");
    let wasm =
        build_guests(&example, "sdk-examples", "wasm32-wasip2", None).join("blue_green.wasm");
    let s = Server::start();
    let project = unique("p");
    let host = format!("{project}.test");
    let good = service_toml(&host, "v1", "./blue-green.wasm");
    let dir = s.write_service(&project, &good);
    std::fs::copy(&wasm, dir.join("blue-green.wasm")).unwrap();
    let out = s.cli(&["deploy"]);
    assert!(out.contains("revision 1 (changed)"), "{out}");
    assert_eq!(version_of(&s, &host), "v1");

    let refused = |toml: &str| -> String {
        s.write_service(&project, toml);
        let out = s.cli_in(ADMIN, None, &["deploy"]);
        assert!(!out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // The custom plugin's own check, named by the path the file wrote.
    let err = refused(&format!(
        "{}\n[service.deploy.params]\nready_timeout_ms = \"abc\"\n",
        service_toml(&host, "v2", "./blue-green.wasm")
    ));
    assert!(
        err.contains("service \"web\"")
            && err.contains("strategy ./blue-green.wasm (sha256:")
            && err.contains("refuses parameter \"ready_timeout_ms\"")
            && err.contains("\"abc\""),
        "{err}"
    );
    // A built-in's check: canary's max_error_rate (free-form params pass the config).
    let err = refused(&format!(
        "{}canary_weight = 20\n\n[service.deploy.params]\nmax_error_rate = 5.0\n",
        service_toml(&host, "v2", "canary")
    ));
    assert!(
        err.contains("strategy canary refuses parameter \"max_error_rate\"")
            && err.contains("allowed 0.0 to 1.0"),
        "{err}"
    );
    // A deploy setting out of range is the config's refusal, naming the field.
    let err = refused(&format!(
        "{}canary_weight = 150\n",
        service_toml(&host, "v2", "canary")
    ));
    assert!(
        err.contains("canary_weight") && err.contains("1 to 99"),
        "{err}"
    );

    // Nothing was stored: the good file is still revision 1, which still serves.
    s.write_service(&project, &good);
    let out = s.cli(&["deploy"]);
    assert!(out.contains("revision 1 (unchanged)"), "{out}");
    assert_eq!(version_of(&s, &host), "v1");
}
