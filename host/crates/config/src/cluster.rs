//! `cluster.toml`: cluster-wide settings and the API tokens with their roles.

use std::fmt;
use std::fs;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, FieldPath, Invalid};
use crate::names::validate_name;
use crate::source::TomlDoc;
use crate::units::Memory;

/// The name of the cluster configuration file inside the config directory.
pub const CLUSTER_FILE: &str = "cluster.toml";
/// The shortest token value accepted; shorter ones are guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including draining nodes and managing tokens.
    Admin,
    /// Deploy, stop and scale services; read status and logs (CI/CD).
    Deployer,
    /// Read status and logs only.
    Viewer,
}

impl Role {
    /// Every role, most powerful first.
    pub const ALL: [Role; 3] = [Role::Admin, Role::Deployer, Role::Viewer];

    /// The lowercase name used in files, the CLI and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Deployer => "deployer",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                ConfigError::new(format!(
                    "invalid role {s:?}: expected one of admin, deployer, viewer"
                ))
            })
    }
}

/// The whole of `cluster.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The `[cluster]` table.
    #[serde(default)]
    pub cluster: ClusterSettings,
    /// The `[[token]]` tables.
    #[serde(default, rename = "token")]
    pub tokens: Vec<TokenConfig>,
    /// The `[plugins]` table: limits of plugin calls.
    #[serde(default)]
    pub plugins: PluginSettings,
    /// The `[proxy]` table: timeouts and limits of the HTTP/HTTPS proxy.
    #[serde(default)]
    pub proxy: ProxySettings,
    /// The `[api]` table: timeouts and connection caps of the REST API listener.
    #[serde(default)]
    pub api: ApiSettings,
    /// The `[acme]` table: automatic certificates. Absent: no ACME (services are served on
    /// plain HTTP, or HTTPS with their own `tls_cert`).
    #[serde(default)]
    pub acme: Option<AcmeSettings>,
    /// The `[build]` table: how git-build reaches repositories and how long a build may take.
    #[serde(default)]
    pub build: BuildSettings,
    /// The `[[notify]]` tables: outbound webhooks for matching events.
    #[serde(default, rename = "notify")]
    pub notify: Vec<NotifyConfig>,
    /// The `[nodes]` table: agent nodes (liveness, published port range).
    #[serde(default)]
    pub nodes: NodesSettings,
    /// The `[volumes]` table: which host paths services may bind-mount.
    #[serde(default)]
    pub volumes: VolumeSettings,
    /// The `[update]` table: where `orca update` finds the release index.
    #[serde(default)]
    pub update: UpdateSettings,
    /// The `[backup]` table: scheduled, verified backups and their retention.
    #[serde(default)]
    pub backup: BackupSettings,
}

/// `orca update` (`[update]` in cluster.toml).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSettings {
    /// The signed release index (`http://` or `https://`; its signature is at `url` +
    /// `.minisig`). Absent: the project's release location.
    #[serde(default)]
    pub url: Option<String>,
}

/// Backups (`[backup]` in cluster.toml).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSettings {
    /// When a backup of everything runs by itself, as a cron pattern in UTC: five fields
    /// (`"0 3 * * *"`, minute granularity) or six with seconds first (`"*/5 * * * * *"`).
    /// Absent: no scheduled backups.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Retention: after a backup, only the `keep` newest backups are kept, older ones are
    /// deleted (at least 1; absent: every backup is kept).
    #[serde(default)]
    pub keep: Option<u32>,
    /// How long verifying one backup (restoring it into a scratch volume and reading it
    /// back) may take, 1 to 86400 seconds (default 600).
    #[serde(default = "default_verify_timeout")]
    pub verify_timeout_secs: u64,
}

fn default_verify_timeout() -> u64 {
    600
}

impl Default for BackupSettings {
    fn default() -> Self {
        BackupSettings {
            schedule: None,
            keep: None,
            verify_timeout_secs: default_verify_timeout(),
        }
    }
}

