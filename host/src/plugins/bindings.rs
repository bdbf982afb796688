//! `bindgen!` of the live contract (`wit/types.wit`, `orca:plugin@0.3.0`): one module per
//! world, sharing the `types` and `logging` interfaces of the `strategy` module through
//! `with`, and the conversions between the bindgen records and orca's own types
//! (`super::types`). The released 0.1.0 and 0.2.0 contracts have their own bindings in `super::v0_1` and
//! `super::v0_2`.

#![allow(clippy::all, missing_docs)]

use super::types as orca;

pub(crate) mod strategy {
    wasmtime::component::bindgen!({ world: "strategy", path: "../wit" });
}

pub(crate) mod placement {
    wasmtime::component::bindgen!({
        world: "placement",
        path: "../wit",
        with: {
            "orca:plugin/types": crate::plugins::bindings::strategy::orca::plugin::types,
            "orca:plugin/logging": crate::plugins::bindings::strategy::orca::plugin::logging,
        },
    });
}

pub(crate) mod probe {
    wasmtime::component::bindgen!({
        world: "probe",
        path: "../wit",
        with: {
            "orca:plugin/types": crate::plugins::bindings::strategy::orca::plugin::types,
            "orca:plugin/logging": crate::plugins::bindings::strategy::orca::plugin::logging,
        },
    });
}

pub(crate) mod webhook {
    wasmtime::component::bindgen!({
        world: "webhook",
        path: "../wit",
        with: {
            "orca:plugin/types": crate::plugins::bindings::strategy::orca::plugin::types,
            "orca:plugin/logging": crate::plugins::bindings::strategy::orca::plugin::logging,
        },
    });
}

pub(crate) mod builder {
    wasmtime::component::bindgen!({
        world: "builder",
        path: "../wit",
        with: {
            "orca:plugin/types": crate::plugins::bindings::strategy::orca::plugin::types,
            "orca:plugin/logging": crate::plugins::bindings::strategy::orca::plugin::logging,
        },
    });
}

/// The shared `logging` interface.
pub(crate) use strategy::orca::plugin::logging;
/// The shared `types` interface.
pub(crate) use strategy::orca::plugin::types as wit;

// ---- orca → WIT (inputs) ----

fn pairs(p: &[orca::Pair]) -> Vec<wit::Pair> {
    p.iter()
        .map(|p| wit::Pair {
            key: p.key.clone(),
            value: p.value.clone(),
        })
        .collect()
}

pub(crate) fn service(s: &orca::Service) -> wit::Service {
    wit::Service {
        project: s.project.clone(),
        name: s.name.clone(),
        image: s.image.clone(),
        replicas: s.replicas,
        port: s.port,
        domain: s.domain.clone(),
        params: pairs(&s.params),
    }
}

fn instance(i: &orca::Instance) -> wit::Instance {
    wit::Instance {
        id: i.id.clone(),
        node: i.node.clone(),
        revision: i.revision,
        readiness: match i.readiness {
            orca::Readiness::Starting => wit::Readiness::Starting,
            orca::Readiness::Ready => wit::Readiness::Ready,
            orca::Readiness::Failed => wit::Readiness::Failed,
        },
        age_ms: i.age_ms,
    }
}

fn traffic(t: orca::Traffic) -> wit::Traffic {
    wit::Traffic {
        stable: t.stable,
        candidate: t.candidate,
    }
}

pub(crate) fn rollout_state(s: &orca::RolloutState) -> wit::RolloutState {
    wit::RolloutState {
        service: service(&s.service),
        stable_revision: s.stable_revision,
        candidate_revision: s.candidate_revision,
        stable: s.stable.iter().map(instance).collect(),
        candidate: s.candidate.iter().map(instance).collect(),
        traffic: traffic(s.traffic),
        candidate_requests: s.candidate_requests,
        candidate_errors: s.candidate_errors,
        elapsed_ms: s.elapsed_ms,
        now_ms: s.now_ms,
        promote_requested: s.promote_requested,
        rollback_requested: s.rollback_requested,
        plugin_state: s.plugin_state.clone(),
    }
}

pub(crate) fn placement_request(r: &orca::PlacementRequest) -> wit::PlacementRequest {
    wit::PlacementRequest {
        service: service(&r.service),
        pin: r.pin.clone(),
        memory_bytes: r.memory_bytes,
        cpu_millis: r.cpu_millis,
    }
}

/// The nodes as the placement world sees them: columns of scalars, nodes identified by
/// their index. The host evaluates the pin against each node's name and address
/// (`unselected`) and counts the service's instances per node (`existing`), so no string
/// crosses into the plugin per node, and each column is one copy.
pub(crate) fn nodes(r: &orca::PlacementRequest, nodes: &[orca::Node]) -> wit::Nodes {
    let pin = r.pin.as_deref().filter(|p| !p.is_empty());
    let by_id: Option<std::collections::HashMap<&str, u32>> = (r.existing.len() > 16).then(|| {
        let mut map = std::collections::HashMap::with_capacity(r.existing.len());
        for c in &r.existing {
            let sum: &mut u32 = map.entry(c.node.as_str()).or_insert(0);
            *sum = sum.saturating_add(c.count);
        }
        map
    });
    let existing = |id: &str| -> u32 {
        match &by_id {
            Some(map) => map.get(id).copied().unwrap_or(0),
            None => r
                .existing
                .iter()
                .filter(|c| c.node == id)
                .fold(0u32, |sum, c| sum.saturating_add(c.count)),
        }
    };
    let indices = |keep: &dyn Fn(&orca::Node) -> bool| -> Vec<u32> {
        nodes
            .iter()
            .zip(0u32..)
            .filter(|(n, _)| keep(n))
            .map(|(_, i)| i)
            .collect()
    };
    wit::Nodes {
        cpu_millis: nodes.iter().map(|n| n.cpu_millis).collect(),
        cpu_millis_free: nodes.iter().map(|n| n.cpu_millis_free).collect(),
        memory_bytes: nodes.iter().map(|n| n.memory_bytes).collect(),
        memory_bytes_free: nodes.iter().map(|n| n.memory_bytes_free).collect(),
        instances: nodes.iter().map(|n| n.instances).collect(),
        existing: if r.existing.is_empty() {
            vec![0; nodes.len()]
        } else {
            nodes.iter().map(|n| existing(&n.id)).collect()
        },
        draining: indices(&|n| n.draining),
        unselected: match pin {
            Some(p) => indices(&|n| !n.matches_pin(p)),
            None => Vec::new(),
        },
    }
}

