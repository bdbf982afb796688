//! `DockerRuntime` against the real Docker Engine of this machine.
//!
//! Every test builds (once per process) the `FROM scratch` test-app image with
//! `tests/build-testapp-image.sh`, uses names unique to the run (`orca-test-<random>-...`) and
//! removes what it created in a drop guard, so a failing test leaves nothing behind.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::KillContainerOptionsBuilder;
use bollard::Docker;
use futures::StreamExt;
use orca_docker::{
    ContainerRuntime, ContainerSpec, ContainerState, DockerRuntime, LogStream, RuntimeError,
    LABEL_MANAGED,
};

const IMAGE: &str = "orca-testapp:latest";

/// Builds the test-app image once per test process.
fn testapp_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../tests/build-testapp-image.sh"
        );
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(script)
            .arg(IMAGE)
            .output()
            .expect("run tests/build-testapp-image.sh");
        assert!(
            out.status.success(),
            "building the test-app image failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("test-app image built in {:?}", started.elapsed());
    });
    IMAGE
}

/// A name unique to this test run: `orca-test-<random>-<what>`.
fn unique(what: &str) -> String {
    static RUN: OnceLock<String> = OnceLock::new();
    static N: AtomicU32 = AtomicU32::new(0);
    let run = RUN.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        format!("{:x}{:x}", std::process::id(), nanos)
    });
    format!(
        "orca-test-{run}-{}-{what}",
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes the containers and networks a test created, even when the test panics.
#[derive(Default)]
struct Cleanup {
    containers: Mutex<Vec<String>>,
    networks: Mutex<Vec<String>>,
}

impl Cleanup {
    fn container(&self, name: &str) -> String {
        self.containers.lock().unwrap().push(name.to_string());
        name.to_string()
    }
    fn network(&self, name: &str) -> String {
        self.networks.lock().unwrap().push(name.to_string());
        name.to_string()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in self.containers.lock().unwrap().iter() {
            let _ = Command::new("docker").args(["rm", "-fv", c]).output();
        }
        for n in self.networks.lock().unwrap().iter() {
            // Remove every network with this exact name (a broken dedupe could leave several).
            let ids = Command::new("docker")
                .args(["network", "ls", "-q", "--filter", &format!("name=^{n}$")])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            for id in ids.split_whitespace() {
                let _ = Command::new("docker").args(["network", "rm", id]).output();
            }
        }
    }
}

async fn runtime() -> DockerRuntime {
    DockerRuntime::connect().await.expect("connect to docker")
}

async fn bollard() -> Docker {
    Docker::connect_with_local_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap()
}

fn spec(name: &str, network: &str) -> ContainerSpec {
    ContainerSpec {
        name: name.to_string(),
        image: testapp_image().to_string(),
        network: network.to_string(),
        stop_grace: Duration::from_secs(10),
        ..Default::default()
    }
}

/// A plain HTTP/1.1 GET from the host; returns status and body.
fn http_get(ip: IpAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&(ip, 8080).into(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_string()))
}

