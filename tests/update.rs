//! End-to-end: `orca update` against a release index the test serves on loopback, signed
//! with the test's own minisign key pair (trusted through the debug-only
//! `ORCA_UPDATE_TEST_PUBLIC_KEY`), and the socket hand-over of `orca server` under load.
//!
//! The "newer binary" is a copy of the test build whose version stamp slot says the version
//! the index claims (the way a release pipeline stamps a build): a real, different file,
//! whose `--version` really prints that version, so the update's "runs and reports the
//! index's version" check is exercised for real.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

/// The marker before the version in the binary's stamp slot (`host/src/version.rs`).
const STAMP_MARKER: &[u8] = b"\0orca-version:\x01\x02";
const STAMP_LEN: usize = 48;
/// This platform's entry in the index (set by host/build.rs for the package's targets).
const TARGET: &str = env!("ORCA_TARGET");
const CURRENT: &str = env!("CARGO_PKG_VERSION");

/// A copy of `binary` whose stamp slot says `version`.
fn stamped(binary: &[u8], version: &str) -> Vec<u8> {
    let at: Vec<usize> = binary
        .windows(STAMP_MARKER.len())
        .enumerate()
        .filter(|(_, w)| *w == STAMP_MARKER)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "exactly one version stamp slot in the binary");
    let start = at[0] + STAMP_MARKER.len();
    let mut out = binary.to_vec();
    let slot = &mut out[start..start + STAMP_LEN];
    slot.fill(0);
    slot[..version.len()].copy_from_slice(version.as_bytes());
    out
}

/// How the release server answers one path.
#[derive(Clone)]
enum Served {
    Full(Vec<u8>),
    /// Announces the full length, sends the first `n` bytes, then closes.
    Truncated(Vec<u8>, usize),
}

/// A release location on loopback: serves whatever `files` holds, one request per
/// connection.
struct Releases {
    addr: SocketAddr,
    files: Arc<Mutex<HashMap<String, Served>>>,
}

impl Releases {
    fn start() -> Releases {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let files: Arc<Mutex<HashMap<String, Served>>> = Arc::default();
        let served = files.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let files = served.clone();
                std::thread::spawn(move || answer(stream, &files));
            }
        });
        Releases { addr, files }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    fn put(&self, path: &str, served: Served) {
        self.files.lock().unwrap().insert(path.to_string(), served);
    }
}

fn answer(mut stream: TcpStream, files: &Mutex<HashMap<String, Served>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_string();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
            break;
        }
    }
    let served = files.lock().unwrap().get(&path).cloned();
    let _ = match served {
        None => stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        Some(Served::Full(body)) => stream
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .and_then(|()| stream.write_all(&body)),
        Some(Served::Truncated(body, n)) => stream
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .and_then(|()| stream.write_all(&body[..n])),
    };
    let _ = stream.flush();
}

/// The test's release signing key.
struct Signer {
    pair: minisign::KeyPair,
}

impl Signer {
    fn new() -> Signer {
        Signer {
            pair: minisign::KeyPair::generate_unencrypted_keypair().unwrap(),
        }
    }

    fn public(&self) -> String {
        self.pair.pk.to_base64()
    }

    fn sign(&self, data: &[u8]) -> Vec<u8> {
        minisign::sign(
            Some(&self.pair.pk),
            &self.pair.sk,
            std::io::Cursor::new(data),
            Some("orca release index"),
            None,
        )
        .unwrap()
        .to_string()
        .into_bytes()
    }
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// The index JSON for `version` with this platform's binary at `file`.
fn index_json(version: &str, file: &str, binary: &[u8]) -> Vec<u8> {
    serde_json::to_vec_pretty(&serde_json::json!({
        "version": version,
        "targets": {
            TARGET: { "url": file, "sha256": sha256_hex(binary), "size": binary.len() },
            "aarch64-unknown-linux-gnu": { "url": "elsewhere", "sha256": "00".repeat(32), "size": 1 },
        }
    }))
    .unwrap()
}

/// Publishes a signed index for `version`: `orca-index.json`, its `.minisig`, the binary.
fn publish(releases: &Releases, signer: &Signer, version: &str, binary: &[u8]) {
    let file = format!("orca-{version}-{TARGET}");
    let index = index_json(version, &file, binary);
    releases.put("orca-index.json.minisig", Served::Full(signer.sign(&index)));
    releases.put("orca-index.json", Served::Full(index));
    releases.put(&file, Served::Full(binary.to_vec()));
}

/// A directory holding a copy of the test build as `bin/orca`.
fn installed_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("bin")).unwrap();
    let exe = dir.path().join("bin/orca");
    std::fs::copy(env!("CARGO_BIN_EXE_orca"), &exe).unwrap();
    (dir, exe)
}