fn check_backup_settings(b: &BackupSettings) -> Result<(), Invalid> {
    if let Some(schedule) = &b.schedule {
        if let Err(e) = schedule.parse::<croner::Cron>() {
            return Err(Invalid::new(
                FieldPath::key("backup").k("schedule"),
                format!(
                    "schedule {schedule:?} is not a cron pattern ({e}): expected five fields (\"0 3 * * *\") or six with seconds first (\"*/5 * * * * *\")"
                ),
            ));
        }
    }
    if b.keep == Some(0) {
        return Err(Invalid::new(
            FieldPath::key("backup").k("keep"),
            "keep = 0 would delete every backup: expected at least 1, or leave it out to keep all"
                .to_string(),
        ));
    }
    if !(1..=86_400).contains(&b.verify_timeout_secs) {
        return Err(Invalid::new(
            FieldPath::key("backup").k("verify_timeout_secs"),
            format!(
                "verify_timeout_secs = {} is out of range: expected 1 to 86400",
                b.verify_timeout_secs
            ),
        ));
    }
    Ok(())
}

/// Mounts (`[volumes]` in cluster.toml).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSettings {
    /// Absolute host directories under which services may bind-mount host paths
    /// (`host_paths = ["/srv/orca"]`); default none: no host path may be mounted.
    #[serde(default)]
    pub host_paths: Vec<String>,
}

fn check_volume_settings(v: &VolumeSettings) -> Result<(), Invalid> {
    for (i, prefix) in v.host_paths.iter().enumerate() {
        let path = std::path::Path::new(prefix);
        let normal = path.is_absolute()
            && path.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::RootDir | std::path::Component::Normal(_)
                )
            });
        if !normal || path.parent().is_none() {
            return Err(Invalid::new(
                FieldPath::key("volumes").k("host_paths").i(i),
                format!(
                    "host path prefix {prefix:?} is invalid: expected an absolute directory other than \"/\", without '.' or '..', e.g. \"/srv/orca\""
                ),
            ));
        }
    }
    Ok(())
}

/// Agent nodes (`[nodes]` in cluster.toml).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodesSettings {
    /// A node without heartbeat for this long is `down` and its instances are replaced
    /// (default 15 s; agents heartbeat every 5 s).
    #[serde(default = "default_node_ttl")]
    pub node_ttl_secs: u64,
    /// Host ports instances on remote nodes are published on, on the node's advertise
    /// address only: `"FIRST-LAST"` (default `"20000-29999"`).
    #[serde(default = "default_host_ports")]
    pub host_ports: String,
    /// Address pools (IPv4 CIDRs, each /8 to /24) the cluster's swarm takes its overlay
    /// networks' /24 subnets from (e.g. `["10.20.0.0/16"]`); empty: the engine's default
    /// (10.0.0.0/8). Read when the swarm is made, at the first node's join.
    #[serde(default)]
    pub overlay_pools: Vec<String>,
    /// How many instances of draining nodes are replaced at once, cluster-wide (each
    /// service also at most its `max_unavailable`); default 2.
    #[serde(default = "default_drain_parallel")]
    pub drain_parallel: u32,
}

fn default_drain_parallel() -> u32 {
    2
}

fn default_node_ttl() -> u64 {
    15
}
fn default_host_ports() -> String {
    "20000-29999".into()
}

impl Default for NodesSettings {
    fn default() -> Self {
        NodesSettings {
            node_ttl_secs: default_node_ttl(),
            host_ports: default_host_ports(),
            overlay_pools: Vec::new(),
            drain_parallel: default_drain_parallel(),
        }
    }
}

impl NodesSettings {
    /// `host_ports` as an inclusive range; `None` if malformed (refused at load).
    pub fn host_port_range(&self) -> Option<(u16, u16)> {
        let (a, b) = self.host_ports.split_once('-')?;
        let (a, b) = (a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?);
        (a >= 1024 && a <= b).then_some((a, b))
    }
}

