//! The REST API (axum): routes, their permissions, request limits. Only this layer knows HTTP/JSON.
//!
//! `app()` builds the whole router from an [`AppState`], so tests drive it without a socket.

pub mod admin;
pub mod auth;
mod backups;
mod diagnosis;
mod error;
pub(crate) mod events;
pub mod listener;
mod nodes;
pub mod openapi;
mod plugins;
mod services;
mod volumes;
mod webhooks;
mod whoami;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;
use bytes::Bytes;
use orca_docker::{ContainerRuntime, NodeInfo};
use orca_store::{SecretBox, Store};

use crate::controller::ControllerHandle;
use crate::metrics::Metrics;
pub use auth::{allows, Permission, Tokens};
pub use error::ApiError;

/// Largest request body the API accepts (a deploy of many services fits easily).
pub const MAX_BODY: usize = 1024 * 1024;

/// Everything handlers need.
pub struct AppState<R: ContainerRuntime> {
    /// The store.
    pub store: Store,
    /// Secrets cipher.
    pub secrets: Arc<SecretBox>,
    /// Plugin references → plugins.
    pub registry: crate::registry::Registry,
    /// Token verifier (swapped when a token is created).
    pub tokens: Tokens,
    /// Names of tokens defined in cluster.toml (they cannot be re-created through the API).
    pub config_tokens: Arc<Vec<(String, [u8; 32], orca_config::Role)>>,
    /// Controller handle.
    pub controller: ControllerHandle,
    /// Latest usage samples of instances.
    pub stats: crate::stats::Stats,
    /// Container runtime (logs).
    pub runtime: Arc<R>,
    /// Metrics registry.
    pub metrics: Metrics,
    /// Cluster name.
    pub cluster: String,
    /// This node.
    pub node: NodeInfo,
    /// Where the API listens (reported by cluster/info).
    pub api_addr: SocketAddr,
    /// Webhook deliveries.
    pub webhooks: Arc<crate::webhooks::Webhooks<R>>,
    /// git-build.
    pub builds: Arc<crate::build::Builds<R>>,
    /// The event stream.
    pub events: crate::events::Events,
    /// Notification targets and deliveries.
    pub notifier: Arc<crate::notify::Notifier>,
    /// Agent nodes: join tokens, the node table, sessions.
    pub nodes: Arc<crate::nodes::Nodes>,
    /// `[volumes] host_paths`: where bind mounts may come from.
    pub host_paths: Arc<Vec<std::path::PathBuf>>,
    /// Backups and restores of the services' volumes.
    pub backups: Arc<crate::backup::Backups<R>>,
}

impl<R: ContainerRuntime> Clone for AppState<R> {
    fn clone(&self) -> Self {
        AppState {
            store: self.store.clone(),
            secrets: self.secrets.clone(),
            registry: self.registry.clone(),
            tokens: self.tokens.clone(),
            config_tokens: self.config_tokens.clone(),
            controller: self.controller.clone(),
            stats: self.stats.clone(),
            runtime: self.runtime.clone(),
            metrics: self.metrics.clone(),
            cluster: self.cluster.clone(),
            node: self.node.clone(),
            api_addr: self.api_addr,
            webhooks: self.webhooks.clone(),
            builds: self.builds.clone(),
            events: self.events.clone(),
            notifier: self.notifier.clone(),
            nodes: self.nodes.clone(),
            host_paths: self.host_paths.clone(),
            backups: self.backups.clone(),
        }
    }
}

