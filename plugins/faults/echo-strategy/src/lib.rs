//! A well-behaved strategy: scales the candidate to the service's replicas, splits traffic
//! 90/10, waits 1 s, and echoes the previous plugin state back with one byte appended. Its
//! parameter check refuses a `step` that is not a JSON integer.

wit_bindgen::generate!({ world: "strategy", path: "../../../wit" });

use orca::plugin::types::{Action, Traffic};

struct Echo;

impl Guest for Echo {
    fn check_params(service: Service) -> Result<(), ParamError> {
        match service.params.iter().find(|p| p.key == "step") {
            Some(p) if p.value.parse::<u64>().is_err() => Err(ParamError {
                key: "step".into(),
                message: format!("expected a non-negative integer, got {}", p.value),
            }),
            _ => Ok(()),
        }
    }

    fn plan(state: RolloutState) -> Result<Step, String> {
        if state.rollback_requested {
            return Ok(Step {
                actions: vec![Action::Rollback("requested".into())],
                plugin_state: state.plugin_state,
            });
        }
        let mut plugin_state = state.plugin_state;
        plugin_state.push(state.candidate.len() as u8);
        Ok(Step {
            actions: vec![
                Action::ScaleCandidate(state.service.replicas),
                Action::SetTraffic(Traffic {
                    stable: 90,
                    candidate: 10,
                }),
                Action::WaitUntil(state.now_ms + 1000),
            ],
            plugin_state,
        })
    }
}

export!(Echo);
