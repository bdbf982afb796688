//! Service endpoints: deploy, status, scale, stop, logs, health and metrics.

use std::collections::{BTreeSet, HashMap, HashSet};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use orca_contract::api::LogFormat;
use orca_docker::{ContainerRuntime, LogLine, LogStream};
use orca_store::{DesiredState, RequestKind, RolloutPhase, ServiceRecord};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{now_unix, parse_json, ApiError, AppState, RawBody};
use crate::instance;
use crate::plugins::World;

/// `GET /api/v1/health`: answers once the server is serving.
pub async fn health<R: ContainerRuntime>(State(s): State<AppState<R>>) -> Json<Value> {
    // Still 200: the process serves. Records that cannot be decoded are counted so
    // monitoring sees a damaged store; `status` (authenticated) names them.
    let broken = s.store.broken_records().len();
    let status = if broken == 0 { "ok" } else { "degraded" };
    Json(json!({ "status": status, "broken_records": broken }))
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics<R: ContainerRuntime>(State(s): State<AppState<R>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

/// The service's strategy (the default one if it names none) exists, is a strategy, and
/// accepts the service's parameters (`check-params`; strategies built against
/// `orca:plugin` 0.1/0.2 have no check and accept everything). Runs the plugin off the
/// async threads; a check that traps or times out refuses the deploy too.
async fn check_strategy<R: ContainerRuntime>(
    s: &AppState<R>,
    spec: &orca_config::ServiceSpec,
) -> Result<(), ApiError> {
    let reference = spec
        .deploy
        .as_ref()
        .and_then(|d| d.strategy.clone())
        .unwrap_or_else(|| crate::rollout::DEFAULT_STRATEGY.to_string());
    let name = spec.name.clone();
    let plugin = s
        .registry
        .resolve(&reference, World::Strategy)
        .map_err(|e| ApiError::bad_request(format!("service \"{name}\": {e}")))?;
    let service = crate::controller::plugin_service(spec, spec.replicas);
    let checked = tokio::task::spawn_blocking(move || plugin.check_params(&service))
        .await
        .map_err(|e| ApiError::internal(format!("strategy parameter check panicked: {e}")))?;
    let written = s.registry.describe(&reference);
    match checked {
        Ok(None) => Ok(()),
        Ok(Some(refused)) => Err(ApiError::bad_request(format!(
            "service \"{name}\": strategy {written} refuses parameter \"{}\": {}",
            refused.key, refused.message
        ))),
        Err(e) => Err(ApiError::bad_request(s.registry.describe_in(
            &format!("service \"{name}\": strategy {written} could not check its parameters: {e}"),
            &reference,
        ))),
    }
}

/// `POST /api/v1/deploy`: validates the whole request, then stores it in one transaction.
pub async fn deploy<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    let request = orca_config::parse_deploy_request(&body)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut specs = request.services;
    // A service's own certificate must parse and match its key before anything is stored.
    for upload in &request.tls {
        orca_proxy::certified_key(&upload.cert_pem, &upload.key_pem).map_err(|e| {
            ApiError::bad_request(format!(
                "service \"{}/{}\": tls_cert/tls_key: {e}",
                upload.project, upload.service
            ))
        })?;
    }
    for spec in &specs {
        check_strategy(&s, spec).await?;
    }
    // A domain belongs to one service: refuse to take one from a service outside this request.
    // (Checked here before any build; the store checks again in the deploy's transaction.)
    let keys: HashSet<String> = specs.iter().map(|sp| sp.key()).collect();
    for rec in s.store.list_services()? {
        if keys.contains(&rec.spec.key()) {
            continue;
        }
        if let Some(d) = &rec.spec.domain {
            if let Some(sp) = specs.iter().find(|sp| sp.domain.as_ref() == Some(d)) {
                return Err(ApiError::conflict(format!(
                    "service \"{}\": domain \"{d}\" is already used by service \"{}\" in project \"{}\"",
                    sp.name,
                    rec.spec.name,
                    rec.spec.project()
                )));
            }
        }
    }
    check_mounts_and_dependencies(&s, &specs)?;
    // Services with `[service.build]` and no image are built first (from their branch's
    // head); a failed build fails the deploy and changes nothing.
    let mut commits = Vec::with_capacity(specs.len());
    for spec in &mut specs {
        commits.push(build_if_needed(&s, spec).await?);
    }
    let mut items = Vec::with_capacity(specs.len());
    for (spec, commit) in specs.iter().zip(&commits) {
        items.push(
            crate::deploy::prepare(&s.store, &s.secrets, spec, commit.as_deref())
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
        );
    }
    // A replica count changed by `orca scale` is reset to the file's by a deploy; the answer
    // says so (the CLI prints it) instead of doing it silently.
    let mut scaled: HashMap<String, u32> = HashMap::new();
    for spec in &specs {
        let (project, name) = (spec.project(), spec.name.as_str());
        if let (Ok(Some(rec)), Ok(Some(rev))) = (
            s.store.get_service(project, name),
            s.store.current_revision(project, name),
        ) {
            if rec.spec.replicas != rev.spec.replicas && rec.spec.replicas != spec.replicas {
                scaled.insert(spec.key(), rec.spec.replicas);
            }
        }
    }
    // The request's own certificates, checked and sealed before the transaction.
    let mut certificates = Vec::new();
    for upload in &request.tls {
        let Some(spec) = specs
            .iter()
            .find(|sp| sp.project() == upload.project && sp.name == upload.service)
        else {
            continue;
        };
        let Some(domain) = spec.domain.as_deref() else {
            continue;
        };
        certificates.push(
            crate::certs::manual_record(
                &s.secrets,
                &spec.key(),
                domain,
                &upload.cert_pem,
                &upload.key_pem,
            )
            .map_err(ApiError::bad_request)?,
        );
    }
    // One transaction: domain uniqueness, services, revisions and certificates.
    let outcomes = s
        .store
        .apply_deploy_with(&items, &certificates, now_unix())?;
    s.controller.wake();
    s.events.deployed(&outcomes);
    tracing::info!(services = outcomes.len(), "deploy accepted");
    Ok(Json(json!({
        "deployed": outcomes.iter().map(|o| o.name.clone()).collect::<Vec<_>>(),
        "services": outcomes.iter().map(|o| json!({
            "project": o.project, "name": o.name, "revision": o.revision, "changed": o.changed,
            "replicas_reset_from": scaled.get(&format!("{}/{}", o.project, o.name)),
            "replicas": specs.iter().find(|sp| sp.project() == o.project && sp.name == o.name).map(|sp| sp.replicas),
        })).collect::<Vec<_>>(),
    })))
}

/// Host paths only under `[volumes] host_paths` (resolved on this machine), and
/// `depends_on` naming services of the same project — of this request or already stored —
/// without a cycle among the request and what is stored. Nothing is stored if one fails.
fn check_mounts_and_dependencies<R: ContainerRuntime>(
    s: &AppState<R>,
    specs: &[orca_config::ServiceSpec],
) -> Result<(), ApiError> {
    for spec in specs {
        crate::volumes::check_host_paths(spec, &s.host_paths)
            .map_err(|e| ApiError::bad_request(format!("service \"{}\": {e}", spec.key())))?;
    }
    if specs.iter().all(|sp| sp.depends_on.is_empty()) {
        return Ok(());
    }
    // The project's services after this deploy: the request's, then the stored others.
    let stored = s.store.list_services()?;
    let mut after: HashMap<(String, String), Vec<String>> = stored
        .iter()
        .map(|r| {
            (
                (r.spec.project().to_string(), r.spec.name.clone()),
                r.spec.depends_on.clone(),
            )
        })
        .collect();
    for sp in specs {
        after.insert(
            (sp.project().to_string(), sp.name.clone()),
            sp.depends_on.clone(),
        );
    }
    for sp in specs {
        for (i, dep) in sp.depends_on.iter().enumerate() {
            if !after.contains_key(&(sp.project().to_string(), dep.clone())) {
                return Err(ApiError::bad_request(format!(
                    "service \"{}\": field `depends_on[{i}]`: unknown service {dep:?} in project \"{}\" (neither in this deploy nor deployed)",
                    sp.key(),
                    sp.project()
                )));
            }
        }
    }
    let projects: HashSet<&str> = specs.iter().map(|sp| sp.project()).collect();
    for project in projects {
        let graph: std::collections::BTreeMap<&str, Vec<&str>> = after
            .iter()
            .filter(|((p, _), _)| p == project)
            .map(|((_, n), deps)| (n.as_str(), deps.iter().map(String::as_str).collect()))
            .collect();
        if let Some(cycle) = orca_config::service::dependency_cycle(&graph) {
            return Err(ApiError::bad_request(format!(
                "project \"{project}\": field `depends_on`: dependency cycle: {} (with the services already deployed)",
                cycle.join(" -> ")
            )));
        }
    }
    Ok(())
}

/// For a spec with `[service.build]` and no `image`: resolves the branch head, reuses the
/// running revision's image if it was built from that commit, else builds it; sets
/// `spec.image` to the built tag and returns the commit.
async fn build_if_needed<R: ContainerRuntime>(
    s: &AppState<R>,
    spec: &mut orca_config::ServiceSpec,
) -> Result<Option<String>, ApiError> {
    let Some(build) = spec.build.clone().filter(|_| spec.image.is_none()) else {
        return Ok(None);
    };
    let (commit, branch) = s
        .builds
        .head(&build)
        .await
        .map_err(|e| ApiError::bad_request(format!("service \"{}\": {e}", spec.name)))?;
    if let Some(rev) = s.store.current_revision(spec.project(), &spec.name)? {
        let same = rev.commit.as_deref() == Some(commit.as_str()) && rev.spec.build == spec.build;
        if let Some(image) = rev.spec.image.filter(|_| same) {
            if s.runtime.image_exists(&image).await.unwrap_or(false) {
                spec.image = Some(image);
                return Ok(Some(commit));
            }
        }
    }
    let job = crate::build::BuildJob {
        project: spec.project().to_string(),
        service: spec.name.clone(),
        build,
        commit: commit.clone(),
        branch,
        trigger: "deploy".into(),
    };
    let built = s.builds.run(job).await.map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{e} (see `orca logs {} --build`)", spec.name),
        )
    })?;
    spec.image = Some(built.tag);
    Ok(Some(commit))
}

