//! Issue #12 end to end: a master and agent nodes, each node a real Docker Engine in its own
//! network namespace (tests/support/nodes.rs), the agent inside that namespace dialling the
//! master over the topology's links. Joins and their refusals, placement across nodes with
//! the image shipped by orca, routing to remote instances, healing, agent restarts.

mod support;

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::nodes::{HostSwarm, NodeEngine, Topology};
use support::*;

/// One `orca agent` process inside a node's namespace.
struct Agent {
    child: Option<Child>,
    home: tempfile::TempDir,
    log: PathBuf,
}

impl Agent {
    /// Starts an agent on `node` joining `master` (`https://ip:port`).
    fn start(node: &NodeEngine, master: &str, token: Option<&str>, extra: &[&str]) -> Agent {
        let home = tempfile::tempdir().unwrap();
        let log = home.path().join("agent.log");
        let mut a = Agent {
            child: None,
            home,
            log,
        };
        a.spawn(node, master, token, extra);
        a
    }

    fn spawn(&mut self, node: &NodeEngine, master: &str, token: Option<&str>, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = node.command_in_ns(env!("CARGO_BIN_EXE_orca"));
        cmd.arg("agent")
            .arg("--join")
            .arg(master)
            .arg("--name")
            .arg(&node.name)
            .args(extra)
            .env("ORCA_HOME", self.home.path())
            .env("ORCA_LOG", "info,orca=debug")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(t) = token {
            cmd.arg("--token").arg(t);
        }
        self.child = Some(cmd.spawn().expect("spawning orca agent"));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the agent to exit (a refused join); returns its log.
    fn wait_exit(&mut self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(!status.success(), "a refused agent exits non-zero");
                self.child = None;
                return self.log();
            }
            assert!(
                Instant::now() < deadline,
                "agent still running after {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn master_url(s: &Server) -> String {
    let port = s.api.rsplit(':').next().unwrap();
    let host = s
        .api
        .trim_start_matches("http://")
        .rsplit_once(':')
        .unwrap()
        .0
        .to_string();
    format!("https://{host}:{port}")
}

fn join_token(s: &Server, extra: &[&str]) -> String {
    let mut args = vec!["node", "token", "create"];
    args.extend_from_slice(extra);
    s.cli(&args).trim().to_string()
}

fn nodes(s: &Server) -> Vec<Value> {
    let out = s.cli(&["nodes", "--output", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["nodes"].as_array().unwrap().clone()
}

fn wait_ready_nodes(s: &Server, n: usize, agents: &[&Agent]) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = nodes(s);
        if list.iter().filter(|n| n["status"] == "ready").count() == n {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "not {n} ready nodes: {list:#?}\nserver log:\n{}\nagent logs:\n{}",
            tail(&s.log(), 40),
            agents
                .iter()
                .map(|a| tail(&a.log(), 20))
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn agents_join_with_tokens_and_bad_tokens_are_refused() {
    let _swarm = HostSwarm::take();
    let topo = Topology::start(2);
    let s = Server::start_at(topo.host_ip(), "");
    let url = master_url(&s);
    let (n1, n2) = (&topo.nodes[0], &topo.nodes[1]);

    // A single-use token joins one node.
    let once = join_token(&s, &[]);
    let a1 = Agent::start(n1, &url, Some(&once), &["--labels", "zone=a"]);
    wait_ready_nodes(&s, 2, &[&a1]);

    // The same token again: refused, naming why.
    let mut reused = Agent::start(n2, &url, Some(&once), &[]);
    let log = reused.wait_exit(Duration::from_secs(30));
    assert!(log.contains("already used"), "{log}");

    // Right CA, wrong secret: refused.
    let good = join_token(&s, &[]);
    let mut parts: Vec<&str> = good.split('.').collect();
    let wrong_secret = "0".repeat(64);
    parts[3] = &wrong_secret;
    let mut wrong = Agent::start(n2, &url, Some(&parts.join(".")), &[]);
    let log = wrong.wait_exit(Duration::from_secs(30));
    assert!(log.contains("unknown join token"), "{log}");

    // A token for another CA (a forged master, or a typo in the fingerprint): the agent
    // refuses the master before sending anything.
    let mut parts: Vec<&str> = good.split('.').collect();
    let other_ca = "f".repeat(64);
    parts[1] = &other_ca;
    let mut forged = Agent::start(n2, &url, Some(&parts.join(".")), &[]);
    let log = forged.wait_exit(Duration::from_secs(30));
    assert!(log.contains("not the one the join token pins"), "{log}");

    // An expired token.
    let short = join_token(&s, &["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let mut expired = Agent::start(n2, &url, Some(&short), &[]);
    let log = expired.wait_exit(Duration::from_secs(30));
    assert!(log.contains("expired"), "{log}");

    // A good token joins the second node; `orca nodes` shows three ready nodes with their
    // capacity and labels.
    let a2 = Agent::start(n2, &url, Some(&good), &[]);
    let list = wait_ready_nodes(&s, 3, &[&a1, &a2]);
    for n in &list {
        assert!(n["cpus"].as_u64().unwrap() > 0, "{n}");
        assert!(n["memory_bytes"].as_u64().unwrap() > 0, "{n}");
    }
    let node1 = list.iter().find(|n| n["name"] == n1.name.as_str()).unwrap();
    assert_eq!(node1["labels"]["zone"], "a");
    assert_eq!(node1["address"], n1.ip.to_string());
    let text = s.cli(&["nodes"]);
    assert!(text.contains(&n2.name) && text.contains("ready"), "{text}");
    let swarm_state =
        |n: &NodeEngine| n.docker_ok(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while swarm_state(n2) != "active" {
        assert!(
            Instant::now() < deadline,
            "{} never joined the cluster's swarm:\n{}",
            n2.name,
            tail(&s.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Removing a node revokes its certificate: it cannot reconnect; its engine leaves the
    // cluster's swarm.
    s.cli(&["node", "remove", &n2.name]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes(&s).iter().any(|n| n["name"] == n2.name.as_str()) {
        assert!(Instant::now() < deadline, "removed node still listed");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(7));
    assert!(
        !nodes(&s).iter().any(|n| n["name"] == n2.name.as_str()),
        "a removed node's agent must not come back"
    );
    assert_eq!(
        swarm_state(n2),
        "inactive",
        "the removed node's engine left the swarm"
    );
    assert!(
        s.log().contains("belongs to no joined node"),
        "{}\nagent:\n{}",
        tail(&s.log(), 30),
        tail(&a2.log(), 30)
    );
}

/// Instances per node of a service, from status.
fn per_node(svc: &Value) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for i in svc["instances"].as_array().into_iter().flatten() {
        *m.entry(i["node"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    m
}

#[test]
fn six_replicas_spread_over_three_nodes_with_the_image_shipped_by_orca() {
    let _swarm = HostSwarm::take();
    let topo = Topology::start(2);
    let s = Server::start_at(topo.host_ip(), "");
    let url = master_url(&s);
    let token = join_token(&s, &["--reusable"]);
    let a1 = Agent::start(&topo.nodes[0], &url, Some(&token), &["--labels", "zone=a"]);
    let mut a2 = Agent::start(&topo.nodes[1], &url, Some(&token), &["--labels", "zone=b"]);
    wait_ready_nodes(&s, 3, &[&a1, &a2]);
    let status = s.cli(&["status"]);
    assert!(status.contains("nodes: 3 (3 ready)"), "{status}");
    // The image exists only on the master's engine.
    for n in &topo.nodes {
        let out = n.docker(&["image", "inspect", testapp_image()]);
        assert!(
            !out.status.success(),
            "the harness must not load the image onto {}",
            n.name
        );
    }

    s.write_service(
        "spread",
        &testapp_service("web", 6, "spread.test", "env = { LOG_REQUESTS = \"1\" }"),
    );
    let started = Instant::now();
    s.cli(&["deploy", "--no-wait"]);
    // Deploy → the first answer through the proxy (the image is shipped first).
    let deadline = started + Duration::from_secs(120);
    while !s
        .proxy_get("spread.test", "/")
        .is_ok_and(|(code, _)| code == 200)
    {
        assert!(
            Instant::now() < deadline,
            "no 200 in 120 s:\n{}",
            tail(&s.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let first_ms = started.elapsed().as_millis();
    let svc = s.wait_service("spread", "web", "6/6 ready", |v| v["ready_replicas"] == 6);
    let deploy_ms = started.elapsed().as_millis();
    eprintln!("deploy of 6 replicas over 3 nodes: first 200 after {first_ms} ms");
    let counts = per_node(&svc);
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.values().all(|c| *c == 2),
        "2/2/2 expected: {counts:?}"
    );
    eprintln!(
        "deploy of 6 replicas over 3 nodes: 6/6 ready after {deploy_ms} ms (incl. image shipping)"
    );

    // Requests through the master's proxy reach all six.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let (code, body) = s.proxy_get("spread.test", "/").unwrap();
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        seen.insert(v["instance"].as_str().unwrap().to_string());
        if seen.len() == 6 {
            break;
        }
    }
    assert_eq!(seen.len(), 6, "requests reached {seen:?}");

    // A pin by label runs only on the labelled node; an ambiguous pin is refused.
    s.write_service(
        "pinned",
        &testapp_service(
            "api",
            2,
            "pinned.test",
            "[service.placement]\nlabels = { zone = \"b\" }\n",
        ),
    );
    s.cli(&["deploy", "--timeout-secs", "120"]);
    let svc = s.wait_service("pinned", "api", "2/2 ready", |v| v["ready_replicas"] == 2);
    assert_eq!(
        per_node(&svc).keys().cloned().collect::<Vec<_>>(),
        vec![topo.nodes[1].name.clone()]
    );
    let prefix = common_prefix(&topo.nodes[0].name, &topo.nodes[1].name);
    s.write_service(
        "ambiguous",
        &testapp_service(
            "x",
            1,
            "ambiguous.test",
            &format!("[service.placement]\nnode = \"{prefix}\"\n"),
        ),
    );
    s.cli(&["deploy", "--no-wait"]);
    let svc = s.wait_service("ambiguous", "x", "refused as ambiguous", |v| {
        v["error"].as_str().is_some_and(|e| e.contains("ambiguous"))
    });
    let err = svc["error"].as_str().unwrap();
    assert!(
        err.contains(&topo.nodes[0].name) && err.contains(&topo.nodes[1].name),
        "{err}"
    );

    // `docker kill` of a replica on node 2: replaced and routed again.
    let svc = s.service("spread", "web");
    let on_node2 = svc["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["node"] == topo.nodes[1].name.as_str())
        .unwrap()
        .clone();
    let (victim, victim_id) = (
        on_node2["name"].as_str().unwrap().to_string(),
        on_node2["id"].as_str().unwrap().to_string(),
    );
    let out = topo.nodes[1].docker(&["kill", &victim]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Healed: the killed container is gone (the view may still show it running for a
    // moment after the kill) and six run and are ready.
    s.wait_service("spread", "web", "healed", |v| {
        v["ready_replicas"] == 6
            && v["instances"].as_array().is_some_and(|is| {
                is.len() == 6
                    && is
                        .iter()
                        .all(|i| i["state"] == "running" && i["id"] != victim_id.as_str())
            })
    });

    // A rolling update of the six under constant load through the proxy: no request fails,
    // and the new revision runs 2/2/2 again.
    let load = steady_load(&s, "spread.test", 60_000, 180);
    s.write_service(
        "spread",
        &testapp_service(
            "web",
            6,
            "spread.test",
            "env = { LOG_REQUESTS = \"1\", VERSION = \"v2\" }",
        ),
    );
    let started = Instant::now();
    // Only `web`: the ambiguous service of above stays refused.
    s.cli(&["deploy", "web", "--timeout-secs", "180"]);
    let rollout_ms = started.elapsed().as_millis();
    let svc = s.wait_service("spread", "web", "6/6 ready on v2", |v| {
        v["ready_replicas"] == 6 && v["instances"].as_array().is_some_and(|is| is.len() == 6)
    });
    std::thread::sleep(Duration::from_secs(1));
    let report = load.stop();
    eprintln!(
        "rolling update of 6 replicas over 3 nodes: {rollout_ms} ms; load: {}",
        report.summary()
    );
    assert!(
        report.failures.is_empty() && !report.capped,
        "requests failed during the rolling update across nodes: {}\n{}",
        report.summary(),
        tail(&s.log(), 40)
    );
    assert!(report.ok > 100, "the load ran: {}", report.summary());
    assert!(
        report.versions.get("v2").copied().unwrap_or(0) > 0,
        "{}",
        report.summary()
    );
    let counts = per_node(&svc);
    assert!(
        counts.len() == 3 && counts.values().all(|c| *c == 2),
        "2/2/2 after the update: {counts:?}"
    );

    // SIGKILL of an agent and a restart: its containers are adopted, none duplicated.
    let before = topo.nodes[1].docker_ok(&["ps", "-q"]);
    a2.kill9();
    a2.spawn(&topo.nodes[1], &url, None, &["--labels", "zone=b"]);
    wait_ready_nodes(&s, 3, &[&a1, &a2]);
    std::thread::sleep(Duration::from_secs(3));
    let after = topo.nodes[1].docker_ok(&["ps", "-q"]);
    assert_eq!(
        sorted_lines(&before),
        sorted_lines(&after),
        "the restarted agent's containers are adopted as they are"
    );
    let svc = s.wait_service("spread", "web", "6/6 ready", |v| v["ready_replicas"] == 6);
    assert_eq!(svc["instances"].as_array().unwrap().len(), 6, "{svc:#}");

    // `orca logs` of the service includes lines of instances on remote nodes, and
    // `--follow` streams new ones from them as they are written.
    let logs = s.cli(&["logs", "web", "--project", "spread", "--tail", "5"]);
    assert!(!logs.contains("not connected"), "{logs}");
    follow_streams_a_remote_instance(&s, &topo.nodes[1].name);

    // SIGKILL of the master and a restart: the agents reconnect (with back-off while it is
    // away), every container on every node is adopted, none duplicated.
    let mut s = s;
    let on_nodes = |t: &Topology| -> Vec<Vec<String>> {
        t.nodes
            .iter()
            .map(|n| sorted_lines(&n.docker_ok(&["ps", "-q"])))
            .collect()
    };
    let before = on_nodes(&topo);
    s.kill9();
    // An agent (re)started while the master is down connects once it is up.
    let mut a1 = a1;
    a1.kill9();
    a1.spawn(&topo.nodes[0], &url, None, &["--labels", "zone=a"]);
    std::thread::sleep(Duration::from_secs(6));
    s.spawn();
    wait_ready_nodes(&s, 3, &[&a1, &a2]);
    let svc = s.wait_service("spread", "web", "6/6 ready after a master restart", |v| {
        v["ready_replicas"] == 6
    });
    assert_eq!(svc["instances"].as_array().unwrap().len(), 6, "{svc:#}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        before,
        on_nodes(&topo),
        "nothing restarted or duplicated on the nodes"
    );
    assert!(
        a1.log().contains("cannot reach the master; retrying"),
        "back-off while the master was away:\n{}",
        tail(&a1.log(), 20)
    );
    drop(a1);
    drop(a2);
    drop(s);
    drop(topo);
}

#[test]
fn services_reach_each_other_across_nodes_on_their_projects_overlay_only() {
    let _swarm = HostSwarm::take();
    let topo = Topology::start(3);
    let s = Server::start_at(
        topo.host_ip(),
        &format!("[nodes]\noverlay_pools = [\"{}\"]\n", topo.overlay_pool()),
    );
    let url = master_url(&s);
    let token = join_token(&s, &["--reusable"]);
    let (n1, n2, n3) = (&topo.nodes[0], &topo.nodes[1], &topo.nodes[2]);

    // An engine that already belongs to another swarm is refused, saying so.
    n3.docker_ok(&["swarm", "init", "--advertise-addr", &n3.ip.to_string()]);
    let mut foreign = Agent::start(n3, &url, Some(&token), &[]);
    let log = foreign.wait_exit(Duration::from_secs(30));
    assert!(log.contains("already belongs to another swarm"), "{log}");

    let a1 = Agent::start(n1, &url, Some(&token), &["--labels", "zone=a"]);
    let a2 = Agent::start(n2, &url, Some(&token), &["--labels", "zone=b"]);
    wait_ready_nodes(&s, 3, &[&a1, &a2]);
    // The master made its cluster's swarm (the host engine is its manager) and joined both
    // engines to it.
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in [n1, n2] {
        loop {
            let state = n.docker_ok(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
            if state == "active" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never joined the swarm ({state}):\n{}",
                n.name,
                tail(&s.log(), 40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let master = s.cli(&["nodes", "--output", "json"]);
    let master: Value = serde_json::from_str(&master).unwrap();
    let master_name = master["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] != n1.name.as_str() && n["name"] != n2.name.as_str())
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();

    // shop: a db on node 2 (alias `database`); a web on node 1 and a worker on the master
    // that each wait for `database:8080` before they listen, so their becoming ready proves
    // the name resolves and connects across nodes.
    let img = testapp_image();
    let service = |name: &str, pin: &str, extra: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nimage = \"{img}\"\nport = 8080\nhealth = \"/healthz\"\n{extra}\n\
             [service.placement]\n{pin}\n\n"
        )
    };
    let depends = "[service.env]\nDEPENDS_ON = \"database:8080\"\n";
    s.write_service(
        "shop",
        &[
            service(
                "db",
                "labels = { zone = \"b\" }",
                "aliases = [\"database\"]\n",
            ),
            service("web", "labels = { zone = \"a\" }", depends),
            service("worker", &format!("node = \"{master_name}\""), depends),
        ]
        .concat(),
    );
    s.cli(&["deploy", "--timeout-secs", "120"]);
    for (name, node) in [
        ("db", &n2.name),
        ("web", &n1.name),
        ("worker", &master_name),
    ] {
        let svc = s.wait_service("shop", name, "ready", |v| v["ready_replicas"] == 1);
        assert_eq!(
            per_node(&svc).keys().cloned().collect::<Vec<_>>(),
            vec![node.clone()],
            "{name}"
        );
    }

    // Another project's web on node 1 asks for the same name: it is not on shop's network,
    // so it never connects (and never becomes ready).
    s.write_service(
        "other",
        &service("web", "labels = { zone = \"a\" }", depends),
    );
    s.cli(&["deploy", "--no-wait"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let logs = s.cli(&["logs", "web", "--project", "other", "--tail", "20"]);
        if logs.contains("database:8080") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "other/web logged no failed connection:\n{logs}\n{}",
            tail(&s.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(5));
    let other = s.service("other", "web");
    assert_eq!(other["ready_replicas"], 0, "{other:#}");
    let logs = s.cli(&["logs", "web", "--project", "other", "--tail", "5"]);
    assert!(
        !logs.contains("orca-testapp: ready"),
        "other/web reached shop's database:\n{logs}"
    );
    drop(a1);
    drop(a2);
    drop(foreign);
    drop(s);
    drop(topo);
}

/// Names of this cluster's containers on a node's engine.
fn orca_containers(n: &NodeEngine, cluster: &str) -> Vec<String> {
    sorted_lines(&n.docker_ok(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=orca.cluster={cluster}"),
        "--format",
        "{{.Names}}",
    ]))
}

#[test]
fn a_drained_node_is_emptied_under_load_without_a_failed_request_then_rebalanced() {
    let _swarm = HostSwarm::take();
    let topo = Topology::start(2);
    let s = Server::start_at(topo.host_ip(), "");
    let url = master_url(&s);
    let token = join_token(&s, &["--reusable"]);
    let (n1, n2) = (&topo.nodes[0], &topo.nodes[1]);
    let a1 = Agent::start(n1, &url, Some(&token), &["--labels", "zone=a"]);
    let a2 = Agent::start(n2, &url, Some(&token), &["--labels", "zone=b"]);
    wait_ready_nodes(&s, 3, &[&a1, &a2]);
    s.write_service(
        "drain",
        &testapp_service(
            "web",
            6,
            "drain.test",
            "[service.deploy]\ndrain_timeout_secs = 5\n",
        ),
    );
    s.write_service(
        "pinned",
        &testapp_service(
            "api",
            1,
            "pinned.test",
            "[service.placement]\nlabels = { zone = \"b\" }\n",
        ),
    );
    s.cli(&["deploy", "--timeout-secs", "120"]);
    let svc = s.wait_service("drain", "web", "6/6 ready", |v| v["ready_replicas"] == 6);
    assert_eq!(
        per_node(&svc).get(&n1.name),
        Some(&2),
        "{:?}",
        per_node(&svc)
    );

    // Drain node 1 while the six serve: every instance there moves, none fails a request.
    let load = steady_load(&s, "drain.test", 60_000, 180);
    let started = Instant::now();
    s.cli(&["node", "drain", &n1.name]);
    let svc = s.wait_service("drain", "web", "moved off node 1", |v| {
        v["ready_replicas"] == 6
            && v["instances"]
                .as_array()
                .is_some_and(|is| is.len() == 6 && is.iter().all(|i| i["node"] != n1.name.as_str()))
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !orca_containers(n1, &s.cluster).is_empty() {
        assert!(
            Instant::now() < deadline,
            "containers left on the drained node: {:?}",
            orca_containers(n1, &s.cluster)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let drain_ms = started.elapsed().as_millis();
    std::thread::sleep(Duration::from_secs(1));
    let report = load.stop();
    eprintln!(
        "drain of 2 of 6 replicas under load: {drain_ms} ms; load: {}",
        report.summary()
    );
    assert!(
        report.failures.is_empty() && !report.capped && report.ok > 100,
        "requests failed during the drain: {}\n{}",
        report.summary(),
        tail(&s.log(), 40)
    );
    assert_eq!(per_node(&svc).len(), 2, "{:?}", per_node(&svc));
    let table = s.cli(&["nodes"]);
    assert!(
        table.contains("draining") && table.contains("done"),
        "orca nodes shows the drain's progress:\n{table}"
    );
    let log = s.log();
    assert!(
        log.contains("reason=\"migrated\"") || log.contains("reason=migrated"),
        "{}",
        tail(&log, 30)
    );

    // A new instance never goes to a drained node.
    s.cli(&["scale", "web", "7", "--project", "drain"]);
    let svc = s.wait_service("drain", "web", "7/7 ready", |v| v["ready_replicas"] == 7);
    assert!(
        !per_node(&svc).contains_key(&n1.name),
        "{:?}",
        per_node(&svc)
    );
    s.cli(&["scale", "web", "6", "--project", "drain"]);

    // Undrain, then rebalance under load: the service spreads over all three again with
    // no failed request.
    s.cli(&["node", "undrain", &n1.name]);
    let load = steady_load(&s, "drain.test", 60_000, 180);
    s.cli(&["rebalance", "web", "--project", "drain"]);
    let svc = s.wait_service("drain", "web", "spread again", |v| {
        let counts = per_node(v);
        v["ready_replicas"] == 6
            && v["instances"].as_array().is_some_and(|is| is.len() == 6)
            && counts.len() == 3
            && counts.values().all(|c| *c == 2)
    });
    std::thread::sleep(Duration::from_secs(1));
    let report = load.stop();
    eprintln!("rebalance: {}", report.summary());
    assert!(
        report.failures.is_empty() && !report.capped && report.ok > 100,
        "requests failed during the rebalance: {}\n{}",
        report.summary(),
        tail(&s.log(), 40)
    );
    assert_eq!(per_node(&svc).get(&n1.name), Some(&2));

    // A drain with a deadline: the pinned service cannot move (no other node has its
    // label), so at the deadline its instance is stopped, and said so.
    s.cli(&["node", "drain", &n2.name, "--deadline", "3s"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while orca_containers(n2, &s.cluster)
        .iter()
        .any(|c| c.contains("-pinned-"))
    {
        assert!(
            Instant::now() < deadline,
            "the pinned instance outlived the drain deadline:\n{}",
            tail(&s.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = s.log();
    assert!(log.contains("drain-deadline"), "{}", tail(&log, 30));
    let svc = s.wait_service("pinned", "api", "pending with the reason", |v| {
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("node is draining"))
    });
    assert_eq!(svc["ready_replicas"], 0);
    drop(a1);
    drop(a2);
    drop(s);
    drop(topo);
}

/// Running containers of this cluster named like instances of `project/service`, on the
/// host engine (the master's) or a node's.
fn running_instances(
    node: Option<&NodeEngine>,
    cluster: &str,
    project: &str,
    service: &str,
) -> Vec<String> {
    let prefix = format!("orca-{cluster}-{project}-{service}-");
    let args = [
        "ps",
        "--filter",
        &format!("label=orca.cluster={cluster}"),
        "--format",
        "{{.Names}}",
    ];
    let out = match node {
        Some(n) => n.docker_ok(&args),
        None => {
            let o = std::process::Command::new("docker")
                .args(args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).to_string()
        }
    };
    sorted_lines(&out)
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// A master (node TTL 5 s) and two agents heartbeating every second; `part/web` runs 6
/// replicas 2/2/2, `solo/api` one replica pinned to node 2, and `part/patient` 3 replicas
/// 1/1/1 that wait 20 s for a lost node (`lost_after`) before being replaced.
fn partition_cluster() -> (HostSwarm, Topology, Server, Agent, Agent) {
    let swarm = HostSwarm::take();
    let topo = Topology::start(2);
    let s = Server::start_at(topo.host_ip(), "[nodes]\nnode_ttl_secs = 5\n");
    let url = master_url(&s);
    let token = join_token(&s, &["--reusable"]);
    let beat = ["--heartbeat-secs", "1"];
    let a1 = Agent::start(&topo.nodes[0], &url, Some(&token), &beat);
    let a2 = Agent::start(&topo.nodes[1], &url, Some(&token), &beat);
    wait_ready_nodes(&s, 3, &[&a1, &a2]);
    s.write_service(
        "part",
        &[
            testapp_service(
                "web",
                6,
                "part.test",
                "[service.deploy]\ndrain_timeout_secs = 5\n",
            ),
            testapp_service(
                "patient",
                3,
                "patient.test",
                "[service.placement]\nlost_after = \"20s\"\n",
            ),
        ]
        .concat(),
    );
    s.write_service(
        "solo",
        &testapp_service(
            "api",
            1,
            "solo.test",
            &format!("[service.placement]\nnode = \"{}\"\n", topo.nodes[1].name),
        ),
    );
    s.cli(&["deploy", "--timeout-secs", "120"]);
    let svc = s.wait_service("part", "web", "6/6 ready", |v| v["ready_replicas"] == 6);
    assert_eq!(per_node(&svc).get(&topo.nodes[1].name), Some(&2));
    let patient = s.wait_service("part", "patient", "3/3 ready", |v| v["ready_replicas"] == 3);
    assert_eq!(per_node(&patient).len(), 3, "{:?}", per_node(&patient));
    s.wait_service("solo", "api", "ready on node 2", |v| {
        v["ready_replicas"] == 1
    });
    (swarm, topo, s, a1, a2)
}

/// The load of these tests through the master's proxy: 4 threads, one GET every 10 ms each,
/// at most `max_requests` and `max_secs`; returns once it has run for a second.
fn steady_load(s: &Server, host: &str, max_requests: usize, max_secs: u64) -> Load {
    let load = Load::start(
        s.http,
        host,
        "/",
        4,
        Duration::from_millis(10),
        max_requests,
        Duration::from_secs(max_secs),
    );
    std::thread::sleep(Duration::from_secs(1));
    load
}

fn partition_load(s: &Server) -> Load {
    steady_load(s, "part.test", 200_000, 600)
}

/// Waits until `part/web` runs 6 ready instances none of which is on `lost`.
fn wait_replaced_off(s: &Server, lost: &str) {
    s.wait_service("part", "web", "replaced off the lost node", |v| {
        v["ready_replicas"] == 6
            && v["instances"].as_array().is_some_and(|is| {
                is.iter()
                    .filter(|i| i["node"] != lost && i["ready"] == true)
                    .count()
                    == 6
            })
    });
}

/// After a heal: waits until node 2 is ready, exactly 6 `part/web` containers run across
/// all engines, the pinned service runs again, and node 2 holds nothing the master does
/// not know; then spreads `web` over node 2 again (so a next cut takes instances with it).
fn wait_converged(s: &Server, topo: &Topology, a2: &Agent, what: &str) {
    let (n1, n2) = (&topo.nodes[0], &topo.nodes[1]);
    let t = Instant::now();
    let deadline = t + Duration::from_secs(120);
    loop {
        let web = s.service("part", "web");
        let solo = s.service("solo", "api");
        let patient = s.service("part", "patient");
        let known: std::collections::BTreeSet<String> = web["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(solo["instances"].as_array().into_iter().flatten())
            .chain(patient["instances"].as_array().into_iter().flatten())
            .filter_map(|i| i["name"].as_str().map(str::to_string))
            .collect();
        let count = |service: &str| -> usize {
            [None, Some(n1), Some(n2)]
                .into_iter()
                .map(|n| running_instances(n, &s.cluster, "part", service).len())
                .sum()
        };
        let (everywhere, patients) = (count("web"), count("patient"));
        let on_n2 = orca_containers(n2, &s.cluster);
        let back = nodes(s)
            .iter()
            .any(|n| n["name"] == n2.name.as_str() && n["status"] == "ready");
        if back
            && everywhere == 6
            && patients == 3
            && web["ready_replicas"] == 6
            && solo["ready_replicas"] == 1
            && on_n2.iter().all(|c| known.contains(c))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not converged after the heal: {everywhere} web and {patients} patient containers running, \
             on node 2 {on_n2:?}, known {known:?}\n{}\nagent 2:\n{}",
            tail(&s.log(), 40),
            tail(&a2.log(), 20)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "{what}: heal -> converged in {} ms",
        t.elapsed().as_millis()
    );
    s.cli(&["rebalance", "web", "--project", "part"]);
    s.wait_service("part", "web", "spread over node 2 again", |v| {
        v["ready_replicas"] == 6
            && v["instances"].as_array().is_some_and(|is| is.len() == 6)
            && per_node(v).get(&n2.name) == Some(&2)
    });
}

/// Asserts that every failed request of `report` started inside one of `windows`.
fn assert_failures_within(report: &LoadReport, windows: &[(u128, u128)]) {
    eprintln!("load: {}", report.summary());
    let outside: Vec<_> = report
        .failures
        .iter()
        .filter(|f| !windows.iter().any(|(a, b)| f.at_ms >= *a && f.at_ms <= *b))
        .collect();
    assert!(
        outside.is_empty(),
        "requests failed outside the loss windows {windows:?}: {outside:?}\n{}",
        report.summary()
    );
    assert!(report.ok > 1000, "{}", report.summary());
}

#[test]
fn a_partitioned_node_is_replaced_and_its_return_never_leaves_a_duplicate() {
    let (_swarm, topo, s, a1, a2) = partition_cluster();
    let n2 = &topo.nodes[1];
    let patient_on_n2 = || running_instances(Some(n2), &s.cluster, "part", "patient");
    let waiting = patient_on_n2();
    assert_eq!(waiting.len(), 1);
    let load = partition_load(&s);
    // (cut, replaced) per cycle, in the load's clock.
    let mut windows: Vec<(u128, u128)> = Vec::new();
    for cycle in 0..5 {
        // Cut node 2 off in both directions.
        n2.partition();
        let (cut, t) = (load.now_ms(), Instant::now());
        wait_replaced_off(&s, &n2.name);
        windows.push((cut, load.now_ms()));
        eprintln!(
            "cycle {cycle}: node loss -> 6 ready elsewhere in {} ms",
            t.elapsed().as_millis()
        );
        // `patient` waits for the node (lost_after): not replaced, nothing started for it.
        let elsewhere: usize = [None, Some(&topo.nodes[0])]
            .into_iter()
            .map(|n| running_instances(n, &s.cluster, "part", "patient").len())
            .sum();
        assert_eq!(
            elsewhere, 2,
            "cycle {cycle}: a lost_after service was replaced at once"
        );
        if cycle == 0 {
            // Its pinned service waits for it, saying why.
            s.wait_service("solo", "api", "pending on the lost node", |v| {
                v["error"]
                    .as_str()
                    .is_some_and(|e| e.contains(&n2.name) && e.contains("not ready"))
            });
        }
        std::thread::sleep(Duration::from_secs(2));
        // Heal: per slot one instance stays (the ready replacement).
        n2.heal();
        wait_converged(&s, &topo, &a2, &format!("cycle {cycle}"));
        assert_eq!(
            patient_on_n2(),
            waiting,
            "cycle {cycle}: the waited-for instance is adopted as it is"
        );
    }
    assert_failures_within(&load.stop(), &windows);
    drop(a1);
    drop(a2);
    drop(s);
    drop(topo);
}

#[test]
fn a_one_way_partition_and_a_master_restart_during_a_partition_end_the_same() {
    let (_swarm, topo, mut s, a1, a2) = partition_cluster();
    let n2 = &topo.nodes[1];
    let load = partition_load(&s);
    let mut windows = Vec::new();

    // One way: what node 2 sends is lost, what the master sends arrives.
    n2.partition_outbound();
    let (cut, t) = (load.now_ms(), Instant::now());
    wait_replaced_off(&s, &n2.name);
    eprintln!(
        "one-way: node loss -> 6 ready elsewhere in {} ms",
        t.elapsed().as_millis()
    );
    std::thread::sleep(Duration::from_secs(2));
    n2.heal();
    wait_converged(&s, &topo, &a2, "one-way");
    // What a one-way cut must reach is the end state; a request may fail until the node is
    // back and its duplicates are gone (half-open connections to it), never after.
    windows.push((cut, load.now_ms()));
    std::thread::sleep(Duration::from_secs(2));
    let first = load.stop();
    assert_failures_within(&first, &windows);

    // The master killed and restarted while node 2 is cut off: it does not know node 2's
    // instances, waits node_ttl for it, then replaces them; after the heal, the same end.
    n2.partition();
    s.kill9();
    s.spawn();
    wait_ready_nodes(&s, 2, &[&a1]);
    wait_replaced_off(&s, &n2.name);
    std::thread::sleep(Duration::from_secs(2));
    n2.heal();
    wait_converged(&s, &topo, &a2, "master restart");
    drop(a1);
    drop(a2);
    drop(s);
    drop(topo);
}

/// `orca logs --follow` shows a line that an instance on `node` writes after it started.
fn follow_streams_a_remote_instance(s: &Server, node: &str) {
    use std::io::BufRead;
    let svc = s.service("spread", "web");
    let slot = svc["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["node"] == node)
        .unwrap()["slot"]
        .as_u64()
        .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_orca"))
        .args([
            "logs",
            "web",
            "--project",
            "spread",
            "--follow",
            "--tail",
            "0",
        ])
        .env("ORCA_API", &s.api)
        .env("ORCA_TOKEN", ADMIN)
        .env("ORCA_HOME", s.home())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let want = format!("[web.{slot}] GET /followed");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let found = 'outer: loop {
        for _ in 0..12 {
            let _ = s.proxy_get("spread.test", "/followed");
        }
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
            if line.starts_with(&want) {
                break 'outer true;
            }
            seen.push(line);
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        found,
        "no {want:?} line streamed from node {node}; saw {seen:?}"
    );
}

fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_string).collect();
    v.sort();
    v
}

fn common_prefix(a: &str, b: &str) -> String {
    a.chars()
        .zip(b.chars())
        .take_while(|(x, y)| x == y)
        .map(|(x, _)| x)
        .collect()
}

/// A named volume lives on the node that first ran its service: the stop-first rollout's new
/// instance starts there again (its file still there), and while that node is down the
/// instance stays pending, saying where its volume is, instead of starting on a new, empty
/// volume on the master.
#[test]
fn an_instance_follows_its_volume_and_waits_while_the_volume_s_node_is_down() {
    let _swarm = HostSwarm::take();
    let topo = Topology::start(1);
    let s = Server::start_at(topo.host_ip(), "[nodes]\nnode_ttl_secs = 5\n");
    let url = master_url(&s);
    let token = join_token(&s, &[]);
    let n1 = &topo.nodes[0];
    let a1 = Agent::start(
        n1,
        &url,
        Some(&token),
        &["--heartbeat-secs", "1", "--labels", "disk=big"],
    );
    wait_ready_nodes(&s, 2, &[&a1]);
    let volume = format!("orca-{}-vol-data", s.cluster);
    let toml = |extra: &str| {
        testapp_service(
            "db",
            1,
            "vol.test",
            &format!("volumes = [\"data:/data\"]\n{extra}"),
        )
    };
    // First placed by label on node 1, where its volume is made.
    s.write_service(
        "vol",
        &toml("[service.placement]\nlabels = { disk = \"big\" }\n"),
    );
    s.cli(&["deploy", "--timeout-secs", "120"]);
    let svc = s.wait_service("vol", "db", "ready on node 1", |v| v["ready_replicas"] == 1);
    assert_eq!(per_node(&svc).get(&n1.name), Some(&1), "{svc:#}");
    assert!(n1.docker(&["volume", "inspect", &volume]).status.success());
    let put = http_raw(
        "PUT",
        &format!("http://{}/file/data/kept", s.http),
        None,
        &[("Host", "vol.test")],
        Some(b"on node 1"),
    )
    .unwrap();
    assert_eq!(put.0, 200, "{put:?}");

    // A new revision without the label: placement alone could pick the master; the volume
    // keeps it on node 1.
    s.write_service("vol", &toml("[service.env]\nREV = \"2\"\n"));
    s.cli(&["deploy", "--timeout-secs", "120"]);
    let svc = s.wait_service("vol", "db", "revision 2 ready", |v| {
        v["ready_replicas"] == 1 && v["instances"][0]["revision"] == 2
    });
    assert_eq!(per_node(&svc).get(&n1.name), Some(&1), "{svc:#}");
    let got = s.proxy_get("vol.test", "/file/data/kept").unwrap();
    assert_eq!(got, (200, "on node 1".to_string()));
    // `orca volume ls` lists it on its node, with the container using it.
    let ls: Value = serde_json::from_str(&s.cli(&["volume", "ls", "--output", "json"])).unwrap();
    let row = ls["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["docker_name"] == volume.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{ls:#}"));
    assert_eq!(row["node"], n1.name.as_str(), "{ls:#}");
    assert_eq!(
        row["containers"].as_array().map(Vec::len),
        Some(1),
        "{ls:#}"
    );

    // Node 1 is lost: once it is down, the instance is pending with the reason, and no
    // volume of that name appears on the master's engine.
    n1.partition();
    let svc = s.wait_service("vol", "db", "pending on its volume's node", |v| {
        v["error"].as_str().is_some_and(|e| {
            e.contains(&format!(
                "pending: volume {volume} is on node {} which is down",
                n1.name
            ))
        })
    });
    assert_eq!(svc["ready_replicas"], 0);
    let on_master = std::process::Command::new("docker")
        .args(["volume", "inspect", &volume])
        .output()
        .unwrap();
    assert!(!on_master.status.success(), "no empty volume on the master");
    n1.heal();
    s.wait_service("vol", "db", "back on node 1", |v| v["ready_replicas"] == 1);
    let got = s.proxy_get("vol.test", "/file/data/kept").unwrap();
    assert_eq!(got, (200, "on node 1".to_string()));
    drop(a1);
    drop(s);
    drop(topo);
}
