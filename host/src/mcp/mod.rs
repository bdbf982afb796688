//! The MCP server (official Rust SDK `rmcp`): `orca mcp` over stdio, and streamable HTTP at
//! `/mcp` on the API listener.
//!
//! Every tool call becomes exactly one REST request with the caller's own bearer token, so the
//! route's guard is what allows or refuses it (deny by default, one owner of the RBAC matrix);
//! `tools/list` shows only the tools the token's role may call. Over stdio the REST request goes
//! over HTTP to the API; at `/mcp` it goes through the API router in process.

pub mod tools;

use std::sync::Arc;

use axum::body::Body as AxumBody;
use axum::Router;
use orca_config::Role;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use schemars::generate::SchemaSettings;
use serde_json::Value;
use tower::ServiceExt;

use crate::api::allows;
use crate::api::auth::Caller;

/// Largest REST answer relayed to the agent (a long log is cut from the front).
const MAX_ANSWER: usize = 256 * 1024;

/// Where tool calls go.
#[derive(Clone)]
pub enum Backend {
    /// The API over HTTP, with the token `orca mcp` found (stdio).
    Remote {
        /// HTTP client.
        http: reqwest::Client,
        /// API base URL.
        base: String,
        /// Bearer token.
        token: String,
        /// The token's role (from `GET /api/v1/whoami`).
        role: Role,
    },
    /// The API router in process, with the token of each `/mcp` request.
    Local(Router),
}

/// One MCP server session.
#[derive(Clone)]
pub struct OrcaMcp {
    backend: Backend,
}

impl OrcaMcp {
    /// A server over `backend`.
    pub fn new(backend: Backend) -> Self {
        OrcaMcp { backend }
    }

    /// The caller's token and role: fixed over stdio, from the HTTP request at `/mcp` (the
    /// route's guard verified the token and put the [`Caller`] in the request).
    fn caller(&self, ctx: &RequestContext<RoleServer>) -> Result<(String, Role), ErrorData> {
        match &self.backend {
            Backend::Remote { token, role, .. } => Ok((token.clone(), *role)),
            Backend::Local(_) => {
                let parts = ctx
                    .extensions
                    .get::<http::request::Parts>()
                    .ok_or_else(|| ErrorData::internal_error("no HTTP request", None))?;
                let caller = parts
                    .extensions
                    .get::<Caller>()
                    .ok_or_else(|| ErrorData::internal_error("request not authorized", None))?;
                let token = parts
                    .headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim)
                    .unwrap_or_default()
                    .to_string();
                Ok((token, caller.role))
            }
        }
    }

    /// Sends one REST request; answers the status and body text.
    async fn rest(&self, token: &str, call: &tools::RestCall) -> Result<(u16, String), String> {
        match &self.backend {
            Backend::Remote { http, base, .. } => {
                let method = reqwest::Method::from_bytes(call.method.as_bytes())
                    .map_err(|e| e.to_string())?;
                let mut req = http
                    .request(method, format!("{base}{}", call.path))
                    .bearer_auth(token)
                    .timeout(std::time::Duration::from_secs(120));
                if let Some(b) = &call.body {
                    req = req.json(b);
                }
                let resp = req
                    .send()
                    .await
                    .map_err(|e| format!("cannot reach the orca API at {base}: {e}"))?;
                let status = resp.status().as_u16();
                let text = resp.text().await.map_err(|e| e.to_string())?;
                Ok((status, text))
            }
            Backend::Local(router) => {
                let mut req = http::Request::builder()
                    .method(call.method)
                    .uri(&call.path)
                    .header(http::header::AUTHORIZATION, format!("Bearer {token}"));
                let body = match &call.body {
                    Some(b) => {
                        req = req.header(http::header::CONTENT_TYPE, "application/json");
                        AxumBody::from(serde_json::to_vec(b).map_err(|e| e.to_string())?)
                    }
                    None => AxumBody::empty(),
                };
                let req = req.body(body).map_err(|e| e.to_string())?;
                let resp = router
                    .clone()
                    .oneshot(req)
                    .await
                    .map_err(|e| format!("API router: {e}"))?;
                let status = resp.status().as_u16();
                let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024 * 1024)
                    .await
                    .map_err(|e| format!("reading the API's answer: {e}"))?;
                Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
            }
        }
    }
}

/// The text of an answer for the agent: JSON pretty-printed, long text cut from the front.
fn answer_text(text: &str) -> String {
    let text = match serde_json::from_str::<Value>(text) {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_else(|_| text.to_string()),
        Err(_) => text.to_string(),
    };
    if text.len() <= MAX_ANSWER {
        return text;
    }
    let mut cut = text.len() - MAX_ANSWER;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    format!("[... {cut} bytes cut ...]\n{}", &text[cut..])
}

/// The API's reason from an error answer.
fn api_reason(status: u16, text: &str) -> String {
    let reason = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| text.trim().to_string());
    format!("{reason} (HTTP {status})")
}

/// One resource: URI, name, description, MIME type and its text.
struct Res {
    uri: &'static str,
    name: &'static str,
    description: &'static str,
    mime: &'static str,
    text: fn() -> String,
}

