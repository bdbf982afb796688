//! Socket hand-over between two `orca server` processes of one state dir, so a restart or an
//! upgrade refuses no connection: the listening sockets (API, HTTP, HTTPS) outlive the
//! process that serves them, and the kernel's accept backlog holds new connections while no
//! process accepts.
//!
//! Two ways in, both ending in [`acquire`]:
//!
//! - **A second server started beside a running one** (a plain restart): it connects to the
//!   running server's hand-over socket (`$ORCA_HOME/handover.sock`), asks `handover`, and
//!   receives the three listening sockets by `SCM_RIGHTS`. The old server then stops
//!   accepting, lets in-flight requests finish (the proxy answers `Connection: close` on
//!   keep-alive connections meanwhile, so clients reconnect to the shared socket), stops its
//!   loops and exits; its end of the hand-over connection closes only when the process is
//!   gone, and with it the redb store's lock. The new server waits for that close before it
//!   opens the store (only one process can hold it), then accepts on the inherited sockets.
//! - **Re-execution in place** (what `orca update` ends with: the CLI asks the running
//!   server `reexec PATH` on the hand-over socket): the server drains the same way, then
//!   `execve`s the (replaced) binary at PATH with the same arguments and the listening
//!   sockets kept open, named in `ORCA_HANDOVER_FDS`. The PID does not change, so a supervisor (systemd,
//!   runit, a container runtime) keeps tracking the server; every other descriptor (the
//!   store's among them) is close-on-exec and released by the exec itself.
//!
//! Either way the successor starts with its predecessor's ready instances (`save_ready` /
//! `take_ready`, a file in the state dir) so its first routing table routes to them, and it
//! accepts only once that table is published. The hand-over socket lives in the private
//! state dir (0700) and answers only peers of the server's own user (`SO_PEERCRED`).

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The environment variable naming the inherited listening sockets after a re-exec:
/// `api=N,http=N,https=N`.
pub const FDS_ENV: &str = "ORCA_HANDOVER_FDS";

/// How long a new server waits for the old one to exit (and release the store).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(60);

/// The hand-over socket of a state dir.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join("handover.sock")
}

/// Errors of the hand-over.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The other side said something unexpected.
    #[error("hand-over protocol: {0}")]
    Protocol(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HandoverError {
    let what = what.into();
    move |source| HandoverError::Io { what, source }
}

/// The three listening sockets a server serves.
#[derive(Debug)]
pub struct Listeners {
    /// The REST API.
    pub api: TcpListener,
    /// The plain-HTTP proxy.
    pub http: TcpListener,
    /// The HTTPS proxy.
    pub https: TcpListener,
}

impl Listeners {
    /// Duplicates of the three sockets (close-on-exec), kept to hand them over later.
    pub fn try_clone(&self) -> std::io::Result<Listeners> {
        Ok(Listeners {
            api: self.api.try_clone()?,
            http: self.http.try_clone()?,
            https: self.https.try_clone()?,
        })
    }

    fn fds(&self) -> [BorrowedFd<'_>; 3] {
        [self.api.as_fd(), self.http.as_fd(), self.https.as_fd()]
    }
}

/// Where a server's listening sockets came from.
#[derive(Debug)]
pub enum Origin {
    /// Bound by this process.
    Bound,
    /// Inherited over `execve` from this same process before (`orca update`).
    ReExec,
    /// Received from the running server `pid`, which still holds the store until it exits.
    Predecessor(Predecessor),
}

/// The running server that handed its sockets over; it releases the store when it exits.
#[derive(Debug)]
pub struct Predecessor {
    /// Its process id.
    pub pid: u32,
    stream: UnixStream,
}

impl Predecessor {
    /// Waits until the predecessor has exited (its end of the hand-over connection closes
    /// with the process), so the store is free.
    pub fn wait_released(mut self) -> Result<(), HandoverError> {
        self.stream
            .set_read_timeout(Some(RELEASE_TIMEOUT))
            .map_err(io("setting the hand-over read timeout"))?;
        let mut rest = Vec::new();
        match self.stream.read_to_end(&mut rest) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                Err(HandoverError::Protocol(format!(
                    "the previous server (pid {}) did not exit within {} s after handing over",
                    self.pid,
                    RELEASE_TIMEOUT.as_secs()
                )))
            }
            Err(e) => Err(io("waiting for the previous server to exit")(e)),
        }
    }
}

