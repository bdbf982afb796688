//! Notifications: `[[notify]]` targets of cluster.toml. Each stored event that matches a
//! target's filter is POSTed to it as JSON, signed with HMAC-SHA256 (like the forges sign
//! their webhooks), at least once: retried with doubling back-off until a 2xx answer or the
//! target's `attempts` run out. Every attempt of one event carries the same
//! `X-Orca-Delivery` id, so a receiver can drop repeats; orca sends each event to each target
//! once (the next attempt only after a failed one). The recent deliveries and their state are
//! kept in memory for `GET /api/v1/notifications`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use orca_config::NotifyConfig;
use orca_store::EventRecord;
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::mpsc;
use tracing::{info, warn, Instrument};

use crate::events::{Kind, Sink};

/// Deliveries whose state is kept for the API (the newest).
const STATUS_KEPT: usize = 200;
/// First retry delay; doubles per attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest delay between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Time allowed for one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Header carrying `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Orca-Signature-256";
/// Header carrying the delivery id, the same on every attempt.
pub const DELIVERY_HEADER: &str = "X-Orca-Delivery";
/// Header carrying the event kind.
pub const EVENT_HEADER: &str = "X-Orca-Event";

/// Whether `filter` names an event kind (`instance.crashed`) or family (`instance`).
pub fn valid_filter(filter: &str) -> bool {
    Kind::ALL
        .iter()
        .any(|(_, name)| *name == filter || name.split('.').next() == Some(filter))
}

/// Checks every target's `events` filters; the error names the field and the allowed values.
pub fn check(targets: &[NotifyConfig]) -> Result<(), String> {
    for (i, t) in targets.iter().enumerate() {
        for (j, f) in t.events.iter().enumerate() {
            if !valid_filter(f) {
                let mut families: Vec<&str> = Kind::ALL
                    .iter()
                    .filter_map(|(_, n)| n.split('.').next())
                    .collect();
                families.dedup();
                return Err(format!(
                    "cluster.toml: field `notify[{i}].events[{j}]`: unknown event kind {f:?}; use a kind such as instance.crashed or rollout.rolled_back, or a family: {}",
                    families.join(", ")
                ));
            }
        }
    }
    Ok(())
}

