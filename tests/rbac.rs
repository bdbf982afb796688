//! End-to-end RBAC: every API route, called over HTTP with no token, a bad token, and each
//! role, against the reference's matrix. Deny by default: a guarded route answers 401
//! without a valid token and 403 to a role without the permission; a role with the
//! permission gets the route's real success status for a valid request (so a 4xx or a 500
//! from an allowed call fails the test).

mod support;

use hmac::{Hmac, Mac};
use orca::api::{allows, Permission, ROUTES};
use orca_config::Role;
use serde_json::{json, Value};
use sha2::Sha256;
use support::*;

/// One request of the matrix: where it goes, what it carries, and the status the route
/// answers when the caller may call it (its real success status: 200, 201 or 202).
struct Req {
    path: String,
    body: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
    expect: u16,
}

impl Req {
    fn get(path: impl Into<String>) -> Req {
        Req {
            path: path.into(),
            body: None,
            headers: Vec::new(),
            expect: 200,
        }
    }

    fn json(path: impl Into<String>, body: Value, expect: u16) -> Req {
        Req {
            path: path.into(),
            body: Some(serde_json::to_vec(&body).unwrap()),
            headers: Vec::new(),
            expect,
        }
    }
}

/// What the requests act on: a project with a manual canary (`web`), a plain service
/// (`other`), a second project, and webhooks of every forge for a branch no push names (so
/// a verified delivery is answered 202 "ignored" and changes nothing).
struct Fixture<'a> {
    s: &'a Server,
    project: String,
    second: String,
    node: String,
    n: u32,
}

const GH_SECRET: &str = "rbac-github-secret-0123";
const GITEA_SECRET: &str = "rbac-gitea-secret-0123";
const GITLAB_TOKEN: &str = "rbac-gitlab-token-0123";

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(workspace().join("tests/fixtures/webhooks").join(path)).unwrap()
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn web_spec(project: &str, version: &str) -> Value {
    json!({
        "name": "web", "project": project, "image": testapp_image(), "replicas": 2,
        "port": 8080, "health": "/healthz", "env": {"VERSION": version},
        "deploy": {"strategy": "canary", "canary_weight": 50},
    })
}

