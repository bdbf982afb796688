//! The plugin runtime (`orca::plugins`) through real wasmtime, with the purpose-built guests
//! of `plugins/faults/` (built once per test process by `guests()`): the happy paths of each
//! world, the disk cache, and every fault a plugin can commit, after which the same runtime
//! must still serve.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
mod support;

use orca::plugins::*;
use sha2::Sha256;

// ---- guests ----

/// Paths of the built guests.
struct Guests {
    /// `wasm32-unknown-unknown` release dir (components importing only `orca:plugin`).
    dir: PathBuf,
    /// echo-strategy built for `wasm32-wasip2` (std imports `wasi:*`).
    wasip2_echo: PathBuf,
}

impl Guests {
    fn bytes(&self, name: &str) -> Vec<u8> {
        let path = self.dir.join(format!("{}.wasm", name.replace('-', "_")));
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }
}

/// Builds `plugins/faults` once per test process (a no-op of a few tens of ms when nothing
/// changed) and returns where the components are.
fn guests() -> &'static Guests {
    static GUESTS: OnceLock<Guests> = OnceLock::new();
    GUESTS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let faults = root.join("plugins/faults");
        let target = root.join("target/faults");
        let dir = support::build_guests(&faults, "faults", "wasm32-unknown-unknown", None);
        support::build_guests(&faults, "faults", "wasm32-wasip2", Some("echo-strategy"));
        Guests {
            dir,
            wasip2_echo: target.join("wasm32-wasip2/release/echo_strategy.wasm"),
        }
    })
}

fn origin(name: &str) -> PluginOrigin {
    PluginOrigin::Path(PathBuf::from(format!("{name}.wasm")))
}

fn runtime(limits: RuntimeLimits) -> PluginRuntime {
    PluginRuntime::new(limits, None).expect("runtime")
}

fn load(rt: &PluginRuntime, name: &str) -> Plugin {
    rt.load(&guests().bytes(name), origin(name))
        .unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

// ---- inputs ----

fn instance(i: usize, revision: u64) -> Instance {
    Instance {
        id: format!("i{i}"),
        node: "local".into(),
        revision,
        readiness: Readiness::Ready,
        age_ms: 1000 * i as u64,
    }
}

fn pair(key: &str, value: &str) -> Pair {
    Pair {
        key: key.into(),
        value: value.into(),
    }
}

fn rollout_state(params: Vec<Pair>) -> RolloutState {
    RolloutState {
        service: Service {
            project: "demo".into(),
            name: "web".into(),
            image: "demo/web:2".into(),
            replicas: 4,
            port: Some(8080),
            domain: Some("web.example".into()),
            params,
        },
        stable_revision: Some(1),
        candidate_revision: 2,
        stable: (0..10).map(|i| instance(i, 1)).collect(),
        candidate: (0..3).map(|i| instance(i, 2)).collect(),
        traffic: Traffic {
            stable: 100,
            candidate: 0,
        },
        candidate_requests: 0,
        candidate_errors: 0,
        elapsed_ms: 5000,
        now_ms: 1_700_000_000_000,
        promote_requested: false,
        rollback_requested: false,
        plugin_state: vec![1, 2],
    }
}

fn nodes(n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| Node {
            id: format!("node-{i}"),
            name: format!("host{i}"),
            address: format!("10.0.{}.{}", i / 256, i % 256),
            cpu_millis: 4000,
            cpu_millis_free: 2000,
            memory_bytes: 16 << 30,
            memory_bytes_free: (i as u64 + 1) << 28,
            instances: i as u32 % 7,
            draining: i == 3,
            labels: vec![Pair {
                key: "zone".into(),
                value: format!("z{}", i % 3),
            }],
        })
        .collect()
}

fn placement_request() -> PlacementRequest {
    PlacementRequest {
        service: rollout_state(vec![]).service,
        pin: None,
        memory_bytes: 512 << 20,
        cpu_millis: 100,
        existing: vec![NodeCount {
            node: "node-1".into(),
            count: 2,
        }],
    }
}

// ---- happy paths ----

