//! End-to-end git-build: a local git repository with a Dockerfile (`FROM scratch` + the test
//! app's static binary) is deployed by `orca deploy` (built first), registered as a webhook,
//! and pushed to: the pushed commit is built through the Docker Engine, rolled out under
//! load with zero failed requests, and served by the proxy; a push that breaks the build
//! leaves the running version serving, with the failing step in `orca logs --build`. A
//! user-written webhook plugin, registered by path, handles a custom forge's payload.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use support::*;

/// A repository whose Dockerfile packs the test app with `VERSION`.
fn make_repo(dir: &Path) -> PathBuf {
    testapp_image();
    let bin = workspace().join("target/testapp/x86_64-unknown-linux-gnu/release/orca-testapp");
    let repo = dir.join("app-repo");
    std::fs::create_dir_all(repo.join("bin")).unwrap();
    std::fs::copy(&bin, repo.join("bin/testapp")).unwrap();
    git(&repo, &["init", "--quiet", "-b", "main"]);
    repo
}

fn commit_version(repo: &Path, dockerfile: &str, message: &str) -> String {
    std::fs::write(repo.join("Dockerfile"), dockerfile).unwrap();
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "--quiet", "-m", message]);
    git(repo, &["rev-parse", "HEAD"])
}

fn dockerfile(version: &str) -> String {
    format!(
        "FROM scratch\nCOPY bin/testapp /testapp\nENV VERSION={version}\nEXPOSE 8080\nENTRYPOINT [\"/testapp\"]\n"
    )
}

/// The GitHub push fixture, pointed at `repo_name` and `commit` (the fields the forge fills
/// in for a real push); the rest of the body is the real payload.
fn push_body(repo_name: &str, commit: &str) -> Vec<u8> {
    let raw =
        std::fs::read(workspace().join("tests/fixtures/webhooks/github/push-branch.json")).unwrap();
    String::from_utf8(raw)
        .unwrap()
        .replace("woodpecker-ci/woodpecker", repo_name)
        .replace("366701fde727cb7a9e7f21eb88264f59f6f9b89c", commit)
        .into_bytes()
}

fn push(s: &Server, secret: &str, body: &[u8], delivery: &str) -> (u16, String) {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    http_raw(
        "POST",
        &format!("{}/api/v1/webhooks/github", s.api),
        None,
        &[
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", delivery),
            ("X-Hub-Signature-256", &sig),
        ],
        Some(body),
    )
    .unwrap()
}

fn version_served(s: &Server, host: &str) -> String {
    match s.proxy_get(host, "/") {
        Ok((200, body)) => serde_json::from_str::<Value>(&body).unwrap()["version"]
            .as_str()
            .unwrap_or("?")
            .to_string(),
        other => format!("{other:?}"),
    }
}

