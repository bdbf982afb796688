//! End-to-end webhooks: the forges' real payloads (tests/fixtures/webhooks, byte copies of
//! ../shared/fixtures/webhooks), signed in the test, delivered over HTTP to a real server.
//! Valid deliveries redeploy (a new revision carrying the pushed commit), repeated delivery
//! ids act once, and everything unsigned, wrongly signed, tampered or for an unknown
//! repository is refused without touching any service.

mod support;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use support::*;

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(workspace().join("tests/fixtures/webhooks").join(path)).unwrap()
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn deliver(s: &Server, route: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
    let (code, text) = http_raw(
        "POST",
        &format!("{}/api/v1/webhooks/{route}", s.api),
        None,
        headers,
        Some(body),
    )
    .unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (code, v)
}

fn add_hook(s: &Server, args: &[&str]) -> String {
    let mut all = vec!["--output", "json", "webhooks", "add"];
    all.extend_from_slice(args);
    let out: Value = serde_json::from_str(&s.cli(&all)).unwrap();
    out["id"].as_str().unwrap().to_string()
}

fn revision(s: &Server, project: &str, name: &str) -> (u64, Option<String>) {
    let svc = s.service(project, name);
    (
        svc["revision"].as_u64().unwrap(),
        svc["commit"].as_str().map(str::to_string),
    )
}

#[test]
fn published_test_vectors_hold_and_fixtures_are_byte_copies() {
    // GitHub's documented vector.
    assert_eq!(
        format!(
            "sha256={}",
            hmac_hex("It's a Secret to Everybody", b"Hello, World!")
        ),
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    );
    // Gitea's known-good vector over the exact fixture bytes.
    assert_eq!(
        hmac_hex(
            "IsWishesWereHorsesWedAllBeEatingSteak!",
            &fixture("gitea/push-new-branch.json")
        ),
        "60fe446c74fa0cb9474f98cc557db79e10c7aaf22cf324ad65239600b9e4d915"
    );
    // The in-repo copies are the shared fixtures, byte for byte (when the shared folder is
    // next to the checkout, as on the development machines).
    let shared = workspace().join("../shared/fixtures/webhooks");
    if shared.is_dir() {
        for f in [
            "github/push-branch.json",
            "github/push-new-branch.json",
            "github/push-tag-deleted.json",
            "github/ping.json",
            "gitea/push-docs-example.json",
            "gitea/push-new-branch.json",
            "gitlab/push.json",
        ] {
            assert_eq!(
                std::fs::read(shared.join(f)).unwrap(),
                fixture(f),
                "{f} differs from the shared fixture"
            );
        }
    }
}

