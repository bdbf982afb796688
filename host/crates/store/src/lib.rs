//! orca's persistent state: one redb file (`~/.orca/cluster.db`), the secrets cipher and API
//! token hashing.
//!
//! # Map
//!
//! - [`Store`] (this file) — the cloneable handle over the redb database; `open` creates the
//!   file and every table.
//! - [`services`] — owns table `services`: desired state per service ([`ServiceRecord`]),
//!   the revision rule, deploy ([`DeployItem`]) / rollback / scale / stop.
//! - [`revisions`] — owns table `revisions`: the last [`REVISIONS_KEPT`] deployed versions
//!   of each service ([`RevisionRecord`]: spec, sealed environment, fingerprint), written in
//!   the same transaction as the service record by `services`.
//! - [`rollouts`] — owns table `rollouts`: the persisted state of each service's rollout
//!   ([`RolloutRecord`], [`RolloutPhase`]); its stable/candidate revisions are never pruned.
//! - [`requests`] — owns table `operator_requests`: promote/rollback requests
//!   ([`OperatorRequest`]) recorded by the API, consumed by the controller's
//!   [`Store::step_rollout`] in the transaction of the step they cause.
//! - [`tokens`] — owns table `tokens`: hashed API tokens ([`StoredToken`]), token generation
//!   and the constant-time verifier [`TokenSet`].
//! - [`secrets`] — owns table `secrets` (sealed values) and the cipher [`SecretBox`]
//!   (XChaCha20-Poly1305 under a key file) with env fingerprinting.
//! - [`certs`] — owns tables `certificates` ([`CertificateRecord`]: PEM chain, sealed
//!   private key), `acme_orders` ([`AcmeOrderRecord`]: failures, the CA's reason, next
//!   attempt) and `acme_accounts` (sealed ACME account credentials).
//! - [`webhooks`] — owns tables `webhooks` ([`WebhookRecord`], secrets sealed), `deliveries`
//!   (the recent delivery log, [`DeliveryRecord`]) and `delivery_ids` (dedupe of redeliveries).
//! - [`builds`] — owns table `builds`: each service's recent image builds ([`BuildRecord`])
//!   with their output.
//! - [`events`] — owns tables `events` (the bounded ring of the event stream,
//!   [`EventRecord`], newest [`EVENTS_KEPT`]) and `service_events` (each service's index,
//!   bounded to [`EVENTS_PER_SERVICE_KEPT`]).
//! - `record` — JSON encoding with a `schema` version on every value; decode failures become
//!   [`StoreError::Corrupt`].
//! - [`error`] — [`StoreError`].
//!
//! # Invariants
//!
//! - **One transaction per write.** Every public write method opens one redb write
//!   transaction and commits it once; a failure anywhere drops the transaction, so a request
//!   either happens entirely or not at all.
//! - **No clock, no randomness in state transitions.** Timestamps (`now_unix`) and token
//!   names come from the caller, so transitions are replayable and testable. The only
//!   randomness lives in [`secrets`] (keys, nonces) and [`tokens::generate_token`].
//! - **One owner per table.** Only the module named above opens its table; a write that
//!   spans tables (a deploy writes `services` and `revisions`, reading `rollouts`) calls the
//!   owning modules' crate-private helpers on one shared write transaction.
//! - **Versioned records.** Values are JSON with a `schema` field; a record this version
//!   cannot read is reported as corrupt, never misread and never a panic.
//! - **No secret material in output.** Secret values and token strings never appear in
//!   `Debug`/`Display` output, logs or error messages.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::Database;

pub mod backup;
mod broken;
pub mod builds;
pub mod certs;
pub mod error;
pub mod events;
pub mod meta;
pub mod nodes;
pub mod pass;
mod record;
pub mod requests;
pub mod revisions;
pub mod rollouts;
pub mod secrets;
pub mod services;
pub mod tokens;
pub mod webhooks;

