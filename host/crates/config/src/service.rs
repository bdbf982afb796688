//! The service schema — [`ServiceSpec`] and its sub-tables — and the checks on one spec.
//!
//! The same types read a `[[service]]` table of `service.toml` and one element of the deploy
//! request's `"services"` array; the loaders in [`crate::load`] add locations to the errors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, FieldPath, Invalid};
use crate::names::{is_env_key, validate_domain, validate_name};
use crate::secrets::secret_refs;
use crate::units::Memory;
use crate::volumes::{parse_mount, Mount};

/// The project a spec belongs to when it names none.
pub const DEFAULT_PROJECT: &str = "default";
/// The most replicas one service may ask for.
pub const MAX_REPLICAS: u32 = 100;
/// The most CPUs one instance may ask for.
pub const MAX_CPU: f64 = 1024.0;
/// Docker refuses memory limits below 6 MiB; reject them here with a clearer message.
pub const MIN_MEMORY: u64 = 6 << 20;
/// The strategies built into orca; others are installed plugins or `.wasm` components.
pub const BUILTIN_STRATEGIES: [&str; 2] = ["rolling", "canary"];

fn default_replicas() -> u32 {
    1
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One service: what to run, how many, how to reach and check it, and how to roll it out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Service name, unique within its project (a DNS label).
    pub name: String,
    /// Project (namespace). Only the deploy JSON sets it; in `service.toml` it is the
    /// directory's name, filled in by the loader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Container image; required unless `build` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Desired number of instances, 0 to 100 (default 1).
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// Container port the proxy routes to and probes use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Hostname the proxy routes to this service; unique across all services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Short form of a readiness probe: the HTTP path, starting with `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// Joins the network shared across projects.
    #[serde(default, skip_serializing_if = "is_false")]
    pub internal: bool,
    /// Environment; values may reference secrets as `${secrets.KEY}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Memory and CPU limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Node pinning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Readiness probe: only ready instances receive traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Probe>,
    /// Liveness probe: an instance failing it past the threshold is restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Probe>,
    /// Build the image from a git repository instead of using `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// Rollout strategy and its parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Deploy>,
    /// Extra network aliases (DNS labels) other services of the project reach this one by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Bring your own certificate: a PEM certificate chain (leaf first) for `domain`, as a
    /// path relative to the service file's directory. `orca deploy` reads it and sends its
    /// contents; the server serves it instead of asking ACME. Requires `tls_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<String>,
    /// The PEM private key of `tls_cert`, relative to the service file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<String>,
    /// Mounts, `SOURCE:TARGET[:OPTIONS]`: a named volume of the project
    /// (`"data:/var/lib/db"`) or a host path under `cluster.toml`'s `[volumes] host_paths`
    /// (`"/srv/orca/site:/site:ro"`); options `ro`, `shared` (see [`crate::volumes`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// Services of the same project that must have a ready instance before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// How backups treat this service's volumes (`[service.backup]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupOptions>,
}

/// A service's backup options (`[service.backup]`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct BackupOptions {
    /// Drain and stop the service while its volumes are read (for databases whose files
    /// are only consistent at rest), start it again after (default false).
    #[serde(default)]
    pub stop_during_backup: bool,
    /// A path, relative to the volume's root, that must exist in a verified backup of each
    /// of this service's volumes (e.g. `"PG_VERSION"`); verification fails without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_path: Option<String>,
}

/// Resource limits of one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory limit, e.g. `"512Mi"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// CPU limit in CPUs, greater than 0 and at most 1024 (e.g. `0.5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
}

/// Where instances may run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Pin to the node of exactly this name, else the one node whose name or address
    /// contains this text (an ambiguous pin is an error naming the candidates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Run only on nodes carrying all these labels (`labels = { zone = "eu-1" }`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// When its node is lost (`down`), keep its instances there this long before
    /// replacing them elsewhere: `"90s"`, `"2m"`, `"1h"` (at most 24h; default: replace
    /// at once). For services that prefer waiting for their node to a cold start elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_after: Option<String>,
}

impl Placement {
    /// `lost_after` in seconds (checked at load: a malformed value never gets here).
    pub fn lost_after_secs(&self) -> Option<u64> {
        self.lost_after
            .as_deref()
            .and_then(|d| parse_duration_secs(d).ok())
    }
}

