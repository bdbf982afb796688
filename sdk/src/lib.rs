//! Write orca plugins in Rust: deployment strategies, placement policies, health probes,
//! webhook handlers and build pipelines, compiled to WebAssembly components that orca loads.
//!
//! # Map of the crate
//!
//! - [`types`]: the data plugins receive and return (`RolloutState`, `Step`, `Node`,
//!   `Verdict`...), plain Rust types mirroring the WIT package `orca:plugin@0.2.0`.
//! - One module per extension point (WIT world), each with its trait and export macro:
//!   [`strategy`] ([`Strategy`](strategy::Strategy), [`export_strategy!`]),
//!   [`placement`] ([`Placement`](placement::Placement), [`export_placement!`]),
//!   [`probe`] ([`Probe`](probe::Probe) + the [`Endpoint`](probe::Endpoint) capability,
//!   [`export_probe!`]),
//!   [`webhook`] ([`Webhook`](webhook::Webhook) + the [`Crypto`](webhook::Crypto) capability,
//!   [`export_webhook!`]),
//!   [`builder`] ([`Builder`](builder::Builder) + the [`BuildHost`](builder::BuildHost)
//!   capability, [`export_builder!`]).
//! - [`log`]: logging through the host.
//! - [`CallArena`]: an opt-in bump allocator for plugins that allocate little per call.
//! - [`testing`]: native test doubles — [`RolloutSim`](testing::RolloutSim),
//!   [`FakeEndpoint`](testing::FakeEndpoint), [`SoftCrypto`](testing::SoftCrypto),
//!   [`FakeBuildHost`](testing::FakeBuildHost).
//!
//! # Writing a plugin
//!
//! A plugin is a `cdylib` crate with one type implementing one trait, registered with the
//! matching macro:
//!
//! ```
//! use orca_plugin_sdk::strategy::Strategy;
//! use orca_plugin_sdk::types::{Action, RolloutState, Step, Traffic};
//!
//! /// Replaces every instance at once, as soon as the candidates are ready.
//! #[derive(Default)]
//! pub struct Recreate;
//!
//! impl Strategy for Recreate {
//!     fn plan(&self, state: &RolloutState) -> Result<Step, String> {
//!         let replicas = state.replicas();
//!         if (state.candidate.len() as u32) < replicas {
//!             return Ok(Step::of([Action::ScaleCandidate(replicas)]));
//!         }
//!         if state.candidate_failed() > 0 {
//!             return Ok(Step::of([Action::Rollback("a candidate failed".into())]));
//!         }
//!         if state.candidate_ready() < replicas {
//!             return Ok(Step::new()); // called again when an instance settles
//!         }
//!         Ok(Step::of([
//!             Action::SetTraffic(Traffic::ALL_CANDIDATE),
//!             Action::ScaleStable(0),
//!             Action::Promote,
//!             Action::Done,
//!         ]))
//!     }
//! }
//!
//! orca_plugin_sdk::export_strategy!(Recreate);
//! # fn main() {}
//! ```
//!
//! Plugins are **stateless across calls**: the export glue builds the type with
//! `Default::default()` for every call, so keep nothing in fields that must outlive a call.
//! A strategy remembers things between calls in [`Step::plugin_state`](types::Step) bytes,
//! which come back as `RolloutState::plugin_state`. Time comes only from the host
//! (`RolloutState::now_ms`); there is no randomness and no ambient I/O — only the
//! capabilities a world grants.
//!
//! # Testing natively
//!
//! The export macros emit the wasm exports only when compiling for wasm, so the same crate's
//! unit tests run natively with `cargo test`, against the doubles in [`testing`]:
//!
//! ```
//! # use orca_plugin_sdk::strategy::Strategy;
//! # use orca_plugin_sdk::types::{Action, RolloutState, Step};
//! # #[derive(Default)] struct Recreate;
//! # impl Strategy for Recreate {
//! #     fn plan(&self, s: &RolloutState) -> Result<Step, String> {
//! #         if s.candidate_failed() > 0 { return Ok(Step::of([Action::Rollback("a candidate failed".into())])); }
//! #         if s.candidate.is_empty() { return Ok(Step::of([Action::ScaleCandidate(s.replicas())])); }
//! #         Ok(Step::new())
//! #     }
//! # }
//! use orca_plugin_sdk::testing::{Outcome, RolloutSim};
//!
//! let report = RolloutSim::new(Recreate).replicas(3).fail_candidates(true).run_to_end();
//! assert_eq!(report.outcome, Outcome::RolledBack { reason: "a candidate failed".into() });
//! ```
//!
//! # Building the component
//!
//! `cargo build --release --target wasm32-wasip2` gives a component that imports a few
//! `wasi:cli`/`wasi:io` interfaces; with
//! `CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-component-ld cargo build --release
//! --target wasm32-unknown-unknown` it imports only `orca:plugin` interfaces. The SDK's
//! README walks through the whole path to a deployed strategy.

#![deny(missing_docs)]

// Lets paths generated for plugin crates (`orca_plugin_sdk::__bindings::...`) resolve inside
// this crate too.
extern crate self as orca_plugin_sdk;

mod arena;
pub mod builder;
pub mod placement;
pub mod probe;
pub mod strategy;
pub mod testing;
pub mod types;
pub mod webhook;

mod params;

#[doc(hidden)]
#[path = "bindings.rs"]
pub mod __bindings;

pub use arena::CallArena;
pub use params::ParamError;
pub use types::Level;

/// Logs `message` at `level`: through the host's `logging` import on wasm (the host tags the
/// line with the plugin and the call), to standard error natively (visible with
/// `cargo test -- --nocapture`).
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    __bindings::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level}] {message}");
}
