//! Owns table `rollouts`: the persisted state of each service's rollout, keyed `project/name`.
//!
//! A record exists while a rollout is in progress (phase [`RolloutPhase::Progressing`]) and
//! stays after it ended ([`RolloutPhase::Finished`], rolled back or failed), so the same
//! candidate is not retried and a finished rollout is not reopened after a restart; a new
//! rollout replaces it. The controller is its one writer: every step is one
//! [`Store::step_rollout`] (which also consumes the operator requests it acted on, see
//! `requests`), so a rollout survives a SIGKILL of the server at any point.
//!
//! The revisions a record references (`stable_revision`, `candidate_revision`) are never
//! pruned from table `revisions` while the record exists.

use std::fmt;

use redb::{ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::record::{check_name, decode, encode, scoped_key};
use crate::{Store, StoreError};

const TABLE_NAME: &str = "rollouts";
// Values are `&[u8]` so a damaged value surfaces as `StoreError::Corrupt` (see `services`).
const ROLLOUTS: TableDefinition<&str, &[u8]> = TableDefinition::new(TABLE_NAME);
const SCHEMA: u32 = 1;

/// The largest `plugin_state` [`Store::put_rollout`] accepts: 1 MiB.
pub const PLUGIN_STATE_MAX: usize = 1024 * 1024;

/// Where a rollout stands.
///
/// Stored as JSON tagged by `kind`: `{"kind":"progressing"}`,
/// `{"kind":"rolledback","reason":"…"}`, `{"kind":"failed","reason":"…"}`, `{"kind":"finished"}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RolloutPhase {
    /// Moving from the stable to the candidate revision.
    Progressing,
    /// Ended by returning to the stable revision; the candidate is not retried.
    RolledBack {
        /// Why (from the strategy plugin or the operator).
        reason: String,
    },
    /// Ended in an error the strategy could not handle.
    Failed {
        /// What went wrong.
        reason: String,
    },
    /// Ended with the candidate promoted: it is the only revision that runs. Kept so a server
    /// restarted while superseded instances drain does not open a new rollout.
    Finished,
}

/// The persisted state of one service's rollout.
///
/// `Debug` prints the length of `plugin_state`, not its bytes (it may be up to 1 MiB).
#[derive(Clone, PartialEq, Eq)]
pub struct RolloutRecord {
    /// The revision being moved away from; `None` for a service's first deploy.
    pub stable_revision: Option<u64>,
    /// The revision being moved to.
    pub candidate_revision: u64,
    /// The strategy plugin reference used for this rollout.
    pub strategy: String,
    /// Instances of the stable revision the plan currently asks for.
    pub stable_count: u32,
    /// Instances of the candidate revision the plan currently asks for.
    pub candidate_count: u32,
    /// `(stable, candidate)` traffic weights; `None` = equal weight per instance.
    pub traffic: Option<(u32, u32)>,
    /// Unix milliseconds when the rollout started.
    pub started_at_ms: u64,
    /// Unix milliseconds before which the next step must not run, if the plan asked to wait.
    pub wait_until_ms: Option<u64>,
    /// Opaque state of the strategy plugin, at most [`PLUGIN_STATE_MAX`] bytes.
    pub plugin_state: Vec<u8>,
    /// The operator asked to skip the remaining steps and promote the candidate.
    pub promote_requested: bool,
    /// The operator asked to roll back to the stable revision.
    pub rollback_requested: bool,
    /// Where the rollout stands.
    pub phase: RolloutPhase,
    /// Unix milliseconds of the last update, as passed in by the caller.
    pub updated_at_ms: u64,
    /// How many times the strategy's plan has been called so far.
    pub steps: u64,
}

