//! orca's own types for plugin calls, the plugin runtime's public API. They mirror the WIT
//! records of `orca:plugin` (see `wit/types.wit`) where the contract is plain data; where a
//! contract version sends a leaner shape (placement nodes by index in 0.2.0), the runtime
//! converts, so callers see one API whatever version a plugin was built against. The
//! bindgen types stay in `bindings` and `v0_1`.

use std::fmt;

/// The extension point a plugin implements, named as in the WIT package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum World {
    /// `world strategy`: exports `plan`.
    Strategy,
    /// `world placement`: exports `place`.
    Placement,
    /// `world probe`: exports `check`; imports `endpoint`.
    Probe,
    /// `world webhook`: exports `handle`; imports `crypto`.
    Webhook,
    /// `world builder`: exports `build`; imports `build-host`.
    Builder,
}

impl World {
    /// Every world, in WIT order.
    pub const ALL: [World; 5] = [
        World::Strategy,
        World::Placement,
        World::Probe,
        World::Webhook,
        World::Builder,
    ];

    /// The world's name in the WIT package (`strategy`, `placement`, ...).
    pub fn name(self) -> &'static str {
        match self {
            World::Strategy => "strategy",
            World::Placement => "placement",
            World::Probe => "probe",
            World::Webhook => "webhook",
            World::Builder => "builder",
        }
    }

    /// The top-level function the world exports; its presence identifies the world.
    pub fn export(self) -> &'static str {
        match self {
            World::Strategy => "plan",
            World::Placement => "place",
            World::Probe => "check",
            World::Webhook => "handle",
            World::Builder => "build",
        }
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A key and a value: parameters, labels, headers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pair {
    pub key: String,
    pub value: String,
}

/// What a plugin is told about a service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Service {
    pub project: String,
    pub name: String,
    pub image: String,
    pub replicas: u32,
    pub port: Option<u16>,
    pub domain: Option<String>,
    /// Strategy or plugin parameters; values are JSON text.
    pub params: Vec<Pair>,
}

/// Readiness of one instance, as the host's probes see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Starting,
    Ready,
    Failed,
}

/// One running (or starting, or failed) container of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub node: String,
    pub revision: u64,
    pub readiness: Readiness,
    /// Milliseconds since the instance was created.
    pub age_ms: u64,
}

/// A node of the cluster, with its free capacity.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    pub id: String,
    pub name: String,
    pub address: String,
    pub cpu_millis: u32,
    pub cpu_millis_free: u32,
    pub memory_bytes: u64,
    pub memory_bytes_free: u64,
    pub instances: u32,
    pub draining: bool,
    pub labels: Vec<Pair>,
}

impl Node {
    /// Whether the node satisfies the pin `[service.placement] node = "pin"`: its name or its
    /// address contains `pin`, ASCII case-insensitively. The host evaluates this for the
    /// placement world (`node.selected` since `orca:plugin@0.2.0`).
    pub fn matches_pin(&self, pin: &str) -> bool {
        contains_ignore_ascii_case(&self.name, pin)
            || contains_ignore_ascii_case(&self.address, pin)
    }
}

fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// Traffic split between the stable and the candidate revision, as relative weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Traffic {
    pub stable: u32,
    pub candidate: u32,
}

/// Everything a strategy sees when the host asks it for the next step of a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutState {
    pub service: Service,
    /// Revision currently serving, if any (none on a first deploy).
    pub stable_revision: Option<u64>,
    /// Revision being rolled out.
    pub candidate_revision: u64,
    pub stable: Vec<Instance>,
    pub candidate: Vec<Instance>,
    pub traffic: Traffic,
    /// Requests answered from candidate instances during this rollout.
    pub candidate_requests: u64,
    /// Of those, 5xx answers (the proxy's own 502/504 for an unreachable candidate included).
    pub candidate_errors: u64,
    /// Milliseconds since the rollout started.
    pub elapsed_ms: u64,
    /// The host's clock (milliseconds since the epoch); the only clock a plugin has.
    pub now_ms: u64,
    pub promote_requested: bool,
    pub rollback_requested: bool,
    /// Bytes the plugin returned with its previous step; empty on the first call.
    pub plugin_state: Vec<u8>,
}

/// One decision of a strategy; the host executes actions in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run this many candidate instances.
    ScaleCandidate(u32),
    /// Run this many stable instances.
    ScaleStable(u32),
    /// Split traffic between stable and candidate.
    SetTraffic(Traffic),
    /// Ask to be called again no later than this time (`now_ms` clock).
    WaitUntil(u64),
    /// The candidate becomes the stable revision.
    Promote,
    /// Abandon the candidate, with the reason shown to operators.
    Rollback(String),
    /// The rollout is finished.
    Done,
}

/// A strategy's answer: actions, and the state it wants back next call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Step {
    pub actions: Vec<Action>,
    pub plugin_state: Vec<u8>,
}

/// Instances of the service already on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCount {
    pub node: String,
    pub count: u32,
}

/// One instance to place.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlacementRequest {
    pub service: Service,
    /// `[service.placement] node`: a hostname or address substring the node must match.
    pub pin: Option<String>,
    pub memory_bytes: u64,
    pub cpu_millis: u32,
    pub existing: Vec<NodeCount>,
}

/// Filter and score of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub node: String,
    pub feasible: bool,
    /// Higher is better; only feasible nodes are compared.
    pub score: u32,
    /// Why a node is infeasible (shown when no node fits).
    pub reason: String,
}

/// How to probe: from `[service.readiness]` / `[service.liveness]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProbeSettings {
    pub path: Option<String>,
    pub timeout_ms: u32,
    pub params: Vec<Pair>,
}

/// An HTTP response seen by the endpoint capability (body truncated to 64 KiB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<Pair>,
    pub body: Vec<u8>,
}

/// A webhook delivery exactly as received: the raw body bytes are what is signed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WebhookRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<Pair>,
    pub body: Vec<u8>,
}

/// A registered webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub id: String,
    pub repo: String,
    /// Branch name or glob (`release/*`).
    pub branch: String,
    pub secret: String,
}

/// A verified push that should redeploy the service behind a hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redeploy {
    pub hook: String,
    pub repo: String,
    pub branch: String,
    pub commit: String,
}

/// What a verified delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Redeploy these services.
    Redeploy(Vec<Redeploy>),
    /// Verified, but nothing to do, with the reason.
    Ignore(String),
    /// A ping: answer 200.
    Pong,
}

/// A parameter a strategy refuses at deploy (`check-params`, since `orca:plugin@0.3.0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    /// The parameter's key, e.g. `canary_weight` or a `[service.deploy.params]` key.
    pub key: String,
    /// Why, in the plugin's words.
    pub message: String,
}

/// A refused delivery: HTTP status (4xx/5xx, checked by the host) and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: String,
}

/// Build one commit of a service's repository into an image.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BuildRequest {
    pub project: String,
    pub service: String,
    pub repo: String,
    pub branch: String,
    pub commit: String,
    pub dockerfile: String,
    pub context: String,
    /// Tag to give the image, `<project>/<service>:<short-sha>`.
    pub tag: String,
}

/// A finished build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOutput {
    pub image_id: String,
    pub tag: String,
}
