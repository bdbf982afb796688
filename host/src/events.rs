//! The event stream: typed events ([`Kind`]), the [`Events`] handle every component emits
//! through, the writer thread that persists them (store table `events`) and fans them out to
//! live followers (SSE) and to notifications, and the controller-side observers that turn
//! what a pass sees into events ([`InstanceWatch`], [`rollout_progress`]).
//!
//! Emitting never blocks and never fails the caller: an event goes into a bounded queue; a
//! full queue drops the event with a warning (counted in [`Events::dropped`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use orca_store::{EventRecord, RolloutPhase, RolloutRecord, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::health::Verdicts;
use crate::instance::Instance;

/// Events queued between emitters and the writer: a pass that starts 10,000 instances
/// emits 10,000 `instance.started` at once (measured by `bench/agents.sh`).
const QUEUE: usize = 16_384;
/// Live followers' buffer (a follower further behind than this is told it lagged).
const LIVE: usize = 1024;
/// Consecutive failed readiness probes of a never-ready instance that make an event.
pub const READINESS_FAILED_AFTER: u32 = 3;

/// What happened. Serialized as dotted names (`instance.crashed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// A deploy stored a new revision of a service.
    #[serde(rename = "deploy")]
    Deploy,
    /// A rollout from a stable to a candidate revision started.
    #[serde(rename = "rollout.started")]
    RolloutStarted,
    /// A rollout step changed instance counts or the traffic split.
    #[serde(rename = "rollout.step")]
    RolloutStep,
    /// A rollout finished: the candidate is the stable revision now.
    #[serde(rename = "rollout.promoted")]
    RolloutPromoted,
    /// A rollout ended by going back to the stable revision.
    #[serde(rename = "rollout.rolled_back")]
    RolloutRolledBack,
    /// The operator asked for a promote.
    #[serde(rename = "rollout.promote_requested")]
    PromoteRequested,
    /// The operator asked for a rollback.
    #[serde(rename = "rollout.rollback_requested")]
    RollbackRequested,
    /// The controller consumed an operator request in a rollout step (or dropped it because
    /// its rollout had ended): one per request accepted by the API.
    #[serde(rename = "rollout.request_applied")]
    RequestApplied,
    /// A new instance appeared.
    #[serde(rename = "instance.started")]
    InstanceStarted,
    /// An instance passed readiness and receives traffic.
    #[serde(rename = "instance.ready")]
    InstanceReady,
    /// A ready instance failed readiness and left the routes.
    #[serde(rename = "instance.unready")]
    InstanceUnready,
    /// A starting instance keeps failing readiness.
    #[serde(rename = "instance.readiness_failed")]
    ReadinessFailed,
    /// An instance's process exited (or was killed) without orca asking.
    #[serde(rename = "instance.crashed")]
    InstanceCrashed,
    /// An instance was killed by the kernel for exceeding its memory limit.
    #[serde(rename = "instance.oom_killed")]
    InstanceOomKilled,
    /// Liveness failed past its threshold: the instance is restarted.
    #[serde(rename = "instance.liveness_restart")]
    LivenessRestart,
    /// orca is removing an instance (superseded, scaled down, failed, stopped).
    #[serde(rename = "instance.removing")]
    InstanceRemoving,
    /// Starting an instance failed (image, network, secrets).
    #[serde(rename = "instance.start_failed")]
    StartFailed,
    /// No node can run an instance.
    #[serde(rename = "placement.failed")]
    PlacementFailed,
    /// A webhook delivery was received and handled.
    #[serde(rename = "webhook.delivery")]
    WebhookDelivery,
    /// An image build started.
    #[serde(rename = "build.started")]
    BuildStarted,
    /// An image build succeeded.
    #[serde(rename = "build.succeeded")]
    BuildSucceeded,
    /// An image build failed.
    #[serde(rename = "build.failed")]
    BuildFailed,
    /// A certificate was issued (first time for its domain).
    #[serde(rename = "certificate.issued")]
    CertificateIssued,
    /// A certificate was renewed.
    #[serde(rename = "certificate.renewed")]
    CertificateRenewed,
    /// Issuing or renewing a certificate failed.
    #[serde(rename = "certificate.failed")]
    CertificateFailed,
    /// A service was scaled.
    #[serde(rename = "service.scaled")]
    ServiceScaled,
    /// A service was stopped.
    #[serde(rename = "service.stopped")]
    ServiceStopped,
    /// A backup finished (and, if scheduled, was verified).
    #[serde(rename = "backup.succeeded")]
    BackupSucceeded,
    /// A backup failed, or its verification did: it is marked failed.
    #[serde(rename = "backup.failed")]
    BackupFailed,
    /// A restore put a backup's volumes back.
    #[serde(rename = "restore.succeeded")]
    RestoreSucceeded,
    /// A restore was refused (a checksum did not match) or failed.
    #[serde(rename = "restore.failed")]
    RestoreFailed,
}