impl fmt::Debug for RolloutRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RolloutRecord")
            .field("stable_revision", &self.stable_revision)
            .field("candidate_revision", &self.candidate_revision)
            .field("strategy", &self.strategy)
            .field("stable_count", &self.stable_count)
            .field("candidate_count", &self.candidate_count)
            .field("traffic", &self.traffic)
            .field("started_at_ms", &self.started_at_ms)
            .field("wait_until_ms", &self.wait_until_ms)
            .field(
                "plugin_state",
                &format_args!("<{} bytes>", self.plugin_state.len()),
            )
            .field("promote_requested", &self.promote_requested)
            .field("rollback_requested", &self.rollback_requested)
            .field("phase", &self.phase)
            .field("updated_at_ms", &self.updated_at_ms)
            .field("steps", &self.steps)
            .finish()
    }
}

/// The on-disk form of a [`RolloutRecord`]: `plugin_state` as hex, plus the schema version.
#[derive(Serialize, Deserialize)]
struct Row {
    schema: u32,
    stable_revision: Option<u64>,
    candidate_revision: u64,
    strategy: String,
    stable_count: u32,
    candidate_count: u32,
    traffic: Option<(u32, u32)>,
    started_at_ms: u64,
    wait_until_ms: Option<u64>,
    plugin_state: String,
    promote_requested: bool,
    rollback_requested: bool,
    phase: RolloutPhase,
    updated_at_ms: u64,
    steps: u64,
}

pub(crate) fn create_table(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(ROLLOUTS)?;
    Ok(())
}

fn encode_row(r: &RolloutRecord) -> Vec<u8> {
    encode(&Row {
        schema: SCHEMA,
        stable_revision: r.stable_revision,
        candidate_revision: r.candidate_revision,
        strategy: r.strategy.clone(),
        stable_count: r.stable_count,
        candidate_count: r.candidate_count,
        traffic: r.traffic,
        started_at_ms: r.started_at_ms,
        wait_until_ms: r.wait_until_ms,
        plugin_state: hex::encode(&r.plugin_state),
        promote_requested: r.promote_requested,
        rollback_requested: r.rollback_requested,
        phase: r.phase.clone(),
        updated_at_ms: r.updated_at_ms,
        steps: r.steps,
    })
}

fn decode_row(key: &str, bytes: &[u8]) -> Result<RolloutRecord, StoreError> {
    let row = decode::<Row>(TABLE_NAME, key, bytes, SCHEMA, |r| r.schema)?;
    let plugin_state = hex::decode(&row.plugin_state).map_err(|e| StoreError::Corrupt {
        table: TABLE_NAME,
        key: key.to_owned(),
        reason: format!("plugin state is not hex: {e}"),
    })?;
    Ok(RolloutRecord {
        stable_revision: row.stable_revision,
        candidate_revision: row.candidate_revision,
        strategy: row.strategy,
        stable_count: row.stable_count,
        candidate_count: row.candidate_count,
        traffic: row.traffic,
        started_at_ms: row.started_at_ms,
        wait_until_ms: row.wait_until_ms,
        plugin_state,
        promote_requested: row.promote_requested,
        rollback_requested: row.rollback_requested,
        phase: row.phase,
        updated_at_ms: row.updated_at_ms,
        steps: row.steps,
    })
}

