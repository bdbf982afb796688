//! A strategy built against the released, frozen `orca:plugin@0.2.0` (`wit/released/0.2.0`):
//! the same step as echo-strategy, and one log line (so it imports
//! `orca:plugin/logging@0.2.0`). The host must keep loading it (tests/plugins.rs).

wit_bindgen::generate!({ world: "strategy", path: "../../../wit/released/0.2.0" });

use orca::plugin::logging::{log, Level};
use orca::plugin::types::{Action, Traffic};

struct Compat;

impl Guest for Compat {
    fn plan(state: RolloutState) -> Result<Step, String> {
        log(Level::Info, "compat strategy planning");
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

export!(Compat);