/// `exe update ARGS` trusting `key`, with `home`/`config` as state and config dirs.
fn update(exe: &Path, key: &str, home: &Path, config: &Path, args: &[&str]) -> Output {
    Command::new(exe)
        .arg("update")
        .args(args)
        .env("ORCA_UPDATE_TEST_PUBLIC_KEY", key)
        .env("ORCA_HOME", home)
        .env("ORCA_CONFIG_DIR", config)
        .env_remove("ORCA_API")
        .output()
        .expect("running orca update")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn version(exe: &Path) -> String {
    let out = Command::new(exe).arg("--version").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Files in `dir` (to see that a refused update left nothing behind).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn signed_update_replaces_the_binary_refuses_tampering_and_rolls_back() {
    let (dir, exe) = installed_copy();
    let home = dir.path().join("home");
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let bin_dir = dir.path().join("bin");
    let old = std::fs::read(&exe).unwrap();
    let new = stamped(&old, "9.9.0");
    let releases = Releases::start();
    let signer = Signer::new();
    let key = signer.public();
    let url = releases.url("orca-index.json");
    assert_eq!(version(&exe), format!("orca {CURRENT}"));

    // Each refusal: a clear error, the binary byte-identical, nothing left beside it.
    let refused = |args: &[&str], want: &str| {
        let out = update(&exe, &key, &home, &config, args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "refused: {}", text(&out));
        assert!(err.contains(want), "error names {want:?}: {}", text(&out));
        assert!(
            err.contains("nothing was replaced") || !err.contains("checksum"),
            "{}",
            text(&out)
        );
        assert!(
            std::fs::read(&exe).unwrap() == old,
            "binary untouched after: {err}"
        );
        assert_eq!(
            listing(&bin_dir),
            vec!["orca"],
            "nothing left beside it after: {err}"
        );
        err
    };

    // A tampered binary: the signed index names the real one's sha256 and size.
    publish(&releases, &signer, "9.9.0", &new);
    let mut tampered = new.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0xff;
    releases.put(
        &format!("orca-9.9.0-{TARGET}"),
        Served::Full(tampered.clone()),
    );
    let err = refused(&["--url", &url, "--no-restart"], "checksum mismatch");
    assert!(err.contains(&sha256_hex(&new)), "{err}");

    // A truncated download: the connection ends after half of the announced bytes.
    releases.put(
        &format!("orca-9.9.0-{TARGET}"),
        Served::Truncated(new.clone(), new.len() / 2),
    );
    refused(&["--url", &url, "--no-restart"], "truncated download");

    // A bad signature: an index signed by another key, and the right key's index edited.
    let other = Signer::new();
    publish(&releases, &other, "9.9.0", &new);
    let err = refused(
        &["--url", &url, "--no-restart"],
        "does not verify against the trusted key",
    );
    assert!(err.contains(&key), "the error names the trusted key: {err}");
    publish(&releases, &signer, "9.9.0", &new);
    let index = index_json("9.9.0", &format!("orca-9.9.0-{TARGET}"), &new);
    let edited = String::from_utf8(index)
        .unwrap()
        .replace("9.9.0", "9.9.1")
        .into_bytes();
    releases.put("orca-index.json", Served::Full(edited));
    refused(
        &["--url", &url, "--no-restart"],
        "does not verify against the trusted key",
    );
    // A missing signature is a refusal too.
    publish(&releases, &signer, "9.9.0", &new);
    releases
        .files
        .lock()
        .unwrap()
        .remove("orca-index.json.minisig");
    refused(&["--url", &url, "--no-restart"], "HTTP 404");

    // A downgrade, correctly signed, is refused without --allow-downgrade.
    let older = stamped(&old, "0.0.1");
    publish(&releases, &signer, "0.0.1", &older);
    refused(&["--url", &url, "--no-restart"], "older than this binary's");

    // An index whose binary does not print the version the index claims.
    publish(&releases, &signer, "9.9.0", &stamped(&old, "9.8.0"));
    refused(
        &["--url", &url, "--no-restart"],
        "prints \"orca 9.8.0\" for --version",
    );

    // --check only reports; `[update] url` in cluster.toml is the default index.
    publish(&releases, &signer, "9.9.0", &new);
    std::fs::write(
        config.join("cluster.toml"),
        format!("[cluster]\nname = \"upd\"\n\n[update]\nurl = \"{url}\"\n"),
    )
    .unwrap();
    let out = update(&exe, &key, &home, &config, &["--check"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("update available: orca {CURRENT} -> orca 9.9.0")),
        "{}",
        text(&out)
    );
    assert!(std::fs::read(&exe).unwrap() == old);
    assert_eq!(listing(&bin_dir), vec!["orca"]);

    // A bad [update] url is named with its file and field.
    std::fs::write(
        config.join("cluster.toml"),
        "[update]\nurl = \"ftp://example.com/i.json\"\n",
    )
    .unwrap();
    let out = update(&exe, &key, &home, &config, &["--check"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("update.url"),
        "{}",
        text(&out)
    );
    std::fs::remove_file(config.join("cluster.toml")).unwrap();

    // The good one: replaced, runs as 9.9.0, the previous kept beside it.
    let t = Instant::now();
    let out = update(&exe, &key, &home, &config, &["--url", &url]);
    eprintln!("update took {:?}", t.elapsed());
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("orca {CURRENT} -> orca 9.9.0")),
        "{}",
        text(&out)
    );
    assert!(stdout.contains("no server answers"), "{}", text(&out));
    assert_eq!(version(&exe), "orca 9.9.0");
    assert!(std::fs::read(&exe).unwrap() == new);
    assert!(std::fs::read(bin_dir.join("orca.previous")).unwrap() == old);
    assert_eq!(listing(&bin_dir), vec!["orca", "orca.previous"]);

    // Up to date now; the same index again changes nothing.
    let out = update(&exe, &key, &home, &config, &["--url", &url]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("orca 9.9.0 is up to date"),
        "{}",
        text(&out)
    );

    // --rollback restores the previous binary (and keeps the replaced one).
    let out = update(&exe, &key, &home, &config, &["--rollback", "--no-restart"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(version(&exe), format!("orca {CURRENT}"));
    assert!(std::fs::read(&exe).unwrap() == old);
    assert!(std::fs::read(bin_dir.join("orca.previous")).unwrap() == new);
    assert_eq!(listing(&bin_dir), vec!["orca", "orca.previous"]);
}

/// A keep-alive client load: each thread holds one HTTP/1.1 connection and sends a request
/// every `every` on it, reconnecting only when an answer said `Connection: close`. Any
/// request that gets no complete 2xx answer is a failure (no retries).
struct KeepAlive {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(usize, usize, Vec<String>)>>,
}

impl KeepAlive {
    fn start(proxy: SocketAddr, host: &str, threads: usize, every: Duration) -> KeepAlive {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                let host = host.to_string();
                std::thread::spawn(move || {
                    let (mut ok, mut connections, mut failures) = (0, 0, Vec::new());
                    let mut conn: Option<BufReader<TcpStream>> = None;
                    let started = Instant::now();
                    while !stop.load(Ordering::Relaxed)
                        && started.elapsed() < Duration::from_secs(300)
                    {
                        if conn.is_none() {
                            match TcpStream::connect(proxy) {
                                Ok(s) => {
                                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                                    connections += 1;
                                    conn = Some(BufReader::new(s));
                                }
                                Err(e) => {
                                    failures.push(format!(
                                        "+{}ms connect: {e}",
                                        started.elapsed().as_millis()
                                    ));
                                    std::thread::sleep(every);
                                    continue;
                                }
                            }
                        }
                        let c = conn.as_mut().unwrap();
                        match keep_alive_request(c, &host) {
                            Ok((200, close)) => {
                                ok += 1;
                                if close {
                                    conn = None;
                                }
                            }
                            Ok((code, _)) => {
                                failures.push(format!(
                                    "+{}ms status {code}",
                                    started.elapsed().as_millis()
                                ));
                                conn = None;
                            }
                            Err(e) => {
                                failures.push(format!(
                                    "+{}ms on a kept-alive connection: {e}",
                                    started.elapsed().as_millis()
                                ));
                                conn = None;
                            }
                        }
                        std::thread::sleep(every);
                    }
                    (ok, connections, failures)
                })
            })
            .collect();
        KeepAlive { stop, threads }
    }

    /// (ok, connections opened, failures).
    fn stop(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = (0, 0, Vec::new());
        for t in self.threads {
            let (ok, conns, failures) = t.join().unwrap();
            total.0 += ok;
            total.1 += conns;
            total.2.extend(failures);
        }
        total
    }
}

/// One GET on a kept-alive connection: (status, whether the answer closes the connection).
fn keep_alive_request(c: &mut BufReader<TcpStream>, host: &str) -> Result<(u16, bool), String> {
    c.get_mut()
        .write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut status = String::new();
    if c.read_line(&mut status).map_err(|e| format!("read: {e}"))? == 0 {
        return Err("closed before an answer".into());
    }
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status:?}"))?;
    let (mut length, mut close, mut chunked) = (0usize, false, false);
    loop {
        let mut line = String::new();
        if c.read_line(&mut line).map_err(|e| format!("read: {e}"))? == 0 {
            return Err("closed inside the head".into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let (name, value) = (name.to_ascii_lowercase(), value.trim().to_ascii_lowercase());
        match name.as_str() {
            "content-length" => length = value.parse().map_err(|_| "bad length")?,
            "connection" => close = value.contains("close"),
            "transfer-encoding" => chunked = value.contains("chunked"),
            _ => {}
        }
    }
    if chunked {
        loop {
            let mut size = String::new();
            c.read_line(&mut size).map_err(|e| format!("read: {e}"))?;
            let n = usize::from_str_radix(size.trim(), 16).map_err(|_| "bad chunk")?;
            let mut chunk = vec![0u8; n + 2];
            c.read_exact(&mut chunk).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
        }
    } else {
        let mut body = vec![0u8; length];
        c.read_exact(&mut body)
            .map_err(|e| format!("read body: {e}"))?;
    }
    Ok((code, close))
}

/// The server log without access lines (the load writes thousands), last 120 lines.
fn notes(s: &Server) -> String {
    let log = s.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("orca::access") && !l.contains("request refused"))
        .collect();
    lines[lines.len().saturating_sub(200)..].join("\n")
}

#[test]
fn restart_update_and_rollback_under_load_refuse_no_request_and_keep_the_containers() {
    let (dir, exe) = installed_copy();
    let mut s = Server::start_from(&exe, "");
    let project = unique("ho");
    let host = format!("{project}.test");
    s.write_service(&project, &testapp_service("web", 2, &host, ""));
    s.cli(&["deploy"]);
    let before: Vec<_> = containers(&s.cluster);
    assert_eq!(before.len(), 2, "{before:?}");
    let pid = s.pid().unwrap();

    let fresh = Load::start(
        s.http,
        &host,
        "/",
        4,
        Duration::from_millis(10),
        100_000,
        Duration::from_secs(240),
    );
    let kept = KeepAlive::start(s.http, &host, 4, Duration::from_millis(10));
    std::thread::sleep(Duration::from_secs(1));

    // A plain restart: a second server of this state dir takes the sockets over.
    let t0 = fresh.now_ms();
    let exited = s.restart_with_handover();
    let t1 = fresh.now_ms();
    eprintln!("hand-over restart: old server exited {exited:?} after the new one started (+{t0}..+{t1} ms)");
    assert_ne!(s.pid().unwrap(), pid, "a new process serves");
    assert!(
        s.log().contains("took over the listening sockets"),
        "{}",
        tail(&s.log(), 40)
    );
    std::thread::sleep(Duration::from_secs(2));

    // An update: the running server re-executes the new binary, keeping its sockets.
    let releases = Releases::start();
    let signer = Signer::new();
    let new = stamped(&std::fs::read(&exe).unwrap(), "9.9.0");
    publish(&releases, &signer, "9.9.0", &new);
    let pid = s.pid().unwrap();
    let t2 = fresh.now_ms();
    let out = update(
        &exe,
        &signer.public(),
        &s.home(),
        &s.config_dir(),
        &["--url", &releases.url("orca-index.json")],
    );
    let t3 = fresh.now_ms();
    eprintln!("update + re-exec: +{t2}..+{t3} ms");
    assert!(out.status.success(), "{}\n{}", text(&out), notes(&s));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("server (pid {pid}) now runs orca 9.9.0")),
        "{}",
        text(&out)
    );
    assert_eq!(s.pid().unwrap(), pid, "re-executed in place (same pid)");
    assert_eq!(version(&exe), "orca 9.9.0");
    std::thread::sleep(Duration::from_secs(2));

    // And back: --rollback restores the previous binary, and the server re-executes it.
    let out = update(
        &exe,
        &signer.public(),
        &s.home(),
        &s.config_dir(),
        &["--rollback"],
    );
    assert!(out.status.success(), "{}\n{}", text(&out), notes(&s));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("server (pid {pid}) now runs orca {CURRENT}")),
        "{}",
        text(&out)
    );
    assert_eq!(version(&exe), format!("orca {CURRENT}"));
    std::thread::sleep(Duration::from_secs(2));

    let report = fresh.stop();
    let (ok, connections, failures) = kept.stop();
    eprintln!("new-connection load: {}", report.summary());
    eprintln!(
        "keep-alive load: {ok} ok over {connections} connections, {} failed",
        failures.len()
    );
    assert!(
        report.failures.is_empty() && !report.capped && report.ok > 300,
        "new-connection requests failed across the hand-overs: {}\n{}",
        report.summary(),
        notes(&s)
    );
    assert!(
        failures.is_empty() && ok > 300,
        "keep-alive requests failed across the hand-overs ({ok} ok): {failures:#?}\n{}",
        notes(&s)
    );
    assert!(
        connections > 4,
        "the keep-alive clients were asked to reconnect: {connections}"
    );

    // The containers ran on through both: the same ones, adopted.
    let after: Vec<_> = containers(&s.cluster);
    assert_eq!(before, after, "the same containers run");
    let web = s.service(&project, "web");
    assert_eq!(web["ready_replicas"], 2, "{web}");
    drop(s);
    drop(dir);
}