/// Query of `status`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusQuery {
    project: Option<String>,
}

/// Last events shown per service by `status`.
const STATUS_EVENTS: usize = 3;

/// `GET /api/v1/status?project=`.
pub async fn status<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    Query(q): Query<StatusQuery>,
) -> Result<Json<Value>, ApiError> {
    let view = s.controller.view();
    let health = s.controller.health();
    let mut services = Vec::new();
    for rec in s.store.list_services()? {
        if q.project
            .as_deref()
            .is_some_and(|p| p != rec.spec.project())
        {
            continue;
        }
        let key = rec.spec.key();
        let mut instances = Vec::new();
        let (mut running, mut ready) = (0u32, 0u32);
        for i in view.instances.iter().filter(|i| i.service == key) {
            let verdict = health.verdict(&i.info.id);
            let usage = s.stats.usage(&i.info.id);
            let is_ready = i.is_running() && view.ready.contains(&i.info.id);
            running += u32::from(i.is_running());
            ready += u32::from(is_ready);
            // Its own revision's port, as the controller routes and probes it.
            let address = view.addresses.get(&i.info.id).map(|a| a.to_string());
            instances.push(json!({
                "id": instance::short(&i.info.id),
                "name": i.info.name,
                "node": if i.node.is_empty() { &s.node.hostname } else { &i.node },
                "slot": i.slot,
                "state": i.info.state.to_string(),
                "ready": is_ready,
                "address": address,
                "image": i.info.image,
                "fingerprint": i.fingerprint,
                "revision": i.revision,
                "started_at": i.info.started_at,
                "exit_code": i.info.exit_code,
                "oom_killed": i.info.oom_killed,
                "probe_error": verdict.last_error,
                "memory_bytes": usage.map(|u| u.memory_bytes),
                "memory_limit_bytes": usage.map(|u| u.memory_limit_bytes),
                "cpu_percent": usage.and_then(|u| u.cpu_percent),
            }));
        }
        // A record of this service that cannot be decoded is named in its `error`; it never
        // fails the status of the others.
        let mut store_errors: Vec<String> = Vec::new();
        let record = s
            .store
            .get_rollout(rec.spec.project(), &rec.spec.name)
            .unwrap_or_else(|e| {
                store_errors.push(e.to_string());
                None
            });
        // The revision that serves: after the current revision's rollout was rolled back (or
        // failed), its stable revision, with the candidate and the reason shown beside it.
        let rolled_back = record.as_ref().and_then(|r| match &r.phase {
            RolloutPhase::RolledBack { reason } | RolloutPhase::Failed { reason }
                if r.candidate_revision == rec.revision =>
            {
                r.stable_revision.map(|stable| {
                    let reason = s.registry.describe_in(reason, &r.strategy);
                    (stable, r.candidate_revision, reason)
                })
            }
            _ => None,
        });
        let rollout = record
            // A finished rollout is history, not live traffic.
            .filter(|r| r.phase != RolloutPhase::Finished)
            .map(|r| {
                let (phase, reason) = match &r.phase {
                    RolloutPhase::Progressing => ("progressing", None),
                    RolloutPhase::RolledBack { reason } => ("rolled-back", Some(s.registry.describe_in(reason, &r.strategy))),
                    RolloutPhase::Failed { reason } => ("failed", Some(s.registry.describe_in(reason, &r.strategy))),
                    RolloutPhase::Finished => ("finished", None),
                };
                json!({
                    "phase": phase,
                    "reason": reason,
                    // Why the rollout of a service with a writable, not shared volume has
                    // a short gap: the old instance stops before the new one starts.
                    "stop_first": rec.spec.exclusive_volume().and_then(|m| m.volume().map(|v| format!("stop-first: volume {v} is not shared"))),
                    "strategy": r.strategy,
                    // The strategy as the service file wrote it (`./ramp.wasm (sha256:…)`).
                    "strategy_as_written": s.registry.describe(&r.strategy),
                    "stable_revision": r.stable_revision,
                    "candidate_revision": r.candidate_revision,
                    "stable_count": r.stable_count,
                    "candidate_count": r.candidate_count,
                    // An ended rollout splits no traffic any more.
                    "traffic": r.traffic
                        .filter(|_| r.phase == RolloutPhase::Progressing)
                        .map(|(st, ca)| json!({"stable": st, "candidate": ca})),
                    "awaiting_operator": awaiting_operator(&r),
                    "promote_requested": r.promote_requested,
                    "steps": r.steps,
                    "started_at_ms": r.started_at_ms,
                })
            });
        let revisions = s
            .store
            .list_revisions(rec.spec.project(), &rec.spec.name)
            .unwrap_or_else(|e| {
                store_errors.push(e.to_string());
                Vec::new()
            });
        let error = view
            .errors
            .get(&key)
            .cloned()
            .or_else(|| (!store_errors.is_empty()).then(|| store_errors.join("; ")));
        let status = service_status(&rec, ready, error.is_some());
        let commit_of = |n: u64| {
            revisions
                .iter()
                .find(|r| r.number == n)
                .and_then(|r| r.commit.clone())
        };
        for inst in &mut instances {
            let commit = inst["revision"].as_u64().and_then(commit_of);
            inst["commit"] = json!(commit);
        }
        let last_build = s
            .store
            .list_builds(rec.spec.project(), &rec.spec.name)
            .unwrap_or_default()
            .pop()
            .map(|b| {
                json!({
                    "number": b.number,
                    "status": b.status,
                    "commit": b.commit,
                    "tag": b.tag,
                    "trigger": b.trigger,
                    "error": b.error,
                    "started_ms": b.started_ms,
                    "finished_ms": b.finished_ms,
                })
            });
        let (serving_revision, serving_image) = match &rolled_back {
            Some((stable, _, _)) => (
                *stable,
                revisions
                    .iter()
                    .find(|r| r.number == *stable)
                    .map_or(rec.spec.image.clone(), |r| r.spec.image.clone()),
            ),
            None => (rec.revision, rec.spec.image.clone()),
        };
        services.push(json!({
            "name": rec.spec.name,
            "project": rec.spec.project(),
            "image": serving_image,
            "desired_revision": rec.revision,
            "rolled_back": rolled_back.as_ref().map(|(_, candidate, reason)| json!({
                "revision": candidate,
                "image": rec.spec.image,
                "reason": reason,
            })),
            "status": status,
            "desired_state": match rec.state { DesiredState::Running => "running", DesiredState::Stopped => "stopped" },
            "replicas": rec.spec.replicas,
            "running_replicas": running,
            "ready_replicas": ready,
            "domain": rec.spec.domain,
            "tls": crate::certs::status(&s.store, rec.spec.domain.as_deref()),
            "port": rec.spec.port,
            "revision": serving_revision,
            "commit": commit_of(serving_revision),
            "last_build": last_build,
            "updated_at": rec.updated_at,
            "error": error,
            "rollout": rollout,
            "events": s.store.list_events(&orca_store::EventQuery {
                project: Some(rec.spec.project().to_string()),
                service: Some(rec.spec.name.clone()),
                limit: STATUS_EVENTS,
                ..Default::default()
            })?,
            "backing_off_until_ms": view.backing_off.get(&key),
            "waiting": view.waiting.get(&key),
            "volumes": rec.spec.volumes,
            "depends_on": rec.spec.depends_on,
            "instances": instances,
        }));
    }
    Ok(Json(json!({
        "cluster": s.cluster,
        "observed_at_ms": view.observed_at_ms,
        "services": services,
        "broken_records": s.store.broken_records(),
    })))
}