pub(crate) fn probe_settings(s: &orca::ProbeSettings) -> wit::ProbeSettings {
    wit::ProbeSettings {
        path: s.path.clone(),
        timeout_ms: s.timeout_ms,
        params: pairs(&s.params),
    }
}

pub(crate) fn http_response(r: orca::HttpResponse) -> wit::HttpResponse {
    wit::HttpResponse {
        status: r.status,
        headers: r
            .headers
            .into_iter()
            .map(|p| wit::Pair {
                key: p.key,
                value: p.value,
            })
            .collect(),
        body: r.body,
    }
}

pub(crate) fn webhook_request(r: &orca::WebhookRequest) -> wit::WebhookRequest {
    wit::WebhookRequest {
        method: r.method.clone(),
        path: r.path.clone(),
        headers: pairs(&r.headers),
        body: r.body.clone(),
    }
}

pub(crate) fn hook(h: &orca::Hook) -> wit::Hook {
    wit::Hook {
        id: h.id.clone(),
        repo: h.repo.clone(),
        branch: h.branch.clone(),
        secret: h.secret.clone(),
    }
}

pub(crate) fn build_request(r: &orca::BuildRequest) -> wit::BuildRequest {
    wit::BuildRequest {
        project: r.project.clone(),
        service: r.service.clone(),
        repo: r.repo.clone(),
        branch: r.branch.clone(),
        commit: r.commit.clone(),
        dockerfile: r.dockerfile.clone(),
        context: r.context.clone(),
        tag: r.tag.clone(),
    }
}

// ---- WIT → orca (outputs; validated afterwards by `validate`) ----

pub(crate) fn from_pairs(p: Vec<wit::Pair>) -> Vec<orca::Pair> {
    p.into_iter()
        .map(|p| orca::Pair {
            key: p.key,
            value: p.value,
        })
        .collect()
}

pub(crate) fn step(s: wit::Step) -> orca::Step {
    orca::Step {
        actions: s
            .actions
            .into_iter()
            .map(|a| match a {
                wit::Action::ScaleCandidate(n) => orca::Action::ScaleCandidate(n),
                wit::Action::ScaleStable(n) => orca::Action::ScaleStable(n),
                wit::Action::SetTraffic(t) => orca::Action::SetTraffic(orca::Traffic {
                    stable: t.stable,
                    candidate: t.candidate,
                }),
                wit::Action::WaitUntil(t) => orca::Action::WaitUntil(t),
                wit::Action::Promote => orca::Action::Promote,
                wit::Action::Rollback(r) => orca::Action::Rollback(r),
                wit::Action::Done => orca::Action::Done,
            })
            .collect(),
        plugin_state: s.plugin_state,
    }
}

/// The plugin's scores and infeasible nodes (checked by `validate::indexed_verdicts` first)
/// as orca's verdicts, one per node in node order, naming nodes by id.
pub(crate) fn verdicts(v: wit::Verdicts, nodes: &[orca::Node]) -> Vec<orca::Verdict> {
    let mut out: Vec<orca::Verdict> = nodes
        .iter()
        .zip(v.scores)
        .map(|(n, score)| orca::Verdict {
            node: n.id.clone(),
            feasible: true,
            score,
            reason: String::new(),
        })
        .collect();
    for i in v.infeasible {
        if let Some(verdict) = out.get_mut(i.node as usize) {
            verdict.feasible = false;
            verdict.reason = i.reason;
        }
    }
    out
}

pub(crate) fn webhook_outcome(o: wit::WebhookOutcome) -> orca::WebhookOutcome {
    match o {
        wit::WebhookOutcome::Redeploy(r) => orca::WebhookOutcome::Redeploy(
            r.into_iter()
                .map(|r| orca::Redeploy {
                    hook: r.hook,
                    repo: r.repo,
                    branch: r.branch,
                    commit: r.commit,
                })
                .collect(),
        ),
        wit::WebhookOutcome::Ignore(reason) => orca::WebhookOutcome::Ignore(reason),
        wit::WebhookOutcome::Pong => orca::WebhookOutcome::Pong,
    }
}

pub(crate) fn rejection(r: wit::Rejection) -> orca::Rejection {
    orca::Rejection {
        status: r.status,
        reason: r.reason,
    }
}

pub(crate) fn param_error(e: wit::ParamError) -> orca::ParamError {
    orca::ParamError {
        key: e.key,
        message: e.message,
    }
}

pub(crate) fn build_output(o: wit::BuildOutput) -> orca::BuildOutput {
    orca::BuildOutput {
        image_id: o.image_id,
        tag: o.tag,
    }
}
