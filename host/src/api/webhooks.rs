//! Webhook endpoints: the signature-checked receivers (`POST /api/v1/webhooks/{forge}`),
//! and registration (admin), listing with recent deliveries (read) and removal (admin).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use orca_docker::ContainerRuntime;
use orca_store::{DeliveryRecord, StoreError, WebhookRecord};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{now_unix, parse_json, ApiError, AppState, RawBody};
use crate::plugins::{Pair, WebhookRequest, World};
use crate::webhooks::BUILTIN_FORGES;

/// Largest delivery accepted (GitHub caps payloads at 25 MB, but pushes are far smaller).
pub const MAX_DELIVERY: usize = 4 * 1024 * 1024;
/// Longest webhook secret.
const MAX_SECRET: usize = 1024;
/// Deliveries shown per webhook in the listing.
const DELIVERIES_SHOWN: usize = 10;

/// `POST /api/v1/webhooks/{forge}`: no token; the forge's plugin checks the signature.
pub async fn receive<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    Path(forge): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let request = WebhookRequest {
        method: "POST".into(),
        path: format!("/api/v1/webhooks/{forge}"),
        headers: headers
            .iter()
            .filter_map(|(k, v)| {
                Some(Pair {
                    key: k.as_str().to_string(),
                    value: v.to_str().ok()?.to_string(),
                })
            })
            .collect(),
        body: body.to_vec(),
    };
    let answer = s.webhooks.deliver(&forge, request).await;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(answer.body)).into_response()
}

/// Body of `POST /api/v1/webhooks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddWebhook {
    repo: String,
    service: String,
    #[serde(default)]
    project: Option<String>,
    branch: String,
    secret: String,
    #[serde(default)]
    forge: Option<String>,
}

fn check_repo(repo: &str) -> Result<(), ApiError> {
    if repo_is_valid(repo) {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "field `repo`: {repo:?} is not a repository: use OWNER/NAME (GitLab: GROUP/.../NAME) or a clone URL \
         (https://HOST/OWNER/NAME, ssh://HOST/OWNER/NAME, git@HOST:OWNER/NAME); each part is letters, digits, '.', '_' or '-', \
         not '.' or '..', at most 512 bytes"
    )))
}

/// `OWNER/NAME` (two or more segments), or a clone URL whose path is that.
fn repo_is_valid(repo: &str) -> bool {
    if repo.is_empty() || repo.len() > 512 {
        return false;
    }
    let host_ok = |h: &str| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_:@[]".contains(&b))
    };
    let path = if let Some((scheme, rest)) = repo.split_once("://") {
        let Some((host, path)) = rest.split_once('/') else {
            return false;
        };
        if !matches!(scheme, "https" | "http" | "ssh" | "git") || !host_ok(host) {
            return false;
        }
        path
    } else if let Some((host, path)) = repo.split_once(':') {
        if host.contains('/') || !host_ok(host) {
            return false;
        }
        path
    } else {
        repo
    };
    let path = path.strip_suffix(".git").unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
    segments.len() >= 2
        && segments.iter().all(|seg| {
            !seg.is_empty()
                && *seg != "."
                && *seg != ".."
                && !seg.starts_with('-')
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
}

fn check_branch_glob(branch: &str) -> Result<(), ApiError> {
    let ok = !branch.is_empty()
        && branch.len() <= 255
        && branch
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+@*?".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "field `branch`: {branch:?} is not a branch name or glob (letters, digits, / . _ - + @, and * ? as wildcards)"
        )))
    }
}

