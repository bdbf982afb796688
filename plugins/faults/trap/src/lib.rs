//! A strategy that panics (an `unreachable` trap under `panic = "abort"`).

wit_bindgen::generate!({ world: "strategy", path: "../../../wit" });

struct Trap;

impl Guest for Trap {
    fn plan(state: RolloutState) -> Result<Step, String> {
        if std::hint::black_box(state.candidate_revision) != u64::MAX {
            panic!("trap guest panics on purpose");
        }
        Ok(Step {
            actions: Vec::new(),
            plugin_state: Vec::new(),
        })
    }
}

export!(Trap);
