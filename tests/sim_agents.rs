//! Issue #12's simulation kept honest: a real `orca server`, 10 real agents in this process
//! (`orca::nodes::simulated::run_fleet`: the agent's own join, mTLS session, heartbeats and
//! events over an in-memory engine whose containers are real HTTP listeners on 127.0.1.N),
//! 10 services × 5 replicas placed only on them, ready through the master's real probes and
//! reached through its real proxy, then stopped and gone from every simulated engine.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use orca::nodes::simulated::{run_fleet, FleetOptions};
use orca_docker::ContainerRuntime;
use serde_json::Value;
use support::*;
use tokio_util::sync::CancellationToken;

const AGENTS: usize = 10;
const SERVICES: usize = 10;
const REPLICAS: u32 = 5;

fn master_url(s: &Server) -> String {
    format!("https://{}", s.api.trim_start_matches("http://"))
}

fn ready_nodes(s: &Server, prefix: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(&s.cli(&["nodes", "--output", "json"])).unwrap();
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["status"] == "ready" && n["name"].as_str().unwrap().starts_with(prefix))
        .cloned()
        .collect()
}

#[test]
fn simulated_agents_converge_route_and_stop() {
    let _ = orca::process::raise_fd_limit();
    let s = Server::start();
    let token = s
        .cli(&["node", "token", "create", "--reusable", "--ttl", "1h"])
        .trim()
        .to_string();
    let prefix = unique("sim");
    let homes = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let shutdown = CancellationToken::new();
    let opts = FleetOptions {
        join: master_url(&s),
        token,
        agents: AGENTS,
        prefix: format!("{prefix}-"),
        labels: BTreeMap::from([("sim".to_string(), prefix.clone())]),
        home: homes.path().to_path_buf(),
        heartbeat: Duration::from_secs(1),
        cpus: 4,
        memory_bytes: 16 << 30,
    };
    let (fleet, _tasks) = {
        let _guard = rt.enter();
        run_fleet(&opts, &shutdown)
    };

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = ready_nodes(&s, &prefix);
        if ready.len() == AGENTS {
            for n in &ready {
                assert_eq!(n["labels"]["sim"], prefix.as_str(), "{n:#}");
                assert!(
                    n["address"].as_str().unwrap_or("").starts_with("127.0.1."),
                    "{n:#}"
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {AGENTS} simulated nodes ready:\n{}",
            ready.len(),
            tail(&s.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut toml = String::new();
    for i in 0..SERVICES {
        toml.push_str(&format!(
            "[[service]]\nname = \"s{i}\"\nimage = \"sim/app:1\"\nreplicas = {REPLICAS}\nport = 8080\n\
             domain = \"s{i}.{prefix}.test\"\nhealth = \"/healthz\"\n\n\
             [service.placement]\nlabels = {{ sim = \"{prefix}\" }}\n\n"
        ));
    }
    let dir = s.write_service("simp", &toml);
    let out = s.cli_in(ADMIN, Some(&dir), &["deploy", "--no-wait"]);
    assert!(out.status.success(), "{out:?}");

    let deadline = Instant::now() + Duration::from_secs(120);
    let services = loop {
        let st = s.status();
        let services: Vec<Value> = st["services"].as_array().unwrap().clone();
        let ready: u64 = services
            .iter()
            .map(|v| v["ready_replicas"].as_u64().unwrap_or(0))
            .sum();
        if services.len() == SERVICES && ready == (SERVICES as u64) * u64::from(REPLICAS) {
            break services;
        }
        assert!(
            Instant::now() < deadline,
            "{ready} of {} instances ready:\n{}",
            SERVICES * REPLICAS as usize,
            tail(&s.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    // Every instance runs on a simulated node, published on that node's advertise address.
    let nodes: BTreeMap<String, String> = ready_nodes(&s, &prefix)
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["address"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for svc in &services {
        let mut used_nodes = BTreeSet::new();
        for i in svc["instances"].as_array().unwrap() {
            let node = i["node"].as_str().unwrap();
            let addr = i["address"].as_str().unwrap();
            assert_eq!(
                addr.split(':').next(),
                nodes.get(node).map(String::as_str),
                "{i:#}"
            );
            used_nodes.insert(node.to_string());
        }
        // `spread`: one replica per node while there are more nodes than replicas.
        assert_eq!(used_nodes.len(), REPLICAS as usize, "{svc:#}");
    }
    let engines: Vec<_> = fleet.lock().unwrap().values().cloned().collect();
    let listed: usize = rt.block_on(async {
        let mut n = 0;
        for e in &engines {
            n += e.list().await.unwrap().len();
        }
        n
    });
    assert_eq!(listed, SERVICES * REPLICAS as usize, "no duplicates");

    // Through the master's proxy to the simulated containers' listeners: every replica of a
    // service answers.
    for i in 0..SERVICES {
        let host = format!("s{i}.{prefix}.test");
        let mut seen = BTreeSet::new();
        for _ in 0..200 {
            let (code, body) = s.proxy_get(&host, "/").unwrap();
            assert_eq!(code, 200, "{body}");
            assert!(body.starts_with("sim "), "{body}");
            seen.insert(body);
            if seen.len() == REPLICAS as usize {
                break;
            }
        }
        assert_eq!(seen.len(), REPLICAS as usize, "{host}: {seen:?}");
    }
    let served: u64 = engines.iter().map(|e| e.requests_served()).sum();
    assert!(served >= (SERVICES * REPLICAS as usize) as u64, "{served}");

    // Stopped: gone from every simulated engine.
    s.cli_in(ADMIN, Some(&dir), &["stop", "--project", "simp"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let left: usize = rt.block_on(async {
            let mut n = 0;
            for e in &engines {
                n += e.list().await.unwrap().len();
            }
            n
        });
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} simulated containers left after stop:\n{}",
            tail(&s.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    shutdown.cancel();
    rt.shutdown_timeout(Duration::from_secs(5));
}
