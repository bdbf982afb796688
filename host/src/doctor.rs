//! `orca doctor`: the reference's incident decision tree as a pure function over evidence.
//!
//! [`diagnose`] takes what the API gathered (status, instance exits and OOM kills, the last log
//! lines, probe errors, the controller's last error, the certificate state, the node) and
//! answers with findings, each with its evidence and the action the reference prescribes. No
//! I/O here: `api::diagnosis` gathers the [`Evidence`].

use orca_contract::api::{Diagnosis, Finding, FindingCode};

/// One instance as the controller, the health checker and the runtime see it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceEvidence {
    /// Container name.
    pub name: String,
    /// Runtime state (`running`, `exited`, ...).
    pub state: String,
    /// Exit code of a stopped container.
    pub exit_code: Option<i64>,
    /// Killed by the kernel for exceeding its memory limit.
    pub oom_killed: bool,
    /// Receiving traffic.
    pub ready: bool,
    /// The last failed readiness probe's reason.
    pub probe_error: Option<String>,
    /// The last log lines (stderr lines start with `!`).
    pub log_tail: Vec<String>,
}

/// Everything `diagnose` looks at for one service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evidence {
    /// Project.
    pub project: String,
    /// Service name.
    pub service: String,
    /// Status as `GET /api/v1/status` reports it.
    pub status: String,
    /// Desired stopped.
    pub stopped: bool,
    /// Desired replicas.
    pub replicas: u32,
    /// Ready replicas (what the proxy routes to).
    pub ready_replicas: u32,
    /// `resources.memory` as written (`"64Mi"`).
    pub memory_limit: Option<String>,
    /// The readiness path probed (`health` or `readiness.path`).
    pub readiness_path: Option<String>,
    /// The controller's last error for the service.
    pub controller_error: Option<String>,
    /// The service is in crash back-off.
    pub backing_off: bool,
    /// The instances.
    pub instances: Vec<InstanceEvidence>,
    /// Routed hostname.
    pub domain: Option<String>,
    /// Certificate state (`active`, `failed`, `renewal-failing`, `none`).
    pub tls_state: Option<String>,
    /// The ACME CA's last error.
    pub tls_error: Option<String>,
    /// The nodes of the cluster (hostname and address).
    pub nodes: Vec<String>,
}

/// Log or error text that says a connection to something was refused or failed.
const REFUSED: [&str; 6] = [
    "connection refused",
    "econnrefused",
    "could not connect",
    "can't connect",
    "cannot connect",
    "no route to host",
];

fn mentions_refused(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    REFUSED.iter().any(|p| l.contains(p))
}

