//! Owns table `revisions`: the deployed versions of every service, keyed
//! `project/name/<revision as 20-digit zero-padded decimal>` so a service's revisions are one
//! contiguous key range sorted by number.
//!
//! A revision records exactly what was deployed — the spec, the environment resolved at deploy
//! time (sealed by the host's [`SecretBox`](crate::SecretBox); the store only sees bytes) and
//! the host's fingerprint of both — so any kept revision can be re-created later: to replace a
//! crashed instance of the stable revision, or to roll back.
//!
//! Revision records are written by [`Store::apply_deploy`] and
//! [`Store::set_current_revision`] (in `services`), in the same transaction as the service
//! record that points at them, and never modified afterwards. Each such write keeps the newest
//! [`REVISIONS_KEPT`] records of the service and prunes older ones, except the revisions the
//! service's rollout record references (`stable_revision`, `candidate_revision`).

use std::fmt;

use orca_config::ServiceSpec;
use redb::{ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::record::{check_name, decode, encode, project_range, scoped_key};
use crate::{services, Store, StoreError};

const TABLE_NAME: &str = "revisions";
// Values are `&[u8]` so a damaged value surfaces as `StoreError::Corrupt` (see `services`).
const REVISIONS: TableDefinition<&str, &[u8]> = TableDefinition::new(TABLE_NAME);
const SCHEMA: u32 = 1;

/// How many revision records are kept per service (the newest ones), not counting older
/// revisions kept because a rollout references them.
pub const REVISIONS_KEPT: usize = 10;

/// One deployed version of a service.
///
/// `Debug` prints the length of `sealed_env`, never its bytes.
#[derive(Clone, PartialEq)]
pub struct RevisionRecord {
    /// The service's project.
    pub project: String,
    /// The service's name.
    pub name: String,
    /// The revision number, starting at 1 per service.
    pub number: u64,
    /// The spec as deployed (for a revision made by [`Store::set_current_revision`], the
    /// copied spec with the replica count the service had at that time).
    pub spec: ServiceSpec,
    /// The environment resolved at deploy time, sealed by the host. Opaque to the store.
    pub sealed_env: Vec<u8>,
    /// The host's fingerprint of this version (image and resolved environment, without
    /// `replicas`).
    pub fingerprint: String,
    /// The git commit this revision was built from or deployed for (a push, or a build of
    /// the branch head); `None` for a deploy of a plain image.
    pub commit: Option<String>,
    /// Unix seconds when the revision was created, as passed in by the caller.
    pub created_at: u64,
}

impl fmt::Debug for RevisionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevisionRecord")
            .field("project", &self.project)
            .field("name", &self.name)
            .field("number", &self.number)
            .field("spec", &self.spec)
            .field(
                "sealed_env",
                &format_args!("<{} bytes>", self.sealed_env.len()),
            )
            .field("fingerprint", &self.fingerprint)
            .field("commit", &self.commit)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// The on-disk form of a [`RevisionRecord`]: `sealed_env` as hex, plus the schema version.
#[derive(Serialize, Deserialize)]
struct Row {
    schema: u32,
    project: String,
    name: String,
    number: u64,
    spec: ServiceSpec,
    sealed_env: String,
    fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    commit: Option<String>,
    created_at: u64,
}

pub(crate) fn create_table(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(REVISIONS)?;
    Ok(())
}

/// `project/name/00000000000000000042`.
fn revision_key(project: &str, name: &str, number: u64) -> String {
    format!("{}/{number:020}", scoped_key(project, name))
}

/// The half-open key range holding every revision of `project/name` (and nothing of a
/// service whose name merely starts with `name`, because names contain no `/`).
fn service_range(project: &str, name: &str) -> (String, String) {
    project_range(&scoped_key(project, name))
}

fn corrupt(key: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table: TABLE_NAME,
        key: key.to_owned(),
        reason: reason.into(),
    }
}

