//! Harness of the end-to-end tests: a real `orca server` process against the real Docker
//! Engine, the real CLI, and real HTTP through the proxy. Each test gets its own cluster name
//! (so servers running in parallel never touch each other's containers), its own state and
//! config dirs, and loopback ports.

#![allow(dead_code)]

pub mod nodes;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Tokens every test cluster has, by role.
pub const ADMIN: &str = "admin-token-0123456789abcdef";
pub const DEPLOYER: &str = "deployer-token-0123456789abcdef";
pub const VIEWER: &str = "viewer-token-0123456789abcdef";

/// The test app image, built once per test binary from `tests/testapp` (FROM scratch).
pub fn testapp_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script = workspace().join("tests/build-testapp-image.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("orca-testapp:latest")
            .output()
            .expect("running build-testapp-image.sh");
        assert!(
            out.status.success(),
            "building the test app image failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
    "orca-testapp:latest"
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// A short unique lowercase id.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!(
        "{prefix}{:x}{:x}{n}",
        std::process::id() % 0xfff,
        nanos % 0xfffff
    )
}

fn free_port() -> u16 {
    free_port_at(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// A port free on `ip` right now.
fn free_port_at(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One running `orca server` and its directories.
pub struct Server {
    child: Option<Child>,
    /// Temp dir holding `home/` and `config/`.
    pub root: tempfile::TempDir,
    /// Cluster name (label of all its containers).
    pub cluster: String,
    /// API base URL.
    pub api: String,
    /// Proxy address.
    pub http: SocketAddr,
    /// HTTPS proxy address.
    pub https: SocketAddr,
    api_port: u16,
    /// The address the API listens on (loopback unless started with [`Server::start_at`]).
    api_ip: IpAddr,
    log: PathBuf,
    /// Whether the server has been up once (its ports are then fixed for restarts).
    started_once: bool,
    /// Whether dropping the server removes its cluster's containers (off for a second
    /// server sharing a cluster name, whose drop must not clean up the first's).
    pub cleanup: bool,
    /// A command the server is started under (e.g. `prlimit --nofile=256:256`).
    wrapper: Vec<String>,
    /// The `orca` binary the server runs (default: the one cargo built).
    binary: PathBuf,
}

impl Server {
    /// Starts a server with admin/deployer/viewer tokens in cluster.toml.
    pub fn start() -> Server {
        Server::start_with("")
    }

    /// Starts a server whose cluster.toml also holds `extra` (e.g. a `[plugins]` table).
    pub fn start_with(extra: &str) -> Server {
        Server::start_under(extra, &[])
    }

    /// Like [`Server::start_with`], with the server run under `wrapper` (a command such as
    /// `prlimit --nofile=256:256` that execs the rest of its arguments).
    pub fn start_under(extra: &str, wrapper: &[&str]) -> Server {
        Server::start_full(&unique("t"), extra, wrapper)
    }

    /// A server of the cluster named `cluster` (with a state dir of its own): two of them
    /// on one engine are what two servers with default settings are.
    pub fn start_named(cluster: &str) -> Server {
        Server::start_full(cluster, "", &[])
    }

    /// Like [`Server::start_with`], with the API listening on `api_ip` instead of 127.0.0.1
    /// (e.g. a multi-node topology's host address, `support::nodes::Topology::host_ip`, so
    /// agents in node namespaces can reach it). The proxy stays on loopback.
    pub fn start_at(api_ip: Ipv4Addr, extra: &str) -> Server {
        let mut s = Server::unspawned(&unique("t"), extra, &[]);
        s.api_ip = IpAddr::V4(api_ip);
        s.api_port = free_port_at(s.api_ip);
        s.api = format!("http://{}:{}", s.api_ip, s.api_port);
        s.spawn();
        s
    }

    fn start_full(cluster: &str, extra: &str, wrapper: &[&str]) -> Server {
        let mut s = Server::unspawned(cluster, extra, wrapper);
        s.spawn();
        s
    }

    /// A server's directories and ports, not started yet.
    fn unspawned(cluster: &str, extra: &str, wrapper: &[&str]) -> Server {
        let root = tempfile::tempdir().unwrap();
        let cluster = cluster.to_string();
        std::fs::create_dir_all(root.path().join("config/services")).unwrap();
        std::fs::write(
            root.path().join("config/cluster.toml"),
            format!(
                "[cluster]\nname = \"{cluster}\"\nstats_interval_secs = 1\n\n\
                 [[token]]\nname = \"root\"\nvalue = \"{ADMIN}\"\nrole = \"admin\"\n\n\
                 [[token]]\nname = \"ci\"\nvalue = \"{DEPLOYER}\"\nrole = \"deployer\"\n\n\
                 [[token]]\nname = \"grafana\"\nvalue = \"{VIEWER}\"\nrole = \"viewer\"\n\n{extra}\n"
            ),
        )
        .unwrap();
        let api_port = free_port();
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = root.path().join("server.log");
        Server {
            binary: PathBuf::from(env!("CARGO_BIN_EXE_orca")),
            cleanup: true,
            wrapper: wrapper.iter().map(|w| w.to_string()).collect(),
            started_once: false,
            child: None,
            cluster,
            api: format!("http://127.0.0.1:{api_port}"),
            http,
            https,
            api_port,
            api_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            log,
            root,
        }
    }

    /// A server run from `binary` (a copy of the test build, e.g. for `orca update`, which
    /// replaces the binary it runs from).
    pub fn start_from(binary: &Path, extra: &str) -> Server {
        let mut s = Server::unspawned(&unique("t"), extra, &[]);
        s.binary = binary.to_path_buf();
        s.spawn();
        s
    }

    /// Restarts the server by socket hand-over: starts a second process of this state dir
    /// beside the running one, which hands it the listening sockets and exits; waits for
    /// the old process to exit and the new one to answer. Returns how long the old one
    /// took to exit after the new one started.
    pub fn restart_with_handover(&mut self) -> Duration {
        let mut old = self.child.take().expect("the server runs");
        let started = Instant::now();
        self.child = Some(self.spawn_process());
        let deadline = started + Duration::from_secs(60);
        let exited = loop {
            if let Some(status) = old.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "the old server exited with {status}:\n{}",
                    self.log()
                );
                break started.elapsed();
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let _ = old.kill();
                panic!("the new server exited with {status}:\n{}", self.log());
            }
            if Instant::now() > deadline {
                let _ = old.kill();
                panic!(
                    "the old server did not hand over within 60 s:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = old.wait();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(
            http_raw(
                "GET",
                &format!("{}/api/v1/health", self.api),
                None,
                &[],
                None
            ),
            Ok((200, _))
        ) {
            assert!(
                Instant::now() < deadline,
                "new server not healthy:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        exited
    }

    /// Like [`Server::start_named`], for a server expected not to come up: `Err` holds its log.
    pub fn try_start_named(cluster: &str) -> Result<Server, Box<(Server, String)>> {
        let mut s = Server::unspawned(cluster, "", &[]);
        match s.try_spawn() {
            Ok(()) => Ok(s),
            Err(log) => Err(Box::new((s, log))),
        }
    }

    /// State dir.
    pub fn home(&self) -> PathBuf {
        self.root.path().join("home")
    }

    /// Config dir.
    pub fn config_dir(&self) -> PathBuf {
        self.root.path().join("config")
    }

    /// Everything the server wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts the server process (again) and waits for `/api/v1/health`.
    pub fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("{log}");
        }
    }

    /// Starts the server process (nothing waited for).
    fn spawn_process(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&self.binary);
                cmd
            }
            None => Command::new(&self.binary),
        };
        cmd.arg("server")
            .env("ORCA_HOME", self.home())
            .env("ORCA_CONFIG_DIR", self.config_dir())
            .env(
                "ORCA_API_ADDR",
                SocketAddr::new(self.api_ip, self.api_port).to_string(),
            )
            .env("ORCA_HTTP_ADDR", self.http.to_string())
            .env("ORCA_HTTPS_ADDR", self.https.to_string())
            .env("ORCA_LOG", "info,orca=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning orca server")
    }

    /// Like [`Server::spawn`]; `Err` holds the log of a server that exited.
    pub fn try_spawn(&mut self) -> Result<(), String> {
        self.child = Some(self.spawn_process());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                // A free port picked by `free_port` can be taken by a parallel test before
                // the server binds it; on the first start, pick new ports and try again.
                let log = self.log();
                if !self.started_once && log.contains("Address already in use") {
                    std::fs::write(&self.log, "").unwrap();
                    self.api_port = free_port_at(self.api_ip);
                    self.api = format!("http://{}:{}", self.api_ip, self.api_port);
                    self.http = SocketAddr::from(([127, 0, 0, 1], free_port()));
                    self.https = SocketAddr::from(([127, 0, 0, 1], free_port()));
                    return self.try_spawn();
                }
                self.child = None;
                return Err(format!("orca server exited with {status}:\n{log}"));
            }
            if let Ok((200, _)) = http_raw(
                "GET",
                &format!("{}/api/v1/health", self.api),
                None,
                &[],
                None,
            ) {
                self.started_once = true;
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "server not healthy in 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server process's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no cleanup at all, like a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.success();
            }
            if Instant::now() > deadline {
                c.kill().unwrap();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the CLI against this server with the given token, in `cwd` (default: config dir).
    pub fn cli_in(&self, token: &str, cwd: Option<&Path>, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_orca"))
            .args(args)
            .env("ORCA_API", &self.api)
            .env("ORCA_TOKEN", token)
            .env("ORCA_HOME", self.home())
            .env("ORCA_CONFIG_DIR", self.config_dir())
            .current_dir(
                cwd.map(Path::to_path_buf)
                    .unwrap_or_else(|| self.config_dir()),
            )
            .output()
            .expect("running orca CLI")
    }

    /// Runs the CLI as admin and asserts success; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_in(ADMIN, None, args);
        assert!(
            out.status.success(),
            "orca {args:?} failed ({}):\nstdout: {}\nstderr: {}\nserver log tail:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 40)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Writes `services/<project>/service.toml`.
    pub fn write_service(&self, project: &str, toml: &str) -> PathBuf {
        let dir = self.config_dir().join("services").join(project);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("service.toml"), toml).unwrap();
        dir
    }

    /// `GET /api/v1/status` as admin.
    pub fn status(&self) -> Value {
        let (code, body) = http_raw(
            "GET",
            &format!("{}/api/v1/status", self.api),
            Some(ADMIN),
            &[],
            None,
        )
        .unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// One service's status entry.
    pub fn service(&self, project: &str, name: &str) -> Value {
        self.status()["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["project"] == project && s["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Waits until `cond` holds on the service's status entry.
    pub fn wait_service(
        &self,
        project: &str,
        name: &str,
        what: &str,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.service(project, name);
            if cond(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {project}/{name} to be {what}; last status: {s:#}\nserver log tail:\n{}",
                tail(&self.log(), 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// GET through the proxy with a Host header.
    /// PUTs `body` as the test app's file `path` (on its volume) through the proxy.
    pub fn put_file(&self, host: &str, path: &str, body: &[u8]) {
        let (code, text) = http_raw(
            "PUT",
            &format!("http://{}/file/{path}", self.http),
            None,
            &[("Host", host)],
            Some(body),
        )
        .unwrap();
        assert_eq!(code, 200, "{text}");
    }

    /// GETs the test app's file `path` through the proxy, retrying while the route settles.
    pub fn get_file(&self, host: &str, path: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.proxy_get(host, &format!("/file/{path}")) {
                Ok((200, body)) => return body,
                other => assert!(
                    Instant::now() < deadline,
                    "GET /file/{path}: {other:?}\nstatus: {:#}\nlog:\n{}",
                    self.status(),
                    tail(&self.log(), 40)
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn proxy_get(&self, host: &str, path: &str) -> Result<(u16, String), String> {
        http_raw(
            "GET",
            &format!("http://{}{}", self.http, path),
            None,
            &[("Host", host)],
            None,
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if self.cleanup {
            remove_cluster_containers(&self.cluster);
        }
    }
}

/// Last `n` lines of a text.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Containers of a cluster: (id, name, state).
pub fn containers(cluster: &str) -> Vec<(String, String, String)> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &format!("label=orca.cluster={cluster}"),
            "--format",
            "{{.ID}} {{.Names}} {{.State}}",
        ])
        .output()
        .unwrap();
    let mut v: Vec<_> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            Some((
                p.next()?.to_string(),
                p.next()?.to_string(),
                p.next()?.to_string(),
            ))
        })
        .collect();
    v.sort();
    v
}

/// Removes every container and network of a cluster (test cleanup).
///
/// A server killed with SIGKILL may have had a request in flight (a network or container
/// being created, e.g. right after `deploy --no-wait`): the engine finishes it after the
/// server is gone, possibly after a first sweep here listed nothing. So the sweep repeats
/// until a look a moment later finds nothing of the cluster.
pub fn remove_cluster_containers(cluster: &str) {
    remove_containers_and_networks(cluster);
    remove_cluster_volumes(cluster);
}

fn remove_containers_and_networks(cluster: &str) {
    for _ in 0..20 {
        let ids: Vec<String> = containers(cluster).into_iter().map(|c| c.0).collect();
        let networks = cluster_network_ids(cluster);
        if ids.is_empty() && networks.is_empty() {
            std::thread::sleep(Duration::from_millis(300));
            if containers(cluster).is_empty() && cluster_network_ids(cluster).is_empty() {
                return;
            }
            continue;
        }
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .arg("rm")
                .arg("-f")
                .args(&ids)
                .output();
        }
        for id in cluster_network_ids(cluster) {
            let _ = Command::new("docker").args(["network", "rm", &id]).output();
        }
    }
}

/// Removes the named volumes labelled with a cluster's name (test cleanup; once its
/// containers are gone, nothing uses them).
pub fn remove_cluster_volumes(cluster: &str) {
    let out = Command::new("docker")
        .args([
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("label=orca.cluster={cluster}"),
        ])
        .output()
        .unwrap();
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if !names.is_empty() {
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f"])
            .args(&names)
            .output();
    }
}

/// Ids of the networks labelled with a cluster's name.
fn cluster_network_ids(cluster: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("label=orca.cluster={cluster}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// `docker kill` a container.
pub fn docker_kill(id: &str) {
    let st = Command::new("docker").args(["kill", id]).output().unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
}

/// A minimal blocking HTTP/1.1 client over a raw socket (no keep-alive), so tests depend
/// on nothing but std and see exactly what went over the wire.
pub fn http_raw(
    method: &str,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream =
        std::net::TcpStream::connect(authority).map_err(|e| format!("connect {authority}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {authority}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or(b"");
    if !body.is_empty() || matches!(method, "POST" | "PUT") {
        req.push_str("Content-Type: application/json\r\n");
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .map_err(|e| e.to_string())?;
    // The server may answer (e.g. 413) and close before reading a large body.
    let _ = stream.write_all(body);
    let mut buf = Vec::new();
    stream
        .read_to_end(&mut buf)
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no response head: {text:?}"))?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line: {head}"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// `git` in `repo` with a fixed identity; panics on failure; returns trimmed stdout.
pub fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=orca-test",
            "-c",
            "user.email=test@orca.invalid",
            "-C",
        ])
        .arg(repo)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A service.toml for the test app.
pub fn testapp_service(name: &str, replicas: u32, domain: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nimage = \"{}\"\nreplicas = {replicas}\nport = 8080\ndomain = \"{domain}\"\nhealth = \"/healthz\"\n{extra}\n",
        testapp_image()
    )
}

/// A cargo command with a clean environment: nothing the outer cargo set for this test
/// (flags, target dir, build target, `CARGO_*`) leaks into a nested wasm build.
pub fn nested_cargo(dir: &Path, target_dir: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.env_clear().current_dir(dir);
    for (key, value) in std::env::vars_os() {
        let key_str = key.to_string_lossy();
        let keep = matches!(
            key_str.as_ref(),
            "PATH" | "HOME" | "CARGO_HOME" | "TMPDIR" | "USER" | "LANG"
        ) || key_str.starts_with("RUSTUP_");
        if keep {
            cmd.env(&key, value);
        }
    }
    cmd.env("CARGO_TARGET_DIR", target_dir);
    cmd
}

/// Builds a guest crate (or workspace) at `dir` for `target` in release mode into
/// `target/<target_dir_name>` and returns the release directory of that target.
pub fn build_guests(
    dir: &Path,
    target_dir_name: &str,
    target: &str,
    package: Option<&str>,
) -> PathBuf {
    let target_dir = workspace().join("target").join(target_dir_name);
    let mut cmd = nested_cargo(dir, &target_dir);
    if target == "wasm32-unknown-unknown" {
        cmd.env(
            "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER",
            "wasm-component-ld",
        );
    }
    cmd.args(["build", "--locked", "--release", "--target", target]);
    if let Some(p) = package {
        cmd.args(["-p", p]);
    }
    let out = cmd.output().expect("running cargo for a guest build");
    assert!(
        out.status.success(),
        "building guests in {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    target_dir.join(target).join("release")
}

/// One failed request of a [`Load`]: when (ms since the load started), the status (`None` for a
/// connection or protocol error) and the body or error text.
#[derive(Debug, Clone)]
pub struct LoadFailure {
    pub at_ms: u128,
    pub status: Option<u16>,
    pub detail: String,
}

/// What a [`Load`] saw.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub total: usize,
    pub ok: usize,
    pub failures: Vec<LoadFailure>,
    /// 2xx answers per `version` field of the test app's JSON (`?` when not JSON).
    pub versions: std::collections::BTreeMap<String, usize>,
    pub elapsed: Duration,
    /// Whether a cap (requests or duration) ended the load before it was stopped.
    pub capped: bool,
}

impl LoadReport {
    /// Share of 2xx answers from `version`, in percent.
    pub fn share(&self, version: &str) -> f64 {
        let n: usize = self.versions.values().sum();
        100.0 * *self.versions.get(version).unwrap_or(&0) as f64 / n.max(1) as f64
    }

    /// A short human summary with the first failures, for assertion messages.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} requests in {:?} ({} ok, {} failed{}), versions {:?}",
            self.total,
            self.elapsed,
            self.ok,
            self.failures.len(),
            if self.capped { ", CAPPED" } else { "" },
            self.versions
        );
        for f in self.failures.iter().take(20) {
            s.push_str(&format!(
                "\n  +{}ms {}: {}",
                f.at_ms,
                f.status
                    .map_or("connection error".to_string(), |c| c.to_string()),
                f.detail.trim()
            ));
        }
        if self.failures.len() > 20 {
            s.push_str(&format!("\n  … and {} more", self.failures.len() - 20));
        }
        s
    }
}

/// A bounded constant-rate load through the proxy: `threads` threads, each sending one
/// `GET path` with `Host: host` every `every` (no catch-up bursts when late), until stopped or
/// until `max_requests` in total or `max_duration` have passed (then `capped` is set).
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    report: std::sync::Arc<std::sync::Mutex<LoadReport>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    started: Instant,
}

impl Load {
    pub fn start(
        proxy: SocketAddr,
        host: &str,
        path: &str,
        threads: usize,
        every: Duration,
        max_requests: usize,
        max_duration: Duration,
    ) -> Load {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let started = Instant::now();
        let issued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let url = format!("http://{proxy}{path}");
        let threads = (0..threads)
            .map(|t| {
                let (stop, report, issued, url, host) = (
                    stop.clone(),
                    report.clone(),
                    issued.clone(),
                    url.clone(),
                    host.to_string(),
                );
                std::thread::spawn(move || {
                    // Spread the threads' phases over one period.
                    let mut next = started + every.mul_f64(t as f64 / threads.max(1) as f64);
                    loop {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        if started.elapsed() >= max_duration
                            || issued.fetch_add(1, Ordering::Relaxed) >= max_requests
                        {
                            report.lock().unwrap().capped = true;
                            return;
                        }
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        }
                        next = (next + every).max(Instant::now());
                        let at_ms = started.elapsed().as_millis();
                        let result = http_raw("GET", &url, None, &[("Host", &host)], None);
                        let mut r = report.lock().unwrap();
                        r.total += 1;
                        match result {
                            Ok((code, body)) if (200..300).contains(&code) => {
                                r.ok += 1;
                                let version = serde_json::from_str::<Value>(&body)
                                    .ok()
                                    .and_then(|v| v["version"].as_str().map(str::to_string))
                                    .unwrap_or_else(|| "?".to_string());
                                *r.versions.entry(version).or_default() += 1;
                            }
                            Ok((code, body)) => r.failures.push(LoadFailure {
                                at_ms,
                                status: Some(code),
                                detail: body.chars().take(300).collect(),
                            }),
                            Err(e) => r.failures.push(LoadFailure {
                                at_ms,
                                status: None,
                                detail: e,
                            }),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            report,
            threads,
            started,
        }
    }

    /// Milliseconds since the load started (to relate failures to events).
    pub fn now_ms(&self) -> u128 {
        self.started.elapsed().as_millis()
    }

    /// Stops the load and returns what it saw.
    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// Waits until a cap ends the load and returns what it saw.
    pub fn join(self) -> LoadReport {
        for t in self.threads {
            t.join().expect("load thread panicked");
        }
        let mut r = self.report.lock().unwrap().clone();
        r.elapsed = self.started.elapsed();
        r
    }
}
