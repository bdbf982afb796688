//! A whole idle controller pass for 1,000 services with 10,000 instances: the store read
//! (a real redb file), the runtime listing, the readiness verdicts, `decide`, the routing
//! table, probe targets and status view published — everything a pass does when nothing has
//! to change. The runtime is the in-memory `SimRuntime` (an engine's own listing cost is
//! not in it: with the Docker Engine a listing of N running containers is one API call, see
//! BENCHMARKS.md); the plugins are the real built-ins in the real wasmtime runtime.
//!
//! Run: `cargo bench -p orca --bench pass`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use orca::controller::Controller;
use orca::health::Health;
use orca::metrics::Metrics;
use orca::nodes::simulated::SimRuntime;
use orca::plugins::{PluginOrigin, PluginRuntime, RuntimeLimits};
use orca::registry::Registry;
use orca_config::ServiceSpec;
use orca_docker::{ClusterScope, ContainerRuntime, NodeInfo};
use orca_proxy::{Proxy, ProxyConfig, ProxyMetrics, Routes};
use orca_store::{SecretBox, Store};

/// Counts heap allocations, so the bench also reports how many one idle pass makes — a
/// figure the machine's load does not blur.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator. (The workspace denies
// unsafe code; a counting global allocator cannot be written without it, and it lives in
// this bench only.)
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SERVICES: usize = 1_000;
const REPLICAS: u32 = 10;

fn spec(i: usize) -> ServiceSpec {
    let toml = format!(
        "name = \"svc{i:04}\"\nproject = \"p{p:02}\"\nimage = \"orca-testapp:latest\"\n\
         replicas = {REPLICAS}\nport = 8080\ndomain = \"svc{i:04}.bench\"\nhealth = \"/healthz\"\n",
        p = i % 50
    );
    toml::from_str(&toml).expect("bench spec parses")
}

fn bench_pass(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("orca.redb")).unwrap();
    let secrets = Arc::new(SecretBox::load_or_create(&dir.path().join("secrets.key")).unwrap());
    let plugins = PluginRuntime::new(RuntimeLimits::default(), None).unwrap();
    let registry = Registry::new(plugins, dir.path());
    for name in orca::plugins::builtin_names() {
        let bytes = orca::plugins::builtin(name).unwrap();
        registry
            .runtime()
            .load(bytes, PluginOrigin::Builtin(name.to_string()))
            .unwrap();
    }
    let items: Vec<_> = (0..SERVICES)
        .map(|i| orca::deploy::prepare(&store, &secrets, &spec(i), None).unwrap())
        .collect();
    store.apply_deploy(&items, 1).unwrap();

    let node = NodeInfo {
        hostname: "bench".into(),
        engine_version: "sim".into(),
        api_version: "1.41".into(),
        cpus: 64,
        memory_bytes: 256 << 30,
        os: "sim".into(),
    };
    let sim = SimRuntime::new(node.clone(), [10, 0]);
    let cluster = "benchpass".to_string();
    let sim = sim.scoped(ClusterScope {
        name: cluster.clone(),
        id: "bench-cluster-id".into(),
    });
    let sim = Arc::new(sim);
    let routes = Routes::new();
    let proxy = Proxy::new(ProxyConfig::default(), routes.clone(), ProxyMetrics::new());
    let health = Health::new(registry.clone());
    let controller = Controller::new(
        sim.clone(),
        store,
        secrets,
        registry,
        routes,
        health.clone(),
        Metrics::new(|_| {}),
        cluster,
        node,
        Arc::new(|_| 0),
        proxy.route_stats(),
    );

    // Start everything, then take every instance as ready (the checker is not running), so
    // the measured passes have nothing to do.
    rt.block_on(async {
        for _ in 0..3 {
            controller.pass().await.unwrap();
        }
        let ids: Vec<String> = sim
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(
            ids.len(),
            SERVICES * REPLICAS as usize,
            "every instance started"
        );
        // Seeded verdicts apply to instances first watched after: forget the watched set,
        // the next pass watches them again, ready.
        health.seed_ready(ids);
        health.set_targets(Vec::new());
        controller.pass().await.unwrap();
        controller.pass().await.unwrap();
        let view = controller.handle().view();
        assert_eq!(
            view.ready.len(),
            SERVICES * REPLICAS as usize,
            "every instance ready"
        );
    });

    // Allocations of one idle pass (the health checker is not running, so they are the
    // pass's own, plus the runtime's listing).
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    rt.block_on(controller.pass()).unwrap();
    let per_pass = ALLOCATIONS.load(Ordering::Relaxed) - before;
    eprintln!("allocations in one idle pass: {per_pass}");

    let mut group = c.benchmark_group("controller_pass");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(15));
    group.bench_function("idle_1000_services_10000_instances", |b| {
        b.iter(|| rt.block_on(controller.pass()).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench_pass);
criterion_main!(benches);
