//! The data plugins receive and return: plain Rust mirrors of the records of the WIT `types`
//! interface (`orca:plugin/types@0.2.0`), with helpers.
//!
//! These types are owned by the SDK, not generated, so they can carry documentation, helpers
//! and `Default`, and so plugin logic can be built and tested natively without any wasm
//! machinery. The export macros convert to and from the generated bindings at the boundary.

use std::fmt;
use std::str::FromStr;

use crate::params;
pub use crate::params::ParamError;

/// A key and a value: parameters, labels, headers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Pair {
    /// The key (a parameter name, a label, a header name).
    pub key: String,
    /// The value. For parameters it is JSON text (`20`, `"abc"`, `true`).
    pub value: String,
}

impl Pair {
    /// A pair from anything string-like.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Pair {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// The value of `key` in `pairs`, compared exactly (the first match wins).
pub fn lookup<'a>(pairs: &'a [Pair], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|p| p.key == key)
        .map(|p| p.value.as_str())
}

/// The value of header `name` in `headers`, compared ASCII case-insensitively, as HTTP
/// requires (the first match wins).
pub fn header<'a>(headers: &'a [Pair], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|p| p.key.eq_ignore_ascii_case(name))
        .map(|p| p.value.as_str())
}

/// Typed accessors for JSON-text parameters, shared by [`Service`] and [`ProbeSettings`].
///
/// Parameter values are JSON text: a number parameter arrives as `20`, a string as `"abc"`,
/// a boolean as `true`. Every accessor returns `Ok(None)` when the key is absent or its value
/// is `null`, and a [`ParamError`] (which converts into `String` with `?`) when the value has
/// the wrong type.
macro_rules! param_accessors {
    ($ty:ident) => {
        impl $ty {
            /// The raw JSON text of parameter `key`, if present.
            pub fn param_raw(&self, key: &str) -> Option<&str> {
                lookup(&self.params, key)
            }

            /// Parameter `key` parsed with [`FromStr`]: a JSON string is unquoted first, any
            /// other JSON scalar is parsed as written (so `param::<u32>` accepts `20` and
            /// `"20"`).
            pub fn param<T>(&self, key: &str) -> Result<Option<T>, ParamError>
            where
                T: FromStr,
            {
                params::parse_from_str(key, self.param_raw(key))
            }

            /// Parameter `key` parsed as by [`param`](Self::param), or `default` when absent
            /// or `null`.
            pub fn param_or<T>(&self, key: &str, default: T) -> Result<T, ParamError>
            where
                T: FromStr,
            {
                Ok(self.param(key)?.unwrap_or(default))
            }

            /// Parameter `key` as a JSON string (`"abc"`), unescaped.
            pub fn param_str(&self, key: &str) -> Result<Option<String>, ParamError> {
                params::parse_str(key, self.param_raw(key))
            }

            /// Parameter `key` as a JSON non-negative integer (`20`).
            pub fn param_u64(&self, key: &str) -> Result<Option<u64>, ParamError> {
                params::parse_u64(key, self.param_raw(key))
            }

            /// Parameter `key` as a JSON number (`0.5`, `20`, `1e3`).
            pub fn param_f64(&self, key: &str) -> Result<Option<f64>, ParamError> {
                params::parse_f64(key, self.param_raw(key))
            }

            /// Parameter `key` as a JSON boolean (`true` / `false`).
            pub fn param_bool(&self, key: &str) -> Result<Option<bool>, ParamError> {
                params::parse_bool(key, self.param_raw(key))
            }
        }
    };
}

/// What a plugin is told about a service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// The project (namespace) of the service.
    pub project: String,
    /// The service's name.
    pub name: String,
    /// The image being deployed.
    pub image: String,
    /// Desired number of instances.
    pub replicas: u32,
    /// The port the service listens on, if any.
    pub port: Option<u16>,
    /// The public domain routed to the service, if any.
    pub domain: Option<String>,
    /// `[service.deploy.params]` (strategies) or plugin parameters; values are JSON text.
    /// Read them with [`param`](Self::param) and friends.
    pub params: Vec<Pair>,
}

param_accessors!(Service);