/// `running` (all replicas ready), `degraded`, `starting`, `failed` or `stopped`.
pub(super) fn service_status(rec: &ServiceRecord, ready: u32, has_error: bool) -> &'static str {
    if rec.state == DesiredState::Stopped {
        "stopped"
    } else if ready >= rec.spec.replicas {
        "running"
    } else if ready > 0 {
        "degraded"
    } else if has_error {
        "failed"
    } else {
        "starting"
    }
}

/// `?project=` on service routes, to pick a service when its name exists in several projects.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectQuery {
    project: Option<String>,
}

pub(super) fn find_service<R: ContainerRuntime>(
    s: &AppState<R>,
    name: &str,
    project: Option<&str>,
) -> Result<ServiceRecord, ApiError> {
    let mut found: Vec<ServiceRecord> = s
        .store
        .find_services_by_name(name)?
        .into_iter()
        .filter(|r| project.is_none_or(|p| p == r.spec.project()))
        .collect();
    match found.len() {
        0 => Err(ApiError::not_found(match project {
            Some(p) => format!("no service \"{name}\" in project \"{p}\""),
            None => format!("no service \"{name}\""),
        })),
        1 => Ok(found.remove(0)),
        _ => Err(ApiError::conflict(format!(
            "service name \"{name}\" exists in projects {}; pass ?project=",
            found
                .iter()
                .map(|r| r.spec.project().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Body of `scale`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleBody {
    replicas: u32,
}

/// `POST /api/v1/services/{name}/scale` with `{"replicas": N}`.
pub async fn scale<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    Path(name): Path<String>,
    Query(q): Query<ProjectQuery>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    let ScaleBody { replicas } = parse_json(&body)?;
    if replicas > orca_config::service::MAX_REPLICAS {
        return Err(ApiError::bad_request(format!(
            "field `replicas`: {replicas} is out of range, allowed 0..={}",
            orca_config::service::MAX_REPLICAS
        )));
    }
    let rec = find_service(&s, &name, q.project.as_deref())?;
    if replicas > 1 {
        if let Some(m) = rec.spec.exclusive_volume() {
            let volume = m.volume().unwrap_or_default();
            return Err(ApiError::bad_request(format!(
                "field `replicas`: {replicas}: volume {volume} is not shared: at most 1 replica; declare it \"{volume}:{}:shared\" if the application coordinates writers",
                m.target
            )));
        }
    }
    let rec = s
        .store
        .set_replicas(rec.spec.project(), &rec.spec.name, replicas, now_unix())?;
    s.controller.wake();
    s.events.scaled(&rec.spec.key(), replicas, rec.revision);
    Ok(Json(json!({
        "project": rec.spec.project(), "name": rec.spec.name,
        "replicas": rec.spec.replicas, "revision": rec.revision,
    })))
}

fn stop<R: ContainerRuntime>(
    s: &AppState<R>,
    keys: Vec<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let recs = s
        .store
        .set_state(&keys, DesiredState::Stopped, now_unix())?;
    s.controller.wake();
    s.events.stopped(&recs);
    Ok(Json(json!({
        "stopped": recs.iter().map(|r| json!({"project": r.spec.project(), "name": r.spec.name})).collect::<Vec<_>>(),
    })))
}

/// `DELETE /api/v1/services/{name}`: removes its containers, keeps its config.
pub async fn stop_service<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    Path(name): Path<String>,
    Query(q): Query<ProjectQuery>,
) -> Result<Json<Value>, ApiError> {
    let rec = find_service(&s, &name, q.project.as_deref())?;
    stop(&s, vec![(rec.spec.project().to_string(), rec.spec.name)])
}

/// `DELETE /api/v1/projects/{name}`: stops every service of a project.
pub async fn stop_project<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    Path(project): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let keys: Vec<(String, String)> = s
        .store
        .list_services()?
        .into_iter()
        .filter(|r| r.spec.project() == project)
        .map(|r| (project.clone(), r.spec.name))
        .collect();
    if keys.is_empty() {
        return Err(ApiError::not_found(format!("no project \"{project}\"")));
    }
    stop(&s, keys)
}

/// `POST /api/v1/stop`: stops every service.
pub async fn stop_all<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
) -> Result<Json<Value>, ApiError> {
    let keys = s
        .store
        .list_services()?
        .into_iter()
        .map(|r| (r.spec.project().to_string(), r.spec.name))
        .collect();
    stop(&s, keys)
}

/// Query of `logs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    project: Option<String>,
    /// Lines from the end of each instance's log (per instance, not in total).
    tail: Option<usize>,
    #[serde(default)]
    follow: bool,
    /// The output of the service's latest image build instead of its containers' logs.
    #[serde(default)]
    build: bool,
    /// `text` (default) or `json` (one object per line).
    #[serde(default)]
    format: LogFormat,
}

/// One log line as the API writes it.
fn log_record(format: LogFormat, name: &str, slot: u32, id: &str, l: &LogLine) -> String {
    match format {
        LogFormat::Text => {
            let mark = if l.stream == LogStream::Stderr {
                "!"
            } else {
                ""
            };
            format!("[{name}.{slot}] {mark}{}\n", l.text)
        }
        LogFormat::Json => {
            let mut line = json!({
                "instance": format!("{name}.{slot}"),
                "slot": slot,
                "id": crate::instance::short(id),
                "stream": match l.stream { LogStream::Stdout => "stdout", LogStream::Stderr => "stderr" },
                "text": l.text,
                "time": l.time,
            })
            .to_string();
            line.push('\n');
            line
        }
    }
}

/// A log error as the API writes it, in the stream of lines.
fn log_error(format: LogFormat, name: &str, slot: u32, e: &dyn std::fmt::Display) -> String {
    match format {
        LogFormat::Text => format!("[{name}.{slot}] <log error: {e}>\n"),
        LogFormat::Json => {
            json!({"instance": format!("{name}.{slot}"), "slot": slot, "error": e.to_string()})
                .to_string()
                + "\n"
        }
    }
}

/// Orders an RFC 3339 timestamp by time: the fraction padded to nanoseconds.
fn time_key(t: &str) -> (String, String) {
    let t = t.trim_end_matches('Z');
    match t.split_once('.') {
        Some((secs, frac)) => (secs.to_string(), format!("{frac:0<9}")),
        None => (t.to_string(), "0".repeat(9)),
    }
}

/// `GET /api/v1/services/{name}/logs?tail=N&follow=true&format=json`: the last `tail` lines
/// (default 100) of each instance. Without `follow`, instance after instance in slot order,
/// each instance's lines in the order the engine received them; with `follow`, lines of all
/// instances as they arrive (each instance's in order). Text is `[service.slot] line`, with
/// `!` before the line when it came from stderr; `format=json` is one object per line.
pub async fn logs<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    if q.build {
        return build_logs(&s, &name, &q);
    }
    let rec = find_service(&s, &name, q.project.as_deref())?;
    let key = rec.spec.key();
    let tail = q.tail.unwrap_or(100).min(100_000);
    let format = q.format;
    let view = s.controller.view();
    let mut seen = BTreeSet::new();
    let mut instances: Vec<&crate::instance::Instance> = view
        .instances
        .iter()
        .filter(|i| i.service == key && seen.insert(i.info.id.clone()))
        .collect();
    instances.sort_by_key(|a| (a.slot, a.info.created_unix));
    let content_type = match format {
        LogFormat::Text => "text/plain; charset=utf-8",
        LogFormat::Json => "application/x-ndjson",
    };
    if !q.follow {
        let mut out = String::new();
        for i in instances {
            let mut lines = Vec::new();
            let mut error = None;
            let mut stream = match s.nodes.runtime_for(&i.node, &s.runtime, &s.node.hostname) {
                Some(runtime) => runtime.logs(&i.info.id, Some(tail), false),
                None => node_gone(&i.node),
            };
            while let Some(line) = stream.next().await {
                match line {
                    Ok(l) => lines.push(l),
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            // Stable: lines without a time keep their place relative to each other.
            lines.sort_by_cached_key(|l| l.time.as_deref().map(time_key));
            for l in &lines {
                out.push_str(&log_record(format, &rec.spec.name, i.slot, &i.info.id, l));
            }
            if let Some(e) = error {
                out.push_str(&log_error(format, &rec.spec.name, i.slot, &e));
            }
        }
        return Ok((StatusCode::OK, [(header::CONTENT_TYPE, content_type)], out).into_response());
    }
    let mut streams = Vec::new();
    for i in instances {
        let (name, slot, id) = (rec.spec.name.clone(), i.slot, i.info.id.clone());
        let lines = match s.nodes.runtime_for(&i.node, &s.runtime, &s.node.hostname) {
            Some(runtime) => runtime.logs(&i.info.id, Some(tail), true),
            None => node_gone(&i.node),
        };
        let stream = lines
            .map(move |line| {
                let text = match line {
                    Ok(l) => log_record(format, &name, slot, &id, &l),
                    Err(e) => log_error(format, &name, slot, &e),
                };
                Ok::<_, std::io::Error>(bytes::Bytes::from(text))
            })
            .boxed();
        streams.push(stream);
    }
    let body = Body::from_stream(futures::stream::select_all(streams));
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// The log stream of an instance whose node is not connected: one error, naming the node.
fn node_gone(
    node: &str,
) -> futures::stream::BoxStream<'static, Result<orca_docker::LogLine, orca_docker::RuntimeError>> {
    let e = orca_docker::RuntimeError::Unavailable {
        reason: format!("node {node} is not connected: no logs"),
    };
    futures::stream::once(async move { Err(e) }).boxed()
}

/// `GET /api/v1/services/{name}/logs?build=true`: the latest build's status and output
/// (also for a service whose first build failed, which was therefore never deployed).
fn build_logs<R: ContainerRuntime>(
    s: &AppState<R>,
    name: &str,
    q: &LogsQuery,
) -> Result<Response, ApiError> {
    orca_config::validate_name("service", name)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let project = match find_service(s, name, q.project.as_deref()) {
        Ok(rec) => rec.spec.project().to_string(),
        Err(e) => match &q.project {
            Some(p) => p.clone(),
            None => {
                let projects = s.store.build_projects(name)?;
                match projects.as_slice() {
                    [one] => one.clone(),
                    _ => return Err(e),
                }
            }
        },
    };
    let builds = s.store.list_builds(&project, name)?;
    let Some(b) = builds.last() else {
        return Err(ApiError::not_found(format!(
            "service \"{name}\" in project \"{project}\" has no builds"
        )));
    };
    let tail = q.tail.unwrap_or(usize::MAX);
    let status = match b.status {
        orca_store::BuildStatus::Running => "running",
        orca_store::BuildStatus::Succeeded => "succeeded",
        orca_store::BuildStatus::Failed => "failed",
    };
    let shown = b.log.iter().skip(b.log.len().saturating_sub(tail));
    if q.format == LogFormat::Json {
        // The build first, then one object per output line.
        let mut out = json!({
            "build": b.number, "project": project, "service": name, "status": status,
            "trigger": b.trigger, "commit": b.commit, "repo": b.repo, "branch": b.branch,
            "error": b.error,
        })
        .to_string();
        out.push('\n');
        for line in shown {
            out.push_str(&json!({"build": b.number, "stream": "build", "text": line}).to_string());
            out.push('\n');
        }
        return Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            out,
        )
            .into_response());
    }
    let mut text = format!(
        "build {} of {project}/{name}: {} ({}), commit {} of {}{}\n",
        b.number,
        status,
        b.trigger,
        b.commit,
        b.repo,
        b.branch
            .is_empty()
            .then(String::new)
            .unwrap_or_else(|| format!(" (branch {})", b.branch)),
    );
    for line in shown {
        text.push_str(line);
        text.push('\n');
    }
    if let Some(error) = &b.error {
        text.push_str(&format!("error: {error}\n"));
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response())
}

