//! The `orca` command line. Every command but `server` and `completions` only calls the API.

pub(crate) mod client;
mod doctor;
mod events;
mod nodes;
mod tui;
mod update;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use orca_config::ServiceSpec;
use reqwest::Method;
use serde_json::{json, Value};

use client::enc;
pub use client::{default_config_dir, default_home, Client};

/// orca: a compact, WASM-pluggable container orchestrator.
#[derive(Debug, Parser)]
#[command(name = "orca", version = crate::version::current(), about)]
pub struct Cli {
    /// API address, e.g. http://127.0.0.1:6880 (default: credentials file, then that).
    #[arg(long, global = true, env = "ORCA_API")]
    api: Option<String>,
    /// API token (default: credentials file in the state dir).
    #[arg(long, global = true, env = "ORCA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// State dir, holding cluster.db and the credentials file.
    #[arg(long, global = true, env = "ORCA_HOME")]
    home: Option<PathBuf>,
    /// Config dir, holding cluster.toml and services/.
    #[arg(long, global = true, env = "ORCA_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// Output format of read commands.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: API, proxy, store, local agent and background loops.
    Server {
        /// REST API listen address.
        #[arg(long, env = "ORCA_API_ADDR", default_value = "0.0.0.0:6880")]
        api_addr: SocketAddr,
        /// HTTP proxy listen address.
        #[arg(long, env = "ORCA_HTTP_ADDR", default_value = "0.0.0.0:80")]
        http_addr: SocketAddr,
        /// HTTPS proxy listen address (TLS with certificates by SNI; HTTP/2 or HTTP/1.1 by ALPN).
        #[arg(long, env = "ORCA_HTTPS_ADDR", default_value = "0.0.0.0:443")]
        https_addr: SocketAddr,
    },
    /// Deploy services from services/*/service.toml (or the project directory you are in).
    Deploy {
        /// Only these services (default: all found).
        services: Vec<String>,
        /// Return once the API accepted the deploy, without waiting for readiness.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for every replica to be ready.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Show services and their instances.
    Status {
        /// Only this project.
        #[arg(long)]
        project: Option<String>,
    },
    /// Set a service's replica count.
    Scale {
        /// Service name.
        service: String,
        /// Replicas wanted.
        replicas: u32,
        /// Project, when the name exists in several.
        #[arg(long)]
        project: Option<String>,
    },
    /// Show a service's container logs.
    ///
    /// Each line is `[SERVICE.SLOT] text`; a `!` right after the prefix marks a line the
    /// container wrote to stderr (`[web.0] !error: ...`). Without --follow, the instances come
    /// one after another in slot order, each instance's lines in the order they were written;
    /// with --follow, lines of all instances as they arrive. With `--output json`, one JSON
    /// object per line: instance, slot, id, stream (stdout/stderr), text, time (RFC 3339).
    #[command(verbatim_doc_comment)]
    Logs {
        /// Service name.
        service: String,
        /// Lines from the end of EACH instance's log (per instance, not in total: 3 replicas
        /// with --tail 10 show up to 30 lines).
        #[arg(long, default_value_t = 100)]
        tail: usize,
        /// Keep streaming new lines.
        #[arg(long, short)]
        follow: bool,
        /// Project, when the name exists in several.
        #[arg(long)]
        project: Option<String>,
        /// Show the output of the service's latest image build (git-build) instead.
        #[arg(long, conflicts_with = "follow")]
        build: bool,
    },
    /// Stop a service, a project, or everything: containers go, config stays.
    Stop {
        /// Service name.
        service: Option<String>,
        /// Stop a whole project (or disambiguate the service).
        #[arg(long)]
        project: Option<String>,
        /// Stop every service.
        #[arg(long, conflicts_with_all = ["service", "project"])]
        all: bool,
        /// Return once the API accepted the stop, without waiting for the containers to
        /// drain and go.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the containers to go (drains take up to each service's
        /// `drain_timeout_secs`).
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Spread a service (default: every running service) over its eligible nodes again,
    /// one instance at a time, without downtime.
    Rebalance {
        /// Service name (default: all).
        service: Option<String>,
        /// Project, when the name exists in several.
        #[arg(long)]
        project: Option<String>,
    },
    /// Promote the candidate of a rollout in progress (canary) to stable.
    Promote {
        /// Service name.
        service: String,
        /// Project, when the name exists in several.
        #[arg(long)]
        project: Option<String>,
    },
    /// Abandon the rollout in progress, or return to an earlier revision (no rebuild).
    Rollback {
        /// Service name.
        service: String,
        /// Revision to return to (default: the one before the current).
        #[arg(long)]
        to: Option<u64>,
        /// Project, when the name exists in several.
        #[arg(long)]
        project: Option<String>,
    },
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Plugins: list, inspect a component, install one.
    #[command(subcommand)]
    Plugin(PluginCmd),
    /// Manage a project's secrets.
    #[command(subcommand)]
    Secrets(SecretsCmd),
    /// Named volumes: list them, remove one (its data is gone).
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Back up volumes (admin): `orca backup all`, `orca backup SERVICE [--project P]`;
    /// `orca backup list` lists the backups.
    Backup {
        /// `all`, `list`, or a service name.
        target: String,
        /// The service's project (default: the current directory's name).
        #[arg(long)]
        project: Option<String>,
        /// Verify the backup by restoring it into a scratch volume and comparing checksums.
        #[arg(long)]
        verify: bool,
    },
    /// Restore a backup's volumes (admin): checksums checked first, the services stopped
    /// while their volumes are replaced, started again.
    Restore {
        /// The backup's id (`orca backup list`).
        backup: String,
        /// Only this service's volumes (`NAME` or `PROJECT/NAME`).
        #[arg(long)]
        service: Option<String>,
    },
    /// Webhooks: pushes that redeploy (and build) services. Without a subcommand: list.
    Webhooks {
        #[command(subcommand)]
        cmd: Option<WebhooksCmd>,
    },
    /// Diagnose a service: findings with evidence and the action to take, or "healthy".
    Doctor {
        /// Service name.
        service: String,
        /// Project, when the name exists in several.
        #[arg(long)]
        project: Option<String>,
    },
    /// Serve the Model Context Protocol on stdin/stdout (for AI agents), with this token's role.
    Mcp,
    /// Show the event stream: deploys, rollouts, instance crashes and probes, builds,
    /// webhook deliveries, certificates.
    Events {
        /// Only this service (name, or project/name).
        #[arg(long)]
        service: Option<String>,
        /// Only this project.
        #[arg(long)]
        project: Option<String>,
        /// Only this kind (instance.crashed) or family (rollout).
        #[arg(long)]
        kind: Option<String>,
        /// How far back: 30s, 10m, 2h, 7d.
        #[arg(long)]
        since: Option<String>,
        /// At most this many past events (default 100).
        #[arg(long)]
        limit: Option<usize>,
        /// Keep streaming new events.
        #[arg(long, short)]
        follow: bool,
    },
    /// A terminal dashboard: services, logs, events; scale, promote, roll back.
    Tui,
    /// Run a node agent: join a cluster (once, with a token) and serve this machine's
    /// Docker Engine to the master over one mutually authenticated connection.
    Agent(nodes::AgentArgs),
    /// List the cluster's nodes: state, address, capacity, instances, labels.
    Nodes,
    /// Nodes: join tokens, removal.
    #[command(subcommand)]
    Node(nodes::NodeCmd),
    /// Update this binary from the signed release index (ed25519/minisign, sha256), keeping
    /// the previous one beside it; then the running server re-executes it, keeping its sockets.
    Update(update::UpdateArgs),
    /// Print shell completions.
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Create a token; its value is printed once.
    Create {
        /// Token name.
        #[arg(long)]
        name: String,
        /// admin, deployer or viewer.
        #[arg(long)]
        role: String,
    },
    /// List tokens (names and roles).
    List,
    /// Revoke a token created through the API; it stops working at once.
    Revoke {
        /// Token name.
        name: String,
    },
    /// Give a token a new value (same name and role), e.g. the bootstrap `admin` token; the
    /// old value stops working at once. The new value is printed once; if it was the token
    /// of the credentials file, that file is updated.
    Rotate {
        /// Token name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum PluginCmd {
    /// Built-in and installed plugins.
    List,
    /// Describe a component file: world, WIT version, exports, imports (no server needed).
    Inspect {
        /// Path to a .wasm component.
        file: PathBuf,
    },
    /// Install a component on the server under a name services can use.
    Install {
        /// Path to a .wasm component.
        file: PathBuf,
        /// Name (default: the file's stem).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum WebhooksCmd {
    /// List webhooks with their recent deliveries (secrets are never shown).
    List,
    /// Register a webhook (admin): pushes to BRANCH of REPO redeploy SERVICE.
    Add {
        /// Repository as the forge names it: OWNER/NAME (or a clone URL).
        #[arg(long)]
        repo: String,
        /// Service to redeploy (built first if it has [service.build]).
        #[arg(long)]
        service: String,
        /// Branch, or a glob such as `release/*`.
        #[arg(long, default_value = "main")]
        branch: String,
        /// The secret the forge signs deliveries with (required).
        #[arg(long, env = "ORCA_WEBHOOK_SECRET", hide_env_values = true)]
        secret: String,
        /// github (also Gitea/Forgejo), gitea, gitlab, an installed webhook plugin's name,
        /// or a path to a webhook component (.wasm), installed under its file stem.
        #[arg(long, default_value = "github")]
        forge: String,
        /// Project, when the service name exists in several.
        #[arg(long)]
        project: Option<String>,
    },
    /// Remove a webhook.
    Remove {
        /// Webhook id (`wh-...`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum VolumeCmd {
    /// Named volumes with the services and containers that use them.
    Ls,
    /// Remove a named volume and its data (admin); refused while a container or a running
    /// service uses it (`orca stop SERVICE` first).
    Rm {
        /// PROJECT/NAME, e.g. `shop/data`.
        volume: String,
    },
}

#[derive(Debug, Subcommand)]
enum SecretsCmd {
    /// Set a secret, stored encrypted; use it as ${secrets.KEY} in service.toml.
    Set {
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// Project (default: the project directory you are in).
        #[arg(long)]
        project: Option<String>,
    },
    /// List secret keys (never values).
    List {
        /// Project (default: the project directory you are in).
        #[arg(long)]
        project: Option<String>,
    },
    /// Delete a secret.
    Rm {
        /// Key.
        key: String,
        /// Project (default: the project directory you are in).
        #[arg(long)]
        project: Option<String>,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let server = matches!(cli.command, Command::Server { .. } | Command::Agent(_));
    if !server {
        crate::process::default_sigpipe();
    }
    init_tracing(server);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(server: bool) {
    let default = if server { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ORCA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let home = cli.home.clone().unwrap_or_else(default_home);
    let config_dir = cli.config_dir.clone().unwrap_or_else(default_config_dir);
    let json_out = cli.output == Output::Json;
    let client = || Client::new(cli.api.clone(), cli.token.clone(), &home);
    match cli.command {
        Command::Server {
            api_addr,
            http_addr,
            https_addr,
        } => {
            let shutdown = tokio_util::sync::CancellationToken::new();
            let trigger = shutdown.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("shutdown requested");
                trigger.cancel();
            });
            let exit = crate::server::run(
                crate::server::ServerConfig {
                    home,
                    config_dir,
                    api_addr,
                    http_addr,
                    https_addr,
                },
                shutdown,
            )
            .await?;
            match exit {
                crate::server::Exit::Stopped => Ok(()),
                // Returns only if the exec failed.
                crate::server::Exit::ReExec(reexec) => Err(reexec.exec()),
            }
        }
        Command::Deploy {
            services,
            no_wait,
            timeout_secs,
        } => {
            let (mut specs, dirs) = load_specs(&config_dir, &services)?;
            let tls = read_certificates(&specs, &dirs)?;
            let c = client()?;
            upload_plugin_paths(&c, &mut specs, &dirs).await?;
            let answer = c
                .call(
                    Method::POST,
                    "/api/v1/deploy",
                    Some(json!({ "services": specs, "tls": tls })),
                )
                .await?;
            for s in answer["services"].as_array().into_iter().flatten() {
                println!(
                    "{}/{}: revision {} ({})",
                    s["project"].as_str().unwrap_or(""),
                    s["name"].as_str().unwrap_or(""),
                    s["revision"],
                    if s["changed"].as_bool() == Some(true) {
                        "changed"
                    } else {
                        "unchanged"
                    }
                );
                if let Some(from) = s["replicas_reset_from"].as_u64() {
                    println!(
                        "  replicas reset from {from} (set by `orca scale`) to {} (the service file's); keep the count by setting it in the file",
                        s["replicas"]
                    );
                }
            }
            if !no_wait {
                let keys: Vec<(String, String, u64)> = answer["services"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| {
                        let (project, name) = project_and_name(s);
                        (project, name, s["revision"].as_u64().unwrap_or(0))
                    })
                    .collect();
                wait_running(&c, &keys, Duration::from_secs(timeout_secs)).await?;
            }
            Ok(())
        }
        Command::Status { project } => {
            let path = match &project {
                Some(p) => format!("/api/v1/status?project={}", enc(p)),
                None => "/api/v1/status".to_string(),
            };
            let c = client()?;
            let v = c.call(Method::GET, &path, None).await?;
            if json_out {
                print_json(&v)
            } else {
                print_status(&v);
                let info = c.call(Method::GET, "/api/v1/cluster/info", None).await?;
                println!("{}", nodes::summary(&info));
                Ok(())
            }
        }
        Command::Scale {
            service,
            replicas,
            project,
        } => {
            let path = format!(
                "/api/v1/services/{}/scale{}",
                enc(&service),
                project_query(&project)
            );
            let v = client()?
                .call(Method::POST, &path, Some(json!({ "replicas": replicas })))
                .await?;
            println!(
                "{}/{}: {} replicas",
                v["project"].as_str().unwrap_or(""),
                service,
                replicas
            );
            Ok(())
        }
        Command::Logs {
            service,
            tail,
            follow,
            project,
            build,
        } => {
            let format = if json_out { "json" } else { "text" };
            let mut path = format!(
                "/api/v1/services/{}/logs?tail={tail}&follow={follow}&build={build}&format={format}",
                enc(&service)
            );
            if let Some(p) = &project {
                path.push_str(&format!("&project={}", enc(p)));
            }
            let c = client()?;
            let timeout = if follow {
                None
            } else {
                Some(Duration::from_secs(60))
            };
            let resp = Client::check(c.send(Method::GET, &path, None, timeout).await?).await?;
            let mut stream = resp.bytes_stream();
            let mut out = std::io::stdout();
            while let Some(chunk) = stream.next().await {
                out.write_all(&chunk.context("reading the log stream")?)?;
                out.flush()?;
            }
            Ok(())
        }
        Command::Stop {
            service,
            project,
            all,
            no_wait,
            timeout_secs,
        } => {
            let c = client()?;
            let v = match (service, project, all) {
                (_, _, true) => c.call(Method::POST, "/api/v1/stop", None).await?,
                (Some(s), p, false) => {
                    let path = format!("/api/v1/services/{}{}", enc(&s), project_query(&p));
                    c.call(Method::DELETE, &path, None).await?
                }
                (None, Some(p), false) => {
                    c.call(
                        Method::DELETE,
                        &format!("/api/v1/projects/{}", enc(&p)),
                        None,
                    )
                    .await?
                }
                (None, None, false) => bail!("name a service, pass --project P, or pass --all"),
            };
            let stopped: Vec<(String, String)> = v["stopped"]
                .as_array()
                .into_iter()
                .flatten()
                .map(project_and_name)
                .collect();
            if !no_wait {
                wait_stopped(&c, &stopped, Duration::from_secs(timeout_secs)).await?;
            }
            for (project, name) in &stopped {
                println!(
                    "{project}/{name}: stopped (config kept){}",
                    if no_wait {
                        "; containers drain in the background"
                    } else {
                        ""
                    }
                );
            }
            Ok(())
        }
        Command::Rebalance { service, project } => {
            let client = client()?;
            let targets: Vec<(String, Option<String>)> = match service {
                Some(name) => vec![(name, project)],
                None => {
                    let v = client.call(Method::GET, "/api/v1/status", None).await?;
                    v["services"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|s| project.as_deref().is_none_or(|p| s["project"] == p))
                        .filter(|s| s["desired_state"] != "stopped")
                        .filter_map(|s| {
                            Some((
                                s["name"].as_str()?.to_string(),
                                s["project"].as_str().map(str::to_string),
                            ))
                        })
                        .collect()
                }
            };
            for (name, project) in targets {
                let path = format!(
                    "/api/v1/services/{}/rebalance{}",
                    enc(&name),
                    project_query(&project)
                );
                let v = client.call(Method::POST, &path, None).await?;
                println!(
                    "{}/{}: rebalance requested (`orca status` shows where its instances run)",
                    v["project"].as_str().unwrap_or("?"),
                    v["name"].as_str().unwrap_or(&name)
                );
            }
            Ok(())
        }
        Command::Promote { service, project } => {
            let path = format!(
                "/api/v1/services/{}/promote{}",
                enc(&service),
                project_query(&project)
            );
            let v = client()?.call(Method::POST, &path, None).await?;
            println!(
                "{service}: promote of revision {} requested",
                v["candidate_revision"]
            );
            Ok(())
        }
        Command::Rollback {
            service,
            to,
            project,
        } => {
            let path = format!(
                "/api/v1/services/{}/rollback{}",
                enc(&service),
                project_query(&project)
            );
            let body = to.map(|n| json!({ "to": n }));
            let v = client()?.call(Method::POST, &path, body).await?;
            match v.get("abandoned_revision") {
                Some(rev) => println!("{service}: rollout of revision {rev} abandoned"),
                None => println!(
                    "{service}: revision {} restored as revision {}",
                    v["restored_revision"], v["revision"]
                ),
            }
            Ok(())
        }
        Command::Events {
            service,
            project,
            kind,
            since,
            limit,
            follow,
        } => {
            let args = events::EventsArgs {
                service,
                project,
                kind,
                since,
                limit,
                follow,
                json: json_out,
            };
            events::run(&client()?, args).await
        }
        Command::Tui => tui::run(&client()?).await,
        Command::Agent(args) => nodes::agent(args, &home).await,
        Command::Nodes => nodes::nodes(client()?, json_out).await,
        Command::Node(cmd) => nodes::node(cmd, client()?, json_out).await,
        Command::Token(TokenCmd::Create { name, role }) => {
            let role: orca_config::Role =
                role.parse().map_err(|e| anyhow::anyhow!("--role: {e}"))?;
            let v = client()?
                .call(
                    Method::POST,
                    "/api/v1/tokens",
                    Some(json!({ "name": name, "role": role })),
                )
                .await?;
            if json_out {
                return print_json(&v);
            }
            println!("{}", v["token"].as_str().unwrap_or_default());
            eprintln!("token \"{name}\" ({role}) created; it is shown only this once");
            Ok(())
        }
        Command::Token(TokenCmd::Revoke { name }) => {
            let v = client()?
                .call(
                    Method::DELETE,
                    &format!("/api/v1/tokens/{}", client::enc(&name)),
                    None,
                )
                .await?;
            if json_out {
                return print_json(&v);
            }
            println!("token \"{name}\" revoked");
            Ok(())
        }
        Command::Token(TokenCmd::Rotate { name }) => {
            let client = client()?;
            let v = client
                .call(
                    Method::POST,
                    &format!("/api/v1/tokens/{}/rotate", client::enc(&name)),
                    None,
                )
                .await?;
            let value = v["token"].as_str().unwrap_or_default();
            let updated = client::replace_credentials_token(&home, client.token(), value)?;
            if json_out {
                return print_json(&v);
            }
            println!("{value}");
            eprintln!("token \"{name}\" rotated; the new value is shown only this once");
            if let Some(path) = updated {
                eprintln!("{} now holds the new value", path.display());
            }
            Ok(())
        }
        Command::Token(TokenCmd::List) => {
            let v = client()?.call(Method::GET, "/api/v1/tokens", None).await?;
            if json_out {
                return print_json(&v);
            }
            println!("{:<24} {:<10} SOURCE", "NAME", "ROLE");
            for t in v["tokens"].as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<10} {}",
                    t["name"].as_str().unwrap_or(""),
                    t["role"].as_str().unwrap_or(""),
                    t["source"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        Command::Secrets(SecretsCmd::Set {
            key,
            value,
            project,
        }) => {
            let project = project_or_cwd(project)?;
            let path = format!("/api/v1/projects/{}/secrets/{}", enc(&project), enc(&key));
            client()?
                .call(Method::PUT, &path, Some(json!({ "value": value })))
                .await?;
            println!("{project}: secret {key} set");
            Ok(())
        }
        Command::Backup {
            target,
            project,
            verify,
        } => backup_cmd(&client()?, &target, project, verify, json_out).await,
        Command::Restore { backup, service } => {
            let c = client()?;
            let path = format!("/api/v1/backups/{}/restore", enc(&backup));
            c.call(Method::POST, &path, Some(json!({ "service": service })))
                .await?;
            let v = follow_job(&c, &backup).await?;
            if json_out {
                return print_json(&v);
            }
            println!(
                "backup {backup} restored ({} bytes)",
                v["job"]["done_bytes"].as_u64().unwrap_or(0)
            );
            Ok(())
        }
        Command::Volume(VolumeCmd::Ls) => {
            let v = client()?.call(Method::GET, "/api/v1/volumes", None).await?;
            if json_out {
                return print_json(&v);
            }
            println!(
                "{:<24} {:<24} {:<40} {:<20} CONTAINERS",
                "PROJECT/NAME", "NODE", "DOCKER VOLUME", "SERVICES"
            );
            let list = |x: &Value| {
                let items: Vec<&str> = x
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                if items.is_empty() {
                    "-".to_string()
                } else {
                    items.join(",")
                }
            };
            for vol in v["volumes"].as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<24} {:<40} {:<20} {}",
                    format!(
                        "{}/{}",
                        vol["project"].as_str().unwrap_or(""),
                        vol["name"].as_str().unwrap_or("")
                    ),
                    vol["node"].as_str().unwrap_or(""),
                    vol["docker_name"].as_str().unwrap_or(""),
                    list(&vol["services"]),
                    list(&vol["containers"]),
                );
            }
            Ok(())
        }
        Command::Volume(VolumeCmd::Rm { volume }) => {
            let Some((project, name)) = volume.split_once('/') else {
                anyhow::bail!("volume {volume:?}: expected PROJECT/NAME, e.g. shop/data");
            };
            let path = format!("/api/v1/volumes/{}/{}", enc(project), enc(name));
            let v = client()?.call(Method::DELETE, &path, None).await?;
            if json_out {
                return print_json(&v);
            }
            println!(
                "volume {project}/{name} removed (Docker volume {})",
                v["removed"]["docker_name"].as_str().unwrap_or("")
            );
            Ok(())
        }
        Command::Secrets(SecretsCmd::List { project }) => {
            let project = project_or_cwd(project)?;
            let path = format!("/api/v1/projects/{}/secrets", enc(&project));
            let v = client()?.call(Method::GET, &path, None).await?;
            if json_out {
                return print_json(&v);
            }
            for s in v["secrets"].as_array().into_iter().flatten() {
                println!("{}", s["key"].as_str().unwrap_or(""));
            }
            Ok(())
        }
        Command::Secrets(SecretsCmd::Rm { key, project }) => {
            let project = project_or_cwd(project)?;
            let path = format!("/api/v1/projects/{}/secrets/{}", enc(&project), enc(&key));
            client()?.call(Method::DELETE, &path, None).await?;
            println!("{project}: secret {key} deleted");
            Ok(())
        }
        Command::Plugin(PluginCmd::List) => {
            let v = client()?.call(Method::GET, "/api/v1/plugins", None).await?;
            if json_out {
                return print_json(&v);
            }
            println!("{:<20} {:<10} {:<10} SHA256", "NAME", "WORLD", "SOURCE");
            for p in v["plugins"].as_array().into_iter().flatten() {
                println!(
                    "{:<20} {:<10} {:<10} {}",
                    p["name"].as_str().unwrap_or(""),
                    p["world"].as_str().unwrap_or("?"),
                    p["source"].as_str().unwrap_or(""),
                    p["sha256"]
                        .as_str()
                        .map(|h| &h[..12.min(h.len())])
                        .unwrap_or("-"),
                );
            }
            Ok(())
        }
        Command::Plugin(PluginCmd::Inspect { file }) => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let info = crate::plugins::inspect(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let v = json!({
                "file": file.display().to_string(),
                "world": info.world.map(|w| w.name()),
                "package": info.package,
                "exports": info.exports,
                "imports": info.imports,
                "size": info.size,
                "sha256": info.sha256,
            });
            if json_out {
                return print_json(&v);
            }
            println!("file:     {}", file.display());
            println!(
                "world:    {}",
                info.world
                    .map(|w| w.name())
                    .unwrap_or("none (not an orca plugin)")
            );
            println!("package:  {}", info.package.as_deref().unwrap_or("-"));
            println!("exports:  {}", info.exports.join(", "));
            println!("imports:  {}", info.imports.join(", "));
            println!("size:     {} bytes", info.size);
            println!("sha256:   {}", info.sha256);
            if info.world.is_none() {
                bail!("{} implements no orca:plugin world", file.display());
            }
            Ok(())
        }
        Command::Plugin(PluginCmd::Install { file, name }) => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let name = match name {
                Some(n) => n,
                None => file
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .context("the file has no usable name; pass --name")?
                    .to_string(),
            };
            let c = client()?;
            let resp = c
                .send_bytes(
                    Method::PUT,
                    &format!("/api/v1/plugins/{}", enc(&name)),
                    bytes,
                )
                .await?;
            println!(
                "installed {name} ({} plugin)",
                resp["world"].as_str().unwrap_or("?")
            );
            Ok(())
        }
        Command::Webhooks { cmd } => webhooks(client()?, cmd, json_out).await,
        Command::Doctor { service, project } => {
            doctor::doctor(&client()?, &service, project.as_deref(), json_out).await
        }
        Command::Mcp => doctor::mcp(&client()?).await,
        Command::Update(args) => update::run(args, &home, &config_dir, json_out).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "orca", &mut std::io::stdout());
            Ok(())
        }
    }
}

async fn webhooks(c: Client, cmd: Option<WebhooksCmd>, json_out: bool) -> anyhow::Result<()> {
    match cmd.unwrap_or(WebhooksCmd::List) {
        WebhooksCmd::List => {
            let v = c.call(Method::GET, "/api/v1/webhooks", None).await?;
            if json_out {
                return print_json(&v);
            }
            println!(
                "{:<12} {:<8} {:<28} {:<14} {:<20} URL",
                "ID", "FORGE", "REPO", "BRANCH", "SERVICE"
            );
            for h in v["webhooks"].as_array().into_iter().flatten() {
                println!(
                    "{:<12} {:<8} {:<28} {:<14} {:<20} {}",
                    h["id"].as_str().unwrap_or(""),
                    h["forge"].as_str().unwrap_or(""),
                    h["repo"].as_str().unwrap_or(""),
                    h["branch"].as_str().unwrap_or(""),
                    format!(
                        "{}/{}",
                        h["project"].as_str().unwrap_or(""),
                        h["service"].as_str().unwrap_or("")
                    ),
                    h["url_path"].as_str().unwrap_or(""),
                );
                for d in h["deliveries"].as_array().into_iter().flatten() {
                    println!(
                        "    {} {} {} {}: {}",
                        d["at"],
                        d["delivery"].as_str().unwrap_or("-"),
                        d["status"],
                        d["outcome"].as_str().unwrap_or(""),
                        d["reason"].as_str().or(d["detail"].as_str()).unwrap_or("")
                    );
                }
            }
            let unmatched = v["unmatched_deliveries"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !unmatched.is_empty() {
                println!("recent deliveries no webhook verified:");
                for d in unmatched {
                    println!(
                        "    {} {} {} {} {}: {}",
                        d["at"],
                        d["forge"].as_str().unwrap_or(""),
                        d["delivery"].as_str().unwrap_or("-"),
                        d["status"],
                        d["outcome"].as_str().unwrap_or(""),
                        d["detail"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(())
        }
        WebhooksCmd::Add {
            repo,
            service,
            branch,
            secret,
            forge,
            project,
        } => {
            let forge = if forge.ends_with(".wasm") {
                let path = PathBuf::from(&forge);
                let bytes =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                let name = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .context("the plugin file has no usable name")?
                    .to_string();
                c.send_bytes(
                    Method::PUT,
                    &format!("/api/v1/plugins/{}", enc(&name)),
                    bytes,
                )
                .await
                .with_context(|| format!("installing webhook plugin {}", path.display()))?;
                name
            } else {
                forge
            };
            let v = c
                .call(
                    Method::POST,
                    "/api/v1/webhooks",
                    Some(json!({
                        "repo": repo, "service": service, "branch": branch,
                        "secret": secret, "forge": forge, "project": project,
                    })),
                )
                .await?;
            if json_out {
                return print_json(&v);
            }
            println!(
                "webhook {} registered: {} pushes to {} {} redeploy {}/{}",
                v["id"].as_str().unwrap_or(""),
                v["forge"].as_str().unwrap_or(""),
                v["repo"].as_str().unwrap_or(""),
                v["branch"].as_str().unwrap_or(""),
                v["project"].as_str().unwrap_or(""),
                v["service"].as_str().unwrap_or("")
            );
            println!(
                "point the forge at {}{} with the same secret (content type application/json, push events)",
                c.base(),
                v["url_path"].as_str().unwrap_or("")
            );
            Ok(())
        }
        WebhooksCmd::Remove { id } => {
            c.call(
                Method::DELETE,
                &format!("/api/v1/webhooks/{}", enc(&id)),
                None,
            )
            .await?;
            println!("webhook {id} removed");
            Ok(())
        }
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

fn project_query(project: &Option<String>) -> String {
    project
        .as_ref()
        .map(|p| format!("?project={}", enc(p)))
        .unwrap_or_default()
}

/// The project directory the command runs in: the current directory when it holds a
/// `service.toml`.
fn cwd_project_dir() -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok()?;
    cwd.join("service.toml").is_file().then_some(cwd)
}

fn project_or_cwd(project: Option<String>) -> anyhow::Result<String> {
    if let Some(p) = project {
        return Ok(p);
    }
    let dir = cwd_project_dir()
        .context("pass --project P, or run inside a project directory (one with a service.toml)")?;
    Ok(dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("the current directory has no usable name")?
        .to_string())
}

/// The services to deploy, and the directory each project was read from (for `./x.wasm`).
fn load_specs(
    config_dir: &Path,
    only: &[String],
) -> anyhow::Result<(Vec<ServiceSpec>, BTreeMap<String, PathBuf>)> {
    let cwd = cwd_project_dir();
    let specs = match &cwd {
        Some(dir) => orca_config::load_project_dir(dir),
        None => orca_config::load_services_dir(config_dir),
    }
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if specs.is_empty() {
        bail!(
            "no services found: write {}/services/<project>/service.toml or run inside a project directory",
            config_dir.display()
        );
    }
    let dirs = specs
        .iter()
        .map(|s| {
            let dir = cwd
                .clone()
                .unwrap_or_else(|| config_dir.join("services").join(s.project()));
            (s.project().to_string(), dir)
        })
        .collect();
    for name in only {
        if !specs.iter().any(|s| &s.name == name) {
            bail!("no service \"{name}\" in the service files found");
        }
    }
    let specs = specs
        .into_iter()
        .filter(|s| only.is_empty() || only.contains(&s.name))
        .collect();
    Ok((specs, dirs))
}

/// The contents of every service's `tls_cert`/`tls_key` (relative to its project
/// directory), to send with the deploy: the server never reads the client's files.
fn read_certificates(
    specs: &[ServiceSpec],
    dirs: &BTreeMap<String, PathBuf>,
) -> anyhow::Result<Vec<orca_config::TlsUpload>> {
    let mut uploads = Vec::new();
    for spec in specs {
        let dir = dirs
            .get(spec.project())
            .cloned()
            .unwrap_or_else(|| PathBuf::from("."));
        let files = orca_config::read_tls_files(&dir, spec)
            .map_err(|e| anyhow::anyhow!("service \"{}\": {e}", spec.key()))?;
        if let Some(files) = files {
            uploads.push(orca_config::TlsUpload {
                project: spec.project().to_string(),
                service: spec.name.clone(),
                cert_pem: files.cert_pem,
                key_pem: files.key_pem,
            });
        }
    }
    Ok(uploads)
}

/// Uploads every `./path.wasm` strategy (relative to its project directory), with the path
/// as written so the server names it that way, and rewrites the reference to the uploaded
/// component's `sha256:<hex>`.
async fn upload_plugin_paths(
    c: &Client,
    specs: &mut [ServiceSpec],
    dirs: &BTreeMap<String, PathBuf>,
) -> anyhow::Result<()> {
    for spec in specs.iter_mut() {
        let project = spec.project().to_string();
        let Some(deploy) = spec.deploy.as_mut() else {
            continue;
        };
        let Some(strategy) = deploy.strategy.as_mut() else {
            continue;
        };
        if !strategy.ends_with(".wasm") {
            continue;
        }
        let path = dirs
            .get(&project)
            .map(|d| d.join(&*strategy))
            .unwrap_or_else(|| PathBuf::from(&*strategy));
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "service \"{}\": reading strategy {}",
                spec.name,
                path.display()
            )
        })?;
        // The server names the component as the service file wrote it.
        let v = c
            .send_bytes(
                Method::POST,
                &format!("/api/v1/plugins?name={}", client::enc(strategy)),
                bytes,
            )
            .await
            .with_context(|| {
                format!(
                    "service \"{}\": uploading strategy {}",
                    spec.name,
                    path.display()
                )
            })?;
        let reference = v["reference"]
            .as_str()
            .context("upload answered no reference")?;
        *strategy = reference.to_string();
    }
    Ok(())
}

/// Waits until every deployed service runs its new revision on all replicas, or its rollout
/// waits for the operator (a canary serving its weight: the split and the promote command are
/// printed); fails at once if a rollout was rolled back.
async fn wait_running(
    c: &Client,
    keys: &[(String, String, u64)],
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let v = c.call(Method::GET, "/api/v1/status", None).await?;
        let mut pending = Vec::new();
        let mut awaiting = Vec::new();
        for (project, name, revision) in keys {
            let svc = v["services"].as_array().into_iter().flatten().find(|s| {
                s["project"].as_str() == Some(project) && s["name"].as_str() == Some(name)
            });
            let Some(s) = svc else {
                pending.push(format!("{project}/{name}: not in status"));
                continue;
            };
            let rollout = &s["rollout"];
            if rollout["phase"] == "rolled-back"
                && rollout["candidate_revision"].as_u64() == Some(*revision)
            {
                bail!(
                    "{project}/{name}: revision {revision} was rolled back: {}",
                    rollout["reason"].as_str().unwrap_or("no reason given")
                );
            }
            let on_revision = s["instances"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|i| i["ready"] == true && i["revision"].as_u64() == Some(*revision))
                .count() as u64;
            let want = s["replicas"].as_u64().unwrap_or(0);
            let candidates_ready = on_revision > 0;
            if rollout["phase"] == "progressing"
                && rollout["awaiting_operator"] == true
                && rollout["candidate_revision"].as_u64() == Some(*revision)
                && candidates_ready
            {
                awaiting.push(format!(
                    "{project}/{name}: revision {revision} serves {}% of the traffic ({on_revision} canary, stable revision {} serves {}%); run `orca promote {name}` to finish or `orca rollback {name}` to abandon it",
                    rollout["traffic"]["candidate"],
                    rollout["stable_revision"],
                    rollout["traffic"]["stable"],
                ));
                continue;
            }
            let done = s["status"] == "running"
                && rollout["phase"] != "progressing"
                && on_revision >= want;
            if !done {
                pending.push(format!(
                    "{project}/{name}: {} ({on_revision}/{want} ready on revision {revision}){}{}",
                    s["status"].as_str().unwrap_or("?"),
                    if rollout["phase"] == "progressing" {
                        ", rollout in progress"
                    } else {
                        ""
                    },
                    s["error"]
                        .as_str()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ));
            }
        }
        if pending.is_empty() {
            for a in &awaiting {
                println!("{a}");
            }
            if awaiting.is_empty() {
                println!("all {} service(s) running", keys.len());
            } else {
                println!(
                    "{} service(s) running, {} waiting for the operator",
                    keys.len() - awaiting.len(),
                    awaiting.len()
                );
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {timeout:?} waiting for: {}",
                pending.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `(project, name)` of a service entry in an API answer.
fn project_and_name(s: &Value) -> (String, String) {
    (
        s["project"].as_str().unwrap_or("").to_string(),
        s["name"].as_str().unwrap_or("").to_string(),
    )
}

/// Waits until none of `services` has an instance left (drained, stopped and removed).
async fn wait_stopped(
    c: &Client,
    services: &[(String, String)],
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let v = c.call(Method::GET, "/api/v1/status", None).await?;
        let left: Vec<String> = v["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| {
                services
                    .iter()
                    .any(|(p, n)| s["project"] == p.as_str() && s["name"] == n.as_str())
                    && s["instances"].as_array().is_some_and(|i| !i.is_empty())
            })
            .map(|s| {
                format!(
                    "{}/{} ({} left)",
                    s["project"].as_str().unwrap_or(""),
                    s["name"].as_str().unwrap_or(""),
                    s["instances"].as_array().map_or(0, Vec::len)
                )
            })
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {}s waiting for the containers of {} to go (they keep draining; see `orca status`)",
                timeout.as_secs(),
                left.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `orca backup all|list|SERVICE`.
async fn backup_cmd(
    c: &client::Client,
    target: &str,
    project: Option<String>,
    verify: bool,
    json_out: bool,
) -> anyhow::Result<()> {
    if target == "list" {
        let v = c.call(Method::GET, "/api/v1/backups", None).await?;
        if json_out {
            return print_json(&v);
        }
        println!(
            "{:<22} {:<8} {:<9} {:<9} {:>14}  SCOPE",
            "ID", "STATUS", "VERIFIED", "SCHEDULED", "BYTES"
        );
        for b in v["backups"].as_array().into_iter().flatten() {
            let bytes: u64 = b["archives"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["size"].as_u64())
                .sum::<u64>()
                + b["store"]["size"].as_u64().unwrap_or(0);
            println!(
                "{:<22} {:<8} {:<9} {:<9} {:>14}  {}{}",
                b["id"].as_str().unwrap_or(""),
                b["status"].as_str().unwrap_or(""),
                match b["verified"].as_bool() {
                    Some(true) => "yes",
                    Some(false) => "FAILED",
                    None => "-",
                },
                if b["scheduled"].as_bool() == Some(true) {
                    "yes"
                } else {
                    "no"
                },
                bytes,
                b["scope"].as_str().unwrap_or(""),
                b["error"]
                    .as_str()
                    .map(|e| format!("  error: {e}"))
                    .unwrap_or_default(),
            );
        }
        return Ok(());
    }
    let body = if target == "all" {
        if project.is_some() {
            anyhow::bail!(
                "`orca backup all` takes no --project (use `orca backup SERVICE --project P`)"
            );
        }
        json!({ "verify": verify })
    } else {
        json!({ "project": project_or_cwd(project)?, "service": target, "verify": verify })
    };
    let v = c.call(Method::POST, "/api/v1/backups", Some(body)).await?;
    let id = v["id"].as_str().unwrap_or_default().to_string();
    let v = follow_job(c, &id).await?;
    if json_out {
        return print_json(&v);
    }
    let b = &v["backup"];
    println!(
        "backup {id} {}: {} volume(s), {} bytes, in {}",
        b["status"].as_str().unwrap_or(""),
        b["archives"].as_array().map_or(0, Vec::len),
        v["job"]["done_bytes"].as_u64().unwrap_or(0),
        v["dir"].as_str().map_or_else(
            || "the server's backups directory".to_string(),
            str::to_string
        ),
    );
    Ok(())
}

/// Polls backup `id` until its last backup/restore ends, with a progress bar on a terminal
/// (bytes done / total); an error if it failed.
async fn follow_job(c: &client::Client, id: &str) -> anyhow::Result<Value> {
    let path = format!("/api/v1/backups/{}", enc(id));
    let bar = indicatif::ProgressBar::new(0);
    let mut known_total = None;
    loop {
        let v = c.call(Method::GET, &path, None).await?;
        let job = &v["job"];
        bar.set_message(format!("{} {id}", job["op"].as_str().unwrap_or("backup")));
        let total = job["total_bytes"].as_u64().unwrap_or(0);
        if known_total != Some(total > 0) {
            // A backup's total is not known in advance: bytes done only.
            let template = if total > 0 {
                "{msg} {bytes}/{total_bytes} {wide_bar} {bytes_per_sec}"
            } else {
                "{msg} {bytes} {bytes_per_sec}"
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            known_total = Some(total > 0);
        }
        bar.set_length(total);
        bar.set_position(job["done_bytes"].as_u64().unwrap_or(0));
        match job["state"].as_str() {
            Some("running") => {}
            Some("failed") => {
                bar.finish_and_clear();
                anyhow::bail!(
                    "{} of {id} failed: {}",
                    job["op"].as_str().unwrap_or("backup"),
                    job["error"].as_str().unwrap_or("unknown error")
                );
            }
            _ => {
                bar.finish_and_clear();
                let mut v = v;
                if let Ok(list) = c.call(Method::GET, "/api/v1/backups", None).await {
                    v["dir"] = list["dir"].clone();
                }
                return Ok(v);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// One line about a service's certificate: served until when, or why ACME failed.
fn print_tls(tls: &Value) {
    let Some(state) = tls["state"].as_str() else {
        return;
    };
    let until = tls["not_after"]
        .as_u64()
        .map(|t| format!(" until {}", unix_date(t)))
        .unwrap_or_default();
    match state {
        "none" => println!("  tls: no certificate (plain HTTP only)"),
        "active" => println!(
            "  tls: {} certificate{until}",
            tls["source"].as_str().unwrap_or("")
        ),
        _ => println!(
            "  tls: {state}{until}: {} (attempt {}, next in {}s)",
            tls["error"].as_str().unwrap_or("unknown error"),
            tls["failures"],
            tls["next_attempt_at"]
                .as_u64()
                .map_or(0, |t| t.saturating_sub(now_secs()))
        ),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DD` of a Unix time (UTC).
fn unix_date(secs: u64) -> String {
    // Civil from days (Howard Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn print_status(v: &Value) {
    println!(
        "{:<28} {:<10} {:>5} {:>5} {:>4}  {:<24} IMAGE",
        "SERVICE", "STATUS", "READY", "WANT", "REV", "DOMAIN"
    );
    for s in v["services"].as_array().into_iter().flatten() {
        println!(
            "{:<28} {:<10} {:>5} {:>5} {:>4}  {:<24} {}",
            format!(
                "{}/{}",
                s["project"].as_str().unwrap_or(""),
                s["name"].as_str().unwrap_or("")
            ),
            s["status"].as_str().unwrap_or(""),
            s["ready_replicas"].to_string(),
            s["replicas"].to_string(),
            s["revision"].to_string(),
            s["domain"].as_str().unwrap_or("-"),
            s["image"].as_str().unwrap_or("-"),
        );
        if let Some(e) = s["error"].as_str() {
            println!("  ! {e}");
        }
        if let Some(w) = s["waiting"].as_str() {
            println!("  {w}");
        }
        for e in s["events"].as_array().into_iter().flatten() {
            println!("  event {}", events::line(e));
        }
        print_tls(&s["tls"]);
        if let Some(c) = s["commit"].as_str() {
            println!("  commit {c} (revision {})", s["revision"]);
        }
        let rb = &s["rolled_back"];
        if rb.is_object() {
            println!(
                "  rolled back: revision {} ({}) does not serve: {}; revision {} serves",
                rb["revision"],
                rb["image"].as_str().unwrap_or("-"),
                rb["reason"].as_str().unwrap_or("no reason given"),
                s["revision"],
            );
        }
        let b = &s["last_build"];
        if b.is_object() {
            println!(
                "  build {} of {}: {}{}",
                b["number"],
                b["commit"]
                    .as_str()
                    .map(|c| &c[..c.len().min(12)])
                    .unwrap_or(""),
                b["status"].as_str().unwrap_or(""),
                b["error"]
                    .as_str()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
        }
        let r = &s["rollout"];
        if r.is_object() {
            let traffic = if r["traffic"].is_object() {
                format!(
                    ", traffic {}/{} stable/candidate",
                    r["traffic"]["stable"], r["traffic"]["candidate"]
                )
            } else {
                String::new()
            };
            println!(
                "  rollout {} → {} ({}, {}): {} stable + {} candidate{traffic}{}",
                r["stable_revision"],
                r["candidate_revision"],
                r["strategy_as_written"]
                    .as_str()
                    .or(r["strategy"].as_str())
                    .unwrap_or(""),
                r["phase"].as_str().unwrap_or(""),
                r["stable_count"],
                r["candidate_count"],
                r["reason"]
                    .as_str()
                    .map(|x| format!(": {x}"))
                    .unwrap_or_default()
            );
            if let (Some(why), "progressing") =
                (r["stop_first"].as_str(), r["phase"].as_str().unwrap_or(""))
            {
                println!("  {why}: the old instance stops before the new one starts (a short gap)");
            }
        }
        for i in s["instances"].as_array().into_iter().flatten() {
            println!(
                "  - {} rev {}{} slot {} {} {} {} on {}{}",
                i["id"].as_str().unwrap_or(""),
                i["revision"],
                i["commit"]
                    .as_str()
                    .map(|c| format!(" @{}", &c[..c.len().min(12)]))
                    .unwrap_or_default(),
                i["slot"],
                i["state"].as_str().unwrap_or(""),
                if i["ready"].as_bool() == Some(true) {
                    "ready"
                } else {
                    "not-ready"
                },
                i["address"].as_str().unwrap_or(""),
                i["node"].as_str().unwrap_or("?"),
                i["probe_error"]
                    .as_str()
                    .map(|e| format!(" (probe: {e})"))
                    .unwrap_or_default()
            );
        }
    }
}