impl<'a> Fixture<'a> {
    fn new(s: &'a Server) -> Fixture<'a> {
        let project = unique("rb");
        let second = unique("rbb");
        let mut f = Fixture {
            s,
            project: project.clone(),
            second: second.clone(),
            node: String::new(),
            n: 0,
        };
        f.admin(
            "POST",
            "/api/v1/deploy",
            Some(json!({"services": [
                web_spec(&project, "v0"),
                {"name": "other", "project": project, "image": testapp_image(), "port": 8080},
                {"name": "x", "project": second, "image": testapp_image(), "port": 8080},
            ]})),
        );
        s.wait_service(&project, "web", "ready", |v| v["ready_replicas"] == 2);
        for (forge, repo, secret) in [
            ("github", "woodpecker-ci/woodpecker", GH_SECRET),
            ("gitea", "example/example", GITEA_SECRET),
            ("gitlab", "mike/diaspora", GITLAB_TOKEN),
        ] {
            f.admin(
                "POST",
                "/api/v1/webhooks",
                Some(json!({"repo": repo, "service": "other", "project": project,
                    "branch": "no-push-names-this", "secret": secret, "forge": forge})),
            );
        }
        let info = f.admin("GET", "/api/v1/cluster/info", None);
        f.node = info["nodes"][0]["id"].as_str().unwrap().to_string();
        f
    }

    fn next(&mut self) -> u32 {
        self.n += 1;
        self.n
    }

    /// A setup call as admin; it must succeed.
    fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| serde_json::to_vec(&b).unwrap());
        let (code, text) = http_raw(
            method,
            &format!("{}{path}", self.s.api),
            Some(ADMIN),
            &[],
            body.as_deref(),
        )
        .unwrap();
        assert!(
            (200..300).contains(&code),
            "setup {method} {path}: {code} {text}"
        );
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Waits until no backup or restore runs.
    fn backups_idle(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let list = self.admin("GET", "/api/v1/backups", None);
            let running = list["backups"].as_array().into_iter().flatten().any(|b| {
                let id = b["id"].as_str().unwrap_or("");
                let one = self.admin("GET", &format!("/api/v1/backups/{id}"), None);
                one["job"]["state"] == "running"
            });
            if !running {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "backups never idle");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// A finished backup of service `vol` (no instances, one named volume): its id.
    fn backup_of_vol(&self) -> String {
        self.backups_idle();
        self.admin(
            "POST",
            "/api/v1/deploy",
            Some(json!({"services": [{"name": "vol", "project": self.project,
                "image": testapp_image(), "port": 8080, "replicas": 0,
                "volumes": ["rbdata:/data"]}]})),
        );
        // Its volume, as orca makes them (backups read only volumes that exist).
        let p = &self.project;
        let _ = std::process::Command::new("docker")
            .args(["volume", "create"])
            .args(["--label", "orca.managed=true"])
            .args(["--label", &format!("orca.cluster={}", self.s.cluster)])
            .args([
                "--label",
                &format!("orca.cluster.id={}", cluster_id(&self.s.cluster)),
            ])
            .args(["--label", &format!("orca.project={p}")])
            .args(["--label", "orca.volume=rbdata"])
            .arg(format!("orca-{}-{p}-rbdata", self.s.cluster))
            .output()
            .unwrap();
        let v = self.admin(
            "POST",
            "/api/v1/backups",
            Some(json!({"project": self.project, "service": "vol"})),
        );
        let id = v["id"].as_str().unwrap().to_string();
        self.backups_idle();
        id
    }

    fn web_rollout(&self) -> Value {
        self.s.service(&self.project, "web")["rollout"].clone()
    }

    /// Waits until `web` has no rollout in progress, or one waiting for the operator.
    fn wait_web(&self, what: &str, done: impl Fn(&Value) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        loop {
            let r = self.web_rollout();
            if done(&r) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "web never {what}: {r:#}\n{}",
                tail(&self.s.log(), 30)
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// The request of `method route`; with `setup`, whatever it needs to succeed is made
    /// first (a caller the route refuses gets the same request without the setup).
    fn req(&mut self, method: &str, route: &str, setup: bool) -> Req {
        let p = self.project.clone();
        let n = self.next();
        match (method, route) {
            ("POST", "/api/v1/deploy") => Req::json(
                route,
                json!({"services": [{"name": "dep", "project": p, "image": testapp_image(),
                    "port": 8080, "env": {"N": n.to_string()}}]}),
                200,
            ),
            ("GET", "/api/v1/status") => Req::get(route),
            ("POST", "/api/v1/services/{name}/scale") => Req::json(
                format!("/api/v1/services/other/scale?project={p}"),
                json!({"replicas": 1}),
                200,
            ),
            ("DELETE", "/api/v1/services/{name}") => {
                if setup {
                    self.admin(
                        "POST",
                        "/api/v1/deploy",
                        Some(json!({"services": [{"name": "gone", "project": p,
                            "image": testapp_image(), "port": 8080, "env": {"N": n.to_string()}}]})),
                    );
                }
                Req::get(format!("/api/v1/services/gone?project={p}"))
            }
            ("DELETE", "/api/v1/projects/{name}") => {
                Req::get(format!("/api/v1/projects/{}", self.second))
            }
            ("POST", "/api/v1/stop") => Req::get(route),
            ("GET", "/api/v1/services/{name}/logs") => {
                Req::get(format!("/api/v1/services/web/logs?project={p}&tail=5"))
            }
            ("GET", "/api/v1/cluster/info") => Req::get(route),
            ("POST", "/api/v1/services/{name}/rebalance") => Req {
                expect: 200,
                ..Req::get(format!("/api/v1/services/other/rebalance?project={p}"))
            },
            ("POST", "/api/v1/services/{name}/promote") => {
                if setup {
                    // A manual canary of a new version, waiting for the operator.
                    self.wait_web("settled", |r| r.is_null() || r["phase"] != "progressing");
                    self.admin(
                        "POST",
                        "/api/v1/deploy",
                        Some(json!({"services": [web_spec(&p, &format!("v{n}"))]})),
                    );
                    self.wait_web("awaiting the operator", |r| r["awaiting_operator"] == true);
                }
                Req::get(format!("/api/v1/services/web/promote?project={p}"))
            }
            ("POST", "/api/v1/services/{name}/rollback") => {
                if setup {
                    // Either restores the revision before (nothing in progress) or abandons
                    // the rollout that an earlier rollback opened: both succeed.
                    self.wait_web("settled or awaiting", |r| {
                        r.is_null() || r["phase"] != "progressing" || r["awaiting_operator"] == true
                    });
                }
                Req::json(
                    format!("/api/v1/services/web/rollback?project={p}"),
                    json!({}),
                    200,
                )
            }
            ("POST", "/api/v1/cluster/tokens") => {
                Req::json(route, json!({"ttl_secs": 60, "reusable": false}), 201)
            }
            // No agent joins in this test (tests/nodes.rs removes real ones): whoever may
            // call it gets the route's own answer for an unknown node, the others 403.
            ("DELETE", "/api/v1/cluster/nodes/{id}") => Req {
                expect: 404,
                ..Req::get(format!("/api/v1/cluster/nodes/no-such-node-{n}"))
            },
            // No agent joins here (tests/nodes.rs drains real ones): the route's own answer
            // for an unknown node.
            ("POST", "/api/v1/cluster/nodes/{id}/drain") => Req {
                expect: 404,
                ..Req::json(
                    format!("/api/v1/cluster/nodes/no-such-node-{n}/drain"),
                    json!({"deadline_secs": 60}),
                    404,
                )
            },
            ("POST", "/api/v1/cluster/nodes/{id}/undrain") => Req {
                expect: 404,
                ..Req::get(format!("/api/v1/cluster/nodes/no-such-node-{n}/undrain"))
            },
            ("GET", "/api/v1/webhooks") => Req::get(route),
            ("POST", "/api/v1/webhooks") => Req::json(
                route,
                json!({"repo": format!("acme/r{n}"), "service": "other", "project": p,
                    "branch": "main", "secret": "0123456789abcdef"}),
                201,
            ),
            ("DELETE", "/api/v1/webhooks/{id}") => {
                let id = if setup {
                    let hook = self.admin(
                        "POST",
                        "/api/v1/webhooks",
                        Some(json!({"repo": format!("acme/d{n}"), "service": "other",
                            "project": p, "branch": "main", "secret": "0123456789abcdef"})),
                    );
                    hook["id"].as_str().unwrap().to_string()
                } else {
                    "wh-00000000".to_string()
                };
                Req::get(format!("/api/v1/webhooks/{id}"))
            }
            // The receivers: verified deliveries for a branch no hook follows.
            ("POST", "/api/v1/webhooks/github") | ("POST", "/api/v1/webhooks/{forge}") => {
                let body = fixture("github/push-branch.json");
                let sig = format!("sha256={}", hmac_hex(GH_SECRET, &body));
                Req {
                    path: "/api/v1/webhooks/github".into(),
                    headers: vec![
                        ("X-GitHub-Event".into(), "push".into()),
                        ("X-GitHub-Delivery".into(), format!("rbac-{n}")),
                        ("X-Hub-Signature-256".into(), sig),
                    ],
                    body: Some(body),
                    expect: 202,
                }
            }
            ("POST", "/api/v1/webhooks/gitea") => {
                let body = fixture("gitea/push-new-branch.json");
                let sig = hmac_hex(GITEA_SECRET, &body);
                Req {
                    path: route.into(),
                    headers: vec![
                        ("X-Gitea-Event".into(), "push".into()),
                        ("X-Gitea-Delivery".into(), format!("rbac-{n}")),
                        ("X-Gitea-Signature".into(), sig),
                    ],
                    body: Some(body),
                    expect: 202,
                }
            }
            ("POST", "/api/v1/webhooks/gitlab") => Req {
                path: route.into(),
                headers: vec![
                    ("X-Gitlab-Event".into(), "Push Hook".into()),
                    ("X-Gitlab-Token".into(), GITLAB_TOKEN.into()),
                    ("X-Gitlab-Event-UUID".into(), format!("rbac-{n}")),
                ],
                body: Some(fixture("gitlab/push.json")),
                expect: 202,
            },
            ("GET", "/api/v1/tokens") => Req::get(route),
            ("POST", "/api/v1/tokens") => Req::json(
                route,
                json!({"name": format!("t{n}"), "role": "viewer"}),
                201,
            ),
            ("DELETE", "/api/v1/tokens/{name}") | ("POST", "/api/v1/tokens/{name}/rotate") => {
                if setup {
                    self.admin(
                        "POST",
                        "/api/v1/tokens",
                        Some(json!({"name": format!("t{n}"), "role": "viewer"})),
                    );
                }
                Req::get(route.replace("{name}", &format!("t{n}")))
            }
            ("GET", "/api/v1/projects/{name}/secrets") => {
                Req::get(format!("/api/v1/projects/{p}/secrets"))
            }
            ("PUT", "/api/v1/projects/{name}/secrets/{key}") => Req::json(
                format!("/api/v1/projects/{p}/secrets/K{n}"),
                json!({"value": "a-value"}),
                200,
            ),
            ("DELETE", "/api/v1/projects/{name}/secrets/{key}") => {
                if setup {
                    self.admin(
                        "PUT",
                        &format!("/api/v1/projects/{p}/secrets/K{n}"),
                        Some(json!({"value": "a-value"})),
                    );
                }
                Req::get(format!("/api/v1/projects/{p}/secrets/K{n}"))
            }
            ("GET", "/api/v1/volumes") => Req::get(route),
            ("DELETE", "/api/v1/volumes/{project}/{name}") => {
                if setup {
                    // A volume of this cluster no container uses, labelled as orca makes them.
                    let id = cluster_id(&self.s.cluster);
                    let out = std::process::Command::new("docker")
                        .args(["volume", "create"])
                        .args(["--label", "orca.managed=true"])
                        .args(["--label", &format!("orca.cluster={}", self.s.cluster)])
                        .args(["--label", &format!("orca.cluster.id={id}")])
                        .args(["--label", &format!("orca.project={p}")])
                        .args(["--label", &format!("orca.volume=rbvol{n}")])
                        .arg(format!("orca-{}-{p}-rbvol{n}", self.s.cluster))
                        .output()
                        .unwrap();
                    assert!(out.status.success(), "{out:?}");
                }
                Req::get(format!("/api/v1/volumes/{p}/rbvol{n}"))
            }
            ("GET", "/api/v1/backups") => Req::get(route),
            ("POST", "/api/v1/backups") => {
                if setup {
                    self.backups_idle();
                }
                Req::json(route, json!({}), 202)
            }
            ("GET", "/api/v1/backups/{id}") => {
                let id = if setup {
                    self.backup_of_vol()
                } else {
                    "20260101T000000.000Z".to_string()
                };
                Req::get(format!("/api/v1/backups/{id}"))
            }
            ("POST", "/api/v1/backups/{id}/restore") => {
                let id = if setup {
                    self.backup_of_vol()
                } else {
                    "20260101T000000.000Z".to_string()
                };
                Req::json(format!("/api/v1/backups/{id}/restore"), json!({}), 202)
            }
            ("GET", "/api/v1/plugins") => Req::get(route),
            ("POST", "/api/v1/plugins") => Req {
                body: Some(orca::plugins::builtin("rolling").unwrap().to_vec()),
                ..Req::get(route)
            },
            ("PUT", "/api/v1/plugins/{name}") => Req {
                body: Some(orca::plugins::builtin("rolling").unwrap().to_vec()),
                expect: 201,
                ..Req::get(format!("/api/v1/plugins/mine{n}"))
            },
            ("GET", "/api/v1/events") => Req::get(format!("{route}?project={p}")),
            ("GET", "/api/v1/notifications") => Req::get(route),
            ("GET", "/api/v1/health") => Req::get(route),
            ("GET", "/metrics") => Req::get(route),
            ("GET", "/api/v1/services/{name}/diagnosis") => {
                Req::get(format!("/api/v1/services/web/diagnosis?project={p}"))
            }
            ("GET", "/api/v1/openapi.json") => Req::get(route),
            ("GET", "/api/v1/whoami") => Req::get(route),
            ("POST", "/mcp") => Req {
                headers: vec![(
                    "Accept".into(),
                    "application/json, text/event-stream".into(),
                )],
                ..Req::json(
                    route,
                    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                        "protocolVersion": "2025-03-26", "capabilities": {},
                        "clientInfo": {"name": "rbac", "version": "0"}}}),
                    200,
                )
            },
            _ => panic!(
                "tests/rbac.rs has no request for {method} {route}: add one that succeeds \
                 (with its real status) for the roles that may call it"
            ),
        }
    }
}