/// Whether a progressing rollout waits for the operator: the candidate gets traffic and the
/// strategy asked for no timer (a manual canary after its weight is set; `promote` or
/// `rollback` moves it on).
fn awaiting_operator(r: &orca_store::RolloutRecord) -> bool {
    r.phase == RolloutPhase::Progressing
        && r.wait_until_ms.is_none()
        && !r.promote_requested
        && r.traffic.is_some_and(|(_, candidate)| candidate > 0)
}

/// `POST /api/v1/services/{name}/rebalance` (deployer): spreads the service over its
/// eligible nodes again, one instance at a time, each replacement ready before the
/// instance it replaces is drained and stopped.
pub async fn rebalance<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    Path(name): Path<String>,
    Query(q): Query<ProjectQuery>,
) -> Result<Json<Value>, ApiError> {
    let rec = find_service(&s, &name, q.project.as_deref())?;
    if rec.state != DesiredState::Running {
        return Err(ApiError::conflict(format!(
            "service \"{name}\" is stopped: nothing to rebalance"
        )));
    }
    s.controller.rebalance(rec.spec.key());
    Ok(Json(json!({
        "project": rec.spec.project(), "name": rec.spec.name, "rebalance_requested": true,
    })))
}

/// `POST /api/v1/services/{name}/promote`: asks the strategy of the rollout in progress to
/// promote its candidate.
pub async fn promote<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    Path(name): Path<String>,
    Query(q): Query<ProjectQuery>,
) -> Result<Json<Value>, ApiError> {
    let rec = find_service(&s, &name, q.project.as_deref())?;
    let (project, name) = (rec.spec.project(), rec.spec.name.as_str());
    // The request is recorded; the controller (the one writer of rollouts) applies it.
    match s
        .store
        .request_rollout_change(project, name, RequestKind::Promote, now_unix())?
    {
        Some((q, _)) => {
            s.controller.wake();
            s.events
                .operator_request(&rec.spec.key(), q.candidate_revision, true);
            Ok(Json(json!({
                "project": project, "name": name,
                "candidate_revision": q.candidate_revision, "promote_requested": true,
            })))
        }
        None => Err(ApiError::conflict(format!(
            "service \"{name}\" has no rollout in progress to promote"
        ))),
    }
}

