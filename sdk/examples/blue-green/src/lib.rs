//! Blue-green deployment as an orca strategy plugin.
//!
//! 1. Start a full set of candidates (`replicas` of them) while all traffic stays on the stable
//!    revision.
//! 2. Wait until every candidate is ready — at most `ready_timeout_ms` (parameter, default
//!    60000) after the rollout started.
//! 3. Switch 100% of the traffic to the candidates at once, stop the stable instances, promote,
//!    done.
//!
//! A failed candidate, a timeout or an operator's rollback request rolls back: the candidates
//! go away and the stable revision never stopped serving.
//!
//! ```toml
//! [service.deploy]
//! strategy = "./blue_green.wasm"
//!
//! [service.deploy.params]
//! ready_timeout_ms = 120000
//! ```

#![deny(missing_docs, unsafe_code)]

use orca_plugin_sdk::strategy::{InvalidParam, Strategy};
use orca_plugin_sdk::types::{Action, RolloutState, Service, Step, Traffic};
use orca_plugin_sdk::{log, Level};

/// How long candidates get to become ready when `ready_timeout_ms` is not set.
pub const DEFAULT_READY_TIMEOUT_MS: u64 = 60_000;

/// The blue-green strategy. Stateless: the deadline it waits for travels in `plugin_state`.
#[derive(Default)]
pub struct BlueGreen;

impl Strategy for BlueGreen {
    fn check_params(&self, service: &Service) -> Result<(), InvalidParam> {
        // The same read as `plan`'s: a value `plan` would refuse is refused at deploy.
        service.param_or("ready_timeout_ms", DEFAULT_READY_TIMEOUT_MS)?;
        Ok(())
    }

    fn plan(&self, state: &RolloutState) -> Result<Step, String> {
        let replicas = state.replicas();
        let timeout_ms = state
            .service
            .param_or("ready_timeout_ms", DEFAULT_READY_TIMEOUT_MS)?;

        // First call: pin all traffic to blue (without a split the host would give ready green
        // instances a share), start the green set and remember the deadline.
        let Some(deadline) = decode_deadline(&state.plugin_state) else {
            let deadline = state.now_ms.saturating_add(timeout_ms);
            log(
                Level::Info,
                &format!(
                    "blue-green: starting {replicas} candidates, ready deadline in {timeout_ms} ms"
                ),
            );
            return Ok(Step::of([
                Action::SetTraffic(Traffic::ALL_STABLE),
                Action::ScaleCandidate(replicas),
                Action::WaitUntil(deadline),
            ])
            .with_state(deadline.to_le_bytes()));
        };
        let keep = deadline.to_le_bytes();

        if state.rollback_requested {
            return Ok(rollback("rollback requested by an operator"));
        }
        let failed = state.candidate_failed();
        if failed > 0 {
            return Ok(rollback(&format!(
                "{failed} of {replicas} candidates failed"
            )));
        }
        if state.candidate_ready() >= replicas {
            // Switch before stopping the blue set, so something serves at every moment.
            return Ok(Step::of([
                Action::SetTraffic(Traffic::ALL_CANDIDATE),
                Action::ScaleStable(0),
                Action::Promote,
                Action::Done,
            ]));
        }
        if state.now_ms >= deadline {
            return Ok(rollback(&format!(
                "only {} of {replicas} candidates ready after {timeout_ms} ms",
                state.candidate_ready()
            )));
        }
        // Still starting: make sure the full set exists (an instance may have vanished) and
        // keep the deadline timer.
        let mut step = Step::new();
        if (state.candidate.len() as u32) < replicas {
            step = step.then(Action::ScaleCandidate(replicas));
        }
        Ok(step.then(Action::WaitUntil(deadline)).with_state(keep))
    }
}

fn rollback(reason: &str) -> Step {
    log(Level::Warn, &format!("blue-green: rolling back: {reason}"));
    Step::of([
        Action::SetTraffic(Traffic::ALL_STABLE),
        Action::Rollback(reason.to_string()),
    ])
}

fn decode_deadline(plugin_state: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(plugin_state.try_into().ok()?))
}

orca_plugin_sdk::export_strategy!(BlueGreen);

#[cfg(test)]
mod tests {
    use super::*;
    use orca_plugin_sdk::testing::{Outcome, RolloutSim};

