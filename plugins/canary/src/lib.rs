//! `canary`: a weighted canary beside a full stable set.
//!
//! 1. Start `ceil(replicas × weight / 100)` candidates (at least 1) beside every stable
//!    instance; traffic stays 100/0 on the stable revision until they are ready.
//! 2. Send `weight`% of the traffic to the candidates (`SetTraffic{100 − w, w}`).
//! 3. Without `steps`, wait for the operator's promote. With `steps` (e.g. `[10, 50, 100]`),
//!    move to the next weight every `step_interval_secs` (scaling the candidates to
//!    `ceil(replicas × w / 100)`, shifting traffic once they are ready); after the last step
//!    (100), or on an operator's promote at any time, promote.
//! 4. Promote: scale the candidates to `replicas`, wait until all are ready, send all traffic
//!    to them, stop the stable set, `Promote`.
//!
//! A failed candidate at any point, candidates not ready within `progress_deadline_secs` of
//! being asked for, or an operator's rollback request rolls back (the host then sends all
//! traffic back to the stable revision).
//!
//! Parameters (JSON text): `canary_weight` (default 20, percent, 1–100), `steps` (optional
//! array of percentages, each 1–100, non-decreasing), `step_interval_secs` (default 60),
//! `progress_deadline_secs` (default 120). A first deploy (nothing to compare against) goes
//! straight to step 4.

#![deny(unsafe_code)]

use orca_plugin_sdk::strategy::{InvalidParam, Strategy};
use orca_plugin_sdk::types::{Action, RolloutState, Service, Step, Traffic};
use orca_plugin_sdk::{log, Level};

/// Default `canary_weight`, percent.
pub const DEFAULT_WEIGHT: u32 = 20;
/// Default `step_interval_secs`.
pub const DEFAULT_STEP_INTERVAL_SECS: u64 = 60;
/// Default `progress_deadline_secs`.
pub const DEFAULT_PROGRESS_DEADLINE_SECS: u64 = 120;
/// The operator's rollback reason.
pub const OPERATOR_ROLLBACK: &str = "rolled back by the operator";

/// The canary strategy. Stateless: its phase travels in `plugin_state`.
#[derive(Default)]
pub struct Canary;

/// The strategy's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// Candidate traffic weights, in order: `[canary_weight]`, or `steps`.
    pub weights: Vec<u32>,
    /// Whether the weights advance by themselves (`steps` given).
    pub automatic: bool,
    /// Time spent at each weight before the next one, with `steps`.
    pub step_interval_ms: u64,
    /// How long candidates get to become ready once asked for.
    pub progress_deadline_ms: u64,
    /// Roll back when more than this many per mille of the candidates' answers are 5xx...
    pub max_error_permille: u64,
    /// ...once they have answered at least this many requests.
    pub min_requests: u64,
}

impl Params {
    /// Reads the parameters of `service`; an invalid one is an error naming it.
    pub fn from_service(service: &Service) -> Result<Params, InvalidParam> {
        let weight: u32 = service.param_or("canary_weight", DEFAULT_WEIGHT)?;
        check_weight("canary_weight", weight)?;
        let steps = match service.param_raw("steps").map(str::trim) {
            None | Some("null") => None,
            Some(raw) => Some(parse_steps(raw)?),
        };
        let automatic = steps.is_some();
        let weights = steps.unwrap_or_else(|| vec![weight]);
        let interval = service.param_or("step_interval_secs", DEFAULT_STEP_INTERVAL_SECS)?;
        let deadline =
            service.param_or("progress_deadline_secs", DEFAULT_PROGRESS_DEADLINE_SECS)?;
        let max_error_rate: f64 = service.param_or("max_error_rate", 0.05)?;
        if !(0.0..=1.0).contains(&max_error_rate) {
            return Err(InvalidParam::new(
                "max_error_rate",
                format!("{max_error_rate} is out of range: allowed 0.0 to 1.0"),
            ));
        }
        let min_requests = service.param_or("min_requests", 20u64)?;
        Ok(Params {
            weights,
            automatic,
            step_interval_ms: interval.saturating_mul(1000),
            progress_deadline_ms: deadline.saturating_mul(1000),
            max_error_permille: (max_error_rate * 1000.0).round() as u64,
            min_requests,
        })
    }
}