#[test]
fn echo_strategy_plans_the_expected_step() {
    let rt = runtime(RuntimeLimits::default());
    let plugin = load(&rt, "echo-strategy");
    assert_eq!(plugin.world(), World::Strategy);
    assert_eq!(plugin.name(), "echo-strategy");
    let state = rollout_state(vec![]);
    let step = plugin.plan(&state).expect("plan");
    assert_eq!(
        step,
        Step {
            actions: vec![
                Action::ScaleCandidate(4),
                Action::SetTraffic(Traffic {
                    stable: 90,
                    candidate: 10
                }),
                Action::WaitUntil(state.now_ms + 1000),
            ],
            plugin_state: vec![1, 2, 3],
        }
    );
    let rollback = plugin
        .plan(&RolloutState {
            rollback_requested: true,
            ..state
        })
        .expect("plan");
    assert_eq!(rollback.actions, vec![Action::Rollback("requested".into())]);
}

#[test]
fn echo_placement_scores_100_nodes() {
    let rt = runtime(RuntimeLimits::default());
    let plugin = load(&rt, "echo-placement");
    assert_eq!(plugin.world(), World::Placement);
    let nodes = nodes(100);
    let verdicts = plugin.place(&placement_request(), &nodes).expect("place");
    assert_eq!(verdicts.len(), 100);
    for (v, n) in verdicts.iter().zip(&nodes) {
        assert_eq!(v.node, n.id);
        assert_eq!(v.score as u64, n.memory_bytes_free >> 20);
    }
    // node-0 and node-1 have 256/512 MiB free (< 512 MiB asked for node-0), node-3 drains.
    assert!(!verdicts[0].feasible && verdicts[0].reason.contains("memory"));
    assert!(verdicts[1].feasible);
    assert!(!verdicts[3].feasible && verdicts[3].reason == "draining");
}

// ---- components built against the released orca:plugin@0.1.0 ----

