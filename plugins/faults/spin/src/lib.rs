//! A strategy whose `plan` never returns: the host's epoch deadline must stop it.

wit_bindgen::generate!({ world: "strategy", path: "../../../wit" });

struct Spin;

impl Guest for Spin {
    // The fault is in `plan`; deploys of it pass the parameter check.
    fn check_params(_service: Service) -> Result<(), ParamError> {
        Ok(())
    }

    fn plan(state: RolloutState) -> Result<Step, String> {
        // `black_box` keeps the optimiser from proving anything about the loop.
        let mut n = state.now_ms;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

export!(Spin);
