//! End-to-end tests of the AI-agent surface: the MCP server driven by the official Python SDK
//! (`mcp` on PyPI) over stdio (`orca mcp`) and streamable HTTP (`/mcp`), `orca doctor` on
//! services broken on purpose, and the OpenAPI document checked by `openapi-spec-validator`.
//!
//! The Python packages live in `target/pyenv` (`.ci/run` creates it from
//! `tests/agents/requirements.txt`); `ORCA_TEST_PYTHON` points elsewhere.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use orca::api::ROUTES;
use serde_json::{json, Value};
use support::*;

fn python() -> PathBuf {
    let path = std::env::var_os("ORCA_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/pyenv/bin/python3"));
    assert!(
        path.exists(),
        "{} is missing: run .ci/run, or `python3 -m venv target/pyenv && \
         target/pyenv/bin/pip install -r tests/agents/requirements.txt`",
        path.display()
    );
    path
}

fn drive(s: &Server, mode: &str, target: &str, token: &str, role: &str, project: &str) {
    let out = Command::new(python())
        .arg(workspace().join("tests/agents/mcp_drive.py"))
        .args([mode, target, token, role, project, testapp_image()])
        .env("ORCA_API", &s.api)
        .env("ORCA_HOME", s.home())
        .output()
        .expect("running python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("PASS {mode} {role}")),
        "MCP over {mode} as {role} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}\nserver log:\n{}",
        out.status,
        tail(&String::from_utf8_lossy(&out.stderr), 60),
        tail(&s.log(), 40)
    );
}

