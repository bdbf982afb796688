//! The MCP tools: each maps to exactly one REST operation and carries that route's permission
//! (from [`crate::api::ROUTES`]), its input JSON schema and truthful annotations.
//!
//! [`request_for`] turns a tool call's arguments into the REST request (method, path with
//! encoded segments and query, JSON body); nothing here performs I/O.

use std::sync::Arc;

use orca_contract::api as c;
use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Deserialize;
use serde_json::Value;

use crate::api::{Permission, ROUTES};

/// `{}`: a tool without arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// A service by name.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceArgs {
    /// Service name.
    pub name: String,
    /// Project of the service (only needed when the name exists in several projects).
    #[serde(default)]
    pub project: Option<String>,
}

/// Arguments of `logs`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsArgs {
    /// Service name.
    pub name: String,
    /// Project of the service.
    #[serde(default)]
    pub project: Option<String>,
    /// Lines per instance from the end (default 100).
    #[serde(default)]
    pub tail: Option<u32>,
    /// The last image build's log instead of the instances' logs.
    #[serde(default)]
    pub build: bool,
}

/// Arguments of `scale`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleArgs {
    /// Service name.
    pub name: String,
    /// Project of the service.
    #[serde(default)]
    pub project: Option<String>,
    /// Desired number of instances, 0 to 100.
    pub replicas: u32,
}

/// Arguments of `rollback`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackArgs {
    /// Service name.
    pub name: String,
    /// Project of the service.
    #[serde(default)]
    pub project: Option<String>,
    /// Revision to restore (default: the previous one, or abandon a rollout in progress).
    #[serde(default)]
    pub to: Option<u64>,
}

/// Arguments of `secrets_list`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectArgs {
    /// Project whose secret keys to list.
    pub project: String,
}

/// Arguments of `events` (the history of `GET /api/v1/events`; no `follow`: a tool call
/// answers once, an agent polls with `after`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsArgs {
    /// Only this service's events (`name` or `project/name`).
    #[serde(default)]
    pub service: Option<String>,
    /// Only this project's events.
    #[serde(default)]
    pub project: Option<String>,
    /// Kind or kind family, e.g. `instance.crashed`, `rollout`.
    #[serde(default)]
    pub kind: Option<String>,
    /// How far back: `30s`, `10m`, `2h`, `7d`.
    #[serde(default)]
    pub since: Option<String>,
    /// Only events after this sequence number (the `seq` of the last event seen).
    #[serde(default)]
    pub after: Option<u64>,
    /// At most this many, the newest (default 100, at most 10,000).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// What a tool does to the cluster, for its annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Reads only.
    ReadOnly,
    /// Changes state; repeating the same call changes nothing more.
    Idempotent,
    /// Changes state; repeating it changes more (rollback goes further back).
    Repeating,
}

/// One tool.
pub struct ToolDef {
    /// Tool name.
    pub name: &'static str,
    /// Description shown to the agent.
    pub description: &'static str,
    /// The REST operation it maps to.
    pub method: &'static str,
    /// The route template (as in `ROUTES`).
    pub route: &'static str,
    /// Effect on the cluster.
    pub effect: Effect,
    /// May remove or replace running instances.
    pub destructive: bool,
    /// Input schema.
    pub schema: fn(&mut SchemaGenerator) -> Schema,
}

fn s<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

fn deploy_schema(g: &mut SchemaGenerator) -> Schema {
    orca_config::load::deploy_request_schema(g)
}

