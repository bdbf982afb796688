//! `orca-testapp`: a tiny std-only HTTP/1.1 server used as the example service in the README
//! quick start and as the workload of the end-to-end tests.
//!
//! It is built as a static binary and packed into a `FROM scratch` image by
//! `tests/build-testapp-image.sh`, because no image can be pulled on the test machines.
//!
//! Endpoints (any method unless noted):
//!
//! | path | answer |
//! | --- | --- |
//! | `/` | `200` JSON `{"instance":"<hostname>","version":"<$VERSION or v1>","greeting":"<$GREETING>"}` |
//! | `/healthz` | readiness: `200 ok`, or `503 unhealthy` when `FAIL_HEALTH=1`, `NEVER_READY=1`, `/tmp/unhealthy` exists, less than `READY_AFTER_MS` passed since start, or `/admin/ready/fail` was called |
//! | `/livez` | liveness: `200 ok`, or `503 not live` after `/admin/live/fail` |
//! | `/admin/ready/fail`, `/admin/ready/ok` | flip what `/healthz` answers at runtime (`200` with the new state) |
//! | `/admin/live/fail`, `/admin/live/ok` | flip what `/livez` answers at runtime |
//! | `/env/<NAME>` | `200` with the value of env var `NAME`, `404` if unset |
//! | `/sleep/<ms>` | sleeps `ms` milliseconds, then `200` |
//! | `/status/<code>` | answers with that status code (200..=599) |
//! | `/alloc/<MiB>` | allocates and touches that many MiB and keeps them (an instance with a lower memory limit is OOM-killed), then `200` |
//! | `/headers` | the request headers, one `name: value` per line |
//! | `/echo` | the request body |
//! | `/file/PATH` | PUT/POST: write the body to `/PATH` (parent directories created); GET: its contents (404 if absent) |
//! | any request with an `Upgrade` header | `101 Switching Protocols`, then echoes raw bytes until EOF |
//!
//! Environment: `PORT` (default 8080), `VERSION`, `GREETING`, `FAIL_HEALTH`, `READY_AFTER_MS`
//! (`/healthz` answers 503 until that many ms after start), `NEVER_READY=1`, `LOG_REQUESTS=1`
//! (log one line per request to stdout; off by default so benchmarks do not measure the
//! container log driver), `ALLOC_MB` (allocate that many MiB at start, like `/alloc/`),
//! `DEPENDS_ON=host:port` (before listening, connect to that address every 500 ms, logging each
//! failure to stderr, as an application waiting for its database does).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runtime toggles of `/healthz` and `/livez` (`/admin/{ready,live}/{fail,ok}`).
static READY_FAIL: AtomicBool = AtomicBool::new(false);
static LIVE_FAIL: AtomicBool = AtomicBool::new(false);

/// Upper bound for one request line or header line, and for the number of headers: a test app
/// still should not let a broken client make it allocate without limit.
const MAX_LINE: usize = 16 * 1024;
const MAX_HEADERS: usize = 128;
const MAX_BODY: usize = 16 * 1024 * 1024;

fn main() {
    signals::exit_on_sigterm();

    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p.parse().unwrap_or_else(|_| {
            eprintln!("orca-testapp: invalid PORT {p:?}");
            std::process::exit(2);
        }),
        Err(_) => 8080,
    };
    let config = Arc::new(Config::from_env());
    if let Some(mib) = std::env::var("ALLOC_MB").ok().and_then(|v| v.parse().ok()) {
        eprintln!("orca-testapp: allocating {mib} MiB at start");
        alloc(mib);
    }
    if let Ok(dep) = std::env::var("DEPENDS_ON") {
        wait_for_dependency(&dep);
    }
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("orca-testapp: cannot listen on 0.0.0.0:{port}: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "orca-testapp {} listening on 0.0.0.0:{port} as {}",
        config.version, config.hostname
    );
    eprintln!("orca-testapp: ready");

    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let config = Arc::clone(&config);
                std::thread::spawn(move || {
                    // A connection error only ends that connection.
                    let _ = serve_connection(stream, &config);
                });
            }
            Err(e) => eprintln!("orca-testapp: accept failed: {e}"),
        }
    }
}