fn check_weight(key: &str, w: u32) -> Result<(), InvalidParam> {
    if (1..=100).contains(&w) {
        Ok(())
    } else {
        Err(InvalidParam::new(
            key,
            format!("expected a percentage from 1 to 100, got {w}"),
        ))
    }
}

/// `[10, 50, 100]`: a JSON array of percentages, non-decreasing.
fn parse_steps(raw: &str) -> Result<Vec<u32>, InvalidParam> {
    let bad = || {
        InvalidParam::new(
            "steps",
            format!("expected an array of percentages like [10, 50, 100], got {raw}"),
        )
    };
    let inner = raw
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .ok_or_else(bad)?;
    if inner.trim().is_empty() {
        return Err(bad());
    }
    let mut steps = Vec::new();
    for item in inner.split(',') {
        let item = item.trim();
        let w = if item.bytes().all(|b| b.is_ascii_digit()) {
            item.parse::<u32>().ok()
        } else {
            // `10.0` is a fine JSON number for 10.
            item.parse::<f64>()
                .ok()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= 100.0)
                .map(|f| f as u32)
        }
        .ok_or_else(bad)?;
        check_weight("steps", w)?;
        if steps.last().is_some_and(|&last| w < last) {
            return Err(InvalidParam::new(
                "steps",
                format!("weights must not decrease, got {raw}"),
            ));
        }
        steps.push(w);
    }
    Ok(steps)
}

/// Candidates needed to carry `weight`% of `replicas` (at least 1, at most `replicas`).
pub fn candidates_for(replicas: u32, weight: u32) -> u32 {
    let n = (u64::from(replicas) * u64::from(weight)).div_ceil(100) as u32;
    n.max(1).min(replicas.max(1))
}

/// Where the rollout is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Candidates for weight `index` asked for; waiting for them to be ready.
    Starting,
    /// Weight `index` in force; waiting for the interval or the operator.
    Observing,
    /// Every candidate asked for; waiting for them all to be ready.
    Promoting,
}

/// What the strategy remembers between calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Memory {
    phase: Phase,
    /// Index into `Params::weights`.
    index: u32,
    /// When the phase began.
    since_ms: u64,
}

const MEMORY_TAG: u8 = b'C';
const MEMORY_LEN: usize = 1 + 1 + 4 + 8;

impl Memory {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MEMORY_LEN);
        out.push(MEMORY_TAG);
        out.push(match self.phase {
            Phase::Starting => 0,
            Phase::Observing => 1,
            Phase::Promoting => 2,
        });
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.since_ms.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Memory, String> {
        let bad = || format!("canary: unrecognised plugin state ({} bytes)", bytes.len());
        if bytes.len() != MEMORY_LEN || bytes[0] != MEMORY_TAG {
            return Err(bad());
        }
        let phase = match bytes[1] {
            0 => Phase::Starting,
            1 => Phase::Observing,
            2 => Phase::Promoting,
            _ => return Err(bad()),
        };
        Ok(Memory {
            phase,
            index: u32::from_le_bytes(bytes[2..6].try_into().expect("4 bytes")),
            since_ms: u64::from_le_bytes(bytes[6..14].try_into().expect("8 bytes")),
        })
    }
}

fn rollback(reason: String) -> Result<Step, String> {
    log(Level::Warn, &format!("canary: rolling back: {reason}"));
    Ok(Step::of([Action::Rollback(reason)]))
}

impl Strategy for Canary {
    fn check_params(&self, service: &Service) -> Result<(), InvalidParam> {
        Params::from_service(service).map(|_| ())
    }

