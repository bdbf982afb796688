//! The error type of the container-runtime port.

/// Why a [`ContainerRuntime`](crate::ContainerRuntime) call failed.
///
/// Every variant carries owned strings only, so errors can be cloned, compared in tests and
/// sent across the agent protocol without losing their meaning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RuntimeError {
    /// The engine cannot be reached (socket missing, daemon down or restarting, stream cut).
    /// Callers retry later; nothing about the request itself was wrong.
    #[error("container engine unavailable: {reason}")]
    Unavailable { reason: String },

    /// The image is not present locally and pulling it failed or timed out.
    #[error("image {image:?} is not present locally and could not be pulled: {reason}")]
    ImageNotFound { image: String, reason: String },

    /// A container with this name already exists.
    #[error("a container named {name:?} already exists")]
    Conflict { name: String },

    /// No container with this id or name exists.
    #[error("container {id:?} not found")]
    NotFound { id: String },

    /// An image build failed: `step` is the build step that failed (`Step 2/3 : COPY app /`)
    /// when the engine named one, `reason` the engine's message.
    #[error("image build failed at {step}: {reason}")]
    Build { step: String, reason: String },

    /// The engine refused or failed an operation for another reason.
    #[error("container engine failed to {op}: {reason}")]
    Engine { op: String, reason: String },
}

impl RuntimeError {
    /// Whether retrying later may succeed without changing the request.
    pub fn is_transient(&self) -> bool {
        matches!(self, RuntimeError::Unavailable { .. })
    }
}
