//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of the REST API, generated from the
//! typed contract (`orca-contract` bodies, `orca-config`'s deploy schema) with each route's
//! role taken from [`super::ROUTES`].
//!
//! [`OPERATIONS`] describes every operation once (summary, query, body, answer);
//! `tests/openapi.rs` checks that it covers `ROUTES` exactly and that the document validates.

use axum::Json;
use orca_contract::api as c;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use super::{Permission, ROUTES};

/// A schema producer: adds its definitions to the generator and returns a `$ref` or inline schema.
type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// A request or answer body.
#[derive(Clone, Copy)]
pub enum Body {
    /// No body.
    None,
    /// A JSON body with this schema.
    Json(SchemaFn),
    /// A body of another media type (`text/plain`, `application/wasm`, ...).
    Raw(&'static str),
}

/// One operation of the API.
pub struct Operation {
    /// HTTP method.
    pub method: &'static str,
    /// Path template as in `ROUTES`.
    pub path: &'static str,
    /// One line.
    pub summary: &'static str,
    /// Query parameters: the properties of this struct's schema.
    pub query: Option<SchemaFn>,
    /// Request body.
    pub request: Body,
    /// Success answer.
    pub response: Body,
}

fn s<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

fn deploy_body(g: &mut SchemaGenerator) -> Schema {
    orca_config::load::deploy_request_schema(g)
}

fn object(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "type": "object",
        "description": "A JSON object; this answer is not in the typed contract yet."
    })
}

fn jsonrpc(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "type": "object",
        "description": "A JSON-RPC 2.0 message of the Model Context Protocol (streamable HTTP transport)."
    })
}

const fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    query: Option<SchemaFn>,
    request: Body,
    response: Body,
) -> Operation {
    Operation {
        method,
        path,
        summary,
        query,
        request,
        response,
    }
}

use Body::{Json as J, None as N, Raw};