/// The longest `lost_after`.
pub const MAX_LOST_AFTER_SECS: u64 = 24 * 3600;

/// Parses `30s`, `10m`, `2h`: a whole number and a unit.
fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let bad =
        || format!("{text:?} is not a duration: use a whole number and a unit, e.g. 90s, 2m, 1h");
    let unit = text.chars().last().ok_or_else(bad)?;
    let n: u64 = text[..text.len() - unit.len_utf8()]
        .parse()
        .map_err(|_| bad())?;
    Ok(match unit {
        's' => n,
        'm' => n.saturating_mul(60),
        'h' => n.saturating_mul(3600),
        _ => return Err(bad()),
    })
}

fn default_interval() -> u64 {
    10
}
fn default_timeout() -> u64 {
    3
}
fn default_threshold() -> u32 {
    3
}

/// A readiness or liveness probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// HTTP path to GET, starting with `/`; without a path the probe is a TCP connect to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Seconds between probes (default 10, at least 1).
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    /// Seconds one probe may take (default 3, at least 1).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Consecutive failures before the instance counts as failed (default 3, at least 1).
    #[serde(default = "default_threshold")]
    pub failure_threshold: u32,
    /// Seconds after start before the first probe (default 0).
    #[serde(default)]
    pub initial_delay_secs: u64,
}

impl Probe {
    /// A probe of `path` with the default timings.
    pub fn http(path: impl Into<String>) -> Self {
        Probe {
            path: Some(path.into()),
            ..Probe::default()
        }
    }
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            path: None,
            interval_secs: default_interval(),
            timeout_secs: default_timeout(),
            failure_threshold: default_threshold(),
            initial_delay_secs: 0,
        }
    }
}

/// Build the image from a git repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Build {
    /// Repository URL.
    pub repo: String,
    /// Branch to build (the repository's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Dockerfile path relative to the repository root (default `Dockerfile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// Build context relative to the repository root (default the root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

/// How a new revision is rolled out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    /// `rolling` (default), `canary`, or a path to a strategy component ending in `.wasm`
    /// (relative to the service's directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Percentage of traffic sent to the canary, 1 to 99.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_weight: Option<u8>,
    /// Rolling: extra instances allowed above `replicas` during a rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<u32>,
    /// Rolling: instances allowed to be unavailable during a rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<u32>,
    /// Canary: traffic percentages to step through, increasing, each 1 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<u8>>,
    /// Canary: seconds between steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_interval_secs: Option<u64>,
    /// Seconds an old instance is given to finish its requests before it is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout_secs: Option<u64>,
    /// Seconds a rollout may go without progress before the strategy rolls it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline_secs: Option<u64>,
    /// Free-form parameters passed to the strategy plugin (`[service.deploy.params]`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, serde_json::Value>,
}

impl ServiceSpec {
    /// The project, or [`DEFAULT_PROJECT`] when none is set.
    pub fn project(&self) -> &str {
        self.project.as_deref().unwrap_or(DEFAULT_PROJECT)
    }

    /// `project/name`, the service's identity across the cluster.
    pub fn key(&self) -> String {
        format!("{}/{}", self.project(), self.name)
    }

    /// The readiness probe to run: the `readiness` table (its path defaulting to `health`), else
    /// the `health` short form with default timings, else none.
    pub fn readiness_probe(&self) -> Option<Probe> {
        match (&self.readiness, &self.health) {
            (Some(probe), health) => {
                let mut probe = probe.clone();
                if probe.path.is_none() {
                    probe.path = health.clone();
                }
                Some(probe)
            }
            (None, Some(path)) => Some(Probe::http(path.clone())),
            (None, None) => None,
        }
    }

    /// The parsed `volumes` (checked at load: a malformed entry never gets here; one that
    /// does is left out).
    pub fn mounts(&self) -> Vec<Mount> {
        self.volumes
            .iter()
            .filter_map(|v| parse_mount(v).ok())
            .collect()
    }

    /// The first writable, not shared named volume: such a service runs at most one
    /// instance and rolls out stop-first (the old instance is gone before the new starts).
    pub fn exclusive_volume(&self) -> Option<Mount> {
        self.mounts().into_iter().find(Mount::is_exclusive)
    }

    /// Checks this spec on its own (not against other services). The error's field is relative
    /// to the spec, e.g. `resources.memory`; it carries no file or line.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_spec(self).map_err(|e| {
            let err = ConfigError::new(e.message);
            if e.path.is_empty() {
                err
            } else {
                err.with_field(e.path.to_string())
            }
        })
    }
}

