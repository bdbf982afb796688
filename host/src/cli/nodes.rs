//! `orca agent`, `orca nodes`, `orca node token create`, `orca node drain|undrain`,
//! `orca node remove`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use super::client::{enc, Client};

/// `orca node ...`.
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Join tokens for `orca agent --join`.
    #[command(subcommand)]
    Token(NodeTokenCmd),
    /// Drain a node (admin): no new instances go there, and its instances move to other
    /// nodes, each replacement ready before the instance it replaces leaves.
    Drain {
        /// Node name.
        name: String,
        /// Stop what is still on the node after this long: 30s, 10m, 1h (default: none).
        #[arg(long)]
        deadline: Option<String>,
    },
    /// Make a drained node take new instances again (admin); `orca rebalance` moves some
    /// back.
    Undrain {
        /// Node name.
        name: String,
    },
    /// Remove a node: its certificate is refused from now on (admin).
    Remove {
        /// Node name.
        name: String,
    },
    /// List nodes (same as `orca nodes`).
    List,
}

/// `orca node token ...`.
#[derive(Debug, Subcommand)]
pub enum NodeTokenCmd {
    /// Create a join token (admin); prints it once, with the command to run on the node.
    Create {
        /// Validity: 30s, 10m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// The token may join many nodes until it expires (default: one node).
        #[arg(long)]
        reusable: bool,
    },
}

/// `orca agent` arguments.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The master, `https://HOST:6880`.
    #[arg(long, env = "ORCA_JOIN")]
    pub join: String,
    /// Join token from `orca node token create` (needed only for the first join).
    #[arg(long, env = "ORCA_JOIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Node name (default: the engine's hostname).
    #[arg(long)]
    pub name: Option<String>,
    /// Address instance ports are published on and the master dials (default: the local
    /// address of the route to the master).
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// Labels for placement: zone=eu-1,disk=ssd.
    #[arg(long, default_value = "")]
    pub labels: String,
    /// Heartbeat interval in seconds.
    #[arg(long, default_value_t = 5)]
    pub heartbeat_secs: u64,
}

/// Runs `orca agent` until SIGINT/SIGTERM.
pub async fn agent(args: AgentArgs, home: &Path) -> anyhow::Result<()> {
    let labels =
        crate::nodes::parse_labels(&args.labels).map_err(|e| anyhow::anyhow!("--labels: {e}"))?;
    if let Some(name) = &args.name {
        crate::nodes::check_node_name(name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        super::wait_for_signal().await;
        tracing::info!("agent stopping; containers keep running");
        trigger.cancel();
    });
    crate::nodes::agent::run(
        crate::nodes::agent::AgentOptions {
            join: args.join,
            token: args.token,
            name: args.name,
            advertise_addr: args.advertise_addr,
            labels,
            home: home.to_path_buf(),
            heartbeat: Duration::from_secs(args.heartbeat_secs.max(1)),
        },
        shutdown,
    )
    .await
}