#[test]
fn the_python_mcp_sdk_drives_orca_over_stdio_and_http_within_the_tokens_role() {
    let s = Server::start();
    let url = format!("{}/mcp", s.api);
    drive(
        &s,
        "stdio",
        env!("CARGO_BIN_EXE_orca"),
        DEPLOYER,
        "deployer",
        "mcpstdio",
    );
    drive(
        &s,
        "stdio",
        env!("CARGO_BIN_EXE_orca"),
        VIEWER,
        "viewer",
        "mcpstdio",
    );
    drive(&s, "http", &url, DEPLOYER, "deployer", "mcphttp");
    drive(&s, "http", &url, VIEWER, "viewer", "mcphttp");
    // The viewer's refused deploys changed nothing; the deployer's services were stopped.
    for project in ["mcpstdio", "mcphttp"] {
        s.wait_service(project, "web", "stopped", |v| v["status"] == "stopped");
    }
    // /mcp is guarded like every route: no token, no session.
    let (code, body) = http_raw("POST", &url, None, &[], Some(b"{}")).unwrap();
    assert_eq!(code, 401, "{body}");
    // `orca mcp` with a bad token fails at once with the API's reason.
    let out = s.cli_in("not-a-real-token-at-all", None, &["mcp"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn deploy(s: &Server, services: Value) {
    let body = serde_json::to_vec(&json!({ "services": services })).unwrap();
    let (code, text) = http_raw(
        "POST",
        &format!("{}/api/v1/deploy", s.api),
        Some(ADMIN),
        &[("Content-Type", "application/json")],
        Some(&body),
    )
    .unwrap();
    assert_eq!(code, 200, "{text}");
}

/// Polls `orca doctor NAME -o json` until `code` is among the findings; returns the text output.
fn doctor_until(s: &Server, name: &str, code: Option<&str>) -> (Value, String) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = s.cli_in(
            VIEWER,
            None,
            &["doctor", name, "--project", "doc", "-o", "json"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let d: Value = serde_json::from_slice(&out.stdout).unwrap();
        let found = match code {
            Some(c) => d["findings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["code"] == c),
            None => d["verdict"] == "healthy",
        };
        if found {
            let text = s.cli_in(VIEWER, None, &["doctor", name, "--project", "doc"]);
            return (d, String::from_utf8_lossy(&text.stdout).into_owned());
        }
        assert!(
            Instant::now() < deadline,
            "doctor never found {code:?} for {name}; last: {d:#}\nserver log:\n{}",
            tail(&s.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn finding<'a>(d: &'a Value, code: &str) -> &'a Value {
    d["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == code)
        .unwrap()
}

#[test]
fn doctor_names_oom_readiness_and_dependency_findings_and_healthy() {
    let s = Server::start();
    let image = testapp_image();
    let fast =
        json!({"path": "/healthz", "interval_secs": 1, "timeout_secs": 1, "failure_threshold": 1});
    deploy(
        &s,
        json!([
            {"name": "fine", "project": "doc", "image": image, "port": 8080, "readiness": fast},
            // Allocates 64 MiB at start under a 16 MiB limit: OOM-killed, again and again.
            {"name": "hog", "project": "doc", "image": image, "port": 8080, "readiness": fast,
             "resources": {"memory": "16Mi"}, "env": {"ALLOC_MB": "64"}},
            // Serves, but the readiness path does not exist.
            {"name": "lost", "project": "doc", "image": image, "port": 8080,
             "readiness": {"path": "/nosuch", "interval_secs": 1, "timeout_secs": 1, "failure_threshold": 1}},
            // Waits for a database that refuses connections.
            {"name": "needy", "project": "doc", "image": image, "port": 8080, "readiness": fast,
             "env": {"DEPENDS_ON": "127.0.0.1:5999"}},
        ]),
    );

    let (d, text) = doctor_until(&s, "fine", None);
    assert!(d["findings"].as_array().unwrap().is_empty(), "{d:#}");
    assert!(text.contains("doc/fine: healthy"), "{text}");

    let (d, text) = doctor_until(&s, "hog", Some("oom-killed"));
    let f = finding(&d, "oom-killed");
    assert!(
        f["action"].as_str().unwrap().contains("above 16Mi"),
        "{f:#}"
    );
    assert!(
        f["evidence"].to_string().contains("OOM"),
        "evidence names the OOM kill: {f:#}"
    );
    assert!(
        text.contains("oom-killed:") && text.contains("resources.memory"),
        "{text}"
    );

    let (d, text) = doctor_until(&s, "lost", Some("readiness-failing"));
    let f = finding(&d, "readiness-failing");
    assert!(f["evidence"].to_string().contains("404"), "{f:#}");
    assert!(
        f["action"].as_str().unwrap().contains("404 at /nosuch"),
        "{f:#}"
    );
    assert!(text.contains("readiness-failing:"), "{text}");

    let (d, text) = doctor_until(&s, "needy", Some("dependency-refused"));
    let f = finding(&d, "dependency-refused");
    assert!(
        f["evidence"].to_string().contains("127.0.0.1:5999"),
        "the log line is the evidence: {f:#}"
    );
    assert!(
        !d["findings"].to_string().contains("readiness-failing"),
        "the dependency explains the readiness failure: {d:#}"
    );
    assert!(text.contains("dependency-refused:"), "{text}");

    // An unknown service is a clear 404, not an empty diagnosis.
    let out = s.cli_in(VIEWER, None, &["doctor", "nosuch"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no service \"nosuch\""));
}

#[test]
fn the_openapi_document_validates_and_covers_the_route_table_exactly() {
    let s = Server::start();
    // Public: no token.
    let (code, body) = http_raw(
        "GET",
        &format!("{}/api/v1/openapi.json", s.api),
        None,
        &[],
        None,
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");

    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let method = method.to_ascii_uppercase();
            let route = ROUTES
                .iter()
                .find(|r| r.0 == method && r.1 == path)
                .unwrap_or_else(|| panic!("{method} {path} is documented but not a route"));
            let want = match route.2 {
                None => "public".to_string(),
                Some(p) => format!("{p:?}").to_ascii_lowercase(),
            };
            assert_eq!(op["x-orca-permission"], want.as_str(), "{method} {path}");
            documented.insert((method, path.clone()));
        }
    }
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.0.to_string(), r.1.to_string()))
        .collect();
    assert_eq!(documented, routes, "the document covers ROUTES exactly");

    let file = s.root.path().join("openapi.json");
    std::fs::write(&file, &body).unwrap();
    let out = Command::new(python())
        .args([
            "-c",
            "import sys, json\n\
             from openapi_spec_validator import validate\n\
             validate(json.load(open(sys.argv[1])))\n\
             print('valid')",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("valid"),
        "openapi-spec-validator rejected the document:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