/// GETs until the app answers (it needs a moment after `start` to bind its socket).
async fn http_get_ready(ip: IpAddr, path: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let path = path.to_string();
    loop {
        let p = path.clone();
        match tokio::task::spawn_blocking(move || http_get(ip, &p))
            .await
            .unwrap()
        {
            Ok(answer) => return answer,
            Err(e) if Instant::now() > deadline => {
                panic!("http://{ip}:8080{path} never answered from the host: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn networks_named(name: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "network",
            "ls",
            "--filter",
            &format!("name=^{name}$"),
            "--format",
            "{{.Name}}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn ensure_network_is_idempotent_even_when_racing() {
    let cleanup = Cleanup::default();
    let rt = runtime().await;
    let labels = BTreeMap::from([("orca.cluster".to_string(), "test".to_string())]);

    let net = cleanup.network(&unique("net"));
    rt.ensure_network(&net, &labels).await.unwrap();
    rt.ensure_network(&net, &labels).await.unwrap();
    assert_eq!(networks_named(&net), vec![net.clone()]);
    let inspected = bollard().await.inspect_network(&net, None).await.unwrap();
    assert_eq!(inspected.driver.as_deref(), Some("bridge"));
    assert_eq!(
        inspected
            .labels
            .unwrap_or_default()
            .get("orca.cluster")
            .map(String::as_str),
        Some("test")
    );

    // Separate runtimes (no shared in-process lock), as separate agents would be.
    let raced = cleanup.network(&unique("raced"));
    let mut runtimes = Vec::new();
    for _ in 0..4 {
        runtimes.push(runtime().await);
    }
    let results =
        futures::future::join_all(runtimes.iter().map(|rt| rt.ensure_network(&raced, &labels)))
            .await;
    for r in results {
        r.unwrap();
    }
    assert_eq!(networks_named(&raced), vec![raced.clone()]);

    rt.remove_network(&net).await.unwrap();
    assert!(networks_named(&net).is_empty());
    rt.remove_network(&net).await.unwrap(); // already gone is fine
}

#[tokio::test]
async fn create_and_start_runs_a_reachable_locked_down_container() {
    let cleanup = Cleanup::default();
    let rt = runtime().await;
    let net = cleanup.network(&unique("net"));
    let extra = cleanup.network(&unique("extra"));
    rt.ensure_network(&net, &BTreeMap::new()).await.unwrap();
    rt.ensure_network(&extra, &BTreeMap::new()).await.unwrap();

    let name = cleanup.container(&unique("web"));
    let mut spec = spec(&name, &net);
    spec.env = vec![
        ("GREETING".into(), "hello from orca".into()),
        ("SECRET_TOKEN".into(), "s3cr3t=with=equals".into()),
    ];
    spec.labels = BTreeMap::from([("orca.service".into(), "web".into())]);
    spec.aliases = vec!["web".into()];
    spec.extra_networks = vec![extra.clone()];
    spec.memory_bytes = Some(64 * 1024 * 1024);
    spec.nano_cpus = Some(500_000_000);

    let info = rt.create_and_start(&spec).await.unwrap();
    assert_eq!(info.name, name);
    assert_eq!(info.image, IMAGE);
    assert_eq!(info.state, ContainerState::Running);
    assert!(info.started_at.is_some());
    assert_eq!(info.exit_code, None);
    assert!(info.created_unix > 1_600_000_000, "{}", info.created_unix);
    let ip = *info.ips.get(&net).expect("an IP on the primary network");
    assert!(info.ips.contains_key(&extra), "{:?}", info.ips);

    // list() shows it, running, with its labels and IPs.
    let listed = rt.list().await.unwrap();
    let mine = listed
        .iter()
        .find(|c| c.id == info.id)
        .expect("listed by list()");
    assert_eq!(mine.state, ContainerState::Running);
    assert_eq!(
        mine.labels.get("orca.service").map(String::as_str),
        Some("web")
    );
    assert_eq!(
        mine.labels.get(LABEL_MANAGED).map(String::as_str),
        Some("true")
    );
    assert_eq!(mine.ips.get(&net), Some(&ip));

    // Reachable from the host on its bridge IP; env is passed.
    let (status, body) = http_get_ready(ip, "/").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"greeting\":\"hello from orca\""), "{body}");
    assert!(
        body.contains(&format!("\"instance\":\"{}\"", &info.id[..12])),
        "{body}"
    );
    let (status, body) = http_get_ready(ip, "/env/SECRET_TOKEN").await;
    assert_eq!((status, body.as_str()), (200, "s3cr3t=with=equals"));
    let (status, _) = http_get_ready(ip, "/env/NOT_SET").await;
    assert_eq!(status, 404);

    // Limits and lock-down, as the engine recorded them.
    let inspected = bollard()
        .await
        .inspect_container(&info.id, None)
        .await
        .unwrap();
    let host = inspected.host_config.unwrap();
    assert_eq!(host.memory, Some(64 * 1024 * 1024));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(host.privileged, Some(false));
    assert!(host.port_bindings.unwrap_or_default().is_empty());
    assert_eq!(host.network_mode.as_deref(), Some(net.as_str()));
    assert_eq!(
        host.restart_policy
            .and_then(|p| p.name)
            .map(|n| n.to_string()),
        Some("no".to_string())
    );
    let endpoints = inspected.network_settings.unwrap().networks.unwrap();
    assert!(
        endpoints[&net]
            .aliases
            .clone()
            .unwrap_or_default()
            .contains(&"web".to_string()),
        "{:?}",
        endpoints[&net].aliases
    );

    // Stopping is prompt (the app handles SIGTERM; no 10 s wait for SIGKILL) and idempotent.
    let started = Instant::now();
    rt.stop_and_remove(&info.id, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        started.elapsed()
    );
    assert!(rt.list().await.unwrap().iter().all(|c| c.id != info.id));
    let err = bollard()
        .await
        .inspect_container(&info.id, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    rt.stop_and_remove(&info.id, Duration::from_secs(1))
        .await
        .unwrap();
    rt.stop_and_remove("orca-test-never-existed", Duration::from_secs(1))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_taken_name_is_a_conflict() {
    let cleanup = Cleanup::default();
    let rt = runtime().await;
    let net = cleanup.network(&unique("net"));
    rt.ensure_network(&net, &BTreeMap::new()).await.unwrap();
    let name = cleanup.container(&unique("dup"));

    let first = rt.create_and_start(&spec(&name, &net)).await.unwrap();
    let err = rt.create_and_start(&spec(&name, &net)).await.unwrap_err();
    assert_eq!(err, RuntimeError::Conflict { name: name.clone() });
    // The first container is untouched.
    let listed = rt.list().await.unwrap();
    let c = listed.iter().find(|c| c.id == first.id).unwrap();
    assert_eq!(c.state, ContainerState::Running);
}

#[tokio::test]
async fn events_report_a_killed_container() {
    let cleanup = Cleanup::default();
    let rt = runtime().await;
    let net = cleanup.network(&unique("net"));
    rt.ensure_network(&net, &BTreeMap::new()).await.unwrap();
    let name = cleanup.container(&unique("victim"));

    let mut events = rt.events();
    let info = rt.create_and_start(&spec(&name, &net)).await.unwrap();
    // Listed while running (inspected once), then again (taken from what `list` knows of a
    // still-running container): the same facts; once killed it must be inspected again.
    let first = rt.list().await.unwrap();
    let second = rt.list().await.unwrap();
    let mine = |l: &[orca_docker::ContainerInfo]| l.iter().find(|c| c.id == info.id).cloned();
    assert_eq!(mine(&first).map(|c| c.state), Some(ContainerState::Running));
    assert_eq!(mine(&first), mine(&second));
    bollard()
        .await
        .kill_container(
            &info.id,
            Some(KillContainerOptionsBuilder::new().signal("SIGKILL").build()),
        )
        .await
        .unwrap();

    let mut seen = Vec::new();
    let die = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(ev) = events.next().await {
            let ev = ev.expect("event stream error");
            if ev.id == info.id {
                seen.push(ev.action.clone());
                if ev.action == "die" {
                    return ev;
                }
            }
        }
        panic!("event stream ended");
    })
    .await
    .unwrap_or_else(|_| panic!("no die event within 15s; saw {seen:?}"));
    assert!(seen.contains(&"start".to_string()), "{seen:?}");
    assert_eq!(
        die.labels.get(LABEL_MANAGED).map(String::as_str),
        Some("true")
    );
    assert_eq!(die.labels.get("exitCode").map(String::as_str), Some("137"));

    let listed = rt.list().await.unwrap();
    let dead = listed.iter().find(|c| c.id == info.id).unwrap();
    assert_eq!(dead.state, ContainerState::Exited);
    assert_eq!(dead.exit_code, Some(137));
    assert!(!dead.oom_killed);
    assert!(dead.finished_at.is_some());
    assert!(dead.ips.is_empty(), "{:?}", dead.ips);
}

/// Regression (CI, 2026-12-03: `restart_adopts_containers_and_killed_replica_is_replaced`):
/// the engine's listing lags its event stream — right after `die` it still lists the
/// container as running — and `list` took the cached inspect of a container listed running,
/// so the pass the `die` woke saw the killed replica running and nothing replaced it until
/// the watchdog. Every container killed here is listed at once when its `die` arrives, and
/// must be `exited` there.
#[tokio::test]
async fn regression_a_container_listed_at_its_die_event_is_exited_though_the_listing_lags() {
    let cleanup = Cleanup::default();
    let rt = runtime().await;
    let net = cleanup.network(&unique("net"));
    rt.ensure_network(&net, &BTreeMap::new()).await.unwrap();
    let mut events = rt.events();
    let mut ids = Vec::new();
    for i in 0..4 {
        let name = cleanup.container(&unique(&format!("lag{i}")));
        ids.push(rt.create_and_start(&spec(&name, &net)).await.unwrap().id);
    }
    // Listed running twice: the second listing takes what `list` knows.
    for _ in 0..2 {
        let listed = rt.list().await.unwrap();
        for id in &ids {
            let c = listed.iter().find(|c| &c.id == id).expect("listed");
            assert_eq!(c.state, ContainerState::Running);
        }
    }
    let docker = bollard().await;
    for id in &ids {
        let docker = docker.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let _ = docker
                .kill_container(
                    &id,
                    Some(KillContainerOptionsBuilder::new().signal("SIGKILL").build()),
                )
                .await;
        });
    }
    let mut dead = std::collections::HashSet::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while dead.len() < ids.len() {
            let ev = events.next().await.expect("event stream ended").unwrap();
            if ev.action != "die" || !ids.contains(&ev.id) {
                continue;
            }
            let listed = rt.list().await.unwrap();
            let c = listed.iter().find(|c| c.id == ev.id).expect("still listed");
            assert_eq!(
                c.state,
                ContainerState::Exited,
                "listed at its die event: {c:?}"
            );
            assert_eq!(c.exit_code, Some(137));
            dead.insert(ev.id);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("die events of {} of {} containers", dead.len(), ids.len()));
}