fn decode_row(key: &str, bytes: &[u8]) -> Result<RevisionRecord, StoreError> {
    let row = decode::<Row>(TABLE_NAME, key, bytes, SCHEMA, |r| r.schema)?;
    if revision_key(&row.project, &row.name, row.number) != key {
        return Err(corrupt(
            key,
            "record's project/name/number do not match its key",
        ));
    }
    let sealed_env = hex::decode(&row.sealed_env)
        .map_err(|e| corrupt(key, format!("sealed environment is not hex: {e}")))?;
    Ok(RevisionRecord {
        project: row.project,
        name: row.name,
        number: row.number,
        spec: row.spec,
        sealed_env,
        fingerprint: row.fingerprint,
        commit: row.commit,
        created_at: row.created_at,
    })
}

fn encode_row(record: &RevisionRecord) -> Vec<u8> {
    encode(&Row {
        schema: SCHEMA,
        project: record.project.clone(),
        name: record.name.clone(),
        number: record.number,
        spec: record.spec.clone(),
        sealed_env: hex::encode(&record.sealed_env),
        fingerprint: record.fingerprint.clone(),
        commit: record.commit.clone(),
        created_at: record.created_at,
    })
}

/// The revision number encoded in a key of `project/name`'s range (`prefix` is the range
/// start, `project/name/`).
fn number_of_key(key: &str, prefix: &str) -> Result<u64, StoreError> {
    key.strip_prefix(prefix)
        .filter(|s| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt(key, "key does not end in a 20-digit revision number"))
}

fn read_one(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    project: &str,
    name: &str,
    number: u64,
) -> Result<Option<RevisionRecord>, StoreError> {
    let key = revision_key(project, name, number);
    match table.get(key.as_str())? {
        Some(v) => decode_row(&key, v.value()).map(Some),
        None => Ok(None),
    }
}

/// Revision `number` of `project/name`, read inside a read transaction; a record read
/// again is noted healed, one that cannot be decoded broken.
pub(crate) fn read_in(
    store: &Store,
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    project: &str,
    name: &str,
    number: u64,
) -> Result<Option<RevisionRecord>, StoreError> {
    let found = read_one(table, project, name, number).map_err(|e| store.note(e))?;
    store.healed(TABLE_NAME, &revision_key(project, name, number));
    Ok(found)
}

/// Opens the revisions table of a read transaction.
pub(crate) fn open_in(
    txn: &ReadTransaction,
) -> Result<redb::ReadOnlyTable<&'static str, &'static [u8]>, StoreError> {
    Ok(txn.open_table(REVISIONS)?)
}

/// Revision `number` of `project/name`, read inside a write transaction.
pub(crate) fn get_in(
    txn: &WriteTransaction,
    project: &str,
    name: &str,
    number: u64,
) -> Result<Option<RevisionRecord>, StoreError> {
    read_one(&txn.open_table(REVISIONS)?, project, name, number)
}

/// The highest revision number stored for `project/name`, if any (read from the keys only).
pub(crate) fn last_number_in(
    txn: &WriteTransaction,
    project: &str,
    name: &str,
) -> Result<Option<u64>, StoreError> {
    let table = txn.open_table(REVISIONS)?;
    let (start, end) = service_range(project, name);
    let last = match table.range(start.as_str()..end.as_str())?.next_back() {
        Some(entry) => {
            let (k, _) = entry?;
            Some(number_of_key(k.value(), &start)?)
        }
        None => None,
    };
    Ok(last)
}

