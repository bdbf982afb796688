//! Records that cannot be decoded: each affects only its own service. Lists skip them, and
//! the store remembers them (table, key, reason) so status and health can name them; each is
//! logged once, when first seen.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::{Store, StoreError};

/// One undecodable record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenRecord {
    /// Its table.
    pub table: String,
    /// Its key.
    pub key: String,
    /// Why it cannot be decoded (never a value).
    pub reason: String,
}

/// The broken records seen, by (table, key).
#[derive(Debug, Default, Clone)]
pub(crate) struct Broken(Arc<Mutex<BTreeMap<(String, String), String>>>);

impl Broken {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store {
    /// Remembers `err` if it is a corrupt record (logging it the first time); returns it.
    pub(crate) fn note(&self, err: StoreError) -> StoreError {
        if let StoreError::Corrupt { table, key, reason } = &err {
            let mut map = self.broken.lock();
            let k = (table.to_string(), key.clone());
            if !map.contains_key(&k) {
                tracing::error!(table = %table, key = %key, reason = %reason, "corrupt store record: only its own service is affected");
            }
            map.insert(k, reason.clone());
        }
        err
    }

    /// Forgets a record that decoded (or was rewritten or removed).
    pub(crate) fn healed(&self, table: &str, key: &str) {
        let mut map = self.broken.lock();
        if map.is_empty() {
            return; // the usual case: nothing is broken, nothing to allocate a key for
        }
        if map.remove(&(table.to_string(), key.to_string())).is_some() {
            tracing::info!(table, key, "store record readable again");
        }
    }

    /// Replaces what is known broken in `table` after a full scan of it.
    pub(crate) fn scanned(&self, table: &str, broken: Vec<(String, String)>) {
        let mut map = self.broken.lock();
        let new: Vec<_> = broken
            .iter()
            .filter(|(k, _)| !map.contains_key(&(table.to_string(), k.clone())))
            .collect();
        for (key, reason) in new {
            tracing::error!(table, key = %key, reason = %reason, "corrupt store record: only its own service is affected");
        }
        map.retain(|(t, _), _| t != table);
        for (key, reason) in broken {
            map.insert((table.to_string(), key), reason);
        }
    }

    /// Every record known to be undecodable, by table and key.
    pub fn broken_records(&self) -> Vec<BrokenRecord> {
        self.broken
            .lock()
            .iter()
            .map(|((table, key), reason)| BrokenRecord {
                table: table.clone(),
                key: key.clone(),
                reason: reason.clone(),
            })
            .collect()
    }

    /// Test support: overwrites one raw value in `table` (`services`, `revisions` or
    /// `rollouts`) — how the end-to-end tests make a corrupt record in a real store file.
    #[doc(hidden)]
    pub fn write_raw_for_tests(
        &self,
        table: &str,
        key: &str,
        value: &[u8],
    ) -> Result<(), StoreError> {
        let def: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new(table);
        let txn = self.db().begin_write()?;
        txn.open_table(def)?.insert(key, value)?;
        txn.commit()?;
        Ok(())
    }
}
