//! Owns table `services`: the desired state of every service, keyed `project/name`.
//!
//! A record holds the service's spec, its desired state (running or stopped), the number of
//! its current revision and the time of the last change. The revision is what the reconciler
//! watches: a new revision means "roll out this version". Each revision's full content (spec,
//! sealed environment, fingerprint) is a record in table `revisions`, written in the same
//! transaction (see [`crate::revisions`]).
//!
//! Revision rule of [`Store::apply_deploy`], per [`DeployItem`]:
//!
//! - **unchanged** — the service exists, is `Running`, its current revision's fingerprint
//!   equals the item's and its stored spec equals the item's spec: nothing is written.
//! - **scaled** — as above, but the specs differ *only* in `replicas` (the host's fingerprint
//!   leaves `replicas` out): the stored spec takes the new replica count, the revision stays
//!   (scaling is not a new version).
//! - **new revision** — anything else (new service, stopped service, different fingerprint,
//!   any other spec difference, or no revision record for the current revision because it was
//!   deployed by an orca that did not record revisions): revision `previous + 1`.
//!
//! [`Store::set_current_revision`] (rollback) copies a kept revision into a new revision
//! number. Scaling through [`Store::set_replicas`] and stopping/starting through
//! [`Store::set_state`] keep the revision, because they change how many instances run, not
//! which version runs.

use std::fmt;

use orca_config::ServiceSpec;
use redb::{
    ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::record::{check_name, decode, encode, scoped_key};
use crate::revisions::{self, RevisionRecord};
use crate::{rollouts, Store, StoreError};

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

/// One service of a deploy request: the spec plus what the host resolved at deploy time.
///
/// `Debug` prints the length of `sealed_env`, never its bytes.
#[derive(Clone, PartialEq)]
pub struct DeployItem {
    /// The service as deployed.
    pub spec: ServiceSpec,
    /// The environment with secrets resolved, sealed by the host's
    /// [`SecretBox`](crate::SecretBox). Opaque to the store; kept in the revision record.
    pub sealed_env: Vec<u8>,
    /// The host's fingerprint of this version (image and resolved environment, computed
    /// without `replicas`). Equal fingerprints mean "same version".
    pub fingerprint: String,
    /// The git commit this version comes from, if any (kept in the revision record).
    pub commit: Option<String>,
}

impl fmt::Debug for DeployItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeployItem")
            .field("spec", &self.spec)
            .field(
                "sealed_env",
                &format_args!("<{} bytes>", self.sealed_env.len()),
            )
            .field("fingerprint", &self.fingerprint)
            .field("commit", &self.commit)
            .finish()
    }
}

/// What [`Store::apply_deploy`] did with one service of the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployOutcome {
    /// The service's project.
    pub project: String,
    /// The service's name.
    pub name: String,
    /// The service's current revision after the deploy: a new number if a new revision was
    /// recorded, the previous one if the service was unchanged or only scaled.
    pub revision: u64,
    /// `true` if anything was written: a new revision, or (same `revision`) a replica count
    /// changed by a deploy of the same version. `false` if the service was already running
    /// this exact spec and fingerprint and nothing was written.
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

/// The record of `project/name`, read inside the caller's read transaction (for modules that
/// need a service record consistent with their own table).
/// Every decodable service record in `txn`, sorted by key; undecodable ones are noted as
/// broken (a full scan of the table).
pub(crate) fn list_in(
    store: &Store,
    txn: &ReadTransaction,
) -> Result<Vec<ServiceRecord>, StoreError> {
    let table = txn.open_table(SERVICES)?;
    let mut out = Vec::new();
    let mut broken = Vec::new();
    for entry in table.iter()? {
        let (k, v) = entry?;
        match decode_row(k.value(), v.value()) {
            Ok(record) => out.push(record),
            Err(StoreError::Corrupt { key, reason, .. }) => broken.push((key, reason)),
            Err(e) => return Err(e),
        }
    }
    store.scanned(TABLE_NAME, broken);
    Ok(out)
}

pub(crate) fn get_in(
    txn: &ReadTransaction,
    project: &str,
    name: &str,
) -> Result<Option<ServiceRecord>, StoreError> {
    read_row(&txn.open_table(SERVICES)?, &scoped_key(project, name))
}