/// Whether `pool` is an IPv4 CIDR with a prefix of 8 to 24 and no host bits set.
fn is_overlay_pool(pool: &str) -> bool {
    let Some((ip, len)) = pool.split_once('/') else {
        return false;
    };
    let (Ok(ip), Ok(len)) = (ip.parse::<std::net::Ipv4Addr>(), len.parse::<u32>()) else {
        return false;
    };
    (8..=24).contains(&len) && u32::from(ip) & (u32::MAX >> len) == 0
}

fn check_nodes(nodes: &NodesSettings) -> Result<(), Invalid> {
    if nodes.node_ttl_secs == 0 {
        return Err(Invalid::new(
            FieldPath::key("nodes").k("node_ttl_secs"),
            "node_ttl_secs must be at least 1".to_string(),
        ));
    }
    if nodes.host_port_range().is_none() {
        return Err(Invalid::new(
            FieldPath::key("nodes").k("host_ports"),
            format!(
                "host_ports {:?} is invalid: expected \"FIRST-LAST\" with 1024 <= FIRST <= LAST <= 65535",
                nodes.host_ports
            ),
        ));
    }
    if nodes.drain_parallel == 0 {
        return Err(Invalid::new(
            FieldPath::key("nodes").k("drain_parallel"),
            "drain_parallel must be at least 1".to_string(),
        ));
    }
    for (i, pool) in nodes.overlay_pools.iter().enumerate() {
        if !is_overlay_pool(pool) {
            return Err(Invalid::new(
                FieldPath::key("nodes").k("overlay_pools").i(i),
                format!(
                    "overlay pool {pool:?} is invalid: expected an IPv4 CIDR with a prefix of /8 to /24 \
                     and no host bits, e.g. \"10.20.0.0/16\""
                ),
            ));
        }
    }
    Ok(())
}

/// One `[[notify]]` table: events matching `events` are POSTed as JSON to `url`, signed
/// with HMAC-SHA256 under `secret` (header `X-Orca-Signature-256: sha256=<hex>`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Name, shown in delivery status.
    pub name: String,
    /// `http://` or `https://` URL receiving the POSTs.
    pub url: String,
    /// HMAC key of the signature.
    pub secret: String,
    /// Event kinds (`instance.crashed`) or families (`rollout`); empty: every event of
    /// severity `error`.
    #[serde(default)]
    pub events: Vec<String>,
    /// Only events of this project.
    #[serde(default)]
    pub project: Option<String>,
    /// Attempts per event before giving up (back-off doubling from 500 ms, at most 60 s).
    #[serde(default = "default_notify_attempts")]
    pub attempts: u32,
}

fn default_notify_attempts() -> u32 {
    10
}

/// Debug output never shows the secret.
impl fmt::Debug for NotifyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotifyConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("events", &self.events)
            .field("project", &self.project)
            .field("attempts", &self.attempts)
            .finish()
    }
}

/// Timeouts and limits of the proxy (`[proxy]` in cluster.toml); each stops one kind of
/// slow or hostile peer from holding the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    /// Longest TCP connect to a backend, in milliseconds (default 3000).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest wait for a backend's response head, in seconds (default 60): 504 after.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Longest time a client may take to send its request head, and the idle keep-alive
    /// time of client connections, in seconds (default 10).
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_secs: u64,
    /// Longest pause of a client while sending a request body, in seconds (default 30):
    /// 408 after.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout_secs: u64,
    /// How long an idle pooled backend connection is kept, in seconds (default 60).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// The largest request body forwarded (default "64Mi"); 413 beyond.
    #[serde(default = "default_max_request_body")]
    pub max_request_body: Memory,
}

fn default_connect_timeout_ms() -> u64 {
    3000
}
fn default_request_timeout() -> u64 {
    60
}
fn default_header_read_timeout() -> u64 {
    10
}
fn default_body_read_timeout() -> u64 {
    30
}
fn default_idle_timeout() -> u64 {
    60
}
fn default_max_request_body() -> Memory {
    Memory(64 << 20)
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            connect_timeout_ms: default_connect_timeout_ms(),
            request_timeout_secs: default_request_timeout(),
            header_read_timeout_secs: default_header_read_timeout(),
            body_read_timeout_secs: default_body_read_timeout(),
            idle_timeout_secs: default_idle_timeout(),
            max_request_body: default_max_request_body(),
        }
    }
}

