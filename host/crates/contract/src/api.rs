//! REST API bodies (`/api/v1/...`): one type per request or response, serde + JSON schema.
//!
//! Responses deny nothing on decode (newer servers may add fields) but every field a type
//! names is required unless it is an `Option`, so a field the server stopped sending fails
//! the CLI's decode with its name instead of printing a blank column.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Every error answer of the API (4xx and 5xx).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// What is wrong, naming the field, file or value at fault.
    pub error: String,
}

/// `GET /api/v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HealthResponse {
    /// `"ok"` once the server is serving.
    pub status: String,
}

/// One service of a deploy answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeployedService {
    /// Project of the service.
    pub project: String,
    /// Service name.
    pub name: String,
    /// The revision the service is now at.
    pub revision: u64,
    /// Whether this deploy created a new revision (false: the spec was unchanged).
    pub changed: bool,
}

/// `POST /api/v1/deploy` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeployResponse {
    /// Names of the deployed services, in request order.
    pub deployed: Vec<String>,
    /// Each deployed service with its revision.
    pub services: Vec<DeployedService>,
}

/// A service named by project and name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceRef {
    /// Project.
    pub project: String,
    /// Service name.
    pub name: String,
}

/// `?project=`: disambiguates a service name used in several projects.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectQuery {
    /// Project of the service (needed only when the name exists in several projects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// `POST /api/v1/plugins?name=`: the name the uploaded component is written as in its
/// service file (`./ramp.wasm`), so errors, status and logs name it that way.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// The reference as written (at most 512 bytes, no control characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `POST /api/v1/services/{name}/scale` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// Desired number of instances, 0 to 100.
    pub replicas: u32,
}

/// `POST /api/v1/services/{name}/scale` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScaleResponse {
    /// Project.
    pub project: String,
    /// Service name.
    pub name: String,
    /// The replica count now desired.
    pub replicas: u32,
    /// Current revision (scaling does not create one).
    pub revision: u64,
}

/// Answer of the stop routes (`DELETE /api/v1/services/{name}`, `DELETE
/// /api/v1/projects/{name}`, `POST /api/v1/stop`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StopResponse {
    /// The services now desired stopped.
    pub stopped: Vec<ServiceRef>,
}

/// `POST /api/v1/services/{name}/promote` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PromoteResponse {
    /// Project.
    pub project: String,
    /// Service name.
    pub name: String,
    /// The candidate revision being promoted.
    pub candidate_revision: u64,
    /// Always true: the promotion is recorded and the controller acts on it.
    pub promote_requested: bool,
}

/// `POST /api/v1/services/{name}/rollback` body (optional: an empty body rolls back to the
/// previous revision, or abandons a rollout in progress).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// Revision number to restore; default: the one before the current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
}

/// `POST /api/v1/services/{name}/rollback` answer: either a rollout in progress was
/// abandoned (`abandoned_revision`), or an earlier revision was restored
/// (`restored_revision` and the new `revision`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RollbackResponse {
    /// Project.
    pub project: String,
    /// Service name.
    pub name: String,
    /// The candidate revision of the abandoned rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abandoned_revision: Option<u64>,
    /// The revision whose spec was restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_revision: Option<u64>,
    /// The service's revision after the rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

/// `GET /api/v1/services/{name}/logs` query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Project of the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Lines per instance from the end (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<usize>,
    /// Keep streaming new lines.
    #[serde(default)]
    pub follow: bool,
    /// The last image build's log instead of the instances' logs.
    #[serde(default)]
    pub build: bool,
    /// `text` (default): `[service.slot] line`, `!` before a stderr line; `json`: one
    /// object per line (`instance`, `slot`, `id`, `stream`, `text`, `time`).
    #[serde(default)]
    pub format: LogFormat,
}

/// How `GET /api/v1/services/{name}/logs` writes lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `[service.slot] line`, with `!` before a line from stderr.
    #[default]
    Text,
    /// Newline-delimited JSON, one object per line.
    Json,
}

/// `GET /api/v1/status` query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusQuery {
    /// Only this project's services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// One instance in a status answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InstanceStatus {
    /// Short container id.
    pub id: String,
    /// Container name.
    pub name: String,
    /// Node hostname.
    pub node: String,
    /// Replica slot.
    pub slot: u32,
    /// Container state (`running`, `exited`, `created`, ...).
    pub state: String,
    /// Running and passing its readiness probe.
    pub ready: bool,
    /// `ip:port` on the project network, when the service has a port.
    pub address: Option<String>,
    /// Image reference.
    pub image: String,
    /// Spec fingerprint the instance was started from.
    pub fingerprint: String,
    /// Revision the instance runs.
    pub revision: u64,
    /// Start time reported by the runtime.
    pub started_at: Option<String>,
    /// Exit code of a stopped container.
    pub exit_code: Option<i64>,
    /// Whether the kernel killed it for exceeding its memory limit.
    pub oom_killed: bool,
    /// Last readiness/liveness probe error.
    pub probe_error: Option<String>,
    /// Memory in use, bytes.
    pub memory_bytes: Option<u64>,
    /// Memory limit, bytes.
    pub memory_limit_bytes: Option<u64>,
    /// CPU use in percent of one CPU.
    pub cpu_percent: Option<f64>,
    /// Git commit of the instance's revision, for built images.
    pub commit: Option<String>,
}

