//! End-to-end: HTTPS at the edge. A real `orca server` obtains certificates from Debian's
//! `pebble` ACME test CA by HTTP-01 (answered by orca's own plain-HTTP listener, with
//! `pebble-challtestsrv` as the DNS that resolves every test domain to 127.0.0.1), serves
//! them by SNI with HTTP/2, renews them while a client keeps requesting, reports a challenge
//! that cannot succeed in status with the CA's reason and retries it; a service's own
//! certificate (`tls_cert`/`tls_key`, made with rcgen) is served the same way, WebSockets
//! work over TLS, and a domain without a certificate stays on plain HTTP.
//!
//! Pebble is not optional: if it is not installed (`apt-get install pebble`) these tests
//! fail, they never skip.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A CA made with rcgen, and a leaf it signed; PEM texts.
struct TestPki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn test_pki(names: &[&str]) -> TestPki {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "orca test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let leaf_params = rcgen::CertificateParams::new(names).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    TestPki {
        ca_pem: ca_cert.pem(),
        cert_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
    }
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `pebble` and `pebble-challtestsrv` on loopback ports of their own.
struct Pebble {
    dir: tempfile::TempDir,
    /// The ACME directory URL.
    directory: String,
    /// The root orca trusts for the directory's TLS (pebble's listener certificate's CA).
    listener_ca: PathBuf,
    management: SocketAddr,
    challtestsrv_management: SocketAddr,
    listen: SocketAddr,
    procs: Vec<Proc>,
}

fn which(binary: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let path = Path::new(dir).join(binary);
        if path.is_file() {
            return path;
        }
    }
    panic!(
        "{binary} is not installed: these tests need Debian's pebble package \
         (apt-get update && apt-get install -y pebble); .ci/run installs it"
    );
}

impl Pebble {
    /// Prepares configuration and ports; [`Pebble::start`] runs it with `http_port` (where
    /// pebble validates HTTP-01: orca's plain-HTTP proxy).
    fn prepare() -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let pki = test_pki(&["127.0.0.1", "localhost"]);
        std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
        std::fs::write(dir.path().join("cert.pem"), &pki.cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &pki.key_pem).unwrap();
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let management = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let challtestsrv_management = SocketAddr::from(([127, 0, 0, 1], free_port()));
        Pebble {
            directory: format!("https://{listen}/dir"),
            listener_ca: dir.path().join("ca.pem"),
            dir,
            management,
            challtestsrv_management,
            listen,
            procs: Vec::new(),
        }
    }

    fn start(&mut self, http_port: u16, validity_secs: u64) {
        let dns = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = |name: &str| std::fs::File::create(self.dir.path().join(name)).unwrap();
        let challtestsrv = Command::new(which("pebble-challtestsrv"))
            .args(["-dns01", &dns.to_string()])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &self.challtestsrv_management.to_string()])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn();
        let challtestsrv = match challtestsrv {
            Ok(child) => child,
            Err(e) => panic!("starting pebble-challtestsrv: {e}"),
        };
        self.procs.push(Proc(challtestsrv));
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": self.listen.to_string(),
                "managementListenAddress": self.management.to_string(),
                "certificate": self.dir.path().join("cert.pem"),
                "privateKey": self.dir.path().join("key.pem"),
                "httpPort": http_port,
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity_secs,
            }
        });
        let config_path = self.dir.path().join("pebble-config.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let pebble = Command::new(which("pebble"))
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &dns.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            // Every order is validated afresh, so a renewal goes through HTTP-01 again.
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .stdin(Stdio::null())
            .spawn()
            .expect("starting pebble");
        self.procs.push(Proc(pebble));
        let deadline = Instant::now() + Duration::from_secs(20);
        for addr in [self.listen, self.management, self.challtestsrv_management] {
            while std::net::TcpStream::connect(addr).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "pebble did not listen on {addr}:\n{}",
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for name in [
            "pebble.log",
            "pebble.err",
            "challtestsrv.log",
            "challtestsrv.err",
        ] {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            out.push_str(&format!("--- {name}\n{}\n", tail(&text, 30)));
        }
        out
    }

    /// The CA's root of issued certificates, from the management API (`/roots/0`).
    fn issuing_root(&self) -> Vec<CertificateDer<'static>> {
        let listener_ca = std::fs::read_to_string(&self.listener_ca).unwrap();
        let roots = pem_certs(&listener_ca);
        let answer = block_on(https_get(
            self.management,
            "127.0.0.1",
            &roots,
            "/roots/0",
            &[b"http/1.1"],
        ))
        .unwrap_or_else(|e| panic!("fetching pebble's root: {e}\n{}", self.logs()));
        assert_eq!(answer.status, 200, "{}", answer.body);
        pem_certs(&answer.body)
    }

    /// Makes challtestsrv resolve `host` to `ip` (instead of 127.0.0.1).
    fn resolve(&self, host: &str, ip: &str) {
        let body = serde_json::json!({ "host": host, "addresses": [ip] }).to_string();
        let (code, text) = http_raw(
            "POST",
            &format!("http://{}/add-a", self.challtestsrv_management),
            None,
            &[],
            Some(body.as_bytes()),
        )
        .unwrap();
        assert_eq!(code, 200, "challtestsrv add-a: {text}");
    }
}

fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// One HTTPS answer, with what the TLS handshake negotiated.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
    alpn: Option<Vec<u8>>,
    version: http::Version,
    /// The served leaf certificate (DER).
    leaf: Vec<u8>,
}

fn client_config(roots: &[CertificateDer<'static>], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to `addr` with SNI `sni`, verified against `roots`.
async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let connector = tokio_rustls::TlsConnector::from(client_config(roots, alpn));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake with {sni}: {e}"))
}

/// GET `path` over a fresh TLS connection, as HTTP/2 if the server picks `h2`.
async fn https_get(
    addr: SocketAddr,
    sni: &str,
    roots: &[CertificateDer<'static>],
    path: &str,
    alpn: &[&[u8]],
) -> Result<Answer, String> {
    let tls = tls_connect(addr, sni, roots, alpn).await?;
    let (_, conn) = tls.get_ref();
    let negotiated = conn.alpn_protocol().map(<[u8]>::to_vec);
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let io = TokioIo::new(tls);
    let response = if negotiated.as_deref() == Some(b"h2") {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        let req = http::Request::get(format!("https://{sni}{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(req).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("http1 handshake: {e}"))?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header("host", sni)
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(req).await
    }
    .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    let version = response.version();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).to_string(),
        alpn: negotiated,
        version,
        leaf,
    })
}

/// The `[acme]` table pointing at `pebble`: renewal window larger than pebble's validity,
/// so every check renews; quick retries.
fn acme_toml(pebble: &Pebble) -> String {
    format!(
        "[acme]\nemail = \"ops@orca.test\"\ndirectory = \"{}\"\nca_root = \"{}\"\n\
         renew_before_days = 2\ncheck_interval_secs = 2\nretry_initial_secs = 1\nretry_max_secs = 2\n",
        pebble.directory,
        pebble.listener_ca.display()
    )
}

fn ctx(s: &Server, pebble: &Pebble) -> String {
    let log = s.log();
    let log: Vec<&str> = log.lines().filter(|l| !l.contains("access")).collect();
    format!(
        "status: {:#}\nserver log tail:\n{}\n{}",
        s.status(),
        tail(&log.join("\n"), 60),
        pebble.logs()
    )
}

fn wait_for(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn acme_certificate_from_pebble_is_served_over_h2_renewed_under_load_and_failures_retry() {
    let mut pebble = Pebble::prepare();
    let s = Server::start_with(&acme_toml(&pebble));
    // One day of validity against a two-day renewal window: every check renews.
    pebble.start(s.http.port(), 86_400);
    let domain = "app.orca.test";
    let dead = "dead.orca.test";
    // The CA will look for dead.orca.test's challenge on 127.0.0.2, where nothing listens.
    pebble.resolve(dead, "127.0.0.2");
    s.write_service(
        "edge",
        &format!(
            "{}\n{}",
            testapp_service("app", 1, domain, ""),
            testapp_service("dead", 1, dead, "")
        ),
    );
    s.cli(&["deploy", "--timeout-secs", "120"]);

    // Issued by pebble, stored, served.
    wait_for(
        "a certificate for app.orca.test",
        Duration::from_secs(60),
        || s.service("edge", "app")["tls"]["state"] == "active",
        || ctx(&s, &pebble),
    );
    let app = s.service("edge", "app");
    assert_eq!(app["tls"]["source"], "acme", "{app:#}");
    assert!(app["tls"]["not_after"].as_u64().unwrap() > 0);
    let text = s.cli(&["status"]);
    assert!(text.contains("tls: acme certificate until"), "{text}");

    // HTTPS to 127.0.0.1 with SNI = the domain, verified against pebble's root, over h2.
    let roots = pebble.issuing_root();
    let answer = block_on(https_get(
        s.https,
        domain,
        &roots,
        "/",
        &[b"h2", b"http/1.1"],
    ))
    .unwrap_or_else(|e| panic!("{e}\n{}", ctx(&s, &pebble)));
    assert_eq!(answer.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(answer.version, http::Version::HTTP_2);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("\"instance\""), "{}", answer.body);
    // The application sees the original scheme and host.
    let headers = block_on(https_get(s.https, domain, &roots, "/headers", &[b"h2"])).unwrap();
    assert!(
        headers.body.contains("x-forwarded-proto: https"),
        "{}",
        headers.body
    );
    // HTTP/1.1 by ALPN works too.
    let h1 = block_on(https_get(s.https, domain, &roots, "/", &[b"http/1.1"])).unwrap();
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(h1.status, 200);

    // Plain HTTP for a domain with a certificate: 308 to HTTPS; the ACME path never is.
    let redirect = block_on(plain_get(s.http, domain, "/x?y=1")).unwrap();
    assert_eq!(redirect.0, 308);
    assert_eq!(
        redirect.1.as_deref(),
        Some(format!("https://{domain}:{}/x?y=1", s.https.port()).as_str())
    );
    let challenge = block_on(plain_get(
        s.http,
        domain,
        "/.well-known/acme-challenge/unknown",
    ))
    .unwrap();
    assert_eq!(
        challenge.0, 404,
        "the ACME path is answered by orca, not redirected"
    );

    // The unreachable challenge: a clear error with the CA's reason in status, retried,
    // while plain HTTP keeps serving that domain.
    let failed = s.wait_service("edge", "dead", "failing ACME", |v| {
        v["tls"]["failures"].as_u64().unwrap_or(0) >= 2
    });
    assert_eq!(failed["tls"]["state"], "failed", "{failed:#}");
    let error = failed["tls"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("127.0.0.2") || error.to_lowercase().contains("connection refused"),
        "the CA's reason names the failed connection: {error}"
    );
    assert!(failed["tls"]["next_attempt_at"].as_u64().is_some());
    let text = s.cli(&["status"]);
    assert!(text.contains("tls: failed"), "{text}");
    let (code, body) = s.proxy_get(dead, "/").unwrap();
    assert_eq!(
        code, 200,
        "plain HTTP keeps working without a certificate: {body}"
    );

    // Renewal under load: fresh TLS connections (each sees the certificate served at its
    // handshake) for several renewal periods; not one may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let roots = roots.clone();
        let https = s.https;
        std::thread::spawn(move || {
            block_on(async move {
                let (mut ok, mut failures, mut leaves) = (0u32, Vec::new(), BTreeSet::new());
                while !stop.load(Ordering::Relaxed) {
                    match https_get(https, domain, &roots, "/", &[b"h2", b"http/1.1"]).await {
                        Ok(a) if a.status == 200 => {
                            ok += 1;
                            leaves.insert(a.leaf);
                        }
                        Ok(a) => failures.push(format!("status {}: {}", a.status, a.body)),
                        Err(e) => failures.push(e),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (ok, failures, leaves)
            })
        })
    };
    std::thread::sleep(Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    let (ok, failures, leaves) = load.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during renewal: {:?}\n{}",
        failures.len(),
        ok as usize + failures.len(),
        &failures[..failures.len().min(5)],
        ctx(&s, &pebble)
    );
    assert!(ok > 50, "only {ok} requests in 10 s");
    assert!(
        leaves.len() >= 2,
        "the certificate was renewed (and swapped in) during the load: {} distinct leaves seen\n{}",
        leaves.len(),
        ctx(&s, &pebble)
    );
    assert!(
        s.log().contains("action=\"renew\"") || s.log().contains("action=renew"),
        "renewals are logged"
    );
}

/// GET over plain HTTP: (status, Location).
async fn plain_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> Result<(u16, Option<String>), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((response.status().as_u16(), location))
}

#[test]
fn own_certificate_is_served_websockets_work_over_tls_and_others_stay_on_plain_http() {
    let s = Server::start();
    let own = "own.orca.test";
    let plain = "plain.orca.test";
    let pki = test_pki(&[own]);
    let dir = s.write_service(
        "byo",
        &format!(
            "{}\n{}",
            testapp_service(
                "own",
                1,
                own,
                "tls_cert = \"certs/cert.pem\"\ntls_key = \"certs/key.pem\""
            ),
            testapp_service("plain", 1, plain, "")
        ),
    );
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    std::fs::write(dir.join("certs/cert.pem"), &pki.cert_pem).unwrap();
    std::fs::write(dir.join("certs/key.pem"), &pki.key_pem).unwrap();
    s.cli(&["deploy", "--timeout-secs", "120"]);

    let roots = pem_certs(&pki.ca_pem);
    wait_for(
        "the own certificate to be served",
        Duration::from_secs(30),
        || block_on(https_get(s.https, own, &roots, "/", &[b"h2"])).is_ok_and(|a| a.status == 200),
        || format!("{:#}\n{}", s.status(), tail(&s.log(), 40)),
    );
    let own_status = s.service("byo", "own");
    assert_eq!(own_status["tls"]["state"], "active", "{own_status:#}");
    assert_eq!(own_status["tls"]["source"], "manual", "{own_status:#}");

    // The private key is in the store only sealed.
    let key_body: String = pki
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let db = std::fs::read(s.home().join("cluster.db")).unwrap();
    let needle = &key_body.as_bytes()[..32];
    assert!(
        !db.windows(needle.len()).any(|w| w == needle),
        "the private key must not be stored in clear"
    );

    // WebSocket (HTTP/1.1 upgrade) over TLS: the test app echoes after its 101.
    let echoed = block_on(async {
        let mut tls = tls_connect(s.https, own, &roots, &[b"http/1.1"]).await?;
        tls.write_all(
            format!(
                "GET /ws HTTP/1.1\r\nHost: {own}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            head.push(byte[0]);
        }
        tls.write_all(b"ping over tls").await.map_err(|e| e.to_string())?;
        let mut echo = [0u8; 13];
        tls.read_exact(&mut echo).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((String::from_utf8_lossy(&head).to_string(), echo.to_vec()))
    })
    .unwrap();
    assert!(echoed.0.starts_with("HTTP/1.1 101"), "{}", echoed.0);
    assert_eq!(echoed.1, b"ping over tls");

    // No certificate: plain HTTP serves (no redirect), and TLS for that name fails.
    let (code, body) = s.proxy_get(plain, "/").unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(s.service("byo", "plain")["tls"]["state"], "none");
    let refused = block_on(https_get(s.https, plain, &roots, "/", &[b"h2"]));
    assert!(refused.is_err(), "no certificate for {plain}: {refused:?}");
    // The domain with a certificate redirects plain HTTP.
    let (code, _) = s.proxy_get(own, "/").unwrap();
    assert_eq!(code, 308);

    // A key that does not match its certificate is refused at deploy, naming the service.
    let other = test_pki(&[own]);
    std::fs::write(dir.join("certs/key.pem"), &other.key_pem).unwrap();
    let out = s.cli_in(ADMIN, None, &["deploy", "--no-wait"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("byo/own") && err.contains("does not match"),
        "{err}"
    );
    assert!(!err.contains("PRIVATE KEY"), "{err}");
}
