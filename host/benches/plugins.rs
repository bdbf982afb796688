//! Plugin runtime costs: (a) a cold load from the disk cache (a new runtime loading bytes
//! whose precompiled artifact exists), (b) one call in a fresh store: `plan` with 10 stable
//! instances (echo-strategy) and `place` over 100 nodes (echo-placement, live contract
//! 0.2.0; and compat-placement-0-1, a component built against the released 0.1.0, through the
//! host's adapter: the 0.1.0 node records with ids, names, addresses and labels; and the
//! built-in `spread` with a pin and existing instances, the SDK's glue included).
//!
//! Run: `cargo bench -p orca --bench plugins` (builds `plugins/faults` first if needed).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use orca::plugins::*;

/// Builds the guests of `plugins/faults` with a clean environment; returns their dir.
fn guests() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = root.join("target/faults");
    let mut cmd = Command::new("cargo");
    cmd.env_clear().current_dir(root.join("plugins/faults"));
    for (key, value) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if matches!(k.as_ref(), "PATH" | "HOME" | "CARGO_HOME" | "TMPDIR")
            || k.starts_with("RUSTUP_")
        {
            cmd.env(&key, value);
        }
    }
    let out = cmd
        .env("CARGO_TARGET_DIR", &target)
        .env(
            "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER",
            "wasm-component-ld",
        )
        .args([
            "build",
            "--locked",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
        ])
        .output()
        .expect("running cargo for plugins/faults");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("wasm32-unknown-unknown/release")
}

fn state() -> RolloutState {
    let instance = |i: usize, revision| Instance {
        id: format!("instance-{i}"),
        node: "local".into(),
        revision,
        readiness: Readiness::Ready,
        age_ms: 60_000,
    };
    RolloutState {
        service: Service {
            project: "demo".into(),
            name: "web".into(),
            image: "demo/web:2".into(),
            replicas: 10,
            port: Some(8080),
            domain: None,
            params: vec![Pair {
                key: "step".into(),
                value: "25".into(),
            }],
        },
        stable_revision: Some(1),
        candidate_revision: 2,
        stable: (0..10).map(|i| instance(i, 1)).collect(),
        candidate: Vec::new(),
        traffic: Traffic {
            stable: 100,
            candidate: 0,
        },
        candidate_requests: 0,
        candidate_errors: 0,
        elapsed_ms: 0,
        now_ms: 1_700_000_000_000,
        promote_requested: false,
        rollback_requested: false,
        plugin_state: Vec::new(),
    }
}

fn nodes() -> Vec<Node> {
    (0..100)
        .map(|i| Node {
            id: format!("node-{i}"),
            name: format!("host-{i}"),
            address: format!("10.0.0.{i}"),
            cpu_millis: 8000,
            cpu_millis_free: 4000,
            memory_bytes: 32 << 30,
            memory_bytes_free: (i as u64 + 1) << 28,
            instances: 3,
            draining: false,
            labels: vec![Pair {
                key: "zone".into(),
                value: format!("z{}", i % 3),
            }],
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let dir = guests();
    let strategy = std::fs::read(dir.join("echo_strategy.wasm")).unwrap();
    let placement = std::fs::read(dir.join("echo_placement.wasm")).unwrap();
    let home = tempfile::tempdir().unwrap();
    let cache = cache_dir(home.path());
    let origin = |n: &str| PluginOrigin::Builtin(n.into());

    // Fill the disk cache.
    let warm = PluginRuntime::new(RuntimeLimits::default(), Some(cache.clone())).unwrap();
    let plan_plugin = warm.load(&strategy, origin("echo-strategy")).unwrap();
    let place_plugin = warm.load(&placement, origin("echo-placement")).unwrap();
    let compat = std::fs::read(dir.join("compat_placement_0_1.wasm")).unwrap();
    let compat_plugin = warm.load(&compat, origin("compat-placement-0-1")).unwrap();
    let spread = warm
        .load(builtin("spread").unwrap(), origin("spread"))
        .unwrap();

    let mut group = c.benchmark_group("load");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(5));
    for (name, bytes) in [("echo-strategy", &strategy), ("echo-placement", &placement)] {
        group.bench_function(format!("{name}/disk-cache"), |b| {
            b.iter_batched(
                || PluginRuntime::new(RuntimeLimits::default(), Some(cache.clone())).unwrap(),
                |rt| {
                    let plugin = rt.load(bytes, origin(name)).unwrap();
                    assert_eq!(rt.stats().compiled, 0);
                    (rt, plugin)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.sample_size(10);
    group.bench_function("echo-strategy/compile", |b| {
        b.iter_batched(
            || PluginRuntime::new(RuntimeLimits::default(), None).unwrap(),
            |rt| (rt.load(&strategy, origin("echo-strategy")).unwrap(), rt),
            BatchSize::PerIteration,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("call");
    let state = state();
    group.bench_function("plan/10-instances", |b| {
        b.iter(|| plan_plugin.plan(&state).unwrap())
    });
    let request = PlacementRequest {
        memory_bytes: 256 << 20,
        cpu_millis: 250,
        ..PlacementRequest::default()
    };
    let nodes = nodes();
    group.bench_function("place/100-nodes", |b| {
        b.iter(|| place_plugin.place(&request, &nodes).unwrap())
    });
    let pinned = PlacementRequest {
        pin: Some("host-4".into()),
        existing: vec![NodeCount {
            node: "node-7".into(),
            count: 2,
        }],
        ..request.clone()
    };
    group.bench_function("place/100-nodes/spread", |b| {
        b.iter(|| spread.place(&request, &nodes).unwrap())
    });
    group.bench_function("place/100-nodes/spread-pinned", |b| {
        b.iter(|| spread.place(&pinned, &nodes).unwrap())
    });
    group.bench_function("place/100-nodes/0.1.0-component", |b| {
        b.iter(|| compat_plugin.place(&request, &nodes).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
