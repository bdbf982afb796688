//! Simulation only: starts N real `orca agent`s in one process against a master, each over
//! an in-memory engine (`orca::nodes::simulated`) whose containers are real HTTP listeners
//! on the agent's loopback advertise address (127.0.1.N). Used by `bench/agents.sh`.
//!
//!   cargo run --release -p orca --example sim_agents -- \
//!       --join https://127.0.0.1:6880 --token orcajoin1... --agents 100 --home /tmp/sim

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use orca::nodes::simulated::{run_fleet, FleetOptions};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    /// The master, https://HOST:PORT.
    #[arg(long)]
    join: String,
    /// A reusable join token (`orca node token create --reusable`).
    #[arg(long)]
    token: String,
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Node names are PREFIX000, PREFIX001, ...
    #[arg(long, default_value = "sim-")]
    prefix: String,
    #[arg(long, default_value = "sim=1")]
    labels: String,
    /// Parent of every agent's ORCA_HOME.
    #[arg(long)]
    home: PathBuf,
    /// Heartbeat interval in ms (`orca agent`'s is whole seconds, default 5 s; shorter ones
    /// here measure the master's cost per heartbeat).
    #[arg(long, default_value_t = 5000)]
    heartbeat_ms: u64,
    /// CPUs and memory (GiB) each simulated node reports.
    #[arg(long, default_value_t = 8)]
    cpus: u32,
    #[arg(long, default_value_t = 32)]
    memory_gib: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ORCA_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let fds = orca::process::raise_fd_limit().context("raising RLIMIT_NOFILE")?;
    let labels =
        orca::nodes::parse_labels(&args.labels).map_err(|e| anyhow::anyhow!("--labels: {e}"))?;
    let opts = FleetOptions {
        join: args.join,
        token: args.token,
        agents: args.agents,
        prefix: args.prefix,
        labels,
        home: args.home,
        heartbeat: Duration::from_millis(args.heartbeat_ms.max(10)),
        cpus: args.cpus,
        memory_bytes: args.memory_gib << 30,
    };
    let shutdown = CancellationToken::new();
    let (fleet, tasks) = run_fleet(&opts, &shutdown);
    eprintln!(
        "sim_agents: {} agents started (fd limit {fds})",
        opts.agents
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    shutdown.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let engines = fleet.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let served: u64 = engines.values().map(|e| e.requests_served()).sum();
    eprintln!(
        "sim_agents: stopped; {} engines, {served} requests answered by simulated containers",
        engines.len()
    );
    Ok(())
}