fn read_row(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<RolloutRecord>, StoreError> {
    match table.get(key)? {
        Some(v) => decode_row(key, v.value()).map(Some),
        None => Ok(None),
    }
}

/// The rollout record of `project/name` inside a write transaction.
pub(crate) fn get_in(
    txn: &WriteTransaction,
    project: &str,
    name: &str,
) -> Result<Option<RolloutRecord>, StoreError> {
    read_row(&txn.open_table(ROLLOUTS)?, &scoped_key(project, name))
}

/// Stores the rollout record of `project/name` inside a write transaction.
pub(crate) fn put_in(
    txn: &WriteTransaction,
    project: &str,
    name: &str,
    record: &RolloutRecord,
) -> Result<(), StoreError> {
    let key = scoped_key(project, name);
    if record.plugin_state.len() > PLUGIN_STATE_MAX {
        return Err(StoreError::TooLarge {
            what: format!("plugin state of the rollout of {key}"),
            len: record.plugin_state.len(),
            limit: PLUGIN_STATE_MAX,
        });
    }
    txn.open_table(ROLLOUTS)?
        .insert(key.as_str(), encode_row(record).as_slice())?;
    Ok(())
}

/// Deletes the rollout record of `project/name` inside a write transaction.
pub(crate) fn delete_in(
    txn: &WriteTransaction,
    project: &str,
    name: &str,
) -> Result<bool, StoreError> {
    let removed = txn
        .open_table(ROLLOUTS)?
        .remove(scoped_key(project, name).as_str())?
        .is_some();
    Ok(removed)
}

/// The revision numbers the rollout record of `project/name` references (stable and
/// candidate), which pruning must keep. Empty without a record; a corrupt record is an error
/// (pruning must not guess).
pub(crate) fn protected_revisions_in(
    txn: &WriteTransaction,
    project: &str,
    name: &str,
) -> Result<Vec<u64>, StoreError> {
    let table = txn.open_table(ROLLOUTS)?;
    Ok(match read_row(&table, &scoped_key(project, name))? {
        Some(r) => r
            .stable_revision
            .into_iter()
            .chain(Some(r.candidate_revision))
            .collect(),
        None => Vec::new(),
    })
}

impl Store {
    /// The rollout record of `project/name`, if any.
    pub fn get_rollout(
        &self,
        project: &str,
        name: &str,
    ) -> Result<Option<RolloutRecord>, StoreError> {
        check_name("project name", project)?;
        check_name("service name", name)?;
        let txn = self.db().begin_read()?;
        read_row(&txn.open_table(ROLLOUTS)?, &scoped_key(project, name))
    }

    /// Stores (or replaces) the rollout record of `project/name`.
    ///
    /// [`StoreError::TooLarge`] if `plugin_state` is over [`PLUGIN_STATE_MAX`] bytes. The
    /// store does not check that the service or the referenced revisions exist.
    pub fn put_rollout(
        &self,
        project: &str,
        name: &str,
        record: &RolloutRecord,
    ) -> Result<(), StoreError> {
        let _span = tracing::debug_span!("orca.store.write", op = "put_rollout").entered();
        check_name("project name", project)?;
        check_name("service name", name)?;
        let key = scoped_key(project, name);
        if record.plugin_state.len() > PLUGIN_STATE_MAX {
            return Err(StoreError::TooLarge {
                what: format!("plugin state of the rollout of {key}"),
                len: record.plugin_state.len(),
                limit: PLUGIN_STATE_MAX,
            });
        }
        let txn = self.db().begin_write()?;
        {
            let mut table = txn.open_table(ROLLOUTS)?;
            table.insert(key.as_str(), encode_row(record).as_slice())?;
        }
        txn.commit()?;
        tracing::debug!(
            service = %key,
            candidate = record.candidate_revision,
            steps = record.steps,
            "rollout stored"
        );
        Ok(())
    }

    /// Deletes the rollout record of `project/name`; `true` if it existed.
    pub fn delete_rollout(&self, project: &str, name: &str) -> Result<bool, StoreError> {
        let _span = tracing::debug_span!("orca.store.write", op = "delete_rollout").entered();
        check_name("project name", project)?;
        check_name("service name", name)?;
        let key = scoped_key(project, name);
        let txn = self.db().begin_write()?;
        let existed = {
            let mut table = txn.open_table(ROLLOUTS)?;
            let removed = table.remove(key.as_str())?;
            removed.is_some()
        };
        txn.commit()?;
        if existed {
            tracing::debug!(service = %key, "rollout deleted");
        }
        Ok(existed)
    }

    /// Every rollout record as `((project, name), record)`, sorted by `project/name`.
    #[expect(
        clippy::type_complexity,
        reason = "the pair-of-names key reads plainly and matches `set_state`'s keys"
    )]
    pub fn list_rollouts(&self) -> Result<Vec<((String, String), RolloutRecord)>, StoreError> {
        let txn = self.db().begin_read()?;
        list_in(self, &txn)
    }
}

