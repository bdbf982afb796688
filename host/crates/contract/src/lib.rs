//! orca's typed contract: the bodies the REST API sends and receives, shared by the server's
//! handlers and the CLI so a field missing from a response is a decode error, never a blank
//! column. Free of tokio/hyper/redb/bollard/wasmtime: only serde and schemars.
//!
//! - [`api`]: REST request/response bodies, with JSON schemas (schemars) for the OpenAPI
//!   document and the MCP tools' input schemas.

pub mod api;