#[tokio::test]
async fn logs_return_stdout_and_stderr_lines() {
    let cleanup = Cleanup::default();
    let rt = runtime().await;
    let net = cleanup.network(&unique("net"));
    rt.ensure_network(&net, &BTreeMap::new()).await.unwrap();
    let name = cleanup.container(&unique("chatty"));
    let mut s = spec(&name, &net);
    s.env = vec![("LOG_REQUESTS".into(), "1".into())];
    let info = rt.create_and_start(&s).await.unwrap();
    let ip = info.ips[&net];
    http_get_ready(ip, "/healthz").await;

    let lines: Vec<_> = rt
        .logs(&info.id, None, false)
        .map(|l| l.unwrap())
        .collect()
        .await;
    assert!(
        lines.iter().any(|l| l.stream == LogStream::Stdout
            && l.text
                .starts_with("orca-testapp v1 listening on 0.0.0.0:8080")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.stream == LogStream::Stderr && l.text == "orca-testapp: ready"),
        "{lines:?}"
    );
    let tail: Vec<_> = rt
        .logs(&info.id, Some(1), false)
        .map(|l| l.unwrap())
        .collect()
        .await;
    assert_eq!(tail.len(), 1, "{tail:?}");

    // Following sees lines written after the call: once the history (ending with the ready
    // line) has arrived, the follow request is live; then make the app log a new line.
    let mut follow = rt.logs(&info.id, None, true);
    let line = tokio::time::timeout(Duration::from_secs(10), async {
        let mut requested = false;
        loop {
            let l = follow.next().await.expect("log stream ended").unwrap();
            if !requested && l.text == "GET /healthz" {
                requested = true;
                http_get_ready(ip, "/followed-request").await;
            }
            if l.text.contains("/followed-request") {
                return l;
            }
        }
    })
    .await
    .expect("followed log line within 10s");
    assert_eq!(line.text, "GET /followed-request");

    // Missing container: an error, not an empty stream.
    let missing: Vec<_> = rt
        .logs("orca-test-never-existed", None, false)
        .collect()
        .await;
    assert!(
        matches!(missing.as_slice(), [Err(RuntimeError::NotFound { .. })]),
        "{missing:?}"
    );
}

