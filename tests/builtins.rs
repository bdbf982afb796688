//! Every default plugin, loaded from the bytes embedded in `orca`, exercised through the real
//! wasmtime runtime (not by calling their Rust code natively): strategies plan, placement
//! places, probes probe a real socket, the forges' webhook plugins verify the real payloads in
//! `tests/fixtures/webhooks/` byte for byte, and git-build drives a build host.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use orca::plugins::*;
use sha2::Sha256;

fn runtime() -> PluginRuntime {
    PluginRuntime::new(RuntimeLimits::default(), None).expect("runtime")
}

fn builtin_plugin(rt: &PluginRuntime, name: &str) -> Plugin {
    let bytes = builtin(name).unwrap_or_else(|| panic!("{name} is embedded"));
    rt.load(bytes, PluginOrigin::Builtin(name.into()))
        .unwrap_or_else(|e| panic!("{name} loads: {e}"))
}

#[test]
fn every_default_plugin_is_embedded_and_implements_its_world() {
    let rt = runtime();
    let expected = [
        ("rolling", World::Strategy),
        ("canary", World::Strategy),
        ("spread", World::Placement),
        ("http-probe", World::Probe),
        ("tcp-probe", World::Probe),
        ("github", World::Webhook),
        ("gitea", World::Webhook),
        ("gitlab", World::Webhook),
        ("git-build", World::Builder),
    ];
    assert_eq!(
        builtin_names().len(),
        expected.len(),
        "{:?}",
        builtin_names()
    );
    for (name, world) in expected {
        let p = builtin_plugin(&rt, name);
        assert_eq!(p.world(), world, "{name}");
        let info = inspect(builtin(name).unwrap()).unwrap();
        assert_eq!(info.package.as_deref(), Some("orca:plugin@0.3.0"), "{name}");
        assert!(
            !info.imports.iter().any(|i| i.starts_with("wasi:")),
            "{name} imports WASI: {:?}",
            info.imports
        );
    }
}

