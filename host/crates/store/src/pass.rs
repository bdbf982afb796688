//! The controller's read of one pass: services, each one's current revision, rollouts and
//! pending operator requests, all from one read transaction, so a pass decides on one
//! consistent moment of the store (a deploy or request committed meanwhile is seen whole
//! by the next pass, never half).

use std::collections::HashMap;

use redb::ReadableDatabase;

use crate::requests::{self, OperatorRequest};
use crate::revisions::{self, RevisionRecord};
use crate::rollouts::{self, RolloutRecord};
use crate::services::{self, ServiceRecord};
use crate::{Store, StoreError};

/// What one pass reads from the store.
#[derive(Debug, Default)]
pub struct PassRead {
    /// Every decodable service record, sorted by `project/name`.
    pub services: Vec<ServiceRecord>,
    /// The current revision of each service, by `project/name`: `Ok(None)` when the record
    /// is missing, `Err` (the reason) when it cannot be decoded — that affects only its own
    /// service.
    pub current: HashMap<String, Result<Option<RevisionRecord>, String>>,
    /// Every decodable rollout record, by `(project, name)`.
    pub rollouts: Vec<((String, String), RolloutRecord)>,
    /// Every pending operator request, by service and order.
    pub requests: Vec<((String, String), OperatorRequest)>,
}

impl Store {
    /// Reads everything a controller pass needs from the store in one read transaction.
    pub fn read_for_pass(&self) -> Result<PassRead, StoreError> {
        let txn = self.db().begin_read()?;
        let services = services::list_in(self, &txn)?;
        let table = revisions::open_in(&txn)?;
        let mut current = HashMap::with_capacity(services.len());
        for s in &services {
            let found =
                revisions::read_in(self, &table, s.spec.project(), &s.spec.name, s.revision)
                    .map_err(|e| e.to_string());
            current.insert(s.spec.key(), found);
        }
        Ok(PassRead {
            rollouts: rollouts::list_in(self, &txn)?,
            requests: requests::pending_in(&txn)?,
            services,
            current,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::{spec, store};

    #[test]
    fn one_read_holds_services_their_current_revisions_rollouts_and_requests() {
        let (_dir, store) = store();
        let items = vec![crate::DeployItem {
            spec: spec("shop", "web", "web:1", 2),
            sealed_env: b"sealed".to_vec(),
            fingerprint: "fp:web:1".into(),
            commit: None,
        }];
        store.apply_deploy(&items, 1).unwrap();
        let read = store.read_for_pass().unwrap();
        assert_eq!(read.services.len(), 1);
        let current = read.current["shop/web"].as_ref().unwrap().as_ref().unwrap();
        assert_eq!(current.number, read.services[0].revision);
        assert!(read.rollouts.is_empty());
        assert!(read.requests.is_empty());
    }
}