#[test]
fn signed_deliveries_act_once_and_everything_else_is_refused() {
    let s = Server::start();
    let project = unique("wh");
    s.write_service(
        &project,
        &testapp_service("web", 1, &format!("{project}.test"), ""),
    );
    s.cli(&["deploy", "web"]);
    let (rev0, commit0) = revision(&s, &project, "web");
    assert_eq!(commit0, None);

    // No delivery is accepted while no hook is registered for the forge.
    let body = fixture("github/push-branch.json");
    let sig = format!("sha256={}", hmac_hex("gh-secret-0123456789", &body));
    let gh_headers = |sig: &str, id: &str| -> Vec<(String, String)> {
        vec![
            ("X-GitHub-Event".into(), "push".into()),
            ("X-GitHub-Delivery".into(), id.into()),
            ("X-Hub-Signature-256".into(), sig.into()),
            ("User-Agent".into(), "GitHub-Hookshot/044aadd".into()),
        ]
    };
    let as_refs = |h: &[(String, String)]| -> Vec<(String, String)> { h.to_vec() };
    let send = |route: &str, headers: &[(String, String)], body: &[u8]| {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        deliver(&s, route, &h, body)
    };
    let (code, v) = send("github", &gh_headers(&sig, "d-0"), &body);
    assert_eq!(code, 404, "{v}");

    // Registration: a secret is required, admins only.
    let no_secret = s.cli_in(
        ADMIN,
        None,
        &[
            "webhooks",
            "add",
            "--repo",
            "woodpecker-ci/woodpecker",
            "--service",
            "web",
            "--branch",
            "main",
            "--secret",
            "",
        ],
    );
    assert!(!no_secret.status.success());
    assert!(
        String::from_utf8_lossy(&no_secret.stderr).contains("needs a secret"),
        "{}",
        String::from_utf8_lossy(&no_secret.stderr)
    );
    let as_deployer = s.cli_in(
        DEPLOYER,
        None,
        &[
            "webhooks",
            "add",
            "--repo",
            "a/b",
            "--service",
            "web",
            "--secret",
            "x1234567",
        ],
    );
    assert!(!as_deployer.status.success());
    assert!(String::from_utf8_lossy(&as_deployer.stderr).contains("403"));

    let gh = add_hook(
        &s,
        &[
            "--repo",
            "woodpecker-ci/woodpecker",
            "--service",
            "web",
            "--branch",
            "main",
            "--secret",
            "gh-secret-0123456789",
        ],
    );
    let hello = add_hook(
        &s,
        &[
            "--repo",
            "Codertocat/Hello-World",
            "--service",
            "web",
            "--branch",
            "main",
            "--secret",
            "hello-secret-0123",
        ],
    );

    // Refused: missing, empty, wrong signatures and a tampered body. Nothing changes.
    type Case<'a> = (&'a str, Vec<(String, String)>, Vec<u8>);
    let refused: Vec<Case> = vec![
        (
            "missing signature",
            vec![
                ("X-GitHub-Event".into(), "push".into()),
                ("X-GitHub-Delivery".into(), "d-1".into()),
            ],
            body.clone(),
        ),
        (
            "empty signature",
            gh_headers("sha256=", "d-2"),
            body.clone(),
        ),
        ("bare empty", gh_headers("", "d-3"), body.clone()),
        (
            "wrong secret",
            gh_headers(
                &format!("sha256={}", hmac_hex("not-the-secret", &body)),
                "d-4",
            ),
            body.clone(),
        ),
        ("tampered body", gh_headers(&sig, "d-5"), {
            let mut b = body.clone();
            let i = b.len() / 2;
            b[i] ^= 0x01;
            b
        }),
    ];
    for (what, headers, b) in &refused {
        let (code, v) = send("github", &as_refs(headers), b);
        assert_eq!(code, 401, "{what}: {v}");
    }
    // An unknown repository is refused too.
    let mut other = String::from_utf8(body.clone()).unwrap();
    other = other.replace("woodpecker-ci/woodpecker", "someone/else");
    let other_sig = format!(
        "sha256={}",
        hmac_hex("gh-secret-0123456789", other.as_bytes())
    );
    let (code, v) = send("github", &gh_headers(&other_sig, "d-6"), other.as_bytes());
    assert_eq!(code, 404, "{v}");
    assert_eq!(
        revision(&s, &project, "web").0,
        rev0,
        "refused deliveries changed nothing"
    );

    // Ping: 200.
    let ping = fixture("github/ping.json");
    let (code, v) = deliver(
        &s,
        "github",
        &[
            ("X-GitHub-Event", "ping"),
            ("X-GitHub-Delivery", "p-1"),
            (
                "X-Hub-Signature-256",
                &format!("sha256={}", hmac_hex("hello-secret-0123", &ping)),
            ),
        ],
        &ping,
    );
    // The ping fixture's repository is Octocoders/Hello-World, which no hook names yet.
    assert_eq!(code, 404, "{v}");
    let pinged = add_hook(
        &s,
        &[
            "--repo",
            "Octocoders/Hello-World",
            "--service",
            "web",
            "--branch",
            "main",
            "--secret",
            "octo-secret-0123",
        ],
    );
    let (code, v) = deliver(
        &s,
        "github",
        &[
            ("X-GitHub-Event", "ping"),
            ("X-GitHub-Delivery", "p-2"),
            (
                "X-Hub-Signature-256",
                &format!("sha256={}", hmac_hex("octo-secret-0123", &ping)),
            ),
        ],
        &ping,
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["outcome"], "pong");

    // A tag deletion is verified and ignored with a reason; a branch push to another branch too.
    let tag = fixture("github/push-tag-deleted.json");
    let (code, v) = deliver(
        &s,
        "github",
        &[
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "t-1"),
            (
                "X-Hub-Signature-256",
                &format!("sha256={}", hmac_hex("hello-secret-0123", &tag)),
            ),
        ],
        &tag,
    );
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["outcome"], "ignored", "{v}");
    let new_branch = fixture("github/push-new-branch.json");
    let (code, v) = deliver(
        &s,
        "github",
        &[
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "b-1"),
            (
                "X-Hub-Signature-256",
                &format!("sha256={}", hmac_hex("hello-secret-0123", &new_branch)),
            ),
        ],
        &new_branch,
    );
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["outcome"], "ignored", "master is not main: {v}");
    assert!(v["reason"].as_str().unwrap().contains("master"), "{v}");
    assert_eq!(revision(&s, &project, "web").0, rev0);

    // A valid push redeploys: a new revision for the pushed commit, once per delivery id.
    let (code, v) = send("github", &gh_headers(&sig, "good-1"), &body);
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["outcome"], "redeploy");
    let after = "366701fde727cb7a9e7f21eb88264f59f6f9b89c";
    let svc = s.wait_service(&project, "web", "redeployed at the pushed commit", |svc| {
        svc["commit"] == after && svc["status"] == "running"
    });
    let rev1 = svc["revision"].as_u64().unwrap();
    assert!(rev1 > rev0);
    let (code, v) = send("github", &gh_headers(&sig, "good-1"), &body);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["outcome"], "duplicate", "{v}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        revision(&s, &project, "web").0,
        rev1,
        "a repeated delivery acts once"
    );

    // Gitea, delivered to the GitHub route with GitHub's headers as well: recognised by
    // X-Gitea-Event, verified with X-Gitea-Signature (bare hex).
    let gitea_body = fixture("gitea/push-new-branch.json");
    let gitea = add_hook(
        &s,
        &[
            "--repo",
            "example/example",
            "--service",
            "web",
            "--branch",
            "master",
            "--secret",
            "gitea-secret-0123",
            "--forge",
            "gitea",
        ],
    );
    let gitea_sig = hmac_hex("gitea-secret-0123", &gitea_body);
    let mut gitea_headers = vec![
        ("X-GitHub-Event", "push"),
        ("X-GitHub-Delivery", "g-1"),
        ("X-Gitea-Event", "push"),
        ("X-Gitea-Delivery", "g-1"),
        ("X-Gitea-Signature", gitea_sig.as_str()),
        ("X-Hub-Signature-256", ""),
    ];
    let (code, v) = deliver(&s, "github", &gitea_headers, &gitea_body);
    assert_eq!(code, 202, "{v}");
    s.wait_service(&project, "web", "redeployed by gitea", |svc| {
        svc["commit"] == "67b56589a45103f891bdee7c0546e5d40bc02001"
    });
    gitea_headers[4].1 = "0000";
    gitea_headers[3].1 = "g-2";
    let (code, v) = deliver(&s, "gitea", &gitea_headers, &gitea_body);
    assert_eq!(code, 401, "{v}");

    // GitLab: the token, compared in constant time.
    let gitlab_body = fixture("gitlab/push.json");
    add_hook(
        &s,
        &[
            "--repo",
            "mike/diaspora",
            "--service",
            "web",
            "--branch",
            "master",
            "--secret",
            "gitlab-token-0123",
            "--forge",
            "gitlab",
        ],
    );
    let (code, v) = deliver(
        &s,
        "gitlab",
        &[
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Token", "wrong-token"),
            ("X-Gitlab-Event-UUID", "l-1"),
        ],
        &gitlab_body,
    );
    assert_eq!(code, 401, "{v}");
    let (code, v) = deliver(
        &s,
        "gitlab",
        &[
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Token", "gitlab-token-0123"),
            ("X-Gitlab-Event-UUID", "l-2"),
        ],
        &gitlab_body,
    );
    assert_eq!(code, 202, "{v}");
    s.wait_service(&project, "web", "redeployed by gitlab", |svc| {
        svc["commit"] == "da1560886d4f094c3e6c9ef40349f7d38b5d27d7" && svc["status"] == "running"
    });

    // The listing shows hooks and their deliveries, never a secret.
    let listed = s.cli(&["--output", "json", "webhooks"]);
    for secret in [
        "gh-secret-0123456789",
        "hello-secret-0123",
        "gitea-secret-0123",
        "gitlab-token-0123",
    ] {
        assert!(!listed.contains(secret), "a secret leaked into the listing");
        assert!(
            !s.log().contains(secret),
            "a secret leaked into the server log"
        );
    }
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let hook = listed["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == gh.as_str())
        .unwrap();
    let outcomes: Vec<&str> = hook["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["outcome"].as_str().unwrap())
        .collect();
    assert!(
        outcomes.contains(&"redeploy") && outcomes.contains(&"duplicate"),
        "{hook:#}"
    );
    assert!(
        listed["unmatched_deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["status"] == 401),
        "refusals are logged: {listed:#}"
    );
    let text = s.cli(&["webhooks"]);
    assert!(
        text.contains(&gh)
            && text.contains(&gitea)
            && text.contains(&hello)
            && text.contains(&pinged),
        "{text}"
    );

    // Removal: the hook's deliveries are refused afterwards.
    s.cli(&["webhooks", "remove", &gh]);
    let (code, v) = send("github", &gh_headers(&sig, "after-remove"), &body);
    assert_eq!(code, 404, "{v}");
}

#[test]
fn bad_registrations_and_deliveries_get_clear_errors_and_change_nothing() {
    let s = Server::start();
    let project = unique("whbad");
    s.write_service(
        &project,
        &testapp_service("web", 1, &format!("{project}.test"), ""),
    );
    s.cli(&["deploy", "web", "--no-wait"]);
    let register = |body: &str| {
        http_raw(
            "POST",
            &format!("{}/api/v1/webhooks", s.api),
            Some(ADMIN),
            &[],
            Some(body.as_bytes()),
        )
        .unwrap()
    };
    let cases = [
        (
            r#"{"repo":"a/b","service":"web","branch":"a b","secret":"0123456789"}"#,
            400,
            "`branch`",
        ),
        (
            r#"{"repo":"a b","service":"web","branch":"main","secret":"0123456789"}"#,
            400,
            "`repo`",
        ),
        // webhook_repo_is_owner_name: a path that leaves OWNER/NAME is refused.
        (
            r#"{"repo":"../../x","service":"web","branch":"main","secret":"0123456789"}"#,
            400,
            "`repo`",
        ),
        (
            r#"{"repo":"org/..","service":"web","branch":"main","secret":"0123456789"}"#,
            400,
            "OWNER/NAME",
        ),
        (
            r#"{"repo":"a/b","service":"web","branch":"main","secret":"   "}"#,
            400,
            "`secret`",
        ),
        (
            r#"{"repo":"a/b","service":"web","branch":"main","secret":"0123456789","forge":"nosuch"}"#,
            400,
            "`forge`",
        ),
        (
            r#"{"repo":"a/b","service":"nope","branch":"main","secret":"0123456789"}"#,
            404,
            "not deployed",
        ),
        (
            r#"{"repo":"a/b","service":"web","branch":"main","secret":"0123456789","extra":1}"#,
            400,
            "extra",
        ),
        (r#"{"repo":"a/b""#, 400, "invalid JSON"),
    ];
    for (body, code, needle) in cases {
        let (got, text) = register(body);
        assert_eq!(got, code, "{body}: {text}");
        assert!(text.contains(needle), "{body}: {text}");
    }
    let listed: Value = serde_json::from_str(&s.cli(&["--output", "json", "webhooks"])).unwrap();
    assert_eq!(
        listed["webhooks"].as_array().unwrap().len(),
        0,
        "nothing was registered"
    );

    let (code, text) =
        register(r#"{"repo":"a/b","service":"web","branch":"main","secret":"0123456789"}"#);
    assert_eq!(code, 201, "{text}");
    let (code, text) =
        register(r#"{"repo":"a/b","service":"web","branch":"main","secret":"other-secret"}"#);
    assert_eq!(code, 409, "the same hook twice: {text}");

    // An oversized delivery is refused before any plugin runs; a malformed one by the plugin.
    let big = vec![b' '; 5 * 1024 * 1024];
    let (code, _) = deliver(&s, "github", &[("X-GitHub-Event", "push")], &big);
    assert_eq!(code, 413);
    let (code, v) = deliver(
        &s,
        "github",
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", "sha256=00"),
        ],
        b"{not json",
    );
    assert_eq!(code, 400, "{v}");
    let (code, v) = deliver(&s, "no-such-forge", &[], b"{}");
    assert_eq!(code, 404, "{v}");
    assert!(
        s.log().contains("webhook delivery"),
        "deliveries are logged"
    );
}
