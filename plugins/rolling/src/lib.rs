//! `rolling`: orca's default deployment strategy, the Kubernetes rolling-update shape.
//!
//! - Never more than `replicas + max_surge` instances (stable + candidate, as last asked for).
//! - Never fewer than `replicas - max_unavailable` ready instances serving.
//! - Candidates are scaled up by the surge; stable instances are stopped only as candidates
//!   become ready. Done once `replicas` candidates are ready and no stable instance is left.
//! - A failed candidate, or no new ready candidate for `progress_deadline_secs`, rolls back;
//!   so does an operator's rollback request.
//!
//! Parameters (JSON text in `service.params`): `max_surge` (default 1), `max_unavailable`
//! (default 0; both 0 is treated as a surge of 1), each a count or a percentage string of
//! `replicas` (`"25%"`: surge rounds up, unavailable down, as Kubernetes does), and
//! `progress_deadline_secs` (default 120).
//!
//! A first deploy (no stable revision, or no stable instance) starts `replicas` candidates at
//! once and is done when they are all ready.

#![deny(unsafe_code)]

use orca_plugin_sdk::strategy::{InvalidParam, Strategy};
use orca_plugin_sdk::types::{Action, RolloutState, Service, Step};
use orca_plugin_sdk::{log, Level};

/// Default `max_surge`.
pub const DEFAULT_MAX_SURGE: u32 = 1;
/// Default `max_unavailable`.
pub const DEFAULT_MAX_UNAVAILABLE: u32 = 0;
/// Default `progress_deadline_secs`.
pub const DEFAULT_PROGRESS_DEADLINE_SECS: u64 = 120;
/// The operator's rollback reason (shared wording with the other strategies).
pub const OPERATOR_ROLLBACK: &str = "rolled back by the operator";

/// The rolling-update strategy. Stateless: what it must remember travels in `plugin_state`.
#[derive(Default)]
pub struct Rolling;

/// The strategy's parameters, resolved against `replicas`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Instances allowed above `replicas`.
    pub max_surge: u32,
    /// Ready instances allowed below `replicas`.
    pub max_unavailable: u32,
    /// How long without a new ready candidate before rolling back.
    pub progress_deadline_ms: u64,
}

impl Params {
    /// Reads the parameters of `service`; an invalid one is an error naming it.
    pub fn from_service(service: &Service) -> Result<Params, InvalidParam> {
        let replicas = service.replicas;
        let mut max_surge =
            count_or_percent(service, "max_surge", DEFAULT_MAX_SURGE, replicas, true)?;
        let max_unavailable = count_or_percent(
            service,
            "max_unavailable",
            DEFAULT_MAX_UNAVAILABLE,
            replicas,
            false,
        )?
        .min(replicas);
        if max_surge == 0 && max_unavailable == 0 {
            max_surge = 1;
        }
        let secs = service.param_or("progress_deadline_secs", DEFAULT_PROGRESS_DEADLINE_SECS)?;
        Ok(Params {
            max_surge,
            max_unavailable,
            progress_deadline_ms: secs.saturating_mul(1000),
        })
    }
}

/// A count (`2`) or a percentage of `replicas` (`"25%"`, rounded up or down).
fn count_or_percent(
    service: &Service,
    key: &str,
    default: u32,
    replicas: u32,
    round_up: bool,
) -> Result<u32, InvalidParam> {
    let raw = service.param_raw(key).map(str::trim);
    if let Some(text) = raw.filter(|r| r.starts_with('"')) {
        let s = service.param_str(key)?.unwrap_or_default();
        let pct = s
            .trim()
            .strip_suffix('%')
            .and_then(|p| p.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                InvalidParam::new(
                    key,
                    format!("expected a count or a percentage like \"25%\", got {text}"),
                )
            })?;
        let scaled = u64::from(replicas) * pct;
        let n = if round_up {
            scaled.div_ceil(100)
        } else {
            scaled / 100
        };
        return Ok(n.min(u64::from(u32::MAX)) as u32);
    }
    let n: u64 = service.param_or(key, u64::from(default))?;
    Ok(n.min(u64::from(u32::MAX)) as u32)
}

/// What the strategy remembers between calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Memory {
    /// Stable instances last asked for (the observed list lags behind).
    stable_count: u32,
    /// Candidate instances last asked for.
    candidate_count: u32,
    /// Most ready candidates seen so far.
    best_ready: u32,
    /// When `best_ready` last went up (or the rollout started).
    last_progress_ms: u64,
}