/// Values read once from the environment at startup.
struct Config {
    hostname: String,
    version: String,
    greeting: String,
    log_requests: bool,
    started: Instant,
    /// `/healthz` answers 503 until this long after start (`READY_AFTER_MS`).
    ready_after: Duration,
    /// `/healthz` always answers 503 (`NEVER_READY=1`).
    never_ready: bool,
}

impl Config {
    fn from_env() -> Config {
        let hostname = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown".to_string());
        Config {
            hostname,
            version: std::env::var("VERSION").unwrap_or_else(|_| "v1".to_string()),
            greeting: std::env::var("GREETING").unwrap_or_default(),
            log_requests: std::env::var("LOG_REQUESTS").is_ok_and(|v| v == "1"),
            started: Instant::now(),
            ready_after: Duration::from_millis(
                std::env::var("READY_AFTER_MS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            ),
            never_ready: std::env::var("NEVER_READY").is_ok_and(|v| v == "1"),
        }
    }
}

/// Memory kept by `/alloc/` and `ALLOC_MB` for the life of the process.
static HELD: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// Allocates `mib` MiB and writes every page, so the memory is really used.
fn alloc(mib: usize) {
    let mut block = vec![0u8; mib << 20];
    for i in (0..block.len()).step_by(4096) {
        block[i] = 1;
    }
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(block);
}

/// Blocks until `dep` (`host:port`) accepts a TCP connection, logging every failure.
fn wait_for_dependency(dep: &str) {
    loop {
        match std::net::ToSocketAddrs::to_socket_addrs(dep)
            .map_err(|e| e.to_string())
            .and_then(|mut addrs| addrs.next().ok_or_else(|| "no address".to_string()))
            .and_then(|addr| {
                TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())
            }) {
            Ok(_) => {
                eprintln!("orca-testapp: dependency {dep} is up");
                return;
            }
            Err(e) => eprintln!("orca-testapp: cannot connect to dependency {dep}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

struct Request {
    method: String,
    target: String,
    http10: bool,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn keep_alive(&self) -> bool {
        if self.http10 {
            self.header_has_token("connection", "keep-alive")
        } else {
            !self.header_has_token("connection", "close")
        }
    }
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }
}

fn serve_connection(stream: TcpStream, config: &Config) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let request = match read_request(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let resp = Response::text(400, format!("bad request: {e}\n"));
                write_response(&mut writer, &resp, false, false)?;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if config.log_requests {
            println!("{} {}", request.method, request.target);
        }

        if request.header("upgrade").is_some() {
            return upgrade_and_echo(reader, writer, &request);
        }

        let keep_alive = request.keep_alive();
        let response = route(&request, config);
        write_response(&mut writer, &response, keep_alive, request.method == "HEAD")?;
        if !keep_alive {
            return Ok(());
        }
    }
}

fn route(req: &Request, config: &Config) -> Response {
    let path = req.target.split('?').next().unwrap_or("");
    if path == "/" {
        return Response {
            status: 200,
            content_type: "application/json",
            body: format!(
                "{{\"instance\":\"{}\",\"version\":\"{}\",\"greeting\":\"{}\"}}\n",
                json_escape(&config.hostname),
                json_escape(&config.version),
                json_escape(&config.greeting)
            )
            .into_bytes(),
        };
    }
    if path == "/healthz" {
        let failing = std::env::var("FAIL_HEALTH").is_ok_and(|v| v == "1")
            || config.never_ready
            || config.started.elapsed() < config.ready_after
            || READY_FAIL.load(Ordering::Relaxed)
            || std::path::Path::new("/tmp/unhealthy").exists();
        return if failing {
            Response::text(503, "unhealthy\n")
        } else {
            Response::text(200, "ok\n")
        };
    }
    if path == "/livez" {
        return if LIVE_FAIL.load(Ordering::Relaxed) {
            Response::text(503, "not live\n")
        } else {
            Response::text(200, "ok\n")
        };
    }
    if let Some(rest) = path.strip_prefix("/admin/") {
        let (flag, which) = match rest.split_once('/') {
            Some(("ready", which)) => (&READY_FAIL, which),
            Some(("live", which)) => (&LIVE_FAIL, which),
            _ => return Response::text(404, format!("no route for {path}\n")),
        };
        return match which {
            "fail" | "ok" => {
                flag.store(which == "fail", Ordering::Relaxed);
                Response::text(200, format!("{rest}\n"))
            }
            _ => Response::text(404, format!("no route for {path}\n")),
        };
    }
    if path == "/headers" {
        let mut out = String::new();
        for (name, value) in &req.headers {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push('\n');
        }
        return Response::text(200, out);
    }
    if path == "/echo" {
        return Response {
            status: 200,
            content_type: "application/octet-stream",
            body: req.body.clone(),
        };
    }
    if let Some(name) = path.strip_prefix("/env/") {
        return match std::env::var(name) {
            Ok(v) => Response::text(200, v),
            Err(_) => Response::text(404, format!("env var {name} is not set\n")),
        };
    }
    if let Some(ms) = path.strip_prefix("/sleep/") {
        return match ms.parse::<u64>() {
            Ok(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                Response::text(200, format!("slept {ms}ms\n"))
            }
            Err(_) => Response::text(400, format!("invalid duration {ms:?}\n")),
        };
    }
    if let Some(mib) = path.strip_prefix("/alloc/") {
        return match mib.parse::<usize>() {
            Ok(mib @ 1..=4096) => {
                alloc(mib);
                Response::text(200, format!("allocated {mib} MiB\n"))
            }
            _ => Response::text(400, format!("invalid size {mib:?} (1..=4096 MiB)\n")),
        };
    }
    if let Some(file) = path.strip_prefix("/file/") {
        if file
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Response::text(400, format!("invalid file path {file:?}\n"));
        }
        let file = format!("/{file}");
        return match req.method.as_str() {
            "PUT" | "POST" => match std::path::Path::new(&file)
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&file, &req.body))
            {
                Ok(()) => {
                    Response::text(200, format!("wrote {} bytes to {file}\n", req.body.len()))
                }
                Err(e) => Response::text(500, format!("cannot write {file}: {e}\n")),
            },
            _ => match std::fs::read(&file) {
                Ok(body) => Response {
                    status: 200,
                    content_type: "application/octet-stream",
                    body,
                },
                Err(e) => Response::text(404, format!("cannot read {file}: {e}\n")),
            },
        };
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return match code.parse::<u16>() {
            Ok(code @ 200..=599) => Response::text(code, format!("{code}\n")),
            _ => Response::text(400, format!("invalid status {code:?}\n")),
        };
    }
    Response::text(404, format!("no route for {path}\n"))
}