/// `true` if `a` and `b` are equal except for `replicas` (which must differ).
fn differs_only_in_replicas(a: &ServiceSpec, b: &ServiceSpec) -> bool {
    if a.replicas == b.replicas {
        return false;
    }
    let mut a = a.clone();
    a.replicas = b.replicas;
    a == *b
}

/// The number for a new revision of `project/name`: one above both the service record's
/// revision and the highest revision record kept, so a number is never reused.
fn next_revision(
    txn: &WriteTransaction,
    previous: Option<&ServiceRecord>,
    project: &str,
    name: &str,
) -> Result<u64, StoreError> {
    let from_record = previous.map_or(0, |p| p.revision);
    let from_revisions = revisions::last_number_in(txn, project, name)?.unwrap_or(0);
    Ok(from_record.max(from_revisions) + 1)
}

/// Writes a new revision record of `project/name` and prunes old ones, keeping the revisions
/// the service's rollout references.
fn record_revision(txn: &WriteTransaction, record: &RevisionRecord) -> Result<(), StoreError> {
    let protect = rollouts::protected_revisions_in(txn, &record.project, &record.name)?;
    revisions::insert_and_prune(txn, record, &protect)
}

fn not_found(key: &str) -> StoreError {
    StoreError::NotFound {
        what: format!("service {key}"),
    }
}

impl Store {
    /// Records a deploy request in one transaction and returns one outcome per item, in
    /// request order.
    ///
    /// Per item (see the module docs for the rule): *unchanged* writes nothing
    /// (`changed: false`, same revision); *scaled* stores the new `replicas` with state
    /// `Running` and `updated_at = now_unix`, keeping the revision (`changed: true`); a *new
    /// revision* stores the spec with state `Running`, revision `previous + 1` (1 for a new
    /// service) and `updated_at = now_unix`, plus a [`RevisionRecord`] with the item's sealed
    /// environment and fingerprint (`created_at = now_unix`), and prunes the service's
    /// revisions to the newest [`REVISIONS_KEPT`](crate::REVISIONS_KEPT) — never those its
    /// rollout record references.
    ///
    /// A service named twice in one request is a [`StoreError::Conflict`]; a corrupt service,
    /// revision or rollout record of a deployed service is [`StoreError::Corrupt`]. Any error
    /// leaves the store unchanged (no service and no revision record written).
    pub fn apply_deploy(
        &self,
        items: &[DeployItem],
        now_unix: u64,
    ) -> Result<Vec<DeployOutcome>, StoreError> {
        self.apply_deploy_with(items, &[], now_unix)
    }

