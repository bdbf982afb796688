//! Named scenarios of `decide`: each test pins one situation a controller pass meets, by
//! name, on plain data (a snapshot in, a decision out; the `Sim` fake node and clock for
//! sequences of passes).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use orca_config::Probe;
use orca_core::sim::Sim;
use orca_core::{
    decide, Decision, DesiredGroup, InstanceState, RemoveReason, RevisionFacts, RunState,
    ServiceState, Snapshot, Traffic, DEFAULT_DRAIN_MS, STUCK_AFTER_MS,
};

const NOW: u64 = 1_000_000;

fn facts(port: u16, path: &str, drain_secs: u64) -> RevisionFacts {
    RevisionFacts {
        port: Some(port),
        readiness: Probe::http(path),
        liveness: None,
        drain_timeout_ms: drain_secs * 1000,
    }
}

fn revs(list: &[(&str, RevisionFacts)]) -> BTreeMap<String, RevisionFacts> {
    list.iter()
        .map(|(fp, f)| (fp.to_string(), f.clone()))
        .collect()
}

fn svc(key: &str, groups: &[(&str, u32)]) -> ServiceState {
    ServiceState {
        key: key.into(),
        running: true,
        domain: Some(format!("{}.test", key.replace('/', "-"))),
        groups: groups
            .iter()
            .map(|(fp, count)| DesiredGroup {
                fingerprint: fp.to_string(),
                count: *count,
            })
            .collect(),
        traffic: None,
        not_before_ms: None,
        max_migrating: 1,
        exclusive: None,
        depends_on: Vec::new(),
    }
}

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(172, 18, 0, n))
}

/// A running, ready instance of `service` at 172.18.0.`n`.
fn inst(id: &str, service: &str, fp: &str, slot: u32, n: u8) -> InstanceState {
    InstanceState {
        id: id.into(),
        service: service.into(),
        fingerprint: fp.into(),
        slot,
        run: RunState::Running,
        created_at_ms: NOW - 60_000,
        ip: Some(ip(n)),
        published: None,
        ready: true,
        restart: false,
        draining: false,
        evict: None,
    }
}

fn starting(mut i: InstanceState) -> InstanceState {
    i.ready = false;
    i
}

fn snap(
    services: Vec<ServiceState>,
    revisions: BTreeMap<String, RevisionFacts>,
    instances: Vec<InstanceState>,
) -> Snapshot {
    Snapshot {
        now_ms: NOW,
        services,
        revisions,
        instances,
        migrate_limit: None,
    }
}

fn started(d: &Decision) -> Vec<(String, u32, String)> {
    d.starts
        .iter()
        .map(|s| (s.service.clone(), s.slot, s.fingerprint.clone()))
        .collect()
}

fn removed(d: &Decision) -> Vec<(String, RemoveReason)> {
    d.removes.iter().map(|r| (r.id.clone(), r.reason)).collect()
}

fn routed(d: &Decision, domain: &str) -> Vec<(String, SocketAddr, u32)> {
    d.routes
        .iter()
        .find(|r| r.domain == domain)
        .map(|r| {
            r.backends
                .iter()
                .map(|b| (b.id.clone(), b.addr, b.weight))
                .collect()
        })
        .unwrap_or_default()
}

fn sa(n: u8, port: u16) -> SocketAddr {
    SocketAddr::new(ip(n), port)
}

const WEB: &str = "p/web";
const DOMAIN: &str = "p-web.test";

fn one_rev() -> BTreeMap<String, RevisionFacts> {
    revs(&[("a", facts(8080, "/healthz", 30))])
}

#[test]
fn fresh_service_starts_every_slot_of_its_revision() {
    let d = decide(&snap(vec![svc(WEB, &[("a", 3)])], one_rev(), vec![]));
    assert_eq!(
        started(&d),
        (0..3)
            .map(|s| (WEB.to_string(), s, "a".to_string()))
            .collect::<Vec<_>>()
    );
    assert!(d.removes.is_empty());
    assert_eq!(routed(&d, DOMAIN), vec![], "nothing ready, nothing routed");
}

#[test]
fn converged_service_is_idle_and_routed() {
    let d = decide(&snap(
        vec![svc(WEB, &[("a", 2)])],
        one_rev(),
        vec![inst("1", WEB, "a", 0, 1), inst("2", WEB, "a", 1, 2)],
    ));
    assert!(d.is_idle(), "{d:?}");
    assert_eq!(
        routed(&d, DOMAIN),
        vec![("1".into(), sa(1, 8080), 1), ("2".into(), sa(2, 8080), 1)]
    );
}

#[test]
fn scale_up_fills_only_missing_slots() {
    let d = decide(&snap(
        vec![svc(WEB, &[("a", 4)])],
        one_rev(),
        vec![inst("1", WEB, "a", 0, 1), inst("2", WEB, "a", 1, 2)],
    ));
    let slots: Vec<u32> = d.starts.iter().map(|s| s.slot).collect();
    assert_eq!(slots, vec![2, 3]);
    assert!(d.removes.is_empty());
}