/// Timeouts and connection caps of the REST API listener (`[api]` in cluster.toml): idle or
/// unfinished connections can never hold the API, nor the process's file descriptors.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// Longest time a client may take to send its request head, and the idle keep-alive time
    /// of API connections, in seconds (default 10).
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_secs: u64,
    /// Most open API connections (default 4096); more are closed as soon as accepted.
    #[serde(default = "default_api_max_connections")]
    pub max_connections: u32,
    /// Most open API connections from one source address (default 512).
    #[serde(default = "default_api_max_per_source")]
    pub max_connections_per_source: u32,
}

fn default_api_max_connections() -> u32 {
    4096
}
fn default_api_max_per_source() -> u32 {
    512
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            header_read_timeout_secs: default_header_read_timeout(),
            max_connections: default_api_max_connections(),
            max_connections_per_source: default_api_max_per_source(),
        }
    }
}

fn check_api(api: &ApiSettings) -> Result<(), Invalid> {
    for (key, value) in [
        ("header_read_timeout_secs", api.header_read_timeout_secs),
        ("max_connections", u64::from(api.max_connections)),
        (
            "max_connections_per_source",
            u64::from(api.max_connections_per_source),
        ),
    ] {
        if value == 0 {
            return Err(Invalid::new(
                FieldPath::key("api").k(key),
                format!("{key} must be at least 1"),
            ));
        }
    }
    Ok(())
}

fn check_proxy(proxy: &ProxySettings) -> Result<(), Invalid> {
    for (key, value) in [
        ("connect_timeout_ms", proxy.connect_timeout_ms),
        ("request_timeout_secs", proxy.request_timeout_secs),
        ("header_read_timeout_secs", proxy.header_read_timeout_secs),
        ("body_read_timeout_secs", proxy.body_read_timeout_secs),
        ("idle_timeout_secs", proxy.idle_timeout_secs),
        ("max_request_body", proxy.max_request_body.0),
    ] {
        if value == 0 {
            return Err(Invalid::new(
                FieldPath::key("proxy").k(key),
                format!("{key} must be at least 1"),
            ));
        }
    }
    Ok(())
}

/// Let's Encrypt's production directory, the default `[acme] directory`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory, `directory = "letsencrypt-staging"`.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// Automatic certificates by ACME (RFC 8555) HTTP-01 (`[acme]` in cluster.toml).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSettings {
    /// Contact address of the ACME account (expiry notices from the CA).
    pub email: String,
    /// The CA's directory URL (`https://...`), or `letsencrypt` / `letsencrypt-staging`.
    #[serde(default = "default_directory")]
    pub directory: String,
    /// An extra root certificate (PEM file; relative paths are relative to the config dir)
    /// trusted for the TLS connection to the directory, for private or test CAs (Pebble).
    #[serde(default)]
    pub ca_root: Option<String>,
    /// Renew a certificate this many days before it expires (default 30).
    #[serde(default = "default_renew_before_days")]
    pub renew_before_days: u32,
    /// Seconds between checks of every certificate's expiry (default 3600).
    #[serde(default = "default_check_interval")]
    pub check_interval_secs: u64,
    /// Seconds before the first retry of a failed order; doubles per failure (default 60).
    #[serde(default = "default_retry_initial")]
    pub retry_initial_secs: u64,
    /// Longest wait between retries of a failed order (default 21600, 6 hours).
    #[serde(default = "default_retry_max")]
    pub retry_max_secs: u64,
}

fn default_directory() -> String {
    "letsencrypt".to_string()
}
fn default_renew_before_days() -> u32 {
    30
}
fn default_check_interval() -> u64 {
    3600
}
fn default_retry_initial() -> u64 {
    60
}
fn default_retry_max() -> u64 {
    6 * 3600
}

