//! `tcp-probe`: a TCP connect to the probed instance's port, through the host's endpoint
//! capability, with `settings.timeout_ms`. Connected is healthy; otherwise the reason is
//! `TCP connect to 10.0.0.5:8080 failed: connection refused`.

#![deny(unsafe_code)]

use orca_plugin_sdk::probe::{Endpoint, Probe};
use orca_plugin_sdk::types::ProbeSettings;

/// The timeout used when the settings give none (0).
pub const DEFAULT_TIMEOUT_MS: u32 = 1_000;

/// The TCP probe.
#[derive(Default)]
pub struct TcpProbe;

impl Probe for TcpProbe {
    fn check(&self, settings: &ProbeSettings, endpoint: &dyn Endpoint) -> Result<(), String> {
        let timeout = match settings.timeout_ms {
            0 => DEFAULT_TIMEOUT_MS,
            t => t,
        };
        endpoint
            .tcp_connect(timeout)
            .map_err(|e| format!("TCP connect to {} failed: {e}", endpoint.address()))
    }
}

orca_plugin_sdk::export_probe!(TcpProbe);

#[cfg(test)]
mod tests {
    use super::*;
    use orca_plugin_sdk::testing::FakeEndpoint;

    fn settings(timeout_ms: u32) -> ProbeSettings {
        ProbeSettings {
            path: Some("/ignored".into()),
            timeout_ms,
            params: Vec::new(),
        }
    }

    #[test]
    fn connected_is_healthy() {
        let e = FakeEndpoint::new("10.0.0.5:8080").with_tcp(Ok(()));
        assert_eq!(TcpProbe.check(&settings(250), &e), Ok(()));
        assert_eq!(e.tcp_calls(), vec![250]);
        assert!(e.http_calls().is_empty());
    }

    #[test]
    fn refused_is_unhealthy_with_the_reason() {
        let e = FakeEndpoint::new("10.0.0.5:8080").with_tcp(Err("connection refused".into()));
        assert_eq!(
            TcpProbe.check(&settings(0), &e),
            Err("TCP connect to 10.0.0.5:8080 failed: connection refused".into())
        );
        assert_eq!(e.tcp_calls(), vec![DEFAULT_TIMEOUT_MS]);
    }
}