    /// [`Store::apply_deploy`] with the request's certificates, as one transaction: the
    /// domain uniqueness check (a domain another service outside this request holds is a
    /// [`StoreError::Conflict`] naming both), the services and revisions, and the
    /// certificates. Nothing is written if any part fails.
    pub fn apply_deploy_with(
        &self,
        items: &[DeployItem],
        certificates: &[crate::CertificateRecord],
        now_unix: u64,
    ) -> Result<Vec<DeployOutcome>, StoreError> {
        let _span = tracing::debug_span!("orca.store.write", op = "apply_deploy").entered();
        let mut seen = std::collections::HashSet::new();
        for item in items {
            let spec = &item.spec;
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
        let mut outcomes = Vec::with_capacity(items.len());
        {
            let mut table = txn.open_table(SERVICES)?;
            // A domain belongs to one service: refuse to take one from a service outside
            // this request (read in the transaction that writes, so no deploy races it).
            for entry in table.iter()? {
                let (k, v) = entry?;
                if seen.contains(k.value()) {
                    continue;
                }
                // A record that cannot be decoded affects only its own service (lists skip
                // and report it); its domain is unknown, so it cannot block this deploy.
                let Ok(other) = decode_row(k.value(), v.value()) else {
                    continue;
                };
                let Some(d) = &other.spec.domain else {
                    continue;
                };
                if let Some(item) = items.iter().find(|i| i.spec.domain.as_ref() == Some(d)) {
                    return Err(StoreError::Conflict {
                        what: format!(
                            "service \"{}\": domain \"{d}\" is already used by service \"{}\" in project \"{}\"",
                            item.spec.name,
                            other.spec.name,
                            other.spec.project()
                        ),
                    });
                }
            }
            for item in items {
                let spec = &item.spec;
                let (project, name) = (spec.project(), spec.name.as_str());
                let key = scoped_key(project, name);
                let previous = read_row(&table, &key)?;
                // Same version: running, and its current revision has the item's fingerprint.
                let same_version = match &previous {
                    Some(prev) if prev.state == DesiredState::Running => {
                        revisions::get_in(&txn, project, name, prev.revision)?
                            .is_some_and(|r| r.fingerprint == item.fingerprint)
                    }
                    _ => false,
                };
                let revision = match previous {
                    Some(prev) if same_version && prev.spec == *spec => {
                        outcomes.push(DeployOutcome {
                            project: project.to_owned(),
                            name: name.to_owned(),
                            revision: prev.revision,
                            changed: false,
                        });
                        continue;
                    }
                    Some(mut prev)
                        if same_version && differs_only_in_replicas(&prev.spec, spec) =>
                    {
                        prev.spec.replicas = spec.replicas;
                        prev.updated_at = now_unix;
                        write_row(&mut table, &key, &prev)?;
                        tracing::info!(
                            service = %key,
                            revision = prev.revision,
                            replicas = spec.replicas,
                            "service scaled by deploy"
                        );
                        prev.revision
                    }
                    previous => {
                        let revision = next_revision(&txn, previous.as_ref(), project, name)?;
                        let record = ServiceRecord {
                            spec: spec.clone(),
                            revision,
                            state: DesiredState::Running,
                            updated_at: now_unix,
                        };
                        write_row(&mut table, &key, &record)?;
                        record_revision(
                            &txn,
                            &RevisionRecord {
                                project: project.to_owned(),
                                name: name.to_owned(),
                                number: revision,
                                spec: spec.clone(),
                                sealed_env: item.sealed_env.clone(),
                                fingerprint: item.fingerprint.clone(),
                                commit: item.commit.clone(),
                                created_at: now_unix,
                            },
                        )?;
                        tracing::info!(service = %key, revision, "service revision stored");
                        revision
                    }
                };
                outcomes.push(DeployOutcome {
                    project: project.to_owned(),
                    name: name.to_owned(),
                    revision,
                    changed: true,
                });
            }
        }
        for cert in certificates {
            crate::certs::put_in(&txn, cert)?;
        }
        txn.commit()?;
        Ok(outcomes)
    }

    /// Points `project/name` at kept revision `number` by recording a **new** revision (one
    /// above the highest so far) that copies that revision's spec, sealed environment and
    /// fingerprint, with the service's current `replicas` — a rollback is itself a new
    /// version, like `kubectl rollout undo`. The service's desired state is kept (a stopped
    /// service stays stopped); `updated_at` and the new revision's `created_at` are
    /// `now_unix`. Prunes old revisions as [`Store::apply_deploy`] does. Returns the updated
    /// service record.
    ///
    /// [`StoreError::NotFound`] if the service does not exist or revision `number` is not
    /// (or no longer) kept. One transaction; any error changes nothing.
    pub fn set_current_revision(
        &self,
        project: &str,
        name: &str,
        number: u64,
        now_unix: u64,
    ) -> Result<ServiceRecord, StoreError> {
        let _span = tracing::debug_span!("orca.store.write", op = "set_current_revision").entered();
        check_name("project name", project)?;
        check_name("service name", name)?;
        let key = scoped_key(project, name);
        let txn = self.db().begin_write()?;
        let record = {
            let mut table = txn.open_table(SERVICES)?;
            let mut record = read_row(&table, &key)?.ok_or_else(|| not_found(&key))?;
            let source = revisions::get_in(&txn, project, name, number)?.ok_or_else(|| {
                StoreError::NotFound {
                    what: format!("revision {number} of service {key}"),
                }
            })?;
            let revision = next_revision(&txn, Some(&record), project, name)?;
            let mut spec = source.spec;
            spec.replicas = record.spec.replicas;
            record_revision(
                &txn,
                &RevisionRecord {
                    project: project.to_owned(),
                    name: name.to_owned(),
                    number: revision,
                    spec: spec.clone(),
                    sealed_env: source.sealed_env,
                    fingerprint: source.fingerprint,
                    commit: source.commit,
                    created_at: now_unix,
                },
            )?;
            record.spec = spec;
            record.revision = revision;
            record.updated_at = now_unix;
            write_row(&mut table, &key, &record)?;
            tracing::info!(service = %key, from = number, revision, "service revision restored");
            record
        };
        txn.commit()?;
        Ok(record)
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

    /// Every service, sorted by `project/name`. A record that cannot be decoded is left
    /// out (and reported by [`Store::broken_records`]): it never hides the others.
    pub fn list_services(&self) -> Result<Vec<ServiceRecord>, StoreError> {
        let txn = self.db().begin_read()?;
        list_in(self, &txn)
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

    /// A deploy item whose fingerprint and sealed environment follow the image, like the
    /// host's fingerprint (which leaves `replicas` out).
    fn d(project: &str, name: &str, image: &str, replicas: u32) -> DeployItem {
        item(spec(project, name, image, replicas), &format!("fp:{image}"))
    }

    fn item(spec: ServiceSpec, fingerprint: &str) -> DeployItem {
        DeployItem {
            spec,
            sealed_env: format!("sealed:{fingerprint}").into_bytes(),
            fingerprint: fingerprint.to_owned(),
            commit: None,
        }
    }

    fn keys(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(p, n)| (p.to_string(), n.to_string()))
            .collect()
    }

    fn with_domain(mut i: DeployItem, domain: &str) -> DeployItem {
        i.spec.domain = Some(domain.into());
        i
    }

    fn cert(domain: &str, service: &str) -> crate::CertificateRecord {
        crate::CertificateRecord {
            domain: domain.into(),
            service: service.into(),
            source: crate::CertSource::Manual,
            cert_pem: "-----BEGIN CERTIFICATE-----\n".into(),
            key_sealed: vec![1, 2, 3],
            not_after: 100,
            stored_at: 1,
        }
    }

    #[test]
    fn a_deploy_is_one_transaction_with_domains_and_certificates() {
        let (_dir, store) = store();
        store
            .apply_deploy_with(
                &[with_domain(d("web", "api", "api:1", 1), "a.test")],
                &[cert("a.test", "web/api")],
                1,
            )
            .unwrap();
        assert!(store.get_certificate("a.test").unwrap().is_some());
        // Another service taking a.test: refused, and nothing of the request is written —
        // not its other service, not its certificate.
        let err = store
            .apply_deploy_with(
                &[
                    d("blog", "ok", "ok:1", 1),
                    with_domain(d("blog", "web", "web:1", 1), "a.test"),
                ],
                &[cert("b.test", "blog/web")],
                2,
            )
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, StoreError::Conflict { .. })
                && msg.contains("domain \"a.test\"")
                && msg.contains("service \"api\" in project \"web\""),
            "{msg}"
        );
        assert_eq!(store.get_service("blog", "ok").unwrap(), None);
        assert_eq!(store.get_certificate("b.test").unwrap(), None);
        // The service that holds the domain may redeploy with it.
        store
            .apply_deploy_with(
                &[with_domain(d("web", "api", "api:2", 1), "a.test")],
                &[],
                3,
            )
            .unwrap();
    }

