//! The rollout driver's decisions: starting a rollout, applying a strategy's step to the
//! persisted rollout record, the failure policy, and the instance groups a rollout asks for.
//! Pure functions over plain data; the controller calls the strategy plugin and persists the
//! record (one `step_rollout` transaction per step); the traffic weights are
//! `orca_core::instance_weight`, applied by `orca_core::decide`.

use orca_store::{RolloutPhase, RolloutRecord};

use crate::plugins::types::{Action, Step, Traffic};
use crate::reconciler::DesiredGroup;

/// The strategy used when a service names none.
pub const DEFAULT_STRATEGY: &str = "rolling";

/// The largest instance count a strategy may ask for (a guard against nonsense output).
pub const MAX_SCALE: u32 = 1_000;

/// A new rollout from `stable` (with `stable_running` live instances) to `candidate`.
pub fn start(
    stable: Option<u64>,
    stable_running: u32,
    candidate: u64,
    strategy: &str,
    now_ms: u64,
) -> RolloutRecord {
    RolloutRecord {
        stable_revision: stable,
        candidate_revision: candidate,
        strategy: strategy.to_string(),
        stable_count: stable_running,
        candidate_count: 0,
        traffic: None,
        started_at_ms: now_ms,
        wait_until_ms: None,
        plugin_state: Vec::new(),
        promote_requested: false,
        rollback_requested: false,
        phase: RolloutPhase::Progressing,
        updated_at_ms: now_ms,
        steps: 0,
    }
}

/// What a step did to the rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Still progressing: persist the record.
    Progressing(RolloutRecord),
    /// Finished (promoted or done): the record is stored as finished; the candidate is the
    /// only revision.
    Finished,
    /// Rolled back (by the strategy, or by the failure policy): persist the record so the
    /// same candidate is not retried until the service changes again.
    RolledBack(RolloutRecord),
}

/// Failure policy of a strategy call that errs, traps, times out or returns nonsense:
/// halt the rollout and roll back to the stable revision.
pub fn fail(mut r: RolloutRecord, reason: String, now_ms: u64) -> RolloutRecord {
    r.phase = RolloutPhase::RolledBack {
        reason: format!("strategy {} failed: {reason}", r.strategy),
    };
    r.updated_at_ms = now_ms;
    r
}

/// Applies a step's actions, in order, to the record.
pub fn apply(mut r: RolloutRecord, step: Step, now_ms: u64) -> Outcome {
    r.steps += 1;
    r.updated_at_ms = now_ms;
    r.wait_until_ms = None;
    r.plugin_state = step.plugin_state;
    for action in step.actions {
        match action {
            Action::ScaleCandidate(n) | Action::ScaleStable(n) if n > MAX_SCALE => {
                return Outcome::RolledBack(fail(
                    r,
                    format!("asked for {n} instances (at most {MAX_SCALE})"),
                    now_ms,
                ));
            }
            Action::ScaleCandidate(n) => r.candidate_count = n,
            Action::ScaleStable(n) => r.stable_count = n,
            Action::SetTraffic(Traffic { stable, candidate }) => {
                if stable == 0 && candidate == 0 {
                    return Outcome::RolledBack(fail(r, "set traffic weights 0/0".into(), now_ms));
                }
                r.traffic = Some((stable, candidate));
            }
            Action::WaitUntil(t) => r.wait_until_ms = Some(t),
            Action::Promote | Action::Done => return Outcome::Finished,
            Action::Rollback(reason) => {
                r.phase = RolloutPhase::RolledBack { reason };
                return Outcome::RolledBack(r);
            }
        }
    }
    Outcome::Progressing(r)
}

/// The reason a rollback asked by the operator carries when the host rolls back by itself.
pub const OPERATOR_ROLLBACK: &str = "rolled back by the operator";

