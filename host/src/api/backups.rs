//! `orca backup` / `orca restore` (admin only: a backup holds the store, secrets sealed):
//! `GET /api/v1/backups` (the manifests, newest first), `POST /api/v1/backups` (starts a
//! backup, `{project?, service?, verify?}`, 202 with its id), `GET /api/v1/backups/{id}`
//! (manifest and the progress of the last backup/restore of it) and
//! `POST /api/v1/backups/{id}/restore` (`{service?}`: checksums checked first, then 202).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use orca_docker::ContainerRuntime;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_json, ApiError, AppState, RawBody};
use crate::backup::{BackupError, Scope};

fn api_error(e: BackupError) -> ApiError {
    match e {
        BackupError::NotFound(m) => ApiError::not_found(m),
        BackupError::Refused(m) => ApiError::conflict(m),
        e @ BackupError::Busy(_) => ApiError::conflict(e.to_string()),
        BackupError::Failed(m) => ApiError::internal(m),
    }
}

/// `POST /api/v1/backups` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    service: Option<String>,
    /// Verify it by a restore into a scratch volume (scheduled backups always are).
    #[serde(default)]
    verify: bool,
}

/// `POST /api/v1/backups/{id}/restore` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    #[serde(default)]
    service: Option<String>,
}

/// `GET /api/v1/backups`.
pub async fn list<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
) -> Result<Json<Value>, ApiError> {
    let backups = s.backups.list();
    Ok(Json(
        json!({ "backups": backups, "dir": s.backups.dir().display().to_string() }),
    ))
}

/// `POST /api/v1/backups`.
pub async fn create<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let b: CreateBody = if body.iter().all(u8::is_ascii_whitespace) {
        CreateBody::default()
    } else {
        parse_json(&body)?
    };
    if let Some(p) = &b.project {
        orca_config::validate_name("project", p)
            .map_err(|e| ApiError::bad_request(format!("field `project`: {e}")))?;
    }
    if let Some(n) = &b.service {
        orca_config::validate_name("service", n)
            .map_err(|e| ApiError::bad_request(format!("field `service`: {e}")))?;
    }
    let project = match (&b.project, &b.service) {
        (None, Some(_)) => Some("default".to_string()),
        (p, _) => p.clone(),
    };
    let scope = Scope {
        project,
        service: b.service,
    };
    let id = s.backups.start_backup(scope, b.verify).map_err(api_error)?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": id }))))
}

/// `GET /api/v1/backups/{id}`.
pub async fn show<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let manifest = s.backups.manifest(&id).map_err(api_error)?;
    let job = s.backups.progress(&id).map(|p| p.json());
    Ok(Json(json!({ "backup": manifest, "job": job })))
}

/// `POST /api/v1/backups/{id}/restore`.
pub async fn restore<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let b: RestoreBody = if body.iter().all(u8::is_ascii_whitespace) {
        RestoreBody::default()
    } else {
        parse_json(&body)?
    };
    s.backups
        .start_restore(&id, b.service)
        .await
        .map_err(api_error)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": id, "restoring": true })),
    ))
}