    fn plan(&self, state: &RolloutState) -> Result<Step, String> {
        let replicas = state.replicas();
        let params = Params::from_service(&state.service)?;
        let now = state.now_ms;
        let mut actions = Vec::new();

        let mut mem = if state.is_first_call() {
            if state.stable_revision.is_none() || state.stable.is_empty() {
                log(
                    Level::Info,
                    "canary: nothing serving yet, starting every candidate",
                );
                actions.push(Action::ScaleCandidate(replicas));
                Memory {
                    phase: Phase::Promoting,
                    index: 0,
                    since_ms: now,
                }
            } else {
                let w = params.weights[0];
                let n = candidates_for(replicas, w);
                log(
                    Level::Info,
                    &format!("canary: starting {n} candidates for {w}% of the traffic"),
                );
                actions.push(Action::SetTraffic(Traffic::ALL_STABLE));
                actions.push(Action::ScaleCandidate(n));
                Memory {
                    phase: Phase::Starting,
                    index: 0,
                    since_ms: now,
                }
            }
        } else {
            Memory::decode(&state.plugin_state)?
        };

        if state.rollback_requested {
            return rollback(OPERATOR_ROLLBACK.into());
        }
        // Canary analysis: the proxied 5xx rate of the candidates.
        let (requests, errors) = (state.candidate_requests, state.candidate_errors);
        if requests >= params.min_requests.max(1)
            && errors * 1000 > params.max_error_permille * requests
        {
            return rollback(format!(
                "candidate 5xx rate {:.1}% ({errors} of {requests} requests) is over max_error_rate {:.1}%",
                errors as f64 * 100.0 / requests as f64,
                params.max_error_permille as f64 / 10.0
            ));
        }
        if let Some(failed) = state.candidate.iter().find(|i| i.is_failed()) {
            return rollback(format!(
                "candidate {} of revision {} failed",
                failed.id, state.candidate_revision
            ));
        }
        let last = params.weights.len() as u32 - 1;
        mem.index = mem.index.min(last);
        let ready = state.candidate_ready();

        // An operator's promote skips whatever is left of the canary.
        if state.promote_requested && mem.phase != Phase::Promoting {
            log(
                Level::Info,
                "canary: promote requested, starting every candidate",
            );
            actions.push(Action::ScaleCandidate(replicas));
            mem = Memory {
                phase: Phase::Promoting,
                index: mem.index,
                since_ms: now,
            };
        }

        loop {
            let index = mem.index;
            let weight = params.weights[index as usize];
            match mem.phase {
                Phase::Starting => {
                    let wanted = candidates_for(replicas, weight);
                    if ready < wanted {
                        let deadline = mem.since_ms.saturating_add(params.progress_deadline_ms);
                        if now >= deadline {
                            return rollback(format!(
                                "only {ready} of {wanted} candidates ready after {} s",
                                params.progress_deadline_ms / 1000
                            ));
                        }
                        actions.push(Action::WaitUntil(deadline));
                        break;
                    }
                    log(
                        Level::Info,
                        &format!("canary: {wanted} candidates ready, sending them {weight}%"),
                    );
                    actions.push(Action::SetTraffic(Traffic::candidate_percent(weight)));
                    mem = Memory {
                        phase: Phase::Observing,
                        index,
                        since_ms: now,
                    };
                }
                Phase::Observing => {
                    if !params.automatic {
                        // Wait for the operator; the host calls again on promote/rollback.
                        break;
                    }
                    let next_at = mem.since_ms.saturating_add(params.step_interval_ms);
                    if now < next_at {
                        actions.push(Action::WaitUntil(next_at));
                        break;
                    }
                    let next = index + 1;
                    if next > last || params.weights[next as usize] >= 100 {
                        log(Level::Info, "canary: last step passed, promoting");
                        actions.push(Action::ScaleCandidate(replicas));
                        mem = Memory {
                            phase: Phase::Promoting,
                            index: last,
                            since_ms: now,
                        };
                    } else {
                        let w = params.weights[next as usize];
                        let n = candidates_for(replicas, w);
                        log(
                            Level::Info,
                            &format!("canary: next step, {n} candidates for {w}%"),
                        );
                        actions.push(Action::ScaleCandidate(n));
                        mem = Memory {
                            phase: Phase::Starting,
                            index: next,
                            since_ms: now,
                        };
                    }
                }
                Phase::Promoting => {
                    if ready < replicas {
                        let deadline = mem.since_ms.saturating_add(params.progress_deadline_ms);
                        if now >= deadline {
                            return rollback(format!(
                                "only {ready} of {replicas} candidates ready after {} s",
                                params.progress_deadline_ms / 1000
                            ));
                        }
                        actions.push(Action::WaitUntil(deadline));
                        break;
                    }
                    log(Level::Info, "canary: every candidate ready, promoting");
                    actions.push(Action::SetTraffic(Traffic::ALL_CANDIDATE));
                    actions.push(Action::ScaleStable(0));
                    actions.push(Action::Promote);
                    return Ok(Step::of(actions));
                }
            }
        }
        Ok(Step::of(actions).with_state(mem.encode()))
    }
}