/// An operator's rollback request reaches the strategy (`rollback-requested`), which decides
/// how to return; this is what the host makes of the strategy's answer `planned` to `asked`
/// (the record with the request set). A strategy that rolls back in that call is obeyed, with
/// its reason. One that errs, traps or times out, answers nonsense, finishes, or goes on
/// progressing is overruled: the host rolls back by itself and says why.
pub fn operator_rollback(
    asked: &RolloutRecord,
    planned: Result<Step, String>,
    now_ms: u64,
) -> Outcome {
    let why = match planned {
        Err(e) => format!("strategy {} failed: {e}", asked.strategy),
        Ok(step) => {
            let said = step.actions.iter().find_map(|a| match a {
                Action::Rollback(reason) => Some(reason.clone()),
                _ => None,
            });
            match apply(asked.clone(), step, now_ms) {
                Outcome::RolledBack(r) => match &r.phase {
                    RolloutPhase::RolledBack { reason } if Some(reason) == said.as_ref() => {
                        return Outcome::RolledBack(r);
                    }
                    RolloutPhase::RolledBack { reason } | RolloutPhase::Failed { reason } => {
                        reason.clone()
                    }
                    other => format!("strategy {} answered {other:?}", asked.strategy),
                },
                Outcome::Finished => {
                    format!(
                        "strategy {} finished instead of rolling back",
                        asked.strategy
                    )
                }
                Outcome::Progressing(_) => {
                    format!(
                        "strategy {} went on instead of rolling back",
                        asked.strategy
                    )
                }
            }
        }
    };
    let mut r = asked.clone();
    r.steps += 1;
    r.phase = RolloutPhase::RolledBack {
        reason: format!("{OPERATOR_ROLLBACK} ({why})"),
    };
    r.updated_at_ms = now_ms;
    r.wait_until_ms = None;
    Outcome::RolledBack(r)
}

