//! A probe: GETs `settings.path` (default `/`) through the endpoint capability; healthy on a
//! 2xx status. The reason of an unhealthy verdict names the endpoint's address, so tests can
//! see which address the capability is bound to. With the parameter `tcp` set, it only
//! connects.

wit_bindgen::generate!({ world: "probe", path: "../../../wit" });

use orca::plugin::endpoint;
use orca::plugin::logging::{log, Level};

struct Echo;

impl Guest for Echo {
    fn check(settings: ProbeSettings) -> Result<(), String> {
        let address = endpoint::address();
        if settings.params.iter().any(|p| p.key == "tcp") {
            return endpoint::tcp_connect(settings.timeout_ms)
                .map_err(|e| format!("{address}: {e}"));
        }
        let path = settings.path.unwrap_or_else(|| "/".into());
        log(Level::Debug, &format!("GET {path} on {address}"));
        let response = endpoint::http_get(&path, &[], settings.timeout_ms)
            .map_err(|e| format!("{address}: {e}"))?;
        if (200..300).contains(&response.status) {
            Ok(())
        } else {
            Err(format!("{address}: status {}", response.status))
        }
    }
}

export!(Echo);
