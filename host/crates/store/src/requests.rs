//! Owns table `operator_requests`: promote and rollback requests of operators, recorded by
//! the API and consumed by the controller — the one writer of `rollouts` — in the same
//! transaction as the rollout step they cause ([`Store::step_rollout`]).
//!
//! Keys are `project/name/SEQ` (SEQ zero-padded, per service), so a service's requests read
//! in the order they arrived. A request is recorded only while the service's rollout is
//! progressing (checked in the same write transaction). A step that did not see every
//! pending request of its service is refused, so a request that arrives while the strategy
//! is being called is never lost or undone: the controller plans again with it.

use redb::{ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::record::{check_name, decode, encode, scoped_key};
use crate::rollouts::{self, RolloutPhase, RolloutRecord};
use crate::{Store, StoreError};

const TABLE_NAME: &str = "operator_requests";
const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new(TABLE_NAME);
const SCHEMA: u32 = 1;

/// What an operator asked of a rollout in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    /// Skip the remaining steps and promote the candidate.
    Promote,
    /// Return to the stable revision.
    Rollback,
}

/// One recorded operator request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorRequest {
    /// Order of arrival among the service's pending requests.
    pub seq: u64,
    /// Promote or roll back.
    pub kind: RequestKind,
    /// The candidate revision of the rollout it was made against.
    pub candidate_revision: u64,
    /// Unix seconds when it was recorded, as passed in by the caller.
    pub requested_at: u64,
}

#[derive(Serialize, Deserialize)]
struct Row {
    schema: u32,
    kind: RequestKind,
    candidate_revision: u64,
    requested_at: u64,
}

pub(crate) fn create_table(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(REQUESTS)?;
    Ok(())
}

fn request_key(project: &str, name: &str, seq: u64) -> String {
    format!("{}/{seq:020}", scoped_key(project, name))
}

/// `project/name/` prefix range of one service's requests.
fn service_range(project: &str, name: &str) -> (String, String) {
    let base = scoped_key(project, name);
    (format!("{base}/"), format!("{base}0"))
}

fn decode_key(key: &str, bytes: &[u8]) -> Result<((String, String), OperatorRequest), StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        table: TABLE_NAME,
        key: key.to_owned(),
        reason: reason.to_owned(),
    };
    let mut parts = key.splitn(3, '/');
    let (Some(project), Some(name), Some(seq)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(corrupt("key is not `project/name/seq`"));
    };
    let seq = seq
        .parse()
        .map_err(|_| corrupt("sequence is not a number"))?;
    let row = decode::<Row>(TABLE_NAME, key, bytes, SCHEMA, |r| r.schema)?;
    Ok((
        (project.to_owned(), name.to_owned()),
        OperatorRequest {
            seq,
            kind: row.kind,
            candidate_revision: row.candidate_revision,
            requested_at: row.requested_at,
        },
    ))
}

/// Pending requests of one service, in order.
fn service_requests(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    project: &str,
    name: &str,
) -> Result<Vec<OperatorRequest>, StoreError> {
    let (lo, hi) = service_range(project, name);
    let mut out = Vec::new();
    for entry in table.range(lo.as_str()..hi.as_str())? {
        let (k, v) = entry?;
        out.push(decode_key(k.value(), v.value())?.1);
    }
    Ok(out)
}

impl Store {
    /// Records an operator request against the rollout of `project/name`, if that rollout is
    /// progressing; `None` (nothing recorded) otherwise. The controller applies it on its
    /// next pass.
    pub fn request_rollout_change(
        &self,
        project: &str,
        name: &str,
        kind: RequestKind,
        now_unix: u64,
    ) -> Result<Option<(OperatorRequest, RolloutRecord)>, StoreError> {
        let _span =
            tracing::debug_span!("orca.store.write", op = "request_rollout_change").entered();
        check_name("project name", project)?;
        check_name("service name", name)?;
        let txn = self.db().begin_write()?;
        let recorded = {
            match rollouts::get_in(&txn, project, name)? {
                Some(r) if r.phase == RolloutPhase::Progressing => {
                    let mut table = txn.open_table(REQUESTS)?;
                    let seq = service_requests(&table, project, name)?
                        .last()
                        .map_or(1, |q| q.seq + 1);
                    let req = OperatorRequest {
                        seq,
                        kind,
                        candidate_revision: r.candidate_revision,
                        requested_at: now_unix,
                    };
                    let row = encode(&Row {
                        schema: SCHEMA,
                        kind,
                        candidate_revision: req.candidate_revision,
                        requested_at: now_unix,
                    });
                    table.insert(request_key(project, name, seq).as_str(), row.as_slice())?;
                    Some((req, r))
                }
                _ => None,
            }
        };
        if recorded.is_some() {
            txn.commit()?;
        }
        Ok(recorded)
    }