#[test]
fn scale_down_removes_highest_slots_and_drains_them() {
    let d = decide(&snap(
        vec![svc(WEB, &[("a", 1)])],
        one_rev(),
        vec![
            inst("1", WEB, "a", 0, 1),
            inst("2", WEB, "a", 1, 2),
            inst("3", WEB, "a", 2, 3),
        ],
    ));
    assert_eq!(
        removed(&d),
        vec![
            ("2".into(), RemoveReason::ScaledDown),
            ("3".into(), RemoveReason::ScaledDown)
        ]
    );
    assert!(d.removes.iter().all(|r| r.drain.is_some()));
    assert_eq!(routed(&d, DOMAIN), vec![("1".into(), sa(1, 8080), 1)]);
}

#[test]
fn instance_being_removed_leaves_the_routes_in_the_same_decision() {
    let d = decide(&snap(
        vec![svc(WEB, &[("a", 1)])],
        one_rev(),
        vec![inst("1", WEB, "a", 0, 1), inst("2", WEB, "a", 1, 2)],
    ));
    assert!(!d.ready.contains("2"));
    assert!(d.probes.iter().all(|p| p.id != "2"));
    assert!(routed(&d, DOMAIN).iter().all(|(id, _, _)| id != "2"));
}

#[test]
fn failed_instance_is_replaced_in_its_slot_without_a_drain() {
    let mut dead = inst("2", WEB, "a", 1, 2);
    dead.run = RunState::Failed;
    let d = decide(&snap(
        vec![svc(WEB, &[("a", 2)])],
        one_rev(),
        vec![inst("1", WEB, "a", 0, 1), dead],
    ));
    assert_eq!(removed(&d), vec![("2".into(), RemoveReason::Failed)]);
    assert_eq!(d.removes[0].drain, None);
    assert_eq!(started(&d), vec![(WEB.into(), 1, "a".into())]);
}

#[test]
fn liveness_restart_replaces_the_instance_without_a_drain() {
    let mut sick = inst("2", WEB, "a", 1, 2);
    sick.restart = true;
    let d = decide(&snap(
        vec![svc(WEB, &[("a", 2)])],
        one_rev(),
        vec![inst("1", WEB, "a", 0, 1), sick],
    ));
    assert_eq!(removed(&d), vec![("2".into(), RemoveReason::Failed)]);
    assert_eq!(d.removes[0].drain, None);
    assert_eq!(started(&d), vec![(WEB.into(), 1, "a".into())]);
}

#[test]
fn crash_backoff_holds_starts_and_reports_until_when() {
    let mut s = svc(WEB, &[("a", 1)]);
    s.not_before_ms = Some(NOW + 5_000);
    let d = decide(&snap(vec![s.clone()], one_rev(), vec![]));
    assert!(d.starts.is_empty());
    assert_eq!(d.backing_off.get(WEB), Some(&(NOW + 5_000)));
    let mut later = snap(vec![s], one_rev(), vec![]);
    later.now_ms = NOW + 5_000;
    assert_eq!(decide(&later).starts.len(), 1);
}

#[test]
fn stopped_service_removes_everything_and_has_no_route() {
    let mut s = svc(WEB, &[("a", 2)]);
    s.running = false;
    let d = decide(&snap(
        vec![s],
        one_rev(),
        vec![inst("1", WEB, "a", 0, 1), inst("2", WEB, "a", 1, 2)],
    ));
    assert_eq!(
        removed(&d),
        vec![
            ("1".into(), RemoveReason::Stopped),
            ("2".into(), RemoveReason::Stopped)
        ]
    );
    assert!(d.starts.is_empty());
    assert!(d.routes.is_empty());
}

#[test]
fn orphan_is_removed_at_once_and_other_services_untouched() {
    let d = decide(&snap(
        vec![svc(WEB, &[("a", 1)])],
        revs(&[("a", facts(8080, "/", 30)), ("g", facts(8080, "/", 30))]),
        vec![inst("1", "p/gone", "g", 0, 1), inst("2", WEB, "a", 0, 2)],
    ));
    assert_eq!(removed(&d), vec![("1".into(), RemoveReason::Orphan)]);
    assert_eq!(d.removes[0].drain, None);
    assert!(d.starts.is_empty());
}

#[test]
fn duplicate_in_one_slot_keeps_the_ready_one() {
    let d = decide(&snap(
        vec![svc(WEB, &[("a", 1)])],
        one_rev(),
        vec![
            starting(inst("a1", WEB, "a", 0, 1)),
            inst("b2", WEB, "a", 0, 2),
        ],
    ));
    assert_eq!(removed(&d), vec![("a1".into(), RemoveReason::Duplicate)]);
    assert!(d.starts.is_empty());
}