    #[test]
    fn first_deploy_is_revision_one_and_changed() {
        let (_dir, store) = store();
        let out = store
            .apply_deploy(&[d("web", "api", "api:1", 2)], 100)
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
            .apply_deploy(&[d("web", "api", "api:1", 2)], 100)
            .unwrap();
        let out = store
            .apply_deploy(&[d("web", "api", "api:1", 2)], 200)
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
            .apply_deploy(&[d("web", "api", "api:1", 2)], 100)
            .unwrap();
        let out = store
            .apply_deploy(&[d("web", "api", "api:2", 2)], 200)
            .unwrap();
        assert_eq!((out[0].revision, out[0].changed), (2, true));
        let rec = store.get_service("web", "api").unwrap().unwrap();
        assert_eq!(rec.spec, spec("web", "api", "api:2", 2));
        assert_eq!(rec.updated_at, 200);
    }

    fn numbers(store: &Store, project: &str, name: &str) -> Vec<u64> {
        store
            .list_revisions(project, name)
            .unwrap()
            .iter()
            .map(|r| r.number)
            .collect()
    }

    #[test]
    fn replicas_only_change_with_same_fingerprint_scales_in_place() {
        let (_dir, store) = store();
        store
            .apply_deploy(&[d("web", "api", "api:1", 2)], 100)
            .unwrap();
        let out = store
            .apply_deploy(&[d("web", "api", "api:1", 5)], 200)
            .unwrap();
        assert_eq!((out[0].revision, out[0].changed), (1, true));
        let rec = store.get_service("web", "api").unwrap().unwrap();
        assert_eq!(rec.spec, spec("web", "api", "api:1", 5));
        assert_eq!((rec.revision, rec.updated_at), (1, 200));
        // No new revision record; the existing one is immutable.
        assert_eq!(numbers(&store, "web", "api"), [1]);
        let current = store.current_revision("web", "api").unwrap().unwrap();
        assert_eq!(current.spec.replicas, 2);
        // Deploying the scaled spec again is now unchanged.
        let out = store
            .apply_deploy(&[d("web", "api", "api:1", 5)], 300)
            .unwrap();
        assert_eq!((out[0].revision, out[0].changed), (1, false));
        assert_eq!(
            store.get_service("web", "api").unwrap().unwrap().updated_at,
            200
        );
    }

