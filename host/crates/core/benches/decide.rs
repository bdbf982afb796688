//! `decide` at scale: 1,000 services with 10 instances each (10,000 instances), idle (every
//! instance converged and ready) and mid-rollout (every service with a stable and a candidate
//! group, a traffic split and one instance to replace). Run: `cargo bench -p orca-core`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion};
use orca_config::Probe;
use orca_core::{
    decide, DesiredGroup, InstanceState, RevisionFacts, RunState, ServiceState, Snapshot, Traffic,
};

const SERVICES: u32 = 1_000;
const PER_SERVICE: u32 = 10;

fn snapshot(rolling: bool) -> Snapshot {
    let mut s = Snapshot {
        now_ms: 1_000_000,
        ..Snapshot::default()
    };
    let mut n = 0u32;
    for svc in 0..SERVICES {
        let key = format!("p{}/svc{svc}", svc % 10);
        let (old, new) = (format!("{svc:08}-old"), format!("{svc:08}-new"));
        for fp in [&old, &new] {
            s.revisions.insert(
                fp.clone(),
                RevisionFacts {
                    port: Some(8080),
                    readiness: Probe::http("/healthz"),
                    liveness: None,
                    drain_timeout_ms: 30_000,
                },
            );
        }
        let groups = if rolling {
            vec![
                DesiredGroup {
                    fingerprint: old.clone(),
                    count: PER_SERVICE - 2,
                },
                DesiredGroup {
                    fingerprint: new.clone(),
                    count: 2,
                },
            ]
        } else {
            vec![DesiredGroup {
                fingerprint: new.clone(),
                count: PER_SERVICE,
            }]
        };
        s.services.push(ServiceState {
            key: key.clone(),
            running: true,
            domain: Some(format!("svc{svc}.test")),
            groups,
            traffic: rolling.then(|| Traffic {
                candidate_fingerprint: new.clone(),
                stable: 80,
                candidate: 20,
            }),
            not_before_ms: None,
            max_migrating: 1,
            exclusive: None,
            depends_on: Vec::new(),
        });
        for slot in 0..PER_SERVICE {
            n += 1;
            // Mid-rollout: 9 old instances and 1 new one (one old to scale down, one new to start).
            let fp = if rolling && slot > 0 { &old } else { &new };
            let slot = if rolling && slot > 0 { slot - 1 } else { slot };
            s.instances.push(InstanceState {
                id: format!("{n:064x}"),
                service: key.clone(),
                fingerprint: fp.clone(),
                slot,
                run: RunState::Running,
                created_at_ms: 0,
                ip: Some(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))),
                published: None,
                ready: true,
                restart: false,
                draining: false,
                evict: None,
            });
        }
    }
    s
}

fn bench(c: &mut Criterion) {
    let idle = snapshot(false);
    assert_eq!(idle.instances.len(), 10_000);
    assert!(decide(&idle).is_idle());
    c.bench_function("decide 1000 services / 10000 instances, idle", |b| {
        b.iter(|| decide(black_box(&idle)))
    });
    let rolling = snapshot(true);
    assert!(!decide(&rolling).is_idle());
    c.bench_function("decide 1000 services / 10000 instances, all rolling", |b| {
        b.iter(|| decide(black_box(&rolling)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