/// Every operation of the API.
pub const OPERATIONS: &[Operation] = &[
    op(
        "POST",
        "/api/v1/deploy",
        "Deploy services (validated, stored in one transaction)",
        None,
        J(deploy_body),
        J(s::<c::DeployResponse>),
    ),
    op(
        "GET",
        "/api/v1/status",
        "Status of every service and instance",
        Some(s::<c::StatusQuery>),
        N,
        J(s::<c::StatusResponse>),
    ),
    op(
        "POST",
        "/api/v1/services/{name}/scale",
        "Set a service's replica count",
        Some(s::<c::ProjectQuery>),
        J(s::<c::ScaleRequest>),
        J(s::<c::ScaleResponse>),
    ),
    op(
        "DELETE",
        "/api/v1/services/{name}",
        "Stop a service",
        Some(s::<c::ProjectQuery>),
        N,
        J(s::<c::StopResponse>),
    ),
    op(
        "DELETE",
        "/api/v1/projects/{name}",
        "Stop every service of a project",
        None,
        N,
        J(s::<c::StopResponse>),
    ),
    op(
        "POST",
        "/api/v1/stop",
        "Stop every service",
        None,
        N,
        J(s::<c::StopResponse>),
    ),
    op(
        "GET",
        "/api/v1/services/{name}/logs",
        "Instance logs (or the last build's log)",
        Some(s::<c::LogsQuery>),
        N,
        Raw("text/plain"),
    ),
    op(
        "GET",
        "/api/v1/services/{name}/diagnosis",
        "Diagnose a service by the reference's incident decision tree",
        Some(s::<c::ProjectQuery>),
        N,
        J(s::<c::Diagnosis>),
    ),
    op(
        "GET",
        "/api/v1/cluster/info",
        "Cluster name and nodes",
        None,
        N,
        J(object),
    ),
    op(
        "POST",
        "/api/v1/services/{name}/promote",
        "Promote the candidate of a rollout in progress",
        Some(s::<c::ProjectQuery>),
        N,
        J(s::<c::PromoteResponse>),
    ),
    op(
        "POST",
        "/api/v1/services/{name}/rebalance",
        "Spread a service over its eligible nodes again, without downtime",
        Some(s::<c::ProjectQuery>),
        N,
        J(object),
    ),
    op(
        "POST",
        "/api/v1/services/{name}/rollback",
        "Abandon a rollout in progress, or restore an earlier revision",
        Some(s::<c::ProjectQuery>),
        J(s::<c::RollbackRequest>),
        J(s::<c::RollbackResponse>),
    ),
    op(
        "POST",
        "/api/v1/cluster/tokens",
        "Create a join token for `orca agent --join` (shown once)",
        None,
        J(object),
        J(object),
    ),
    op(
        "DELETE",
        "/api/v1/cluster/nodes/{id}",
        "Remove a node: its certificate is revoked at once",
        None,
        N,
        J(object),
    ),
    op(
        "POST",
        "/api/v1/cluster/nodes/{id}/drain",
        "Drain a node: no new instances; its instances migrate (optional `deadline_secs`)",
        None,
        J(object),
        J(object),
    ),
    op(
        "POST",
        "/api/v1/cluster/nodes/{id}/undrain",
        "Undrain a node: it takes new instances again",
        None,
        N,
        J(object),
    ),
    op(
        "GET",
        "/api/v1/webhooks",
        "List webhooks (secrets never shown)",
        None,
        N,
        J(object),
    ),
    op(
        "POST",
        "/api/v1/webhooks",
        "Add a webhook",
        None,
        J(object),
        J(object),
    ),
    op(
        "DELETE",
        "/api/v1/webhooks/{id}",
        "Remove a webhook",
        None,
        N,
        J(object),
    ),
    op(
        "POST",
        "/api/v1/webhooks/github",
        "GitHub push delivery (signature-checked by the forge plugin)",
        None,
        Raw("application/json"),
        J(object),
    ),
    op(
        "POST",
        "/api/v1/webhooks/gitea",
        "Gitea push delivery (signature-checked by the forge plugin)",
        None,
        Raw("application/json"),
        J(object),
    ),
    op(
        "POST",
        "/api/v1/webhooks/gitlab",
        "GitLab push delivery (token-checked by the forge plugin)",
        None,
        Raw("application/json"),
        J(object),
    ),
    op(
        "POST",
        "/api/v1/webhooks/{forge}",
        "Delivery to an installed forge plugin",
        None,
        Raw("application/json"),
        J(object),
    ),
    op(
        "GET",
        "/api/v1/tokens",
        "List tokens (names and roles, never values)",
        None,
        N,
        J(object),
    ),
    op(
        "POST",
        "/api/v1/tokens",
        "Create a token (its value is shown once)",
        None,
        J(object),
        J(object),
    ),
    op(
        "DELETE",
        "/api/v1/tokens/{name}",
        "Revoke a token (effective at once)",
        None,
        N,
        J(object),
    ),
    op(
        "POST",
        "/api/v1/tokens/{name}/rotate",
        "Rotate a token: a new value (shown once) replaces the old one at once",
        None,
        N,
        J(object),
    ),
    op(
        "GET",
        "/api/v1/volumes",
        "Named volumes of this cluster with the services and containers that use them",
        None,
        N,
        J(object),
    ),
    op(
        "DELETE",
        "/api/v1/volumes/{project}/{name}",
        "Remove a named volume and its data (refused while a container or running service uses it)",
        None,
        N,
        J(object),
    ),
    op(
        "GET",
        "/api/v1/backups",
        "Every backup's manifest, newest first (archives with size and sha256, status, verified)",
        None,
        N,
        J(object),
    ),
    op(
        "POST",
        "/api/v1/backups",
        "Start a backup of every service's volumes, or of a project's or one service's ({project?, service?, verify?}); 202 with its id",
        None,
        N,
        J(object),
    ),
    op(
        "GET",
        "/api/v1/backups/{id}",
        "A backup's manifest and the progress of its last backup or restore (bytes done / total)",
        None,
        N,
        J(object),
    ),
    op(
        "POST",
        "/api/v1/backups/{id}/restore",
        "Restore a backup's volumes ({service?}): checksums checked first (a mismatch is refused, nothing changed), then 202",
        None,
        N,
        J(object),
    ),
    op(
        "GET",
        "/api/v1/events",
        "The event stream (filters: service, project, kind, since, after, limit); follow=true streams server-sent events",
        None,
        N,
        J(object),
    ),
    op(
        "GET",
        "/api/v1/notifications",
        "Recent notification deliveries with their state, attempts and last error",
        None,
        N,
        J(object),
    ),
    op(
        "GET",
        "/api/v1/projects/{name}/secrets",
        "List a project's secret keys (never values)",
        None,
        N,
        J(s::<c::SecretKeys>),
    ),
    op(
        "PUT",
        "/api/v1/projects/{name}/secrets/{key}",
        "Set a secret",
        None,
        J(object),
        J(object),
    ),
    op(
        "DELETE",
        "/api/v1/projects/{name}/secrets/{key}",
        "Delete a secret",
        None,
        N,
        J(object),
    ),
    op("GET", "/api/v1/plugins", "List plugins", None, N, J(object)),
    op(
        "POST",
        "/api/v1/plugins",
        "Upload a plugin component (inspected, not installed)",
        Some(s::<c::UploadQuery>),
        Raw("application/wasm"),
        J(object),
    ),
    op(
        "PUT",
        "/api/v1/plugins/{name}",
        "Install a plugin component under a name",
        None,
        Raw("application/wasm"),
        J(object),
    ),
    op(
        "GET",
        "/api/v1/openapi.json",
        "This document",
        None,
        N,
        J(object),
    ),
    op(
        "GET",
        "/api/v1/whoami",
        "The presented token's name and role",
        None,
        N,
        J(s::<c::WhoAmI>),
    ),
    op(
        "POST",
        "/mcp",
        "Model Context Protocol endpoint (streamable HTTP): tools scoped by the token's role",
        None,
        J(jsonrpc),
        J(jsonrpc),
    ),
    op(
        "GET",
        "/api/v1/health",
        "Liveness of the API",
        None,
        N,
        J(s::<c::HealthResponse>),
    ),
    op(
        "GET",
        "/metrics",
        "Prometheus metrics",
        None,
        N,
        Raw("application/openmetrics-text"),
    ),
];