impl AcmeSettings {
    /// The directory URL, with the `letsencrypt` shorthands resolved.
    pub fn directory_url(&self) -> &str {
        match self.directory.as_str() {
            "letsencrypt" => LETS_ENCRYPT,
            "letsencrypt-staging" => LETS_ENCRYPT_STAGING,
            other => other,
        }
    }
}

fn check_acme(acme: &AcmeSettings) -> Result<(), Invalid> {
    let at = |key: &str| FieldPath::key("acme").k(key);
    let email = acme.email.as_str();
    let valid_email = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && email.bytes().all(|b| b.is_ascii_graphic())
        }
        None => false,
    };
    if !valid_email {
        return Err(Invalid::new(
            at("email"),
            format!("invalid email {email:?}: expected an address such as \"ops@example.com\""),
        ));
    }
    let url = acme.directory_url();
    let host = url.strip_prefix("https://").unwrap_or("");
    if host.is_empty() || host.starts_with('/') || url.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(Invalid::new(
            at("directory"),
            format!(
                "invalid ACME directory {:?}: expected an https:// URL, \"letsencrypt\" or \"letsencrypt-staging\"",
                acme.directory
            ),
        ));
    }
    if acme.ca_root.as_deref().is_some_and(|p| p.trim().is_empty()) {
        return Err(Invalid::new(
            at("ca_root"),
            "empty `ca_root`: expected the path of a PEM root certificate, or leave it out",
        ));
    }
    if !(1..=365).contains(&acme.renew_before_days) {
        return Err(Invalid::new(
            at("renew_before_days"),
            format!(
                "renew_before_days {} is out of range: allowed 1 to 365",
                acme.renew_before_days
            ),
        ));
    }
    for (key, value) in [
        ("check_interval_secs", acme.check_interval_secs),
        ("retry_initial_secs", acme.retry_initial_secs),
        ("retry_max_secs", acme.retry_max_secs),
    ] {
        if value == 0 {
            return Err(Invalid::new(at(key), format!("{key} must be at least 1")));
        }
    }
    if acme.retry_max_secs < acme.retry_initial_secs {
        return Err(Invalid::new(
            at("retry_max_secs"),
            format!(
                "retry_max_secs {} is less than retry_initial_secs {}",
                acme.retry_max_secs, acme.retry_initial_secs
            ),
        ));
    }
    Ok(())
}

/// git-build settings (`[build]` in cluster.toml).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSettings {
    /// Private key for `ssh://` and `git@host:path` repositories (absolute path).
    #[serde(default)]
    pub ssh_key: Option<String>,
    /// `known_hosts` file for ssh repositories (absolute path); without it, a host's key is
    /// accepted the first time and pinned in `$ORCA_HOME/known_hosts`.
    #[serde(default)]
    pub known_hosts: Option<String>,
    /// Longest a build (checkout + image build) may take, in seconds (default 1800).
    #[serde(default = "default_build_timeout")]
    pub timeout_secs: u64,
}

fn default_build_timeout() -> u64 {
    1800
}

impl Default for BuildSettings {
    fn default() -> Self {
        BuildSettings {
            ssh_key: None,
            known_hosts: None,
            timeout_secs: default_build_timeout(),
        }
    }
}

/// Limits of WebAssembly plugin calls (`[plugins]` in cluster.toml).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSettings {
    /// Deadline of a strategy, placement or webhook call in milliseconds (default 100).
    #[serde(default = "default_call_deadline")]
    pub call_deadline_ms: u64,
    /// Linear memory one plugin call may use, in MiB (default 64).
    #[serde(default = "default_plugin_memory")]
    pub memory_limit_mib: u64,
}

fn default_call_deadline() -> u64 {
    100
}
fn default_plugin_memory() -> u64 {
    64
}

impl Default for PluginSettings {
    fn default() -> Self {
        PluginSettings {
            call_deadline_ms: default_call_deadline(),
            memory_limit_mib: default_plugin_memory(),
        }
    }
}

