//! A strategy returning output the host's validation must reject: the mode comes from the
//! service's `mode` parameter (`state` = 2 MiB of plugin state, `scale` = scale-candidate
//! to u32::MAX, `traffic` = both weights zero); the default is `state`.

wit_bindgen::generate!({ world: "strategy", path: "../../../wit" });

use orca::plugin::types::{Action, Traffic};

struct Malformed;

impl Guest for Malformed {
    // The fault is in `plan`; deploys of it pass the parameter check.
    fn check_params(_service: Service) -> Result<(), ParamError> {
        Ok(())
    }

    fn plan(state: RolloutState) -> Result<Step, String> {
        let mode = state
            .service
            .params
            .iter()
            .find(|p| p.key == "mode")
            .map(|p| p.value.trim_matches('"').to_string())
            .unwrap_or_else(|| "state".to_string());
        Ok(match mode.as_str() {
            "scale" => Step {
                actions: vec![Action::ScaleCandidate(u32::MAX)],
                plugin_state: Vec::new(),
            },
            "traffic" => Step {
                actions: vec![Action::SetTraffic(Traffic {
                    stable: 0,
                    candidate: 0,
                })],
                plugin_state: Vec::new(),
            },
            _ => Step {
                actions: vec![Action::Done],
                plugin_state: vec![7; 2 << 20],
            },
        })
    }
}

export!(Malformed);