/// The role a permission stands for in the document (`x-orca-permission`).
fn permission_name(perm: Option<Permission>) -> &'static str {
    match perm {
        None => "public",
        Some(Permission::Read) => "read",
        Some(Permission::Deploy) => "deploy",
        Some(Permission::Operate) => "operate",
        Some(Permission::Admin) => "admin",
    }
}

fn roles_of(perm: Option<Permission>) -> Vec<&'static str> {
    match perm {
        None => vec![],
        Some(p) => orca_config::Role::ALL
            .into_iter()
            .filter(|r| super::allows(*r, p))
            .map(orca_config::Role::as_str)
            .collect(),
    }
}

fn content(g: &mut SchemaGenerator, body: Body) -> Option<Value> {
    match body {
        Body::None => None,
        Body::Json(f) => Some(json!({ "application/json": { "schema": f(g) } })),
        Body::Raw(media) => {
            let mut m = Map::new();
            m.insert(media.to_string(), json!({ "schema": { "type": "string" } }));
            Some(Value::Object(m))
        }
    }
}

/// Builds the whole document.
pub fn document() -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    let mut g = settings.into_generator();
    let error = g.subschema_for::<c::ErrorBody>();
    let mut paths: Map<String, Value> = Map::new();
    for o in OPERATIONS {
        let perm = ROUTES
            .iter()
            .find(|r| r.0 == o.method && r.1 == o.path)
            .and_then(|r| r.2);
        let mut params: Vec<Value> = o
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if let Some(q) = o.query {
            let schema = q(&mut g);
            let target = schema
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
                .and_then(|name| g.definitions().get(name).cloned())
                .unwrap_or_else(|| schema.as_value().clone());
            if let Some(props) = target.get("properties").and_then(Value::as_object) {
                for (name, p) in props {
                    let mut p = p.clone();
                    let description = p
                        .as_object_mut()
                        .and_then(|m| m.remove("description"))
                        .unwrap_or(Value::Null);
                    params.push(json!({
                        "name": name, "in": "query", "required": false,
                        "description": description, "schema": p,
                    }));
                }
            }
        }
        let roles = roles_of(perm);
        let mut operation = json!({
            "operationId": operation_id(o.method, o.path),
            "summary": o.summary,
            "description": match perm {
                None => "Public: no token (webhook receivers check the forge's signature).".to_string(),
                Some(_) => format!("Needs a bearer token with role {}.", roles.join(" or ")),
            },
            "x-orca-permission": permission_name(perm),
            "x-orca-roles": roles,
            "security": if perm.is_some() { json!([{"bearer": []}]) } else { json!([]) },
            "responses": {
                "200": {
                    "description": "Success",
                },
                "4XX": {"description": "Bad input, missing/invalid token (401), role not allowed (403), not found, conflict",
                        "content": {"application/json": {"schema": error.clone()}}},
                "5XX": {"description": "Server error",
                        "content": {"application/json": {"schema": error.clone()}}},
            },
        });
        if let Some(c) = content(&mut g, o.response) {
            operation["responses"]["200"]["content"] = c;
        }
        if !params.is_empty() {
            operation["parameters"] = Value::Array(params);
        }
        if let Some(c) = content(&mut g, o.request) {
            operation["requestBody"] = json!({ "required": true, "content": c });
        }
        let item = paths.entry(o.path.to_string()).or_insert_with(|| json!({}));
        item[o.method.to_ascii_lowercase()] = operation;
    }
    let schemas = g.take_definitions(true);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "orca REST API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "orca's REST API. Each operation names the permission it needs \
                (`x-orca-permission`) and the roles that hold it (`x-orca-roles`).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    })
}

fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_ascii_lowercase();
    for seg in path
        .split('/')
        .filter(|s| !s.is_empty() && *s != "api" && *s != "v1")
    {
        id.push('_');
        let seg = seg.trim_start_matches('{').trim_end_matches('}');
        id.extend(
            seg.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
        );
    }
    id
}

/// `GET /api/v1/openapi.json` (public).
pub async fn serve() -> Json<Value> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_one_operation_and_nothing_else() {
        let mut ops: Vec<(&str, &str)> = OPERATIONS.iter().map(|o| (o.method, o.path)).collect();
        let mut routes: Vec<(&str, &str)> = ROUTES.iter().map(|r| (r.0, r.1)).collect();
        ops.sort();
        routes.sort();
        assert_eq!(ops, routes);
    }

    #[test]
    fn deploy_references_the_service_schema() {
        let doc = document();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        assert!(schemas.contains_key("ServiceSpec"), "{:?}", schemas.keys());
        assert!(schemas.contains_key("Diagnosis"));
        assert_eq!(
            doc["paths"]["/api/v1/deploy"]["post"]["x-orca-roles"],
            json!(["admin", "deployer"])
        );
    }
}
