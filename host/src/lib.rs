//! orca: a compact, WASM-pluggable container orchestrator.
//!
//! Module map (see ARCHITECTURE.md for the invariants):
//! - [`cli`]: the `orca` command line; every command but `server` only calls the API.
//! - [`server`]: wires everything into the `orca server` process.
//! - [`handover`]: listening sockets passed to a successor server (SCM_RIGHTS, re-exec).
//! - [`update`]: `orca update`: signed release index, verified download, atomic replace.
//! - [`version`]: the version this binary reports (a stamp slot release pipelines rewrite).
//! - [`api`]: the REST API (axum), RBAC, request limits; the only module that knows HTTP/JSON.
//! - [`controller`]: observe → plan → publish → execute loop; Docker events; crash back-off.
//! - [`reconciler`]: the pure planning function, table- and property-tested.
//! - [`rollout`]: the rollout driver's pure decisions (start, apply a strategy's step, groups, weights).
//! - [`events`]: the typed event stream: emit, persist (store table `events`), follow, notify.
//! - [`notify`]: `[[notify]]` targets: signed outbound webhooks of matching events, retried.
//! - [`deploy`]: deploy-time revision preparation (resolved, sealed, fingerprinted environment).
//! - [`registry`]: plugin references (built-in, installed, uploaded) to loaded plugins.
//! - [`instance`]: container labels, names and spec fingerprints.
//! - [`health`]: readiness verdicts that gate traffic.
//! - [`secrets`]: `${secrets.KEY}` resolution.
//! - [`metrics`]: the Prometheus registry.
//! - [`process`]: process-wide settings (fd limit, server umask, CLI SIGPIPE).
//! - [`plugins`]: the WebAssembly plugin runtime (wasmtime); the only module that knows wasmtime.
//! - [`stats`]: the stats loop sampling instance memory and CPU.
//! - [`volumes`]: Docker volume names and labels, host-path checks, mounts, volume placement.
//! - [`webhooks`]: webhook deliveries: plugin choice, hooks and secrets, dedupe, redeploys.
//! - [`build`]: git-build's host side: the builder plugin's capabilities (checkout, image
//!   build), build records and logs.
//! - [`doctor`]: the incident decision tree (`orca doctor`), a pure function over evidence.
//! - [`mcp`]: the MCP server (rmcp): tools one to one with REST routes, scoped by role.
//!
//! Sibling crates: `orca-config` (schema), `orca-store` (redb, secrets cipher, tokens),
//! `orca-proxy` (HTTP proxy), `orca-docker` (container runtime port + bollard),
//! `orca-contract` (typed REST bodies with JSON schemas).

pub mod api;
pub mod backup;
pub mod build;
pub mod certs;
pub mod cli;
pub mod controller;
pub mod deploy;
pub mod doctor;
pub mod events;
pub mod handover;
pub mod health;
pub mod instance;
pub mod mcp;
pub mod metrics;
pub mod nodes;
pub mod notify;
pub mod plugins;
pub mod process;
pub mod reconciler;
pub mod registry;
pub mod rollout;
pub mod secrets;
pub mod server;
pub mod stats;
pub mod update;
pub mod version;
pub mod volumes;
pub mod webhooks;