impl Kind {
    /// The dotted name (`instance.crashed`), the same spelling serde uses.
    pub fn as_str(self) -> &'static str {
        Kind::ALL
            .iter()
            .find_map(|(k, name)| (*k == self).then_some(*name))
            .unwrap_or("unknown")
    }

    /// Every kind with its name (for help text and filters).
    pub const ALL: &'static [(Kind, &'static str)] = &[
        (Kind::Deploy, "deploy"),
        (Kind::RolloutStarted, "rollout.started"),
        (Kind::RolloutStep, "rollout.step"),
        (Kind::RolloutPromoted, "rollout.promoted"),
        (Kind::RolloutRolledBack, "rollout.rolled_back"),
        (Kind::PromoteRequested, "rollout.promote_requested"),
        (Kind::RollbackRequested, "rollout.rollback_requested"),
        (Kind::RequestApplied, "rollout.request_applied"),
        (Kind::InstanceStarted, "instance.started"),
        (Kind::InstanceReady, "instance.ready"),
        (Kind::InstanceUnready, "instance.unready"),
        (Kind::ReadinessFailed, "instance.readiness_failed"),
        (Kind::InstanceCrashed, "instance.crashed"),
        (Kind::InstanceOomKilled, "instance.oom_killed"),
        (Kind::LivenessRestart, "instance.liveness_restart"),
        (Kind::InstanceRemoving, "instance.removing"),
        (Kind::StartFailed, "instance.start_failed"),
        (Kind::PlacementFailed, "placement.failed"),
        (Kind::WebhookDelivery, "webhook.delivery"),
        (Kind::BuildStarted, "build.started"),
        (Kind::BuildSucceeded, "build.succeeded"),
        (Kind::BuildFailed, "build.failed"),
        (Kind::CertificateIssued, "certificate.issued"),
        (Kind::CertificateRenewed, "certificate.renewed"),
        (Kind::CertificateFailed, "certificate.failed"),
        (Kind::ServiceScaled, "service.scaled"),
        (Kind::ServiceStopped, "service.stopped"),
        (Kind::BackupSucceeded, "backup.succeeded"),
        (Kind::BackupFailed, "backup.failed"),
        (Kind::RestoreSucceeded, "restore.succeeded"),
        (Kind::RestoreFailed, "restore.failed"),
    ];

    /// How bad it is.
    pub fn severity(self) -> &'static str {
        match self {
            Kind::RolloutRolledBack
            | Kind::InstanceCrashed
            | Kind::InstanceOomKilled
            | Kind::BuildFailed
            | Kind::CertificateFailed
            | Kind::PlacementFailed
            | Kind::BackupFailed
            | Kind::RestoreFailed
            | Kind::StartFailed => "error",
            Kind::InstanceUnready | Kind::ReadinessFailed | Kind::LivenessRestart => "warning",
            _ => "info",
        }
    }
}

/// An event being built; [`Events::emit`] stamps and queues it.
#[derive(Clone, Debug)]
pub struct Event(EventRecord);