#[test]
fn a_push_builds_and_rolls_out_and_a_broken_build_changes_nothing() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let head1 = commit_version(&repo, &dockerfile("v1"), "v1");

    // `orca deploy` of a service with [service.build] and no image builds the branch head.
    let project = unique("gb");
    let host = format!("{project}.test");
    s.write_service(
        &project,
        &format!(
            "[[service]]\nname = \"web\"\nreplicas = 2\nport = 8080\ndomain = \"{host}\"\nhealth = \"/healthz\"\n\n\
             [service.build]\nrepo = \"{}\"\nbranch = \"main\"\n",
            repo.display()
        ),
    );
    s.cli(&["deploy", "web"]);
    let svc = s.service(&project, "web");
    assert_eq!(svc["commit"], head1.as_str(), "{svc:#}");
    assert_eq!(
        svc["image"],
        format!("{project}/web:{}", &head1[..12]).as_str()
    );
    assert_eq!(svc["last_build"]["status"], "succeeded");
    assert_eq!(version_served(&s, &host), "v1");
    let logs = s.cli(&["logs", "web", "--build"]);
    assert!(
        logs.contains("succeeded") && logs.contains("Step 1/"),
        "{logs}"
    );

    // A second deploy of the same head reuses the image: unchanged, no new build.
    let again = s.cli(&["deploy", "web"]);
    assert!(again.contains("unchanged"), "{again}");
    assert_eq!(s.service(&project, "web")["last_build"]["number"], 1);

    let secret = "build-hook-secret-0123";
    s.cli(&[
        "webhooks",
        "add",
        "--repo",
        "acme/app",
        "--service",
        "web",
        "--branch",
        "main",
        "--secret",
        secret,
    ]);

    // Push v2 while the proxy is under load: built, rolled out, zero failed requests.
    let head2 = commit_version(&repo, &dockerfile("v2"), "v2");
    let load = Load::start(
        s.http,
        &host,
        "/",
        4,
        Duration::from_millis(10),
        60_000,
        Duration::from_secs(240),
    );
    std::thread::sleep(Duration::from_millis(300));
    let (code, body) = push(&s, secret, &push_body("acme/app", &head2), "push-2");
    assert_eq!(code, 202, "{body}");
    s.wait_service(&project, "web", "rolled out at v2", |svc| {
        svc["commit"] == head2.as_str()
            && svc["status"] == "running"
            && svc["rollout"]["phase"] != "progressing"
            && svc["instances"]
                .as_array()
                .is_some_and(|i| i.len() == 2 && i.iter().all(|i| i["commit"] == head2.as_str()))
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while version_served(&s, &host) != "v2" {
        assert!(Instant::now() < deadline, "the proxy never answered v2");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    assert!(report.failures.is_empty(), "{}", report.summary());
    assert!(
        report.versions.contains_key("v1") && report.versions.contains_key("v2"),
        "{}",
        report.summary()
    );

    // A push that breaks the build: reported with the failing step, v2 keeps serving.
    std::fs::remove_file(repo.join("bin/testapp")).unwrap();
    let head3 = commit_version(&repo, &dockerfile("v3"), "break the build");
    let (code, body) = push(&s, secret, &push_body("acme/app", &head3), "push-3");
    assert_eq!(code, 202, "{body}");
    let svc = s.wait_service(&project, "web", "reporting the failed build", |svc| {
        svc["last_build"]["commit"] == head3.as_str() && svc["last_build"]["status"] == "failed"
    });
    let error = svc["last_build"]["error"].as_str().unwrap();
    assert!(
        error.contains("Step 2/") && error.contains("COPY"),
        "{error}"
    );
    assert_eq!(svc["commit"], head2.as_str());
    assert_eq!(version_served(&s, &host), "v2");
    let logs = s.cli(&["logs", "web", "--build"]);
    assert!(logs.contains("failed") && logs.contains(&head3), "{logs}");

    // `orca deploy` of the broken head fails the same way, naming the step; v2 keeps serving.
    let out = s.cli_in(ADMIN, None, &["deploy", "web"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Step 2/") && stderr.contains("--build"),
        "{stderr}"
    );
    assert_eq!(s.service(&project, "web")["commit"], head2.as_str());
    assert_eq!(version_served(&s, &host), "v2");
}

#[test]
fn a_custom_forge_plugin_registered_by_path_handles_its_payload() {
    let s = Server::start();
    let example = workspace().join("sdk/examples/custom-forge");
    let wasm =
        build_guests(&example, "sdk-examples", "wasm32-wasip2", None).join("custom_forge.wasm");
    let project = unique("cf");
    s.write_service(
        &project,
        &testapp_service("web", 1, &format!("{project}.test"), ""),
    );
    s.cli(&["deploy", "web"]);
    let plugin = s.config_dir().join("custom-forge.wasm");
    std::fs::copy(&wasm, &plugin).unwrap();
    s.cli(&[
        "webhooks",
        "add",
        "--repo",
        "team/site",
        "--service",
        "web",
        "--branch",
        "main",
        "--secret",
        "custom-secret-0123",
        "--forge",
        plugin.to_str().unwrap(),
    ]);
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let body = format!(r#"{{"repository":"team/site","branch":"main","commit":"{commit}"}}"#);
    let send = |token: &str, id: &str| {
        http_raw(
            "POST",
            &format!("{}/api/v1/webhooks/custom-forge", s.api),
            None,
            &[("X-Custom-Token", token), ("X-Custom-Delivery", id)],
            Some(body.as_bytes()),
        )
        .unwrap()
    };
    let (code, text) = send("wrong", "c-1");
    assert_eq!(code, 401, "{text}");
    let (code, text) = send("custom-secret-0123", "c-2");
    assert_eq!(code, 202, "{text}");
    s.wait_service(&project, "web", "redeployed by the custom forge", |svc| {
        svc["commit"] == commit && svc["status"] == "running"
    });
}

/// An sshd on a loopback port that lets in one client key, for `ssh://` repositories.
struct Sshd {
    child: std::process::Child,
    port: u16,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_sshd(dir: &Path, client_pub: &Path) -> Sshd {
    let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("sshd is not installed (apt-get install openssh-server; .ci/run does)");
    std::fs::create_dir_all("/run/sshd").unwrap();
    let host_key = dir.join("ssh_host_ed25519_key");
    keygen(&host_key);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
             PidFile {}\nUsePAM no\nStrictModes no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n",
            host_key.display(),
            client_pub.display(),
            dir.join("sshd.pid").display()
        ),
    )
    .unwrap();
    let child = Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "sshd did not start: {}",
            std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Sshd { child, port }
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_service_builds_from_an_ssh_repository_with_the_configured_key() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let client_key = keys.join("deploy_key");
    keygen(&client_key);
    let sshd = start_sshd(&keys, &keys.join("deploy_key.pub"));
    let repo = make_repo(tmp.path());
    let head = commit_version(&repo, &dockerfile("ssh-v1"), "v1");

    let s = Server::start_with(&format!(
        "[build]\nssh_key = \"{}\"\n",
        client_key.display()
    ));
    let project = unique("ssh");
    let host = format!("{project}.test");
    s.write_service(
        &project,
        &format!(
            "[[service]]\nname = \"web\"\nreplicas = 1\nport = 8080\ndomain = \"{host}\"\nhealth = \"/healthz\"\n\n\
             [service.build]\nrepo = \"ssh://root@127.0.0.1:{}{}\"\nbranch = \"main\"\n",
            sshd.port,
            repo.display()
        ),
    );
    s.cli(&["deploy", "web"]);
    let svc = s.service(&project, "web");
    assert_eq!(svc["commit"], head.as_str(), "{svc:#}");
    assert_eq!(version_served(&s, &host), "ssh-v1");
    // The host key was pinned on first use.
    let known = std::fs::read_to_string(s.home().join("known_hosts")).unwrap();
    assert!(known.contains("127.0.0.1"), "{known}");
}