/// The checks behind [`ServiceSpec::validate`], returning the path relative to the spec.
/// `tls_cert` and `tls_key` come together, name files, and need a `domain` to serve.
fn check_tls_paths(spec: &ServiceSpec) -> Result<(), Invalid> {
    let at = FieldPath::key;
    match (&spec.tls_cert, &spec.tls_key) {
        (None, None) => return Ok(()),
        (Some(_), None) => {
            return Err(Invalid::new(
                at("tls_cert"),
                "`tls_cert` is set but `tls_key` is not: give both, the certificate and its private key",
            ))
        }
        (None, Some(_)) => {
            return Err(Invalid::new(
                at("tls_key"),
                "`tls_key` is set but `tls_cert` is not: give both, the certificate and its private key",
            ))
        }
        (Some(_), Some(_)) => {}
    }
    for (field, value) in [("tls_cert", &spec.tls_cert), ("tls_key", &spec.tls_key)] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            return Err(Invalid::new(
                at(field),
                format!("empty `{field}`: expected the path of a PEM file"),
            ));
        }
    }
    if spec.domain.is_none() {
        return Err(Invalid::new(
            at("tls_cert"),
            "`tls_cert` is set but `domain` is not: a certificate is served for the service's domain",
        ));
    }
    Ok(())
}

pub(crate) fn check_spec(spec: &ServiceSpec) -> Result<(), Invalid> {
    let at = FieldPath::key;
    validate_name("service", &spec.name).map_err(|e| Invalid::new(at("name"), e.message))?;
    if let Some(project) = &spec.project {
        validate_name("project", project).map_err(|e| Invalid::new(at("project"), e.message))?;
    }
    match (&spec.image, &spec.build) {
        (None, None) => {
            return Err(Invalid::new(
                at("image"),
                format!(
                    "service {:?} has neither `image` nor a `build` table; set one",
                    spec.name
                ),
            ))
        }
        (Some(image), _) => check_image(image).map_err(|m| Invalid::new(at("image"), m))?,
        (None, Some(_)) => {}
    }
    if spec.replicas > MAX_REPLICAS {
        return Err(Invalid::new(
            at("replicas"),
            format!(
                "replicas {} is out of range: allowed 0 to {MAX_REPLICAS}",
                spec.replicas
            ),
        ));
    }
    if spec.port == Some(0) {
        return Err(Invalid::new(
            at("port"),
            "port 0 is out of range: allowed 1 to 65535",
        ));
    }
    if let Some(domain) = &spec.domain {
        validate_domain(domain).map_err(|m| Invalid::new(at("domain"), m))?;
        if spec.port.is_none() {
            return Err(Invalid::new(
                at("port"),
                format!("domain {domain:?} is set but `port` is not: the proxy needs the container port to route to"),
            ));
        }
    }
    check_tls_paths(spec)?;
    if let Some(health) = &spec.health {
        check_http_path(health).map_err(|m| Invalid::new(at("health"), m))?;
    }
    for (which, probe) in [("readiness", &spec.readiness), ("liveness", &spec.liveness)] {
        if let Some(probe) = probe {
            check_probe(probe).map_err(|(field, m)| Invalid::new(at(which).k(field), m))?;
        }
    }
    let probed = spec.health.is_some() || spec.readiness.is_some() || spec.liveness.is_some();
    if probed && spec.port.is_none() {
        return Err(Invalid::new(
            at("port"),
            "a health, readiness or liveness probe is set but `port` is not: probes need the container port",
        ));
    }
    for (key, value) in &spec.env {
        if !is_env_key(key) {
            return Err(Invalid::new(
                at("env").k(key),
                format!("invalid environment variable name {key:?}: use [A-Za-z_][A-Za-z0-9_]*"),
            ));
        }
        if let Some(c) = value.chars().find(|c| c.is_control() && *c != '\t') {
            return Err(Invalid::new(
                at("env").k(key),
                format!(
                    "environment variable {key:?} holds control character {:?}: values may hold any text but NUL and control characters (tab is allowed)",
                    c
                ),
            ));
        }
        secret_refs(value).map_err(|e| Invalid::new(at("env").k(key), e.message))?;
    }
    if let Some(resources) = &spec.resources {
        if let Some(memory) = resources.memory {
            if memory.0 < MIN_MEMORY {
                return Err(Invalid::new(
                    at("resources").k("memory"),
                    format!("memory {memory} is below Docker's minimum of 6Mi"),
                ));
            }
        }
        if let Some(cpu) = resources.cpu {
            if !(cpu.is_finite() && cpu > 0.0 && cpu <= MAX_CPU) {
                return Err(Invalid::new(
                    at("resources").k("cpu"),
                    format!("cpu {cpu} is out of range: allowed more than 0 and at most {MAX_CPU}"),
                ));
            }
        }
    }
    if let Some(placement) = &spec.placement {
        if let Some(node) = &placement.node {
            if node.trim().is_empty() {
                return Err(Invalid::new(
                    at("placement").k("node"),
                    "empty node: give a hostname or address substring, or remove the field",
                ));
            }
        }
        if let Some(lost) = &placement.lost_after {
            match parse_duration_secs(lost) {
                Ok(secs) if (1..=MAX_LOST_AFTER_SECS).contains(&secs) => {}
                Ok(secs) => {
                    return Err(Invalid::new(
                        at("placement").k("lost_after"),
                        format!("lost_after {secs}s is out of range: allowed 1s to 24h"),
                    ))
                }
                Err(e) => {
                    return Err(Invalid::new(
                        at("placement").k("lost_after"),
                        format!("lost_after {e}"),
                    ))
                }
            }
        }
    }
    if let Some(build) = &spec.build {
        check_build(build).map_err(|(field, m)| Invalid::new(at("build").k(field), m))?;
    }
    if let Some(deploy) = &spec.deploy {
        check_deploy(deploy).map_err(|(field, m)| Invalid::new(at("deploy").k(field), m))?;
    }
    for (i, alias) in spec.aliases.iter().enumerate() {
        validate_name("alias", alias).map_err(|e| Invalid::new(at("aliases").i(i), e.message))?;
        if spec.aliases[..i].contains(alias) {
            return Err(Invalid::new(
                at("aliases").i(i),
                format!("alias {alias:?} is listed twice"),
            ));
        }
    }
    check_volumes(spec)?;
    check_backup(spec)?;
    for (i, dep) in spec.depends_on.iter().enumerate() {
        let here = || at("depends_on").i(i);
        validate_name("service", dep).map_err(|e| Invalid::new(here(), e.message))?;
        if *dep == spec.name {
            return Err(Invalid::new(
                here(),
                format!("service {:?} depends on itself", spec.name),
            ));
        }
        if spec.depends_on[..i].contains(dep) {
            return Err(Invalid::new(
                here(),
                format!("dependency {dep:?} is listed twice"),
            ));
        }
    }
    Ok(())
}