/// One service in a status answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// Project.
    pub project: String,
    /// Image of the current revision.
    pub image: Option<String>,
    /// `running`, `degraded`, `starting`, `failed` or `stopped`.
    pub status: String,
    /// `running` or `stopped`.
    pub desired_state: String,
    /// Desired instances.
    pub replicas: u32,
    /// Instances running.
    pub running_replicas: u32,
    /// Instances running and ready.
    pub ready_replicas: u32,
    /// Routed hostname.
    pub domain: Option<String>,
    /// Certificate state of `domain` (source, expiry, the CA's last error).
    pub tls: Value,
    /// Container port.
    pub port: Option<u16>,
    /// Current revision.
    pub revision: u64,
    /// Git commit of the current revision.
    pub commit: Option<String>,
    /// The last image build, if any.
    pub last_build: Value,
    /// Seconds since the epoch of the last change.
    pub updated_at: u64,
    /// The controller's last error for this service (e.g. image missing).
    pub error: Option<String>,
    /// The rollout in progress or last finished.
    pub rollout: Value,
    /// When the controller next retries after failures.
    pub backing_off_until_ms: Option<u64>,
    /// Why its starts wait: `waiting for db` (a dependency has no ready instance) or
    /// `stop-first: volume data is not shared` (the old instance is still stopping).
    #[serde(default)]
    pub waiting: Option<String>,
    /// Its mounts as declared (`data:/var/lib/db`, `/srv/orca/site:/site:ro`).
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Services of its project it waits for.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// The instances.
    pub instances: Vec<InstanceStatus>,
}

/// `GET /api/v1/status` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatusResponse {
    /// Cluster name.
    pub cluster: String,
    /// When the controller last observed the runtime (ms since the epoch).
    pub observed_at_ms: u64,
    /// Services.
    pub services: Vec<ServiceStatus>,
}

/// One secret key (never its value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SecretKey {
    /// The key, as referenced by `${secrets.KEY}`.
    pub key: String,
    /// Seconds since the epoch of the last change.
    pub updated_at: u64,
}

/// `GET /api/v1/projects/{name}/secrets` answer: keys only, never values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SecretKeys {
    /// Project.
    pub project: String,
    /// The project's secrets.
    pub secrets: Vec<SecretKey>,
}

/// What `orca doctor` found, by the reference's incident decision tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FindingCode {
    /// The service is desired stopped.
    Stopped,
    /// An instance was killed by the kernel for exceeding its memory limit.
    OomKilled,
    /// Instances keep exiting and being restarted.
    CrashLooping,
    /// The application cannot connect to something it depends on.
    DependencyRefused,
    /// The readiness probe fails, so the proxy sends no traffic.
    ReadinessFailing,
    /// The service has a domain but the proxy has no ready backend for it.
    NoRoute,
    /// Obtaining the certificate from the ACME CA failed.
    TlsAcmeFailed,
    /// The node an instance should run on is not available.
    NodeDown,
    /// The controller cannot start instances (image missing, bad spec, ...).
    StartFailed,
    /// Instances are still starting; nothing is wrong yet.
    Starting,
}

/// One finding with its evidence and the prescribed action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Finding {
    /// Machine-readable kind.
    pub code: FindingCode,
    /// One line for humans.
    pub summary: String,
    /// The observations this finding rests on (exit codes, log lines, probe errors, ...).
    pub evidence: Vec<String>,
    /// What the reference prescribes.
    pub action: String,
}

/// `GET /api/v1/services/{name}/diagnosis` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Diagnosis {
    /// Project.
    pub project: String,
    /// Service name.
    pub service: String,
    /// The service status as `GET /api/v1/status` reports it.
    pub status: String,
    /// `"healthy"` when there are no findings, else `"unhealthy"`.
    pub verdict: String,
    /// Findings, most fundamental first.
    pub findings: Vec<Finding>,
}

/// `GET /api/v1/whoami` answer: the presented token's name and role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WhoAmI {
    /// Token name.
    pub name: String,
    /// `admin`, `deployer` or `viewer`.
    pub role: String,
}
