//! A strategy that panics (an `unreachable` trap under `panic = "abort"`).

wit_bindgen::generate!({ world: "strategy", path: "../../../wit" });

struct Trap;

impl Guest for Trap {
    // Traps in the parameter check too when asked to (`trap_in_check`), so the host's
    // handling of a faulty check is tested; otherwise the fault is in `plan`.
    fn check_params(service: Service) -> Result<(), ParamError> {
        if service.params.iter().any(|p| p.key == "trap_in_check") {
            panic!("trap in check-params");
        }
        Ok(())
    }

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
