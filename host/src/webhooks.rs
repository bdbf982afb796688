//! Webhook deliveries, host side: picks the forge's webhook plugin (Gitea deliveries are
//! recognised by `X-Gitea-Event` before their GitHub look-alike headers), hands it the raw
//! request and the matching hooks with their secrets, acts on what it verified — once per
//! delivery id — and logs every delivery. Redeploys run in the background: a service with
//! `[service.build]` is built at the pushed commit first; a failed build changes nothing.

use std::sync::Arc;
use tracing::Instrument;

use orca_docker::ContainerRuntime;
use orca_store::{DeliveryRecord, SecretBox, Store, WebhookRecord};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::build::{BuildJob, Builds};
use crate::controller::ControllerHandle;
use crate::plugins::{Hook, Pair, Redeploy, WebhookOutcome, WebhookRequest, World};
use crate::registry::Registry;

/// The forges built in; any other forge is an installed webhook plugin's name.
pub const BUILTIN_FORGES: [&str; 3] = ["github", "gitea", "gitlab"];
/// The secret-box "project" webhook secrets are sealed under (with the hook id as key).
const SEAL_SCOPE: &str = "~webhooks";
/// Headers that carry a delivery's unique id, by forge.
const DELIVERY_HEADERS: [&str; 6] = [
    "x-gitea-delivery",
    "x-forgejo-delivery",
    "x-github-delivery",
    "x-gitlab-event-uuid",
    "idempotency-key",
    "webhook-id",
];
/// Headers that name the event.
const EVENT_HEADERS: [&str; 4] = [
    "x-gitea-event",
    "x-github-event",
    "x-gitlab-event",
    "x-event-key",
];

/// The answer to a delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
}

/// Everything a delivery may touch.
pub struct Webhooks<R: ContainerRuntime> {
    store: Store,
    secrets: Arc<SecretBox>,
    registry: Registry,
    controller: ControllerHandle,
    builds: Arc<Builds<R>>,
    events: crate::events::Events,
}

/// Which plugin handles a delivery to `/api/v1/webhooks/{route}`.
pub fn plugin_for(route: &str, headers: &[Pair]) -> String {
    let has = |name: &str| headers.iter().any(|p| p.key.eq_ignore_ascii_case(name));
    match route {
        // Gitea and Forgejo send GitHub's headers too: their own come first.
        "github" if has("x-gitea-event") || has("x-forgejo-event") => "gitea".into(),
        other => other.into(),
    }
}

/// The forges whose hooks a plugin is shown: a Gitea delivery may reach the `github` route,
/// so the two share their hooks.
fn hook_matches(plugin: &str, forge: &str) -> bool {
    match plugin {
        "github" | "gitea" => forge == "github" || forge == "gitea",
        _ => forge == plugin,
    }
}

fn header_value<'a>(headers: &'a [Pair], names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| {
        headers
            .iter()
            .find(|p| p.key.eq_ignore_ascii_case(n))
            .map(|p| p.value.trim())
            .filter(|v| !v.is_empty())
    })
}

impl<R: ContainerRuntime> Webhooks<R> {
    /// The delivery handler.
    pub fn new(
        store: Store,
        secrets: Arc<SecretBox>,
        registry: Registry,
        controller: ControllerHandle,
        builds: Arc<Builds<R>>,
    ) -> Webhooks<R> {
        Webhooks {
            store,
            secrets,
            registry,
            controller,
            builds,
            events: crate::events::Events::disabled(),
        }
    }

    /// Emits an event per delivery through `events` (the default discards them).
    pub fn with_events(mut self, events: crate::events::Events) -> Self {
        self.events = events;
        self
    }

    /// Seals a new hook's secret.
    pub fn seal_secret(&self, id: &str, secret: &str) -> Vec<u8> {
        self.secrets.seal(SEAL_SCOPE, id, secret)
    }