impl Event {
    /// An event of `kind` with a one-sentence message.
    pub fn new(kind: Kind, message: impl Into<String>) -> Event {
        Event(EventRecord {
            seq: 0,
            at_ms: crate::controller::now_ms(),
            kind: kind.as_str().to_string(),
            severity: kind.severity().to_string(),
            project: None,
            service: None,
            instance: None,
            revision: None,
            message: message.into(),
            fields: BTreeMap::new(),
        })
    }

    /// Sets project and service from a `project/name` key.
    pub fn service(mut self, key: &str) -> Event {
        if let Some((p, n)) = key.split_once('/') {
            self.0.project = Some(p.to_string());
            self.0.service = Some(n.to_string());
        } else {
            self.0.service = Some(key.to_string());
        }
        self
    }

    /// Sets the instance (container name).
    pub fn instance(mut self, name: &str) -> Event {
        self.0.instance = Some(name.trim_start_matches('/').to_string());
        self
    }

    /// Sets the revision.
    pub fn revision(mut self, n: u64) -> Event {
        self.0.revision = Some(n);
        self
    }

    /// Adds a structured field.
    pub fn field(mut self, key: &str, value: impl Serialize) -> Event {
        self.0.fields.insert(
            key.to_string(),
            serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
        );
        self
    }

    /// The record it will be stored as (seq still 0).
    pub fn record(&self) -> &EventRecord {
        &self.0
    }
}

/// Receives every stored event after the store wrote it (notifications).
pub trait Sink: Send + Sync + 'static {
    /// Called on the writer thread, in order; must not block for long.
    fn stored(&self, event: &EventRecord);
}

/// The handle components emit through. Cheap to clone.
#[derive(Clone)]
pub struct Events {
    tx: Option<mpsc::Sender<EventRecord>>,
    live: broadcast::Sender<EventRecord>,
    dropped: Arc<AtomicU64>,
    watch: Arc<InstanceWatch>,
    closed: CancellationToken,
}

impl Events {
    /// A handle that discards everything (unit tests, tools).
    pub fn disabled() -> Events {
        Events {
            tx: None,
            live: broadcast::channel(1).0,
            dropped: Arc::new(AtomicU64::new(0)),
            watch: Arc::default(),
            closed: CancellationToken::new(),
        }
    }

