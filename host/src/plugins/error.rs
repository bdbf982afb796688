//! `PluginError`: every way loading or calling a plugin can fail, each naming the plugin.

use std::time::Duration;

use super::types::World;

/// A failure of the plugin runtime or of a plugin. The variants say who failed: the input
/// (`Invalid`), the plugin (`Timeout`, `MemoryExceeded`, `Trap`, `InvalidOutput`, `Failed`),
/// the caller (`WrongWorld`) or the host (`Cache`, `Engine`).
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// Not a component, no known world, or it does not compile / type-check against the world.
    #[error("invalid plugin {origin}: {reason}")]
    Invalid { origin: String, reason: String },
    /// The call ran past its deadline and was interrupted.
    #[error("plugin {plugin} exceeded its deadline of {deadline:?}")]
    Timeout { plugin: String, deadline: Duration },
    /// The plugin tried to grow its memory past the cap and died of it.
    #[error("plugin {plugin} exceeded its memory limit of {limit} bytes")]
    MemoryExceeded { plugin: String, limit: usize },
    /// The plugin trapped (panic, `unreachable`, a call to an import its world does not grant...).
    #[error("plugin {plugin} trapped: {reason}")]
    Trap { plugin: String, reason: String },
    /// The plugin answered, but the host's validation of the answer rejected it.
    #[error("plugin {plugin} returned invalid output: {reason}")]
    InvalidOutput { plugin: String, reason: String },
    /// The plugin ran fine and reported an error itself (the `err` of `plan`/`place`).
    #[error("plugin {plugin} failed: {reason}")]
    Failed { plugin: String, reason: String },
    /// A method of one world was called on a plugin of another.
    #[error("plugin {plugin} implements the {found} world, not {expected}")]
    WrongWorld {
        plugin: String,
        expected: World,
        found: World,
    },
    /// The precompiled-component cache directory is unusable.
    #[error("plugin cache: {reason}")]
    Cache { reason: String },
    /// The wasmtime engine could not be configured (host problem, not a plugin's).
    #[error("plugin engine: {reason}")]
    Engine { reason: String },
}

impl PluginError {
    /// The plugin's own fault (as opposed to the caller's or the host's): a strategy that
    /// fails this way is halted and rolled back.
    pub fn is_plugin_fault(&self) -> bool {
        matches!(
            self,
            PluginError::Timeout { .. }
                | PluginError::MemoryExceeded { .. }
                | PluginError::Trap { .. }
                | PluginError::InvalidOutput { .. }
                | PluginError::Failed { .. }
        )
    }
}
