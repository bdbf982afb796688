//! Secret references in a service's environment: checking them at deploy, resolving them at start.
//!
//! Values are decrypted only here, only into the environment handed to the container runtime;
//! they never enter logs, labels, status or API responses.

use std::collections::BTreeMap;

use orca_config::ServiceSpec;
use orca_store::{SecretBox, Store};

/// Why an environment could not be resolved. Names the key, never a value.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// `${secrets.KEY}` with no such secret in the project.
    #[error("service \"{service}\": env {var} references secret \"{key}\", which is not set in project \"{project}\" (set it with: orca secrets set {key} <value> --project {project})")]
    Missing {
        /// Service name.
        service: String,
        /// Environment variable.
        var: String,
        /// Secret key.
        key: String,
        /// Project.
        project: String,
    },
    /// The store or the cipher failed.
    #[error("service \"{service}\": reading secret \"{key}\": {reason}")]
    Store {
        /// Service name.
        service: String,
        /// Secret key.
        key: String,
        /// What failed.
        reason: String,
    },
}

/// Returns the environment with every `${secrets.KEY}` replaced by the project's secret.
pub fn resolve_env(
    store: &Store,
    secrets: &SecretBox,
    spec: &ServiceSpec,
) -> Result<BTreeMap<String, String>, ResolveError> {
    let project = spec.project();
    let store_err = |key: &str, reason: String| ResolveError::Store {
        service: spec.name.clone(),
        key: key.to_string(),
        reason,
    };
    let mut out = BTreeMap::new();
    for (var, value) in &spec.env {
        // Fetch every referenced secret first, so store and cipher errors are reported as such.
        let mut values = BTreeMap::new();
        let keys = orca_config::secret_refs(value).map_err(|e| store_err(var, e.to_string()))?;
        for key in keys {
            let sealed = store
                .get_secret(project, &key)
                .map_err(|e| store_err(&key, e.to_string()))?;
            if let Some(sealed) = sealed {
                let plain = secrets
                    .open(project, &key, &sealed)
                    .map_err(|e| store_err(&key, e.to_string()))?;
                values.insert(key, plain);
            }
        }
        let resolved = orca_config::substitute_secrets(value, |key| values.get(key).cloned())
            .map_err(|key| ResolveError::Missing {
                service: spec.name.clone(),
                var: var.clone(),
                key,
                project: project.to_string(),
            })?;
        out.insert(var.clone(), resolved);
    }
    Ok(out)
}