    /// Starts the writer thread over `store`; `sinks` see each event once it is stored.
    /// Followers' streams end when `shutdown` is cancelled (so a graceful shutdown does not
    /// wait on them).
    pub fn start(store: Store, sinks: Vec<Arc<dyn Sink>>, shutdown: CancellationToken) -> Events {
        let (tx, mut rx) = mpsc::channel::<EventRecord>(QUEUE);
        let (live, _) = broadcast::channel(LIVE);
        let out = live.clone();
        std::thread::Builder::new()
            .name("orca-events".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    // Everything queued meanwhile goes in the same transaction.
                    let mut batch = vec![first];
                    while batch.len() < 256 {
                        match rx.try_recv() {
                            Ok(e) => batch.push(e),
                            Err(_) => break,
                        }
                    }
                    match store.append_events(&batch) {
                        Ok(rows) => {
                            for row in rows {
                                for sink in &sinks {
                                    sink.stored(&row);
                                }
                                // No follower is not an error.
                                let _ = out.send(row);
                            }
                        }
                        Err(e) => warn!(error = %e, events = batch.len(), "storing events failed"),
                    }
                }
            })
            .expect("spawning the event writer thread");
        Events {
            tx: Some(tx),
            live,
            dropped: Arc::new(AtomicU64::new(0)),
            watch: Arc::default(),
            closed: shutdown,
        }
    }

    /// Queues an event; never blocks.
    pub fn emit(&self, event: Event) {
        let Some(tx) = &self.tx else { return };
        tracing::debug!(kind = %event.0.kind, message = %event.0.message, "orca.event");
        if tx.try_send(event.0).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // One line per burst, not one per event (a 10,000-instance deploy would log
            // thousands).
            if n == 1 || n.is_multiple_of(1000) {
                warn!(dropped = n, "event queue full; event dropped");
            }
        }
    }

    /// Cancelled when the server shuts down: followers end their streams.
    pub fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }

    /// Stored events as they are written (for `--follow`).
    pub fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.live.subscribe()
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// One controller pass's instances (those not being removed): see [`InstanceWatch`].
    pub fn observe_instances(&self, instances: &[&Instance], verdicts: &Verdicts<'_>) {
        if self.tx.is_some() {
            self.watch.observe(self, instances, verdicts);
        }
    }

    /// A deploy stored these services (only changed ones make an event).
    pub fn deployed(&self, outcomes: &[orca_store::DeployOutcome]) {
        for o in outcomes.iter().filter(|o| o.changed) {
            self.emit(
                Event::new(Kind::Deploy, format!("revision {} deployed", o.revision))
                    .service(&format!("{}/{}", o.project, o.name))
                    .revision(o.revision),
            );
        }
    }

    /// The operator scaled a service.
    pub fn scaled(&self, key: &str, replicas: u32, revision: u64) {
        self.emit(
            Event::new(
                Kind::ServiceScaled,
                format!("scaled to {replicas} replicas"),
            )
            .service(key)
            .revision(revision)
            .field("replicas", replicas),
        );
    }

    /// The operator stopped services.
    pub fn stopped(&self, recs: &[orca_store::ServiceRecord]) {
        for r in recs {
            self.emit(
                Event::new(Kind::ServiceStopped, "service stopped (config kept)")
                    .service(&r.spec.key())
                    .revision(r.revision),
            );
        }
    }

    /// The operator asked to promote (`promote`) or roll back the rollout to `revision`.
    pub fn operator_request(&self, key: &str, revision: u64, promote: bool) {
        let (kind, what) = if promote {
            (Kind::PromoteRequested, "promote")
        } else {
            (Kind::RollbackRequested, "rollback")
        };
        self.emit(
            Event::new(
                kind,
                format!("{what} of revision {revision} requested by the operator"),
            )
            .service(key)
            .revision(revision),
        );
    }

    /// The operator made revision `restored` current again, as revision `revision`.
    pub fn restored(&self, key: &str, restored: u64, revision: u64) {
        self.emit(
            Event::new(
                Kind::RollbackRequested,
                format!("rollback to revision {restored} requested (new revision {revision})"),
            )
            .service(key)
            .revision(revision)
            .field("restored_revision", restored),
        );
    }

    /// A webhook delivery was handled.
    pub fn webhook_delivery(&self, d: &orca_store::DeliveryRecord) {
        self.emit(
            Event::new(
                Kind::WebhookDelivery,
                format!(
                    "{} webhook delivery {}: {} ({}){}",
                    d.forge,
                    d.delivery.as_deref().unwrap_or("-"),
                    d.outcome,
                    d.status,
                    if d.detail.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", d.detail)
                    }
                ),
            )
            .field("forge", &d.forge)
            .field("delivery", &d.delivery)
            .field("event", &d.event)
            .field("status", d.status)
            .field("outcome", &d.outcome)
            .field("detail", &d.detail)
            .field("hooks", &d.hooks),
        );
    }

    /// A backup (`restore: false`) or restore of backup `id` ended; `error` if it failed.
    pub fn backup(&self, id: &str, restore: bool, error: Option<&str>) {
        let (kind, what) = match (restore, error) {
            (false, None) => (Kind::BackupSucceeded, "backup"),
            (false, Some(_)) => (Kind::BackupFailed, "backup"),
            (true, None) => (Kind::RestoreSucceeded, "restore"),
            (true, Some(_)) => (Kind::RestoreFailed, "restore"),
        };
        let message = match error {
            Some(e) => format!("{what} of {id} failed: {e}"),
            None => format!("{what} of {id} succeeded"),
        };
        let mut e = Event::new(kind, message).field("backup", id);
        if let Some(err) = error {
            e = e.field("error", err);
        }
        self.emit(e);
    }

    /// An image build started, succeeded or failed (from its record).
    pub fn build(&self, b: &orca_store::BuildRecord) {
        let (kind, what) = match b.status {
            orca_store::BuildStatus::Running => (Kind::BuildStarted, "started"),
            orca_store::BuildStatus::Succeeded => (Kind::BuildSucceeded, "succeeded"),
            _ => (Kind::BuildFailed, "failed"),
        };
        let short: String = b.commit.chars().take(12).collect();
        self.emit(
            Event::new(
                kind,
                format!(
                    "build {} of {short} {what}{}",
                    b.number,
                    b.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
            )
            .service(&format!("{}/{}", b.project, b.service))
            .field("number", b.number)
            .field("commit", &b.commit)
            .field("tag", &b.tag)
            .field("trigger", &b.trigger)
            .field("error", &b.error),
        );
    }

    /// A certificate for `domain` (wanted by service `key`) was issued or renewed (`action`
    /// `issue` / `renew`), or that failed with `error`.
    pub fn certificate(&self, domain: &str, key: &str, action: &str, error: Option<&str>) {
        let e = match error {
            Some(err) => Event::new(
                Kind::CertificateFailed,
                format!("certificate {action} for {domain} failed: {err}"),
            )
            .field("error", err),
            None if action == "renew" => Event::new(
                Kind::CertificateRenewed,
                format!("certificate for {domain} renewed"),
            ),
            None => Event::new(
                Kind::CertificateIssued,
                format!("certificate for {domain} issued"),
            ),
        };
        self.emit(
            e.service(key)
                .field("domain", domain)
                .field("action", action),
        );
    }

    /// A rollout moved from `before` to `after` (one store write of the driver).
    pub fn rollout_progress(&self, key: &str, before: &RolloutRecord, after: &RolloutRecord) {
        if let Some(e) = rollout_progress(key, before, after) {
            self.emit(e);
        }
    }

    /// The controller consumed `request` in the step that left the rollout `after` (`None`:
    /// no rollout any more), or dropped it because the rollout it was made against ended.
    pub fn request_applied(
        &self,
        key: &str,
        request: &orca_store::OperatorRequest,
        after: Option<&RolloutRecord>,
    ) {
        let what = match request.kind {
            orca_store::RequestKind::Promote => "promote",
            orca_store::RequestKind::Rollback => "rollback",
        };
        let rev = request.candidate_revision;
        let outcome = match after {
            Some(r) if r.candidate_revision != rev => "dropped: its rollout was replaced",
            Some(r) => match &r.phase {
                RolloutPhase::Progressing => "applied: rollout continues",
                RolloutPhase::Finished => "applied: rollout finished",
                RolloutPhase::RolledBack { .. } | RolloutPhase::Failed { .. } => {
                    "applied: rollout rolled back"
                }
            },
            None => "dropped: no rollout any more",
        };
        self.emit(
            Event::new(
                Kind::RequestApplied,
                format!("{what} request for revision {rev} {outcome}"),
            )
            .service(key)
            .revision(rev)
            .field("request", what)
            .field("outcome", outcome),
        );
    }

    /// A rollout of `key` started.
    pub fn rollout_started(&self, key: &str, r: &RolloutRecord) {
        self.emit(
            Event::new(
                Kind::RolloutStarted,
                format!(
                    "rollout of revision {} started from {} with strategy {}",
                    r.candidate_revision,
                    r.stable_revision
                        .map_or("nothing".to_string(), |s| format!("revision {s}")),
                    r.strategy
                ),
            )
            .service(key)
            .revision(r.candidate_revision)
            .field("stable_revision", r.stable_revision)
            .field("strategy", &r.strategy),
        );
    }

    /// A rollout of `key` to `revision` finished.
    pub fn rollout_finished(&self, key: &str, revision: u64) {
        self.emit(
            Event::new(
                Kind::RolloutPromoted,
                format!("revision {revision} is live: rollout finished"),
            )
            .service(key)
            .revision(revision),
        );
    }

    /// A start of an instance of `key` failed with `error`; placement failures get their kind.
    pub fn start_failed(&self, key: &str, slot: u32, error: &str) {
        let kind = if error.starts_with("no node can run it") || error.starts_with("placement") {
            Kind::PlacementFailed
        } else {
            Kind::StartFailed
        };
        self.emit(
            Event::new(kind, format!("starting slot {slot} failed: {error}"))
                .service(key)
                .field("slot", slot)
                .field("error", error),
        );
    }

    /// orca is removing an instance of `key` for `reason`.
    pub fn removing(&self, key: &str, instances: &[Instance], id: &str, reason: &str) {
        let mut e = Event::new(
            Kind::InstanceRemoving,
            format!("removing instance: {reason}"),
        )
        .service(key)
        .field("reason", reason);
        if let Some(i) = instances.iter().find(|i| i.info.id == id) {
            e = e
                .instance(&i.info.name)
                .revision(i.revision)
                .field("slot", i.slot);
        }
        self.emit(e);
    }
}