/// Every tool.
pub const TOOLS: &[ToolDef] = &[
    ToolDef {
        name: "status",
        description: "Status of every service (or one project's): desired and ready replicas, instances with state, exit codes, OOM kills, probe errors, rollout and TLS state. GET /api/v1/status.",
        method: "GET",
        route: "/api/v1/status",
        effect: Effect::ReadOnly,
        destructive: false,
        schema: s::<c::StatusQuery>,
    },
    ToolDef {
        name: "logs",
        description: "The last log lines of a service's instances (stderr lines marked `!`), or its last image build's log. GET /api/v1/services/{name}/logs.",
        method: "GET",
        route: "/api/v1/services/{name}/logs",
        effect: Effect::ReadOnly,
        destructive: false,
        schema: s::<LogsArgs>,
    },
    ToolDef {
        name: "doctor",
        description: "Diagnose a service by orca's incident decision tree: findings (oom-killed, crash-looping, dependency-refused, readiness-failing, no-route, tls-acme-failed, node-down, ...) with evidence and the action to take; \"healthy\" when there are none. GET /api/v1/services/{name}/diagnosis.",
        method: "GET",
        route: "/api/v1/services/{name}/diagnosis",
        effect: Effect::ReadOnly,
        destructive: false,
        schema: s::<ServiceArgs>,
    },
    ToolDef {
        name: "events",
        description: "What happened: orca's event history, oldest first — deploys, rollout steps, promote, rollbacks with the reason, instance start/ready/unready/crash/OOM/liveness restarts with exit codes, placement failures, webhook deliveries, builds, certificates, nodes. Filter by service, project, kind, since; poll with `after` = the last `seq` seen. GET /api/v1/events.",
        method: "GET",
        route: "/api/v1/events",
        effect: Effect::ReadOnly,
        destructive: false,
        schema: s::<EventsArgs>,
    },
    ToolDef {
        name: "cluster_info",
        description: "Cluster name, API address and nodes. GET /api/v1/cluster/info.",
        method: "GET",
        route: "/api/v1/cluster/info",
        effect: Effect::ReadOnly,
        destructive: false,
        schema: s::<NoArgs>,
    },
    ToolDef {
        name: "webhooks_list",
        description: "Configured webhooks (secrets never shown). GET /api/v1/webhooks.",
        method: "GET",
        route: "/api/v1/webhooks",
        effect: Effect::ReadOnly,
        destructive: false,
        schema: s::<NoArgs>,
    },
    ToolDef {
        name: "secrets_list",
        description: "A project's secret keys (never values). GET /api/v1/projects/{name}/secrets.",
        method: "GET",
        route: "/api/v1/projects/{name}/secrets",
        effect: Effect::ReadOnly,
        destructive: false,
        schema: s::<ProjectArgs>,
    },
    ToolDef {
        name: "deploy",
        description: "Deploy services: the same JSON as POST /api/v1/deploy ({\"services\": [service specs with \"project\"]}). A changed spec becomes a new revision rolled out by its strategy (replacing running instances); an unchanged one changes nothing.",
        method: "POST",
        route: "/api/v1/deploy",
        effect: Effect::Idempotent,
        destructive: true,
        schema: deploy_schema,
    },
    ToolDef {
        name: "scale",
        description: "Set a service's replica count (scaling down removes instances). POST /api/v1/services/{name}/scale.",
        method: "POST",
        route: "/api/v1/services/{name}/scale",
        effect: Effect::Idempotent,
        destructive: true,
        schema: s::<ScaleArgs>,
    },
    ToolDef {
        name: "stop",
        description: "Stop a service: all its instances are removed (deploy starts it again). DELETE /api/v1/services/{name}.",
        method: "DELETE",
        route: "/api/v1/services/{name}",
        effect: Effect::Idempotent,
        destructive: true,
        schema: s::<ServiceArgs>,
    },
    ToolDef {
        name: "promote",
        description: "Promote the candidate of a rollout in progress (stable instances are replaced). POST /api/v1/services/{name}/promote.",
        method: "POST",
        route: "/api/v1/services/{name}/promote",
        effect: Effect::Idempotent,
        destructive: true,
        schema: s::<ServiceArgs>,
    },
    ToolDef {
        name: "rollback",
        description: "Abandon a rollout in progress, or restore the previous (or a given) revision. Each call without `to` goes one revision further back. POST /api/v1/services/{name}/rollback.",
        method: "POST",
        route: "/api/v1/services/{name}/rollback",
        effect: Effect::Repeating,
        destructive: true,
        schema: s::<RollbackArgs>,
    },
];

impl ToolDef {
    /// The permission of the route this tool maps to.
    pub fn permission(&self) -> Option<Permission> {
        ROUTES
            .iter()
            .find(|r| r.0 == self.method && r.1 == self.route)
            .and_then(|r| r.2)
    }

    /// The MCP tool description with its input schema and annotations.
    pub fn tool(&self) -> Tool {
        let mut settings = SchemaSettings::draft2020_12();
        settings.inline_subschemas = true;
        settings.meta_schema = None;
        let mut g = settings.into_generator();
        let schema = (self.schema)(&mut g);
        let mut object: JsonObject = match schema.to_value() {
            Value::Object(m) => m,
            _ => JsonObject::new(),
        };
        object.remove("title");
        let annotations = ToolAnnotations::new()
            .read_only(self.effect == Effect::ReadOnly)
            .destructive(self.destructive)
            .idempotent(self.effect != Effect::Repeating)
            .open_world(false);
        Tool::new(self.name, self.description, Arc::new(object)).with_annotations(annotations)
    }
}

/// A REST request a tool call maps to.
#[derive(Debug, Clone, PartialEq)]
pub struct RestCall {
    /// Method.
    pub method: &'static str,
    /// Path with query.
    pub path: String,
    /// JSON body.
    pub body: Option<Value>,
}

fn args<T: serde::de::DeserializeOwned>(tool: &str, arguments: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(arguments).map_err(|e| {
        let path = e.path().to_string();
        if path.is_empty() || path == "." {
            format!("invalid arguments for `{tool}`: {}", e.into_inner())
        } else {
            format!(
                "invalid arguments for `{tool}`: field `{path}`: {}",
                e.into_inner()
            )
        }
    })
}