const MEMORY_TAG: u8 = b'R';
const MEMORY_LEN: usize = 1 + 4 + 4 + 4 + 8;

impl Memory {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MEMORY_LEN);
        out.push(MEMORY_TAG);
        out.extend_from_slice(&self.stable_count.to_le_bytes());
        out.extend_from_slice(&self.candidate_count.to_le_bytes());
        out.extend_from_slice(&self.best_ready.to_le_bytes());
        out.extend_from_slice(&self.last_progress_ms.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Memory, String> {
        if bytes.len() != MEMORY_LEN || bytes[0] != MEMORY_TAG {
            return Err(format!(
                "rolling: unrecognised plugin state ({} bytes)",
                bytes.len()
            ));
        }
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        Ok(Memory {
            stable_count: u32_at(1),
            candidate_count: u32_at(5),
            best_ready: u32_at(9),
            last_progress_ms: u64::from_le_bytes(bytes[13..21].try_into().expect("8 bytes")),
        })
    }
}

fn rollback(reason: String) -> Result<Step, String> {
    log(Level::Warn, &format!("rolling: rolling back: {reason}"));
    Ok(Step::of([Action::Rollback(reason)]))
}

impl Strategy for Rolling {
    fn check_params(&self, service: &Service) -> Result<(), InvalidParam> {
        Params::from_service(service).map(|_| ())
    }

    fn plan(&self, state: &RolloutState) -> Result<Step, String> {
        let replicas = state.replicas();
        let params = Params::from_service(&state.service)?;
        let first_deploy = state.stable_revision.is_none() || state.stable.is_empty();

        let mut mem = if state.is_first_call() {
            log(
                Level::Info,
                &format!(
                    "rolling: revision {} to {replicas} replicas (max surge {}, max unavailable {}{})",
                    state.candidate_revision,
                    params.max_surge,
                    params.max_unavailable,
                    if first_deploy { ", first deploy" } else { "" }
                ),
            );
            Memory {
                stable_count: state.stable.len() as u32,
                candidate_count: state.candidate.len() as u32,
                best_ready: 0,
                last_progress_ms: state.now_ms,
            }
        } else {
            Memory::decode(&state.plugin_state)?
        };

        if state.rollback_requested {
            return rollback(OPERATOR_ROLLBACK.into());
        }
        if let Some(failed) = state.candidate.iter().find(|i| i.is_failed()) {
            let n = state.candidate_failed();
            return rollback(format!(
                "candidate {} of revision {} failed{}",
                failed.id,
                state.candidate_revision,
                if n > 1 {
                    format!(" ({n} candidates failed)")
                } else {
                    String::new()
                }
            ));
        }

        let ready = state.candidate_ready();
        if ready > mem.best_ready {
            mem.best_ready = ready;
            mem.last_progress_ms = state.now_ms;
        }
        let deadline = mem
            .last_progress_ms
            .saturating_add(params.progress_deadline_ms);
        let done = ready >= replicas;
        if !done && state.now_ms >= deadline {
            return rollback(format!(
                "no progress for {} s: {ready} of {replicas} candidates ready",
                params.progress_deadline_ms / 1000
            ));
        }

        let mut actions = Vec::new();
        if first_deploy {
            if mem.candidate_count != replicas {
                mem.candidate_count = replicas;
                actions.push(Action::ScaleCandidate(replicas));
            }
            if mem.stable_count != 0 {
                mem.stable_count = 0;
                actions.push(Action::ScaleStable(0));
            }
        } else {
            // Scale the stable set down only by the ready instances to spare: assume the host
            // may stop ready instances first, and count stable instances beyond what we asked
            // for as gone already.
            let min_available = replicas - params.max_unavailable;
            let max_total = replicas.saturating_add(params.max_surge);
            let stable_ready = state.stable_ready().min(mem.stable_count);
            let spare = (stable_ready + ready).saturating_sub(min_available);
            let stable = mem.stable_count - spare.min(mem.stable_count);
            if stable != mem.stable_count {
                mem.stable_count = stable;
                actions.push(Action::ScaleStable(stable));
            }
            let candidate = replicas
                .min(max_total.saturating_sub(mem.stable_count))
                .max(mem.candidate_count);
            if candidate != mem.candidate_count {
                mem.candidate_count = candidate;
                actions.push(Action::ScaleCandidate(candidate));
            }
        }

        if done && mem.stable_count == 0 {
            log(
                Level::Info,
                &format!("rolling: {ready} of {replicas} candidates ready, done"),
            );
            actions.push(Action::Done);
            return Ok(Step::of(actions));
        }
        actions.push(Action::WaitUntil(deadline));
        Ok(Step::of(actions).with_state(mem.encode()))
    }
}