/// The first dependency cycle of `graph` (service name → the names it depends on), as the
/// path that closes it: `["web", "db", "web"]`. Names that are not keys have no edges.
pub fn dependency_cycle<'a>(graph: &BTreeMap<&'a str, Vec<&'a str>>) -> Option<Vec<&'a str>> {
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut std::collections::BTreeSet<&'a str>,
    ) -> Option<Vec<&'a str>> {
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node);
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node);
        None
    }
    let mut done = std::collections::BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

/// Each mount parses, no container path is mounted twice, and a writable named volume that
/// is not shared has at most one writer (`replicas` at most 1).
fn check_backup(spec: &ServiceSpec) -> Result<(), Invalid> {
    let Some(path) = spec.backup.as_ref().and_then(|b| b.verify_path.as_ref()) else {
        return Ok(());
    };
    let p = std::path::Path::new(path);
    let plain = !path.is_empty()
        && p.is_relative()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if plain {
        Ok(())
    } else {
        Err(Invalid::new(
            FieldPath::key("backup").k("verify_path"),
            format!("verify_path {path:?} is invalid: expected a path relative to the volume's root, without '.' or '..', e.g. \"PG_VERSION\" or \"db/current\""),
        ))
    }
}

fn check_volumes(spec: &ServiceSpec) -> Result<(), Invalid> {
    let at = FieldPath::key;
    let mut mounts: Vec<Mount> = Vec::with_capacity(spec.volumes.len());
    for (i, entry) in spec.volumes.iter().enumerate() {
        let mount = parse_mount(entry).map_err(|m| Invalid::new(at("volumes").i(i), m))?;
        if let Some(earlier) = mounts.iter().find(|m| m.target == mount.target) {
            return Err(Invalid::new(
                at("volumes").i(i),
                format!(
                    "container path {:?} is mounted twice (also by {:?})",
                    mount.target,
                    spec.volumes[mounts.iter().position(|m| m == earlier).unwrap_or(0)]
                ),
            ));
        }
        mounts.push(mount);
    }
    let strategy = spec.deploy.as_ref().and_then(|d| d.strategy.as_deref());
    if let (Some("canary"), Some(m)) = (strategy, mounts.iter().find(|m| m.is_exclusive())) {
        let name = m.volume().unwrap_or_default();
        return Err(Invalid::new(
            at("deploy").k("strategy"),
            format!(
                "strategy canary runs the candidate beside the stable instance, but volume {name} is not shared (the service rolls out stop-first): use rolling, or declare it \"{name}:{}:shared\" if the application coordinates writers",
                m.target
            ),
        ));
    }
    if spec.replicas > 1 {
        if let Some(m) = mounts.iter().find(|m| m.is_exclusive()) {
            let name = m.volume().unwrap_or_default();
            return Err(Invalid::new(
                at("replicas"),
                format!(
                    "replicas {}: volume {name} is not shared: at most 1 replica; declare it \"{name}:{}:shared\" if the application coordinates writers",
                    spec.replicas, m.target
                ),
            ));
        }
    }
    Ok(())
}