/// `orca plugin inspect FILE` of the real binary, its standard output.
fn cli_inspect(name: &str) -> String {
    let path = guests()
        .dir
        .join(format!("{}.wasm", name.replace('-', "_")));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orca"))
        .args(["plugin", "inspect"])
        .arg(&path)
        .output()
        .expect("running orca plugin inspect");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn placement_built_against_0_1_0_keeps_working() {
    let bytes = guests().bytes("compat-placement-0-1");
    let info = inspect(&bytes).unwrap();
    assert_eq!(info.world, Some(World::Placement));
    assert_eq!(info.package.as_deref(), Some("orca:plugin@0.1.0"));
    assert!(
        info.imports
            .contains(&"orca:plugin/logging@0.1.0".to_string()),
        "{:?}",
        info.imports
    );
    let shown = cli_inspect("compat-placement-0-1");
    assert!(
        shown.contains("world:    placement") && shown.contains("package:  orca:plugin@0.1.0"),
        "{shown}"
    );

    let rt = runtime(RuntimeLimits::default());
    let old = load(&rt, "compat-placement-0-1");
    assert_eq!(old.world(), World::Placement);
    assert_eq!(old.package(), "orca:plugin@0.1.0");
    let live = load(&rt, "echo-placement");
    assert_eq!(live.package(), "orca:plugin@0.3.0");

    // The 0.1.0 records reach it intact: ids, `existing` by id (node-1 runs 2 instances:
    // 512 MiB - 2000 saturates to 0), verdicts by id come back as orca's verdicts.
    let nodes = nodes(100);
    let verdicts = old.place(&placement_request(), &nodes).expect("place");
    assert_eq!(verdicts.len(), 100);
    for (v, n) in verdicts.iter().zip(&nodes) {
        assert_eq!(v.node, n.id);
    }
    assert!(!verdicts[0].feasible && verdicts[0].reason == "not enough free memory");
    assert!(
        verdicts[1].feasible && verdicts[1].score == 0,
        "{:?}",
        verdicts[1]
    );
    assert!(!verdicts[3].feasible && verdicts[3].reason == "draining");
    assert!(verdicts[5].feasible && verdicts[5].score == 1536);
    // Feasibility agrees with the live-contract guest of the same policy.
    let live_verdicts = live.place(&placement_request(), &nodes).unwrap();
    assert_eq!(
        verdicts.iter().map(|v| v.feasible).collect::<Vec<_>>(),
        live_verdicts.iter().map(|v| v.feasible).collect::<Vec<_>>()
    );

    // The pin is matched by the plugin against names, as 0.1.0 specifies.
    let pinned = old
        .place(
            &PlacementRequest {
                pin: Some("host1".into()),
                ..placement_request()
            },
            &nodes,
        )
        .unwrap();
    let feasible: Vec<&str> = pinned
        .iter()
        .filter(|v| v.feasible)
        .map(|v| v.node.as_str())
        .collect();
    assert_eq!(feasible.len(), 11, "{feasible:?}"); // host1, host10..host19
    assert!(pinned[2].reason.contains("not host1"), "{:?}", pinned[2]);
}

#[test]
fn strategy_built_against_0_1_0_keeps_working() {
    let bytes = guests().bytes("compat-strategy-0-1");
    let info = inspect(&bytes).unwrap();
    assert_eq!(info.world, Some(World::Strategy));
    assert_eq!(info.package.as_deref(), Some("orca:plugin@0.1.0"));
    let rt = runtime(RuntimeLimits::default());
    let old = load(&rt, "compat-strategy-0-1");
    assert_eq!(old.package(), "orca:plugin@0.1.0");
    // Its step is the live echo-strategy's for the same state.
    let state = rollout_state(vec![]);
    let step = old.plan(&state).expect("plan");
    assert_eq!(step, load(&rt, "echo-strategy").plan(&state).unwrap());
    assert_eq!(step.plugin_state, vec![1, 2, 3]);
}

#[test]
fn strategy_built_against_0_2_0_keeps_working_without_a_parameter_check() {
    let bytes = guests().bytes("compat-strategy-0-2");
    let info = inspect(&bytes).unwrap();
    assert_eq!(info.world, Some(World::Strategy));
    assert_eq!(info.package.as_deref(), Some("orca:plugin@0.2.0"));
    assert!(
        !info.exports.iter().any(|e| e == "check-params"),
        "{info:?}"
    );
    let rt = runtime(RuntimeLimits::default());
    let old = load(&rt, "compat-strategy-0-2");
    assert_eq!(old.package(), "orca:plugin@0.2.0");
    let state = rollout_state(vec![]);
    let step = old.plan(&state).expect("plan");
    assert_eq!(step, load(&rt, "echo-strategy").plan(&state).unwrap());
    // It has no check-params: every parameter passes the deploy-time check.
    let service = rollout_state(vec![pair("step", "\"abc\"")]).service;
    assert_eq!(old.check_params(&service).unwrap(), None);
}

#[test]
fn strategy_checks_its_parameters_and_a_faulty_check_is_contained() {
    let rt = runtime(RuntimeLimits::default());
    let echo = load(&rt, "echo-strategy");
    let service = |params| rollout_state(params).service;
    assert_eq!(
        echo.check_params(&service(vec![pair("step", "5")]))
            .unwrap(),
        None
    );
    let refused = echo
        .check_params(&service(vec![pair("step", "\"abc\"")]))
        .unwrap()
        .expect("refused");
    assert_eq!(refused.key, "step");
    assert!(refused.message.contains("\"abc\""), "{refused:?}");
    // A check that traps is the plugin's fault, named, and the runtime keeps serving.
    let trap = load(&rt, "trap");
    let err = trap
        .check_params(&service(vec![pair("trap_in_check", "true")]))
        .unwrap_err();
    assert!(matches!(err, PluginError::Trap { .. }), "{err}");
    assert_eq!(trap.check_params(&service(vec![])).unwrap(), None);
    // Another world's plugin has no parameter check.
    let err = load(&rt, "echo-placement")
        .check_params(&service(vec![]))
        .unwrap_err();
    assert!(matches!(err, PluginError::WrongWorld { .. }), "{err}");
}

#[test]
fn component_of_an_unserved_version_is_refused_at_load() {
    let rt = runtime(RuntimeLimits::default());
    let err = rt
        .load(&guests().bytes("future-version"), origin("future-version"))
        .unwrap_err();
    assert!(
        matches!(&err, PluginError::Invalid { reason, .. }
            if reason.contains("orca:plugin@9.0.0") && reason.contains("0.1.x, 0.2.x and 0.3.x")),
        "{err}"
    );
    let info = inspect(&guests().bytes("future-version")).unwrap();
    assert_eq!(info.package.as_deref(), Some("orca:plugin@9.0.0"));
}

#[test]
fn second_runtime_loads_from_the_disk_cache() {
    let home = tempfile::tempdir().unwrap();
    let dir = cache_dir(home.path());
    let bytes = guests().bytes("echo-placement");

    let first = PluginRuntime::new(RuntimeLimits::default(), Some(dir.clone())).unwrap();
    let started = Instant::now();
    first.load(&bytes, origin("echo-placement")).unwrap();
    let compile = started.elapsed();
    assert_eq!(
        first.stats(),
        RuntimeStats {
            compiled: 1,
            disk_hits: 0,
            memory_hits: 0
        }
    );
    first.load(&bytes, origin("again")).unwrap();
    assert_eq!(
        first.stats().memory_hits,
        1,
        "same bytes load once per runtime"
    );

    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        entries.len(),
        1,
        "one artifact, no temp file left: {entries:?}"
    );
    assert_eq!(entries[0].extension().unwrap(), "cwasm");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // A new runtime (as a restarted process would) deserializes instead of compiling.
    let second = PluginRuntime::new(RuntimeLimits::default(), Some(dir.clone())).unwrap();
    let started = Instant::now();
    let plugin = second.load(&bytes, origin("echo-placement")).unwrap();
    let cached = started.elapsed();
    assert_eq!(
        second.stats(),
        RuntimeStats {
            compiled: 0,
            disk_hits: 1,
            memory_hits: 0
        }
    );
    assert_eq!(
        plugin.place(&placement_request(), &nodes(5)).unwrap().len(),
        5
    );
    eprintln!("compile + cache write: {compile:?}; load from disk cache: {cached:?}");
    assert!(
        cached < compile,
        "disk load {cached:?} not faster than compile {compile:?}"
    );

    // A corrupt entry is ignored and replaced, not trusted.
    std::fs::write(&entries[0], b"garbage").unwrap();
    let third = PluginRuntime::new(RuntimeLimits::default(), Some(dir)).unwrap();
    third.load(&bytes, origin("echo-placement")).unwrap();
    assert_eq!(third.stats().compiled, 1);
}

