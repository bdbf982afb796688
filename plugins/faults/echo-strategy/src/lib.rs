//! A well-behaved strategy: scales the candidate to the service's replicas, splits traffic
//! 90/10, waits 1 s, and echoes the previous plugin state back with one byte appended.

wit_bindgen::generate!({ world: "strategy", path: "../../../wit" });

use orca::plugin::types::{Action, Traffic};

struct Echo;

impl Guest for Echo {
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