    #[test]
    fn replicas_change_with_other_fingerprint_is_a_new_revision() {
        let (_dir, store) = store();
        store
            .apply_deploy(&[d("web", "api", "api:1", 2)], 100)
            .unwrap();
        let out = store
            .apply_deploy(&[item(spec("web", "api", "api:1", 5), "fp:other")], 200)
            .unwrap();
        assert_eq!((out[0].revision, out[0].changed), (2, true));
        assert_eq!(numbers(&store, "web", "api"), [1, 2]);
    }

    #[test]
    fn same_spec_with_new_fingerprint_is_a_new_revision() {
        // E.g. a secret the environment references was rotated.
        let (_dir, store) = store();
        store
            .apply_deploy(&[d("web", "api", "api:1", 2)], 100)
            .unwrap();
        let out = store
            .apply_deploy(&[item(spec("web", "api", "api:1", 2), "fp:rotated")], 200)
            .unwrap();
        assert_eq!((out[0].revision, out[0].changed), (2, true));
        let current = store.current_revision("web", "api").unwrap().unwrap();
        assert_eq!(current.number, 2);
        assert_eq!(current.fingerprint, "fp:rotated");
        assert_eq!(current.sealed_env, b"sealed:fp:rotated");
    }

    #[test]
    fn replicas_and_another_field_changed_is_a_new_revision_even_with_same_fingerprint() {
        let (_dir, store) = store();
        store
            .apply_deploy(&[d("web", "api", "api:1", 2)], 100)
            .unwrap();
        let mut changed = spec("web", "api", "api:1", 5);
        changed.port = Some(8080);
        let out = store
            .apply_deploy(&[item(changed.clone(), "fp:api:1")], 200)
            .unwrap();
        assert_eq!((out[0].revision, out[0].changed), (2, true));
        assert_eq!(
            store.current_revision("web", "api").unwrap().unwrap().spec,
            changed
        );
    }

    #[test]
    fn service_without_a_revision_record_gets_a_new_revision() {
        // A service stored by an orca that did not record revisions.
        let (_dir, store) = store();
        let legacy = ServiceRecord {
            spec: spec("web", "api", "api:1", 2),
            revision: 4,
            state: DesiredState::Running,
            updated_at: 50,
        };
        write_raw(&store, "web/api", &encode(&Row::from_record(&legacy)));
        assert_eq!(store.current_revision("web", "api").unwrap(), None);
        let out = store
            .apply_deploy(&[d("web", "api", "api:1", 2)], 100)
            .unwrap();
        assert_eq!((out[0].revision, out[0].changed), (5, true));
        assert_eq!(numbers(&store, "web", "api"), [5]);
        // From now on the rule applies normally.
        let out = store
            .apply_deploy(&[d("web", "api", "api:1", 2)], 200)
            .unwrap();
        assert_eq!((out[0].revision, out[0].changed), (5, false));
    }