use crate::cli::client::enc;

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", enc(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn service_path(
    route: &str,
    name: &str,
    project: Option<String>,
    extra: &[(&str, Option<String>)],
) -> String {
    let mut pairs = vec![("project", project)];
    pairs.extend(extra.iter().cloned());
    format!("{}{}", route.replace("{name}", &enc(name)), query(&pairs))
}

/// The REST request of a call of `tool` with `arguments`, or a message naming what is wrong.
pub fn request_for(tool: &ToolDef, arguments: Value) -> Result<RestCall, String> {
    let name = tool.name;
    let call = |path: String, body: Option<Value>| RestCall {
        method: tool.method,
        path,
        body,
    };
    Ok(match name {
        "status" => {
            let q: c::StatusQuery = args(name, arguments)?;
            call(
                format!("{}{}", tool.route, query(&[("project", q.project)])),
                None,
            )
        }
        "logs" => {
            let a: LogsArgs = args(name, arguments)?;
            call(
                service_path(
                    tool.route,
                    &a.name,
                    a.project,
                    &[
                        ("tail", a.tail.map(|t| t.to_string())),
                        ("build", a.build.then(|| "true".to_string())),
                    ],
                ),
                None,
            )
        }
        "doctor" | "stop" | "promote" => {
            let a: ServiceArgs = args(name, arguments)?;
            call(service_path(tool.route, &a.name, a.project, &[]), None)
        }
        "events" => {
            let a: EventsArgs = args(name, arguments)?;
            call(
                format!(
                    "{}{}",
                    tool.route,
                    query(&[
                        ("service", a.service),
                        ("project", a.project),
                        ("kind", a.kind),
                        ("since", a.since),
                        ("after", a.after.map(|n| n.to_string())),
                        ("limit", a.limit.map(|n| n.to_string())),
                    ])
                ),
                None,
            )
        }
        "cluster_info" | "webhooks_list" => {
            let _: NoArgs = args(name, arguments)?;
            call(tool.route.to_string(), None)
        }
        "secrets_list" => {
            let a: ProjectArgs = args(name, arguments)?;
            call(tool.route.replace("{name}", &enc(&a.project)), None)
        }
        "deploy" => call(tool.route.to_string(), Some(arguments)),
        "scale" => {
            let a: ScaleArgs = args(name, arguments)?;
            call(
                service_path(tool.route, &a.name, a.project, &[]),
                Some(
                    serde_json::to_value(c::ScaleRequest {
                        replicas: a.replicas,
                    })
                    .expect("plain struct"),
                ),
            )
        }
        "rollback" => {
            let a: RollbackArgs = args(name, arguments)?;
            call(
                service_path(tool.route, &a.name, a.project, &[]),
                Some(serde_json::to_value(c::RollbackRequest { to: a.to }).expect("plain struct")),
            )
        }
        other => return Err(format!("no tool `{other}`")),
    })
}

/// The tool named `name`.
pub fn find(name: &str) -> Option<&'static ToolDef> {
    TOOLS.iter().find(|t| t.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_tool_maps_to_a_guarded_route() {
        for t in TOOLS {
            assert!(t.permission().is_some(), "{} has no guarded route", t.name);
            let tool = t.tool();
            assert_eq!(
                tool.input_schema.get("type"),
                Some(&json!("object")),
                "{}",
                t.name
            );
            let read_only = tool.annotations.as_ref().unwrap().read_only_hint;
            assert_eq!(
                read_only == Some(true),
                t.method == "GET",
                "{}: only GET tools are read-only",
                t.name
            );
        }
    }

    #[test]
    fn arguments_become_the_rest_request() {
        let scale = find("scale").unwrap();
        let call = request_for(
            scale,
            json!({"name": "web", "project": "a b", "replicas": 3}),
        )
        .unwrap();
        assert_eq!(call.path, "/api/v1/services/web/scale?project=a%20b");
        assert_eq!(call.body, Some(json!({"replicas": 3})));
        let logs = find("logs").unwrap();
        let call = request_for(logs, json!({"name": "web", "tail": 5})).unwrap();
        assert_eq!(call.path, "/api/v1/services/web/logs?tail=5");
        let err = request_for(scale, json!({"name": "web"})).unwrap_err();
        assert!(err.contains("replicas"), "{err}");
        let events = find("events").unwrap();
        let call = request_for(
            events,
            json!({"service": "shop/web", "kind": "rollout", "after": 7}),
        )
        .unwrap();
        assert_eq!(
            call.path,
            "/api/v1/events?service=shop%2Fweb&kind=rollout&after=7"
        );
        let err = request_for(events, json!({"follow": true})).unwrap_err();
        assert!(err.contains("follow"), "{err}");
    }
}