fn schema_text(f: fn(&mut schemars::SchemaGenerator) -> schemars::Schema) -> String {
    let mut settings = SchemaSettings::draft2020_12();
    settings.inline_subschemas = true;
    let mut g = settings.into_generator();
    let schema = f(&mut g);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

const RESOURCES: &[Res] = &[
    Res {
        uri: "orca://schema/service.toml",
        name: "service.toml schema",
        description: "JSON schema of services/PROJECT/service.toml ([[service]] tables)",
        mime: "application/schema+json",
        text: || schema_text(orca_config::load::service_file_schema),
    },
    Res {
        uri: "orca://schema/deploy",
        name: "deploy request schema",
        description: "JSON schema of the POST /api/v1/deploy body (and of the deploy tool's input)",
        mime: "application/schema+json",
        text: || schema_text(orca_config::load::deploy_request_schema),
    },
    Res {
        uri: "orca://openapi.json",
        name: "OpenAPI document",
        description: "The REST API (OpenAPI 3.1) with each route's role",
        mime: "application/json",
        text: || serde_json::to_string_pretty(&crate::api::openapi::document()).unwrap_or_default(),
    },
    Res {
        uri: "orca://examples/demo/service.toml",
        name: "example project: demo",
        description: "A service with a domain, health check, resources and a rolling deploy",
        mime: "application/toml",
        text: || include_str!("../../../services/demo/service.toml").to_string(),
    },
    Res {
        uri: "orca://examples/shop/service.toml",
        name: "example project: shop",
        description: "Several services of one project reaching each other by alias",
        mime: "application/toml",
        text: || include_str!("../../../services/shop/service.toml").to_string(),
    },
];

impl ServerHandler for OrcaMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new("orca", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "orca container orchestrator. Tools map one to one to the REST API and are limited \
             to your token's role. Start with `status`; when a service misbehaves call `doctor` \
             with its name and follow the finding's action. The service spec schema is the \
             resource orca://schema/deploy.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let (_, role) = self.caller(&ctx)?;
        let tools = tools::TOOLS
            .iter()
            .filter(|t| t.permission().is_some_and(|p| allows(role, p)))
            .map(tools::ToolDef::tool)
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let (token, _) = self.caller(&ctx)?;
        let fail = |msg: String| -> Result<CallToolResponse, ErrorData> {
            Ok(CallToolResult::error(vec![ContentBlock::text(msg)]).into())
        };
        let Some(tool) = tools::find(&request.name) else {
            return fail(format!(
                "no tool `{}`; tools: {}",
                request.name,
                tools::TOOLS
                    .iter()
                    .map(|t| t.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        let call = match tools::request_for(tool, arguments) {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        // The route's guard decides: a role without the permission gets the API's 403.
        match self.rest(&token, &call).await {
            Ok((status, text)) if (200..300).contains(&status) => {
                Ok(CallToolResult::success(vec![ContentBlock::text(answer_text(&text))]).into())
            }
            Ok((status, text)) => fail(api_reason(status, &text)),
            Err(e) => fail(e),
        }
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::with_all_items(
            RESOURCES
                .iter()
                .map(|r| {
                    Resource::new(r.uri, r.name)
                        .with_description(r.description)
                        .with_mime_type(r.mime)
                })
                .collect(),
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let Some(r) = RESOURCES.iter().find(|r| r.uri == request.uri) else {
            return Err(ErrorData::resource_not_found(
                format!(
                    "no resource {}; resources: {}",
                    request.uri,
                    RESOURCES
                        .iter()
                        .map(|r| r.uri)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None,
            ));
        };
        Ok(ReadResourceResult::new(vec![
            ResourceContents::text((r.text)(), r.uri).with_mime_type(r.mime)
        ])
        .into())
    }
}

/// The `/mcp` service: streamable HTTP, stateless (every POST stands alone, answered as JSON),
/// each tool call through `api` with the request's token. Host validation is off because the
/// route needs a bearer token (what DNS-rebinding protection guards against is a tokenless
/// local server).
pub fn http_service(
    api: Router,
) -> rmcp::transport::StreamableHttpService<
    OrcaMcp,
    rmcp::transport::streamable_http_server::session::never::NeverSessionManager,
> {
    use rmcp::transport::streamable_http_server::{
        session::never::NeverSessionManager, StreamableHttpServerConfig,
    };
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .disable_allowed_hosts();
    rmcp::transport::StreamableHttpService::new(
        move || Ok(OrcaMcp::new(Backend::Local(api.clone()))),
        Arc::new(NeverSessionManager::default()),
        config,
    )
}

/// `orca mcp`: serves MCP on stdin/stdout until the client hangs up.
pub async fn serve_stdio(base: String, token: String) -> anyhow::Result<()> {
    use anyhow::Context;
    use rmcp::ServiceExt;
    crate::process::crypto_provider();
    let http = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(std::time::Duration::from_secs(5))
        .build()?;
    let resp = http
        .get(format!("{base}/api/v1/whoami"))
        .bearer_auth(&token)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the orca API at {base}: {e}"))?;
    let status = resp.status().as_u16();
    let text = resp.text().await.context("reading the API's answer")?;
    if status != 200 {
        anyhow::bail!("{}", api_reason(status, &text));
    }
    let who: orca_contract::api::WhoAmI =
        serde_json::from_str(&text).context("decoding GET /api/v1/whoami")?;
    let role: Role = who
        .role
        .parse()
        .map_err(|e| anyhow::anyhow!("GET /api/v1/whoami: {e}"))?;
    tracing::info!(token = %who.name, %role, "MCP server on stdio");
    let server = OrcaMcp::new(Backend::Remote {
        http,
        base,
        token,
        role,
    })
    .serve(rmcp::transport::stdio())
    .await
    .context("starting the MCP session")?;
    server.waiting().await.context("MCP session")?;
    Ok(())
}