/// The listening sockets for a server of `home`: inherited after a re-exec, else handed over
/// by a running server of the same state dir, else bound by `bind`.
pub fn acquire(
    home: &Path,
    bind: impl FnOnce() -> anyhow::Result<Listeners>,
) -> anyhow::Result<(Listeners, Origin)> {
    if let Some(spec) = std::env::var_os(FDS_ENV) {
        // Not for the children this server starts (git, plugins' tools).
        std::env::remove_var(FDS_ENV);
        let listeners = inherited(&spec.to_string_lossy())?;
        return Ok((listeners, Origin::ReExec));
    }
    let path = socket_path(home);
    match UnixStream::connect(&path) {
        Ok(stream) => {
            let (listeners, predecessor) = ask_handover(stream)?;
            info!(
                pid = predecessor.pid,
                "took over the listening sockets of the running server"
            );
            Ok((listeners, Origin::Predecessor(predecessor)))
        }
        Err(e) => {
            if path.exists() {
                // A server that died without a goodbye left its socket file.
                info!(error = %e, "no server answers on the hand-over socket; binding");
            }
            Ok((bind()?, Origin::Bound))
        }
    }
}

/// Listeners named by [`FDS_ENV`] (`api=N,http=N,https=N`).
fn inherited(spec: &str) -> anyhow::Result<Listeners> {
    let mut api = None;
    let mut http = None;
    let mut https = None;
    for part in spec.split(',') {
        let (name, fd) = part
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("{FDS_ENV}={spec:?}: expected api=N,http=N,https=N"))?;
        let fd: i32 = fd
            .parse()
            .map_err(|_| anyhow::anyhow!("{FDS_ENV}={spec:?}: {fd:?} is not a descriptor"))?;
        let listener = listener_from_fd(fd)?;
        match name {
            "api" => api = Some(listener),
            "http" => http = Some(listener),
            "https" => https = Some(listener),
            other => anyhow::bail!("{FDS_ENV}={spec:?}: unknown socket {other:?}"),
        }
    }
    match (api, http, https) {
        (Some(api), Some(http), Some(https)) => Ok(Listeners { api, http, https }),
        _ => anyhow::bail!("{FDS_ENV}={spec:?}: api, http and https are all needed"),
    }
}

/// Takes ownership of an inherited listening socket after checking it is one.
#[allow(unsafe_code)]
fn listener_from_fd(fd: i32) -> anyhow::Result<TcpListener> {
    // SAFETY: `fd` was named by the process image that exec'd this one (this same server
    // before `orca update`), which kept it open across the exec for this process to own;
    // nothing else in this process knows or closes it. It is checked to be open first
    // (`fcntl(F_GETFD)` on a borrowed descriptor fails on a closed one) and a listening
    // TCP socket after.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_getfd(borrowed)
        .map_err(|e| anyhow::anyhow!("{FDS_ENV}: descriptor {fd} is not open: {e}"))?;
    // SAFETY: as above; from here on this process owns the descriptor.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| anyhow::anyhow!("{FDS_ENV}: descriptor {fd}: {e}"))?;
    let listening = rustix::net::sockopt::socket_acceptconn(&owned)
        .map_err(|e| anyhow::anyhow!("{FDS_ENV}: descriptor {fd} is not a socket: {e}"))?;
    if !listening {
        anyhow::bail!("{FDS_ENV}: descriptor {fd} is not a listening socket");
    }
    Ok(TcpListener::from(owned))
}

/// Asks the running server for its sockets.
fn ask_handover(mut stream: UnixStream) -> Result<(Listeners, Predecessor), HandoverError> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io("setting the hand-over read timeout"))?;
    stream
        .write_all(b"handover\n")
        .map_err(io("asking the running server to hand over"))?;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut buf = [0u8; 256];
    let received = rustix::net::recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| io("receiving the listening sockets")(e.into()))?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    let text = String::from_utf8_lossy(&buf[..received.bytes]).to_string();
    let pid = text
        .trim()
        .strip_prefix("sockets api http https pid ")
        .and_then(|pid| pid.parse::<u32>().ok())
        .ok_or_else(|| HandoverError::Protocol(format!("unexpected answer {text:?}")))?;
    let [api, http, https]: [OwnedFd; 3] = fds.try_into().map_err(|fds: Vec<OwnedFd>| {
        HandoverError::Protocol(format!("expected 3 sockets, received {}", fds.len()))
    })?;
    // The predecessor's answer is the only message; from now on its end stays silent until
    // it exits.
    stream
        .set_read_timeout(None)
        .map_err(io("clearing the hand-over read timeout"))?;
    Ok((
        Listeners {
            api: api.into(),
            http: http.into(),
            https: https.into(),
        },
        Predecessor { pid, stream },
    ))
}