/// `POST /api/v1/webhooks` (admin): registers a hook; a secret is required.
pub async fn add<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: AddWebhook = parse_json(&body)?;
    check_repo(&req.repo)?;
    check_branch_glob(&req.branch)?;
    if req.secret.trim().is_empty() {
        return Err(ApiError::bad_request(
            "field `secret`: a webhook needs a secret; unsigned deliveries are refused (generate one, e.g. `openssl rand -hex 32`, and set the same in the forge)",
        ));
    }
    if req.secret.len() > MAX_SECRET || req.secret.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "field `secret`: at most {MAX_SECRET} bytes, no control characters"
        )));
    }
    let forge = req.forge.clone().unwrap_or_else(|| "github".into());
    if !BUILTIN_FORGES.contains(&forge.as_str()) {
        s.registry
            .resolve(&forge, World::Webhook)
            .map_err(|e| ApiError::bad_request(format!("field `forge`: {e}")))?;
    }
    let matches = s.store.find_services_by_name(&req.service)?;
    let service = match (&req.project, matches.as_slice()) {
        (Some(p), _) => matches.iter().find(|r| r.spec.project() == p),
        (None, [one]) => Some(one),
        (None, []) => None,
        (None, _) => {
            return Err(ApiError::bad_request(format!(
                "service {:?} exists in several projects; set `project`",
                req.service
            )))
        }
    }
    .ok_or_else(|| {
        ApiError::not_found(format!(
            "service {:?} is not deployed; deploy it before registering its webhook",
            req.service
        ))
    })?;
    let id = format!("wh-{:08x}", rand::random::<u32>());
    let record = WebhookRecord {
        id: id.clone(),
        forge: forge.clone(),
        repo: req.repo.clone(),
        branch: req.branch.clone(),
        project: service.spec.project().to_string(),
        service: service.spec.name.clone(),
        sealed_secret: s.webhooks.seal_secret(&id, &req.secret),
        created_at: now_unix(),
    };
    s.store.put_webhook(&record).map_err(|e| match e {
        StoreError::Conflict { what } => ApiError::conflict(what),
        other => other.into(),
    })?;
    tracing::info!(hook = %id, forge = %forge, repo = %record.repo, service = %record.service, "webhook registered");
    Ok((StatusCode::CREATED, Json(hook_json(&record, &[]))))
}

/// `DELETE /api/v1/webhooks/{id}` (admin).
pub async fn remove<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if s.store.delete_webhook(&id)? {
        tracing::info!(hook = %id, "webhook removed");
        Ok(Json(json!({ "removed": id })))
    } else {
        Err(ApiError::not_found(format!("no webhook {id:?}")))
    }
}

/// `GET /api/v1/webhooks`: hooks (never their secrets) with their recent deliveries, and
/// the recent deliveries that no hook verified.
pub async fn list<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
) -> Result<Json<Value>, ApiError> {
    let hooks = s.store.list_webhooks()?;
    let deliveries = s
        .store
        .list_deliveries(orca_store::webhooks::DELIVERIES_KEPT as usize)?;
    let listed: Vec<Value> = hooks
        .iter()
        .map(|h| {
            let mine: Vec<DeliveryRecord> = deliveries
                .iter()
                .filter(|d| d.hooks.contains(&h.id))
                .take(DELIVERIES_SHOWN)
                .cloned()
                .collect();
            hook_json(h, &mine)
        })
        .collect();
    let unmatched: Vec<&DeliveryRecord> = deliveries
        .iter()
        .filter(|d| d.hooks.is_empty())
        .take(20)
        .collect();
    Ok(Json(
        json!({ "webhooks": listed, "unmatched_deliveries": unmatched }),
    ))
}

fn hook_json(h: &WebhookRecord, deliveries: &[DeliveryRecord]) -> Value {
    json!({
        "id": h.id,
        "forge": h.forge,
        "repo": h.repo,
        "branch": h.branch,
        "project": h.project,
        "service": h.service,
        "url_path": format!("/api/v1/webhooks/{}", h.forge),
        "created_at": h.created_at,
        "deliveries": deliveries,
    })
}

#[cfg(test)]
mod tests {
    use super::repo_is_valid;

    #[test]
    fn webhook_repo_is_owner_name_or_a_clone_url() {
        for ok in [
            "org/app",
            "Org/My.App_1",
            "group/sub/app",
            "https://git.example.com/org/app.git",
            "https://git.example.com/git/org/app",
            "ssh://git@git.example.com:2222/org/app.git",
            "git@github.com:org/app.git",
        ] {
            assert!(repo_is_valid(ok), "{ok}");
        }
        for bad in [
            "",
            "../../x",
            "org/..",
            "app",
            "org//app",
            "/org/app",
            "org/app/",
            "a b/c",
            "org/-x",
            "file:///etc/passwd",
            "ftp://h/o/n",
            "org/app;rm",
            "https://h/app",
        ] {
            assert!(!repo_is_valid(bad), "{bad}");
        }
    }
}
