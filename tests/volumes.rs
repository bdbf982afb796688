//! End-to-end: stateful services on the real Docker Engine (issue #14, the volume half). A
//! named volume keeps a file through a rolling deploy of a new image (never two containers
//! on it), a server SIGKILL and restart, `orca stop` + `orca deploy` and a `docker kill`;
//! `orca volume rm` refuses while the volume is used and works after `orca stop`; bind
//! mounts come only from allowed host paths; `depends_on` holds a service until its
//! dependency is ready, and a cycle is refused. Every server has its own cluster name, and
//! its volumes are removed with its containers when it is dropped.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn db_toml(image: &str, host: &str, replicas: u32, volumes: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"db\"\nimage = \"{image}\"\nreplicas = {replicas}\nport = 8080\ndomain = \"{host}\"\nhealth = \"/healthz\"\nvolumes = [{volumes}]\n{extra}\n"
    )
}

/// Running containers of the engine that mount `volume` (whatever their cluster).
fn users_of(volume: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "--no-trunc",
            "--filter",
            &format!("volume={volume}"),
            "--format",
            "{{.ID}}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn volume_labels(volume: &str) -> Option<Value> {
    let out = Command::new("docker")
        .args(["volume", "inspect", volume, "--format", "{{json .Labels}}"])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn ready(v: &Value) -> bool {
    v["ready_replicas"] == 1 && v["status"] == "running"
}

fn instance_ids(v: &Value) -> Vec<String> {
    v["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["id"].as_str().map(str::to_string))
        .collect()
}

/// Deploys as admin; returns (success, stdout + stderr).
fn deploy(s: &Server) -> (bool, String) {
    let out = s.cli_in(ADMIN, None, &["deploy"]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_named_volume_keeps_its_file_through_a_rollout_a_crash_a_stop_and_a_kill() {
    let started = Instant::now();
    let mut s = Server::start();
    let project = unique("v");
    let host = format!("{project}.test");
    let volume = format!("orca-{}-{project}-data", s.cluster);
    let image_v1 = testapp_image();
    s.write_service(&project, &db_toml(image_v1, &host, 1, "\"data:/data\"", ""));
    s.cli(&["deploy"]);
    s.wait_service(&project, "db", "ready", ready);
    let labels = volume_labels(&volume).expect("the volume exists after the first deploy");
    assert_eq!(labels["orca.cluster"], s.cluster.as_str());
    assert_eq!(labels["orca.project"], project.as_str());
    assert_eq!(labels["orca.volume"], "data");
    s.put_file(&host, "data/kept.txt", b"written before everything");

    // 1. A rolling deploy of a new image (the same bytes under another tag), polled: never
    // more than one running container on the volume, and status says why there is a gap.
    let image_v2 = "orca-testapp:volumes-v2";
    assert!(Command::new("docker")
        .args(["tag", image_v1, image_v2])
        .status()
        .unwrap()
        .success());
    s.write_service(&project, &db_toml(image_v2, &host, 1, "\"data:/data\"", ""));
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicUsize::new(0));
    let said: Arc<Mutex<Vec<String>>> = Arc::default();
    let poller = {
        let (stop, most, said, volume) = (stop.clone(), most.clone(), said.clone(), volume.clone());
        let api = s.api.clone();
        let project = project.clone();
        std::thread::spawn(move || {
            let mut polls = 0u32;
            while !stop.load(Ordering::Relaxed) {
                most.fetch_max(users_of(&volume).len(), Ordering::Relaxed);
                polls += 1;
                if polls.is_multiple_of(2) {
                    if let Ok((200, body)) = http_raw(
                        "GET",
                        &format!("{api}/api/v1/status?project={project}"),
                        Some(ADMIN),
                        &[],
                        None,
                    ) {
                        let v: Value = serde_json::from_str(&body).unwrap();
                        if let Some(w) = v["services"][0]["waiting"].as_str() {
                            said.lock().unwrap().push(w.to_string());
                        }
                        if let Some(w) = v["services"][0]["rollout"]["stop_first"].as_str() {
                            said.lock().unwrap().push(format!("rollout: {w}"));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    s.cli(&["deploy"]);
    let v = s.wait_service(&project, "db", "on the new image", |v| {
        ready(v) && v["instances"][0]["image"] == image_v2
    });
    stop.store(true, Ordering::Relaxed);
    poller.join().unwrap();
    assert_eq!(
        most.load(Ordering::Relaxed),
        1,
        "at most one container on the volume during the rollout"
    );
    let said = said.lock().unwrap().clone();
    // While the new instance waits for the old one to go, the service says why; the
    // rollout says it too, for as long as it progresses.
    for want in [
        "stop-first: volume data is not shared",
        "rollout: stop-first: volume data is not shared",
    ] {
        assert!(
            said.iter().any(|w| w == want),
            "status says {want:?} during the rollout: {said:?}"
        );
    }
    assert_eq!(v["revision"], 2);
    assert_eq!(
        s.get_file(&host, "data/kept.txt"),
        "written before everything"
    );

    // 2. SIGKILL the server and start it again: the instance is adopted, the file is there.
    s.kill9();
    s.spawn();
    s.wait_service(&project, "db", "ready after restart", ready);
    assert_eq!(
        s.get_file(&host, "data/kept.txt"),
        "written before everything"
    );

    // 3. `orca stop` removes the container, the volume stays; `orca deploy` brings it back.
    s.cli(&["stop", "db", "--project", &project]);
    assert!(users_of(&volume).is_empty());
    assert!(volume_labels(&volume).is_some(), "stop keeps the volume");
    s.cli(&["deploy"]);
    s.wait_service(&project, "db", "ready after stop + deploy", ready);
    assert_eq!(
        s.get_file(&host, "data/kept.txt"),
        "written before everything"
    );

    // 4. `docker kill` its container: the replacement mounts the same volume.
    let before = s.service(&project, "db");
    let old = instance_ids(&before);
    let full = users_of(&volume);
    assert_eq!(full.len(), 1);
    docker_kill(&full[0]);
    s.wait_service(&project, "db", "replaced after docker kill", |v| {
        ready(v) && instance_ids(v) != old
    });
    assert_eq!(
        s.get_file(&host, "data/kept.txt"),
        "written before everything"
    );

    // 5. `orca volume ls` shows who uses it; `orca volume rm` refuses while it is in use
    // (and for a deployer), then works once the service is stopped.
    let ls = s.cli(&["volume", "ls"]);
    let row = ls
        .lines()
        .find(|l| l.starts_with(&format!("{project}/data")))
        .unwrap_or_else(|| panic!("no row for the volume:\n{ls}"));
    assert!(row.contains(&volume) && row.contains(" db "), "{row}");
    let spec = format!("{project}/data");
    let out = s.cli_in(ADMIN, None, &["volume", "rm", &spec]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("in use"), "{err}");
    let out = s.cli_in(DEPLOYER, None, &["volume", "rm", &spec]);
    assert!(!out.status.success());
    assert!(
        volume_labels(&volume).is_some(),
        "a refused rm changes nothing"
    );
    s.cli(&["stop", "db", "--project", &project]);
    s.cli(&["volume", "rm", &spec]);
    assert!(volume_labels(&volume).is_none(), "removed");
    println!(
        "named volume kept through rollout, SIGKILL, stop+deploy, docker kill; rm after stop: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn bad_mounts_and_too_many_writers_are_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().canonicalize().unwrap().join("allowed");
    std::fs::create_dir_all(allowed.join("site")).unwrap();
    std::fs::write(allowed.join("site/index.txt"), "from the host").unwrap();
    std::os::unix::fs::symlink("/etc", allowed.join("escape")).unwrap();
    let s = Server::start_with(&format!(
        "[volumes]\nhost_paths = [\"{}\"]\n",
        allowed.display()
    ));
    let project = unique("b");
    let host = format!("{project}.test");
    let good_bind = format!("\"{}/site:/site:ro\"", allowed.display());
    s.write_service(
        &project,
        &db_toml(testapp_image(), &host, 1, &good_bind, ""),
    );
    s.cli(&["deploy"]);
    s.wait_service(&project, "db", "ready", ready);
    assert_eq!(s.get_file(&host, "site/index.txt"), "from the host");
    let before = s.service(&project, "db");

    for (volumes, replicas, want) in [
        (
            "\"/etc:/x\"".to_string(),
            1,
            "host path \"/etc\" is outside the allowed host paths".to_string(),
        ),
        (
            format!("\"{}/escape:/x\"", allowed.display()),
            1,
            "(resolves to \"/etc\") is outside the allowed host paths".to_string(),
        ),
        (
            "\"/var/run/docker.sock:/var/run/docker.sock\"".to_string(),
            1,
            "may never be mounted".to_string(),
        ),
        (
            "\"../data:/data\"".to_string(),
            1,
            "invalid volume name \"../data\"".to_string(),
        ),
        (
            "\"data:/data\"".to_string(),
            2,
            "volume data is not shared: at most 1 replica; declare it \"data:/data:shared\" if the application coordinates writers".to_string(),
        ),
    ] {
        s.write_service(
            &project,
            &db_toml(testapp_image(), &host, replicas, &volumes, ""),
        );
        let (ok, out) = deploy(&s);
        assert!(!ok, "{volumes} x{replicas} was accepted: {out}");
        assert!(out.contains(&want), "{volumes}: want {want:?} in:\n{out}");
        let after = s.service(&project, "db");
        assert_eq!(after["revision"], before["revision"], "{volumes}");
        assert_eq!(after["volumes"], before["volumes"], "{volumes}");
    }
    // The root itself, through the API (the CLI refuses nothing the server would not).
    let body = serde_json::json!({"services": [{
        "name": "db", "project": project, "image": testapp_image(), "volumes": ["/:/host"],
    }]})
    .to_string();
    let (code, text) = http_raw(
        "POST",
        &format!("{}/api/v1/deploy", s.api),
        Some(DEPLOYER),
        &[],
        Some(body.as_bytes()),
    )
    .unwrap();
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("may never be mounted"), "{text}");
    // Scaling a service with a writable, not shared volume above 1 is refused too.
    s.write_service(
        &project,
        &db_toml(testapp_image(), &host, 1, "\"data:/data\"", ""),
    );
    s.cli(&["deploy"]);
    s.wait_service(&project, "db", "ready with its volume", |v| {
        ready(v) && v["revision"] == 2
    });
    let out = s.cli_in(ADMIN, None, &["scale", "db", "2", "--project", &project]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("volume data is not shared"),
        "{err}"
    );
    assert_eq!(s.service(&project, "db")["replicas"], 1);
    // A shared volume may have several writers.
    s.write_service(
        &project,
        &db_toml(testapp_image(), &host, 2, "\"data:/data:shared\"", ""),
    );
    s.cli(&["deploy"]);
    s.wait_service(&project, "db", "two replicas on a shared volume", |v| {
        v["ready_replicas"] == 2
    });
}

#[test]
fn depends_on_waits_for_the_dependency_to_be_ready_and_cycles_are_refused() {
    let s = Server::start();
    let project = unique("d");
    let image = testapp_image();
    let toml = format!(
        "[[service]]\nname = \"db\"\nimage = \"{image}\"\nport = 8080\nhealth = \"/healthz\"\n\
         [service.readiness]\ninterval_secs = 1\n[service.env]\nREADY_AFTER_MS = \"3000\"\n\n\
         [[service]]\nname = \"web\"\nimage = \"{image}\"\nport = 8080\nhealth = \"/healthz\"\n\
         depends_on = [\"db\"]\n"
    );
    s.write_service(&project, &toml);
    s.cli(&["deploy", "--no-wait"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut saw_waiting = false;
    loop {
        let st = s.status();
        let svc = |name: &str| {
            st["services"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["project"] == project.as_str() && x["name"] == name)
                .cloned()
                .unwrap()
        };
        let (db, web) = (svc("db"), svc("web"));
        let web_started = !instance_ids(&web).is_empty();
        if web_started {
            assert!(
                db["ready_replicas"].as_u64() >= Some(1),
                "web started before db was ready: {st:#}"
            );
        } else if web["waiting"] == "waiting for db" {
            saw_waiting = true;
        }
        if web["ready_replicas"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "web never became ready: {st:#}\n{}",
            tail(&s.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(saw_waiting, "status said \"waiting for db\" meanwhile");

    // A cycle within the files is refused before anything is sent.
    let cyclic = toml.replace(
        "port = 8080\nhealth = \"/healthz\"\n[service.readiness]",
        "port = 8080\nhealth = \"/healthz\"\ndepends_on = [\"web\"]\n[service.readiness]",
    );
    assert_ne!(cyclic, toml);
    s.write_service(&project, &cyclic);
    let (ok, out) = deploy(&s);
    assert!(
        !ok && out.contains("dependency cycle: db -> web -> db"),
        "{out}"
    );
    // A cycle against what is stored, and an unknown name, are refused by the server.
    for (deps, want) in [
        (vec!["web"], "dependency cycle"),
        (vec!["nope"], "unknown service \"nope\""),
    ] {
        let body = serde_json::json!({"services": [{
            "name": "db", "project": project, "image": image, "port": 8080,
            "health": "/healthz", "depends_on": deps,
        }]})
        .to_string();
        let (code, text) = http_raw(
            "POST",
            &format!("{}/api/v1/deploy", s.api),
            Some(DEPLOYER),
            &[],
            Some(body.as_bytes()),
        )
        .unwrap();
        assert_eq!(code, 400, "{text}");
        let error: Value = serde_json::from_str(&text).unwrap();
        let error = error["error"].as_str().unwrap();
        assert!(error.contains(want), "{want}: {error}");
    }
    assert_eq!(s.service(&project, "db")["revision"], 1, "nothing changed");
}
