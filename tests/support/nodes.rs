//! The multi-node test topology: real Docker Engines, one per network namespace, joined by a
//! switch namespace to the host (the test process, where the master listens).
//!
//! ```text
//!  host netns ── ot<k>h 10.213.<32k>.1/24 ══ veth ══ switch netns `ot<k>-sw` (bridge ot<k>br)
//!                                                      ├══ veth ══ node netns `ot<k>-n0`: eth0 .11, dockerd
//!                                                      └══ veth ══ node netns `ot<k>-n1`: eth0 .12, dockerd
//! ```
//!
//! It follows DESIGN.md's "Multi-node test topology" facts: the slot's whole range gets an
//! `unreachable` route in the host namespace **before** anything is created, node namespaces
//! have no default route, a partition is iptables DROP rules inside the node's namespace
//! (a link is never taken down), and each engine is `nsenter --net=… dockerd` with its own
//! data/exec root, fuse-overlayfs and its own subnets in daemon.json.
//!
//! **Slots.** Topologies of parallel tests and test binaries never clash: each holds a slot
//! `k` in `0..SLOTS` by an exclusive `flock` on `/run/orca-topo-<k>.lock` (released by the
//! kernel when the process dies; children do not inherit it, std opens files close-on-exec).
//! The slot fixes every name (`ot<k>…`), its directory `/tmp/orca-topo/ot<k>/` and its
//! addresses, all inside `10.213.<32k>.0/19`:
//!
//! | /24 (offset in the slot) | use |
//! | --- | --- |
//! | +0 | the switch: host `.1`, node `i` `.11+i` |
//! | +1+i | node `i`'s `bip` (docker0), `10.213.x.1/24` |
//! | +9+2i, +10+2i | node `i`'s `default-address-pools` (a /23 cut into /26 networks) |
//! | +28..+31 | [`Topology::overlay_pool`], a /22 for a swarm's `--default-addr-pool` |
//!
//! **Routes.** Each slot adds its own `unreachable 10.213.<32k>.0/19` route in the host
//! namespace first and removes it at teardown, so nothing is shared between slots and no
//! refcount is needed; the connected /24 of the switch is more specific and wins.
//!
//! **Teardown** ([`Drop`], also on panic) and **stale cleanup** (at start, for a slot whose
//! previous owner was killed before it could drop) are the same function, which works from
//! the slot's names alone: SIGTERM each dockerd by its pid file (it stops its containers,
//! `shutdown-timeout` 2 s), then SIGKILL, by pid, whatever is left of the slot: processes in
//! the nodes' cgroups (`cgroup-parent` `ot<k>-n<i>`) and processes whose command line names
//! the slot's directory (containerd, shims, fuse-overlayfs: all started by this harness),
//! unmount everything under the directory, delete the namespaces (their veths go with them),
//! the host-side link and the route, remove the directory and the cgroups.
//!
//! **Timings** measured on the 2-core CI machine kind (Docker 20.10, fuse-overlayfs, with
//! other builds running): `Topology::start(2)` 1.2–2.1 s (the engines start in parallel; one
//! alone answers `/_ping` after ≈ 1.5 s), `load_image` of the test app ≈ 0.2 s,
//! `restart_engine` ≈ 1.3 s, drop ≈ 0.5 s with no containers and 2.5–3.5 s with a running
//! container (dockerd stops its containers, `shutdown-timeout` 2 s).
//!
//! **Engine identity.** Every engine gets its own key file (`deprecated-key-path`), so
//! `docker info`'s ID differs per node; the hostname (`docker info`'s Name) is the host's for
//! all of them, since only the network namespace is separate.

use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many topologies can exist at once on one machine.
pub const SLOTS: u32 = 8;
/// How many nodes one topology can have.
pub const MAX_NODES: usize = 8;
/// Where the slots' directories live (fixed paths, so a later run can clean a crashed one).
const BASE_DIR: &str = "/tmp/orca-topo";
/// How long an engine may take to answer after it was started.
const ENGINE_READY: Duration = Duration::from_secs(60);
/// How long `start` waits for a free slot.
const SLOT_WAIT: Duration = Duration::from_secs(600);