/// The event one store write of a rollout stands for, if any.
pub fn rollout_progress(key: &str, before: &RolloutRecord, after: &RolloutRecord) -> Option<Event> {
    let rev = after.candidate_revision;
    match (&before.phase, &after.phase) {
        (RolloutPhase::Progressing, RolloutPhase::RolledBack { reason })
        | (RolloutPhase::Progressing, RolloutPhase::Failed { reason }) => Some(
            Event::new(
                Kind::RolloutRolledBack,
                format!("revision {rev} rolled back: {reason}"),
            )
            .service(key)
            .revision(rev)
            .field("reason", reason)
            .field("stable_revision", after.stable_revision),
        ),
        (RolloutPhase::Progressing, RolloutPhase::Progressing)
            if before.stable_count != after.stable_count
                || before.candidate_count != after.candidate_count
                || before.traffic != after.traffic =>
        {
            let traffic = after.traffic.map(|(s, c)| {
                let total = (s + c).max(1);
                c * 100 / total
            });
            Some(
                Event::new(
                    Kind::RolloutStep,
                    format!(
                        "rollout step: {} stable, {} candidate instances{}",
                        after.stable_count,
                        after.candidate_count,
                        traffic.map_or(String::new(), |p| format!(
                            ", {p}% of traffic to the candidate"
                        ))
                    ),
                )
                .service(key)
                .revision(rev)
                .field("stable_count", after.stable_count)
                .field("candidate_count", after.candidate_count)
                .field("traffic", after.traffic)
                .field("candidate_traffic_percent", traffic),
            )
        }
        _ => None,
    }
}