fn service(replicas: u32, params: &[(&str, &str)]) -> Service {
    Service {
        project: "p".into(),
        name: "web".into(),
        image: "app:2".into(),
        replicas,
        port: Some(8080),
        domain: Some("web.test".into()),
        params: params
            .iter()
            .map(|(k, v)| Pair {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
    }
}

fn instances(n: usize, revision: u64, readiness: Readiness) -> Vec<Instance> {
    (0..n)
        .map(|i| Instance {
            id: format!("r{revision}-{i}"),
            node: "n1".into(),
            revision,
            readiness,
            age_ms: 1_000,
        })
        .collect()
}

fn state(
    svc: Service,
    stable: Vec<Instance>,
    candidate: Vec<Instance>,
    plugin_state: Vec<u8>,
) -> RolloutState {
    RolloutState {
        service: svc,
        stable_revision: Some(1),
        candidate_revision: 2,
        traffic: Traffic {
            stable: stable.len() as u32,
            candidate: 0,
        },
        stable,
        candidate,
        candidate_requests: 0,
        candidate_errors: 0,
        elapsed_ms: 0,
        now_ms: 1_700_000_000_000,
        promote_requested: false,
        rollback_requested: false,
        plugin_state,
    }
}

#[test]
fn rolling_surges_one_at_a_time_and_rolls_back_on_failure() {
    let rt = runtime();
    let rolling = builtin_plugin(&rt, "rolling");
    let first = rolling
        .plan(&state(
            service(3, &[]),
            instances(3, 1, Readiness::Ready),
            vec![],
            vec![],
        ))
        .expect("plan");
    assert!(
        first.actions.contains(&Action::ScaleCandidate(1)),
        "{first:?}"
    );
    assert!(
        !first
            .actions
            .iter()
            .any(|a| matches!(a, Action::ScaleStable(n) if *n < 3)),
        "no stable instance goes before a candidate is ready: {first:?}"
    );

    let mut failed = state(
        service(3, &[]),
        instances(3, 1, Readiness::Ready),
        instances(1, 2, Readiness::Failed),
        first.plugin_state.clone(),
    );
    failed.elapsed_ms = 2_000;
    let step = rolling.plan(&failed).expect("plan");
    assert!(
        step.actions
            .iter()
            .any(|a| matches!(a, Action::Rollback(r) if r.contains("failed"))),
        "{step:?}"
    );

    let bad = rolling.plan(&state(
        service(3, &[("max_surge", "\"lots\"")]),
        instances(3, 1, Readiness::Ready),
        vec![],
        vec![],
    ));
    assert!(matches!(bad, Err(PluginError::Failed { .. })), "{bad:?}");
}

#[test]
fn canary_splits_traffic_by_weight_once_the_canary_is_ready() {
    let rt = runtime();
    let canary = builtin_plugin(&rt, "canary");
    let svc = service(5, &[("canary_weight", "20")]);
    let first = canary
        .plan(&state(
            svc.clone(),
            instances(5, 1, Readiness::Ready),
            vec![],
            vec![],
        ))
        .expect("plan");
    assert!(
        first.actions.contains(&Action::ScaleCandidate(1)),
        "{first:?}"
    );
    let ready = canary
        .plan(&state(
            svc,
            instances(5, 1, Readiness::Ready),
            instances(1, 2, Readiness::Ready),
            first.plugin_state,
        ))
        .expect("plan");
    assert!(
        ready.actions.contains(&Action::SetTraffic(Traffic {
            stable: 80,
            candidate: 20
        })),
        "{ready:?}"
    );
}

#[test]
fn spread_filters_and_scores_nodes() {
    let rt = runtime();
    let spread = builtin_plugin(&rt, "spread");
    let node = |id: &str, free_mib: u64, draining: bool| Node {
        id: id.into(),
        name: format!("host-{id}"),
        address: "10.0.0.1".into(),
        cpu_millis: 4000,
        cpu_millis_free: 4000,
        memory_bytes: 8 << 30,
        memory_bytes_free: free_mib << 20,
        instances: 0,
        draining,
        labels: vec![],
    };
    let nodes = [
        node("a", 4096, false),
        node("b", 100, false),
        node("c", 4096, true),
        node("d", 8000, false),
    ];
    let request = PlacementRequest {
        service: service(2, &[]),
        pin: None,
        memory_bytes: 512 << 20,
        cpu_millis: 500,
        existing: vec![NodeCount {
            node: "d".into(),
            count: 3,
        }],
    };
    let v = spread.place(&request, &nodes).expect("place");
    assert_eq!(v.len(), 4);
    assert!(
        v[0].feasible && !v[1].feasible && !v[2].feasible && v[3].feasible,
        "{v:?}"
    );
    assert!(
        v[1].reason.contains("memory") && v[2].reason.contains("draining"),
        "{v:?}"
    );
    assert!(
        v[0].score > v[3].score,
        "spread prefers the node without instances: {v:?}"
    );

    let pinned = spread
        .place(
            &PlacementRequest {
                pin: Some("host-d".into()),
                ..request
            },
            &nodes,
        )
        .expect("place");
    assert!(!pinned[0].feasible && pinned[3].feasible, "{pinned:?}");
    assert!(pinned[0].reason.contains("host-d"), "{pinned:?}");
}

/// A one-route HTTP server on loopback answering `status` to every request.
fn http_server(status: u16) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            );
        }
    });
    addr
}

#[test]
fn probes_check_a_real_socket_through_their_endpoint() {
    let rt = runtime();
    let http = builtin_plugin(&rt, "http-probe");
    let tcp = builtin_plugin(&rt, "tcp-probe");
    let settings = |path: Option<&str>| ProbeSettings {
        path: path.map(str::to_string),
        timeout_ms: 1000,
        params: vec![],
    };
    let up = http_server(200);
    let sick = http_server(503);
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    assert_eq!(
        http.check(&settings(Some("/healthz")), Arc::new(TcpEndpoint::new(up)))
            .unwrap(),
        Ok(())
    );
    let reason = http
        .check(
            &settings(Some("/healthz")),
            Arc::new(TcpEndpoint::new(sick)),
        )
        .unwrap()
        .unwrap_err();
    assert!(
        reason.contains("503") && reason.contains("/healthz"),
        "{reason}"
    );
    assert_eq!(
        tcp.check(&settings(None), Arc::new(TcpEndpoint::new(up)))
            .unwrap(),
        Ok(())
    );
    assert!(tcp
        .check(&settings(None), Arc::new(TcpEndpoint::new(closed)))
        .unwrap()
        .is_err());
}