orca_plugin_sdk::export_strategy!(Canary);

#[cfg(test)]
mod tests {
    use super::*;
    use orca_plugin_sdk::testing::{Fate, Outcome, Report, RolloutSim};

    fn traffic_history(report: &Report) -> Vec<(u64, Traffic)> {
        report
            .history
            .iter()
            .flat_map(|r| {
                r.actions.iter().filter_map(move |a| match a {
                    Action::SetTraffic(t) => Some((r.elapsed_ms, *t)),
                    _ => None,
                })
            })
            .collect()
    }

    #[test]
    fn weight_20_of_5_is_one_candidate_at_80_20_until_promoted() {
        let mut sim = RolloutSim::new(Canary)
            .replicas(5)
            .param("canary_weight", "20")
            .request_promote_at(600_000);
        // First call: traffic pinned to stable, one candidate.
        sim.step();
        let s = sim.state();
        assert_eq!(s.candidate.len(), 1);
        assert_eq!(s.stable.len(), 5);
        assert_eq!(s.traffic, Traffic::ALL_STABLE);
        // Run until the canary is ready: 80/20.
        while sim.state().elapsed_ms < 5_000 {
            assert_eq!(sim.step(), None);
        }
        sim.step();
        let s = sim.state();
        assert_eq!(
            s.traffic,
            Traffic {
                stable: 80,
                candidate: 20
            }
        );
        assert_eq!(s.candidate.len(), 1);
        assert_eq!(s.stable.len(), 5);

        let report = sim.run_to_end();
        assert_eq!(
            report.outcome,
            Outcome::Completed,
            "{}",
            report.history_text()
        );
        // Held at 80/20 until the operator's promote at 600 s, then all candidates, 0/100.
        assert_eq!(
            traffic_history(&report),
            vec![
                (0, Traffic::ALL_STABLE),
                (
                    5_000,
                    Traffic {
                        stable: 80,
                        candidate: 20
                    }
                ),
                (605_000, Traffic::ALL_CANDIDATE),
            ],
            "{}",
            report.history_text()
        );
        let last = &report.history.last().unwrap().actions;
        assert_eq!(
            last,
            &vec![
                Action::SetTraffic(Traffic::ALL_CANDIDATE),
                Action::ScaleStable(0),
                Action::Promote
            ]
        );
        assert_eq!(report.final_state.stable.len(), 5);
        assert_eq!(report.final_state.stable_revision, Some(2));
        assert_eq!(report.min_ready_during(), 5, "{}", report.history_text());
        assert_eq!(report.max_instances_during(), 10);
    }