/// Walks the decision tree; findings come most fundamental first.
pub fn diagnose(ev: &Evidence) -> Diagnosis {
    let mut findings = Vec::new();
    if ev.stopped {
        findings.push(Finding {
            code: FindingCode::Stopped,
            summary: format!("service \"{}\" is stopped", ev.service),
            evidence: vec!["desired state: stopped".into()],
            action: "deploy it again (`orca deploy`) to start it".into(),
        });
        return finish(ev, findings);
    }
    let error = ev.controller_error.as_deref();

    // Stopped instances: OOM first, then the dependency tree, then a plain crash loop.
    let oom: Vec<String> = ev
        .instances
        .iter()
        .filter(|i| i.oom_killed)
        .map(|i| {
            format!(
                "instance {} was OOM-killed (exit code {})",
                i.name,
                i.exit_code.map_or("?".into(), |c| c.to_string())
            )
        })
        .chain(
            error
                .filter(|e| e.contains("OOM"))
                .map(|e| format!("controller: {e}")),
        )
        .collect();
    if !oom.is_empty() {
        let limit = ev.memory_limit.as_deref().unwrap_or("the default");
        findings.push(Finding {
            code: FindingCode::OomKilled,
            summary: format!(
                "instances are killed for exceeding their memory limit ({limit})"
            ),
            evidence: oom,
            action: format!(
                "raise `resources.memory` above {limit} in service.toml and redeploy (or find what allocates)"
            ),
        });
    }

    let refused: Vec<String> = ev
        .instances
        .iter()
        .flat_map(|i| {
            i.log_tail
                .iter()
                .filter(|l| mentions_refused(l))
                .map(move |l| format!("log of {}: {}", i.name, l.trim_end()))
        })
        .chain(
            error
                .filter(|e| mentions_refused(e))
                .map(|e| format!("controller: {e}")),
        )
        .collect();
    if !refused.is_empty() {
        findings.push(Finding {
            code: FindingCode::DependencyRefused,
            summary: "the application cannot connect to a dependency".into(),
            evidence: refused.into_iter().rev().take(5).collect(),
            action:
                "the dependency is not ready: check it is deployed and running (`orca status`), \
                     that the address uses its name or alias on the project network (or \
                     `internal = true` on both across projects), and its port"
                    .into(),
        });
    }

    let crashed: Vec<String> = ev
        .instances
        .iter()
        .filter(|i| !i.oom_killed && i.exit_code.is_some_and(|c| c != 0) && i.state != "running")
        .map(|i| {
            format!(
                "instance {} exited with code {}",
                i.name,
                i.exit_code.unwrap_or(-1)
            )
        })
        .chain(
            error
                .filter(|e| e.contains("exited with code") && !e.contains("OOM"))
                .map(|e| format!("controller: {e}")),
        )
        .collect();
    if findings.is_empty() && !crashed.is_empty() {
        let mut evidence = crashed;
        if ev.backing_off {
            evidence.push("the controller is backing off before the next restart".into());
        }
        evidence.extend(
            ev.instances
                .iter()
                .flat_map(|i| i.log_tail.iter().rev().take(3).rev())
                .map(|l| format!("log: {}", l.trim_end())),
        );
        findings.push(Finding {
            code: FindingCode::CrashLooping,
            summary: "instances keep exiting".into(),
            evidence,
            action: "an application error: read `orca logs` of the service, fix the code or \
                     configuration, and redeploy"
                .into(),
        });
    }

    if let Some(e) = error
        .filter(|e| !e.contains("exited with code") && !e.contains("OOM") && !mentions_refused(e))
    {
        let mut evidence = vec![format!("controller: {e}")];
        let (code, action) = if e.contains("place") || e.contains("node") {
            evidence.push(format!("nodes: {}", ev.nodes.join(", ")));
            (
                FindingCode::NodeDown,
                "no available node matches: check `placement.node` and that the node's agent runs (firewall: port 6880)",
            )
        } else {
            (
                FindingCode::StartFailed,
                "fix what the error names (image, secret, spec) and redeploy",
            )
        };
        findings.push(Finding {
            code,
            summary: format!("the controller cannot run the service: {e}"),
            evidence,
            action: action.into(),
        });
    }

    // Running but not ready: readiness (unless a dependency already explains it).
    let unready: Vec<&InstanceEvidence> = ev
        .instances
        .iter()
        .filter(|i| i.state == "running" && !i.ready && i.probe_error.is_some())
        .collect();
    if !unready.is_empty()
        && !findings
            .iter()
            .any(|f| f.code == FindingCode::DependencyRefused)
    {
        let path = ev.readiness_path.as_deref().unwrap_or("(tcp connect)");
        let not_found = unready
            .iter()
            .any(|i| i.probe_error.as_deref().is_some_and(|e| e.contains("404")));
        findings.push(Finding {
            code: FindingCode::ReadinessFailing,
            summary: format!(
                "{} of {} instances fail the readiness probe at {path}",
                unready.len(),
                ev.instances.len()
            ),
            evidence: unready
                .iter()
                .map(|i| {
                    format!(
                        "instance {}: {}",
                        i.name,
                        i.probe_error.as_deref().unwrap_or_default()
                    )
                })
                .collect(),
            action: if not_found {
                format!(
                    "the application answers 404 at {path}: set `health` / `readiness.path` to a path it serves, and redeploy"
                )
            } else {
                format!("make {path} answer 2xx once the application can serve (see `orca logs`)")
            },
        });
    }

    if let Some(domain) = &ev.domain {
        if findings.is_empty() && ev.ready_replicas == 0 && ev.replicas > 0 {
            findings.push(Finding {
                code: FindingCode::NoRoute,
                summary: format!("the proxy has no ready backend for {domain}"),
                evidence: vec![format!(
                    "route table: {domain} -> 0 ready of {} instances",
                    ev.replicas
                )],
                action: "wait for an instance to become ready, or redeploy to register the route"
                    .into(),
            });
        }
        if matches!(ev.tls_state.as_deref(), Some("failed" | "renewal-failing")) {
            findings.push(Finding {
                code: FindingCode::TlsAcmeFailed,
                summary: format!("the ACME CA did not issue a certificate for {domain}"),
                evidence: vec![format!(
                    "certificate state {}: {}",
                    ev.tls_state.as_deref().unwrap_or_default(),
                    ev.tls_error.as_deref().unwrap_or("(no reason recorded)")
                )],
                action: format!(
                    "make {domain} resolve to this server first (A record), then check that port 80 is not blocked by a firewall"
                ),
            });
        }
    }

    if findings.is_empty() && ev.ready_replicas < ev.replicas {
        findings.push(Finding {
            code: FindingCode::Starting,
            summary: format!(
                "{} of {} instances are ready; the rest are starting",
                ev.ready_replicas, ev.replicas
            ),
            evidence: ev
                .instances
                .iter()
                .map(|i| format!("instance {}: {}", i.name, i.state))
                .collect(),
            action: "wait and run `orca doctor` again".into(),
        });
    }
    finish(ev, findings)
}