fn fixture(path: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/webhooks")
        .join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn request(headers: &[(&str, &str)], body: Vec<u8>) -> WebhookRequest {
    WebhookRequest {
        method: "POST".into(),
        path: "/api/v1/webhooks/x".into(),
        headers: headers
            .iter()
            .map(|(k, v)| Pair {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        body,
    }
}

fn hook(repo: &str, branch: &str, secret: &str) -> Hook {
    Hook {
        id: "h1".into(),
        repo: repo.into(),
        branch: branch.into(),
        secret: secret.into(),
    }
}

#[test]
fn github_plugin_verifies_the_real_payloads() {
    let rt = runtime();
    let gh = builtin_plugin(&rt, "github");
    let secret = "s3cret";
    let body = fixture("github/push-branch.json");
    let repo = "woodpecker-ci/woodpecker";
    let hooks = [hook(repo, "main", secret)];
    let sig = format!("sha256={}", hmac_hex(secret, &body));
    let ok = gh
        .handle(
            &request(
                &[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &sig)],
                body.clone(),
            ),
            &hooks,
        )
        .unwrap();
    match ok {
        Ok(WebhookOutcome::Redeploy(r)) => {
            assert_eq!(r.len(), 1);
            assert_eq!((r[0].hook.as_str(), r[0].branch.as_str()), ("h1", "main"));
            assert_eq!(r[0].commit.len(), 40);
        }
        other => panic!("{other:?}"),
    }
    // Tampered body, wrong, empty and missing signatures: refused, nothing done.
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    for (headers, b) in [
        (
            vec![
                ("X-GitHub-Event", "push"),
                ("X-Hub-Signature-256", sig.as_str()),
            ],
            tampered,
        ),
        (
            vec![
                ("X-GitHub-Event", "push"),
                ("X-Hub-Signature-256", "sha256=00"),
            ],
            body.clone(),
        ),
        (
            vec![("X-GitHub-Event", "push"), ("X-Hub-Signature-256", "")],
            body.clone(),
        ),
        (vec![("X-GitHub-Event", "push")], body.clone()),
    ] {
        let r = gh.handle(&request(&headers, b), &hooks).unwrap();
        match r {
            Err(rej) => assert!(rej.status == 401 || rej.status == 400, "{rej:?}"),
            Ok(o) => panic!("accepted: {o:?}"),
        }
    }
    // Unknown repository.
    let r = gh
        .handle(
            &request(
                &[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &sig)],
                body.clone(),
            ),
            &[hook("other/repo", "main", secret)],
        )
        .unwrap();
    assert!(matches!(r, Err(ref rej) if rej.status == 404), "{r:?}");
    // Ping (signed) answers pong; a tag deletion is ignored.
    let ping = fixture("github/ping.json");
    let ping_repo = serde_json::from_slice::<serde_json::Value>(&ping).unwrap()["repository"]
        ["full_name"]
        .as_str()
        .unwrap()
        .to_string();
    let r = gh
        .handle(
            &request(
                &[
                    ("X-GitHub-Event", "ping"),
                    (
                        "X-Hub-Signature-256",
                        &format!("sha256={}", hmac_hex(secret, &ping)),
                    ),
                ],
                ping,
            ),
            &[hook(&ping_repo, "main", secret)],
        )
        .unwrap();
    assert!(matches!(r, Ok(WebhookOutcome::Pong)), "{r:?}");
    let tag = fixture("github/push-tag-deleted.json");
    let tag_repo = serde_json::from_slice::<serde_json::Value>(&tag).unwrap()["repository"]
        ["full_name"]
        .as_str()
        .unwrap()
        .to_string();
    let r = gh
        .handle(
            &request(
                &[
                    ("X-GitHub-Event", "push"),
                    (
                        "X-Hub-Signature-256",
                        &format!("sha256={}", hmac_hex(secret, &tag)),
                    ),
                ],
                tag,
            ),
            &[hook(&tag_repo, "*", secret)],
        )
        .unwrap();
    assert!(matches!(r, Ok(WebhookOutcome::Ignore(_))), "{r:?}");
}

#[test]
fn gitea_plugin_checks_the_published_vector() {
    let rt = runtime();
    let gitea = builtin_plugin(&rt, "gitea");
    let body = fixture("gitea/push-new-branch.json");
    let secret = "IsWishesWereHorsesWedAllBeEatingSteak!";
    let sig = "60fe446c74fa0cb9474f98cc557db79e10c7aaf22cf324ad65239600b9e4d915";
    assert_eq!(
        hmac_hex(secret, &body),
        sig,
        "the fixture's published vector"
    );
    let repo = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["repository"]
        ["full_name"]
        .as_str()
        .unwrap()
        .to_string();
    let headers = [("X-Gitea-Event", "push"), ("X-Gitea-Signature", sig)];
    let r = gitea
        .handle(
            &request(&headers, body.clone()),
            &[hook(&repo, "*", secret)],
        )
        .unwrap();
    assert!(
        matches!(r, Ok(WebhookOutcome::Redeploy(ref v)) if v.len() == 1),
        "{r:?}"
    );
    let r = gitea
        .handle(
            &request(&headers, body),
            &[hook(&repo, "*", "wrong secret")],
        )
        .unwrap();
    assert!(matches!(r, Err(ref rej) if rej.status == 401), "{r:?}");
}

#[test]
fn gitlab_plugin_compares_the_token() {
    let rt = runtime();
    let gitlab = builtin_plugin(&rt, "gitlab");
    let body = fixture("gitlab/push.json");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let repo = v["project"]["path_with_namespace"].as_str().unwrap();
    let hooks = [hook(repo, "*", "gl-token")];
    let r = gitlab
        .handle(
            &request(
                &[
                    ("X-Gitlab-Event", "Push Hook"),
                    ("X-Gitlab-Token", "gl-token"),
                ],
                body.clone(),
            ),
            &hooks,
        )
        .unwrap();
    let want = v["checkout_sha"].as_str().unwrap();
    match r {
        Ok(WebhookOutcome::Redeploy(r)) => assert_eq!(r[0].commit, want),
        other => panic!("{other:?}"),
    }
    for headers in [
        vec![("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "nope")],
        vec![("X-Gitlab-Event", "Push Hook")],
    ] {
        let r = gitlab
            .handle(&request(&headers, body.clone()), &hooks)
            .unwrap();
        assert!(matches!(r, Err(ref rej) if rej.status == 401), "{r:?}");
    }
}

/// A build host that records what the plugin asked for.
#[derive(Default)]
struct RecordingBuildHost {
    calls: Mutex<Vec<String>>,
    fail_build: bool,
}

impl BuildHostCap for RecordingBuildHost {
    fn log_line(&self, line: &str) {
        self.calls.lock().unwrap().push(format!("log {line}"));
    }
    fn checkout(&self, repo: &str, commit: &str) -> Result<String, String> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("checkout {repo} {commit}"));
        Ok("/work/w1".into())
    }
    fn build_image(
        &self,
        workdir: &str,
        dockerfile: &str,
        context: &str,
        tag: &str,
    ) -> Result<String, String> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("build {workdir} {dockerfile} {context} {tag}"));
        if self.fail_build {
            Err("step 2/3: COPY failed".into())
        } else {
            Ok("sha256:abc".into())
        }
    }
}