/// Body of `rollback`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    to: Option<u64>,
}

/// `POST /api/v1/services/{name}/rollback` (`{"to": REV}` optional): abandons the rollout in
/// progress, or makes an older revision current again (as a new revision, rolled out by the
/// service's strategy; no rebuild).
pub async fn rollback<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    Path(name): Path<String>,
    Query(q): Query<ProjectQuery>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    let RollbackBody { to } = if body.is_empty() {
        RollbackBody::default()
    } else {
        parse_json(&body)?
    };
    let rec = find_service(&s, &name, q.project.as_deref())?;
    let (project, name) = (rec.spec.project(), rec.spec.name.as_str());
    if to.is_none() {
        if let Some((q, _)) =
            s.store
                .request_rollout_change(project, name, RequestKind::Rollback, now_unix())?
        {
            s.controller.wake();
            s.events
                .operator_request(&rec.spec.key(), q.candidate_revision, false);
            return Ok(Json(json!({
                "project": project, "name": name, "abandoned_revision": q.candidate_revision,
            })));
        }
    }
    let target = match to {
        Some(n) => n,
        None => s
            .store
            .list_revisions(project, name)?
            .iter()
            .rev()
            .map(|r| r.number)
            .find(|n| *n < rec.revision)
            .ok_or_else(|| {
                ApiError::conflict(format!(
                    "service \"{name}\" has no earlier revision to roll back to"
                ))
            })?,
    };
    let updated = s
        .store
        .set_current_revision(project, name, target, now_unix())?;
    s.controller.wake();
    s.events.restored(&rec.spec.key(), target, updated.revision);
    Ok(Json(json!({
        "project": project, "name": name, "restored_revision": target, "revision": updated.revision,
    })))
}
