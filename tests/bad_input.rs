//! End-to-end bad input: each bad service file or request gets a clear error naming the
//! problem, and nothing changes (no store change, no container).

mod support;

use support::*;

/// Runs `orca deploy` in a project directory holding `toml`; returns stderr, asserting failure.
fn deploy_fails(s: &Server, project: &str, toml: &str) -> String {
    let dir = s.write_service(project, toml);
    let out = s.cli_in(ADMIN, Some(&dir), &["deploy", "--no-wait"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "deploy of a bad file must fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(err.trim().lines().count(), 1, "one-line reason: {err}");
    err
}

fn api_deploy(s: &Server, body: &[u8]) -> (u16, String) {
    http_raw(
        "POST",
        &format!("{}/api/v1/deploy", s.api),
        Some(ADMIN),
        &[],
        Some(body),
    )
    .unwrap()
}

#[test]
fn bad_service_files_and_requests_are_refused_clearly_and_change_nothing() {
    let s = Server::start();
    let img = testapp_image();
    let before = s.status();

    let cases: &[(&str, String, &[&str])] = &[
        ("malformed", "[[service]\nname = \"a\"".to_string(), &["service.toml:1"]),
        (
            "unknown",
            format!("[[service]]\nname = \"a\"\nimage = \"{img}\"\nreplica = 2\n"),
            &["service.toml:4", "unknown field `replica`"],
        ),
        (
            "memory",
            format!("[[service]]\nname = \"a\"\nimage = \"{img}\"\n[service.resources]\nmemory = \"512MB\"\n"),
            &["service.toml:5", "512MB", "Mi"],
        ),
        (
            "dup",
            format!("[[service]]\nname = \"a\"\nimage = \"{img}\"\n\n[[service]]\nname = \"a\"\nimage = \"{img}\"\n"),
            &["service.toml:6", "duplicate service"],
        ),
        (
            "chars",
            format!("[[service]]\nname = \"My_App\"\nimage = \"{img}\"\n"),
            &["service.toml:2", "My_App", "lowercase"],
        ),
    ];
    for (project, toml, expect) in cases {
        let err = deploy_fails(&s, &format!("bad{project}"), toml);
        for e in *expect {
            assert!(
                err.contains(e),
                "{project}: error should mention {e:?}: {err}"
            );
        }
    }

    // Unresolved secret: refused with the key named.
    let dir = s.write_service(
        "badsecret",
        &format!("[[service]]\nname = \"a\"\nimage = \"{img}\"\n[service.env]\nX = \"${{secrets.NOPE}}\"\n"),
    );
    let out = s.cli_in(ADMIN, Some(&dir), &["deploy", "--no-wait"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NOPE") && err.contains("badsecret"), "{err}");

    // API: unknown field, wrong type, missing project, oversize body.
    let (code, body) = api_deploy(
        &s,
        br#"{"services":[{"name":"a","project":"p","image":"x","bogus":1}]}"#,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("bogus"), "{body}");
    let (code, body) = api_deploy(
        &s,
        br#"{"services":[{"name":"a","project":"p","image":"x","replicas":"two"}]}"#,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("replicas"), "{body}");
    let (code, body) = api_deploy(&s, br#"{"services":[{"name":"a","image":"x"}]}"#);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("project"), "{body}");
    let huge = format!(
        r#"{{"services":[{{"name":"a","project":"p","image":"{}"}}]}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let (code, body) = api_deploy(&s, huge.as_bytes());
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("limit"), "{body}");
    let (code, body) = http_raw(
        "POST",
        &format!("{}/api/v1/services/a/scale", s.api),
        Some(ADMIN),
        &[],
        Some(br#"{"replicas": 1000}"#),
    )
    .unwrap();
    assert!(code == 400 || code == 404, "{code} {body}");

    // Nothing changed.
    assert_eq!(s.status()["services"], before["services"]);
    assert!(containers(&s.cluster).is_empty());
}

#[test]
fn bad_cluster_toml_stops_the_server_with_the_reason() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("config")).unwrap();
    std::fs::write(
        root.path().join("config/cluster.toml"),
        "[[token]]\nname = \"x\"\nvalue = \"0123456789abcdef0123\"\nrole = \"owner\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orca"))
        .arg("server")
        .env("ORCA_HOME", root.path().join("home"))
        .env("ORCA_CONFIG_DIR", root.path().join("config"))
        .env("ORCA_API_ADDR", "127.0.0.1:0")
        .env("ORCA_HTTP_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cluster.toml:4") && err.contains("owner") && err.contains("deployer"),
        "{err}"
    );
}
