//! Health probes (the `probe` world): decide whether one instance is healthy, through an
//! endpoint capability bound to that instance only.

use std::marker::PhantomData;

use crate::types::{HttpResponse, Pair, ProbeSettings};

/// The instance being probed, as the host exposes it: the plugin has no network of its own,
/// only these calls on this one address.
///
/// On wasm it is the host's `endpoint` import; in native tests use
/// [`FakeEndpoint`](crate::testing::FakeEndpoint).
pub trait Endpoint {
    /// `ip:port` of the instance.
    fn address(&self) -> String;
    /// HTTP GET of `path` on the instance (body truncated to 64 KiB).
    fn http_get(
        &self,
        path: &str,
        headers: &[Pair],
        timeout_ms: u32,
    ) -> Result<HttpResponse, String>;
    /// TCP connect to the instance's port.
    fn tcp_connect(&self, timeout_ms: u32) -> Result<(), String>;
}

/// A health probe: `Ok(())` means healthy, `Err(reason)` unhealthy (the reason is shown to
/// operators).
///
/// Plugins are stateless: the export glue builds the type with `Default::default()` for every
/// check. Register it with [`export_probe!`](crate::export_probe).
pub trait Probe {
    /// Checks the instance behind `endpoint`.
    fn check(&self, settings: &ProbeSettings, endpoint: &dyn Endpoint) -> Result<(), String>;
}

/// The generated `Guest` implementation behind [`export_probe!`](crate::export_probe).
#[doc(hidden)]
pub struct __Export<T>(PhantomData<T>);

impl<T: Probe + Default> crate::__bindings::probe::Guest for __Export<T> {
    fn check(settings: crate::__bindings::wit::ProbeSettings) -> Result<(), String> {
        T::default().check(&settings.into(), &crate::__bindings::host::HostEndpoint)
    }
}

/// Exports a [`Probe`] as the component's `check` function.
///
/// The type must implement [`Probe`] and [`Default`]; see
/// [`export_strategy!`](crate::export_strategy) for how the export macros behave.
#[macro_export]
macro_rules! export_probe {
    ($ty:ty) => {
        const _: () = {
            fn __orca_requires_probe_and_default<
                T: $crate::probe::Probe + ::core::default::Default,
            >() {
            }
            let _ = __orca_requires_probe_and_default::<$ty>;
        };
        #[cfg(target_family = "wasm")]
        #[allow(unsafe_code)]
        const _: () = {
            type __OrcaProbeExport = $crate::probe::__Export<$ty>;
            $crate::__bindings::probe::export!(
                __OrcaProbeExport with_types_in $crate::__bindings::probe
            );
        };
    };
}