    /// Handles one delivery to `/api/v1/webhooks/{route}`.
    pub async fn deliver(self: &Arc<Self>, route: &str, request: WebhookRequest) -> Answer {
        let plugin_name = plugin_for(route, &request.headers);
        let event = header_value(&request.headers, &EVENT_HEADERS).map(str::to_owned);
        let delivery_id = header_value(&request.headers, &DELIVERY_HEADERS)
            .map(|id| id.chars().take(200).collect::<String>());
        let mut log = DeliveryRecord {
            seq: 0,
            at: crate::controller::now_ms() / 1000,
            forge: plugin_name.clone(),
            delivery: delivery_id.clone(),
            event,
            status: 0,
            outcome: String::new(),
            detail: String::new(),
            hooks: Vec::new(),
        };
        // Without a delivery id, the body identifies a delivery (a redelivery repeats it).
        let dedupe_id = delivery_id.clone().unwrap_or_else(|| {
            format!("body-sha256:{}", hex::encode(Sha256::digest(&request.body)))
        });
        let answer = self
            .decide(&plugin_name, request, dedupe_id, &mut log)
            .await;
        log.status = answer.status;
        self.events.webhook_delivery(&log);
        if let Err(e) = self.store.record_delivery(&log) {
            tracing::error!("recording a webhook delivery: {e}");
        }
        tracing::info!(
            forge = %log.forge,
            delivery = log.delivery.as_deref().unwrap_or("-"),
            status = log.status,
            outcome = %log.outcome,
            detail = %log.detail,
            "webhook delivery"
        );
        answer
    }