/// The third octet of slot `k`'s first /24.
fn slot_base(slot: u32) -> u8 {
    (slot * 32) as u8
}

/// `10.213.<third>.<fourth>`.
fn addr(third: u8, fourth: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 213, third, fourth)
}

/// Everything one slot owns, by name.
struct SlotNames {
    slot: u32,
    prefix: String,
    dir: PathBuf,
}

impl SlotNames {
    fn new(slot: u32) -> SlotNames {
        let prefix = format!("ot{slot}");
        SlotNames {
            slot,
            dir: Path::new(BASE_DIR).join(&prefix),
            prefix,
        }
    }
    /// The slot's whole range (the unreachable route).
    fn range(&self) -> String {
        format!("{}/19", addr(slot_base(self.slot), 0))
    }
    fn switch_ns(&self) -> String {
        format!("{}-sw", self.prefix)
    }
    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }
    /// Host-side end of the host↔switch veth (its peer in the switch is `<this>s`).
    fn host_link(&self) -> String {
        format!("{}h", self.prefix)
    }
    fn node_ns(&self, i: usize) -> String {
        format!("{}-n{i}", self.prefix)
    }
    /// Switch-side end of node `i`'s veth (the node side is `eth0` in the node's namespace).
    fn node_port(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }
    fn host_ip(&self) -> Ipv4Addr {
        addr(slot_base(self.slot), 1)
    }
    fn node_ip(&self, i: usize) -> Ipv4Addr {
        addr(slot_base(self.slot), 11 + i as u8)
    }
}