    #[test]
    fn without_promote_it_waits() {
        let report = RolloutSim::new(Canary).replicas(5).run_to_end();
        // The real host would call again on the operator's promote; the simulator has no
        // event left and reports the wait.
        assert!(
            matches!(report.outcome, Outcome::Stuck { .. }),
            "{:?}",
            report.outcome
        );
        assert_eq!(
            report.final_state.traffic,
            Traffic {
                stable: 80,
                candidate: 20
            }
        );
        assert_eq!(report.final_state.candidate.len(), 1);
    }

    #[test]
    fn automatic_steps() {
        let report = RolloutSim::new(Canary)
            .replicas(10)
            .param("steps", "[10, 50, 100]")
            .param("step_interval_secs", "30")
            .run_to_end();
        assert_eq!(
            report.outcome,
            Outcome::Completed,
            "{}",
            report.history_text()
        );
        assert_eq!(
            traffic_history(&report),
            vec![
                (0, Traffic::ALL_STABLE),
                (
                    5_000,
                    Traffic {
                        stable: 90,
                        candidate: 10
                    }
                ),
                // 30 s later: 5 candidates asked for, ready 5 s after.
                (
                    40_000,
                    Traffic {
                        stable: 50,
                        candidate: 50
                    }
                ),
                // 30 s later: every candidate, ready 5 s after: promote.
                (75_000, Traffic::ALL_CANDIDATE),
            ],
            "{}",
            report.history_text()
        );
        let scales: Vec<u32> = report
            .actions()
            .filter_map(|a| match a {
                Action::ScaleCandidate(n) => Some(*n),
                _ => None,
            })
            .collect();
        assert_eq!(scales, vec![1, 5, 10]);
        assert_eq!(report.min_ready_during(), 10);
        assert_eq!(report.final_state.stable.len(), 10);
    }

