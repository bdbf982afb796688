//! The `meta` table: facts about the store itself, today the cluster id (random, made once at
//! first start, passed in by the caller so the store itself draws no randomness).

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::{Store, StoreError};

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const CLUSTER_ID: &str = "cluster_id";

pub(crate) fn create_table(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(META)?;
    Ok(())
}

impl Store {
    /// The cluster id: the one stored, or `fresh` stored now if there is none yet (first
    /// start). Containers and networks carry it; a server touches only its own.
    pub fn cluster_id_or_init(&self, fresh: &str) -> Result<String, StoreError> {
        {
            let txn = self.db().begin_read()?;
            let table = txn.open_table(META)?;
            if let Some(id) = table.get(CLUSTER_ID)? {
                return Ok(id.value().to_string());
            }
        }
        let _span = tracing::debug_span!("orca.store.write", op = "cluster_id").entered();
        let txn = self.db().begin_write()?;
        let id = {
            let mut table = txn.open_table(META)?;
            let existing = table.get(CLUSTER_ID)?.map(|v| v.value().to_string());
            match existing {
                Some(id) => id,
                None => {
                    table.insert(CLUSTER_ID, fresh)?;
                    fresh.to_string()
                }
            }
        };
        txn.commit()?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cluster_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let store = crate::Store::open(&path).unwrap();
        assert_eq!(store.cluster_id_or_init("aaaa").unwrap(), "aaaa");
        assert_eq!(store.cluster_id_or_init("bbbb").unwrap(), "aaaa");
        drop(store);
        let store = crate::Store::open(&path).unwrap();
        assert_eq!(store.cluster_id_or_init("cccc").unwrap(), "aaaa");
    }
}
