//! `http-probe`: an HTTP GET of `settings.path` (default `/`) on the probed instance, through
//! the host's endpoint capability, with `settings.timeout_ms`. A status from 200 to 399 is
//! healthy; any other status is unhealthy (`GET /healthz returned 503`), and so is a transport
//! error (`GET /healthz failed: connection refused`).

#![deny(unsafe_code)]

use orca_plugin_sdk::probe::{Endpoint, Probe};
use orca_plugin_sdk::types::{Pair, ProbeSettings};

/// The timeout used when the settings give none (0).
pub const DEFAULT_TIMEOUT_MS: u32 = 1_000;

/// The HTTP probe.
#[derive(Default)]
pub struct HttpProbe;

impl Probe for HttpProbe {
    fn check(&self, settings: &ProbeSettings, endpoint: &dyn Endpoint) -> Result<(), String> {
        let path = match settings.path.as_deref().map(str::trim) {
            None | Some("") => "/".to_string(),
            Some(p) if p.starts_with('/') => p.to_string(),
            Some(p) => format!("/{p}"),
        };
        let timeout = match settings.timeout_ms {
            0 => DEFAULT_TIMEOUT_MS,
            t => t,
        };
        let headers = [Pair::new("User-Agent", "orca-http-probe")];
        match endpoint.http_get(&path, &headers, timeout) {
            Ok(response) if (200..400).contains(&response.status) => Ok(()),
            Ok(response) => Err(format!("GET {path} returned {}", response.status)),
            Err(e) => Err(format!("GET {path} failed: {e}")),
        }
    }
}

orca_plugin_sdk::export_probe!(HttpProbe);

#[cfg(test)]
mod tests {
    use super::*;
    use orca_plugin_sdk::testing::FakeEndpoint;
    use orca_plugin_sdk::types::HttpResponse;

    fn settings(path: Option<&str>, timeout_ms: u32) -> ProbeSettings {
        ProbeSettings {
            path: path.map(Into::into),
            timeout_ms,
            params: Vec::new(),
        }
    }

    #[test]
    fn success_and_redirects_are_healthy() {
        for status in [200, 204, 301, 399] {
            let e = FakeEndpoint::new("10.0.0.5:8080").with_http(Ok(HttpResponse::status(status)));
            assert_eq!(
                HttpProbe.check(&settings(Some("/healthz"), 500), &e),
                Ok(())
            );
            let calls = e.http_calls();
            assert_eq!(calls.len(), 1);
            assert_eq!(calls[0].path, "/healthz");
            assert_eq!(calls[0].timeout_ms, 500);
        }
    }

    #[test]
    fn other_statuses_are_unhealthy() {
        for status in [100, 400, 404, 500, 503] {
            let e = FakeEndpoint::new("10.0.0.5:8080").with_http(Ok(HttpResponse::status(status)));
            assert_eq!(
                HttpProbe.check(&settings(Some("/x"), 500), &e),
                Err(format!("GET /x returned {status}"))
            );
        }
    }

    #[test]
    fn transport_errors_are_unhealthy() {
        let e = FakeEndpoint::new("10.0.0.5:8080").with_http(Err("connection refused".into()));
        assert_eq!(
            HttpProbe.check(&settings(None, 500), &e),
            Err("GET / failed: connection refused".into())
        );
    }

    #[test]
    fn defaults() {
        let e = FakeEndpoint::new("10.0.0.5:8080").with_http(Ok(HttpResponse::status(200)));
        assert_eq!(HttpProbe.check(&settings(None, 0), &e), Ok(()));
        assert_eq!(HttpProbe.check(&settings(Some("ready"), 0), &e), Ok(()));
        let calls = e.http_calls();
        assert_eq!(calls[0].path, "/");
        assert_eq!(calls[0].timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(calls[1].path, "/ready");
    }
}