fn check_image(image: &str) -> Result<(), String> {
    crate::image::check_image_reference(image)
}

fn check_http_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        Err(format!("invalid path {path:?}: must start with '/'"))
    } else if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(format!("invalid path {path:?}: must not contain spaces"))
    } else {
        Ok(())
    }
}

fn check_probe(probe: &Probe) -> Result<(), (&'static str, String)> {
    if let Some(path) = &probe.path {
        check_http_path(path).map_err(|m| ("path", m))?;
    }
    if probe.interval_secs == 0 {
        return Err((
            "interval_secs",
            "interval_secs must be at least 1".to_string(),
        ));
    }
    if probe.timeout_secs == 0 {
        return Err((
            "timeout_secs",
            "timeout_secs must be at least 1".to_string(),
        ));
    }
    if probe.failure_threshold == 0 {
        return Err((
            "failure_threshold",
            "failure_threshold must be at least 1".to_string(),
        ));
    }
    Ok(())
}

/// A relative path that stays inside the repository: no leading `/`, no `..` component.
fn check_repo_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.starts_with('/') || path.split(['/', '\\']).any(|part| part == "..")
    {
        Err(format!(
            "invalid path {path:?}: must be a non-empty path relative to the repository root, without '..'"
        ))
    } else {
        Ok(())
    }
}

fn check_build(build: &Build) -> Result<(), (&'static str, String)> {
    if build.repo.trim().is_empty() {
        return Err(("repo", "empty repo: expected a git URL".to_string()));
    }
    if let Some(branch) = &build.branch {
        if branch.is_empty() || branch.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(("branch", format!("invalid branch {branch:?}")));
        }
    }
    if let Some(dockerfile) = &build.dockerfile {
        check_repo_path(dockerfile).map_err(|m| ("dockerfile", m))?;
    }
    if let Some(context) = &build.context {
        check_repo_path(context).map_err(|m| ("context", m))?;
    }
    Ok(())
}

/// What a plugin reference may be: a built-in or installed plugin's name, a path to a
/// `.wasm` component (relative to the project directory; the CLI uploads it), or the
/// `sha256:<hex>` of an uploaded component. Whether it exists is checked by the server.
pub fn check_plugin_ref(reference: &str) -> Result<(), String> {
    let is_wasm = reference.len() > ".wasm".len() && reference.ends_with(".wasm");
    let is_hash = reference.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    let is_name = crate::names::validate_name("plugin", reference).is_ok();
    if is_wasm || is_hash || is_name {
        Ok(())
    } else {
        Err(format!(
            "invalid plugin reference {reference:?}: expected a plugin name (built-in: {}), a path to a .wasm component, or sha256:<64 hex digits>",
            BUILTIN_STRATEGIES.join(", ")
        ))
    }
}