    #[test]
    fn switches_all_at_once_when_every_candidate_is_ready() {
        let report = RolloutSim::new(BlueGreen)
            .replicas(4)
            .ready_delay_ms(8_000)
            .run_to_end();
        assert_eq!(
            report.outcome,
            Outcome::Completed,
            "{}",
            report.history_text()
        );
        // Blue kept serving until green took over: never fewer than 4 ready instances serving.
        assert_eq!(report.min_ready_during(), 4, "{}", report.history_text());
        assert_eq!(report.max_instances_during(), 8);
        let state = &report.final_state;
        assert_eq!(state.stable_revision, Some(2));
        assert_eq!(state.stable.len(), 4);
        assert!(state.stable.iter().all(|i| i.revision == 2 && i.is_ready()));
        // Traffic moved once, straight from 100/0 to 0/100, when green became ready.
        let switches: Vec<_> = report
            .history
            .iter()
            .filter(|r| {
                r.actions
                    .contains(&Action::SetTraffic(Traffic::ALL_CANDIDATE))
            })
            .collect();
        assert_eq!(switches.len(), 1);
        assert_eq!(switches[0].elapsed_ms, 8_000);
        assert!(report
            .actions()
            .all(|a| !matches!(a, Action::SetTraffic(t) if *t != Traffic::ALL_STABLE && *t != Traffic::ALL_CANDIDATE)));
    }

    #[test]
    fn failed_candidate_rolls_back_without_touching_traffic() {
        let report = RolloutSim::new(BlueGreen)
            .fail_candidates(true)
            .run_to_end();
        assert_eq!(
            report.outcome,
            Outcome::RolledBack {
                reason: "3 of 3 candidates failed".into()
            }
        );
        assert_eq!(report.min_ready_during(), 3);
        assert!(report
            .actions()
            .all(|a| !matches!(a, Action::SetTraffic(t) if *t != Traffic::ALL_STABLE)));
        assert_eq!(report.final_state.stable_revision, Some(1));
        assert!(report.final_state.candidate.is_empty());
    }

    #[test]
    fn candidates_never_ready_roll_back_at_the_default_timeout() {
        let report = RolloutSim::new(BlueGreen)
            .hang_candidates(true)
            .run_to_end();
        assert_eq!(
            report.outcome,
            Outcome::RolledBack {
                reason: "only 0 of 3 candidates ready after 60000 ms".into()
            }
        );
        assert_eq!(report.final_state.elapsed_ms, DEFAULT_READY_TIMEOUT_MS);
    }

    #[test]
    fn ready_timeout_param_is_honoured() {
        let report = RolloutSim::new(BlueGreen)
            .param("ready_timeout_ms", "10000")
            .ready_delay_ms(20_000)
            .run_to_end();
        assert!(
            matches!(&report.outcome, Outcome::RolledBack { reason } if reason.contains("after 10000 ms")),
            "{:?}",
            report.outcome
        );
        assert_eq!(report.final_state.elapsed_ms, 10_000);
    }

    #[test]
    fn operator_rollback_is_obeyed() {
        let report = RolloutSim::new(BlueGreen)
            .ready_delay_ms(30_000)
            .request_rollback_at(5_000)
            .run_to_end();
        assert_eq!(
            report.outcome,
            Outcome::RolledBack {
                reason: "rollback requested by an operator".into()
            }
        );
        assert_eq!(report.final_state.elapsed_ms, 5_000);
    }

    #[test]
    fn bad_param_is_refused_at_deploy_with_its_name() {
        let report = RolloutSim::new(BlueGreen)
            .param("ready_timeout_ms", "\"soon\"")
            .run_to_end();
        assert!(
            matches!(&report.outcome, Outcome::ParamsRefused { error } if error.key == "ready_timeout_ms"),
            "{:?}",
            report.outcome
        );
        assert!(report.history.is_empty(), "plan is never called");
    }

    #[test]
    fn first_deploy_completes() {
        let report = RolloutSim::new(BlueGreen)
            .first_deploy()
            .replicas(2)
            .run_to_end();
        assert_eq!(
            report.outcome,
            Outcome::Completed,
            "{}",
            report.history_text()
        );
        assert_eq!(report.final_state.stable_revision, Some(1));
        assert_eq!(report.final_state.stable.len(), 2);
    }
}