orca_plugin_sdk::export_strategy!(Rolling);

#[cfg(test)]
mod tests {
    use super::*;
    use orca_plugin_sdk::testing::{Fate, Outcome, RolloutSim};

    /// The fewest ready instances after any step before the last one (a rollback ends the
    /// rollout: the host then restores the stable set, which takes its own start time).
    fn min_ready_before_the_end(report: &orca_plugin_sdk::testing::Report) -> u32 {
        let n = report.history.len().saturating_sub(1);
        report.history[..n]
            .iter()
            .map(|r| r.stable_ready + r.candidate_ready)
            .min()
            .unwrap_or(0)
    }

    fn completed(report: &orca_plugin_sdk::testing::Report) {
        assert_eq!(
            report.outcome,
            Outcome::Completed,
            "{}",
            report.history_text()
        );
        let s = &report.final_state;
        assert_eq!(s.stable_revision, Some(s.candidate_revision));
        assert_eq!(s.stable.len() as u32, s.service.replicas);
        assert!(s.stable.iter().all(|i| i.is_ready()));
    }

    #[test]
    fn default_params_keep_full_capacity() {
        let report = RolloutSim::new(Rolling).replicas(3).run_to_end();
        completed(&report);
        assert_eq!(report.min_ready_during(), 3, "{}", report.history_text());
        assert_eq!(
            report.max_instances_during(),
            4,
            "{}",
            report.history_text()
        );
        // One candidate at a time: three ready delays.
        assert_eq!(report.final_state.elapsed_ms, 15_000);
    }

    #[test]
    fn surge_two_unavailable_one_is_faster_and_never_below_two() {
        let report = RolloutSim::new(Rolling)
            .replicas(3)
            .param("max_surge", "2")
            .param("max_unavailable", "1")
            .run_to_end();
        completed(&report);
        assert_eq!(report.min_ready_during(), 2, "{}", report.history_text());
        assert!(report.max_instances_during() <= 5);
        assert!(
            report.final_state.elapsed_ms < 15_000,
            "{}",
            report.history_text()
        );
        assert_eq!(report.final_state.elapsed_ms, 5_000);
    }

    #[test]
    fn bounds_hold_for_many_shapes() {
        for replicas in [1u32, 2, 3, 5, 10] {
            for surge in 0..=3u32 {
                for unavailable in 0..=3u32 {
                    let report = RolloutSim::new(Rolling)
                        .replicas(replicas)
                        .param("max_surge", &surge.to_string())
                        .param("max_unavailable", &unavailable.to_string())
                        .run_to_end();
                    let ctx = format!(
                        "replicas {replicas} surge {surge} unavailable {unavailable}\n{}",
                        report.history_text()
                    );
                    assert_eq!(report.outcome, Outcome::Completed, "{ctx}");
                    let (s, u) = if surge == 0 && unavailable == 0 {
                        (1, 0)
                    } else {
                        (surge, unavailable.min(replicas))
                    };
                    assert!(report.min_ready_during() >= replicas - u, "{ctx}");
                    assert!(report.max_instances_during() <= replicas + s, "{ctx}");
                }
            }
        }
    }

    #[test]
    fn percentages_are_accepted() {
        let report = RolloutSim::new(Rolling)
            .replicas(4)
            .param("max_surge", "\"50%\"")
            .param("max_unavailable", "\"25%\"")
            .run_to_end();
        completed(&report);
        assert_eq!(report.min_ready_during(), 3);
        assert_eq!(report.max_instances_during(), 6);
        let bad = RolloutSim::new(Rolling)
            .param("max_surge", "\"lots\"")
            .run_to_end();
        assert!(
            matches!(&bad.outcome, Outcome::ParamsRefused { error } if error.key == "max_surge"),
            "{:?}",
            bad.outcome
        );
    }