/// Writes a new revision record and prunes the service's old revisions: every revision
/// except the newest [`REVISIONS_KEPT`] and those listed in `protect` is removed.
pub(crate) fn insert_and_prune(
    txn: &WriteTransaction,
    record: &RevisionRecord,
    protect: &[u64],
) -> Result<(), StoreError> {
    let mut table = txn.open_table(REVISIONS)?;
    let key = revision_key(&record.project, &record.name, record.number);
    table.insert(key.as_str(), encode_row(record).as_slice())?;

    let (start, end) = service_range(&record.project, &record.name);
    let mut numbers = Vec::new();
    for entry in table.range(start.as_str()..end.as_str())? {
        let (k, _) = entry?;
        numbers.push(number_of_key(k.value(), &start)?);
    }
    // `numbers` is ascending; everything before the newest REVISIONS_KEPT is a candidate.
    let old = numbers.len().saturating_sub(REVISIONS_KEPT);
    for &number in &numbers[..old] {
        if protect.contains(&number) {
            continue;
        }
        table.remove(revision_key(&record.project, &record.name, number).as_str())?;
        tracing::debug!(
            project = %record.project,
            name = %record.name,
            revision = number,
            "old revision pruned"
        );
    }
    Ok(())
}

impl Store {
    /// Revision `number` of `project/name`, if it is (still) stored.
    pub fn get_revision(
        &self,
        project: &str,
        name: &str,
        number: u64,
    ) -> Result<Option<RevisionRecord>, StoreError> {
        check_name("project name", project)?;
        check_name("service name", name)?;
        let txn = self.db().begin_read()?;
        read_one(&txn.open_table(REVISIONS)?, project, name, number).map_err(|e| self.note(e))
    }

    /// Every stored revision of `project/name`, ascending by number (empty for an unknown
    /// service).
    pub fn list_revisions(
        &self,
        project: &str,
        name: &str,
    ) -> Result<Vec<RevisionRecord>, StoreError> {
        check_name("project name", project)?;
        check_name("service name", name)?;
        let txn = self.db().begin_read()?;
        let table = txn.open_table(REVISIONS)?;
        let (start, end) = service_range(project, name);
        let mut out = Vec::new();
        for entry in table.range(start.as_str()..end.as_str())? {
            let (k, v) = entry?;
            out.push(decode_row(k.value(), v.value()).map_err(|e| self.note(e))?);
        }
        Ok(out)
    }