/// Readiness of one instance, as the host's probes see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Readiness {
    /// Created, not yet ready.
    Starting,
    /// Passing its readiness checks: eligible for traffic.
    Ready,
    /// Gave up: crashed or never became ready.
    Failed,
}

/// One running (or starting, or failed) container of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// The instance's id.
    pub id: String,
    /// The id of the node it runs on.
    pub node: String,
    /// The revision it runs.
    pub revision: u64,
    /// Whether it is ready.
    pub readiness: Readiness,
    /// Milliseconds since the instance was created.
    pub age_ms: u64,
}

impl Instance {
    /// Whether the instance is [`Readiness::Ready`].
    pub fn is_ready(&self) -> bool {
        self.readiness == Readiness::Ready
    }

    /// Whether the instance is [`Readiness::Failed`].
    pub fn is_failed(&self) -> bool {
        self.readiness == Readiness::Failed
    }
}

/// A node of the cluster as a placement policy sees it: its capacity, and what the host
/// evaluated for the instance being placed. A node is identified by its index in the `nodes`
/// slice [`Placement::place`](crate::placement::Placement::place) receives; its name, address
/// and labels are not sent (the host evaluates the pin against them: [`selected`](Self::selected)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Total CPU, in thousandths of a core.
    pub cpu_millis: u32,
    /// Unreserved CPU, in thousandths of a core.
    pub cpu_millis_free: u32,
    /// Total memory.
    pub memory_bytes: u64,
    /// Unreserved memory.
    pub memory_bytes_free: u64,
    /// Instances (of any service) on the node.
    pub instances: u32,
    /// Instances of the service being placed already on the node.
    pub existing: u32,
    /// Whether the node is being drained (should receive nothing new).
    pub draining: bool,
    /// Whether the node satisfies the service's node selection: `[service.placement] node`
    /// is a substring of its name or address (ASCII case-insensitively). True when the
    /// service selects no node (and by default).
    pub selected: bool,
}

impl Default for Node {
    fn default() -> Self {
        Node {
            cpu_millis: 0,
            cpu_millis_free: 0,
            memory_bytes: 0,
            memory_bytes_free: 0,
            instances: 0,
            existing: 0,
            draining: false,
            selected: true,
        }
    }
}

/// Traffic split between the stable and the candidate revision, as relative weights.
///
/// Weights are relative: `{ stable: 9, candidate: 1 }` sends 10% to the candidate. When both
/// are zero nothing is served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Traffic {
    /// Weight of the stable revision.
    pub stable: u32,
    /// Weight of the candidate revision.
    pub candidate: u32,
}

impl Traffic {
    /// Everything to the stable revision (`100 / 0`).
    pub const ALL_STABLE: Traffic = Traffic {
        stable: 100,
        candidate: 0,
    };
    /// Everything to the candidate revision (`0 / 100`).
    pub const ALL_CANDIDATE: Traffic = Traffic {
        stable: 0,
        candidate: 100,
    };

    /// `percent` (clamped to 100) to the candidate, the rest to the stable revision.
    pub fn candidate_percent(percent: u32) -> Traffic {
        let percent = percent.min(100);
        Traffic {
            stable: 100 - percent,
            candidate: percent,
        }
    }

    /// The candidate's share of traffic, from 0.0 to 1.0 (0.0 when both weights are zero).
    pub fn candidate_share(&self) -> f64 {
        let total = u64::from(self.stable) + u64::from(self.candidate);
        if total == 0 {
            0.0
        } else {
            f64::from(self.candidate) / total as f64
        }
    }
}