#[test]
fn git_build_drives_checkout_then_image_build() {
    let rt = runtime();
    let gb = builtin_plugin(&rt, "git-build");
    let req = BuildRequest {
        project: "p".into(),
        service: "web".into(),
        repo: "file:///src/app".into(),
        branch: "main".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        dockerfile: "Dockerfile".into(),
        context: ".".into(),
        tag: "p/web:0123456789ab".into(),
    };
    let host = Arc::new(RecordingBuildHost::default());
    let out = gb.build(&req, host.clone()).unwrap().unwrap();
    assert_eq!(
        (out.image_id.as_str(), out.tag.as_str()),
        ("sha256:abc", "p/web:0123456789ab")
    );
    let calls = host.calls.lock().unwrap().clone();
    let checkout = calls
        .iter()
        .position(|c| c.starts_with("checkout file:///src/app 0123"))
        .expect("checkout");
    let build = calls
        .iter()
        .position(|c| c == "build /work/w1 Dockerfile . p/web:0123456789ab")
        .expect("build");
    assert!(checkout < build, "{calls:?}");

    let failing = Arc::new(RecordingBuildHost {
        fail_build: true,
        ..Default::default()
    });
    let err = gb.build(&req, failing).unwrap().unwrap_err();
    assert!(
        err.contains("image build failed") && err.contains("COPY failed"),
        "{err}"
    );
}