/// What the running server was asked to do when it stopped.
#[derive(Clone, Debug, Default)]
pub struct Requests {
    reexec: Arc<AtomicBool>,
    handed_over: Arc<AtomicBool>,
}

impl Requests {
    /// Whether the server was asked to re-execute its binary.
    pub fn reexec(&self) -> bool {
        self.reexec.load(Ordering::SeqCst)
    }

    /// Whether a successor serves next (re-exec, or the sockets handed over).
    pub fn succeeded(&self) -> bool {
        self.reexec() || self.handed_over.load(Ordering::SeqCst)
    }
}

/// The readiness verdicts a server leaves its successor (in the state dir).
const READY_FILE: &str = "handover-ready.json";
/// A file older than this is stale (not from the predecessor just stopped).
const READY_MAX_AGE_MS: u64 = 120_000;

/// Leaves the instances this server routed to for its successor, which starts them ready
/// (until its own probes say otherwise), so it routes from its first pass.
pub fn save_ready<'a>(home: &Path, ready: impl IntoIterator<Item = &'a String>, now_ms: u64) {
    let mut ready: Vec<&String> = ready.into_iter().collect();
    ready.sort();
    let body = serde_json::json!({ "at_ms": now_ms, "ready": ready });
    if let Err(e) = std::fs::write(home.join(READY_FILE), body.to_string()) {
        warn!(error = %e, "could not leave the readiness verdicts for the next server");
    }
}

/// Takes (and removes) the verdicts a predecessor left; empty when none or stale.
pub fn take_ready(home: &Path, now_ms: u64) -> Vec<String> {
    let path = home.join(READY_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Vec::new();
    };
    let _ = std::fs::remove_file(&path);
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    let at = value["at_ms"].as_u64().unwrap_or(0);
    if now_ms.saturating_sub(at) > READY_MAX_AGE_MS {
        return Vec::new();
    }
    value["ready"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|id| id.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Serves the hand-over socket of `home` for the running server: hands `listeners` (dups)
/// over or asks for a re-exec, then cancels `shutdown`. Runs on its own thread (blocking
/// I/O, a few requests in a server's life).
pub fn serve(
    home: &Path,
    listeners: Listeners,
    exe: PathBuf,
    shutdown: CancellationToken,
) -> Result<Requests, HandoverError> {
    let path = socket_path(home);
    // A socket file left by a predecessor (which no longer answers) or by a crash.
    let _ = std::fs::remove_file(&path);
    let socket = UnixListener::bind(&path).map_err(io(format!(
        "binding the hand-over socket {}",
        path.display()
    )))?;
    let requests = Requests::default();
    let answer = requests.clone();
    std::thread::Builder::new()
        .name("orca-handover".into())
        .spawn(move || {
            for stream in socket.incoming() {
                let Ok(stream) = stream else { continue };
                match handle(stream, &listeners, &exe, &answer) {
                    Ok(true) => {
                        shutdown.cancel();
                        return;
                    }
                    Ok(false) => {}
                    Err(e) => warn!(error = %e, "hand-over request failed"),
                }
            }
        })
        .map_err(io("starting the hand-over thread"))?;
    Ok(requests)
}

/// Answers one request; `Ok(true)` when the server is to stop now.
fn handle(
    stream: UnixStream,
    listeners: &Listeners,
    exe: &Path,
    requests: &Requests,
) -> Result<bool, HandoverError> {
    let peer = rustix::net::sockopt::socket_peercred(&stream)
        .map_err(|e| io("reading the peer's credentials")(e.into()))?;
    if peer.uid != rustix::process::getuid() {
        warn!(
            uid = peer.uid.as_raw(),
            "hand-over request from another user refused"
        );
        return Ok(false);
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io("setting the read timeout"))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(io("reading the request"))?;
    let mut writer = &stream;
    let line = line.trim();
    if line == "handover" {
        let payload = format!("sockets api http https pid {}\n", std::process::id());
        let fds = listeners.fds();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        rustix::net::sendmsg(
            &stream,
            &[IoSlice::new(payload.as_bytes())],
            &mut control,
            SendFlags::empty(),
        )
        .map_err(|e| io("sending the listening sockets")(e.into()))?;
        requests.handed_over.store(true, Ordering::SeqCst);
        info!(
            pid = peer.pid.as_raw_nonzero().get(),
            "handed the listening sockets over; stopping"
        );
        // Our end closes when this process exits: that is how the successor learns the
        // store is free. Leaking the descriptor keeps it open until then.
        std::mem::forget(stream);
        return Ok(true);
    }
    if let Some(path) = line.strip_prefix("reexec ") {
        if Path::new(path) != exe {
            let _ = writeln!(
                writer,
                "refused: this server runs {}, not {path}",
                exe.display()
            );
            return Ok(false);
        }
        requests.reexec.store(true, Ordering::SeqCst);
        let _ = writeln!(writer, "ok pid {}", std::process::id());
        info!(exe = %exe.display(), "re-executing the server binary; stopping");
        return Ok(true);
    }
    if line == "status" {
        let _ = writeln!(
            writer,
            "orca {} pid {} exe {}",
            crate::version::current(),
            std::process::id(),
            exe.display()
        );
        return Ok(false);
    }
    let _ = writeln!(writer, "unknown request {line:?}");
    Ok(false)
}

/// Re-executes `exe` with `args`, keeping `listeners` open for the new image. Returns only
/// on failure.
pub fn reexec(exe: &Path, args: &[std::ffi::OsString], listeners: &Listeners) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    for fd in listeners.fds() {
        if let Err(e) = rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()) {
            return e.into();
        }
    }
    let spec = format!(
        "api={},http={},https={}",
        listeners.api.as_raw_fd(),
        listeners.http.as_raw_fd(),
        listeners.https.as_raw_fd()
    );
    std::process::Command::new(exe)
        .args(args)
        .env(FDS_ENV, spec)
        .exec()
}