/// Everything a strategy sees when the host asks it for the next step of a rollout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolloutState {
    /// The service being rolled out.
    pub service: Service,
    /// Revision currently serving, if any (`None` on a first deploy).
    pub stable_revision: Option<u64>,
    /// Revision being rolled out.
    pub candidate_revision: u64,
    /// Instances of the stable revision.
    pub stable: Vec<Instance>,
    /// Instances of the candidate revision.
    pub candidate: Vec<Instance>,
    /// The current traffic split.
    pub traffic: Traffic,
    /// Requests the proxy answered from candidate instances during this rollout.
    pub candidate_requests: u64,
    /// Of those, 5xx answers (the proxy's own 502/504 for an unreachable candidate included).
    pub candidate_errors: u64,
    /// Milliseconds since the rollout started.
    pub elapsed_ms: u64,
    /// The host's clock (milliseconds since the epoch); the only clock a plugin has.
    pub now_ms: u64,
    /// An operator asked to promote the candidate now (`orca rollout promote`).
    pub promote_requested: bool,
    /// An operator asked to roll back.
    pub rollback_requested: bool,
    /// Bytes the plugin returned with its previous step; empty on the first call.
    pub plugin_state: Vec<u8>,
}

impl RolloutState {
    /// The desired number of instances (`service.replicas`).
    pub fn replicas(&self) -> u32 {
        self.service.replicas
    }

    /// Whether this is the first call of the rollout (no plugin state yet).
    pub fn is_first_call(&self) -> bool {
        self.plugin_state.is_empty()
    }

    /// Number of ready stable instances.
    pub fn stable_ready(&self) -> u32 {
        count(&self.stable, Readiness::Ready)
    }

    /// Number of ready candidate instances.
    pub fn candidate_ready(&self) -> u32 {
        count(&self.candidate, Readiness::Ready)
    }

    /// Number of failed candidate instances.
    pub fn candidate_failed(&self) -> u32 {
        count(&self.candidate, Readiness::Failed)
    }

    /// Number of candidate instances still starting.
    pub fn candidate_starting(&self) -> u32 {
        count(&self.candidate, Readiness::Starting)
    }
}

fn count(instances: &[Instance], readiness: Readiness) -> u32 {
    instances
        .iter()
        .filter(|i| i.readiness == readiness)
        .count() as u32
}

/// One decision of a strategy; the host executes a step's actions in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run this many candidate instances.
    ScaleCandidate(u32),
    /// Run this many stable instances.
    ScaleStable(u32),
    /// Split traffic between stable and candidate.
    SetTraffic(Traffic),
    /// Ask to be called again no later than this time (on the [`RolloutState::now_ms`] clock).
    WaitUntil(u64),
    /// The candidate becomes the stable revision.
    Promote,
    /// Abandon the candidate, with the reason shown to operators.
    Rollback(String),
    /// The rollout is finished.
    Done,
}

/// A strategy's answer: actions, and the state it wants back next call.
///
/// Build one with [`Step::new`] and the chaining methods:
///
/// ```
/// use orca_plugin_sdk::types::{Action, Step, Traffic};
/// let step = Step::new()
///     .then(Action::SetTraffic(Traffic::ALL_CANDIDATE))
///     .then(Action::ScaleStable(0))
///     .with_state(vec![2]);
/// assert_eq!(step.actions.len(), 2);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Actions, executed in order.
    pub actions: Vec<Action>,
    /// Bytes handed back as [`RolloutState::plugin_state`] on the next call.
    pub plugin_state: Vec<u8>,
}

impl Step {
    /// A step with no actions and no state.
    pub fn new() -> Self {
        Step::default()
    }

    /// A step with these actions and no state.
    pub fn of(actions: impl IntoIterator<Item = Action>) -> Self {
        Step {
            actions: actions.into_iter().collect(),
            plugin_state: Vec::new(),
        }
    }

    /// Appends an action.
    pub fn then(mut self, action: Action) -> Self {
        self.actions.push(action);
        self
    }

    /// Sets the state handed back next call.
    pub fn with_state(mut self, plugin_state: impl Into<Vec<u8>>) -> Self {
        self.plugin_state = plugin_state.into();
        self
    }
}

/// One instance to place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlacementRequest {
    /// The service the instance belongs to.
    pub service: Service,
    /// `[service.placement] node`, if set: already evaluated per node as
    /// [`Node::selected`]; here for reasons and logs.
    pub pin: Option<String>,
    /// Memory the instance reserves.
    pub memory_bytes: u64,
    /// CPU the instance reserves, in thousandths of a core.
    pub cpu_millis: u32,
}

