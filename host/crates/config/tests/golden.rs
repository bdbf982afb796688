//! Golden tests: every example under `services/` loads, and every input under
//! `tests/invalid/` fails with exactly the text pinned in its `.err` sibling.
//!
//! To update the pinned texts after a deliberate change, run with `UPDATE_GOLDEN=1` and review
//! the diff.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use orca_config::{
    load_project_dir, load_services_dir, parse_cluster_file, parse_deploy_json, parse_service_file,
    secret_refs, Memory, Role,
};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..")
}

#[test]
fn every_example_service_file_loads() {
    let services = repo_root().join("services");
    let mut dirs: Vec<PathBuf> = fs::read_dir(&services)
        .expect("services/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(
        !dirs.is_empty(),
        "no example projects under {}",
        services.display()
    );
    for dir in &dirs {
        let specs = load_project_dir(dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(!specs.is_empty(), "{}", dir.display());
    }

    let all = load_services_dir(&repo_root()).unwrap_or_else(|e| panic!("{e}"));
    let projects: BTreeSet<&str> = all.iter().map(|s| s.project()).collect();
    assert_eq!(
        projects.len(),
        dirs.len(),
        "every project directory is loaded"
    );
    for spec in &all {
        assert_eq!(spec.validate(), Ok(()), "{}", spec.key());
        // What the CLI sends to the API parses back to the same spec.
        let body = serde_json::json!({ "services": [spec] }).to_string();
        assert_eq!(
            parse_deploy_json(body.as_bytes()).unwrap(),
            vec![spec.clone()]
        );
    }
}

#[test]
fn demo_project_matches_the_readme_quick_start() {
    let specs = load_project_dir(&repo_root().join("services/demo")).unwrap();
    assert_eq!(specs.len(), 1);
    let hello = &specs[0];
    assert_eq!(hello.key(), "demo/hello");
    assert_eq!(hello.image.as_deref(), Some("orca-testapp:latest"));
    assert_eq!(hello.replicas, 2);
    assert_eq!(hello.port, Some(8080));
    assert_eq!(hello.domain.as_deref(), Some("hello.localhost"));
    assert_eq!(
        hello.env.get("GREETING").map(String::as_str),
        Some("hello from orca")
    );
    let resources = hello.resources.as_ref().unwrap();
    assert_eq!(resources.memory, Some(Memory(64 << 20)));
    assert_eq!(resources.cpu, Some(0.5));
    let probe = hello.readiness_probe().unwrap();
    assert_eq!(probe.path.as_deref(), Some("/healthz"));
    assert_eq!(
        (
            probe.interval_secs,
            probe.timeout_secs,
            probe.failure_threshold
        ),
        (10, 3, 3)
    );
}

#[test]
fn shop_project_shows_more_of_the_schema() {
    let specs = load_project_dir(&repo_root().join("services/shop")).unwrap();
    let keys: Vec<String> = specs.iter().map(|s| s.key()).collect();
    assert_eq!(keys, ["shop/web", "shop/db"]);
    let (web, db) = (&specs[0], &specs[1]);
    assert_eq!(web.domain.as_deref(), Some("shop.localhost"));
    assert!(!web.aliases.is_empty());
    assert!(web.readiness.is_some() && web.liveness.is_some());
    assert_eq!(
        web.deploy.as_ref().unwrap().strategy.as_deref(),
        Some("rolling")
    );
    assert!(db.internal);
    assert_eq!(db.aliases, ["db"]);
    assert_eq!(
        secret_refs(&db.env["DB_PASSWORD"]).unwrap(),
        ["DB_PASSWORD"]
    );
}

/// Runs one invalid input and returns its error text. Which parser runs depends on the name:
/// a directory is a config dir (`services/*/service.toml`), `*.json` a deploy body,
/// `cluster-*.toml` a cluster file, any other `*.toml` the `service.toml` of project `web`.
fn error_of(input: &Path) -> String {
    let name = input.file_name().unwrap().to_str().unwrap();
    let text = || fs::read_to_string(input).unwrap();
    let result = if input.is_dir() {
        load_services_dir(input).map(drop)
    } else if name.ends_with(".json") {
        parse_deploy_json(text().as_bytes()).map(drop)
    } else if name.starts_with("cluster-") {
        parse_cluster_file("cluster.toml", &text()).map(drop)
    } else {
        parse_service_file("services/web/service.toml", &text(), "web").map(drop)
    };
    match result {
        Ok(()) => "<no error>".to_string(),
        // Directory cases name files by their full path; pin them relative to the case.
        Err(e) => e.to_string().replace(&format!("{}/", input.display()), ""),
    }
}

#[test]
fn invalid_inputs_fail_with_pinned_messages() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut inputs: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none_or(|ext| ext != "err"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 15, "expected the full set of invalid cases");

    let mut failures = Vec::new();
    for input in &inputs {
        let actual = error_of(input);
        let err_file = input.with_extension("err");
        let expected = fs::read_to_string(&err_file).ok();
        if expected.as_deref().map(str::trim_end) != Some(actual.as_str()) {
            if update {
                fs::write(&err_file, format!("{actual}\n")).unwrap();
            } else {
                failures.push(format!(
                    "{}\n  expected: {}\n  actual:   {actual}",
                    input.display(),
                    expected
                        .as_deref()
                        .map_or("<missing .err file>", str::trim_end)
                ));
            }
        }
    }
    // An `.err` without its input would silently test nothing.
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "err")
            && !inputs.iter().any(|i| i.with_extension("err") == path)
        {
            failures.push(format!("{}: no input beside it", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatch(es) (rerun with UPDATE_GOLDEN=1 to accept):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn roles_parse_in_cluster_files() {
    let text = "[[token]]\nname = \"ci\"\nvalue = \"0123456789abcdef\"\nrole = \"deployer\"\n";
    let config = parse_cluster_file("cluster.toml", text).unwrap();
    assert_eq!(config.tokens[0].role, Role::Deployer);
}