pub use broken::BrokenRecord;
pub use builds::{BuildRecord, BuildStatus};
pub use certs::{AcmeOrderRecord, CertSource, CertificateRecord, ACME_SEAL_SCOPE, TLS_SEAL_SCOPE};
pub use error::StoreError;
pub use events::{EventQuery, EventRecord, EVENTS_KEPT, EVENTS_PER_SERVICE_KEPT};
pub use nodes::{CaRecord, JoinRefusal, JoinTokenRecord, NodeRecord};
pub use pass::PassRead;
pub use requests::{OperatorRequest, RequestKind};
pub use revisions::{RevisionRecord, REVISIONS_KEPT};
pub use rollouts::{RolloutPhase, RolloutRecord, PLUGIN_STATE_MAX};
pub use secrets::{SecretBox, SecretMeta};
pub use services::{DeployItem, DeployOutcome, DesiredState, ServiceRecord};
pub use tokens::{generate_token, hash_token, StoredToken, TokenSet};
pub use webhooks::{DeliveryRecord, WebhookRecord};

/// A handle to orca's state database. Cloning is cheap (the database sits behind an `Arc`);
/// clones share one redb `Database`, which serializes writers and lets readers run
/// concurrently with them.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    broken: broken::Broken,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens the database at `path`, creating its parent directory, the file and all tables
    /// if they do not exist yet.
    ///
    /// Fails with [`StoreError::Locked`] if another process holds the database open, and with
    /// [`StoreError::Unreadable`] if the file is not a readable database.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::Io {
                context: format!("creating data directory {}", parent.display()),
                source,
            })?;
        }
        // `Database::create` opens an existing file or creates a new one.
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
                path: path.to_owned(),
            },
            redb::DatabaseError::Storage(redb::StorageError::Io(source))
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                StoreError::Io {
                    context: format!("opening store {}", path.display()),
                    source,
                }
            }
            other => StoreError::Unreadable {
                path: path.to_owned(),
                reason: other.to_string(),
            },
        })?;
        // Create every table up front so read transactions never meet a missing table.
        let txn = db.begin_write()?;
        services::create_table(&txn)?;
        tokens::create_table(&txn)?;
        secrets::create_table(&txn)?;
        revisions::create_table(&txn)?;
        rollouts::create_table(&txn)?;
        requests::create_table(&txn)?;
        certs::create_table(&txn)?;
        webhooks::create_table(&txn)?;
        builds::create_table(&txn)?;
        meta::create_table(&txn)?;
        nodes::create_table(&txn)?;
        events::create_table(&txn)?;
        txn.commit()?;
        tracing::debug!(path = %path.display(), "orca.store.open");
        Ok(Store {
            db: Arc::new(db),
            path: Arc::new(path.to_owned()),
            broken: broken::Broken::default(),
        })
    }

    /// The path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Store>();
        check::<SecretBox>();
        check::<TokenSet>();
    }

    #[test]
    fn open_creates_parent_directory_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/deeper/cluster.db");
        let store = Store::open(&path).unwrap();
        assert!(path.is_file());
        assert_eq!(store.path(), path);
        assert!(store.list_services().unwrap().is_empty());
        assert!(store.list_tokens().unwrap().is_empty());
        assert!(store.list_rollouts().unwrap().is_empty());
        assert!(store.list_revisions("web", "api").unwrap().is_empty());
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use crate::Store;
    use orca_config::ServiceSpec;

    /// A fresh store in a temporary directory (kept alive by the returned guard).
    pub(crate) fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cluster.db")).unwrap();
        (dir, store)
    }

    /// A minimal service spec, built through serde so it tracks orca_config's schema.
    pub(crate) fn spec(project: &str, name: &str, image: &str, replicas: u32) -> ServiceSpec {
        serde_json::from_value(serde_json::json!({
            "name": name,
            "project": project,
            "image": image,
            "replicas": replicas,
        }))
        .unwrap()
    }
}