    #[test]
    fn every_new_revision_writes_a_revision_record() {
        let (_dir, store) = store();
        let sealed: Vec<u8> = (0..=255).collect(); // not UTF-8, every byte value
        let mut first = d("web", "api", "api:1", 2);
        first.sealed_env = sealed.clone();
        store.apply_deploy(&[first], 100).unwrap();
        store
            .apply_deploy(&[d("web", "api", "api:2", 2)], 200)
            .unwrap();
        // Unchanged and scaled deploys write no revision.
        store
            .apply_deploy(&[d("web", "api", "api:2", 2)], 300)
            .unwrap();
        store
            .apply_deploy(&[d("web", "api", "api:2", 3)], 400)
            .unwrap();

        let revs = store.list_revisions("web", "api").unwrap();
        assert_eq!(
            revs[0],
            RevisionRecord {
                project: "web".into(),
                name: "api".into(),
                number: 1,
                spec: spec("web", "api", "api:1", 2),
                sealed_env: sealed,
                fingerprint: "fp:api:1".into(),
                commit: None,
                created_at: 100,
            }
        );
        assert_eq!(revs.len(), 2);
        assert_eq!((revs[1].number, revs[1].created_at), (2, 200));
        assert_eq!(revs[1].sealed_env, b"sealed:fp:api:2");
        assert_eq!(
            store.get_revision("web", "api", 1).unwrap().as_ref(),
            Some(&revs[0])
        );
        assert_eq!(store.get_revision("web", "api", 3).unwrap(), None);
        assert_eq!(
            store.current_revision("web", "api").unwrap(),
            Some(revs[1].clone())
        );
        assert_eq!(store.current_revision("web", "ghost").unwrap(), None);
        assert!(store.list_revisions("web", "ghost").unwrap().is_empty());
    }

    #[test]
    fn pruning_keeps_ten_newest_plus_the_rollout_revisions() {
        let (_dir, store) = store();
        store
            .apply_deploy(&[d("web", "api-x", "x:1", 1)], 1)
            .unwrap();
        for v in 1..=3 {
            store
                .apply_deploy(&[d("web", "api", &format!("api:{v}"), 1)], v)
                .unwrap();
        }
        store
            .put_rollout("web", "api", &crate::rollouts::tests::rollout(Some(2), 3))
            .unwrap();
        for v in 4..=15 {
            store
                .apply_deploy(&[d("web", "api", &format!("api:{v}"), 1)], v)
                .unwrap();
        }
        let expected: Vec<u64> = [2, 3].into_iter().chain(6..=15).collect();
        assert_eq!(numbers(&store, "web", "api"), expected);
        // A service whose name extends this one is untouched.
        assert_eq!(numbers(&store, "web", "api-x"), [1]);

        // Without the rollout, the next new revision prunes to exactly ten.
        assert!(store.delete_rollout("web", "api").unwrap());
        store
            .apply_deploy(&[d("web", "api", "api:16", 1)], 16)
            .unwrap();
        assert_eq!(numbers(&store, "web", "api"), (7..=16).collect::<Vec<_>>());
        assert_eq!(crate::REVISIONS_KEPT, 10);
    }

    #[test]
    fn set_current_revision_copies_an_old_revision_into_a_new_number() {
        let (_dir, store) = store();
        store
            .apply_deploy(&[d("web", "api", "api:1", 2)], 100)
            .unwrap();
        store
            .apply_deploy(&[d("web", "api", "api:2", 2)], 200)
            .unwrap();
        store.set_replicas("web", "api", 4, 250).unwrap();

        let rec = store.set_current_revision("web", "api", 1, 300).unwrap();
        assert_eq!(rec.revision, 3);
        assert_eq!(rec.spec, spec("web", "api", "api:1", 4));
        assert_eq!((rec.state, rec.updated_at), (DesiredState::Running, 300));
        assert_eq!(store.get_service("web", "api").unwrap().unwrap(), rec);

        let one = store.get_revision("web", "api", 1).unwrap().unwrap();
        let three = store.current_revision("web", "api").unwrap().unwrap();
        assert_eq!(three.number, 3);
        assert_eq!(three.spec, spec("web", "api", "api:1", 4));
        assert_eq!(three.sealed_env, one.sealed_env);
        assert_eq!(three.fingerprint, one.fingerprint);
        assert_eq!(three.created_at, 300);
        assert_eq!(numbers(&store, "web", "api"), [1, 2, 3]);

        // Deploying what now runs is unchanged.
        let out = store
            .apply_deploy(&[d("web", "api", "api:1", 4)], 400)
            .unwrap();
        assert_eq!((out[0].revision, out[0].changed), (3, false));
    }