fn write_response(
    w: &mut impl Write,
    resp: &Response,
    keep_alive: bool,
    head: bool,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(&resp.body);
    }
    w.write_all(&out)?;
    w.flush()
}

/// Answers `101 Switching Protocols` and then echoes every byte back until the client closes.
/// For WebSocket upgrades the `Sec-WebSocket-Accept` header is computed so real WebSocket
/// clients accept the handshake; the echo stays raw (frames come back unchanged, which a
/// client sees as its own masked frames — enough to prove the proxy tunnels bytes both ways).
fn upgrade_and_echo(
    mut reader: BufReader<TcpStream>,
    mut writer: TcpStream,
    req: &Request,
) -> io::Result<()> {
    let protocol = req.header("upgrade").unwrap_or("").to_string();
    let mut head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n"
    );
    if let Some(key) = req.header("sec-websocket-key") {
        let mut input = key.trim().as_bytes().to_vec();
        input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
        head.push_str(&format!(
            "Sec-WebSocket-Accept: {}\r\n",
            base64(&sha1(&input))
        ));
    }
    head.push_str("\r\n");
    writer.write_all(head.as_bytes())?;
    writer.flush()?;
    // `BufReader` hands out the bytes it already buffered (sent right after the request
    // head) before reading the socket again, so nothing is lost.
    io::copy(&mut reader, &mut writer)?;
    writer.shutdown(std::net::Shutdown::Write)
}