#[derive(Clone, Debug, Default)]
struct Seen {
    ready: bool,
    failed: bool,
    restart: bool,
    readiness_failed: bool,
}

/// Turns what successive controller passes see of instances into events: started, ready,
/// unready, readiness failing, crashed/OOM-killed with the exit code, liveness restart.
///
/// The first pass after a start only records what exists (a restarted server does not
/// re-announce instances that were already running).
#[derive(Default)]
pub struct InstanceWatch {
    seen: Mutex<Option<HashMap<String, Seen>>>,
}

impl InstanceWatch {
    /// Compares this pass's instances (those not being removed) with the last pass's.
    pub fn observe(&self, events: &Events, instances: &[&Instance], verdicts: &Verdicts<'_>) {
        let mut guard = self.seen.lock().expect("instance watch lock");
        let first = guard.is_none();
        let seen = guard.get_or_insert_with(HashMap::new);
        let mut next = HashMap::with_capacity(instances.len());
        for i in instances {
            let v = verdicts.get(&i.info.id);
            let now = Seen {
                ready: i.is_running() && v.ready,
                failed: i.is_failed(),
                restart: v.restart.is_some(),
                readiness_failed: !v.ready && v.failures >= READINESS_FAILED_AFTER,
            };
            let before = seen.get(&i.info.id);
            if !first {
                for e in transitions(i, before, &now, v) {
                    events.emit(e);
                }
            }
            next.insert(i.info.id.clone(), now);
        }
        *seen = next;
    }
}

