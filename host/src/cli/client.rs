//! The CLI's API client: where to connect, with which token, and error reporting.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

/// `$ORCA_HOME/credentials`, written by `orca server` at first start.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    api: Option<String>,
    token: Option<String>,
}

/// After a rotation: if the credentials file holds `old`, writes `new` in its place (0600)
/// and returns the file's path.
pub fn replace_credentials_token(
    home: &Path,
    old: Option<&str>,
    new: &str,
) -> anyhow::Result<Option<PathBuf>> {
    let path = crate::server::credentials_path(home);
    let (Some(old), Ok(text)) = (old, std::fs::read_to_string(&path)) else {
        return Ok(None);
    };
    let creds: Credentials = toml::from_str(&text).unwrap_or_default();
    if creds.token.as_deref() != Some(old) || new.is_empty() {
        return Ok(None);
    }
    crate::server::write_private(&path, &text.replace(old, new))?;
    Ok(Some(path))
}

/// A connection to one orca API.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// Resolves the address and token: flags/env first, then the credentials file.
    pub fn new(api: Option<String>, token: Option<String>, home: &Path) -> anyhow::Result<Client> {
        let creds_path = crate::server::credentials_path(home);
        let creds: Credentials = match std::fs::read_to_string(&creds_path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("reading {}", creds_path.display()))?,
            Err(_) => Credentials::default(),
        };
        let base = api
            .or(creds.api)
            .unwrap_or_else(|| "http://127.0.0.1:6880".to_string())
            .trim_end_matches('/')
            .to_string();
        crate::process::crypto_provider();
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Client {
            http,
            base,
            token: token.or(creds.token),
        })
    }

    /// The token this client sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request and returns the JSON answer, or an error naming the API's reason.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let resp = self
            .send(method, path, body, Some(Duration::from_secs(60)))
            .await?;
        let status = resp.status();
        let text = resp.text().await.context("reading the API's answer")?;
        if !status.is_success() {
            return Err(api_error(status, &text));
        }
        serde_json::from_str(&text).with_context(|| format!("the API answered non-JSON: {text}"))
    }

    /// Sends raw bytes (a plugin component) and returns the JSON answer.
    pub async fn send_bytes(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{}", self.base, path);
        let mut req = self
            .http
            .request(method, &url)
            .timeout(Duration::from_secs(120))
            .header(reqwest::header::CONTENT_TYPE, "application/wasm")
            .body(body);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the orca API at {}: {}",
                self.base,
                root_cause(&e)
            )
        })?;
        let status = resp.status();
        let text = resp.text().await.context("reading the API's answer")?;
        if !status.is_success() {
            return Err(api_error(status, &text));
        }
        serde_json::from_str(&text).with_context(|| format!("the API answered non-JSON: {text}"))
    }

    /// Sends a request and returns the raw response (for streams such as logs).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        timeout: Option<Duration>,
    ) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the orca API at {}: {}",
                self.base,
                root_cause(&e)
            )
        })
    }

    /// Fails with the API's reason unless the response is a success.
    pub async fn check(resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        Err(api_error(status, &text))
    }
}

fn api_error(status: StatusCode, text: &str) -> anyhow::Error {
    let reason = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| text.trim().to_string());
    match status {
        StatusCode::UNAUTHORIZED => {
            anyhow!("{reason} (set ORCA_TOKEN, pass --token, or check $ORCA_HOME/credentials)")
        }
        _ => anyhow!("{reason} (HTTP {})", status.as_u16()),
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut last = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        last = inner.to_string();
        src = inner.source();
    }
    last
}

/// Default state dir: `$ORCA_HOME` or `~/.orca`.
pub fn default_home() -> PathBuf {
    home_dir().join(".orca")
}

/// Default config dir: `$ORCA_CONFIG_DIR` or `~/orca`.
pub fn default_config_dir() -> PathBuf {
    home_dir().join("orca")
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// Decodes what [`enc`] encoded (`%XX` escapes; anything malformed is kept as is).
pub fn dec(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes one path segment or query value (names are validated, but be strict).
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