/// One row of the route table: method, path, permission (`None` = public or signature-checked).
pub const ROUTES: &[(&str, &str, Option<Permission>)] = &[
    ("POST", "/api/v1/deploy", Some(Permission::Deploy)),
    ("GET", "/api/v1/status", Some(Permission::Read)),
    (
        "POST",
        "/api/v1/services/{name}/scale",
        Some(Permission::Operate),
    ),
    (
        "DELETE",
        "/api/v1/services/{name}",
        Some(Permission::Operate),
    ),
    (
        "DELETE",
        "/api/v1/projects/{name}",
        Some(Permission::Operate),
    ),
    ("POST", "/api/v1/stop", Some(Permission::Operate)),
    (
        "GET",
        "/api/v1/services/{name}/logs",
        Some(Permission::Read),
    ),
    ("GET", "/api/v1/cluster/info", Some(Permission::Read)),
    ("POST", "/api/v1/cluster/tokens", Some(Permission::Admin)),
    (
        "DELETE",
        "/api/v1/cluster/nodes/{id}",
        Some(Permission::Admin),
    ),
    (
        "POST",
        "/api/v1/services/{name}/promote",
        Some(Permission::Deploy),
    ),
    (
        "POST",
        "/api/v1/services/{name}/rebalance",
        Some(Permission::Deploy),
    ),
    (
        "POST",
        "/api/v1/services/{name}/rollback",
        Some(Permission::Deploy),
    ),
    (
        "POST",
        "/api/v1/cluster/nodes/{id}/drain",
        Some(Permission::Admin),
    ),
    (
        "POST",
        "/api/v1/cluster/nodes/{id}/undrain",
        Some(Permission::Admin),
    ),
    ("GET", "/api/v1/webhooks", Some(Permission::Read)),
    ("POST", "/api/v1/webhooks", Some(Permission::Admin)),
    ("DELETE", "/api/v1/webhooks/{id}", Some(Permission::Admin)),
    // Signature-checked by the forge's webhook plugin, not by token.
    ("POST", "/api/v1/webhooks/github", None),
    ("POST", "/api/v1/webhooks/gitea", None),
    ("POST", "/api/v1/webhooks/gitlab", None),
    ("POST", "/api/v1/webhooks/{forge}", None),
    ("GET", "/api/v1/tokens", Some(Permission::Admin)),
    ("POST", "/api/v1/tokens", Some(Permission::Admin)),
    ("DELETE", "/api/v1/tokens/{name}", Some(Permission::Admin)),
    (
        "POST",
        "/api/v1/tokens/{name}/rotate",
        Some(Permission::Admin),
    ),
    (
        "GET",
        "/api/v1/projects/{name}/secrets",
        Some(Permission::Deploy),
    ),
    (
        "PUT",
        "/api/v1/projects/{name}/secrets/{key}",
        Some(Permission::Admin),
    ),
    (
        "DELETE",
        "/api/v1/projects/{name}/secrets/{key}",
        Some(Permission::Admin),
    ),
    ("GET", "/api/v1/plugins", Some(Permission::Read)),
    ("POST", "/api/v1/plugins", Some(Permission::Deploy)),
    ("PUT", "/api/v1/plugins/{name}", Some(Permission::Admin)),
    ("GET", "/api/v1/volumes", Some(Permission::Read)),
    (
        "DELETE",
        "/api/v1/volumes/{project}/{name}",
        Some(Permission::Admin),
    ),
    ("GET", "/api/v1/backups", Some(Permission::Admin)),
    ("POST", "/api/v1/backups", Some(Permission::Admin)),
    ("GET", "/api/v1/backups/{id}", Some(Permission::Admin)),
    (
        "POST",
        "/api/v1/backups/{id}/restore",
        Some(Permission::Admin),
    ),
    ("GET", "/api/v1/events", Some(Permission::Read)),
    ("GET", "/api/v1/notifications", Some(Permission::Read)),
    ("GET", "/api/v1/health", None),
    ("GET", "/metrics", None),
    // For AI agents: diagnosis (`orca doctor`), the OpenAPI document, the token's role, MCP.
    (
        "GET",
        "/api/v1/services/{name}/diagnosis",
        Some(Permission::Read),
    ),
    ("GET", "/api/v1/openapi.json", None),
    ("GET", "/api/v1/whoami", Some(Permission::Read)),
    ("POST", "/mcp", Some(Permission::Read)),
];

/// Builds the API router: the REST routes, and `/mcp` whose tools call them in process.
pub fn app<R: ContainerRuntime>(state: AppState<R>) -> Router {
    let tokens = state.tokens.clone();
    let rest = rest_app(state);
    let mcp = crate::mcp::http_service(rest.clone());
    rest.route(
        "/mcp",
        axum::routing::post_service(mcp).route_layer(from_fn_with_state(
            (tokens, Permission::Read),
            auth::authorize,
        )),
    )
}