    #[test]
    fn failing_candidates_roll_back() {
        let report = RolloutSim::new(Rolling).fail_candidates(true).run_to_end();
        match &report.outcome {
            Outcome::RolledBack { reason } => {
                assert!(reason.contains("failed"), "{reason}");
                assert!(reason.contains("candidate-"), "{reason}");
            }
            other => panic!("{other:?}\n{}", report.history_text()),
        }
        assert_eq!(report.min_ready_during(), 3);
        assert_eq!(report.final_state.stable_revision, Some(1));
        assert_eq!(report.final_state.stable.len(), 3);
    }

    #[test]
    fn a_late_failure_rolls_back_too() {
        let report = RolloutSim::new(Rolling)
            .replicas(4)
            .candidate_fate(|n| if n == 2 { Fate::Fail } else { Fate::Ready })
            .run_to_end();
        assert!(
            matches!(&report.outcome, Outcome::RolledBack { reason } if reason.contains("failed")),
            "{:?}",
            report.outcome
        );
        assert_eq!(
            min_ready_before_the_end(&report),
            4,
            "{}",
            report.history_text()
        );
        assert_eq!(report.final_state.stable.len(), 4);
    }

    #[test]
    fn hanging_candidates_roll_back_at_the_deadline() {
        let report = RolloutSim::new(Rolling)
            .hang_candidates(true)
            .param("progress_deadline_secs", "30")
            .run_to_end();
        match &report.outcome {
            Outcome::RolledBack { reason } => {
                assert!(reason.contains("no progress for 30 s"), "{reason}");
                assert!(reason.contains("0 of 3"), "{reason}");
            }
            other => panic!("{other:?}\n{}", report.history_text()),
        }
        assert_eq!(report.final_state.elapsed_ms, 30_000);
    }

    #[test]
    fn the_deadline_counts_from_the_last_progress() {
        // The first two candidates are ready after 5 s each, the third hangs: the default
        // deadline (120 s) runs from the second one becoming ready (t = 10 s).
        let report = RolloutSim::new(Rolling)
            .candidate_fate(|n| if n == 2 { Fate::Hang } else { Fate::Ready })
            .run_to_end();
        assert!(
            matches!(&report.outcome, Outcome::RolledBack { reason } if reason.contains("2 of 3")),
            "{:?}\n{}",
            report.outcome,
            report.history_text()
        );
        assert_eq!(report.final_state.elapsed_ms, 130_000);
        assert_eq!(
            min_ready_before_the_end(&report),
            3,
            "{}",
            report.history_text()
        );
    }

    #[test]
    fn operator_rollback() {
        let report = RolloutSim::new(Rolling)
            .replicas(5)
            .request_rollback_at(7_000)
            .run_to_end();
        assert_eq!(
            report.outcome,
            Outcome::RolledBack {
                reason: OPERATOR_ROLLBACK.into()
            }
        );
        assert_eq!(report.final_state.elapsed_ms, 7_000);
        assert_eq!(report.final_state.stable.len(), 5);
    }

    #[test]
    fn first_deploy_starts_everything() {
        let report = RolloutSim::new(Rolling)
            .first_deploy()
            .replicas(4)
            .run_to_end();
        assert_eq!(
            report.outcome,
            Outcome::Completed,
            "{}",
            report.history_text()
        );
        assert_eq!(report.history[0].actions[0], Action::ScaleCandidate(4));
        assert_eq!(report.final_state.elapsed_ms, 5_000);
        assert_eq!(report.final_state.stable.len(), 4);
        assert_eq!(report.final_state.stable_revision, Some(1));
        let failing = RolloutSim::new(Rolling)
            .first_deploy()
            .fail_candidates(true)
            .run_to_end();
        assert!(matches!(failing.outcome, Outcome::RolledBack { .. }));
    }

    #[test]
    fn state_survives_a_round_trip_and_garbage_is_refused() {
        let m = Memory {
            stable_count: 3,
            candidate_count: 2,
            best_ready: 1,
            last_progress_ms: 1_700_000_000_123,
        };
        assert_eq!(Memory::decode(&m.encode()), Ok(m));
        assert!(Memory::decode(b"nonsense").is_err());
    }

    #[test]
    fn zero_replicas_is_done_at_once() {
        let report = RolloutSim::new(Rolling).replicas(0).run_to_end();
        assert_eq!(report.outcome, Outcome::Completed);
    }
}