    #[test]
    fn set_current_revision_keeps_a_stopped_service_stopped() {
        let (_dir, store) = store();
        store
            .apply_deploy(&[d("web", "api", "api:1", 2)], 100)
            .unwrap();
        store
            .apply_deploy(&[d("web", "api", "api:2", 2)], 200)
            .unwrap();
        store
            .set_state(&keys(&[("web", "api")]), DesiredState::Stopped, 250)
            .unwrap();
        let rec = store.set_current_revision("web", "api", 1, 300).unwrap();
        assert_eq!((rec.revision, rec.state), (3, DesiredState::Stopped));
    }

    #[test]
    fn set_current_revision_of_a_pruned_revision_or_missing_service_is_not_found() {
        let (_dir, store) = store();
        for v in 1..=12 {
            store
                .apply_deploy(&[d("web", "api", &format!("api:{v}"), 1)], v)
                .unwrap();
        }
        let err = store
            .set_current_revision("web", "api", 1, 500)
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::NotFound { what } if what.contains("revision 1") && what.contains("web/api")),
            "{err}"
        );
        let rec = store.get_service("web", "api").unwrap().unwrap();
        assert_eq!((rec.revision, rec.updated_at), (12, 12));
        assert_eq!(numbers(&store, "web", "api"), (3..=12).collect::<Vec<_>>());

        let err = store
            .set_current_revision("web", "ghost", 1, 500)
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::NotFound { what } if what.contains("web/ghost")),
            "{err}"
        );

        // The oldest kept revision can be restored; the copy pushes it out of the window.
        let rec = store.set_current_revision("web", "api", 3, 600).unwrap();
        assert_eq!(rec.revision, 13);
        assert_eq!(rec.spec.image.as_deref(), Some("api:3"));
        assert_eq!(numbers(&store, "web", "api"), (4..=13).collect::<Vec<_>>());
    }

    #[test]
    fn failing_deploy_writes_no_service_and_no_revision() {
        let (_dir, store) = store();
        store
            .apply_deploy(&[d("web", "api", "api:1", 1)], 100)
            .unwrap();
        let before = crate::revisions::tests::raw_keys(&store);

        // A corrupt service record late in the request.
        write_raw(&store, "web/zzz", b"garbage");
        let err = store
            .apply_deploy(
                &[
                    d("web", "api", "api:2", 1),
                    d("web", "new", "n:1", 1),
                    d("web", "zzz", "z:1", 1),
                ],
                200,
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert_eq!(crate::revisions::tests::raw_keys(&store), before);
        assert_eq!(store.get_service("web", "new").unwrap(), None);
        let rec = store.get_service("web", "api").unwrap().unwrap();
        assert_eq!((rec.revision, rec.updated_at), (1, 100));

        // A corrupt rollout record of a service getting a new revision.
        write_raw(
            &store,
            "web/zzz",
            &encode(&Row::from_record(&ServiceRecord {
                spec: spec("web", "zzz", "z:0", 1),
                revision: 1,
                state: DesiredState::Running,
                updated_at: 1,
            })),
        );
        crate::rollouts::tests::write_raw(&store, "web/zzz", b"{bad");
        let err = store
            .apply_deploy(
                &[d("web", "api", "api:2", 1), d("web", "zzz", "z:1", 1)],
                300,
            )
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { table: "rollouts", key, .. } if key == "web/zzz"),
            "{err}"
        );
        assert_eq!(crate::revisions::tests::raw_keys(&store), before);

        // A corrupt current revision record.
        store.delete_rollout("web", "zzz").unwrap();
        crate::revisions::tests::write_raw(&store, "web/api/00000000000000000001", b"{bad");
        let err = store
            .apply_deploy(
                &[d("web", "new", "n:1", 1), d("web", "api", "api:2", 1)],
                400,
            )
            .unwrap_err();
        assert!(
            matches!(
                &err,
                StoreError::Corrupt {
                    table: "revisions",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(store.get_service("web", "new").unwrap(), None);
        assert_eq!(crate::revisions::tests::raw_keys(&store), before);
    }

    #[test]
    fn deploy_item_debug_hides_sealed_env() {
        let mut it = d("web", "api", "api:1", 1);
        it.sealed_env = b"SECRET-ish".to_vec();
        let dbg = format!("{it:?}");
        assert!(dbg.contains("<10 bytes>"), "{dbg}");
        assert!(!dbg.contains("SECRET") && !dbg.contains("83"), "{dbg}");
    }

    #[test]
    fn deploying_a_stopped_service_restarts_it_with_new_revision() {
        let (_dir, store) = store();
        store
            .apply_deploy(&[d("web", "api", "api:1", 2)], 100)
            .unwrap();
        store
            .set_state(&keys(&[("web", "api")]), DesiredState::Stopped, 150)
            .unwrap();
        let out = store
            .apply_deploy(&[d("web", "api", "api:1", 2)], 200)
            .unwrap();
        assert_eq!((out[0].revision, out[0].changed), (2, true));
        let rec = store.get_service("web", "api").unwrap().unwrap();
        assert_eq!(rec.state, DesiredState::Running);
    }

    #[test]
    fn deploy_outcomes_follow_request_order_with_mixed_changes() {
        let (_dir, store) = store();
        store
            .apply_deploy(&[d("web", "api", "api:1", 1)], 100)
            .unwrap();
        let out = store
            .apply_deploy(
                &[d("web", "worker", "w:1", 1), d("web", "api", "api:1", 1)],
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
                &[d("web", "api", "api:1", 1), d("web", "api", "api:2", 1)],
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
            .apply_deploy(&[d("web", "api", "api:1", 1)], 100)
            .unwrap();
        write_raw(&store, "web/zzz", b"garbage");
        // "web/api" is written first inside the transaction, then "web/zzz" fails to decode.
        let err = store
            .apply_deploy(
                &[d("web", "api", "api:2", 1), d("web", "zzz", "z:1", 1)],
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
                    d("shop", "api", "a", 1),
                    d("blog", "web", "w", 1),
                    d("blog", "api", "a", 1),
                    // A name that is a suffix of another must not match.
                    d("blog", "xapi", "a", 1),
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
            .apply_deploy(&[d("web", "api", "api:1", 2)], 100)
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
            .apply_deploy(&[d("web", "api", "a", 1), d("web", "worker", "w", 1)], 100)
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
        store.apply_deploy(&[d("web", "api", "a", 1)], 100).unwrap();
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
                .apply_deploy(&[d("web", "api", "api:1", 3)], 100)
                .unwrap();
            store
                .apply_deploy(&[d("web", "api", "api:2", 3)], 200)
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let rec = store.get_service("web", "api").unwrap().unwrap();
        assert_eq!(rec.revision, 2);
        assert_eq!(rec.spec, spec("web", "api", "api:2", 3));
        assert_eq!(rec.updated_at, 200);
        assert_eq!(numbers(&store, "web", "api"), [1, 2]);
        assert_eq!(
            store
                .current_revision("web", "api")
                .unwrap()
                .unwrap()
                .sealed_env,
            b"sealed:fp:api:2"
        );
    }

    #[test]
    fn a_second_open_of_the_same_file_fails_cleanly() {
        let (dir, _store) = store();
        let err = Store::open(&dir.path().join("cluster.db")).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
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
        // A list leaves the broken record out (the others are listed) and names it.
        store.apply_deploy(&[d("web", "ok", "a", 1)], 100).unwrap();
        let listed: Vec<String> = store
            .list_services()
            .unwrap()
            .iter()
            .map(|r| r.key())
            .collect();
        assert_eq!(listed, ["web/ok"]);
        let broken = store.broken_records();
        assert_eq!(broken.len(), 1);
        assert_eq!(
            (broken[0].table.as_str(), broken[0].key.as_str()),
            ("services", "web/api")
        );
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
        store.apply_deploy(&[d("web", "api", "a", 1)], 100).unwrap();
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
            .apply_deploy(&[d("a/b", "api", "a", 1)], 1)
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