#[tokio::test]
async fn a_missing_image_fails_fast_and_names_the_image() {
    let cleanup = Cleanup::default();
    let rt = runtime().await.with_pull_timeout(Duration::from_secs(20));
    let net = cleanup.network(&unique("net"));
    rt.ensure_network(&net, &BTreeMap::new()).await.unwrap();
    let name = cleanup.container(&unique("ghost"));
    let image = format!("{}:v0", unique("missing-image"));
    assert!(!rt.image_exists(&image).await.unwrap());

    let mut s = spec(&name, &net);
    s.image = image.clone();
    let started = Instant::now();
    let err = rt.create_and_start(&s).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(&err, RuntimeError::ImageNotFound { image: i, .. } if *i == image),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "image \"{image}\" is not present locally and could not be pulled: "
        )),
        "{msg}"
    );
    // Nothing was created.
    assert!(rt.list().await.unwrap().iter().all(|c| c.name != name));
}

#[tokio::test]
async fn node_info_and_image_exists() {
    let rt = runtime().await;
    assert!(rt.image_exists(testapp_image()).await.unwrap());
    let info = rt.node_info().await.unwrap();
    assert!(!info.hostname.is_empty(), "{info:?}");
    assert!(!info.engine_version.is_empty(), "{info:?}");
    assert!(info.api_version.starts_with("1."), "{info:?}");
    assert!(info.cpus > 0, "{info:?}");
    assert!(info.memory_bytes > 0, "{info:?}");
    assert!(!info.os.is_empty(), "{info:?}");
}

