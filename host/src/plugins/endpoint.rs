//! The probe capability: [`EndpointCap`], an endpoint bound to the one instance being
//! probed, and [`TcpEndpoint`], its std::net implementation (TCP connect, minimal HTTP/1.1 GET).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::types::{HttpResponse, Pair};

/// Largest response body handed to a probe; the rest is dropped.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest response head (status line + headers) accepted.
const MAX_HEAD: usize = 16 * 1024;

/// An endpoint bound by the host to one address. A probe plugin reaches the network only
/// through it, so it can probe its instance and nothing else. Calls block for at most
/// `timeout`; the runtime calls them from the plugin call's thread.
pub trait EndpointCap: Send + Sync {
    /// `ip:port` of the instance.
    fn address(&self) -> String;
    /// HTTP GET of `path` (starting with `/`) with extra request headers.
    fn http_get(
        &self,
        path: &str,
        headers: &[Pair],
        timeout: Duration,
    ) -> Result<HttpResponse, String>;
    /// TCP connect to the instance's port.
    fn tcp_connect(&self, timeout: Duration) -> Result<(), String>;
}

/// [`EndpointCap`] over std::net for one socket address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpEndpoint {
    pub addr: SocketAddr,
}

impl TcpEndpoint {
    pub fn new(addr: SocketAddr) -> Self {
        TcpEndpoint { addr }
    }
}

/// Headers the host sets itself: a plugin may not override them (they decide where and how
/// the request goes).
const RESERVED: [&str; 5] = [
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "upgrade",
];

fn clean(s: &str) -> bool {
    !s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

impl EndpointCap for TcpEndpoint {
    fn address(&self) -> String {
        self.addr.to_string()
    }

    fn tcp_connect(&self, timeout: Duration) -> Result<(), String> {
        TcpStream::connect_timeout(&self.addr, timeout.max(Duration::from_millis(1)))
            .map(drop)
            .map_err(|e| format!("connect {}: {e}", self.addr))
    }

    fn http_get(
        &self,
        path: &str,
        headers: &[Pair],
        timeout: Duration,
    ) -> Result<HttpResponse, String> {
        if !path.starts_with('/') || !clean(path) || path.contains(' ') {
            return Err(format!("invalid path {path:?}"));
        }
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: orca-probe\r\nAccept: */*\r\n",
            self.addr
        );
        for h in headers {
            let name_ok =
                !h.key.is_empty() && h.key.bytes().all(|b| b.is_ascii_graphic() && b != b':');
            if !name_ok || !clean(&h.value) {
                return Err(format!("invalid header {:?}", h.key));
            }
            if RESERVED.iter().any(|r| h.key.eq_ignore_ascii_case(r)) {
                continue;
            }
            request.push_str(&format!("{}: {}\r\n", h.key, h.value));
        }
        request.push_str("\r\n");

        let deadline = Instant::now() + timeout.max(Duration::from_millis(1));
        let remaining = || {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| format!("GET {path}: timed out after {timeout:?}"))
        };
        let mut stream = TcpStream::connect_timeout(&self.addr, remaining()?)
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        stream.set_nodelay(true).ok();
        stream
            .set_write_timeout(Some(remaining()?))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("GET {path}: {e}"))?;

        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 8192];
        let mut head_end = None;
        let mut content_length = None;
        loop {
            if let Some(end) = head_end {
                let body_len = buf.len() - end;
                if body_len >= MAX_BODY || content_length.is_some_and(|n: usize| body_len >= n) {
                    break;
                }
            }
            stream
                .set_read_timeout(Some(remaining()?))
                .map_err(|e| e.to_string())?;
            let n = match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(format!("GET {path}: timed out after {timeout:?}"))
                }
                Err(e) => return Err(format!("GET {path}: {e}")),
            };
            buf.extend_from_slice(&chunk[..n]);
            if head_end.is_none() {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    head_end = Some(i + 4);
                    content_length = parse_head(&buf[..i])?.2;
                } else if buf.len() > MAX_HEAD {
                    return Err(format!(
                        "GET {path}: response head larger than {MAX_HEAD} bytes"
                    ));
                }
            }
        }
        let end =
            head_end.ok_or_else(|| format!("GET {path}: connection closed before a response"))?;
        let (status, headers, content_length) = parse_head(&buf[..end - 4])?;
        let mut body = buf.split_off(end);
        body.truncate(content_length.unwrap_or(usize::MAX).min(MAX_BODY));
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

/// Status, headers and `Content-Length` of a response head (without the blank line).
fn parse_head(head: &[u8]) -> Result<(u16, Vec<Pair>, Option<usize>), String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    let status = match (version.starts_with("HTTP/1."), status) {
        (true, Some(s)) if (100..=999).contains(&s) => s,
        _ => return Err(format!("malformed status line {status_line:?}")),
    };
    let mut headers = Vec::new();
    let mut content_length = None;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            content_length = v.parse().ok();
        }
        headers.push(Pair {
            key: k.to_string(),
            value: v.to_string(),
        });
    }
    Ok((status, headers, content_length))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(response: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(response);
        });
        addr
    }

    #[test]
    fn get_reads_status_headers_and_body() {
        let addr = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello");
        let r = TcpEndpoint::new(addr)
            .http_get("/health", &[], Duration::from_secs(2))
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello");
        assert!(r.headers.iter().any(|p| p.key == "X-A" && p.value == "b"));
    }

    #[test]
    fn get_rejects_injection_and_times_out() {
        let ep = TcpEndpoint::new("127.0.0.1:9".parse().unwrap());
        assert!(ep
            .http_get("/a\r\nHost: evil", &[], Duration::from_millis(50))
            .is_err());
        assert!(ep
            .http_get("http://elsewhere/", &[], Duration::from_millis(50))
            .is_err());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let silent = TcpEndpoint::new(listener.local_addr().unwrap());
        let err = silent
            .http_get("/", &[], Duration::from_millis(100))
            .unwrap_err();
        assert!(err.contains("timed out"), "{err}");
    }
}