fn transitions(
    i: &Instance,
    before: Option<&Seen>,
    now: &Seen,
    v: &crate::health::Verdict,
) -> Vec<Event> {
    let base = |kind: Kind, msg: String| {
        Event::new(kind, msg)
            .service(&i.service)
            .instance(&i.info.name)
            .revision(i.revision)
            .field("slot", i.slot)
            .field("container", crate::instance::short(&i.info.id))
    };
    let mut out = Vec::new();
    let was = before.cloned().unwrap_or_default();
    if before.is_none() && !now.failed {
        out.push(base(
            Kind::InstanceStarted,
            format!(
                "instance started (revision {}, slot {})",
                i.revision, i.slot
            ),
        ));
    }
    if now.ready && !was.ready {
        out.push(base(Kind::InstanceReady, "instance is ready".into()));
    }
    let error = v.last_error.clone().unwrap_or_default();
    if !now.ready && was.ready && !now.failed {
        out.push(
            base(
                Kind::InstanceUnready,
                format!("instance failed readiness and left the routes: {error}"),
            )
            .field("error", &error)
            .field("failures", v.failures),
        );
    } else if now.readiness_failed && !was.readiness_failed && !was.ready && !now.failed {
        out.push(
            base(
                Kind::ReadinessFailed,
                format!("instance failed {} readiness probes: {error}", v.failures),
            )
            .field("error", &error)
            .field("failures", v.failures),
        );
    }
    if now.restart && !was.restart {
        let reason = v.restart.clone().unwrap_or_default();
        out.push(
            base(
                Kind::LivenessRestart,
                format!("liveness failed; restarting: {reason}"),
            )
            .field("reason", &reason),
        );
    }
    if now.failed && !was.failed {
        let code = i.info.exit_code.unwrap_or(-1);
        let e = if i.info.oom_killed {
            base(
                Kind::InstanceOomKilled,
                format!("instance was OOM killed (exit code {code}): raise resources.memory"),
            )
        } else {
            base(
                Kind::InstanceCrashed,
                format!("instance exited with code {code}"),
            )
        };
        out.push(
            e.field("exit_code", code)
                .field("oom_killed", i.info.oom_killed),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(phase: RolloutPhase, counts: (u32, u32), traffic: Option<(u32, u32)>) -> RolloutRecord {
        let mut r = crate::rollout::start(Some(1), 2, 2, "canary", 0);
        r.phase = phase;
        r.stable_count = counts.0;
        r.candidate_count = counts.1;
        r.traffic = traffic;
        r
    }

    #[test]
    fn kinds_have_their_dotted_names() {
        for (k, name) in Kind::ALL {
            assert_eq!(k.as_str(), *name);
            assert_eq!(serde_json::to_value(k).unwrap(), *name);
        }
        assert_eq!(Kind::InstanceCrashed.severity(), "error");
    }

    #[test]
    fn rollout_writes_become_steps_and_rollbacks() {
        let a = rec(RolloutPhase::Progressing, (2, 0), None);
        let b = rec(RolloutPhase::Progressing, (2, 1), Some((90, 10)));
        let step = rollout_progress("shop/web", &a, &b).unwrap();
        assert_eq!(step.record().kind, "rollout.step");
        assert_eq!(step.record().fields["candidate_traffic_percent"], 10);
        assert!(rollout_progress("shop/web", &b, &b).is_none());
        let c = rec(
            RolloutPhase::RolledBack {
                reason: "error rate 50%".into(),
            },
            (2, 0),
            None,
        );
        let back = rollout_progress("shop/web", &b, &c).unwrap();
        assert_eq!(back.record().kind, "rollout.rolled_back");
        assert_eq!(back.record().fields["reason"], "error rate 50%");
        assert_eq!(back.record().project.as_deref(), Some("shop"));
        assert_eq!(back.record().service.as_deref(), Some("web"));
    }
}