/// Removes a named volume even when the test panics.
struct VolumeGuard(String);

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f", &self.0])
            .output();
    }
}

#[tokio::test]
async fn a_named_volume_is_made_once_kept_by_stop_and_never_shared_with_another_cluster() {
    // Dropped after `cleanup` (declared first), once no container uses the volume.
    let volume = unique("vol");
    let _guard = VolumeGuard(volume.clone());
    let cleanup = Cleanup::default();
    let scope = |id: &str| orca_docker::ClusterScope {
        name: "volclash".into(),
        id: id.into(),
    };
    let ours = runtime().await.scoped(scope("id-ours"));
    let theirs = runtime().await.scoped(scope("id-theirs"));
    let net = cleanup.network(&unique("vnet"));
    ours.ensure_network(&net, &BTreeMap::new()).await.unwrap();
    let mounted = |name: &str| {
        let mut s = spec(&cleanup.container(&unique(name)), &net);
        s.mounts = vec![orca_docker::MountSpec {
            source: orca_docker::MountSourceSpec::Volume {
                name: volume.clone(),
                labels: BTreeMap::from([("orca.cluster".to_string(), "volclash".to_string())]),
            },
            target: "/data".into(),
            read_only: false,
        }];
        s
    };
    let first = mounted("vol-a");
    let info = ours.create_and_start(&first).await.unwrap();
    let listed = ours.list_volumes().await.unwrap();
    let v = listed
        .iter()
        .find(|v| v.name == volume)
        .expect("made on first use");
    assert_eq!(
        v.labels.get(LABEL_MANAGED).map(String::as_str),
        Some("true")
    );
    assert_eq!(
        v.labels.get("orca.cluster.id").map(String::as_str),
        Some("id-ours")
    );
    assert_eq!(v.users, vec![first.name.clone()]);
    // Another cluster id never mounts, sees or removes it.
    let err = theirs
        .create_and_start(&mounted("vol-b"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("belongs to another cluster"),
        "{err}"
    );
    assert!(theirs
        .list_volumes()
        .await
        .unwrap()
        .iter()
        .all(|v| v.name != volume));
    assert!(matches!(
        theirs.remove_volume(&volume).await,
        Err(RuntimeError::NotFound { .. })
    ));
    // In use: refused. The container's removal keeps it; then it can go.
    let err = ours.remove_volume(&volume).await.unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    ours.stop_and_remove(&info.id, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(ours
        .list_volumes()
        .await
        .unwrap()
        .iter()
        .any(|v| v.name == volume && v.users.is_empty()));
    ours.remove_volume(&volume).await.unwrap();
    assert!(matches!(
        ours.remove_volume(&volume).await,
        Err(RuntimeError::NotFound { .. })
    ));
}
