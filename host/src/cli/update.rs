//! `orca update`: check, install or roll back a release (`crate::update`), then have the
//! server running in `$ORCA_HOME` re-execute the new binary (`crate::handover`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use crate::update::{self, UpdateError};

/// `orca update` flags.
#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    /// Release index URL (default: `[update] url` in cluster.toml, else the project's
    /// release location).
    #[arg(long)]
    url: Option<String>,
    /// Only verify the index and report whether an update is available.
    #[arg(long)]
    check: bool,
    /// Install the index's version even if it is older than this binary's.
    #[arg(long)]
    allow_downgrade: bool,
    /// Restore the binary the last update replaced (kept as `<binary>.previous`).
    #[arg(long, conflicts_with_all = ["check", "allow_downgrade", "url"])]
    rollback: bool,
    /// Replace the binary only; leave the running server as it is.
    #[arg(long)]
    no_restart: bool,
}

pub async fn run(
    args: UpdateArgs,
    home: &Path,
    config_dir: &Path,
    json_out: bool,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let current = crate::version::current();
    if args.rollback {
        update::rollback(&exe)?;
        let now = version_of(&exe).await?;
        println!(
            "rolled back {}: orca {current} -> orca {now} (the replaced binary is kept as {})",
            exe.display(),
            update::previous_path(&exe).display()
        );
        if !args.no_restart {
            restart_server(home, &exe, &now).await?;
        }
        return Ok(());
    }
    let url = match args.url {
        Some(url) => url,
        None => configured_url(config_dir)?,
    };
    let (key, key_id) = update::trusted_key()?;
    let http = update::client()?;
    let offer = update::check(&http, &url, &key, &key_id).await?;
    let offered = offer.index.version.clone();
    let available = match offer.ordering {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Equal => false,
        std::cmp::Ordering::Less => args.allow_downgrade,
    };
    if args.check {
        if json_out {
            println!(
                "{}",
                json!({
                    "current": current,
                    "offered": offered,
                    "target": crate::version::TARGET,
                    "url": offer.artifact.url,
                    "size": offer.artifact.size,
                    "newer": offer.ordering == std::cmp::Ordering::Greater,
                })
            );
        } else if offer.ordering == std::cmp::Ordering::Greater {
            println!(
                "update available: orca {current} -> orca {offered} ({}, {} bytes, {}); the index's signature verifies",
                crate::version::TARGET,
                offer.artifact.size,
                offer.artifact.url
            );
        } else {
            println!("orca {current} is up to date (the signed index offers {offered})");
        }
        return Ok(());
    }
    if offer.ordering == std::cmp::Ordering::Less && !available {
        return Err(UpdateError::Downgrade {
            offered,
            current: current.to_string(),
        }
        .into());
    }
    if !available {
        println!("orca {current} is up to date (the signed index offers {offered})");
        return Ok(());
    }
    update::install(&http, &offer, &exe)
        .await
        .map_err(|e| anyhow::anyhow!("{e}; nothing was replaced"))?;
    println!(
        "updated {}: orca {current} -> orca {offered} (previous kept as {}; `orca update --rollback` restores it)",
        exe.display(),
        update::previous_path(&exe).display()
    );
    if !args.no_restart {
        restart_server(home, &exe, &offered).await?;
    }
    Ok(())
}

/// `[update] url` from cluster.toml, when the file exists; else the default.
fn configured_url(config_dir: &Path) -> anyhow::Result<String> {
    let file = config_dir.join(orca_config::cluster::CLUSTER_FILE);
    if !file.is_file() {
        return Ok(update::DEFAULT_INDEX_URL.to_string());
    }
    let cluster =
        orca_config::load_cluster_config(config_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(cluster
        .update
        .url
        .unwrap_or_else(|| update::DEFAULT_INDEX_URL.to_string()))
}

async fn version_of(exe: &Path) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(exe)
        .arg("--version")
        .output()
        .await
        .with_context(|| format!("running {} --version", exe.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.trim().trim_start_matches("orca ").to_string())
}

/// Asks the server of `home` (if one runs there, from `exe`) to re-execute its binary and
/// waits until it answers with `version`.
async fn restart_server(home: &Path, exe: &Path, version: &str) -> anyhow::Result<()> {
    let home = home.to_path_buf();
    let request = format!("reexec {}", exe.display());
    let asked = {
        let home = home.clone();
        tokio::task::spawn_blocking(move || crate::handover::ask(&home, &request)).await?
    };
    let answer = match asked {
        None => {
            println!(
                "no server answers on {}; the next `orca server` runs orca {version}",
                crate::handover::socket_path(&home).display()
            );
            return Ok(());
        }
        Some(answer) => answer?,
    };
    let Some(pid) = answer.strip_prefix("ok pid ") else {
        println!("the running server was not restarted: {answer}");
        return Ok(());
    };
    let pid = pid.to_string();
    let deadline = Instant::now() + Duration::from_secs(90);
    let want = format!("orca {version} pid {pid} ");
    loop {
        let home = home.clone();
        let status =
            tokio::task::spawn_blocking(move || crate::handover::ask(&home, "status")).await?;
        match status {
            Some(Ok(line)) if line.starts_with(&want) => break,
            Some(Ok(line)) if !line.contains(&format!(" pid {pid} ")) => {
                bail!("another server answers on the hand-over socket: {line}")
            }
            _ => {}
        }
        if Instant::now() > deadline {
            bail!(
                "the server (pid {pid}) re-executed but does not answer as orca {version} after 90 s; \
                 see its log (`orca update --rollback` restores the previous binary)"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "server (pid {pid}) now runs orca {version}; it kept its listening sockets, so no connection was refused"
    );
    Ok(())
}