fn call(s: &Server, method: &str, r: &Req, token: Option<&str>) -> (u16, String) {
    let headers: Vec<(&str, &str)> = r
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    http_raw(
        method,
        &format!("{}{}", s.api, r.path),
        token,
        &headers,
        r.body.as_deref(),
    )
    .expect("API reachable")
}

/// The cluster id on this cluster's containers.
fn cluster_id(cluster: &str) -> String {
    let (id, _, _) = containers(cluster).into_iter().next().expect("a container");
    let out = std::process::Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{index .Config.Labels \"orca.cluster.id\"}}",
            &id,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn every_route_enforces_the_matrix() {
    let s = Server::start();
    let mut f = Fixture::new(&s);
    let roles = [
        (Role::Admin, ADMIN),
        (Role::Deployer, DEPLOYER),
        (Role::Viewer, VIEWER),
    ];
    // `stop` last: it stops what the other routes act on.
    let mut routes: Vec<_> = ROUTES.to_vec();
    routes.sort_by_key(|r| r.1 == "/api/v1/stop");
    let mut checked = 0;
    for (method, path, perm) in routes {
        match perm {
            None => {
                for token in [None, Some("bad"), Some(VIEWER)] {
                    let r = f.req(method, path, true);
                    let (code, body) = call(&s, method, &r, token);
                    assert_eq!(
                        code, r.expect,
                        "{method} {path} is public and answers {} with {token:?}, got {code}: {body}",
                        r.expect
                    );
                }
            }
            Some(perm) => {
                let r = f.req(method, path, false);
                let (code, body) = call(&s, method, &r, None);
                assert_eq!(code, 401, "{method} {path} without a token: {body}");
                assert!(body.contains("missing bearer token"), "{body}");
                let (code, body) = call(&s, method, &r, Some("not-a-real-token"));
                assert_eq!(code, 401, "{method} {path} with a bad token: {body}");
                for (role, token) in roles {
                    if allows(role, perm) {
                        let r = f.req(method, path, true);
                        let (code, body) = call(&s, method, &r, Some(token));
                        assert_eq!(
                            code, r.expect,
                            "{method} {path} as {role} must succeed with {}, got {code}: {body}\n{}",
                            r.expect,
                            tail(&s.log(), 20)
                        );
                    } else {
                        let r = f.req(method, path, false);
                        let (code, body) = call(&s, method, &r, Some(token));
                        assert_eq!(
                            code, 403,
                            "{method} {path} as {role} must be forbidden: {body}"
                        );
                        assert!(
                            body.contains(&role.to_string()),
                            "the 403 names the role: {body}"
                        );
                    }
                }
            }
        }
        checked += 1;
    }
    assert!(checked >= 20, "the route table covers the API");

    // The table matches the reference for the named columns.
    let perm_of = |m: &str, p: &str| ROUTES.iter().find(|r| r.0 == m && r.1 == p).unwrap().2;
    assert_eq!(perm_of("POST", "/api/v1/deploy"), Some(Permission::Deploy));
    assert_eq!(
        perm_of("POST", "/api/v1/services/{name}/scale"),
        Some(Permission::Operate)
    );
    assert_eq!(
        perm_of("GET", "/api/v1/services/{name}/logs"),
        Some(Permission::Read)
    );
    assert_eq!(
        perm_of("POST", "/api/v1/cluster/nodes/{id}/drain"),
        Some(Permission::Admin)
    );
    assert_eq!(perm_of("POST", "/api/v1/tokens"), Some(Permission::Admin));
    assert_eq!(perm_of("GET", "/api/v1/health"), None);
}

#[test]
fn created_tokens_work_once_shown_and_are_stored_hashed() {
    let s = Server::start();
    let value = s.cli(&[
        "token", "create", "--name", "gitea-ci", "--role", "deployer",
    ]);
    let value = value.trim();
    assert!(value.len() >= 32, "{value}");
    let list = s.cli(&["token", "list"]);
    assert!(
        list.contains("gitea-ci") && list.contains("deployer"),
        "{list}"
    );
    assert!(!list.contains(value), "token list never shows values");

    // The new token has the deployer's rights: status yes, token creation no.
    let (code, _) = http_raw(
        "GET",
        &format!("{}/api/v1/status", s.api),
        Some(value),
        &[],
        None,
    )
    .unwrap();
    assert_eq!(code, 200);
    let (code, _) = http_raw(
        "POST",
        &format!("{}/api/v1/tokens", s.api),
        Some(value),
        &[],
        Some(br#"{"name":"x","role":"admin"}"#),
    )
    .unwrap();
    assert_eq!(code, 403);

    // Duplicate names are refused; bad roles are named.
    let out = s.cli_in(
        ADMIN,
        None,
        &["token", "create", "--name", "gitea-ci", "--role", "viewer"],
    );
    assert!(!out.status.success());
    let out = s.cli_in(
        ADMIN,
        None,
        &["token", "create", "--name", "other", "--role", "owner"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin") && err.contains("deployer") && err.contains("viewer"),
        "{err}"
    );

    let db = std::fs::read(s.home().join("cluster.db")).unwrap();
    assert!(
        !db.windows(value.len()).any(|w| w == value.as_bytes()),
        "token stored in plaintext"
    );
}
