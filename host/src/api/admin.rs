//! Admin endpoints: tokens, secrets, cluster info, webhooks list.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use orca_config::Role;
use orca_docker::ContainerRuntime;
use orca_store::{StoredToken, TokenSet};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{now_unix, parse_json, ApiError, AppState, RawBody};

/// Builds the verifier from cluster.toml's tokens (already hashed) and the store's.
pub fn token_set(config: &[(String, [u8; 32], Role)], stored: &[StoredToken]) -> TokenSet {
    let mut entries = config.to_vec();
    entries.extend(stored.iter().map(|t| (t.name.clone(), t.hash, t.role)));
    TokenSet::new(entries)
}

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    name: String,
    role: Role,
}

/// `POST /api/v1/tokens`: creates a token; its value is in this response and nowhere else.
pub async fn create_token<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let CreateToken { name, role } = parse_json(&body)?;
    orca_config::validate_name("token", &name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if s.config_tokens.iter().any(|(n, _, _)| *n == name) {
        return Err(ApiError::conflict(format!(
            "token \"{name}\" is defined in cluster.toml"
        )));
    }
    let value = orca_store::generate_token();
    let token = StoredToken {
        name: name.clone(),
        hash: orca_store::hash_token(&value),
        role,
        created_at: now_unix(),
    };
    s.store.put_token(&token)?;
    reload_tokens(&s)?;
    tracing::info!(token = %name, %role, "token created");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": name, "role": role, "token": value })),
    )
        .into_response())
}

/// `DELETE /api/v1/tokens/{name}` (admin): revokes a token; it fails from the next request on.
pub async fn revoke_token<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    refuse_config_token(&s, &name, "revoked")?;
    if !s.store.delete_token(&name)? {
        return Err(ApiError::not_found(format!("no token named \"{name}\"")));
    }
    reload_tokens(&s)?;
    tracing::info!(token = %name, "token revoked");
    Ok(Json(json!({ "name": name, "revoked": true })))
}

/// `POST /api/v1/tokens/{name}/rotate` (admin): gives a token a new value (same name and
/// role); the old value fails from the next request on. The new value is in this response
/// and nowhere else. This is how the bootstrap `admin` token is rotated.
pub async fn rotate_token<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    refuse_config_token(&s, &name, "rotated")?;
    let value = orca_store::generate_token();
    let token = s
        .store
        .rotate_token(&name, orca_store::hash_token(&value), now_unix())?;
    reload_tokens(&s)?;
    tracing::info!(token = %name, "token rotated");
    Ok(Json(
        json!({ "name": name, "role": token.role, "token": value }),
    ))
}

fn refuse_config_token<R: ContainerRuntime>(
    s: &AppState<R>,
    name: &str,
    what: &str,
) -> Result<(), ApiError> {
    if s.config_tokens.iter().any(|(n, _, _)| n == name) {
        return Err(ApiError::conflict(format!(
            "token \"{name}\" is defined in cluster.toml and cannot be {what} through the API: edit cluster.toml and restart the server"
        )));
    }
    Ok(())
}

fn reload_tokens<R: ContainerRuntime>(s: &AppState<R>) -> Result<(), ApiError> {
    let stored = s.store.list_tokens()?;
    s.tokens
        .store(Arc::new(token_set(&s.config_tokens, &stored)));
    Ok(())
}

/// `GET /api/v1/tokens`: names and roles, never values.
pub async fn list_tokens<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
) -> Result<Json<Value>, ApiError> {
    let mut tokens: Vec<Value> = s
        .config_tokens
        .iter()
        .map(|(n, _, r)| json!({"name": n, "role": r, "source": "cluster.toml"}))
        .collect();
    tokens.extend(s.store.list_tokens()?.into_iter().map(
        |t| json!({"name": t.name, "role": t.role, "source": "api", "created_at": t.created_at}),
    ));
    Ok(Json(json!({ "tokens": tokens })))
}

/// Body of `PUT /api/v1/projects/{name}/secrets/{key}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetSecret {
    value: String,
}

fn check_secret_target(project: &str, key: &str) -> Result<(), ApiError> {
    orca_config::validate_name("project", project)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let valid = !key.is_empty()
        && key.len() <= 128
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(ApiError::bad_request(format!(
            "invalid secret key \"{key}\": use letters, digits and '_', not starting with a digit (max 128)"
        )));
    }
    Ok(())
}

/// `PUT /api/v1/projects/{name}/secrets/{key}` with `{"value": "..."}`: stored encrypted.
pub async fn set_secret<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    Path((project, key)): Path<(String, String)>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    check_secret_target(&project, &key)?;
    let SetSecret { value } = parse_json(&body)?;
    let sealed = s.secrets.seal(&project, &key, &value);
    s.store.put_secret(&project, &key, &sealed, now_unix())?;
    s.controller.wake();
    tracing::info!(%project, %key, "secret set");
    Ok(Json(json!({ "project": project, "key": key })))
}

/// `DELETE /api/v1/projects/{name}/secrets/{key}`.
pub async fn delete_secret<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    Path((project, key)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    check_secret_target(&project, &key)?;
    if !s.store.delete_secret(&project, &key)? {
        return Err(ApiError::not_found(format!(
            "no secret \"{key}\" in project \"{project}\""
        )));
    }
    Ok(Json(
        json!({ "project": project, "key": key, "deleted": true }),
    ))
}

/// `GET /api/v1/projects/{name}/secrets`: keys only.
pub async fn list_secrets<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    Path(project): Path<String>,
) -> Result<Json<Value>, ApiError> {
    orca_config::validate_name("project", &project)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let keys = s.store.list_secret_keys(&project)?;
    Ok(Json(json!({
        "project": project,
        "secrets": keys.iter().map(|k| json!({"key": k.key, "updated_at": k.updated_at})).collect::<Vec<_>>(),
    })))
}
