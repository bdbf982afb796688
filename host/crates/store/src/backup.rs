//! A consistent copy of the whole store for backups: one read transaction copied, table by
//! table, into a new redb file (values stay as they are on disk, secrets sealed).

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{Store, StoreError};

/// Copies every table of `def` from `read` into `write`; returns the rows copied.
fn copy<K: redb::Key + 'static, V: redb::Value + 'static>(
    read: &redb::ReadTransaction,
    write: &redb::WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<u64, StoreError> {
    let from = read.open_table(def)?;
    let mut to = write.open_table(def)?;
    let mut rows = 0;
    for row in from.iter()? {
        let (k, v) = row?;
        to.insert(k.value(), v.value())?;
        rows += 1;
    }
    Ok(rows)
}

impl Store {
    /// Writes a consistent copy of the database (one read transaction: every table as of
    /// one commit) to a new file at `path`, which must not exist. Returns the rows copied.
    /// Only this crate knows the tables; the copy opens with [`Store::open`].
    pub fn copy_to(&self, path: &Path) -> Result<u64, StoreError> {
        if path.exists() {
            return Err(StoreError::Io {
                context: format!("copying the store to {}", path.display()),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the target file exists",
                ),
            });
        }
        let read = self.db().begin_read()?;
        let target = Database::create(path).map_err(|e| StoreError::Unreadable {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let write = target.begin_write()?;
        let mut rows = 0;
        for name in [
            "services",
            "tokens",
            "secrets",
            "revisions",
            "rollouts",
            "operator_requests",
            "certificates",
            "acme_orders",
            "acme_accounts",
            "webhooks",
            "builds",
            "nodes",
            "join_tokens",
            "cluster_ca",
        ] {
            rows += copy(&read, &write, TableDefinition::<&str, &[u8]>::new(name))?;
        }
        rows += copy(&read, &write, TableDefinition::<u64, &[u8]>::new("events"))?;
        rows += copy(
            &read,
            &write,
            TableDefinition::<u64, &[u8]>::new("deliveries"),
        )?;
        rows += copy(
            &read,
            &write,
            TableDefinition::<(&str, u64), ()>::new("service_events"),
        )?;
        rows += copy(
            &read,
            &write,
            TableDefinition::<&str, u64>::new("delivery_ids"),
        )?;
        rows += copy(&read, &write, TableDefinition::<&str, &str>::new("meta"))?;
        write.commit()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::store;
    use crate::Store;

    #[test]
    fn the_copy_opens_and_holds_the_same_services() {
        let (dir, store) = store();
        let item = crate::DeployItem {
            spec: crate::testutil::spec("web", "api", "img:1", 2),
            sealed_env: b"sealed".to_vec(),
            fingerprint: "fp".into(),
            commit: None,
        };
        store.apply_deploy(&[item], 1).unwrap();
        let copy = dir.path().join("copy.db");
        assert!(store.copy_to(&copy).unwrap() >= 1);
        assert!(store.copy_to(&copy).is_err(), "an existing file is refused");
        let reopened = Store::open(&copy).unwrap();
        assert_eq!(reopened.list_services().unwrap().len(), 1);
    }
}