fn matches(t: &NotifyConfig, e: &EventRecord) -> bool {
    let kind_ok = if t.events.is_empty() {
        e.severity == "error"
    } else {
        t.events.iter().any(|f| {
            e.kind == *f
                || e.kind
                    .strip_prefix(f.as_str())
                    .is_some_and(|r| r.starts_with('.'))
        })
    };
    kind_ok
        && t.project
            .as_ref()
            .is_none_or(|p| e.project.as_ref() == Some(p))
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Where one delivery stands.
#[derive(Clone, Debug, Serialize)]
pub struct DeliveryStatus {
    /// The `X-Orca-Delivery` id.
    pub id: String,
    /// Target name.
    pub target: String,
    /// Event sequence number.
    pub seq: u64,
    /// Event kind.
    pub kind: String,
    /// `pending`, `delivered` or `failed` (attempts exhausted).
    pub state: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// HTTP status of the last attempt, if it got an answer.
    pub last_status: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// The notification sender: a [`Sink`] of the event writer.
pub struct Notifier {
    targets: Vec<NotifyConfig>,
    cluster: String,
    tx: mpsc::UnboundedSender<(usize, EventRecord)>,
    status: Arc<Mutex<VecDeque<DeliveryStatus>>>,
}

impl Notifier {
    /// Starts the sender (on the current tokio runtime).
    pub fn start(targets: Vec<NotifyConfig>, cluster: String) -> Arc<Notifier> {
        let (tx, mut rx) = mpsc::unbounded_channel::<(usize, EventRecord)>();
        let status: Arc<Mutex<VecDeque<DeliveryStatus>>> = Arc::default();
        let notifier = Arc::new(Notifier {
            targets: targets.clone(),
            cluster: cluster.clone(),
            tx,
            status: status.clone(),
        });
        crate::process::crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .user_agent(concat!("orca/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("building the notification HTTP client");
        tokio::spawn(async move {
            while let Some((i, event)) = rx.recv().await {
                let target = targets[i].clone();
                let id = format!("{cluster}-{}-{}", event.seq, target.name);
                let body = serde_json::to_vec(&serde_json::json!({
                    "delivery": id,
                    "cluster": cluster,
                    "event": event,
                }))
                .expect("an event always serializes");
                push(
                    &status,
                    DeliveryStatus {
                        id: id.clone(),
                        target: target.name.clone(),
                        seq: event.seq,
                        kind: event.kind.clone(),
                        state: "pending".into(),
                        attempts: 0,
                        last_status: None,
                        last_error: None,
                    },
                );
                let span =
                    tracing::info_span!("orca.notify", target = %target.name, seq = event.seq);
                tokio::spawn(
                    deliver(http.clone(), target, id, event.kind, body, status.clone())
                        .instrument(span),
                );
            }
        });
        notifier
    }

    /// Configured targets (names and filters; never secrets).
    pub fn targets(&self) -> serde_json::Value {
        serde_json::json!(self
            .targets
            .iter()
            .map(|t| serde_json::json!({
                "name": t.name,
                "events": t.events,
                "project": t.project,
                "attempts": t.attempts,
            }))
            .collect::<Vec<_>>())
    }

    /// The recent deliveries, newest first.
    pub fn deliveries(&self) -> Vec<DeliveryStatus> {
        self.status
            .lock()
            .expect("notify status lock")
            .iter()
            .rev()
            .cloned()
            .collect()
    }

    /// The cluster name deliveries carry.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }
}

impl Sink for Notifier {
    fn stored(&self, event: &EventRecord) {
        for (i, t) in self.targets.iter().enumerate() {
            if matches(t, event) {
                let _ = self.tx.send((i, event.clone()));
            }
        }
    }
}

fn push(status: &Mutex<VecDeque<DeliveryStatus>>, s: DeliveryStatus) {
    let mut q = status.lock().expect("notify status lock");
    q.push_back(s);
    while q.len() > STATUS_KEPT {
        q.pop_front();
    }
}

fn update(status: &Mutex<VecDeque<DeliveryStatus>>, id: &str, f: impl FnOnce(&mut DeliveryStatus)) {
    let mut q = status.lock().expect("notify status lock");
    if let Some(s) = q.iter_mut().rev().find(|s| s.id == id) {
        f(s);
    }
}

async fn deliver(
    http: reqwest::Client,
    target: NotifyConfig,
    id: String,
    kind: String,
    body: Vec<u8>,
    status: Arc<Mutex<VecDeque<DeliveryStatus>>>,
) {
    let signature = sign(target.secret.as_bytes(), &body);
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=target.attempts {
        let result = http
            .post(&target.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, &signature)
            .header(DELIVERY_HEADER, &id)
            .header(EVENT_HEADER, &kind)
            .body(body.clone())
            .send()
            .await;
        let (code, error) = match result {
            Ok(r) if r.status().is_success() => {
                let code = r.status().as_u16();
                update(&status, &id, |s| {
                    s.state = "delivered".into();
                    s.attempts = attempt;
                    s.last_status = Some(code);
                    s.last_error = None;
                });
                info!(attempt, status = code, "notification delivered");
                return;
            }
            Ok(r) => (
                Some(r.status().as_u16()),
                format!("the receiver answered {}", r.status()),
            ),
            Err(e) => (None, format!("sending failed: {e}")),
        };
        let last = attempt == target.attempts;
        update(&status, &id, |s| {
            s.attempts = attempt;
            s.last_status = code;
            s.last_error = Some(error.clone());
            if last {
                s.state = "failed".into();
            }
        });
        if last {
            warn!(attempts = attempt, %error, "notification abandoned");
            return;
        }
        warn!(attempt, %error, retry_in_ms = backoff.as_millis() as u64, "notification failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(events: &[&str]) -> NotifyConfig {
        NotifyConfig {
            name: "ops".into(),
            url: "http://127.0.0.1:1/".into(),
            secret: "0123456789abcdef0123".into(),
            events: events.iter().map(|s| s.to_string()).collect(),
            project: None,
            attempts: 3,
        }
    }

    fn ev(kind: &str, severity: &str) -> EventRecord {
        EventRecord {
            seq: 1,
            at_ms: 0,
            kind: kind.into(),
            severity: severity.into(),
            project: Some("shop".into()),
            service: Some("web".into()),
            instance: None,
            revision: None,
            message: String::new(),
            fields: Default::default(),
        }
    }

    #[test]
    fn filters_match_kinds_families_and_default_to_errors() {
        assert!(matches(
            &target(&["rollout"]),
            &ev("rollout.rolled_back", "error")
        ));
        assert!(!matches(&target(&["rollout"]), &ev("rollouts.x", "error")));
        assert!(matches(
            &target(&["instance.crashed"]),
            &ev("instance.crashed", "error")
        ));
        assert!(!matches(
            &target(&["instance.crashed"]),
            &ev("instance.ready", "info")
        ));
        assert!(matches(&target(&[]), &ev("build.failed", "error")));
        assert!(!matches(&target(&[]), &ev("deploy", "info")));
        let mut other = target(&[]);
        other.project = Some("blog".into());
        assert!(!matches(&other, &ev("build.failed", "error")));
    }

    #[test]
    fn unknown_filters_are_refused_by_name() {
        assert!(check(&[target(&["rollout", "instance.crashed", "deploy"])]).is_ok());
        let err = check(&[target(&["rollout", "crash"])]).unwrap_err();
        assert!(
            err.contains("notify[0].events[1]") && err.contains("\"crash\""),
            "{err}"
        );
        assert!(
            err.contains("instance") && err.contains("certificate"),
            "{err}"
        );
    }

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