/// Runs a command and panics with its output unless it succeeds.
fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command whose failure is expected when there is nothing to remove.
fn run_quiet(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A running multi-node topology; dropping it tears everything down.
pub struct Topology {
    /// The slot this topology holds.
    pub slot: u32,
    /// The prefix of all its names (`ot<slot>`).
    pub prefix: String,
    /// Its engines, `nodes[i]` at `10.213.<32·slot>.<11+i>`.
    pub nodes: Vec<NodeEngine>,
    names: SlotNames,
    /// The slot's lock, held for the topology's life (taken by [`Topology::stop`]).
    lock: Option<File>,
}

/// A slot still held after its topology was torn down ([`Topology::stop`]), so a test can
/// check that nothing is left before another topology may take the slot.
pub struct HeldSlot {
    pub slot: u32,
    _lock: File,
}

impl HeldSlot {
    /// What of the slot exists (see [`leftovers`]).
    pub fn leftovers(&self) -> Vec<String> {
        leftovers(self.slot)
    }
}

impl Topology {
    /// Makes a topology of `n` nodes (1..=8) and waits until every engine answers.
    pub fn start(n: usize) -> Topology {
        assert!(
            (1..=MAX_NODES).contains(&n),
            "a topology has 1..={MAX_NODES} nodes"
        );
        let (slot, lock) = take_slot();
        let names = SlotNames::new(slot);
        // Whatever a killed earlier owner of this slot left.
        teardown(&names);
        let mut topo = Topology {
            slot,
            prefix: names.prefix.clone(),
            nodes: Vec::new(),
            names,
            lock: Some(lock),
        };
        // From here on a panic drops `topo`, which tears down what was made so far.
        topo.make_switch();
        for i in 0..n {
            topo.make_node(i);
        }
        for node in &topo.nodes {
            node.spawn_engine();
        }
        for node in &topo.nodes {
            node.wait_engine();
        }
        topo
    }

    /// The host side's address on the switch: where the master listens for agents.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.names.host_ip()
    }

    /// A /22 inside the slot's range for a swarm's `--default-addr-pool` (with
    /// `--default-addr-pool-mask-length 24`).
    pub fn overlay_pool(&self) -> String {
        format!("{}/22", addr(slot_base(self.slot) + 28, 0))
    }

    /// The slot's directory (`/tmp/orca-topo/ot<k>`), holding one directory per node.
    pub fn dir(&self) -> &Path {
        &self.names.dir
    }

    /// Tears the topology down like dropping it does, but keeps holding the slot.
    pub fn stop(mut self) -> HeldSlot {
        let lock = self.lock.take().expect("a live topology holds its slot");
        let slot = self.slot;
        drop(self);
        HeldSlot { slot, _lock: lock }
    }

    fn make_switch(&self) {
        let n = &self.names;
        // Safety first: the slot's whole range is unreachable before any link exists.
        run("ip", &["route", "add", "unreachable", &n.range()]);
        let sw = n.switch_ns();
        run("ip", &["netns", "add", &sw]);
        run("ip", &["-n", &sw, "link", "set", "lo", "up"]);
        run(
            "ip",
            &["-n", &sw, "link", "add", &n.bridge(), "type", "bridge"],
        );
        run("ip", &["-n", &sw, "link", "set", &n.bridge(), "up"]);
        let host = n.host_link();
        let host_peer = format!("{host}s");
        run(
            "ip",
            &[
                "link", "add", &host, "type", "veth", "peer", "name", &host_peer, "netns", &sw,
            ],
        );
        run(
            "ip",
            &[
                "-n",
                &sw,
                "link",
                "set",
                &host_peer,
                "master",
                &n.bridge(),
                "up",
            ],
        );
        run(
            "ip",
            &["addr", "add", &format!("{}/24", n.host_ip()), "dev", &host],
        );
        run("ip", &["link", "set", &host, "up"]);
    }

    fn make_node(&mut self, i: usize) {
        let n = &self.names;
        let ns = n.node_ns(i);
        let sw = n.switch_ns();
        let port = n.node_port(i);
        run("ip", &["netns", "add", &ns]);
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        run(
            "ip",
            &[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ],
        );
        run(
            "ip",
            &["-n", &sw, "link", "set", &port, "master", &n.bridge(), "up"],
        );
        let ip = n.node_ip(i);
        run(
            "ip",
            &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        );
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        // No default route: only the switch's /24 and (later) the engine's own bridges.
        let dir = n.dir.join(format!("n{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let base = slot_base(n.slot);
        let daemon = serde_json::json!({
            "bip": format!("{}/24", addr(base + 1 + i as u8, 1)),
            "default-address-pools": [
                {"base": format!("{}/23", addr(base + 9 + 2 * i as u8, 0)), "size": 26}
            ],
            // Under the root of every hierarchy (a relative parent would sit under
            // dockerd's own cgroup, which differs per hierarchy), so teardown finds them.
            "cgroup-parent": format!("/{ns}"),
            "shutdown-timeout": 2,
            // The engine's ID (`docker info`) comes from this key; the default path
            // (/etc/docker/key.json) would give every node the host's ID.
            "deprecated-key-path": dir.join("key.json"),
            "mtu": 1400,
        });
        std::fs::write(dir.join("daemon.json"), daemon.to_string()).unwrap();
        self.nodes.push(NodeEngine {
            name: ns.clone(),
            ip,
            host_ip: n.host_ip(),
            dir,
            netns: PathBuf::from("/run/netns").join(&ns),
            engine: Mutex::new(None),
        });
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.stop_engine();
        }
        teardown(&self.names);
    }
}

/// Takes the first free slot, waiting (bounded) while all are taken.
fn take_slot() -> (u32, File) {
    let deadline = Instant::now() + SLOT_WAIT;
    loop {
        for slot in 0..SLOTS {
            let file = slot_lock(slot);
            if file.try_lock().is_ok() {
                return (slot, file);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no free topology slot in {SLOT_WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One node: a network namespace with its own Docker Engine.
pub struct NodeEngine {
    /// The node's network namespace name (`ot<k>-n<i>`); also its containers' cgroup parent.
    pub name: String,
    /// Its address on the switch.
    pub ip: Ipv4Addr,
    /// The topology's host address (what `partition` cuts it from, with the other nodes).
    host_ip: Ipv4Addr,
    /// Its directory: `docker.sock`, `pid`, `daemon.json`, `dockerd.log`, `data/`, `exec/`.
    pub dir: PathBuf,
    netns: PathBuf,
    engine: Mutex<Option<Child>>,
}

impl NodeEngine {
    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// `unix:///tmp/orca-topo/ot<k>/n<i>/docker.sock`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The engine's log so far.
    pub fn engine_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// The docker CLI against this node's engine.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .env("DOCKER_HOST", self.docker_host())
            .args(args)
            .output()
            .expect("running docker")
    }

    /// Like [`NodeEngine::docker`], asserting success; returns stdout, trimmed.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} on {} failed:\n{}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A command running `program` inside the node's network namespace (`nsenter --net`,
    /// which execs it: the child's pid is the program's), with `DOCKER_HOST` set to this
    /// node's engine. Add arguments and spawn it as usual.
    pub fn command_in_ns(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg(program)
            .env("DOCKER_HOST", self.docker_host());
        cmd
    }

    /// Copies an image from the host's engine into this node's (`docker save | docker load`).
    /// For the harness's setup images only: a test of orca's own image shipping must not.
    pub fn load_image(&self, tag: &str) {
        let mut save = Command::new("docker")
            .args(["save", tag])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running docker save");
        let load = Command::new("docker")
            .env("DOCKER_HOST", self.docker_host())
            .args(["load", "-q"])
            .stdin(save.stdout.take().unwrap())
            .output()
            .expect("running docker load");
        let saved = save.wait_with_output().unwrap();
        assert!(
            saved.status.success() && load.status.success(),
            "loading {tag} into {} failed:\nsave: {}\nload: {}{}",
            self.name,
            String::from_utf8_lossy(&saved.stderr),
            String::from_utf8_lossy(&load.stdout),
            String::from_utf8_lossy(&load.stderr)
        );
    }

    /// Cuts the node off from the host and the other nodes, both directions: DROP in the
    /// node namespace's `raw PREROUTING` (everything arriving on eth0, also what would be
    /// DNAT'd to a container) and `mangle POSTROUTING` (everything leaving by eth0, the
    /// node's own and its containers'). The link stays up, so routes stay as they are.
    /// Connections in flight stall (no RST); new ones time out.
    pub fn partition(&self) {
        self.partition_rules(true);
    }

    /// Cuts one direction only: everything the node sends is dropped (the agent's requests
    /// and answers never reach the master); what is sent to it still arrives.
    pub fn partition_outbound(&self) {
        self.rule(
            &["-t", "mangle", "POSTROUTING", "-o", "eth0", "-j", "DROP"],
            true,
        );
    }

    /// Removes what [`NodeEngine::partition`] or [`NodeEngine::partition_outbound`] added.
    pub fn heal(&self) {
        self.partition_rules(false);
    }

    /// Whether the node is partitioned (its DROP rules are present).
    pub fn is_partitioned(&self) -> bool {
        self.iptables(&["-t", "raw", "-C", "PREROUTING", "-i", "eth0", "-j", "DROP"])
    }

    fn partition_rules(&self, add: bool) {
        let rules: [&[&str]; 2] = [
            &["-t", "raw", "PREROUTING", "-i", "eth0", "-j", "DROP"],
            &["-t", "mangle", "POSTROUTING", "-o", "eth0", "-j", "DROP"],
        ];
        for rule in rules {
            self.rule(rule, add);
        }
    }

    /// Adds (`add`) or removes one iptables rule `[-t, table, chain, spec...]`, idempotently.
    fn rule(&self, rule: &[&str], add: bool) {
        let (table, rest) = (&rule[..2], &rule[2..]);
        let present = self.iptables(&[table, &["-C"], rest].concat());
        if add && !present {
            assert!(
                self.iptables(&[table, &["-I"], rest].concat()),
                "adding {rule:?} in {}",
                self.name
            );
        }
        if !add && present {
            assert!(
                self.iptables(&[table, &["-D"], rest].concat()),
                "removing {rule:?} in {}",
                self.name
            );
        }
    }

    /// Runs iptables (waiting for the xtables lock) inside the node's namespace.
    fn iptables(&self, args: &[&str]) -> bool {
        self.command_in_ns("iptables")
            .arg("-w")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The host address this node was made for.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// The engine's process slot; a panic elsewhere never makes it unusable (teardown must
    /// still find the child).
    fn engine(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// SIGKILLs the engine, like a crash: dockerd and the containerd it started (a
    /// containerd outliving its dockerd stops answering, and the next dockerd times out
    /// waiting for it). The containers' shims, and so the containers, keep running.
    pub fn kill_engine(&self) {
        let child = self.engine().take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
        let containerd = std::fs::read_to_string(self.dir.join("exec/containerd/containerd.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        if let Some(pid) = containerd {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            // Only if that pid is still this node's containerd (pids are reused).
            if String::from_utf8_lossy(&cmdline).contains(&self.dir.display().to_string()) {
                kill_all(&[pid]);
            }
        }
        // Where nothing reaps orphans, the killed containerd stays a zombie, which the next
        // dockerd takes for a live containerd by its pid file; so it starts a new one.
        let _ = std::fs::remove_file(self.dir.join("exec/containerd/containerd.pid"));
    }

    /// Starts the engine again (after [`NodeEngine::kill_engine`]) and waits until it answers.
    pub fn restart_engine(&self) {
        self.kill_engine();
        self.spawn_engine();
        self.wait_engine();
    }

    fn spawn_engine(&self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .unwrap();
        let d = |p: &str| self.dir.join(p).display().to_string();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg("dockerd")
            .args(["-H", &self.docker_host()])
            .args(["-p", &d("pid")])
            .args(["--data-root", &d("data")])
            .args(["--exec-root", &d("exec")])
            .args(["--storage-driver", "fuse-overlayfs"])
            .args(["--config-file", &d("daemon.json")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting dockerd through nsenter");
        *self.engine() = Some(child);
    }

    /// Waits until the engine answers `GET /_ping`.
    fn wait_engine(&self) {
        let deadline = Instant::now() + ENGINE_READY;
        loop {
            if ping(&self.socket()) {
                return;
            }
            let exited = self.engine().as_mut().and_then(|c| c.try_wait().ok()?);
            if let Some(status) = exited {
                panic!(
                    "dockerd of {} exited with {status}:\n{}",
                    self.name,
                    self.engine_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "dockerd of {} not answering in {ENGINE_READY:?}:\n{}",
                self.name,
                self.engine_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM to dockerd (it stops its containers and containerd), bounded wait, SIGKILL.
    fn stop_engine(&self) {
        let child = self.engine().take();
        let Some(mut child) = child else {
            return;
        };
        terminate(child.id(), Duration::from_secs(20));
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Whether a Docker Engine answers `GET /_ping` on `socket`.
fn ping(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.") && answer.ends_with("OK")
}

/// Whether process `pid` exists (and is not a zombie).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn signal(pid: u32, sig: &str) {
    run_quiet("kill", &[sig, &pid.to_string()]);
}

/// SIGTERM, wait up to `grace` for the process to end, then SIGKILL and wait (bounded).
fn terminate(pid: u32, grace: Duration) {
    if !alive(pid) {
        return;
    }
    signal(pid, "-TERM");
    let deadline = Instant::now() + grace;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    kill_all(&[pid]);
}

/// SIGKILL each pid and wait (bounded) until they are gone.
fn kill_all(pids: &[u32]) {
    for &pid in pids {
        if alive(pid) {
            signal(pid, "-KILL");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes of slot `names` still running: those in its nodes' cgroups and those whose
/// command line names the slot's directory (dockerd, containerd, shims, fuse-overlayfs).
fn slot_processes(names: &SlotNames) -> Vec<u32> {
    let mut pids = Vec::new();
    let dir = format!("{}/", names.dir.display());
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&dir) && pid != std::process::id() {
            pids.push(pid);
        }
    }
    for cgroup in slot_cgroups(names) {
        let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
        pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    pids.sort_unstable();
    pids.dedup();
    pids.retain(|&p| alive(p));
    pids
}

/// The slot's cgroup directories in every v1 hierarchy (and the unified one), deepest first.
fn slot_cgroups(names: &SlotNames) -> Vec<PathBuf> {
    let node_prefix = format!("{}-n", names.prefix);
    let mut found = Vec::new();
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        for top in std::fs::read_dir(hierarchy.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let is_ours = top
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&node_prefix));
            if is_ours && top.path().is_dir() {
                collect_dirs(&top.path(), &mut found);
            }
        }
    }
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&entry.path(), out);
        }
    }
}

/// Mount points under the slot's directory, deepest first.
fn slot_mounts(names: &SlotNames) -> Vec<String> {
    let dir = names.dir.display().to_string();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes spaces as \040; the harness's paths have none.
        .filter(|m| *m == dir || m.starts_with(&format!("{dir}/")))
        .map(str::to_string)
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.matches('/').count()));
    mounts.dedup();
    mounts
}

fn unmount_all(names: &SlotNames) {
    for m in slot_mounts(names) {
        if !run_quiet("umount", &[&m]) {
            run_quiet("umount", &["-l", &m]);
        }
    }
}

/// The slot's network namespaces (`ot<k>-*` in /run/netns).
fn slot_namespaces(names: &SlotNames) -> Vec<String> {
    let prefix = format!("{}-", names.prefix);
    let mut found: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    found.sort();
    found
}

/// Removes everything slot `names` may have: see the module documentation. Works from
/// names alone, so it also cleans a run that was killed before it could drop.
fn teardown(names: &SlotNames) {
    // Engines first, gracefully: each stops its containers and its containerd.
    for entry in std::fs::read_dir(&names.dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let pid = std::fs::read_to_string(entry.path().join("pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        if let Some(pid) = pid {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            // Only if that pid is still this slot's dockerd (pids are reused).
            if String::from_utf8_lossy(&cmdline).contains(&names.dir.display().to_string()) {
                terminate(pid, Duration::from_secs(20));
            }
        }
    }
    // Then whatever is left, by pid; mounts before and after (a killed fuse-overlayfs leaves
    // its mount behind).
    unmount_all(names);
    for _ in 0..3 {
        let left = slot_processes(names);
        if left.is_empty() {
            break;
        }
        kill_all(&left);
    }
    unmount_all(names);
    for ns in slot_namespaces(names) {
        run_quiet("ip", &["netns", "delete", &ns]);
    }
    // Deleting the switch namespace deletes the host link's peer and with it the host link;
    // this covers a run killed between creating the pair and moving its peer.
    run_quiet("ip", &["link", "delete", &names.host_link()]);
    while run_quiet("ip", &["route", "delete", "unreachable", &names.range()]) {}
    let _ = std::fs::remove_dir_all(&names.dir);
    for cgroup in slot_cgroups(names) {
        let _ = std::fs::remove_dir(cgroup);
    }
}

/// Tears down what a killed run left in `slot` if the slot is free (no live topology holds
/// it), and keeps holding it; `None` if it is taken. [`Topology::start`] does this for the
/// slot it takes; this is for a test of the harness, or by hand after a crash.
pub fn clean_slot(slot: u32) -> Option<HeldSlot> {
    let file = slot_lock(slot);
    file.try_lock().ok()?;
    teardown(&SlotNames::new(slot));
    Some(HeldSlot { slot, _lock: file })
}

fn slot_lock(slot: u32) -> File {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(format!("/run/orca-topo-{slot}.lock"))
        .expect("opening a topology slot lock (the multi-node tests need root)")
}

/// What of slot `slot` exists right now, one line per leftover (empty: nothing). For tests
/// of the harness itself.
pub fn leftovers(slot: u32) -> Vec<String> {
    let names = SlotNames::new(slot);
    let mut found = Vec::new();
    for ns in slot_namespaces(&names) {
        found.push(format!("netns {ns}"));
    }
    for pid in slot_processes(&names) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        found.push(format!(
            "process {pid}: {}",
            String::from_utf8_lossy(&cmdline).replace('\0', " ")
        ));
    }
    for m in slot_mounts(&names) {
        found.push(format!("mount {m}"));
    }
    let links = Command::new("ip").args(["-o", "link", "show"]).output();
    let links = links.map(|o| o.stdout).unwrap_or_default();
    for line in String::from_utf8_lossy(&links).lines() {
        // `3: ot0h@if2: <…`
        let name = line.split(':').nth(1).unwrap_or("").trim();
        let name = name.split('@').next().unwrap_or("");
        if name.starts_with(&names.prefix)
            && name[names.prefix.len()..]
                .chars()
                .next()
                .is_some_and(|c| !c.is_ascii_digit())
        {
            found.push(format!("link {name}"));
        }
    }
    let routes = Command::new("ip").args(["route", "show"]).output();
    let routes = routes.map(|o| o.stdout).unwrap_or_default();
    let range = names.range();
    let switch = format!("{}/24", addr(slot_base(slot), 0));
    for line in String::from_utf8_lossy(&routes).lines() {
        if line.contains(&range) || line.contains(&switch) {
            found.push(format!("route {line}"));
        }
    }
    for cgroup in slot_cgroups(&names) {
        found.push(format!("cgroup {}", cgroup.display()));
    }
    if names.dir.exists() {
        found.push(format!("directory {}", names.dir.display()));
    }
    found
}

/// The host engine's swarm, held by one test at a time. A master makes its engine (the host
/// engine, in tests) the manager of its cluster's swarm when the first real node joins, so
/// every test whose agents run real engines holds this: it waits for the others (an exclusive
/// `flock` on `/run/orca-host-swarm.lock`), makes the host engine leave a swarm an earlier
/// orca test left behind, and leaves the swarm again when dropped (after the test's server).
/// A swarm orca did not make (no `orca.cluster.id` label) is never touched: the test fails.
pub struct HostSwarm {
    _lock: File,
}

impl HostSwarm {
    pub fn take() -> HostSwarm {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/orca-host-swarm.lock")
            .expect("opening the host swarm lock (the multi-node tests need root)");
        let deadline = Instant::now() + Duration::from_secs(900);
        while file.try_lock().is_err() {
            assert!(
                Instant::now() < deadline,
                "the host engine's swarm was held by another test for 15 minutes"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        leave_host_swarm(true);
        HostSwarm { _lock: file }
    }
}

impl Drop for HostSwarm {
    fn drop(&mut self) {
        leave_host_swarm(false);
    }
}

/// Makes the host engine leave a swarm that an orca cluster made. `strict`: a swarm orca did
/// not make is a test failure (it is someone else's).
fn leave_host_swarm(strict: bool) {
    let out = Command::new("docker")
        .args(["info", "--format", "{{json .Swarm}}"])
        .output()
        .expect("running docker info");
    let swarm: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    if swarm["LocalNodeState"]
        .as_str()
        .is_none_or(|s| s == "inactive" || s.is_empty())
    {
        return;
    }
    let orca_made = swarm["Cluster"]["Spec"]["Labels"]["orca.cluster.id"].is_string();
    if !orca_made {
        assert!(
            !strict,
            "the host Docker Engine is in a swarm orca did not make ({swarm}); \
             the multi-node tests need it out of any swarm"
        );
        return;
    }
    let out = Command::new("docker")
        .args(["swarm", "leave", "--force"])
        .output()
        .expect("running docker swarm leave");
    if !out.status.success() && strict {
        panic!(
            "docker swarm leave failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