/// Reads one request. `Ok(None)` means the client closed the connection between requests.
fn read_request(r: &mut impl BufRead) -> io::Result<Option<Request>> {
    let Some(line) = read_line(r)? else {
        return Ok(None);
    };
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(format!("malformed request line {line:?}")));
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        other => return Err(invalid(format!("unsupported version {other:?}"))),
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?.ok_or_else(|| invalid("eof inside headers"))?;
        if line.is_empty() {
            break;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(invalid("too many headers"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("malformed header {line:?}")))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let mut req = Request {
        method: method.to_string(),
        target: target.to_string(),
        http10,
        headers,
        body: Vec::new(),
    };
    if req.header_has_token("transfer-encoding", "chunked") {
        req.body = read_chunked(r)?;
    } else if let Some(len) = req.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| invalid(format!("bad content-length {len:?}")))?;
        if len > MAX_BODY {
            return Err(invalid("body too large"));
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        req.body = body;
    }
    Ok(Some(req))
}

fn read_chunked(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r)?.ok_or_else(|| invalid("eof inside chunked body"))?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| invalid(format!("bad chunk size {size:?}")))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(r)?
                .ok_or_else(|| invalid("eof inside trailers"))?
                .is_empty()
            {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(invalid("body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        if !read_line(r)?
            .ok_or_else(|| invalid("eof after chunk"))?
            .is_empty()
        {
            return Err(invalid("missing CRLF after chunk"));
        }
    }
}

/// Reads a CRLF- (or LF-) terminated line without the terminator; `None` at EOF before any byte.
fn read_line(r: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r.take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(if n > MAX_LINE {
            invalid("line too long")
        } else {
            invalid("eof inside a line")
        });
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| invalid("non-UTF-8 header"))
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// SHA-1, only for the WebSocket handshake (RFC 6455 mandates it); not used for security.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (hi, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hi = hi.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (chunk, v) in out.chunks_mut(4).zip(h) {
        chunk.copy_from_slice(&v.to_be_bytes());
    }
    out
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The one place that needs `unsafe`: std has no signal API.
#[allow(unsafe_code)]
mod signals {
    use std::ffi::c_int;

    const SIGINT: c_int = 2;
    const SIGTERM: c_int = 15;

    extern "C" {
        fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
        fn _exit(status: c_int) -> !;
    }

    extern "C" fn on_signal(_: c_int) {
        // SAFETY: `_exit` is async-signal-safe (unlike `std::process::exit`, which runs
        // atexit handlers and flushes stdio). Nothing needs cleaning up: the app holds no state.
        unsafe { _exit(0) }
    }

    /// Installs a handler that exits 0 on SIGTERM/SIGINT. As PID 1 in a container the app
    /// would otherwise ignore SIGTERM, and every `docker stop` would wait for the SIGKILL.
    pub fn exit_on_sigterm() {
        // SAFETY: `signal` is called with valid signal numbers and an `extern "C"` handler
        // whose body only calls an async-signal-safe function.
        unsafe {
            signal(SIGTERM, on_signal);
            signal(SIGINT, on_signal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_accept_matches_rfc6455_example() {
        let mut input = b"dGhlIHNhbXBsZSBub25jZQ==".to_vec();
        input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
        assert_eq!(base64(&sha1(&input)), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }

    #[test]
    fn parses_keep_alive_and_chunked_requests() {
        let raw = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nGET / HTTP/1.0\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        let first = read_request(&mut r).unwrap().unwrap();
        assert_eq!(first.body, b"abcde");
        assert!(first.keep_alive());
        let second = read_request(&mut r).unwrap().unwrap();
        assert!(!second.keep_alive());
        assert!(read_request(&mut r).unwrap().is_none());
    }
}
