//! `orca doctor SERVICE` and `orca mcp`: the CLI side of the AI-agent surface.

use anyhow::Context;
use orca_contract::api::Diagnosis;
use reqwest::Method;

use super::client::{enc, Client};

/// `orca doctor SERVICE [--project P]`: prints the diagnosis (typed: a field missing from the
/// answer is a decode error naming it).
pub async fn doctor(
    c: &Client,
    service: &str,
    project: Option<&str>,
    json_out: bool,
) -> anyhow::Result<()> {
    let path = format!(
        "/api/v1/services/{}/diagnosis{}",
        enc(service),
        project.map_or(String::new(), |p| format!("?project={}", enc(p)))
    );
    let v = c.call(Method::GET, &path, None).await?;
    let d: Diagnosis = serde_json::from_value(v.clone())
        .with_context(|| format!("decoding the diagnosis of {service}"))?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{}/{}: {} (status {})",
        d.project, d.service, d.verdict, d.status
    );
    for f in &d.findings {
        let code = serde_json::to_value(f.code)?;
        println!("\n{}: {}", code.as_str().unwrap_or_default(), f.summary);
        for e in &f.evidence {
            println!("  evidence: {e}");
        }
        println!("  action:   {}", f.action);
    }
    Ok(())
}

/// `orca mcp`: an MCP server on stdin/stdout for the token the CLI found.
pub async fn mcp(c: &Client) -> anyhow::Result<()> {
    let token = c
        .token()
        .map(str::to_string)
        .context("no API token: set ORCA_TOKEN, pass --token, or check $ORCA_HOME/credentials")?;
    crate::mcp::serve_stdio(c.base().to_string(), token).await
}
