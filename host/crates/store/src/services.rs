//! Owns table `services`: the desired state of every service, keyed `project/name`.
//!
//! A record holds the service's spec, its desired state (running or stopped), a revision
//! number and the time of the last change. The revision is what the reconciler watches: a new
//! revision means "roll out this spec".
//!
//! Revision rule (deliberately simple): [`Store::apply_deploy`] gives a service a new revision
//! whenever the stored spec differs from the deployed one in any field — *including
//! `replicas` alone* — or the service is not currently running. Scaling through
//! [`Store::set_replicas`] and stopping/starting through [`Store::set_state`] keep the
//! revision, because they change how many instances run, not which version runs.

use orca_config::ServiceSpec;
use redb::{ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::record::{check_name, decode, encode, scoped_key};
use crate::{Store, StoreError};

const TABLE_NAME: &str = "services";
// Values are `&[u8]`, not `&str`: redb's `&str` decoding panics on invalid UTF-8, while bytes
// let a damaged value surface as `StoreError::Corrupt`.
const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new(TABLE_NAME);
const SCHEMA: u32 = 1;

/// Whether a service should have instances running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    /// Keep `spec.replicas` instances running.
    Running,
    /// Keep the record, run no instances.
    Stopped,
}

/// The stored desired state of one service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The service as last deployed (with `replicas` updated by scaling).
    pub spec: ServiceSpec,
    /// Starts at 1 and grows by one with every deploy that changes the service.
    pub revision: u64,
    /// Running or stopped.
    pub state: DesiredState,
    /// Unix seconds of the last change, as passed in by the caller.
    pub updated_at: u64,
}

impl ServiceRecord {
    /// The record's key, `project/name`.
    pub fn key(&self) -> String {
        scoped_key(self.spec.project(), &self.spec.name)
    }
}

/// What [`Store::apply_deploy`] did with one service of the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployOutcome {
    /// The service's project.
    pub project: String,
    /// The service's name.
    pub name: String,
    /// The revision now stored.
    pub revision: u64,
    /// `false` if the service was already running this exact spec and nothing was written.
    pub changed: bool,
}

/// The on-disk form of a [`ServiceRecord`]: the record plus its schema version.
#[derive(Serialize, Deserialize)]
struct Row {
    schema: u32,
    spec: ServiceSpec,
    revision: u64,
    state: DesiredState,
    updated_at: u64,
}

impl Row {
    fn from_record(r: &ServiceRecord) -> Row {
        Row {
            schema: SCHEMA,
            spec: r.spec.clone(),
            revision: r.revision,
            state: r.state,
            updated_at: r.updated_at,
        }
    }

    fn into_record(self) -> ServiceRecord {
        ServiceRecord {
            spec: self.spec,
            revision: self.revision,
            state: self.state,
            updated_at: self.updated_at,
        }
    }
}

pub(crate) fn create_table(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(SERVICES)?;
    Ok(())
}

fn decode_row(key: &str, bytes: &[u8]) -> Result<ServiceRecord, StoreError> {
    decode::<Row>(TABLE_NAME, key, bytes, SCHEMA, |r| r.schema).map(Row::into_record)
}