#[test]
fn concurrent_calls_share_one_plugin() {
    let rt = runtime(RuntimeLimits::default());
    let plugin = load(&rt, "echo-strategy");
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let plugin = plugin.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    assert_eq!(
                        plugin.plan(&rollout_state(vec![])).unwrap().actions.len(),
                        3
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

// ---- faults ----

#[test]
fn faults_are_contained_and_the_host_keeps_serving() {
    let rt = runtime(RuntimeLimits {
        call_deadline: Duration::from_millis(100),
        memory_bytes: 16 << 20,
        ..RuntimeLimits::default()
    });
    let state = rollout_state(vec![]);

    // An infinite loop is interrupted at its deadline.
    let spin = load(&rt, "spin");
    let started = Instant::now();
    let err = spin.plan(&state).unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, PluginError::Timeout { ref plugin, deadline } if plugin == "spin" && deadline == Duration::from_millis(100)),
        "{err:?}"
    );
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_secs(1),
        "took {took:?}"
    );
    eprintln!("spin stopped after {took:?}");

    // An allocation bomb hits the 16 MiB cap.
    let err = load(&rt, "membomb").plan(&state).unwrap_err();
    assert!(
        matches!(err, PluginError::MemoryExceeded { limit, .. } if limit == 16 << 20),
        "{err:?}"
    );

    // A panic is a trap with a reason.
    let err = load(&rt, "trap").plan(&state).unwrap_err();
    match &err {
        PluginError::Trap { plugin, reason } => {
            assert_eq!(plugin, "trap");
            assert!(!reason.is_empty());
            eprintln!("trap reason: {reason}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert!(err.is_plugin_fault());

    // Output the host must not act on.
    let malformed = load(&rt, "malformed");
    for (mode, needle) in [
        ("state", "plugin-state"),
        ("scale", "1000"),
        ("traffic", "both weights zero"),
    ] {
        let params = vec![Pair {
            key: "mode".into(),
            value: format!("\"{mode}\""),
        }];
        let err = malformed.plan(&rollout_state(params)).unwrap_err();
        assert!(
            matches!(&err, PluginError::InvalidOutput { reason, .. } if reason.contains(needle)),
            "{mode}: {err:?}"
        );
    }

    // A method of another world.
    let echo = load(&rt, "echo-strategy");
    let err = echo.place(&placement_request(), &nodes(2)).unwrap_err();
    assert!(
        matches!(
            err,
            PluginError::WrongWorld {
                expected: World::Placement,
                found: World::Strategy,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_plugin_fault());

    // Not components.
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for (what, bytes) in [
        ("random bytes", random),
        ("core module", b"\0asm\x01\0\0\0".to_vec()),
        (
            "truncated component",
            guests().bytes("echo-strategy")[..200].to_vec(),
        ),
        ("empty", Vec::new()),
    ] {
        let err = rt.load(&bytes, origin(what)).unwrap_err();
        assert!(
            matches!(err, PluginError::Invalid { .. }),
            "{what}: {err:?}"
        );
        eprintln!("{what}: {err}");
    }

    // The same runtime, and the faulty plugins' neighbours, still serve; so does a retry.
    assert_eq!(echo.plan(&state).unwrap().actions.len(), 3);
    assert!(matches!(
        spin.plan(&state),
        Err(PluginError::Timeout { .. })
    ));
    assert_eq!(echo.plan(&state).unwrap().actions.len(), 3);
}

#[test]
fn wasip2_guest_loads_and_runs_without_wasi() {
    let bytes = std::fs::read(&guests().wasip2_echo).unwrap();
    let info = inspect(&bytes).unwrap();
    eprintln!("wasip2 echo-strategy imports: {:?}", info.imports);
    assert!(
        info.imports.iter().any(|i| i.starts_with("wasi:")),
        "{:?}",
        info.imports
    );
    let rt = runtime(RuntimeLimits::default());
    let plugin = rt
        .load(&bytes, origin("echo-strategy-wasip2"))
        .expect("wasi imports must not block loading");
    let step = plugin
        .plan(&rollout_state(vec![]))
        .expect("a guest not calling WASI runs");
    assert_eq!(step.actions.len(), 3);
}

#[test]
fn inspect_describes_a_component() {
    let bytes = guests().bytes("echo-probe");
    let info = inspect(&bytes).unwrap();
    assert_eq!(info.world, Some(World::Probe));
    assert_eq!(info.package.as_deref(), Some("orca:plugin@0.3.0"));
    assert!(
        info.imports
            .contains(&"orca:plugin/endpoint@0.3.0".to_string()),
        "{:?}",
        info.imports
    );
    assert_eq!(info.exports, vec!["check".to_string()]);
    assert_eq!(info.size, bytes.len());
    assert_eq!(info.sha256.len(), 64);
    let rt = runtime(RuntimeLimits::default());
    assert_eq!(rt.inspect(&bytes).unwrap(), info);
    assert!(matches!(
        inspect(b"\0asm\x01\0\0\0"),
        Err(PluginError::Invalid { .. })
    ));
}

// ---- probe ----

/// A tiny HTTP server: 200 on `/healthy`, 500 otherwise; records request lines.
fn http_server() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            let line = request.lines().next().unwrap_or_default().to_string();
            log.lock().unwrap().push(request);
            let (status, body) = if line.starts_with("GET /healthy ") {
                ("200 OK", "ok")
            } else {
                ("500 Internal Server Error", "boom")
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, seen)
}

/// Records what the guest asks of its endpoint, delegating to a real one.
struct Recording {
    inner: TcpEndpoint,
    calls: Mutex<Vec<String>>,
}

impl EndpointCap for Recording {
    fn address(&self) -> String {
        self.calls.lock().unwrap().push("address".into());
        self.inner.address()
    }
    fn http_get(
        &self,
        path: &str,
        headers: &[Pair],
        timeout: Duration,
    ) -> Result<HttpResponse, String> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("GET {path} {timeout:?}"));
        self.inner.http_get(path, headers, timeout)
    }
    fn tcp_connect(&self, timeout: Duration) -> Result<(), String> {
        self.calls.lock().unwrap().push("connect".into());
        self.inner.tcp_connect(timeout)
    }
}

#[test]
fn probe_checks_its_bound_endpoint_only() {
    let (addr, seen) = http_server();
    let rt = runtime(RuntimeLimits::default());
    let probe = load(&rt, "echo-probe");
    assert_eq!(probe.world(), World::Probe);
    let settings = |path: &str| ProbeSettings {
        path: Some(path.into()),
        timeout_ms: 500,
        params: vec![],
    };

    let endpoint = Arc::new(Recording {
        inner: TcpEndpoint::new(addr),
        calls: Mutex::new(vec![]),
    });
    assert_eq!(
        probe
            .check(&settings("/healthy"), endpoint.clone())
            .unwrap(),
        Ok(())
    );
    let reason = probe
        .check(&settings("/sick"), endpoint.clone())
        .unwrap()
        .unwrap_err();
    assert!(
        reason.contains("500") && reason.contains(&addr.to_string()),
        "{reason}"
    );
    assert_eq!(
        *endpoint.calls.lock().unwrap(),
        vec![
            "address",
            "GET /healthy 500ms",
            "address",
            "GET /sick 500ms"
        ],
        "the guest reaches the network only through its capability"
    );
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    assert!(
        requests
            .iter()
            .all(|r| r.contains(&format!("Host: {addr}"))),
        "{requests:?}"
    );

    // TCP mode, and an endpoint nobody listens on: unhealthy, not an error.
    let tcp = ProbeSettings {
        path: None,
        timeout_ms: 200,
        params: vec![Pair {
            key: "tcp".into(),
            value: "true".into(),
        }],
    };
    assert_eq!(
        probe.check(&tcp, Arc::new(TcpEndpoint::new(addr))).unwrap(),
        Ok(())
    );
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let reason = probe
        .check(&settings("/healthy"), Arc::new(TcpEndpoint::new(closed)))
        .unwrap()
        .unwrap_err();
    assert!(reason.contains(&closed.to_string()), "{reason}");

    // A probe method on a strategy, a strategy method on a probe.
    let err = load(&rt, "echo-strategy")
        .check(&settings("/"), Arc::new(TcpEndpoint::new(addr)))
        .unwrap_err();
    assert!(
        matches!(
            err,
            PluginError::WrongWorld {
                expected: World::Probe,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(matches!(
        probe.plan(&rollout_state(vec![])),
        Err(PluginError::WrongWorld { .. })
    ));
}

// ---- webhook ----

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[test]
fn webhook_verifies_signatures_with_host_crypto() {
    let rt = runtime(RuntimeLimits::default());
    let hook = load(&rt, "echo-webhook");
    assert_eq!(hook.world(), World::Webhook);
    let hooks = vec![Hook {
        id: "h1".into(),
        repo: "acme/web".into(),
        branch: "main".into(),
        secret: "It's a Secret to Everybody".into(),
    }];
    let body = br#"{"zen":"Keep it logically awesome."}"#.to_vec();
    let request = |signature: &str, extra: &[(&str, &str)]| {
        let mut headers = vec![Pair {
            key: "X-Hub-Signature-256".into(),
            value: signature.into(),
        }];
        headers.extend(extra.iter().map(|(k, v)| Pair {
            key: k.to_string(),
            value: v.to_string(),
        }));
        WebhookRequest {
            method: "POST".into(),
            path: "/hooks/h1".into(),
            headers,
            body: body.clone(),
        }
    };
    let good = sign(&hooks[0].secret, &body);

    let out = hook
        .handle(&request(&good, &[("X-GitHub-Event", "ping")]), &hooks)
        .unwrap();
    assert_eq!(out, Ok(WebhookOutcome::Pong));
    let out = hook
        .handle(
            &request(&good, &[("X-GitHub-Event", "push"), ("X-Commit", "abc123")]),
            &hooks,
        )
        .unwrap();
    assert_eq!(
        out,
        Ok(WebhookOutcome::Redeploy(vec![Redeploy {
            hook: "h1".into(),
            repo: "acme/web".into(),
            branch: "main".into(),
            commit: "abc123".into()
        }]))
    );
    let bad = sign("another secret", &body);
    let out = hook
        .handle(&request(&bad, &[("X-GitHub-Event", "ping")]), &hooks)
        .unwrap();
    assert!(matches!(out, Err(Rejection { status: 401, .. })), "{out:?}");
    let out = hook.handle(&request("sha256=zz", &[]), &hooks).unwrap();
    assert!(matches!(out, Err(Rejection { status: 401, .. })), "{out:?}");
}