/// Every rollout record in `txn` as `((project, name), record)`; undecodable ones are noted
/// as broken and left out (their service is driven as if none ran).
#[expect(
    clippy::type_complexity,
    reason = "the pair-of-names key reads plainly and matches `set_state`'s keys"
)]
pub(crate) fn list_in(
    store: &Store,
    txn: &ReadTransaction,
) -> Result<Vec<((String, String), RolloutRecord)>, StoreError> {
    let table = txn.open_table(ROLLOUTS)?;
    let mut out = Vec::new();
    let mut broken = Vec::new();
    for entry in table.iter()? {
        let (k, v) = entry?;
        let key = k.value();
        let Some((project, name)) = key.split_once('/') else {
            broken.push((key.to_owned(), "key is not `project/name`".to_string()));
            continue;
        };
        match decode_row(key, v.value()) {
            Ok(record) => out.push(((project.to_owned(), name.to_owned()), record)),
            Err(StoreError::Corrupt { key, reason, .. }) => broken.push((key, reason)),
            Err(e) => return Err(e),
        }
    }
    store.scanned(TABLE_NAME, broken);
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testutil::store;

    pub(crate) fn rollout(stable: Option<u64>, candidate: u64) -> RolloutRecord {
        RolloutRecord {
            stable_revision: stable,
            candidate_revision: candidate,
            strategy: "canary@1".into(),
            stable_count: 3,
            candidate_count: 1,
            traffic: Some((90, 10)),
            started_at_ms: 1_000,
            wait_until_ms: Some(61_000),
            plugin_state: vec![0, 1, 2, 0xff],
            promote_requested: false,
            rollback_requested: false,
            phase: RolloutPhase::Progressing,
            updated_at_ms: 2_000,
            steps: 2,
        }
    }

    pub(crate) fn write_raw(store: &Store, key: &str, value: &[u8]) {
        let txn = store.db().begin_write().unwrap();
        txn.open_table(ROLLOUTS)
            .unwrap()
            .insert(key, value)
            .unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn put_get_list_delete() {
        let (_dir, store) = store();
        assert_eq!(store.get_rollout("web", "api").unwrap(), None);
        let a = rollout(Some(1), 2);
        let mut b = rollout(None, 1);
        b.traffic = None;
        b.wait_until_ms = None;
        b.plugin_state = Vec::new();
        b.rollback_requested = true;
        b.phase = RolloutPhase::RolledBack {
            reason: "error rate 7%".into(),
        };
        store.put_rollout("web", "api", &a).unwrap();
        store.put_rollout("blog", "web", &b).unwrap();
        assert_eq!(store.get_rollout("web", "api").unwrap(), Some(a.clone()));
        assert_eq!(store.get_rollout("blog", "web").unwrap(), Some(b.clone()));

        let listed = store.list_rollouts().unwrap();
        assert_eq!(
            listed,
            vec![
                (("blog".into(), "web".into()), b.clone()),
                (("web".into(), "api".into()), a.clone()),
            ]
        );

        // put replaces.
        let mut a2 = a.clone();
        a2.steps = 3;
        a2.phase = RolloutPhase::Failed {
            reason: "plugin crashed".into(),
        };
        store.put_rollout("web", "api", &a2).unwrap();
        assert_eq!(store.get_rollout("web", "api").unwrap(), Some(a2));

        assert!(store.delete_rollout("web", "api").unwrap());
        assert!(!store.delete_rollout("web", "api").unwrap());
        assert_eq!(store.get_rollout("web", "api").unwrap(), None);
        assert_eq!(store.list_rollouts().unwrap().len(), 1);
    }

    #[test]
    fn rollouts_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.db");
        let record = rollout(Some(4), 5);
        {
            let store = Store::open(&path).unwrap();
            store.put_rollout("web", "api", &record).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.get_rollout("web", "api").unwrap(), Some(record));
    }

    #[test]
    fn plugin_state_limit_is_enforced() {
        let (_dir, store) = store();
        let mut r = rollout(Some(1), 2);
        r.plugin_state = vec![7; PLUGIN_STATE_MAX];
        store.put_rollout("web", "api", &r).unwrap();
        assert_eq!(store.get_rollout("web", "api").unwrap(), Some(r.clone()));

        let mut big = r.clone();
        big.plugin_state.push(0);
        let err = store.put_rollout("web", "api", &big).unwrap_err();
        assert!(
            matches!(err, StoreError::TooLarge { len, limit, .. }
                if len == PLUGIN_STATE_MAX + 1 && limit == PLUGIN_STATE_MAX),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.contains("web/api") && msg.contains("1048576"), "{msg}");
        // The previous record is untouched.
        assert_eq!(store.get_rollout("web", "api").unwrap(), Some(r));
    }

    #[test]
    fn phase_is_tagged_lowercase_and_debug_hides_plugin_state() {
        assert_eq!(
            serde_json::to_value(RolloutPhase::RolledBack { reason: "x".into() }).unwrap(),
            serde_json::json!({"kind": "rolledback", "reason": "x"})
        );
        assert_eq!(
            serde_json::to_value(RolloutPhase::Progressing).unwrap(),
            serde_json::json!({"kind": "progressing"})
        );
        assert_eq!(
            serde_json::from_value::<RolloutPhase>(
                serde_json::json!({"kind": "failed", "reason": "y"})
            )
            .unwrap(),
            RolloutPhase::Failed { reason: "y".into() }
        );
        let mut r = rollout(None, 1);
        r.plugin_state = vec![0xab; 100];
        let dbg = format!("{r:?}");
        assert!(dbg.contains("<100 bytes>") && !dbg.contains("171"), "{dbg}");
    }

    #[test]
    fn corrupt_rollout_rows_are_reported_with_table_and_key() {
        let (_dir, store) = store();
        let check = |err: StoreError, want_key: &str| match &err {
            StoreError::Corrupt { table, key, .. } => {
                assert_eq!((*table, key.as_str()), ("rollouts", want_key));
            }
            other => panic!("expected Corrupt, got {other:?}"),
        };
        write_raw(&store, "web/api", b"{not json");
        check(store.get_rollout("web", "api").unwrap_err(), "web/api");
        // A list leaves the broken record out and names it in `broken_records`.
        assert!(store.list_rollouts().unwrap().is_empty());
        let broken = store.broken_records();
        assert_eq!(broken.len(), 1);
        assert_eq!(
            (broken[0].table.as_str(), broken[0].key.as_str()),
            ("rollouts", "web/api")
        );

        write_raw(&store, "web/api", &[0xff, 0xfe]);
        check(store.get_rollout("web", "api").unwrap_err(), "web/api");

        let mut json: serde_json::Value =
            serde_json::from_slice(&encode_row(&rollout(None, 1))).unwrap();
        json["plugin_state"] = "not hex".into();
        write_raw(&store, "web/api", &serde_json::to_vec(&json).unwrap());
        check(store.get_rollout("web", "api").unwrap_err(), "web/api");

        json["plugin_state"] = "00".into();
        json["phase"] = serde_json::json!({"kind": "paused"});
        write_raw(&store, "web/api", &serde_json::to_vec(&json).unwrap());
        check(store.get_rollout("web", "api").unwrap_err(), "web/api");

        json["phase"] = serde_json::json!({"kind": "progressing"});
        json["schema"] = 99.into();
        write_raw(&store, "web/api", &serde_json::to_vec(&json).unwrap());
        check(store.get_rollout("web", "api").unwrap_err(), "web/api");

        store.delete_rollout("web", "api").unwrap();
        write_raw(&store, "noslash", &encode_row(&rollout(None, 1)));
        assert!(store.list_rollouts().unwrap().is_empty());
        let broken = store.broken_records();
        assert_eq!(broken.len(), 1, "{broken:?}");
        assert_eq!(broken[0].key, "noslash");
    }

    #[test]
    fn invalid_names_are_rejected() {
        let (_dir, store) = store();
        assert!(matches!(
            store
                .put_rollout("a/b", "api", &rollout(None, 1))
                .unwrap_err(),
            StoreError::InvalidName { .. }
        ));
        assert!(matches!(
            store.get_rollout("web", "").unwrap_err(),
            StoreError::InvalidName { .. }
        ));
    }
}
