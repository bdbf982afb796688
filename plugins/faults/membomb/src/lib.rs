//! A strategy that allocates 1 MiB blocks until allocation fails: the host's memory cap must
//! stop it and report it as such.

wit_bindgen::generate!({ world: "strategy", path: "../../../wit" });

struct Membomb;

impl Guest for Membomb {
    // The fault is in `plan`; deploys of it pass the parameter check.
    fn check_params(_service: Service) -> Result<(), ParamError> {
        Ok(())
    }

    fn plan(_state: RolloutState) -> Result<Step, String> {
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        loop {
            // Written to, so the pages are really committed.
            blocks.push(vec![0xA5; 1 << 20]);
            std::hint::black_box(&blocks);
        }
    }
}

export!(Membomb);
