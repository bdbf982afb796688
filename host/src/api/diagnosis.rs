//! `GET /api/v1/services/{name}/diagnosis`: gathers the evidence `orca doctor` reasons over
//! (controller view, probe verdicts, the last log lines, certificate state, nodes) and hands it
//! to the pure decision tree in [`crate::doctor`].

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::Json;
use futures::StreamExt;
use orca_contract::api::{Diagnosis, ProjectQuery};
use orca_docker::{ContainerRuntime, LogStream};
use orca_store::DesiredState;

use super::services::{find_service, service_status};
use super::{ApiError, AppState};
use crate::doctor::{diagnose, Evidence, InstanceEvidence};

/// Log lines read per instance.
const LOG_LINES: usize = 30;
/// How long reading one instance's log may take before the diagnosis goes on without it.
const LOG_TIMEOUT: Duration = Duration::from_secs(3);

/// `GET /api/v1/services/{name}/diagnosis?project=`.
pub async fn diagnosis<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    Path(name): Path<String>,
    Query(q): Query<ProjectQuery>,
) -> Result<Json<Diagnosis>, ApiError> {
    let rec = find_service(&s, &name, q.project.as_deref())?;
    let key = rec.spec.key();
    let view = s.controller.view();
    let health = s.controller.health();
    let mut instances = Vec::new();
    let mut ready = 0;
    for i in view.instances.iter().filter(|i| i.service == key) {
        let verdict = health.verdict(&i.info.id);
        let is_ready = i.is_running() && view.ready.contains(&i.info.id);
        ready += u32::from(is_ready);
        instances.push(InstanceEvidence {
            name: i.info.name.clone(),
            state: i.info.state.to_string(),
            exit_code: i.info.exit_code,
            oom_killed: i.info.oom_killed,
            ready: is_ready,
            probe_error: verdict.last_error,
            log_tail: log_tail(&*s.runtime, &i.info.id).await,
        });
    }
    let error = view.errors.get(&key).cloned();
    let tls = crate::certs::status(&s.store, rec.spec.domain.as_deref());
    let evidence = Evidence {
        project: rec.spec.project().to_string(),
        service: rec.spec.name.clone(),
        status: service_status(&rec, ready, error.is_some()).to_string(),
        stopped: rec.state == DesiredState::Stopped,
        replicas: rec.spec.replicas,
        ready_replicas: ready,
        memory_limit: rec
            .spec
            .resources
            .as_ref()
            .and_then(|r| r.memory)
            .map(|m| m.to_string()),
        readiness_path: rec
            .spec
            .readiness
            .as_ref()
            .and_then(|p| p.path.clone())
            .or_else(|| rec.spec.health.clone()),
        controller_error: error,
        backing_off: view.backing_off.contains_key(&key),
        instances,
        domain: rec.spec.domain.clone(),
        tls_state: tls["state"].as_str().map(str::to_string),
        tls_error: tls["error"].as_str().map(str::to_string),
        nodes: vec![format!("{} {}", s.node.hostname, s.api_addr.ip())],
    };
    Ok(Json(diagnose(&evidence)))
}

/// The last [`LOG_LINES`] lines of one container (stderr lines marked `!`), or none if the
/// runtime cannot answer in time: a diagnosis never hangs on a log.
async fn log_tail<R: ContainerRuntime>(runtime: &R, id: &str) -> Vec<String> {
    let lines = runtime
        .logs(id, Some(LOG_LINES), false)
        .filter_map(|l| async move {
            l.ok().map(|l| {
                let mark = if l.stream == LogStream::Stderr {
                    "!"
                } else {
                    ""
                };
                format!("{mark}{}", l.text.trim_end())
            })
        })
        .collect::<Vec<_>>();
    tokio::time::timeout(LOG_TIMEOUT, lines)
        .await
        .unwrap_or_default()
}