    /// Every pending operator request as `((project, name), request)`, by service and order.
    #[expect(
        clippy::type_complexity,
        reason = "the pair-of-names key matches `list_rollouts`"
    )]
    pub fn pending_requests(&self) -> Result<Vec<((String, String), OperatorRequest)>, StoreError> {
        let txn = self.db().begin_read()?;
        pending_in(&txn)
    }

    /// One rollout step, in one transaction: stores `record` (or deletes the rollout when
    /// `None`) and consumes the operator requests `seen` (their sequence numbers) that the
    /// step acted on. Refused — `Ok(false)`, nothing written — when the service has a pending
    /// request the step did not see: it arrived during the step, and the next pass must plan
    /// with it.
    pub fn step_rollout(
        &self,
        project: &str,
        name: &str,
        record: Option<&RolloutRecord>,
        seen: &[u64],
    ) -> Result<bool, StoreError> {
        let _span = tracing::debug_span!("orca.store.write", op = "step_rollout").entered();
        check_name("project name", project)?;
        check_name("service name", name)?;
        let txn = self.db().begin_write()?;
        {
            let mut table = txn.open_table(REQUESTS)?;
            let pending = service_requests(&table, project, name)?;
            if pending.iter().any(|q| !seen.contains(&q.seq)) {
                return Ok(false);
            }
            for q in pending {
                table.remove(request_key(project, name, q.seq).as_str())?;
            }
        }
        match record {
            Some(r) => rollouts::put_in(&txn, project, name, r)?,
            None => {
                rollouts::delete_in(&txn, project, name)?;
            }
        }
        txn.commit()?;
        Ok(true)
    }
}

/// Every pending operator request in `txn`, by service and order.
#[expect(
    clippy::type_complexity,
    reason = "the pair-of-names key matches `list_rollouts`"
)]
pub(crate) fn pending_in(
    txn: &ReadTransaction,
) -> Result<Vec<((String, String), OperatorRequest)>, StoreError> {
    let table = txn.open_table(REQUESTS)?;
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (k, v) = entry?;
        out.push(decode_key(k.value(), v.value())?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollouts::tests::rollout;
    use crate::testutil::store;

    #[test]
    fn a_request_needs_a_progressing_rollout() {
        let (_dir, store) = store();
        assert_eq!(
            store
                .request_rollout_change("web", "api", RequestKind::Promote, 1)
                .unwrap(),
            None
        );
        let mut r = rollout(Some(1), 2);
        r.phase = RolloutPhase::Finished;
        store.put_rollout("web", "api", &r).unwrap();
        assert_eq!(
            store
                .request_rollout_change("web", "api", RequestKind::Promote, 1)
                .unwrap(),
            None
        );
        assert!(store.pending_requests().unwrap().is_empty());
    }

    #[test]
    fn requests_are_kept_in_order_and_consumed_by_the_step_that_saw_them() {
        let (_dir, store) = store();
        store
            .put_rollout("web", "api", &rollout(Some(1), 2))
            .unwrap();
        let (a, _) = store
            .request_rollout_change("web", "api", RequestKind::Promote, 10)
            .unwrap()
            .unwrap();
        let (b, _) = store
            .request_rollout_change("web", "api", RequestKind::Rollback, 11)
            .unwrap()
            .unwrap();
        assert_eq!((a.seq, b.seq), (1, 2));
        assert_eq!(b.candidate_revision, 2);
        let pending = store.pending_requests().unwrap();
        assert_eq!(
            pending,
            vec![
                (("web".into(), "api".into()), a.clone()),
                (("web".into(), "api".into()), b.clone())
            ]
        );
        // A step that saw only the first is refused: nothing written.
        let mut next = rollout(Some(1), 2);
        next.steps = 9;
        assert!(!store.step_rollout("web", "api", Some(&next), &[1]).unwrap());
        assert_eq!(store.get_rollout("web", "api").unwrap().unwrap().steps, 2);
        assert_eq!(store.pending_requests().unwrap().len(), 2);
        // One that saw both writes the record and consumes them.
        assert!(store
            .step_rollout("web", "api", Some(&next), &[1, 2])
            .unwrap());
        assert_eq!(store.get_rollout("web", "api").unwrap().unwrap().steps, 9);
        assert!(store.pending_requests().unwrap().is_empty());
        // Deleting through a step.
        assert!(store.step_rollout("web", "api", None, &[]).unwrap());
        assert_eq!(store.get_rollout("web", "api").unwrap(), None);
    }

    /// 100 requests sent from another thread while steps run: every one is seen by exactly
    /// one committed step (none lost, none applied twice).
    #[test]
    fn requests_arriving_during_steps_are_never_lost() {
        let (_dir, store) = store();
        store
            .put_rollout("web", "api", &rollout(Some(1), 2))
            .unwrap();
        let sender = {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..100u64 {
                    let kind = if i % 2 == 0 {
                        RequestKind::Promote
                    } else {
                        RequestKind::Rollback
                    };
                    store
                        .request_rollout_change("web", "api", kind, i)
                        .unwrap()
                        .expect("the rollout stays progressing");
                }
            })
        };
        let mut applied: Vec<u64> = Vec::new();
        let mut steps = 0u64;
        loop {
            let done = sender.is_finished();
            let seen: Vec<OperatorRequest> = store
                .pending_requests()
                .unwrap()
                .into_iter()
                .map(|(_, q)| q)
                .collect();
            // The "strategy call": the record counts what it applied.
            let mut r = store.get_rollout("web", "api").unwrap().unwrap();
            r.steps += 1;
            let seqs: Vec<u64> = seen.iter().map(|q| q.seq).collect();
            if store.step_rollout("web", "api", Some(&r), &seqs).unwrap() {
                steps += 1;
                applied.extend(seen.iter().map(|q| q.requested_at));
            }
            if done && store.pending_requests().unwrap().is_empty() {
                break;
            }
        }
        sender.join().unwrap();
        applied.sort();
        assert_eq!(
            applied,
            (0..100).collect::<Vec<_>>(),
            "each request applied once"
        );
        assert_eq!(
            store.get_rollout("web", "api").unwrap().unwrap().steps,
            2 + steps
        );
    }
}