/// Client side, for `orca update`: asks the server running in `home` one line and returns
/// its answer; `None` when no server answers there.
pub fn ask(home: &Path, request: &str) -> Option<Result<String, HandoverError>> {
    let mut stream = UnixStream::connect(socket_path(home)).ok()?;
    let result = (|| {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io("setting the read timeout"))?;
        writeln!(stream, "{request}").map_err(io("sending the request"))?;
        let mut line = String::new();
        BufReader::new(&stream)
            .read_line(&mut line)
            .map_err(io("reading the answer"))?;
        Ok(line.trim().to_string())
    })();
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_instances_are_taken_once_and_only_when_fresh() {
        let home = tempfile::tempdir().unwrap();
        let ready: std::collections::HashSet<String> = ["a".to_string(), "b".to_string()].into();
        save_ready(home.path(), &ready, 1_000_000);
        let mut taken = take_ready(home.path(), 1_000_500);
        taken.sort();
        assert_eq!(taken, vec!["a", "b"]);
        assert!(
            take_ready(home.path(), 1_000_500).is_empty(),
            "removed once taken"
        );
        save_ready(home.path(), &ready, 1_000_000);
        assert!(
            take_ready(home.path(), 1_000_000 + READY_MAX_AGE_MS + 1).is_empty(),
            "a stale file is not from the predecessor just stopped"
        );
    }

    #[test]
    fn inherited_descriptors_are_named_and_checked() {
        use std::os::fd::IntoRawFd;
        // Only descriptors this test owns (and hands over) are named: adopting one closes it.
        let err = inherited("api=x").unwrap_err().to_string();
        assert!(err.contains("\"x\" is not a descriptor"), "{err}");
        let err = inherited("api=987654").unwrap_err().to_string();
        assert!(err.contains("descriptor 987654 is not open"), "{err}");
        let file = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
        let err = inherited(&format!("api={file}")).unwrap_err().to_string();
        assert!(err.contains("is not a socket"), "{err}");
        let api = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .into_raw_fd();
        let http = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .into_raw_fd();
        let err = inherited(&format!("api={api},http={http}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("api, http and https are all needed"), "{err}");
    }
}
