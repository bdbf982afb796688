//! The WebAssembly plugin runtime: loads components implementing the worlds of
//! `wit/types.wit` (`orca:plugin@0.3.0`, and the released `0.1.0` and `0.2.0`: see `v0_1`,
//! `v0_2` and
//! `wit/README.md`) and calls them under a deadline and a memory cap.
//!
//! **Architecture invariant: only this module knows wasmtime.** Its API speaks orca's own
//! types ([`types`]); `bindgen!` runs once per world and supported WIT version (`bindings`
//! for the live 0.3.0, `v0_1` and `v0_2` for the released ones), and no bindgen type leaves this
//! module.
//!
//! # Model
//!
//! - One [`PluginRuntime`] per process: one engine (component model, epoch interruption,
//!   pooling allocator, cranelift `speed`), one epoch ticker thread (1 ms), one linker per
//!   world holding exactly the host interfaces that world imports (under the names of every
//!   supported WIT version).
//! - [`PluginRuntime::load`] checks the bytes are a component, finds its world from its
//!   exports (`plan`, `place`, `check`, `handle`, `build`) and its WIT version from its
//!   interface names ([`SUPPORTED_VERSIONS`]), compiles it once and caches the
//!   artifact in `$ORCA_HOME/plugin-cache/` ([`cache_dir`]); a later load, even by another
//!   process, deserializes it (~100 µs instead of ~10 ms). Imports outside the world (such
//!   as the `wasi:*` interfaces a `wasm32-wasip2` std guest imports) are linked to traps:
//!   a plugin has no filesystem, network, environment or clock but the capabilities its
//!   world grants.
//! - Every call runs in a fresh store (no state survives a call but what a strategy returns
//!   as `plugin-state`), with a deadline ([`RuntimeLimits`]), a memory cap, and the
//!   capabilities of that call only (the probe's endpoint, the build host). Outputs are
//!   validated before the caller sees them. Each call is a `tracing` span
//!   `orca.plugin.call` with fields `plugin`, `world` and `duration`.
//! - Calls block their thread (up to the deadline): async callers use `spawn_blocking`.
//!
//! # Failure policy
//!
//! A plugin failure is a [`PluginError`] naming the plugin; the host never panics because of
//! a plugin. [`PluginError::is_plugin_fault`] tells the plugin's faults (`Timeout`,
//! `MemoryExceeded`, `Trap`, `InvalidOutput`, `Failed`) from the caller's (`WrongWorld`) and
//! the host's (`Cache`, `Engine`). The callers apply this policy:
//!
//! - **strategy** (`plan`): any error halts the rollout and rolls back to the stable
//!   revision; the error is the rollout's status reason. Nothing the plugin asked in that
//!   call is executed (a step is all or nothing).
//! - **placement** (`place`): any error fails the deployment of that instance with the reason
//!   (like "no node fits"); running instances stay (a failed resolution never tears down what
//!   runs). Nodes without a verdict are infeasible.
//! - **probe** (`check`): any error counts as a failed probe, with the error as its reason,
//!   exactly like `Ok(Err(reason))`.
//! - **webhook** (`handle`): `Ok(Err(rejection))` answers the rejection's status (4xx/5xx)
//!   and reason; a `PluginError` answers 500 with the reason (`Invalid` at load: the webhook
//!   is refused at registration). Nothing is redeployed.
//! - **builder** (`build`): any error fails the build with the reason, shown in the build log.
//!
//! `Invalid` is a load-time error (the service or plugin install is refused). `Failed` is a
//! plugin's own `err` answer from `plan`/`place`.

mod bindings;
mod build_host;
mod builtin;
mod cache;
mod endpoint;
mod error;
mod host;
mod inspect;
mod released;
mod runtime;
pub mod types;
mod v0_1;
mod v0_2;
mod validate;

use std::path::{Path, PathBuf};

pub use build_host::BuildHostCap;
pub use builtin::{builtin, builtin_names};
pub use endpoint::{EndpointCap, TcpEndpoint, MAX_BODY};
pub use error::PluginError;
pub use inspect::{inspect, PluginInfo, CURRENT_VERSION, PACKAGE, SUPPORTED_VERSIONS};
pub use runtime::{Plugin, PluginOrigin, PluginRuntime, RuntimeLimits, RuntimeStats};
pub use types::*;
pub use validate::{MAX_ACTIONS, MAX_REASON, MAX_SCALE};

/// The precompiled-component cache of an orca state directory: `$ORCA_HOME/plugin-cache`.
pub fn cache_dir(orca_home: &Path) -> PathBuf {
    orca_home.join("plugin-cache")
}