fn default_name() -> String {
    "orca".to_string()
}
fn default_watchdog() -> u64 {
    30
}
fn default_health() -> u64 {
    10
}
fn default_stats() -> u64 {
    30
}

/// Cluster-wide settings, the `[cluster]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// Cluster name (default `orca`).
    #[serde(default = "default_name")]
    pub name: String,
    /// Seconds between watchdog passes over all instances (default 30).
    #[serde(default = "default_watchdog")]
    pub watchdog_interval_secs: u64,
    /// Default seconds between health probes (default 10).
    #[serde(default = "default_health")]
    pub health_interval_secs: u64,
    /// Seconds between container stats samples (default 30).
    #[serde(default = "default_stats")]
    pub stats_interval_secs: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            name: default_name(),
            watchdog_interval_secs: default_watchdog(),
            health_interval_secs: default_health(),
            stats_interval_secs: default_stats(),
        }
    }
}

/// One API token, a `[[token]]` table.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Token name, shown in logs and `orca token list`.
    pub name: String,
    /// The secret presented as `Authorization: Bearer <value>`.
    pub value: String,
    /// What the token may do.
    pub role: Role,
}

/// Debug output never shows the token's value, so configs can be logged.
impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .field("role", &self.role)
            .finish()
    }
}

/// Parses and checks `cluster.toml` (labelled `file_label` in errors): a valid cluster name,
/// intervals of at least one second, valid and unique token names, and token values of at
/// least 16 visible ASCII characters, each used once. Messages never quote a token value.
pub fn parse_cluster_file(file_label: &str, text: &str) -> Result<ClusterConfig, ConfigError> {
    let (config, doc): (ClusterConfig, _) = TomlDoc::parse(file_label, text)?;
    check_cluster(&config).map_err(|e| doc.error(&FieldPath::default(), e))?;
    Ok(config)
}