/// The REST routes.
fn rest_app<R: ContainerRuntime>(state: AppState<R>) -> Router {
    let tokens = state.tokens.clone();
    let guard = move |perm: Permission, mr: MethodRouter<AppState<R>>| {
        mr.route_layer(from_fn_with_state((tokens.clone(), perm), auth::authorize))
    };
    use Permission::*;
    Router::new()
        .route("/api/v1/health", get(services::health::<R>))
        .route("/metrics", get(services::metrics::<R>))
        .route("/api/v1/deploy", guard(Deploy, post(services::deploy::<R>)))
        .route("/api/v1/status", guard(Read, get(services::status::<R>)))
        .route(
            "/api/v1/services/{name}/scale",
            guard(Operate, post(services::scale::<R>)),
        )
        .route(
            "/api/v1/services/{name}",
            guard(Operate, delete(services::stop_service::<R>)),
        )
        .route(
            "/api/v1/projects/{name}",
            guard(Operate, delete(services::stop_project::<R>)),
        )
        .route(
            "/api/v1/stop",
            guard(Operate, post(services::stop_all::<R>)),
        )
        .route(
            "/api/v1/services/{name}/logs",
            guard(Read, get(services::logs::<R>)),
        )
        .route(
            "/api/v1/cluster/info",
            guard(Read, get(nodes::cluster_info::<R>)),
        )
        .route(
            "/api/v1/cluster/tokens",
            guard(Admin, post(nodes::create_join_token::<R>)),
        )
        .route(
            "/api/v1/cluster/nodes/{id}",
            guard(Admin, delete(nodes::remove_node::<R>)),
        )
        .route(
            "/api/v1/services/{name}/promote",
            guard(Deploy, post(services::promote::<R>)),
        )
        .route(
            "/api/v1/services/{name}/rebalance",
            guard(Deploy, post(services::rebalance::<R>)),
        )
        .route(
            "/api/v1/services/{name}/rollback",
            guard(Deploy, post(services::rollback::<R>)),
        )
        .route(
            "/api/v1/cluster/nodes/{id}/drain",
            guard(Admin, post(nodes::drain_node::<R>)),
        )
        .route(
            "/api/v1/cluster/nodes/{id}/undrain",
            guard(Admin, post(nodes::undrain_node::<R>)),
        )
        .route(
            "/api/v1/webhooks",
            guard(Read, get(webhooks::list::<R>)).merge(guard(Admin, post(webhooks::add::<R>))),
        )
        // One path for the receivers (`{forge}`) and removal (`{id}`): the router needs one
        // parameter name per segment.
        .route(
            "/api/v1/webhooks/{name}",
            post(webhooks::receive::<R>)
                .layer(DefaultBodyLimit::max(webhooks::MAX_DELIVERY))
                .merge(guard(Admin, delete(webhooks::remove::<R>))),
        )
        .route(
            "/api/v1/tokens",
            guard(Admin, get(admin::list_tokens::<R>))
                .merge(guard(Admin, post(admin::create_token::<R>))),
        )
        .route(
            "/api/v1/tokens/{name}",
            guard(Admin, delete(admin::revoke_token::<R>)),
        )
        .route(
            "/api/v1/tokens/{name}/rotate",
            guard(Admin, post(admin::rotate_token::<R>)),
        )
        .route(
            "/api/v1/projects/{name}/secrets",
            guard(Deploy, get(admin::list_secrets::<R>)),
        )
        .route(
            "/api/v1/projects/{name}/secrets/{key}",
            guard(Admin, put(admin::set_secret::<R>))
                .merge(guard(Admin, delete(admin::delete_secret::<R>))),
        )
        .route(
            "/api/v1/plugins",
            guard(Read, get(plugins::list::<R>))
                .merge(guard(Deploy, post(plugins::upload::<R>)))
                .layer(DefaultBodyLimit::max(crate::registry::MAX_PLUGIN_BYTES)),
        )
        .route(
            "/api/v1/plugins/{name}",
            guard(Admin, put(plugins::install::<R>))
                .layer(DefaultBodyLimit::max(crate::registry::MAX_PLUGIN_BYTES)),
        )
        .route(
            "/api/v1/services/{name}/diagnosis",
            guard(Read, get(diagnosis::diagnosis::<R>)),
        )
        .route("/api/v1/openapi.json", get(openapi::serve))
        .route("/api/v1/whoami", guard(Read, get(whoami::whoami)))
        .route("/api/v1/volumes", guard(Read, get(volumes::list::<R>)))
        .route(
            "/api/v1/volumes/{project}/{name}",
            guard(Admin, delete(volumes::remove::<R>)),
        )
        .route(
            "/api/v1/backups",
            guard(Admin, get(backups::list::<R>)).merge(guard(Admin, post(backups::create::<R>))),
        )
        .route(
            "/api/v1/backups/{id}",
            guard(Admin, get(backups::show::<R>)),
        )
        .route(
            "/api/v1/backups/{id}/restore",
            guard(Admin, post(backups::restore::<R>)),
        )
        .route("/api/v1/events", guard(Read, get(events::list::<R>)))
        .route(
            "/api/v1/notifications",
            guard(Read, get(events::notifications::<R>)),
        )
        .fallback(|| async { ApiError::not_found("no such API route") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(error::json_errors))
        .with_state(state)
}

/// The raw request body, size-limited, with limit errors in the API's JSON shape.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|e| {
                let status = e.status();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(status, "request body is larger than this route's limit (1 MiB; 16 MiB for plugins)")
                } else {
                    ApiError::new(status, format!("reading request body: {}", e.body_text()))
                }
            })
    }
}

/// Seconds since the epoch, for `updated_at`/`created_at` fields (passed into the store).
fn now_unix() -> u64 {
    crate::controller::now_ms() / 1000
}

/// Parses a small JSON body into `T`, naming the field that is wrong.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            ApiError::bad_request(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::bad_request(format!("invalid JSON body: field `{path}`: {inner}"))
        }
    })
}
