//! Webhook handlers (the `webhook` world): verify a forge's delivery and say what it asks for.

use std::marker::PhantomData;

use crate::types::{Hook, Rejection, WebhookOutcome, WebhookRequest};

/// Cryptographic helpers computed by the host, so plugins carry no crypto code.
///
/// On wasm it is the host's `crypto` import; in native tests use
/// [`SoftCrypto`](crate::testing::SoftCrypto).
pub trait Crypto {
    /// HMAC-SHA256 of `data` under `key` (32 bytes).
    fn hmac_sha256(&self, key: &[u8], data: &[u8]) -> Vec<u8>;
    /// Equality of two byte strings in time independent of where they differ. Compare
    /// signatures with this, never with `==`.
    fn constant_time_eq(&self, a: &[u8], b: &[u8]) -> bool;
}

/// A forge's webhook handler.
///
/// The host passes the raw delivery and every registered [`Hook`]; the handler finds the hook
/// the payload is for, verifies the signature with its secret (through `crypto`), and answers
/// with a [`WebhookOutcome`], or a [`Rejection`] (401 for a bad signature, 400 for a malformed
/// payload) that becomes the HTTP answer.
///
/// Plugins are stateless: the export glue builds the type with `Default::default()` for every
/// delivery. Register it with [`export_webhook!`](crate::export_webhook).
pub trait Webhook {
    /// Verifies and interprets one delivery.
    fn handle(
        &self,
        request: &WebhookRequest,
        hooks: &[Hook],
        crypto: &dyn Crypto,
    ) -> Result<WebhookOutcome, Rejection>;
}

/// The generated `Guest` implementation behind [`export_webhook!`](crate::export_webhook).
#[doc(hidden)]
pub struct __Export<T>(PhantomData<T>);

impl<T: Webhook + Default> crate::__bindings::webhook::Guest for __Export<T> {
    fn handle(
        request: crate::__bindings::wit::WebhookRequest,
        hooks: Vec<crate::__bindings::wit::Hook>,
    ) -> Result<crate::__bindings::wit::WebhookOutcome, crate::__bindings::wit::Rejection> {
        let hooks: Vec<Hook> = hooks.into_iter().map(Into::into).collect();
        T::default()
            .handle(
                &request.into(),
                &hooks,
                &crate::__bindings::host::HostCrypto,
            )
            .map(Into::into)
            .map_err(Into::into)
    }
}

/// Exports a [`Webhook`] as the component's `handle` function.
///
/// The type must implement [`Webhook`] and [`Default`]; see
/// [`export_strategy!`](crate::export_strategy) for how the export macros behave.
#[macro_export]
macro_rules! export_webhook {
    ($ty:ty) => {
        const _: () = {
            fn __orca_requires_webhook_and_default<
                T: $crate::webhook::Webhook + ::core::default::Default,
            >() {
            }
            let _ = __orca_requires_webhook_and_default::<$ty>;
        };
        #[cfg(target_family = "wasm")]
        #[allow(unsafe_code)]
        const _: () = {
            type __OrcaWebhookExport = $crate::webhook::__Export<$ty>;
            $crate::__bindings::webhook::export!(
                __OrcaWebhookExport with_types_in $crate::__bindings::webhook
            );
        };
    };
}