fn read_row(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<ServiceRecord>, StoreError> {
    match table.get(key)? {
        Some(v) => decode_row(key, v.value()).map(Some),
        None => Ok(None),
    }
}

fn write_row(
    table: &mut Table<&'static str, &'static [u8]>,
    key: &str,
    record: &ServiceRecord,
) -> Result<(), StoreError> {
    table.insert(key, encode(&Row::from_record(record)).as_slice())?;
    Ok(())
}

fn not_found(key: &str) -> StoreError {
    StoreError::NotFound {
        what: format!("service {key}"),
    }
}

impl Store {
    /// Records a deploy request in one transaction and returns one outcome per spec, in
    /// request order.
    ///
    /// For each spec: if a record exists with an equal spec and state `Running`, nothing is
    /// written (`changed: false`, same revision). Otherwise the spec is stored with state
    /// `Running`, revision `previous + 1` (1 for a new service) and `updated_at = now_unix`.
    /// A spec that differs only in `replicas` still gets a new revision (see the module
    /// docs). A service named twice in one request is a [`StoreError::Conflict`], and any
    /// error leaves the store unchanged.
    pub fn apply_deploy(
        &self,
        specs: &[ServiceSpec],
        now_unix: u64,
    ) -> Result<Vec<DeployOutcome>, StoreError> {
        let _span = tracing::debug_span!("orca.store.write", op = "apply_deploy").entered();
        let mut seen = std::collections::HashSet::new();
        for spec in specs {
            check_name("project name", spec.project())?;
            check_name("service name", &spec.name)?;
            let key = scoped_key(spec.project(), &spec.name);
            if !seen.insert(key.clone()) {
                return Err(StoreError::Conflict {
                    what: format!("service {key} appears more than once in one deploy"),
                });
            }
        }

        let txn = self.db().begin_write()?;
        let mut outcomes = Vec::with_capacity(specs.len());
        {
            let mut table = txn.open_table(SERVICES)?;
            for spec in specs {
                let key = scoped_key(spec.project(), &spec.name);
                let previous = read_row(&table, &key)?;
                let outcome = match previous {
                    Some(prev) if prev.spec == *spec && prev.state == DesiredState::Running => {
                        DeployOutcome {
                            project: spec.project().to_owned(),
                            name: spec.name.clone(),
                            revision: prev.revision,
                            changed: false,
                        }
                    }
                    previous => {
                        let revision = previous.map_or(0, |p| p.revision) + 1;
                        let record = ServiceRecord {
                            spec: spec.clone(),
                            revision,
                            state: DesiredState::Running,
                            updated_at: now_unix,
                        };
                        write_row(&mut table, &key, &record)?;
                        tracing::info!(service = %key, revision, "service revision stored");
                        DeployOutcome {
                            project: spec.project().to_owned(),
                            name: spec.name.clone(),
                            revision,
                            changed: true,
                        }
                    }
                };
                outcomes.push(outcome);
            }
        }
        txn.commit()?;
        Ok(outcomes)
    }

    /// The record of `project/name`, if deployed.
    pub fn get_service(
        &self,
        project: &str,
        name: &str,
    ) -> Result<Option<ServiceRecord>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(SERVICES)?;
        read_row(&table, &scoped_key(project, name))
    }

    /// Every service, sorted by `project/name`.
    pub fn list_services(&self) -> Result<Vec<ServiceRecord>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(SERVICES)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push(decode_row(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Every service called `name`, in any project, sorted by project.
    ///
    /// This scans the table; orca clusters hold tens to hundreds of services, so an index
    /// would cost more in upkeep than it saves.
    pub fn find_services_by_name(&self, name: &str) -> Result<Vec<ServiceRecord>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(SERVICES)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            let key = k.value();
            // Filter on the key before decoding so an unrelated corrupt record does not fail
            // the lookup.
            if key.rsplit_once('/').is_some_and(|(_, n)| n == name) {
                out.push(decode_row(key, v.value())?);
            }
        }
        Ok(out)
    }

    /// Sets the replica count of `project/name` and marks it running, keeping its revision
    /// (scaling is not a new version). [`StoreError::NotFound`] if the service is missing.
    pub fn set_replicas(
        &self,
        project: &str,
        name: &str,
        replicas: u32,
        now_unix: u64,
    ) -> Result<ServiceRecord, StoreError> {
        let _span = tracing::debug_span!("orca.store.write", op = "set_replicas").entered();
        let key = scoped_key(project, name);
        let txn = self.db().begin_write()?;
        let record = {
            let mut table = txn.open_table(SERVICES)?;
            let mut record = read_row(&table, &key)?.ok_or_else(|| not_found(&key))?;
            record.spec.replicas = replicas;
            record.state = DesiredState::Running;
            record.updated_at = now_unix;
            write_row(&mut table, &key, &record)?;
            record
        };
        txn.commit()?;
        tracing::info!(service = %key, replicas, "service scaled");
        Ok(record)
    }

    /// Sets the desired state of every `(project, name)` in `keys`, in one transaction, and
    /// returns the updated records in the order given. If any service is missing this is
    /// [`StoreError::NotFound`] and nothing changes. Records already in `state` are returned
    /// as they are (their `updated_at` is not touched). Revisions are kept.
    pub fn set_state(
        &self,
        keys: &[(String, String)],
        state: DesiredState,
        now_unix: u64,
    ) -> Result<Vec<ServiceRecord>, StoreError> {
        let _span = tracing::debug_span!("orca.store.write", op = "set_state").entered();
        let txn = self.db().begin_write()?;
        let mut out = Vec::with_capacity(keys.len());
        {
            let mut table = txn.open_table(SERVICES)?;
            for (project, name) in keys {
                let key = scoped_key(project, name);
                let mut record = read_row(&table, &key)?.ok_or_else(|| not_found(&key))?;
                if record.state != state {
                    record.state = state;
                    record.updated_at = now_unix;
                    write_row(&mut table, &key, &record)?;
                    tracing::info!(service = %key, ?state, "service state changed");
                }
                out.push(record);
            }
        }
        // Reached only if every key existed; an early return above dropped the transaction,
        // which aborts it.
        txn.commit()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{spec, store};

    fn keys(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(p, n)| (p.to_string(), n.to_string()))
            .collect()
    }

    #[test]
    fn first_deploy_is_revision_one_and_changed() {
        let (_dir, store) = store();
        let out = store
            .apply_deploy(&[spec("web", "api", "api:1", 2)], 100)
            .unwrap();
        assert_eq!(
            out,
            vec![DeployOutcome {
                project: "web".into(),
                name: "api".into(),
                revision: 1,
                changed: true
            }]
        );
        let rec = store.get_service("web", "api").unwrap().unwrap();
        assert_eq!(rec.revision, 1);
        assert_eq!(rec.state, DesiredState::Running);
        assert_eq!(rec.updated_at, 100);
        assert_eq!(rec.spec, spec("web", "api", "api:1", 2));
        assert_eq!(rec.key(), "web/api");
    }

    #[test]
    fn redeploying_the_same_spec_is_unchanged() {
        let (_dir, store) = store();
        store
            .apply_deploy(&[spec("web", "api", "api:1", 2)], 100)
            .unwrap();
        let out = store
            .apply_deploy(&[spec("web", "api", "api:1", 2)], 200)
            .unwrap();
        assert_eq!(out[0].revision, 1);
        assert!(!out[0].changed);
        // Nothing was written: updated_at still holds the first deploy's time.
        assert_eq!(
            store.get_service("web", "api").unwrap().unwrap().updated_at,
            100
        );
    }

    #[test]
    fn modified_spec_gets_next_revision() {
        let (_dir, store) = store();
        store
            .apply_deploy(&[spec("web", "api", "api:1", 2)], 100)
            .unwrap();
        let out = store
            .apply_deploy(&[spec("web", "api", "api:2", 2)], 200)
            .unwrap();
        assert_eq!((out[0].revision, out[0].changed), (2, true));
        let rec = store.get_service("web", "api").unwrap().unwrap();
        assert_eq!(rec.spec, spec("web", "api", "api:2", 2));
        assert_eq!(rec.updated_at, 200);
    }

    #[test]
    fn replicas_only_change_still_bumps_revision() {
        // The documented simple rule: any spec difference is a new revision.
        let (_dir, store) = store();
        store
            .apply_deploy(&[spec("web", "api", "api:1", 2)], 100)
            .unwrap();
        let out = store
            .apply_deploy(&[spec("web", "api", "api:1", 5)], 200)
            .unwrap();
        assert_eq!((out[0].revision, out[0].changed), (2, true));
    }

    #[test]
    fn deploying_a_stopped_service_restarts_it_with_new_revision() {
        let (_dir, store) = store();
        store
            .apply_deploy(&[spec("web", "api", "api:1", 2)], 100)
            .unwrap();
        store
            .set_state(&keys(&[("web", "api")]), DesiredState::Stopped, 150)
            .unwrap();
        let out = store
            .apply_deploy(&[spec("web", "api", "api:1", 2)], 200)
            .unwrap();
        assert_eq!((out[0].revision, out[0].changed), (2, true));
        let rec = store.get_service("web", "api").unwrap().unwrap();
        assert_eq!(rec.state, DesiredState::Running);
    }

    #[test]
    fn deploy_outcomes_follow_request_order_with_mixed_changes() {
        let (_dir, store) = store();
        store
            .apply_deploy(&[spec("web", "api", "api:1", 1)], 100)
            .unwrap();
        let out = store
            .apply_deploy(
                &[
                    spec("web", "worker", "w:1", 1),
                    spec("web", "api", "api:1", 1),
                ],
                200,
            )
            .unwrap();
        assert_eq!(out[0].name, "worker");
        assert_eq!((out[0].revision, out[0].changed), (1, true));
        assert_eq!(out[1].name, "api");
        assert_eq!((out[1].revision, out[1].changed), (1, false));
    }

    #[test]
    fn duplicate_service_in_one_deploy_is_a_conflict_and_writes_nothing() {
        let (_dir, store) = store();
        let err = store
            .apply_deploy(
                &[
                    spec("web", "api", "api:1", 1),
                    spec("web", "api", "api:2", 1),
                ],
                100,
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
        assert!(store.list_services().unwrap().is_empty());
    }

    #[test]
    fn corrupt_record_mid_deploy_aborts_the_whole_request() {
        let (_dir, store) = store();
        store
            .apply_deploy(&[spec("web", "api", "api:1", 1)], 100)
            .unwrap();
        write_raw(&store, "web/zzz", b"garbage");
        // "web/api" is written first inside the transaction, then "web/zzz" fails to decode.
        let err = store
            .apply_deploy(
                &[spec("web", "api", "api:2", 1), spec("web", "zzz", "z:1", 1)],
                200,
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        let rec = store.get_service("web", "api").unwrap().unwrap();
        assert_eq!((rec.revision, rec.updated_at), (1, 100));
    }

    #[test]
    fn list_is_sorted_and_find_by_name_spans_projects() {
        let (_dir, store) = store();
        store
            .apply_deploy(
                &[
                    spec("shop", "api", "a", 1),
                    spec("blog", "web", "w", 1),
                    spec("blog", "api", "a", 1),
                    // A name that is a suffix of another must not match.
                    spec("blog", "xapi", "a", 1),
                ],
                1,
            )
            .unwrap();
        let listed: Vec<String> = store
            .list_services()
            .unwrap()
            .iter()
            .map(ServiceRecord::key)
            .collect();
        assert_eq!(listed, ["blog/api", "blog/web", "blog/xapi", "shop/api"]);
        let found: Vec<String> = store
            .find_services_by_name("api")
            .unwrap()
            .iter()
            .map(ServiceRecord::key)
            .collect();
        assert_eq!(found, ["blog/api", "shop/api"]);
        assert!(store.find_services_by_name("nope").unwrap().is_empty());
    }

    #[test]
    fn set_replicas_updates_spec_keeps_revision_and_runs() {
        let (_dir, store) = store();
        store
            .apply_deploy(&[spec("web", "api", "api:1", 2)], 100)
            .unwrap();
        store
            .set_state(&keys(&[("web", "api")]), DesiredState::Stopped, 150)
            .unwrap();
        let rec = store.set_replicas("web", "api", 7, 200).unwrap();
        assert_eq!(rec.spec.replicas, 7);
        assert_eq!(rec.revision, 1);
        assert_eq!(rec.state, DesiredState::Running);
        assert_eq!(rec.updated_at, 200);
        assert_eq!(store.get_service("web", "api").unwrap().unwrap(), rec);
    }

    #[test]
    fn set_replicas_on_missing_service_is_not_found() {
        let (_dir, store) = store();
        let err = store.set_replicas("web", "ghost", 1, 1).unwrap_err();
        assert!(
            matches!(&err, StoreError::NotFound { what } if what.contains("web/ghost")),
            "{err}"
        );
    }

    #[test]
    fn set_state_changes_all_given_services() {
        let (_dir, store) = store();
        store
            .apply_deploy(
                &[spec("web", "api", "a", 1), spec("web", "worker", "w", 1)],
                100,
            )
            .unwrap();
        let out = store
            .set_state(
                &keys(&[("web", "api"), ("web", "worker")]),
                DesiredState::Stopped,
                200,
            )
            .unwrap();
        assert_eq!(out.len(), 2);
        for rec in store.list_services().unwrap() {
            assert_eq!(rec.state, DesiredState::Stopped);
            assert_eq!(rec.updated_at, 200);
            assert_eq!(rec.revision, 1);
        }
    }

    #[test]
    fn set_state_with_one_missing_key_changes_nothing() {
        let (_dir, store) = store();
        store
            .apply_deploy(&[spec("web", "api", "a", 1)], 100)
            .unwrap();
        // The existing service comes first, so its update is already written inside the
        // transaction when the missing one is found.
        let err = store
            .set_state(
                &keys(&[("web", "api"), ("web", "ghost")]),
                DesiredState::Stopped,
                200,
            )
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::NotFound { what } if what.contains("web/ghost")),
            "{err}"
        );
        let rec = store.get_service("web", "api").unwrap().unwrap();
        assert_eq!(rec.state, DesiredState::Running);
        assert_eq!(rec.updated_at, 100);
    }

    #[test]
    fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.db");
        {
            let store = Store::open(&path).unwrap();
            store
                .apply_deploy(&[spec("web", "api", "api:1", 3)], 100)
                .unwrap();
            store
                .apply_deploy(&[spec("web", "api", "api:2", 3)], 200)
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let rec = store.get_service("web", "api").unwrap().unwrap();
        assert_eq!(rec.revision, 2);
        assert_eq!(rec.spec, spec("web", "api", "api:2", 3));
        assert_eq!(rec.updated_at, 200);
    }

    #[test]
    fn a_second_open_of_the_same_file_fails_cleanly() {
        let (dir, _store) = store();
        let err = Store::open(&dir.path().join("cluster.db")).unwrap_err();
        assert!(matches!(err, StoreError::Db(_)), "{err}");
    }

    fn write_raw(store: &Store, key: &str, value: &[u8]) {
        let txn = store.db().begin_write().unwrap();
        txn.open_table(SERVICES)
            .unwrap()
            .insert(key, value)
            .unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn corrupt_record_is_reported_with_table_and_key() {
        let (_dir, store) = store();
        write_raw(&store, "web/api", b"{not json");
        let err = store.get_service("web", "api").unwrap_err();
        match &err {
            StoreError::Corrupt { table, key, .. } => {
                assert_eq!((*table, key.as_str()), ("services", "web/api"));
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(err.to_string().contains("services"));
        assert!(err.to_string().contains("web/api"));
        assert!(matches!(
            store.list_services().unwrap_err(),
            StoreError::Corrupt { .. }
        ));
        // Invalid UTF-8 is corruption too, not a panic.
        write_raw(&store, "web/api", &[0xff, 0xfe, 0x00]);
        assert!(matches!(
            store.get_service("web", "api").unwrap_err(),
            StoreError::Corrupt { .. }
        ));
    }

    #[test]
    fn record_from_a_newer_schema_is_reported_not_misread() {
        let (_dir, store) = store();
        store
            .apply_deploy(&[spec("web", "api", "a", 1)], 100)
            .unwrap();
        let txn = store.db().begin_read().unwrap();
        let bytes = txn
            .open_table(SERVICES)
            .unwrap()
            .get("web/api")
            .unwrap()
            .unwrap()
            .value()
            .to_vec();
        drop(txn);
        let mut json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["schema"], 1);
        json["schema"] = 99.into();
        write_raw(&store, "web/api", &serde_json::to_vec(&json).unwrap());
        let err = store.get_service("web", "api").unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { reason, .. } if reason.contains("99")),
            "{err}"
        );
    }

    #[test]
    fn names_with_slashes_are_rejected() {
        let (_dir, store) = store();
        let err = store
            .apply_deploy(&[spec("a/b", "api", "a", 1)], 1)
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidName { .. }), "{err}");
    }

    #[test]
    fn desired_state_serializes_lowercase() {
        assert_eq!(
            serde_json::to_string(&DesiredState::Stopped).unwrap(),
            "\"stopped\""
        );
        assert_eq!(
            serde_json::from_str::<DesiredState>("\"running\"").unwrap(),
            DesiredState::Running
        );
    }
}
