//! A strategy built against `orca:plugin@9.0.0`, a version no host serves: loading it must be
//! refused with the version in the reason, not fail at its first call.

wit_bindgen::generate!({
    inline: "
        package orca:plugin@9.0.0;

        interface logging {
            log: func(message: string);
        }

        world strategy {
            import logging;
            export plan: func() -> u32;
        }
    ",
    world: "strategy",
});

struct Future;

impl Guest for Future {
    fn plan() -> u32 {
        orca::plugin::logging::log("planning from the future");
        9
    }
}

export!(Future);