fn check_deploy(deploy: &Deploy) -> Result<(), (&'static str, String)> {
    if let Some(strategy) = &deploy.strategy {
        check_plugin_ref(strategy).map_err(|m| ("strategy", m))?;
    }
    if let Some(weight) = deploy.canary_weight {
        if !(1..=99).contains(&weight) {
            return Err((
                "canary_weight",
                format!("canary_weight {weight} is out of range: allowed 1 to 99 (percent)"),
            ));
        }
    }
    if deploy.max_surge == Some(0) && deploy.max_unavailable == Some(0) {
        return Err((
            "max_unavailable",
            "max_surge and max_unavailable are both 0: a rollout could never make progress"
                .to_string(),
        ));
    }
    if let Some(steps) = &deploy.steps {
        if steps.is_empty() {
            return Err((
                "steps",
                "empty steps: list traffic percentages such as [10, 50]".to_string(),
            ));
        }
        for (i, step) in steps.iter().enumerate() {
            if !(1..=100).contains(step) {
                return Err((
                    "steps",
                    format!("step {step} is out of range: allowed 1 to 100 (percent)"),
                ));
            }
            if i > 0 && *step <= steps[i - 1] {
                return Err((
                    "steps",
                    format!("steps must increase: {} then {step}", steps[i - 1]),
                ));
            }
        }
    }
    if deploy.step_interval_secs == Some(0) {
        return Err((
            "step_interval_secs",
            "step_interval_secs must be at least 1".to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServiceSpec {
        serde_json::from_str(r#"{"name": "web", "image": "nginx:alpine"}"#).unwrap()
    }

    fn err(spec: &ServiceSpec) -> String {
        spec.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let s = spec();
        assert_eq!(s.replicas, 1);
        assert!(!s.internal);
        assert_eq!(s.project(), "default");
        assert_eq!(s.key(), "default/web");
        assert!(s.validate().is_ok());
    }

    #[test]
    fn readiness_probe_forms() {
        let mut s = spec();
        assert_eq!(s.readiness_probe(), None);
        s.health = Some("/healthz".into());
        assert_eq!(
            s.readiness_probe(),
            Some(Probe {
                path: Some("/healthz".into()),
                interval_secs: 10,
                timeout_secs: 3,
                failure_threshold: 3,
                initial_delay_secs: 0
            })
        );
        s.readiness = Some(Probe {
            interval_secs: 5,
            ..Probe::default()
        });
        let p = s.readiness_probe().unwrap();
        assert_eq!((p.path.as_deref(), p.interval_secs), (Some("/healthz"), 5));
        s.readiness = Some(Probe::http("/ready"));
        assert_eq!(s.readiness_probe().unwrap().path.as_deref(), Some("/ready"));
    }

    #[test]
    fn each_check_names_its_field() {
        type Mutation = Box<dyn Fn(&mut ServiceSpec)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|s| s.name = "Web".into()),
                "field `name`: invalid service name \"Web\"",
            ),
            (
                Box::new(|s| s.image = None),
                "field `image`: service \"web\" has neither",
            ),
            (
                Box::new(|s| s.image = Some("".into())),
                "field `image`: empty image",
            ),
            (
                Box::new(|s| s.replicas = 101),
                "field `replicas`: replicas 101 is out of range",
            ),
            (Box::new(|s| s.port = Some(0)), "field `port`: port 0"),
            (
                Box::new(|s| s.domain = Some("Bad_Domain".into())),
                "field `domain`: invalid domain",
            ),
            (
                Box::new(|s| s.domain = Some("a.localhost".into())),
                "field `port`: domain \"a.localhost\" is set but `port` is not",
            ),
            (
                Box::new(|s| {
                    s.port = Some(80);
                    s.health = Some("healthz".into())
                }),
                "field `health`: invalid path \"healthz\": must start with '/'",
            ),
            (
                Box::new(|s| s.health = Some("/h".into())),
                "field `port`: a health",
            ),
            (
                Box::new(|s| {
                    s.port = Some(80);
                    s.liveness = Some(Probe {
                        timeout_secs: 0,
                        ..Probe::default()
                    })
                }),
                "field `liveness.timeout_secs`: timeout_secs must be at least 1",
            ),
            (
                Box::new(|s| {
                    s.port = Some(80);
                    s.readiness = Some(Probe {
                        interval_secs: 0,
                        ..Probe::default()
                    })
                }),
                "field `readiness.interval_secs`",
            ),
            (
                Box::new(|s| {
                    s.port = Some(80);
                    s.readiness = Some(Probe::http("x"))
                }),
                "field `readiness.path`",
            ),
            (
                Box::new(|s| {
                    s.env.insert("BAD-KEY".into(), "x".into());
                }),
                "field `env.BAD-KEY`: invalid environment variable name",
            ),
            (
                Box::new(|s| {
                    s.env.insert("K".into(), "${secrets.}".into());
                }),
                "field `env.K`: malformed secret reference",
            ),
            (
                Box::new(|s| {
                    s.resources = Some(Resources {
                        memory: None,
                        cpu: Some(0.0),
                    })
                }),
                "field `resources.cpu`: cpu 0 is out of range",
            ),
            (
                Box::new(|s| {
                    s.resources = Some(Resources {
                        memory: None,
                        cpu: Some(f64::NAN),
                    })
                }),
                "field `resources.cpu`",
            ),
            (
                Box::new(|s| {
                    s.resources = Some(Resources {
                        memory: None,
                        cpu: Some(1025.0),
                    })
                }),
                "field `resources.cpu`",
            ),
            (
                Box::new(|s| {
                    s.resources = Some(Resources {
                        memory: Some(Memory(1 << 20)),
                        cpu: None,
                    })
                }),
                "field `resources.memory`: memory 1Mi is below",
            ),
            (
                Box::new(|s| {
                    s.placement = Some(Placement {
                        node: Some(" ".into()),
                        labels: Default::default(),
                        lost_after: None,
                    })
                }),
                "field `placement.node`",
            ),
            (
                Box::new(|s| {
                    s.placement = Some(Placement {
                        node: None,
                        labels: Default::default(),
                        lost_after: Some("2 minutes".into()),
                    })
                }),
                "field `placement.lost_after`",
            ),
            (
                Box::new(|s| {
                    s.placement = Some(Placement {
                        node: None,
                        labels: Default::default(),
                        lost_after: Some("48h".into()),
                    })
                }),
                "field `placement.lost_after`",
            ),
            (
                Box::new(|s| {
                    s.image = None;
                    s.build = Some(Build {
                        repo: "".into(),
                        branch: None,
                        dockerfile: None,
                        context: None,
                    })
                }),
                "field `build.repo`",
            ),
            (
                Box::new(|s| {
                    s.build = Some(Build {
                        repo: "r".into(),
                        branch: None,
                        dockerfile: None,
                        context: Some("../x".into()),
                    })
                }),
                "field `build.context`",
            ),
            (
                Box::new(|s| {
                    s.build = Some(Build {
                        repo: "r".into(),
                        branch: None,
                        dockerfile: Some("/etc/passwd".into()),
                        context: None,
                    })
                }),
                "field `build.dockerfile`",
            ),
            (
                Box::new(|s| {
                    s.deploy = Some(Deploy {
                        strategy: Some("Blue Green".into()),
                        ..Deploy::default()
                    })
                }),
                "field `deploy.strategy`: invalid plugin reference \"Blue Green\"",
            ),
            (
                Box::new(|s| {
                    s.deploy = Some(Deploy {
                        strategy: Some(".wasm".into()),
                        ..Deploy::default()
                    })
                }),
                "field `deploy.strategy`",
            ),
            (
                Box::new(|s| {
                    s.deploy = Some(Deploy {
                        canary_weight: Some(100),
                        ..Deploy::default()
                    })
                }),
                "field `deploy.canary_weight`: canary_weight 100",
            ),
            (
                Box::new(|s| {
                    s.deploy = Some(Deploy {
                        canary_weight: Some(0),
                        ..Deploy::default()
                    })
                }),
                "field `deploy.canary_weight`",
            ),
            (
                Box::new(|s| {
                    s.deploy = Some(Deploy {
                        max_surge: Some(0),
                        max_unavailable: Some(0),
                        ..Deploy::default()
                    })
                }),
                "field `deploy.max_unavailable`",
            ),
            (
                Box::new(|s| {
                    s.deploy = Some(Deploy {
                        steps: Some(vec![50, 10]),
                        ..Deploy::default()
                    })
                }),
                "field `deploy.steps`: steps must increase",
            ),
            (
                Box::new(|s| {
                    s.deploy = Some(Deploy {
                        steps: Some(vec![]),
                        ..Deploy::default()
                    })
                }),
                "field `deploy.steps`",
            ),
            (
                Box::new(|s| {
                    s.deploy = Some(Deploy {
                        steps: Some(vec![0]),
                        ..Deploy::default()
                    })
                }),
                "field `deploy.steps`",
            ),
            (
                Box::new(|s| {
                    s.deploy = Some(Deploy {
                        step_interval_secs: Some(0),
                        ..Deploy::default()
                    })
                }),
                "field `deploy.step_interval_secs`",
            ),
            (
                Box::new(|s| s.aliases = vec!["db".into(), "DB".into()]),
                "field `aliases[1]`: invalid alias name \"DB\"",
            ),
            (
                Box::new(|s| s.aliases = vec!["db".into(), "db".into()]),
                "field `aliases[1]`: alias \"db\" is listed twice",
            ),
            (
                Box::new(|s| s.project = Some("Shop".into())),
                "field `project`: invalid project name",
            ),
        ];
        for (mutate, expected) in cases {
            let mut s = spec();
            mutate(&mut s);
            let got = err(&s);
            assert!(
                got.starts_with(expected),
                "expected {expected:?}, got {got:?}"
            );
        }
    }

    #[test]
    fn valid_variants() {
        let mut s = spec();
        s.image = None;
        s.build = Some(Build {
            repo: "https://example.com/a.git".into(),
            branch: Some("main".into()),
            dockerfile: Some("docker/Dockerfile".into()),
            context: Some(".".into()),
        });
        s.replicas = 0;
        s.port = Some(65535);
        s.deploy = Some(Deploy {
            strategy: Some("plugins/my-strategy.wasm".into()),
            canary_weight: Some(99),
            steps: Some(vec![10, 50, 100]),
            ..Deploy::default()
        });
        s.resources = Some(Resources {
            memory: Some(Memory(MIN_MEMORY)),
            cpu: Some(MAX_CPU),
        });
        s.env.insert("_A1".into(), "x ${secrets.Y} ${HOME}".into());
        // Listing the service's own name as an alias is redundant but harmless.
        s.aliases = vec!["web".into(), "www".into()];
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn json_round_trip_keeps_everything() {
        let json = r#"{
            "name": "api", "project": "shop", "image": "app:v2", "replicas": 3, "port": 8080,
            "domain": "api.example.com", "health": "/healthz", "internal": true,
            "env": {"A": "1", "B": "${secrets.B}"},
            "resources": {"memory": "512Mi", "cpu": 1.5},
            "placement": {"node": "worker-1"},
            "readiness": {"path": "/ready", "interval_secs": 5},
            "liveness": {"path": "/live", "timeout_secs": 2, "failure_threshold": 5, "initial_delay_secs": 10},
            "build": {"repo": "git@github.com:org/repo.git", "branch": "main"},
            "deploy": {"strategy": "canary", "canary_weight": 20, "steps": [20, 50], "params": {"x": [1, "y"]}},
            "aliases": ["api-v2"]
        }"#;
        let spec: ServiceSpec = serde_json::from_str(json).unwrap();
        assert_eq!(spec.validate(), Ok(()));
        assert_eq!(
            spec.resources.as_ref().unwrap().memory,
            Some(Memory(512 << 20))
        );
        let again: ServiceSpec =
            serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        assert_eq!(again, spec);
        // Defaults are not written out as absent fields but read back identically.
        let minimal = serde_json::to_value(self::tests::spec()).unwrap();
        assert_eq!(
            minimal,
            serde_json::json!({"name": "web", "image": "nginx:alpine", "replicas": 1})
        );
    }

    #[test]
    fn unknown_fields_are_rejected_at_every_level() {
        for json in [
            r#"{"name": "a", "image": "i", "replica": 2}"#,
            r#"{"name": "a", "image": "i", "resources": {"mem": "1Gi"}}"#,
            r#"{"name": "a", "image": "i", "readiness": {"path": "/", "period": 1}}"#,
            r#"{"name": "a", "image": "i", "deploy": {"weight": 1}}"#,
            r#"{"name": "a", "image": "i", "build": {"repo": "r", "tag": "x"}}"#,
            r#"{"name": "a", "image": "i", "placement": {"host": "x"}}"#,
        ] {
            let e = serde_json::from_str::<ServiceSpec>(json).unwrap_err();
            assert!(e.to_string().starts_with("unknown field"), "{json}: {e}");
        }
    }
}