/// `orca node ...`.
pub async fn node(cmd: NodeCmd, client: Client, json_out: bool) -> anyhow::Result<()> {
    match cmd {
        NodeCmd::Token(NodeTokenCmd::Create { ttl, reusable }) => {
            let ttl = crate::api::events::parse_since(&ttl)
                .map_err(|e| anyhow::anyhow!("--ttl: {}", e.trim_start_matches("since: ")))?;
            let v = client
                .call(
                    Method::POST,
                    "/api/v1/cluster/tokens",
                    Some(json!({ "ttl_secs": ttl.as_secs(), "reusable": reusable })),
                )
                .await?;
            if json_out {
                return super::print_json(&v);
            }
            println!(
                "{}",
                v["token"].as_str().context("the answer has no token")?
            );
            eprintln!(
                "join token {} ({}, valid {}): shown only this once. On the node, run:\n\n    {}\n",
                v["id"].as_str().unwrap_or_default(),
                if reusable { "reusable" } else { "single use" },
                humantime(ttl),
                v["command"].as_str().unwrap_or_default()
            );
            Ok(())
        }
        NodeCmd::Remove { name } => {
            let v = client
                .call(
                    Method::DELETE,
                    &format!("/api/v1/cluster/nodes/{}", enc(&name)),
                    None,
                )
                .await?;
            if json_out {
                return super::print_json(&v);
            }
            println!("node {name} removed; its certificate is revoked");
            Ok(())
        }
        NodeCmd::Drain { name, deadline } => {
            let deadline = deadline
                .map(|d| {
                    crate::api::events::parse_since(&d).map_err(|e| {
                        anyhow::anyhow!("--deadline: {}", e.trim_start_matches("since: "))
                    })
                })
                .transpose()?;
            let v = client
                .call(
                    Method::POST,
                    &format!("/api/v1/cluster/nodes/{}/drain", enc(&name)),
                    Some(json!({ "deadline_secs": deadline.map(|d| d.as_secs()) })),
                )
                .await?;
            if json_out {
                return super::print_json(&v);
            }
            match deadline {
                Some(d) => println!(
                    "node {name} draining: its instances move to other nodes; what is left in {} is stopped (`orca nodes` shows progress)",
                    humantime(d)
                ),
                None => println!(
                    "node {name} draining: its instances move to other nodes (`orca nodes` shows progress)"
                ),
            }
            Ok(())
        }
        NodeCmd::Undrain { name } => {
            let v = client
                .call(
                    Method::POST,
                    &format!("/api/v1/cluster/nodes/{}/undrain", enc(&name)),
                    None,
                )
                .await?;
            if json_out {
                return super::print_json(&v);
            }
            println!(
                "node {name} takes new instances again (`orca rebalance` spreads services over it)"
            );
            Ok(())
        }
        NodeCmd::List => nodes(client, json_out).await,
    }
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `orca nodes`: the node table.
pub async fn nodes(client: Client, json_out: bool) -> anyhow::Result<()> {
    let v = client
        .call(Method::GET, "/api/v1/cluster/info", None)
        .await?;
    if json_out {
        return super::print_json(&v);
    }
    print!("{}", nodes_table(&v));
    Ok(())
}

/// One line for `orca status`: `nodes: 3 (3 ready)`, with the ones not ready named.
pub fn summary(v: &Value) -> String {
    let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
    let mut by_state: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for n in &nodes {
        by_state
            .entry(n["status"].as_str().unwrap_or("?"))
            .or_default()
            .push(n["name"].as_str().unwrap_or("?"));
    }
    let parts: Vec<String> = by_state
        .iter()
        .map(|(state, names)| {
            if *state == "ready" {
                format!("{} ready", names.len())
            } else {
                format!("{} {state}: {}", names.len(), names.join(", "))
            }
        })
        .collect();
    format!("nodes: {} ({})", nodes.len(), parts.join("; "))
}

/// The text table of `orca nodes` (a missing field is an error, not a blank column).
pub fn nodes_table(v: &Value) -> String {
    let mut out = format!(
        "{:<20} {:<8} {:<9} {:<16} {:>4} {:>9} {:>9}  {:<10} LABELS\n",
        "NAME", "ROLE", "STATE", "ADDRESS", "CPUS", "MEMORY", "INSTANCES", "VERSION"
    );
    let now = crate::controller::now_ms();
    for n in v["nodes"].as_array().into_iter().flatten() {
        let labels = n["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let mut seen = n["last_seen_ms"]
            .as_u64()
            .map(|t| format!(" (seen {}s ago)", now.saturating_sub(t) / 1000))
            .filter(|_| n["status"] != "ready")
            .unwrap_or_default();
        if n["draining"] == true {
            let left = n["instances"].as_u64().unwrap_or(0);
            let started = n["drain_started_ms"].as_u64().unwrap_or(now);
            seen.push_str(&format!(
                " (draining {}s: {}",
                now.saturating_sub(started) / 1000,
                if left == 0 {
                    "done".to_string()
                } else {
                    format!("{left} instance(s) left")
                }
            ));
            if let Some(d) = n["drain_deadline_ms"].as_u64() {
                seen.push_str(&format!(", deadline in {}s", d.saturating_sub(now) / 1000));
            }
            seen.push(')');
        }
        out.push_str(&format!(
            "{:<20} {:<8} {:<9} {:<16} {:>4} {:>8}M {:>9}  {:<10} {}{}\n",
            n["name"].as_str().unwrap_or("?"),
            n["role"].as_str().unwrap_or("?"),
            n["status"].as_str().unwrap_or("?"),
            n["address"].as_str().unwrap_or("?"),
            n["cpus"],
            n["memory_bytes"].as_u64().unwrap_or(0) >> 20,
            n["instances"],
            n["agent_version"].as_str().unwrap_or("?"),
            labels,
            seen,
        ));
    }
    out
}