#[test]
fn rolling_update_changing_port_routes_old_instances_on_old_port() {
    let d = decide(&snap(
        vec![svc(WEB, &[("old", 2), ("new", 1)])],
        revs(&[
            ("old", facts(8080, "/healthz", 30)),
            ("new", facts(9090, "/ready", 30)),
        ]),
        vec![
            inst("o1", WEB, "old", 0, 1),
            inst("o2", WEB, "old", 1, 2),
            inst("n1", WEB, "new", 0, 3),
        ],
    ));
    assert!(d.is_idle());
    assert_eq!(
        routed(&d, DOMAIN),
        vec![
            ("o1".into(), sa(1, 8080), 1),
            ("o2".into(), sa(2, 8080), 1),
            ("n1".into(), sa(3, 9090), 1)
        ]
    );
}

#[test]
fn rolling_update_changing_port_probes_old_instances_on_old_port() {
    let d = decide(&snap(
        vec![svc(WEB, &[("old", 1), ("new", 1)])],
        revs(&[
            ("old", facts(8080, "/healthz", 30)),
            ("new", facts(9090, "/ready", 30)),
        ]),
        vec![
            inst("o1", WEB, "old", 0, 1),
            starting(inst("n1", WEB, "new", 0, 2)),
        ],
    ));
    let probes: BTreeMap<&str, Option<SocketAddr>> =
        d.probes.iter().map(|p| (p.id.as_str(), p.addr)).collect();
    assert_eq!(probes["o1"], Some(sa(1, 8080)));
    assert_eq!(probes["n1"], Some(sa(2, 9090)));
}

#[test]
fn rolling_update_changing_readiness_path_probes_each_with_its_own_path() {
    let d = decide(&snap(
        vec![svc(WEB, &[("old", 1), ("new", 1)])],
        revs(&[
            ("old", facts(8080, "/healthz", 30)),
            ("new", facts(8080, "/ready", 30)),
        ]),
        vec![
            inst("o1", WEB, "old", 0, 1),
            starting(inst("n1", WEB, "new", 0, 2)),
        ],
    ));
    let paths: BTreeMap<&str, Option<&str>> = d
        .probes
        .iter()
        .map(|p| (p.id.as_str(), p.readiness.path.as_deref()))
        .collect();
    assert_eq!(paths["o1"], Some("/healthz"));
    assert_eq!(paths["n1"], Some("/ready"));
}

#[test]
fn liveness_probe_comes_from_the_instances_own_revision() {
    let mut new = facts(8080, "/healthz", 30);
    new.liveness = Some(Probe::http("/livez"));
    let d = decide(&snap(
        vec![svc(WEB, &[("old", 1), ("new", 1)])],
        revs(&[("old", facts(8080, "/healthz", 30)), ("new", new)]),
        vec![inst("o1", WEB, "old", 0, 1), inst("n1", WEB, "new", 0, 2)],
    ));
    let live: BTreeMap<&str, bool> = d
        .probes
        .iter()
        .map(|p| (p.id.as_str(), p.liveness.is_some()))
        .collect();
    assert_eq!(live, BTreeMap::from([("n1", true), ("o1", false)]));
}

#[test]
fn superseded_instance_drains_on_its_own_port_with_its_own_timeout() {
    let d = decide(&snap(
        vec![svc(WEB, &[("new", 1)])],
        revs(&[
            ("old", facts(8080, "/healthz", 7)),
            ("new", facts(9090, "/ready", 60)),
        ]),
        vec![inst("o1", WEB, "old", 0, 1), inst("n1", WEB, "new", 0, 2)],
    ));
    assert_eq!(removed(&d), vec![("o1".into(), RemoveReason::Superseded)]);
    let drain = d.removes[0].drain.expect("a serving instance is drained");
    assert_eq!(drain.addr, sa(1, 8080));
    assert_eq!(drain.timeout_ms, 7_000);
}