    #[test]
    fn a_canary_answering_5xx_over_the_threshold_is_rolled_back() {
        // 10 requests/s to the canary, 20% of them 5xx: over the default 5% once 20 are seen.
        let report = RolloutSim::new(Canary)
            .replicas(5)
            .param("steps", "[20, 100]")
            .param("step_interval_secs", "60")
            .candidate_traffic(10, 0.2)
            .run_to_end();
        match &report.outcome {
            Outcome::RolledBack { reason } => {
                assert!(
                    reason.contains("5xx rate") && reason.contains("max_error_rate"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}\n{}", report.history_text()),
        }
        // Below the threshold the same rollout completes.
        let report = RolloutSim::new(Canary)
            .replicas(5)
            .param("steps", "[20, 100]")
            .param("step_interval_secs", "60")
            .candidate_traffic(10, 0.01)
            .run_to_end();
        assert_eq!(
            report.outcome,
            Outcome::Completed,
            "{}",
            report.history_text()
        );
    }

    #[test]
    fn steps_not_ending_at_100_promote_after_the_last() {
        let report = RolloutSim::new(Canary)
            .replicas(4)
            .param("steps", "[25, 50]")
            .param("step_interval_secs", "10")
            .run_to_end();
        assert_eq!(
            report.outcome,
            Outcome::Completed,
            "{}",
            report.history_text()
        );
        assert_eq!(
            report.final_state.elapsed_ms,
            5_000 + 10_000 + 5_000 + 10_000 + 5_000
        );
    }

    #[test]
    fn promote_during_steps_skips_the_rest() {
        let report = RolloutSim::new(Canary)
            .param("steps", "[10, 50, 100]")
            .request_promote_at(20_000)
            .run_to_end();
        assert_eq!(
            report.outcome,
            Outcome::Completed,
            "{}",
            report.history_text()
        );
        assert_eq!(report.final_state.elapsed_ms, 25_000);
    }

    #[test]
    fn a_failed_canary_rolls_back() {
        let report = RolloutSim::new(Canary)
            .replicas(5)
            .fail_candidates(true)
            .run_to_end();
        match &report.outcome {
            Outcome::RolledBack { reason } => assert!(reason.contains("failed"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(report.final_state.elapsed_ms, 5_000);
        // The canary never got traffic; the stable set served throughout.
        assert_eq!(report.min_ready_during(), 5);
        assert_eq!(report.final_state.stable.len(), 5);
    }

    #[test]
    fn a_failure_during_promotion_rolls_back() {
        let report = RolloutSim::new(Canary)
            .replicas(5)
            .candidate_fate(|n| if n == 3 { Fate::Fail } else { Fate::Ready })
            .request_promote_at(10_000)
            .run_to_end();
        assert!(
            matches!(&report.outcome, Outcome::RolledBack { reason } if reason.contains("failed")),
            "{:?}",
            report.outcome
        );
        assert_eq!(report.final_state.elapsed_ms, 15_000);
        assert_eq!(report.final_state.stable.len(), 5);
        assert!(report.final_state.candidate.is_empty());
    }

    #[test]
    fn candidates_not_ready_in_time_roll_back() {
        let report = RolloutSim::new(Canary)
            .hang_candidates(true)
            .param("progress_deadline_secs", "45")
            .run_to_end();
        match &report.outcome {
            Outcome::RolledBack { reason } => {
                assert!(
                    reason.contains("0 of 1 candidates ready after 45 s"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}\n{}", report.history_text()),
        }
        assert_eq!(report.final_state.elapsed_ms, 45_000);
    }

    #[test]
    fn hanging_after_promote_rolls_back() {
        let report = RolloutSim::new(Canary)
            .candidate_fate(|n| if n == 0 { Fate::Ready } else { Fate::Hang })
            .request_promote_at(10_000)
            .run_to_end();
        assert!(
            matches!(&report.outcome, Outcome::RolledBack { reason } if reason.contains("1 of 3")),
            "{:?}",
            report.outcome
        );
        assert_eq!(report.final_state.elapsed_ms, 130_000);
    }

    #[test]
    fn operator_rollback() {
        let report = RolloutSim::new(Canary)
            .request_rollback_at(8_000)
            .run_to_end();
        assert_eq!(
            report.outcome,
            Outcome::RolledBack {
                reason: OPERATOR_ROLLBACK.into()
            }
        );
        assert_eq!(report.final_state.elapsed_ms, 8_000);
    }

    #[test]
    fn first_deploy_starts_everything_and_promotes() {
        let report = RolloutSim::new(Canary)
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
    }

    #[test]
    fn sizes_and_params() {
        assert_eq!(candidates_for(5, 20), 1);
        assert_eq!(candidates_for(5, 21), 2);
        assert_eq!(candidates_for(3, 1), 1);
        assert_eq!(candidates_for(10, 100), 10);
        assert_eq!(candidates_for(1, 50), 1);
        assert_eq!(parse_steps("[10, 50, 100]"), Ok(vec![10, 50, 100]));
        assert_eq!(parse_steps("[ 5,5.0 ]"), Ok(vec![5, 5]));
        assert!(parse_steps("[50, 10]").is_err());
        assert!(parse_steps("[]").is_err());
        assert!(parse_steps("[0]").is_err());
        assert!(parse_steps("[101]").is_err());
        assert!(parse_steps("\"10,50\"").is_err());
        let bad = RolloutSim::new(Canary)
            .param("canary_weight", "0")
            .run_to_end();
        assert!(
            matches!(&bad.outcome, Outcome::ParamsRefused { error } if error.key == "canary_weight"),
            "{:?}",
            bad.outcome
        );
        let m = Memory {
            phase: Phase::Observing,
            index: 2,
            since_ms: 42,
        };
        assert_eq!(Memory::decode(&m.encode()), Ok(m));
        assert!(Memory::decode(&[b'C'; MEMORY_LEN]).is_err());
    }
}
