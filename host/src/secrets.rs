//! Secret references in a service's environment: checking them at deploy, resolving them at start.
//!
//! Values are decrypted only here, only into the environment handed to the container runtime;
//! they never enter logs, labels, status or API responses.

use std::cell::RefCell;
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
    let mut out = BTreeMap::new();
    for (var, value) in &spec.env {
        let failure: RefCell<Option<ResolveError>> = RefCell::new(None);
        let resolved =
            orca_config::substitute_secrets(value, |key| match store.get_secret(project, key) {
                Ok(Some(sealed)) => match secrets.open(project, key, &sealed) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        failure.borrow_mut().get_or_insert(ResolveError::Store {
                            service: spec.name.clone(),
                            key: key.to_string(),
                            reason: e.to_string(),
                        });
                        None
                    }
                },
                Ok(None) => None,
                Err(e) => {
                    failure.borrow_mut().get_or_insert(ResolveError::Store {
                        service: spec.name.clone(),
                        key: key.to_string(),
                        reason: e.to_string(),
                    });
                    None
                }
            });
        if let Some(f) = failure.into_inner() {
            return Err(f);
        }
        match resolved {
            Ok(v) => {
                out.insert(var.clone(), v);
            }
            Err(key) => {
                return Err(ResolveError::Missing {
                    service: spec.name.clone(),
                    var: var.clone(),
                    key,
                    project: project.to_string(),
                })
            }
        }
    }
    Ok(out)
}
