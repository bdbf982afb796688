//! `orca events`: the event stream from `GET /api/v1/events`, as lines or JSON, once or
//! followed over server-sent events.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;

use super::client::{enc, Client};

/// What `orca events` was asked for.
pub struct EventsArgs {
    /// Service name or `project/name`.
    pub service: Option<String>,
    /// Project.
    pub project: Option<String>,
    /// Kind or kind family.
    pub kind: Option<String>,
    /// `10m`, `2h`...
    pub since: Option<String>,
    /// At most this many of the history.
    pub limit: Option<usize>,
    /// Keep streaming.
    pub follow: bool,
    /// JSON output (an array; one object per line when following).
    pub json: bool,
}

/// The API path for these arguments.
pub fn path(a: &EventsArgs) -> String {
    let mut q = vec![format!("follow={}", a.follow)];
    for (k, v) in [
        ("service", &a.service),
        ("project", &a.project),
        ("kind", &a.kind),
        ("since", &a.since),
    ] {
        if let Some(v) = v {
            q.push(format!("{k}={}", enc(v)));
        }
    }
    if let Some(n) = a.limit {
        q.push(format!("limit={n}"));
    }
    format!("/api/v1/events?{}", q.join("&"))
}

/// Runs `orca events`.
pub async fn run(c: &Client, a: EventsArgs) -> anyhow::Result<()> {
    let path = path(&a);
    if !a.follow {
        let v = c.call(Method::GET, &path, None).await?;
        let events = v["events"].as_array().cloned().unwrap_or_default();
        if a.json {
            println!("{}", serde_json::to_string_pretty(&events)?);
        } else {
            for e in &events {
                println!("{}", line(e));
            }
        }
        return Ok(());
    }
    let resp = Client::check(c.send(Method::GET, &path, None, None).await?).await?;
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = std::io::stdout();
    let idle = Duration::from_secs(60);
    loop {
        // The server sends a keep-alive every 15 s; a minute of silence is a dead connection.
        let chunk = match tokio::time::timeout(idle, stream.next()).await {
            Ok(Some(chunk)) => chunk.context("reading the event stream")?,
            Ok(None) => anyhow::bail!("the server closed the event stream"),
            Err(_) => anyhow::bail!("no data from the server for 60 s; the event stream is dead"),
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let data: Vec<&str> = frame
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if data.is_empty() {
                continue; // keep-alive comment
            }
            let e: Value = serde_json::from_str(&data.join("\n"))
                .with_context(|| format!("the server sent a bad event: {frame}"))?;
            if a.json {
                writeln!(out, "{}", serde_json::to_string(&e)?)?;
            } else {
                writeln!(out, "{}", line(&e))?;
            }
            out.flush()?;
        }
    }
}

/// One event as a line: time, service, kind, revision, message.
pub fn line(e: &Value) -> String {
    let service = match (e["project"].as_str(), e["service"].as_str()) {
        (Some(p), Some(s)) => format!("{p}/{s}"),
        (None, Some(s)) => s.to_string(),
        _ => "-".to_string(),
    };
    let rev = e["revision"]
        .as_u64()
        .map_or("-".to_string(), |r| format!("r{r}"));
    format!(
        "{}  {:<24} {:<26} {:>4}  {}",
        utc(e["at_ms"].as_u64().unwrap_or(0)),
        service,
        e["kind"].as_str().unwrap_or(""),
        rev,
        e["message"].as_str().unwrap_or("")
    )
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm), for dates after 1970.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_083_200_000 + 3_723_000), "2026-12-01T01:02:03Z");
    }
}
