//! Native test doubles for plugin logic: run it with plain `cargo test`, no wasm involved.
//!
//! - [`RolloutSim`] drives a [`Strategy`](crate::strategy::Strategy) through a simulated
//!   rollout and reports the outcome, the history and capacity figures.
//! - [`FakeEndpoint`] answers a [`Probe`](crate::probe::Probe) from a script.
//! - [`SoftCrypto`] computes HMAC-SHA256 in plain Rust for a
//!   [`Webhook`](crate::webhook::Webhook).
//! - [`FakeBuildHost`] records a [`Builder`](crate::builder::Builder)'s calls.
//!
//! These are for tests only; on wasm the host provides the real capabilities.

mod fakes;
mod rollout;
mod soft_crypto;

pub use fakes::{BuildCall, FakeBuildHost, FakeEndpoint, HttpGet};
pub use rollout::{Fate, Outcome, Record, Report, RolloutSim};
pub use soft_crypto::SoftCrypto;