fn finish(ev: &Evidence, findings: Vec<Finding>) -> Diagnosis {
    Diagnosis {
        project: ev.project.clone(),
        service: ev.service.clone(),
        status: ev.status.clone(),
        verdict: if findings.is_empty() {
            "healthy"
        } else {
            "unhealthy"
        }
        .into(),
        findings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Evidence {
        Evidence {
            project: "p".into(),
            service: "web".into(),
            status: "running".into(),
            replicas: 1,
            ready_replicas: 1,
            nodes: vec!["node1 10.0.0.1".into()],
            instances: vec![InstanceEvidence {
                name: "web-0".into(),
                state: "running".into(),
                ready: true,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn codes(d: &Diagnosis) -> Vec<FindingCode> {
        d.findings.iter().map(|f| f.code).collect()
    }

    #[test]
    fn a_ready_service_is_healthy() {
        let d = diagnose(&base());
        assert_eq!(d.verdict, "healthy");
        assert!(d.findings.is_empty());
    }

    #[test]
    fn an_oom_error_names_the_limit() {
        let mut ev = base();
        ev.status = "failed".into();
        ev.ready_replicas = 0;
        ev.instances.clear();
        ev.memory_limit = Some("16Mi".into());
        ev.controller_error =
            Some("instance web-0 exited with code 137 (OOM killed: raise resources.memory)".into());
        let d = diagnose(&ev);
        assert_eq!(codes(&d), vec![FindingCode::OomKilled]);
        assert!(d.findings[0].action.contains("above 16Mi"), "{d:?}");
    }

    #[test]
    fn refused_in_the_logs_is_a_dependency_not_readiness() {
        let mut ev = base();
        ev.ready_replicas = 0;
        ev.instances[0].ready = false;
        ev.instances[0].probe_error = Some("connect: refused".into());
        ev.instances[0].log_tail = vec!["!db:5432: Connection refused (os error 111)".into()];
        let d = diagnose(&ev);
        assert_eq!(codes(&d), vec![FindingCode::DependencyRefused]);
    }

    #[test]
    fn a_404_readiness_says_so() {
        let mut ev = base();
        ev.ready_replicas = 0;
        ev.readiness_path = Some("/nosuch".into());
        ev.instances[0].ready = false;
        ev.instances[0].probe_error = Some("GET /nosuch answered 404".into());
        let d = diagnose(&ev);
        assert_eq!(codes(&d), vec![FindingCode::ReadinessFailing]);
        assert!(d.findings[0].action.contains("404 at /nosuch"));
    }

    #[test]
    fn acme_failure_and_missing_node_are_reported() {
        let mut ev = base();
        ev.domain = Some("a.example".into());
        ev.tls_state = Some("failed".into());
        ev.tls_error = Some("DNS problem: NXDOMAIN".into());
        ev.controller_error = Some("placement failed: no node matches \"gone\"".into());
        let d = diagnose(&ev);
        assert_eq!(
            codes(&d),
            vec![FindingCode::NodeDown, FindingCode::TlsAcmeFailed]
        );
        assert!(d.findings[1].evidence[0].contains("NXDOMAIN"));
        assert!(d.findings[0].evidence[1].contains("node1"));
    }

    #[test]
    fn a_plain_crash_is_crash_looping() {
        let mut ev = base();
        ev.ready_replicas = 0;
        ev.instances[0].state = "exited".into();
        ev.instances[0].exit_code = Some(3);
        ev.instances[0].log_tail = vec!["!panic: bad config".into()];
        let d = diagnose(&ev);
        assert_eq!(codes(&d), vec![FindingCode::CrashLooping]);
        assert!(d.findings[0]
            .evidence
            .iter()
            .any(|e| e.contains("bad config")));
    }
}