fn check_cluster(config: &ClusterConfig) -> Result<(), Invalid> {
    let at = |key: &str| FieldPath::key("cluster").k(key);
    let settings = &config.cluster;
    validate_name("cluster", &settings.name).map_err(|e| Invalid::new(at("name"), e.message))?;
    for (key, value) in [
        ("watchdog_interval_secs", settings.watchdog_interval_secs),
        ("health_interval_secs", settings.health_interval_secs),
        ("stats_interval_secs", settings.stats_interval_secs),
    ] {
        if value == 0 {
            return Err(Invalid::new(at(key), format!("{key} must be at least 1")));
        }
    }
    check_proxy(&config.proxy)?;
    check_api(&config.api)?;
    check_nodes(&config.nodes)?;
    check_volume_settings(&config.volumes)?;
    check_backup_settings(&config.backup)?;
    if let Some(acme) = &config.acme {
        check_acme(acme)?;
    }
    let plugins = &config.plugins;
    if !(1..=60_000).contains(&plugins.call_deadline_ms) {
        return Err(Invalid::new(
            FieldPath::key("plugins").k("call_deadline_ms"),
            format!(
                "call_deadline_ms {} is out of range: allowed 1 to 60000",
                plugins.call_deadline_ms
            ),
        ));
    }
    if !(1..=4096).contains(&plugins.memory_limit_mib) {
        return Err(Invalid::new(
            FieldPath::key("plugins").k("memory_limit_mib"),
            format!(
                "memory_limit_mib {} is out of range: allowed 1 to 4096",
                plugins.memory_limit_mib
            ),
        ));
    }
    let build = &config.build;
    if !(10..=86_400).contains(&build.timeout_secs) {
        return Err(Invalid::new(
            FieldPath::key("build").k("timeout_secs"),
            format!(
                "timeout_secs {} is out of range: allowed 10 to 86400",
                build.timeout_secs
            ),
        ));
    }
    for (key, value) in [
        ("ssh_key", &build.ssh_key),
        ("known_hosts", &build.known_hosts),
    ] {
        if let Some(path) = value {
            if !Path::new(path).is_absolute() {
                return Err(Invalid::new(
                    FieldPath::key("build").k(key),
                    format!("{key} must be an absolute path, got {path:?}"),
                ));
            }
        }
    }
    if let Some(url) = &config.update.url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Invalid::new(
                FieldPath::key("update").k("url"),
                format!("url {url:?} must start with http:// or https://"),
            ));
        }
    }
    for (i, n) in config.notify.iter().enumerate() {
        let at = |key: &str| FieldPath::key("notify").i(i).k(key);
        validate_name("notify", &n.name).map_err(|e| Invalid::new(at("name"), e.message))?;
        if !(n.url.starts_with("http://") || n.url.starts_with("https://")) {
            return Err(Invalid::new(
                at("url"),
                format!("url {:?} must start with http:// or https://", n.url),
            ));
        }
        if n.secret.len() < MIN_TOKEN_LEN {
            return Err(Invalid::new(
                at("secret"),
                format!(
                    "notify {:?} needs a secret of at least {MIN_TOKEN_LEN} characters",
                    n.name
                ),
            ));
        }
        if !(1..=100).contains(&n.attempts) {
            return Err(Invalid::new(
                at("attempts"),
                format!("attempts {} is out of range: allowed 1 to 100", n.attempts),
            ));
        }
        for (j, earlier) in config.notify[..i].iter().enumerate() {
            if earlier.name == n.name {
                return Err(Invalid::new(
                    at("name"),
                    format!(
                        "duplicate notify name {:?} (first defined at notify[{j}])",
                        n.name
                    ),
                ));
            }
        }
    }
    for (i, token) in config.tokens.iter().enumerate() {
        let at = |key: &str| FieldPath::key("token").i(i).k(key);
        validate_name("token", &token.name).map_err(|e| Invalid::new(at("name"), e.message))?;
        if token.value.len() < MIN_TOKEN_LEN || !token.value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Invalid::new(
                at("value"),
                format!(
                    "token {:?} has an unusable value: use at least {MIN_TOKEN_LEN} visible ASCII \
                     characters without spaces (e.g. 32 random hex digits)",
                    token.name
                ),
            ));
        }
        for (j, earlier) in config.tokens[..i].iter().enumerate() {
            if earlier.name == token.name {
                return Err(Invalid::new(
                    at("name"),
                    format!(
                        "duplicate token name {:?} (first defined at token[{j}])",
                        token.name
                    ),
                ));
            }
            if earlier.value == token.value {
                return Err(Invalid::new(
                    at("value"),
                    format!(
                        "tokens {:?} and {:?} have the same value; give each its own",
                        earlier.name, token.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Loads `config_dir/cluster.toml`; a missing file means all defaults and no tokens.
pub fn load_cluster_config(config_dir: &Path) -> Result<ClusterConfig, ConfigError> {
    let file = config_dir.join(CLUSTER_FILE);
    let label = file.display().to_string();
    match fs::read_to_string(&file) {
        Ok(text) => parse_cluster_file(&label, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ClusterConfig::default()),
        Err(e) => Err(ConfigError::new(format!("cannot read file: {e}")).with_file(label)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUE_A: &str = "aaaaaaaaaaaaaaaaaaaa";
    const VALUE_B: &str = "bbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn roles() {
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>().unwrap(), role);
        }
        assert_eq!(
            "root".parse::<Role>().unwrap_err().to_string(),
            "invalid role \"root\": expected one of admin, deployer, viewer"
        );
        assert!("Admin".parse::<Role>().is_err());
        assert_eq!(
            serde_json::to_string(&Role::Deployer).unwrap(),
            "\"deployer\""
        );
        assert!(Role::Admin < Role::Viewer);
    }

    #[test]
    fn defaults() {
        let c = parse_cluster_file("cluster.toml", "").unwrap();
        assert_eq!(c, ClusterConfig::default());
        assert_eq!(c.cluster.name, "orca");
        assert_eq!(
            (
                c.cluster.watchdog_interval_secs,
                c.cluster.health_interval_secs,
                c.cluster.stats_interval_secs
            ),
            (30, 10, 30)
        );
    }

    #[test]
    fn full_file() {
        let text = format!(
            "[cluster]\nname = \"prod\"\nwatchdog_interval_secs = 5\n\n\
             [[token]]\nname = \"ci\"\nvalue = \"{VALUE_A}\"\nrole = \"deployer\"\n\n\
             [[token]]\nname = \"ops\"\nvalue = \"{VALUE_B}\"\nrole = \"admin\"\n"
        );
        let c = parse_cluster_file("cluster.toml", &text).unwrap();
        assert_eq!(c.cluster.name, "prod");
        assert_eq!(c.cluster.watchdog_interval_secs, 5);
        assert_eq!(c.cluster.stats_interval_secs, 30);
        assert_eq!(c.tokens.len(), 2);
        assert_eq!(
            (c.tokens[1].name.as_str(), c.tokens[1].role),
            ("ops", Role::Admin)
        );
        assert!(
            !format!("{c:?}").contains(VALUE_A),
            "Debug must redact token values"
        );
    }

    #[test]
    fn token_errors_never_quote_values() {
        let cases = [
            ("[[token]]\nname = \"a\"\nvalue = \"short\"\nrole = \"admin\"\n".to_string(), "cluster.toml:3:9: field `token[0].value`: token \"a\" has an unusable value"),
            (format!("[[token]]\nname = \"a\"\nvalue = \"{VALUE_A} x\"\nrole = \"admin\"\n"), "field `token[0].value`"),
            (format!("[[token]]\nname = \"a\"\nvalue = \"{VALUE_A}\"\nrole = \"admin\"\n[[token]]\nname = \"b\"\nvalue = \"{VALUE_A}\"\nrole = \"viewer\"\n"), "cluster.toml:7:9: field `token[1].value`: tokens \"a\" and \"b\" have the same value"),
            (format!("[[token]]\nname = \"a\"\nvalue = \"{VALUE_A}\"\nrole = \"admin\"\n[[token]]\nname = \"a\"\nvalue = \"{VALUE_B}\"\nrole = \"viewer\"\n"), "cluster.toml:6:8: field `token[1].name`: duplicate token name \"a\" (first defined at token[0])"),
            (format!("[[token]]\nname = \"A B\"\nvalue = \"{VALUE_A}\"\nrole = \"admin\"\n"), "field `token[0].name`: invalid token name"),
            (format!("[[token]]\nname = \"a\"\nvalue = \"{VALUE_A}\"\n"), "cluster.toml:1:1: field `token[0]`: missing field `role`"),
            ("[cluster]\nhealth_interval_secs = 0\n".to_string(), "cluster.toml:2:24: field `cluster.health_interval_secs`: health_interval_secs must be at least 1"),
            ("[cluster]\nname = \"\"\n".to_string(), "field `cluster.name`: invalid cluster name"),
            ("[cluster]\nnodes = 3\n".to_string(), "cluster.toml:2:1: field `cluster.nodes`: unknown field `nodes`"),
        ];
        for (text, expected) in cases {
            let got = parse_cluster_file("cluster.toml", &text)
                .unwrap_err()
                .to_string();
            assert!(got.contains(expected), "expected {expected:?} in {got:?}");
            assert!(!got.contains(VALUE_A), "{got}");
            assert!(!got.contains("short"), "{got}");
        }
    }

    #[test]
    fn load_missing_file_gives_defaults() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            load_cluster_config(dir.path()).unwrap(),
            ClusterConfig::default()
        );
        fs::write(dir.path().join(CLUSTER_FILE), "[cluster]\nname = \"lab\"\n").unwrap();
        assert_eq!(load_cluster_config(dir.path()).unwrap().cluster.name, "lab");
        fs::write(dir.path().join(CLUSTER_FILE), "[cluster\n").unwrap();
        let err = load_cluster_config(dir.path()).unwrap_err();
        assert_eq!(
            err.file.as_deref(),
            Some(dir.path().join(CLUSTER_FILE).display().to_string().as_str())
        );
        assert_eq!(err.line, Some(1));
    }
}