    /// The revision the service record of `project/name` points at. `None` if the service
    /// does not exist, or if it was last deployed by an orca that did not record revisions
    /// (its next deploy writes one).
    pub fn current_revision(
        &self,
        project: &str,
        name: &str,
    ) -> Result<Option<RevisionRecord>, StoreError> {
        check_name("project name", project)?;
        check_name("service name", name)?;
        // One read transaction, so the service record and its revision are a consistent pair.
        let txn: ReadTransaction = self.db().begin_read()?;
        let Some(service) = services::get_in(&txn, project, name)? else {
            return Ok(None);
        };
        read_in(self, &open_in(&txn)?, project, name, service.revision)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testutil::{spec, store};

    /// Overwrites one raw value of the revisions table (for corruption tests).
    pub(crate) fn write_raw(store: &Store, key: &str, value: &[u8]) {
        let txn = store.db().begin_write().unwrap();
        txn.open_table(REVISIONS)
            .unwrap()
            .insert(key, value)
            .unwrap();
        txn.commit().unwrap();
    }

    pub(crate) fn raw_keys(store: &Store) -> Vec<String> {
        let txn = store.db().begin_read().unwrap();
        let table = txn.open_table(REVISIONS).unwrap();
        table
            .iter()
            .unwrap()
            .map(|e| e.unwrap().0.value().to_owned())
            .collect()
    }

    fn record(number: u64) -> RevisionRecord {
        RevisionRecord {
            project: "web".into(),
            name: "api".into(),
            number,
            spec: spec("web", "api", "api:1", 1),
            sealed_env: vec![0xde, 0xad, 0xbe, 0xef],
            fingerprint: "fp".into(),
            commit: None,
            created_at: 7,
        }
    }

    #[test]
    fn keys_sort_numerically_and_ranges_do_not_leak_into_prefix_names() {
        assert_eq!(
            revision_key("web", "api", 42),
            "web/api/00000000000000000042"
        );
        assert!(revision_key("web", "api", 9) < revision_key("web", "api", 10));
        let (start, end) = service_range("web", "api");
        for other in [
            revision_key("web", "api-x", 1),
            revision_key("web", "apix", 1),
            revision_key("web", "ap", 1),
        ] {
            assert!(
                !(start.as_str()..end.as_str()).contains(&other.as_str()),
                "{other}"
            );
        }
        assert!(
            (start.as_str()..end.as_str()).contains(&revision_key("web", "api", u64::MAX).as_str())
        );
    }

    #[test]
    fn debug_prints_sealed_env_length_not_bytes() {
        let dbg = format!("{:?}", record(1));
        assert!(dbg.contains("<4 bytes>"), "{dbg}");
        assert!(!dbg.contains("222"), "{dbg}"); // 0xde
        assert!(!dbg.to_lowercase().contains("deadbeef"), "{dbg}");
    }

    #[test]
    fn row_roundtrip_and_insert_prunes_to_kept() {
        let (_dir, store) = store();
        let txn = store.db().begin_write().unwrap();
        for n in 1..=12 {
            insert_and_prune(&txn, &record(n), &[2]).unwrap();
        }
        assert_eq!(last_number_in(&txn, "web", "api").unwrap(), Some(12));
        assert_eq!(last_number_in(&txn, "web", "nope").unwrap(), None);
        txn.commit().unwrap();
        let numbers: Vec<u64> = store
            .list_revisions("web", "api")
            .unwrap()
            .iter()
            .map(|r| r.number)
            .collect();
        assert_eq!(numbers, [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(
            store.get_revision("web", "api", 5).unwrap(),
            Some(record(5))
        );
        assert_eq!(store.get_revision("web", "api", 1).unwrap(), None);
    }

    #[test]
    fn corrupt_revision_rows_are_reported_with_table_and_key() {
        let (_dir, store) = store();
        let key = revision_key("web", "api", 1);
        let check = |err: StoreError, want_key: &str| match &err {
            StoreError::Corrupt { table, key, .. } => {
                assert_eq!((*table, key.as_str()), ("revisions", want_key));
            }
            other => panic!("expected Corrupt, got {other:?}"),
        };

        write_raw(&store, &key, b"{not json");
        check(store.get_revision("web", "api", 1).unwrap_err(), &key);
        check(store.list_revisions("web", "api").unwrap_err(), &key);

        // Valid JSON whose sealed_env is not hex.
        let mut json: serde_json::Value = serde_json::from_slice(&encode_row(&record(1))).unwrap();
        json["sealed_env"] = "zz".into();
        write_raw(&store, &key, &serde_json::to_vec(&json).unwrap());
        check(store.get_revision("web", "api", 1).unwrap_err(), &key);

        // A record stored under another revision's key.
        write_raw(&store, &key, &encode_row(&record(2)));
        check(store.get_revision("web", "api", 1).unwrap_err(), &key);

        // A newer schema.
        let mut json: serde_json::Value = serde_json::from_slice(&encode_row(&record(1))).unwrap();
        json["schema"] = 99.into();
        write_raw(&store, &key, &serde_json::to_vec(&json).unwrap());
        check(store.get_revision("web", "api", 1).unwrap_err(), &key);

        // A key in the service's range that does not end in a revision number.
        let bad_key = "web/api/latest";
        write_raw(&store, bad_key, &encode_row(&record(1)));
        let txn = store.db().begin_write().unwrap();
        check(last_number_in(&txn, "web", "api").unwrap_err(), bad_key);
    }

    #[test]
    fn invalid_names_are_rejected() {
        let (_dir, store) = store();
        assert!(matches!(
            store.list_revisions("a/b", "api").unwrap_err(),
            StoreError::InvalidName { .. }
        ));
        assert!(matches!(
            store.get_revision("web", "", 1).unwrap_err(),
            StoreError::InvalidName { .. }
        ));
    }
}
