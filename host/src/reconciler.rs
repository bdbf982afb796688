//! The reconciler lives in the decision core (`orca_core::reconcile`); re-exported here for the host's modules.

pub use orca_core::reconcile::*;