/// Instance groups a rollout record asks for, given the stable and candidate fingerprints
/// and the service's replicas. A rolled-back or failed rollout runs the stable revision only.
pub fn groups(
    r: &RolloutRecord,
    stable_fp: Option<&str>,
    candidate_fp: &str,
    replicas: u32,
) -> Vec<DesiredGroup> {
    match (&r.phase, stable_fp) {
        (RolloutPhase::Finished, _) => vec![DesiredGroup {
            fingerprint: candidate_fp.to_string(),
            count: replicas,
        }],
        (RolloutPhase::Progressing, Some(s)) => vec![
            DesiredGroup {
                fingerprint: s.to_string(),
                count: r.stable_count,
            },
            DesiredGroup {
                fingerprint: candidate_fp.to_string(),
                count: r.candidate_count,
            },
        ],
        (RolloutPhase::Progressing, None) => vec![DesiredGroup {
            fingerprint: candidate_fp.to_string(),
            count: r.candidate_count,
        }],
        (_, Some(s)) => vec![DesiredGroup {
            fingerprint: s.to_string(),
            count: replicas,
        }],
        // Nothing to go back to: keep running the candidate rather than nothing.
        (_, None) => vec![DesiredGroup {
            fingerprint: candidate_fp.to_string(),
            count: replicas,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> RolloutRecord {
        start(Some(1), 3, 2, "rolling", 1_000)
    }

    fn step(actions: Vec<Action>) -> Step {
        Step {
            actions,
            plugin_state: b"s".to_vec(),
        }
    }

    fn asked() -> RolloutRecord {
        let mut r = rec();
        r.rollback_requested = true;
        r
    }

    fn reason(out: &Outcome) -> String {
        match out {
            Outcome::RolledBack(r) => match &r.phase {
                RolloutPhase::RolledBack { reason } => reason.clone(),
                other => panic!("{other:?}"),
            },
            other => panic!("not rolled back: {other:?}"),
        }
    }

    #[test]
    fn operator_rollback_obeys_a_strategy_that_rolls_back_with_its_reason() {
        let out = operator_rollback(
            &asked(),
            Ok(step(vec![
                Action::SetTraffic(Traffic {
                    stable: 100,
                    candidate: 0,
                }),
                Action::Rollback("returning to blue".into()),
            ])),
            5,
        );
        assert_eq!(reason(&out), "returning to blue");
        let Outcome::RolledBack(r) = out else {
            unreachable!()
        };
        assert_eq!(r.plugin_state, b"s", "the strategy's state is kept");
    }

    #[test]
    fn operator_rollback_is_done_by_the_host_when_the_strategy_does_not() {
        for (planned, why) in [
            (
                Err("deadline exceeded".to_string()),
                "strategy rolling failed: deadline exceeded",
            ),
            (
                Ok(step(vec![Action::ScaleCandidate(3)])),
                "strategy rolling went on instead of rolling back",
            ),
            (
                Ok(step(vec![Action::Promote])),
                "strategy rolling finished instead of rolling back",
            ),
            (
                Ok(step(vec![
                    Action::ScaleCandidate(5_000),
                    Action::Rollback("x".into()),
                ])),
                "asked for 5000 instances",
            ),
        ] {
            let out = operator_rollback(&asked(), planned, 7);
            let got = reason(&out);
            assert!(
                got.starts_with("rolled back by the operator (") && got.contains(why),
                "{got}"
            );
            let Outcome::RolledBack(r) = out else {
                unreachable!()
            };
            assert_eq!(r.updated_at_ms, 7);
            assert!(r.rollback_requested);
        }
    }

    #[test]
    fn scale_and_traffic_are_recorded_with_the_plugin_state() {
        let out = apply(
            rec(),
            step(vec![
                Action::ScaleCandidate(1),
                Action::ScaleStable(2),
                Action::SetTraffic(Traffic {
                    stable: 80,
                    candidate: 20,
                }),
                Action::WaitUntil(9_000),
            ]),
            2_000,
        );
        let Outcome::Progressing(r) = out else {
            panic!("{out:?}")
        };
        assert_eq!((r.stable_count, r.candidate_count), (2, 1));
        assert_eq!(r.traffic, Some((80, 20)));
        assert_eq!(r.wait_until_ms, Some(9_000));
        assert_eq!(r.plugin_state, b"s");
        assert_eq!(r.steps, 1);
    }

    #[test]
    fn promote_and_done_finish() {
        assert_eq!(
            apply(rec(), step(vec![Action::Promote]), 0),
            Outcome::Finished
        );
        assert_eq!(
            apply(rec(), step(vec![Action::ScaleStable(0), Action::Done]), 0),
            Outcome::Finished
        );
    }

    #[test]
    fn rollback_keeps_the_reason() {
        let Outcome::RolledBack(r) = apply(rec(), step(vec![Action::Rollback("bad".into())]), 0)
        else {
            panic!()
        };
        assert_eq!(
            r.phase,
            RolloutPhase::RolledBack {
                reason: "bad".into()
            }
        );
        assert_eq!(
            groups(&r, Some("s"), "c", 3),
            vec![DesiredGroup {
                fingerprint: "s".into(),
                count: 3
            }]
        );
    }

    #[test]
    fn nonsense_output_rolls_back() {
        assert!(matches!(
            apply(rec(), step(vec![Action::ScaleCandidate(u32::MAX)]), 0),
            Outcome::RolledBack(_)
        ));
        assert!(matches!(
            apply(
                rec(),
                step(vec![Action::SetTraffic(Traffic {
                    stable: 0,
                    candidate: 0
                })]),
                0
            ),
            Outcome::RolledBack(_)
        ));
    }

    #[test]
    fn progressing_groups_follow_the_counts() {
        let mut r = rec();
        r.stable_count = 2;
        r.candidate_count = 1;
        assert_eq!(
            groups(&r, Some("s"), "c", 3),
            vec![
                DesiredGroup {
                    fingerprint: "s".into(),
                    count: 2
                },
                DesiredGroup {
                    fingerprint: "c".into(),
                    count: 1
                }
            ]
        );
    }
}