#[test]
fn drain_timeout_defaults_when_the_revision_sets_none() {
    let spec: orca_config::ServiceSpec =
        serde_json::from_str(r#"{"name":"web","image":"x","port":8080}"#).unwrap();
    assert_eq!(RevisionFacts::of(&spec).drain_timeout_ms, DEFAULT_DRAIN_MS);
}

#[test]
fn status_address_is_the_instances_own_revision_port() {
    let d = decide(&snap(
        vec![svc(WEB, &[("old", 1), ("new", 1)])],
        revs(&[("old", facts(8080, "/", 30)), ("new", facts(9090, "/", 30))]),
        vec![inst("o1", WEB, "old", 0, 1), inst("n1", WEB, "new", 0, 2)],
    ));
    assert_eq!(d.addresses["o1"], sa(1, 8080));
    assert_eq!(d.addresses["n1"], sa(2, 9090));
}

#[test]
fn rollback_to_the_stable_group_drains_candidates_on_their_own_port() {
    let d = decide(&snap(
        vec![svc(WEB, &[("old", 2)])],
        revs(&[("old", facts(8080, "/", 30)), ("new", facts(9090, "/", 5))]),
        vec![
            inst("o1", WEB, "old", 0, 1),
            inst("n1", WEB, "new", 0, 2),
            inst("n2", WEB, "new", 1, 3),
        ],
    ));
    assert_eq!(started(&d), vec![(WEB.into(), 1, "old".into())]);
    for r in &d.removes {
        assert_eq!(r.reason, RemoveReason::Superseded);
        let drain = r.drain.unwrap();
        assert_eq!(drain.addr.port(), 9090);
        assert_eq!(drain.timeout_ms, 5_000);
    }
    assert_eq!(routed(&d, DOMAIN), vec![("o1".into(), sa(1, 8080), 1)]);
}

#[test]
fn candidate_is_created_from_the_current_revision() {
    let d = decide(&snap(
        vec![svc(WEB, &[("old", 2), ("new", 1)])],
        revs(&[("old", facts(8080, "/", 30)), ("new", facts(9090, "/", 30))]),
        vec![inst("o1", WEB, "old", 0, 1), inst("o2", WEB, "old", 1, 2)],
    ));
    assert_eq!(started(&d), vec![(WEB.into(), 0, "new".into())]);
    assert!(d.removes.is_empty(), "old instances keep serving");
}

#[test]
fn only_ready_instances_are_routed() {
    let d = decide(&snap(
        vec![svc(WEB, &[("a", 2)])],
        one_rev(),
        vec![
            inst("1", WEB, "a", 0, 1),
            starting(inst("2", WEB, "a", 1, 2)),
        ],
    ));
    assert_eq!(routed(&d, DOMAIN), vec![("1".into(), sa(1, 8080), 1)]);
    assert_eq!(d.ready, BTreeSet::from(["1".to_string()]));
}

#[test]
fn starting_instance_is_probed_but_not_routed() {
    let d = decide(&snap(
        vec![svc(WEB, &[("a", 1)])],
        one_rev(),
        vec![starting(inst("1", WEB, "a", 0, 1))],
    ));
    assert_eq!(d.probes.len(), 1);
    assert_eq!(d.probes[0].addr, Some(sa(1, 8080)));
    assert!(routed(&d, DOMAIN).is_empty());
    assert!(d.is_idle());
}

#[test]
fn draining_instance_is_neither_routed_probed_nor_removed_again() {
    let mut old = inst("o1", WEB, "old", 0, 1);
    old.draining = true;
    let d = decide(&snap(
        vec![svc(WEB, &[("a", 1)])],
        revs(&[("a", facts(8080, "/", 30)), ("old", facts(8080, "/", 30))]),
        vec![old, inst("1", WEB, "a", 0, 2)],
    ));
    assert!(d.removes.is_empty());
    assert!(d.probes.iter().all(|p| p.id != "o1"));
    assert_eq!(routed(&d, DOMAIN), vec![("1".into(), sa(2, 8080), 1)]);
}

#[test]
fn draining_instance_does_not_fill_its_slot() {
    let mut old = inst("1", WEB, "a", 0, 1);
    old.draining = true;
    let d = decide(&snap(vec![svc(WEB, &[("a", 1)])], one_rev(), vec![old]));
    assert_eq!(started(&d), vec![(WEB.into(), 0, "a".into())]);
}

#[test]
fn canary_traffic_splits_weights_by_group() {
    let mut s = svc(WEB, &[("old", 2), ("new", 1)]);
    s.traffic = Some(Traffic {
        candidate_fingerprint: "new".into(),
        stable: 80,
        candidate: 20,
    });
    let d = decide(&snap(
        vec![s],
        revs(&[("old", facts(8080, "/", 30)), ("new", facts(8080, "/", 30))]),
        vec![
            inst("o1", WEB, "old", 0, 1),
            inst("o2", WEB, "old", 1, 2),
            inst("n1", WEB, "new", 0, 3),
        ],
    ));
    let w: BTreeMap<String, u32> = routed(&d, DOMAIN)
        .into_iter()
        .map(|(id, _, w)| (id, w))
        .collect();
    assert_eq!(w["o1"], 40_000);
    assert_eq!(w["o2"], 40_000);
    assert_eq!(w["n1"], 20_000);
}

#[test]
fn canary_weight_is_shared_among_ready_candidates_only() {
    let mut s = svc(WEB, &[("old", 1), ("new", 2)]);
    s.traffic = Some(Traffic {
        candidate_fingerprint: "new".into(),
        stable: 50,
        candidate: 50,
    });
    let d = decide(&snap(
        vec![s],
        revs(&[("old", facts(8080, "/", 30)), ("new", facts(8080, "/", 30))]),
        vec![
            inst("o1", WEB, "old", 0, 1),
            inst("n1", WEB, "new", 0, 2),
            starting(inst("n2", WEB, "new", 1, 3)),
        ],
    ));
    assert_eq!(
        routed(&d, DOMAIN),
        vec![
            ("o1".into(), sa(1, 8080), 50_000),
            ("n1".into(), sa(2, 8080), 50_000)
        ]
    );
}

#[test]
fn full_stable_weight_routes_candidates_with_zero_weight() {
    let mut s = svc(WEB, &[("old", 1), ("new", 1)]);
    s.traffic = Some(Traffic {
        candidate_fingerprint: "new".into(),
        stable: 100,
        candidate: 0,
    });
    let d = decide(&snap(
        vec![s],
        revs(&[("old", facts(8080, "/", 30)), ("new", facts(8080, "/", 30))]),
        vec![inst("o1", WEB, "old", 0, 1), inst("n1", WEB, "new", 0, 2)],
    ));
    let w: BTreeMap<String, u32> = routed(&d, DOMAIN)
        .into_iter()
        .map(|(id, _, w)| (id, w))
        .collect();
    assert_eq!((w["o1"], w["n1"]), (100_000, 0));
}

#[test]
fn container_left_created_past_the_bound_is_replaced() {
    let mut stuck = inst("c1", WEB, "a", 0, 1);
    stuck.run = RunState::Created;
    stuck.ready = false;
    stuck.ip = None;
    stuck.created_at_ms = NOW - STUCK_AFTER_MS;
    let d = decide(&snap(vec![svc(WEB, &[("a", 1)])], one_rev(), vec![stuck]));
    assert_eq!(removed(&d), vec![("c1".into(), RemoveReason::Stuck)]);
    assert_eq!(d.removes[0].drain, None, "it never served");
    assert_eq!(started(&d), vec![(WEB.into(), 0, "a".into())]);
}

#[test]
fn container_just_created_is_left_to_start() {
    let mut fresh = inst("c1", WEB, "a", 0, 1);
    fresh.run = RunState::Created;
    fresh.ready = false;
    fresh.created_at_ms = NOW - 500;
    let d = decide(&snap(vec![svc(WEB, &[("a", 1)])], one_rev(), vec![fresh]));
    assert!(d.is_idle(), "{d:?}");
    assert!(d.probes.is_empty(), "not running: not probed yet");
    assert_eq!(
        d.wake_at_ms,
        Some(NOW - 500 + STUCK_AFTER_MS),
        "the pass looks again when it would be stuck"
    );
}

#[test]
fn paused_instance_is_neither_routed_nor_failed() {
    let mut p = inst("1", WEB, "a", 0, 1);
    p.run = RunState::Other;
    let d = decide(&snap(vec![svc(WEB, &[("a", 1)])], one_rev(), vec![p]));
    assert!(d.is_idle());
    assert!(routed(&d, DOMAIN).is_empty());
}

#[test]
fn exited_instance_is_not_probed() {
    let mut dead = inst("1", WEB, "a", 0, 1);
    dead.run = RunState::Failed;
    let d = decide(&snap(vec![svc(WEB, &[("a", 1)])], one_rev(), vec![dead]));
    assert!(d.probes.is_empty());
}

#[test]
fn service_without_port_is_probed_without_address_and_not_routed() {
    let mut f = facts(8080, "/", 30);
    f.port = None;
    let d = decide(&snap(
        vec![svc(WEB, &[("a", 1)])],
        revs(&[("a", f)]),
        vec![inst("1", WEB, "a", 0, 1)],
    ));
    assert_eq!(d.probes[0].addr, None);
    assert!(routed(&d, DOMAIN).is_empty());
    assert!(d.addresses.is_empty());
}

#[test]
fn service_without_domain_has_no_route() {
    let mut s = svc(WEB, &[("a", 1)]);
    s.domain = None;
    let d = decide(&snap(vec![s], one_rev(), vec![inst("1", WEB, "a", 0, 1)]));
    assert!(d.routes.is_empty());
    assert!(d.ready.contains("1"));
}

#[test]
fn instance_of_an_unknown_revision_is_not_routed_or_probed() {
    let d = decide(&snap(
        vec![svc(WEB, &[("zzz", 1)])],
        revs(&[]),
        vec![inst("1", WEB, "zzz", 0, 1)],
    ));
    assert!(d.probes.is_empty());
    assert!(routed(&d, DOMAIN).is_empty());
}

#[test]
fn promoted_rollout_supersedes_the_old_group() {
    let d = decide(&snap(
        vec![svc(WEB, &[("new", 2)])],
        revs(&[("old", facts(8080, "/", 30)), ("new", facts(8080, "/", 30))]),
        vec![
            inst("o1", WEB, "old", 0, 1),
            inst("n1", WEB, "new", 0, 2),
            inst("n2", WEB, "new", 1, 3),
        ],
    ));
    assert_eq!(removed(&d), vec![("o1".into(), RemoveReason::Superseded)]);
    assert!(d.starts.is_empty());
}

#[test]
fn two_services_on_one_node_are_decided_independently() {
    let mut api = svc("p/api", &[("b", 1)]);
    api.domain = Some("api.test".into());
    let d = decide(&snap(
        vec![svc(WEB, &[("a", 1)]), api],
        revs(&[("a", facts(8080, "/", 30)), ("b", facts(7000, "/", 30))]),
        vec![inst("1", WEB, "a", 0, 1), inst("2", "p/api", "b", 0, 2)],
    ));
    assert!(d.is_idle());
    assert_eq!(routed(&d, DOMAIN), vec![("1".into(), sa(1, 8080), 1)]);
    assert_eq!(routed(&d, "api.test"), vec![("2".into(), sa(2, 7000), 1)]);
}

#[test]
fn same_snapshot_gives_the_same_decision() {
    let s = snap(
        vec![svc(WEB, &[("old", 1), ("new", 2)])],
        revs(&[("old", facts(8080, "/", 30)), ("new", facts(9090, "/", 30))]),
        vec![inst("o1", WEB, "old", 0, 1), inst("o2", WEB, "old", 1, 2)],
    );
    assert_eq!(decide(&s), decide(&s.clone()));
}

#[test]
fn sim_rolling_update_changing_port_never_routes_an_instance_off_its_port() {
    let revisions = revs(&[
        ("v1", facts(8080, "/healthz", 30)),
        ("v2", facts(9090, "/ready", 30)),
    ]);
    let mut sim = Sim::new(NOW, 300);
    for _ in 0..5 {
        sim.pass(&[svc(WEB, &[("v1", 3)])], &revisions);
        sim.advance(200);
    }
    // A surge-1 rolling update as groups: (3,1) → (2,2) → (1,3) → (0,3).
    for (old, new) in [(3, 1), (2, 2), (1, 3), (0, 3)] {
        for _ in 0..5 {
            let d = sim.pass(&[svc(WEB, &[("v1", old), ("v2", new)])], &revisions);
            for r in &d.routes {
                for b in &r.backends {
                    let fp = &sim
                        .instances
                        .iter()
                        .find(|i| i.id == b.id)
                        .unwrap()
                        .fingerprint;
                    assert_eq!(b.addr.port(), revisions[fp].port.unwrap(), "{b:?}");
                }
            }
            assert!(!routed(&d, DOMAIN).is_empty(), "never without a backend");
            sim.advance(200);
        }
    }
    let d = sim.pass(&[svc(WEB, &[("v2", 3)])], &revisions);
    assert!(d.is_idle());
    assert!(sim.instances.iter().all(|i| i.fingerprint == "v2"));
    assert_eq!(routed(&d, DOMAIN).len(), 3);
}

#[test]
fn sim_killed_instance_is_replaced_and_routed_again() {
    let revisions = one_rev();
    let services = [svc(WEB, &[("a", 3)])];
    let mut sim = Sim::new(NOW, 100);
    for _ in 0..3 {
        sim.pass(&services, &revisions);
        sim.advance(100);
    }
    let victim = sim.instances[1].id.clone();
    sim.kill(&victim);
    let d = sim.pass(&services, &revisions);
    assert_eq!(removed(&d), vec![(victim.clone(), RemoveReason::Failed)]);
    assert_eq!(d.starts.len(), 1);
    assert_eq!(routed(&d, DOMAIN).len(), 2, "the dead one left the routes");
    sim.advance(100);
    let d = sim.pass(&services, &revisions);
    assert!(d.is_idle());
    assert_eq!(routed(&d, DOMAIN).len(), 3);
}

#[test]
fn sim_server_killed_between_create_and_start_recovers() {
    let revisions = one_rev();
    let services = [svc(WEB, &[("a", 1)])];
    let mut sim = Sim::new(NOW, 100);
    sim.add(InstanceState {
        id: "left-created".into(),
        service: WEB.into(),
        fingerprint: "a".into(),
        slot: 0,
        run: RunState::Created,
        created_at_ms: NOW,
        ..InstanceState::default()
    });
    assert!(
        sim.pass(&services, &revisions).is_idle(),
        "within the bound: wait"
    );
    sim.advance(STUCK_AFTER_MS);
    let d = sim.pass(&services, &revisions);
    assert_eq!(
        removed(&d),
        vec![("left-created".into(), RemoveReason::Stuck)]
    );
    sim.advance(100);
    let d = sim.pass(&services, &revisions);
    assert_eq!(routed(&d, DOMAIN).len(), 1);
}

#[test]
fn sim_revision_that_never_gets_ready_is_never_routed() {
    let revisions = revs(&[("v1", facts(8080, "/", 30)), ("bad", facts(8080, "/", 30))]);
    let mut sim = Sim::new(NOW, 100);
    sim.never_ready.push("bad".into());
    for _ in 0..3 {
        sim.pass(&[svc(WEB, &[("v1", 2)])], &revisions);
        sim.advance(100);
    }
    for _ in 0..5 {
        let d = sim.pass(&[svc(WEB, &[("v1", 2), ("bad", 1)])], &revisions);
        let ids: Vec<String> = routed(&d, DOMAIN)
            .into_iter()
            .map(|(id, _, _)| id)
            .collect();
        assert_eq!(ids.len(), 2);
        for id in ids {
            let i = sim.instances.iter().find(|i| i.id == id).unwrap();
            assert_eq!(i.fingerprint, "v1");
        }
        sim.advance(100);
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Over random group sequences (a rollout's steps), with random kills: every routed
        /// instance is routed on its own revision's port, every probe target uses its own
        /// revision's port and path, and no slot of a revision holds two live instances once
        /// a pass has acted.
        #[test]
        fn own_revision_facts_and_one_instance_per_slot(
            steps in proptest::collection::vec((0u32..4, 0u32..4, any::<bool>(), 0usize..6), 1..12),
        ) {
            let revisions = revs(&[
                ("v1", facts(8080, "/one", 30)),
                ("v2", facts(9090, "/two", 30)),
            ]);
            let mut sim = Sim::new(NOW, 150);
            for (stable, candidate, kill, victim) in steps {
                if kill && !sim.instances.is_empty() {
                    let id = sim.instances[victim % sim.instances.len()].id.clone();
                    sim.kill(&id);
                }
                let services = [svc(WEB, &[("v1", stable), ("v2", candidate)])];
                let d = sim.pass(&services, &revisions);
                let fp_of = |id: &str| sim.instances.iter().find(|i| i.id == id).map(|i| i.fingerprint.clone());
                for r in &d.routes {
                    for b in &r.backends {
                        let fp = fp_of(&b.id).unwrap();
                        prop_assert_eq!(b.addr.port(), revisions[&fp].port.unwrap());
                    }
                }
                for p in &d.probes {
                    let fp = fp_of(&p.id).unwrap();
                    prop_assert_eq!(p.addr.map(|a| a.port()), revisions[&fp].port);
                    prop_assert_eq!(&p.readiness, &revisions[&fp].readiness);
                }
                let mut slots = BTreeSet::new();
                for i in sim.instances.iter().filter(|i| !i.draining && i.run != RunState::Failed) {
                    prop_assert!(slots.insert((i.fingerprint.clone(), i.slot)), "two instances in slot {} of {}", i.slot, i.fingerprint);
                }
                sim.advance(100);
            }
        }

        /// Whatever the groups were, a pass on steady groups converges: the next decision is
        /// idle with exactly `replicas` instances of the one revision, all routed.
        #[test]
        fn converges_to_the_steady_group(
            steps in proptest::collection::vec((0u32..4, 0u32..4), 0..6),
            replicas in 0u32..5,
        ) {
            let revisions = revs(&[("v1", facts(8080, "/", 30)), ("v2", facts(9090, "/", 30))]);
            let mut sim = Sim::new(NOW, 0);
            for (a, b) in steps {
                sim.pass(&[svc(WEB, &[("v1", a), ("v2", b)])], &revisions);
                sim.advance(100);
            }
            let steady = [svc(WEB, &[("v2", replicas)])];
            for _ in 0..3 {
                sim.pass(&steady, &revisions);
                sim.advance(100);
            }
            let d = sim.pass(&steady, &revisions);
            prop_assert!(d.is_idle());
            prop_assert_eq!(sim.instances.len(), replicas as usize);
            prop_assert_eq!(routed(&d, DOMAIN).len(), replicas as usize);
        }
    }
}

#[test]
fn sim_drained_instances_move_one_at_a_time_and_the_route_never_shrinks() {
    let revisions = one_rev();
    let services = [svc(WEB, &[("a", 3)])];
    let mut sim = Sim::new(NOW, 100);
    for _ in 0..3 {
        sim.pass(&services, &revisions);
        sim.advance(100);
    }
    // Their node drains: all three are to leave it, with no deadline.
    let evicted: Vec<String> = sim.instances.iter().map(|i| i.id.clone()).collect();
    for i in &mut sim.instances {
        i.evict = Some(u64::MAX);
    }
    let mut migrated = Vec::new();
    for _ in 0..60 {
        let d = sim.pass(&services, &revisions);
        assert!(
            routed(&d, DOMAIN).len() >= 3,
            "a drain never routes fewer than the replicas: {:?}",
            routed(&d, DOMAIN)
        );
        assert!(d.starts.len() <= 1, "one replacement at a time: {d:?}");
        for r in &d.removes {
            assert_eq!(r.reason, RemoveReason::Migrated);
            assert!(r.drain.is_some(), "a migrated instance is drained");
            migrated.push(r.id.clone());
        }
        if sim.instances.iter().all(|i| i.evict.is_none()) && d.is_idle() {
            break;
        }
        sim.advance(100);
    }
    migrated.sort();
    let mut want = evicted;
    want.sort();
    assert_eq!(migrated, want);
    assert_eq!(sim.instances.len(), 3);
    assert_eq!(routed(&sim.pass(&services, &revisions), DOMAIN).len(), 3);
}

fn exclusive(mut s: ServiceState) -> ServiceState {
    s.exclusive = Some("data".into());
    s
}

#[test]
fn stop_first_starts_the_new_revision_only_once_the_old_instance_is_gone() {
    let revisions = revs(&[("v1", facts(8080, "/", 30)), ("v2", facts(8080, "/", 30))]);
    // The rollout asks for the candidate only: the old instance is removed (drained) and
    // the candidate waits, saying why.
    let services = [exclusive(svc(WEB, &[("v1", 0), ("v2", 1)]))];
    let old = inst("old", WEB, "v1", 0, 1);
    let d = decide(&snap(
        services.to_vec(),
        revisions.clone(),
        vec![old.clone()],
    ));
    assert_eq!(removed(&d), vec![("old".into(), RemoveReason::ScaledDown)]);
    assert!(d.starts.is_empty(), "{d:?}");
    assert_eq!(
        d.waiting.get(WEB).map(String::as_str),
        Some("stop-first: volume data is not shared")
    );
    // Still draining: still no start.
    let mut draining = old.clone();
    draining.draining = true;
    let d = decide(&snap(services.to_vec(), revisions.clone(), vec![draining]));
    assert!(d.starts.is_empty() && d.removes.is_empty(), "{d:?}");
    // Gone: the candidate starts.
    let d = decide(&snap(services.to_vec(), revisions.clone(), vec![]));
    assert_eq!(started(&d), vec![(WEB.into(), 0, "v2".into())]);
    assert!(d.waiting.is_empty());
    // A crashed instance writes nothing: its replacement starts in the same pass.
    let mut dead = inst("dead", WEB, "v2", 0, 2);
    dead.run = RunState::Failed;
    let d = decide(&snap(
        vec![exclusive(svc(WEB, &[("v2", 1)]))],
        revisions,
        vec![dead],
    ));
    assert_eq!(removed(&d), vec![("dead".into(), RemoveReason::Failed)]);
    assert_eq!(started(&d), vec![(WEB.into(), 0, "v2".into())]);
}

#[test]
fn stop_first_never_runs_two_instances_of_one_volume_through_a_rollout() {
    let revisions = revs(&[("v1", facts(8080, "/", 30)), ("v2", facts(8080, "/", 30))]);
    let mut sim = Sim::new(NOW, 200);
    let before = [exclusive(svc(WEB, &[("v1", 1)]))];
    let during = [exclusive(svc(WEB, &[("v1", 0), ("v2", 1)]))];
    for _ in 0..5 {
        sim.pass(&before, &revisions);
        sim.advance(100);
    }
    for _ in 0..30 {
        let d = sim.pass(&during, &revisions);
        assert!(sim.instances.len() <= 1, "two on one volume: {d:?}");
        sim.advance(25);
    }
    assert_eq!(sim.instances.len(), 1);
    assert_eq!(sim.instances[0].fingerprint, "v2");
    assert!(sim.instances[0].ready);
}

#[test]
fn a_dependent_starts_only_once_its_dependency_has_a_ready_instance() {
    const DB: &str = "p/db";
    let revisions = revs(&[("a", facts(8080, "/", 30)), ("d", facts(5432, "/", 30))]);
    let mut web = svc(WEB, &[("a", 1)]);
    web.depends_on = vec![DB.into()];
    let services = vec![svc(DB, &[("d", 1)]), web];
    let d = decide(&snap(services.clone(), revisions.clone(), vec![]));
    assert_eq!(started(&d), vec![(DB.into(), 0, "d".into())]);
    assert_eq!(
        d.waiting.get(WEB).map(String::as_str),
        Some("waiting for db")
    );
    let db = inst("db1", DB, "d", 0, 1);
    let d = decide(&snap(
        services.clone(),
        revisions.clone(),
        vec![starting(db.clone())],
    ));
    assert!(d.starts.is_empty(), "db not ready yet: {d:?}");
    let d = decide(&snap(services, revisions, vec![db]));
    assert_eq!(started(&d), vec![(WEB.into(), 0, "a".into())]);
    assert!(d.waiting.is_empty());
}
