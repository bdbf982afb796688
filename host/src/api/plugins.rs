//! Plugin endpoints: list, install (admin) and upload by content (deployers, for `./x.wasm`
//! strategy references resolved by `orca deploy`).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use orca_docker::ContainerRuntime;
use serde_json::{json, Value};

use super::{ApiError, AppState, RawBody};
use crate::plugins::{builtin, builtin_names, PluginOrigin};
use crate::registry::RegistryError;

fn registry_error(e: RegistryError) -> ApiError {
    match e {
        RegistryError::Io { .. } => ApiError::internal(e.to_string()),
        _ => ApiError::bad_request(e.to_string()),
    }
}

/// `GET /api/v1/plugins`: built-in and installed plugins with their worlds.
pub async fn list<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
) -> Result<Json<Value>, ApiError> {
    let runtime = s.registry.runtime();
    let mut plugins = Vec::new();
    for name in builtin_names() {
        let bytes = builtin(name).expect("listed built-ins exist");
        let p = runtime
            .load(bytes, PluginOrigin::Builtin(name.to_string()))
            .map_err(|e| ApiError::internal(e.to_string()))?;
        plugins.push(json!({"name": name, "source": "builtin", "world": p.world().name(), "sha256": p.sha256(), "size": bytes.len()}));
    }
    for (name, path) in s.registry.installed() {
        let entry = match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                runtime
                    .load(&b, PluginOrigin::Path(path.clone()))
                    .map(|p| (p, b.len()))
                    .map_err(|e| e.to_string())
            }) {
            Ok((p, size)) => {
                json!({"name": name, "source": "installed", "world": p.world().name(), "sha256": p.sha256(), "size": size})
            }
            Err(reason) => json!({"name": name, "source": "installed", "error": reason}),
        };
        plugins.push(entry);
    }
    Ok(Json(json!({ "plugins": plugins })))
}

/// `PUT /api/v1/plugins/{name}` with the component as body: validated, then installed.
pub async fn install<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    Path(name): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let registry = s.registry.clone();
    let n = name.clone();
    let plugin = tokio::task::spawn_blocking(move || registry.install(&n, &body))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(registry_error)?;
    tracing::info!(plugin = %name, world = plugin.world().name(), "plugin installed");
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": name, "world": plugin.world().name(), "sha256": plugin.sha256()})),
    )
        .into_response())
}

/// `POST /api/v1/plugins` with the component as body: stored by content; answers its
/// `sha256:<hex>` reference.
pub async fn upload<R: ContainerRuntime>(
    State(s): State<AppState<R>>,
    Query(q): Query<orca_contract::api::UploadQuery>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    let registry = s.registry.clone();
    let (reference, plugin) =
        tokio::task::spawn_blocking(move || registry.upload(&body, q.name.as_deref()))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(registry_error)?;
    Ok(Json(
        json!({"reference": reference, "world": plugin.world().name()}),
    ))
}