    async fn decide(
        self: &Arc<Self>,
        plugin_name: &str,
        request: WebhookRequest,
        id: String,
        log: &mut DeliveryRecord,
    ) -> Answer {
        if !BUILTIN_FORGES.contains(&plugin_name)
            && orca_config::validate_name("forge", plugin_name).is_err()
        {
            return reply(
                log,
                404,
                "rejected",
                format!("no webhook route {plugin_name:?}"),
                json!({}),
            );
        }
        let records = match self.store.list_webhooks() {
            Ok(r) => r,
            Err(e) => {
                return reply(
                    log,
                    503,
                    "error",
                    format!("reading webhooks: {e}"),
                    json!({}),
                )
            }
        };
        let records: Vec<WebhookRecord> = records
            .into_iter()
            .filter(|r| hook_matches(plugin_name, &r.forge))
            .collect();
        if records.is_empty() {
            return reply(
                log,
                404,
                "rejected",
                format!("no webhook is registered for forge {plugin_name}"),
                json!({}),
            );
        }
        let mut hooks = Vec::with_capacity(records.len());
        for r in &records {
            match self.secrets.open(SEAL_SCOPE, &r.id, &r.sealed_secret) {
                Ok(secret) => hooks.push(Hook {
                    id: r.id.clone(),
                    repo: r.repo.clone(),
                    branch: r.branch.clone(),
                    secret,
                }),
                Err(e) => tracing::error!(hook = %r.id, "cannot open the webhook's secret: {e}"),
            }
        }
        let registry = self.registry.clone();
        let name = plugin_name.to_string();
        let handled = tokio::task::spawn_blocking(move || {
            let plugin = registry
                .resolve(&name, World::Webhook)
                .map_err(|e| (404, e.to_string()))?;
            plugin
                .handle(&request, &hooks)
                .map_err(|e| (502, format!("webhook plugin {name} failed: {e}")))
        })
        .await
        .unwrap_or_else(|e| Err((500, format!("webhook task failed: {e}"))));
        let outcome = match handled {
            Err((status, reason)) => return reply(log, status, "error", reason, json!({})),
            Ok(Err(rejection)) => {
                return reply(
                    log,
                    rejection.status,
                    "rejected",
                    rejection.reason,
                    json!({}),
                )
            }
            Ok(Ok(outcome)) => outcome,
        };
        match outcome {
            WebhookOutcome::Pong => reply(log, 200, "pong", "ping verified".into(), json!({})),
            WebhookOutcome::Ignore(reason) => reply(log, 202, "ignored", reason, json!({})),
            WebhookOutcome::Redeploy(list) => {
                log.hooks = list.iter().map(|r| r.hook.clone()).collect();
                let claim_key = format!("{plugin_name}:{id}");
                match self.store.claim_delivery(&claim_key, log.at) {
                    Ok(true) => {}
                    Ok(false) => {
                        return reply(
                            log,
                            200,
                            "duplicate",
                            format!("delivery {id} was already processed"),
                            json!({}),
                        )
                    }
                    Err(e) => {
                        return reply(
                            log,
                            503,
                            "error",
                            format!("recording the delivery: {e}"),
                            json!({}),
                        )
                    }
                }
                let mut started = Vec::new();
                for redeploy in list {
                    let Some(record) = records.iter().find(|r| r.id == redeploy.hook) else {
                        continue;
                    };
                    started.push(json!({
                        "hook": record.id,
                        "project": record.project,
                        "service": record.service,
                        "branch": redeploy.branch,
                        "commit": redeploy.commit,
                    }));
                    let this = self.clone();
                    let record = record.clone();
                    tokio::spawn(async move { this.redeploy(record, redeploy).await });
                }
                let detail = started
                    .iter()
                    .map(|s| {
                        format!(
                            "{}/{} at {}",
                            s["project"].as_str().unwrap_or(""),
                            s["service"].as_str().unwrap_or(""),
                            s["commit"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                reply(
                    log,
                    202,
                    "redeploy",
                    detail,
                    json!({ "redeploys": started }),
                )
            }
        }
    }

    /// Builds (if the service has `[service.build]`) and deploys one verified push.
    async fn redeploy(&self, hook: WebhookRecord, push: Redeploy) {
        let span = tracing::info_span!(
            "orca.webhook.redeploy",
            hook = %hook.id,
            service = %format!("{}/{}", hook.project, hook.service),
            commit = %push.commit
        );
        async {
            let record = match self.store.get_service(&hook.project, &hook.service) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    tracing::warn!("the webhook's service is not deployed: nothing to redeploy");
                    return;
                }
                Err(e) => {
                    tracing::error!("reading the service: {e}");
                    return;
                }
            };
            if record.state == orca_store::DesiredState::Stopped {
                tracing::info!("the service is stopped: a push does not start it");
                return;
            }
            let mut spec = record.spec;
            if let Some(build) = spec.build.clone() {
                let job = BuildJob {
                    project: hook.project.clone(),
                    service: hook.service.clone(),
                    build,
                    commit: push.commit.clone(),
                    branch: push.branch.clone(),
                    trigger: format!("push (webhook {})", hook.id),
                };
                match self.builds.run(job).await {
                    Ok(built) => spec.image = Some(built.tag),
                    Err(e) => {
                        tracing::warn!("{e}; the running version stays");
                        return;
                    }
                }
            }
            match deploy_one(&self.store, &self.secrets, &spec, &push.commit) {
                Ok(revision) => {
                    tracing::info!(revision, "redeployed for push");
                    self.controller.wake();
                }
                Err(e) => tracing::error!("redeploy failed: {e}"),
            }
        }
        .instrument(span)
        .await
    }
}

/// Notes the outcome in the delivery log and builds the answer.
fn reply(
    log: &mut DeliveryRecord,
    status: u16,
    outcome: &str,
    detail: String,
    extra: Value,
) -> Answer {
    log.outcome = outcome.to_string();
    log.detail = detail.clone();
    let mut body = json!({ "outcome": outcome, "reason": detail });
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    Answer { status, body }
}

/// Stores a new version of one service for `commit` and returns its revision.
pub fn deploy_one(
    store: &Store,
    secrets: &SecretBox,
    spec: &orca_config::ServiceSpec,
    commit: &str,
) -> Result<u64, String> {
    let item =
        crate::deploy::prepare(store, secrets, spec, Some(commit)).map_err(|e| e.to_string())?;
    let outcome = store
        .apply_deploy(&[item], crate::controller::now_ms() / 1000)
        .map_err(|e| e.to_string())?;
    Ok(outcome.first().map_or(0, |o| o.revision))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(k: &str, v: &str) -> Pair {
        Pair {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn gitea_is_recognised_before_its_github_headers() {
        let gitea = [
            pair("X-GitHub-Event", "push"),
            pair("X-Gitea-Event", "push"),
        ];
        assert_eq!(plugin_for("github", &gitea), "gitea");
        assert_eq!(
            plugin_for("github", &[pair("X-GitHub-Event", "push")]),
            "github"
        );
        assert_eq!(plugin_for("gitlab", &[]), "gitlab");
        assert_eq!(plugin_for("my-forge", &[]), "my-forge");
        assert!(hook_matches("gitea", "github"));
        assert!(!hook_matches("gitlab", "github"));
        assert!(hook_matches("my-forge", "my-forge"));
    }

    #[test]
    fn delivery_ids_come_from_the_forges_headers() {
        let h = [
            pair("X-GitHub-Delivery", " "),
            pair("X-Gitea-Delivery", "abc"),
        ];
        assert_eq!(header_value(&h, &DELIVERY_HEADERS), Some("abc"));
        assert_eq!(header_value(&[], &DELIVERY_HEADERS), None);
    }
}
