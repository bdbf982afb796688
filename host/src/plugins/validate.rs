//! Host-side validation of plugin outputs: a plugin's answer is data the host is about to
//! act on, so nonsense is refused here, before any caller sees it.

use std::collections::HashSet;

use super::types::{Action, Hook, Node, ParamError, Rejection, Step, Verdict, WebhookOutcome};

/// Largest instance count a strategy may ask for.
pub const MAX_SCALE: u32 = 1000;
/// Most actions one step may hold.
pub const MAX_ACTIONS: usize = 64;
/// Longest free-text reason (rollback, verdict, ignore, rejection, error) kept.
pub const MAX_REASON: usize = 1024;

pub(crate) fn step(step: &Step, max_plugin_state: usize) -> Result<(), String> {
    if step.plugin_state.len() > max_plugin_state {
        return Err(format!(
            "plugin-state of {} bytes exceeds the limit of {max_plugin_state}",
            step.plugin_state.len()
        ));
    }
    if step.actions.len() > MAX_ACTIONS {
        return Err(format!(
            "{} actions exceed the limit of {MAX_ACTIONS}",
            step.actions.len()
        ));
    }
    for action in &step.actions {
        match action {
            Action::ScaleCandidate(n) | Action::ScaleStable(n) if *n > MAX_SCALE => {
                return Err(format!(
                    "{action:?} exceeds the limit of {MAX_SCALE} instances"
                ));
            }
            Action::SetTraffic(t) if t.stable == 0 && t.candidate == 0 => {
                return Err("set-traffic with both weights zero".into());
            }
            Action::Rollback(reason) if reason.len() > MAX_REASON => {
                return Err(format!("rollback reason longer than {MAX_REASON} bytes"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// At most one verdict per node, each naming a node of the request. Nodes without a verdict
/// are infeasible for the caller.
/// The longest parameter key a `param-error` may name, in bytes.
pub const MAX_PARAM_KEY: usize = 128;

/// A strategy's `param-error`: a key and a message, both non-empty and bounded.
pub(crate) fn param_error(e: &ParamError) -> Result<(), String> {
    if e.key.trim().is_empty() || e.key.len() > MAX_PARAM_KEY {
        return Err(format!(
            "param-error key must be 1 to {MAX_PARAM_KEY} bytes, got {} bytes",
            e.key.len()
        ));
    }
    if e.message.trim().is_empty() || e.message.len() > MAX_REASON {
        return Err(format!(
            "param-error message for {:?} must be 1 to {MAX_REASON} bytes",
            e.key
        ));
    }
    Ok(())
}

pub(crate) fn verdicts(verdicts: &[Verdict], nodes: &[Node]) -> Result<(), String> {
    let known: HashSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    let mut seen = HashSet::with_capacity(verdicts.len());
    for v in verdicts {
        if !known.contains(v.node.as_str()) {
            return Err(format!("verdict for unknown node {:?}", v.node));
        }
        if !seen.insert(v.node.as_str()) {
            return Err(format!("two verdicts for node {:?}", v.node));
        }
        if v.reason.len() > MAX_REASON {
            return Err(format!(
                "verdict reason for {:?} longer than {MAX_REASON} bytes",
                v.node
            ));
        }
    }
    Ok(())
}

/// The rules for verdicts naming nodes by index (`orca:plugin@0.2.0`): one score per node,
/// and each infeasible node in range and listed at most once. `infeasible` gives each entry's
/// node index and reason length.
pub(crate) fn indexed_verdicts(
    scores: usize,
    infeasible: impl IntoIterator<Item = (u32, usize)>,
    nodes: &[Node],
) -> Result<(), String> {
    if scores != nodes.len() {
        return Err(format!("{scores} scores for {} nodes", nodes.len()));
    }
    let mut seen = vec![false; nodes.len()];
    for (index, reason_len) in infeasible {
        let Some(slot) = usize::try_from(index).ok().and_then(|i| seen.get_mut(i)) else {
            return Err(format!(
                "infeasible node index {index} of {} nodes",
                nodes.len()
            ));
        };
        let id = &nodes[index as usize].id;
        if std::mem::replace(slot, true) {
            return Err(format!("node {id:?} listed infeasible twice"));
        }
        if reason_len > MAX_REASON {
            return Err(format!(
                "verdict reason for {id:?} longer than {MAX_REASON} bytes"
            ));
        }
    }
    Ok(())
}

/// Redeploys name registered hooks; a rejection is a 4xx or 5xx status.
pub(crate) fn webhook(
    outcome: &Result<WebhookOutcome, Rejection>,
    hooks: &[Hook],
) -> Result<(), String> {
    match outcome {
        Ok(WebhookOutcome::Redeploy(redeploys)) => {
            if redeploys.len() > hooks.len().max(1) * 16 {
                return Err(format!(
                    "{} redeploys for {} hooks",
                    redeploys.len(),
                    hooks.len()
                ));
            }
            for r in redeploys {
                if !hooks.iter().any(|h| h.id == r.hook) {
                    return Err(format!("redeploy names unknown hook {:?}", r.hook));
                }
                if r.commit.is_empty() {
                    return Err(format!("redeploy of hook {:?} without a commit", r.hook));
                }
            }
            Ok(())
        }
        Ok(WebhookOutcome::Ignore(reason)) if reason.len() > MAX_REASON => {
            Err(format!("ignore reason longer than {MAX_REASON} bytes"))
        }
        Ok(_) => Ok(()),
        Err(r) if !(400..=599).contains(&r.status) => Err(format!(
            "rejection with status {} (must be 4xx or 5xx)",
            r.status
        )),
        Err(r) if r.reason.len() > MAX_REASON => {
            Err(format!("rejection reason longer than {MAX_REASON} bytes"))
        }
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::types::Traffic;

    #[test]
    fn step_limits() {
        let ok = Step {
            actions: vec![Action::ScaleCandidate(3), Action::Done],
            plugin_state: vec![1; 10],
        };
        assert!(step(&ok, 1024).is_ok());
        assert!(step(
            &Step {
                plugin_state: vec![0; 2048],
                ..ok.clone()
            },
            1024
        )
        .is_err());
        assert!(step(
            &Step {
                actions: vec![Action::ScaleStable(1001)],
                plugin_state: vec![]
            },
            1024
        )
        .is_err());
        let zero = Action::SetTraffic(Traffic {
            stable: 0,
            candidate: 0,
        });
        assert!(step(
            &Step {
                actions: vec![zero],
                plugin_state: vec![]
            },
            1024
        )
        .is_err());
    }

    #[test]
    fn verdicts_name_known_nodes_once() {
        let nodes = vec![Node {
            id: "a".into(),
            ..Node::default()
        }];
        let v = |n: &str| Verdict {
            node: n.into(),
            feasible: true,
            score: 1,
            reason: String::new(),
        };
        assert!(verdicts(&[v("a")], &nodes).is_ok());
        assert!(verdicts(&[v("b")], &nodes).is_err());
        assert!(verdicts(&[v("a"), v("a")], &nodes).is_err());
        assert!(indexed_verdicts(1, [], &nodes).is_ok());
        assert!(indexed_verdicts(1, [(0, 10)], &nodes).is_ok());
        assert!(indexed_verdicts(0, [], &nodes).is_err());
        assert!(indexed_verdicts(2, [], &nodes).is_err());
        assert!(indexed_verdicts(1, [(1, 0)], &nodes).is_err());
        assert!(indexed_verdicts(1, [(0, 0), (0, 0)], &nodes).is_err());
        assert!(indexed_verdicts(1, [(0, MAX_REASON + 1)], &nodes).is_err());
    }
}