/// Filter and score of one node (the Kubernetes scheduler framework's shape).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The node: its index in the `nodes` slice of the call.
    pub node: u32,
    /// Higher is better; only feasible nodes are compared.
    pub score: u32,
    /// `None` if the instance may go there; otherwise why not (shown when no node fits).
    pub infeasible: Option<String>,
}

impl Verdict {
    /// The node at index `node` is feasible, with `score`.
    pub fn feasible(node: u32, score: u32) -> Self {
        Verdict {
            node,
            score,
            infeasible: None,
        }
    }

    /// The node at index `node` is infeasible, and why.
    pub fn infeasible(node: u32, reason: impl Into<String>) -> Self {
        Verdict {
            node,
            score: 0,
            infeasible: Some(reason.into()),
        }
    }

    /// Whether the instance may go to the node.
    pub fn is_feasible(&self) -> bool {
        self.infeasible.is_none()
    }
}

/// How to probe: from `[service.readiness]` / `[service.liveness]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeSettings {
    /// The HTTP path to probe, if configured.
    pub path: Option<String>,
    /// The deadline of one check.
    pub timeout_ms: u32,
    /// Plugin parameters; values are JSON text. Read them with [`param`](Self::param) and
    /// friends.
    pub params: Vec<Pair>,
}

param_accessors!(ProbeSettings);

/// An HTTP response seen by the endpoint capability (body truncated to 64 KiB).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: Vec<Pair>,
    /// The body, at most 64 KiB of it.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A response with `status`, no headers and no body.
    pub fn status(status: u16) -> Self {
        HttpResponse {
            status,
            ..HttpResponse::default()
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push(Pair::new(name, value));
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A webhook delivery exactly as received: the raw body bytes are what is signed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebhookRequest {
    /// The HTTP method.
    pub method: String,
    /// The request path.
    pub path: String,
    /// The request headers, as received.
    pub headers: Vec<Pair>,
    /// The raw body.
    pub body: Vec<u8>,
}

impl WebhookRequest {
    /// Header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// A registered webhook: the plugin finds the one matching the payload and verifies the
/// delivery with its secret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hook {
    /// The hook's id (what [`Redeploy::hook`] refers to).
    pub id: String,
    /// The repository it watches (as configured, e.g. `owner/name` or a clone URL).
    pub repo: String,
    /// Branch name or glob (`release/*`).
    pub branch: String,
    /// The shared secret deliveries are signed with.
    pub secret: String,
}

impl Hook {
    /// Whether `branch` matches this hook's branch pattern, where `*` matches any run of
    /// characters (including `/`) and `?` any one character.
    ///
    /// ```
    /// use orca_plugin_sdk::types::Hook;
    /// let hook = Hook { branch: "release/*".into(), ..Hook::default() };
    /// assert!(hook.matches_branch("release/1.2"));
    /// assert!(!hook.matches_branch("main"));
    /// ```
    pub fn matches_branch(&self, branch: &str) -> bool {
        glob_match(self.branch.as_bytes(), branch.as_bytes())
    }
}

/// Iterative glob matching with backtracking to the last `*` (linear in practice).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A verified push that should redeploy the service behind a hook.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Redeploy {
    /// The id of the matching [`Hook`].
    pub hook: String,
    /// The repository pushed to.
    pub repo: String,
    /// The branch pushed to.
    pub branch: String,
    /// The commit to deploy.
    pub commit: String,
}

/// What a verified delivery asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Redeploy these services.
    Redeploy(Vec<Redeploy>),
    /// Verified, but nothing to do (tag deletion, other branch), with the reason.
    Ignore(String),
    /// A ping: answer 200.
    Pong,
}

/// A refused delivery: HTTP status (401 bad signature, 400 malformed...) and reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rejection {
    /// The HTTP status to answer with.
    pub status: u16,
    /// Why, shown to the sender and in the logs.
    pub reason: String,
}

impl Rejection {
    /// A rejection with any status.
    pub fn new(status: u16, reason: impl Into<String>) -> Self {
        Rejection {
            status,
            reason: reason.into(),
        }
    }

    /// 400: the delivery is malformed.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Rejection::new(400, reason)
    }

    /// 401: the signature is missing or wrong.
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Rejection::new(401, reason)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}

/// Build one commit of a service's repository into an image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildRequest {
    /// The service's project.
    pub project: String,
    /// The service's name.
    pub service: String,
    /// The repository to build.
    pub repo: String,
    /// The branch the commit is on.
    pub branch: String,
    /// The commit to build.
    pub commit: String,
    /// Path of the Dockerfile, relative to the checkout.
    pub dockerfile: String,
    /// Build context, relative to the checkout.
    pub context: String,
    /// Tag to give the image, `<project>/<service>:<short-sha>`.
    pub tag: String,
}

/// A finished build.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildOutput {
    /// The image id the host's `build-image` returned.
    pub image_id: String,
    /// The tag given to the image.
    pub tag: String,
}

/// Severity of a [`log`](crate::log) message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Detail for plugin authors.
    Debug,
    /// Normal progress.
    Info,
    /// Something odd that did not stop the plugin.
    Warn,
    /// Something failed.
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(params: &[(&str, &str)]) -> Service {
        Service {
            params: params.iter().map(|(k, v)| Pair::new(*k, *v)).collect(),
            ..Service::default()
        }
    }

    #[test]
    fn typed_params_read_json_text() {
        let s = service(&[
            ("n", "20"),
            ("s", "\"a\\\"b\\u00e9\""),
            ("f", "0.25"),
            ("b", "true"),
            ("nul", "null"),
            ("quoted_n", "\"7\""),
        ]);
        assert_eq!(s.param_u64("n").unwrap(), Some(20));
        assert_eq!(s.param_str("s").unwrap().as_deref(), Some("a\"bé"));
        assert_eq!(s.param_f64("f").unwrap(), Some(0.25));
        assert_eq!(s.param_bool("b").unwrap(), Some(true));
        assert_eq!(s.param_u64("nul").unwrap(), None);
        assert_eq!(s.param_u64("absent").unwrap(), None);
        assert_eq!(s.param::<u32>("quoted_n").unwrap(), Some(7));
        assert_eq!(s.param::<u32>("n").unwrap(), Some(20));
        assert_eq!(s.param_or::<u32>("absent", 5).unwrap(), 5);
        assert_eq!(s.param::<String>("s").unwrap().as_deref(), Some("a\"bé"));
    }

    #[test]
    fn wrong_param_types_name_the_key() {
        let s = service(&[("n", "\"abc\""), ("s", "12"), ("neg", "-1")]);
        let err = s.param_u64("n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "parameter \"n\": expected a non-negative integer, got \"abc\""
        );
        assert!(s.param_str("s").is_err());
        assert!(s.param_u64("neg").is_err());
        assert!(s.param::<u32>("n").is_err());
        let as_string: String = err.into();
        assert!(as_string.starts_with("parameter \"n\""));
    }

    #[test]
    fn branch_globs() {
        let hook = |b: &str| Hook {
            branch: b.into(),
            ..Hook::default()
        };
        assert!(hook("main").matches_branch("main"));
        assert!(!hook("main").matches_branch("main2"));
        assert!(hook("release/*").matches_branch("release/1.0"));
        assert!(hook("*").matches_branch("feature/x/y"));
        assert!(hook("v?.*").matches_branch("v1.2"));
        assert!(!hook("release/*").matches_branch("releases/1"));
    }

    #[test]
    fn headers_are_case_insensitive() {
        let r = WebhookRequest {
            headers: vec![Pair::new("X-Hub-Signature-256", "sha256=ab")],
            ..WebhookRequest::default()
        };
        assert_eq!(r.header("x-hub-signature-256"), Some("sha256=ab"));
        assert_eq!(r.header("x-other"), None);
    }

    #[test]
    fn traffic_helpers() {
        assert_eq!(
            Traffic::candidate_percent(30),
            Traffic {
                stable: 70,
                candidate: 30
            }
        );
        assert_eq!(Traffic::candidate_percent(130), Traffic::ALL_CANDIDATE);
        assert_eq!(Traffic::default().candidate_share(), 0.0);
        assert_eq!(Traffic::ALL_CANDIDATE.candidate_share(), 1.0);
    }
}
