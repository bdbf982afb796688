//! Owns tables `webhooks` (registered hooks, secrets sealed), `deliveries` (recent webhook
//! deliveries and what became of them) and `delivery_ids` (ids already processed, so a
//! redelivered push acts once).

use std::fmt;

use redb::{
    ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::record::{decode, encode, hex_bytes, Versioned};
use crate::{Store, StoreError};

const WEBHOOKS: TableDefinition<&str, &[u8]> = TableDefinition::new("webhooks");
const DELIVERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("deliveries");
const DELIVERY_IDS: TableDefinition<&str, u64> = TableDefinition::new("delivery_ids");
const SCHEMA: u32 = 1;

/// Deliveries kept (the newest); older ones are pruned on insert.
pub const DELIVERIES_KEPT: u64 = 200;
/// Processed delivery ids kept for deduplication (the newest by time).
pub const DELIVERY_IDS_KEPT: usize = 5000;

/// A registered webhook: pushes to `repo` on a branch matching `branch` redeploy
/// `project/service`, if signed with the secret.
///
/// `Debug` never prints the sealed secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRecord {
    /// Short identifier, unique (`wh-` + hex).
    pub id: String,
    /// Which plugin verifies deliveries: `github`, `gitea`, `gitlab` or an installed plugin.
    pub forge: String,
    /// `owner/name`, or a clone URL.
    pub repo: String,
    /// Branch name or glob.
    pub branch: String,
    /// Project of the service to redeploy.
    pub project: String,
    /// Service to redeploy.
    pub service: String,
    /// The secret, sealed by the host's `SecretBox`.
    #[serde(with = "hex_bytes")]
    pub sealed_secret: Vec<u8>,
    /// Unix seconds of registration.
    pub created_at: u64,
}

impl fmt::Debug for WebhookRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookRecord")
            .field("id", &self.id)
            .field("forge", &self.forge)
            .field("repo", &self.repo)
            .field("branch", &self.branch)
            .field("project", &self.project)
            .field("service", &self.service)
            .field(
                "sealed_secret",
                &format_args!("<{} bytes>", self.sealed_secret.len()),
            )
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// One received delivery and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// Sequence number (assigned by [`Store::record_delivery`]).
    #[serde(default)]
    pub seq: u64,
    /// Unix seconds of receipt.
    pub at: u64,
    /// The plugin that handled it.
    pub forge: String,
    /// The forge's delivery id, if it sent one.
    pub delivery: Option<String>,
    /// The event header's value (`push`, `ping`, `Push Hook`), if any.
    pub event: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
    /// `redeploy`, `ignored`, `pong`, `duplicate`, `rejected`, `error`.
    pub outcome: String,
    /// Why (rejection or ignore reason), or what was started.
    pub detail: String,
    /// The hooks it acted for (empty when none verified).
    pub hooks: Vec<String>,
}

pub(crate) fn create_table(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(WEBHOOKS)?;
    txn.open_table(DELIVERIES)?;
    txn.open_table(DELIVERY_IDS)?;
    Ok(())
}

fn encode_row<T: Serialize + Clone>(value: &T) -> Vec<u8> {
    encode(&Versioned {
        schema: SCHEMA,
        value: value.clone(),
    })
}

fn decode_row<T: serde::de::DeserializeOwned>(
    table: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    decode::<Versioned<T>>(table, key, bytes, SCHEMA, |r| r.schema).map(|r| r.value)
}

impl Store {
    /// Registers a webhook. An id already in use is a [`StoreError::Conflict`]; so is a
    /// second hook for the same forge, repository, branch and service.
    pub fn put_webhook(&self, hook: &WebhookRecord) -> Result<(), StoreError> {
        let txn = self.db().begin_write()?;
        {
            let mut table = txn.open_table(WEBHOOKS)?;
            if table.get(hook.id.as_str())?.is_some() {
                return Err(StoreError::Conflict {
                    what: format!("webhook {} already exists", hook.id),
                });
            }
            for entry in table.iter()? {
                let (k, v) = entry?;
                let other: WebhookRecord = decode_row("webhooks", k.value(), v.value())?;
                if other.forge == hook.forge
                    && other.repo.eq_ignore_ascii_case(&hook.repo)
                    && other.branch == hook.branch
                    && other.project == hook.project
                    && other.service == hook.service
                {
                    return Err(StoreError::Conflict {
                        what: format!(
                            "webhook {} already redeploys {}/{} for {} branch {}",
                            other.id, other.project, other.service, other.repo, other.branch
                        ),
                    });
                }
            }
            table.insert(hook.id.as_str(), encode_row(hook).as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Every registered webhook, by id.
    pub fn list_webhooks(&self) -> Result<Vec<WebhookRecord>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(WEBHOOKS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push(decode_row("webhooks", k.value(), v.value())?);
        }
        Ok(out)
    }

    /// One webhook.
    pub fn get_webhook(&self, id: &str) -> Result<Option<WebhookRecord>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(WEBHOOKS)?;
        match table.get(id)? {
            Some(v) => decode_row("webhooks", id, v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Removes a webhook; `false` if there was none with that id.
    pub fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        let txn = self.db().begin_write()?;
        let removed = txn.open_table(WEBHOOKS)?.remove(id)?.is_some();
        txn.commit()?;
        Ok(removed)
    }

    /// Appends a delivery to the log (assigning its `seq`) and prunes the log to the newest
    /// [`DELIVERIES_KEPT`]. Returns the assigned sequence number.
    pub fn record_delivery(&self, delivery: &DeliveryRecord) -> Result<u64, StoreError> {
        let txn = self.db().begin_write()?;
        let seq;
        {
            let mut table = txn.open_table(DELIVERIES)?;
            seq = table.last()?.map_or(0, |(k, _)| k.value()) + 1;
            let mut row = delivery.clone();
            row.seq = seq;
            table.insert(seq, encode_row(&row).as_slice())?;
            if seq > DELIVERIES_KEPT {
                let cutoff = seq - DELIVERIES_KEPT;
                table.retain_in(..=cutoff, |_, _| false)?;
            }
        }
        txn.commit()?;
        Ok(seq)
    }

    /// The newest `limit` deliveries, newest first.
    pub fn list_deliveries(&self, limit: usize) -> Result<Vec<DeliveryRecord>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(DELIVERIES)?;
        let mut out = Vec::new();
        for entry in table.iter()?.rev().take(limit) {
            let (k, v) = entry?;
            out.push(decode_row("deliveries", &k.value().to_string(), v.value())?);
        }
        Ok(out)
    }

    /// Claims a delivery id: `true` the first time an id is seen, `false` for a repeat. Keeps
    /// the newest [`DELIVERY_IDS_KEPT`] ids.
    pub fn claim_delivery(&self, id: &str, now_unix: u64) -> Result<bool, StoreError> {
        let txn = self.db().begin_write()?;
        let fresh;
        {
            let mut table = txn.open_table(DELIVERY_IDS)?;
            fresh = table.get(id)?.is_none();
            if fresh {
                table.insert(id, now_unix)?;
                let len = table.len()? as usize;
                if len > DELIVERY_IDS_KEPT {
                    let mut times: Vec<u64> = table
                        .iter()?
                        .map(|e| e.map(|(_, t)| t.value()))
                        .collect::<Result<_, _>>()?;
                    times.sort_unstable();
                    let cutoff = times[len - DELIVERY_IDS_KEPT];
                    table.retain(|_, t| t >= cutoff)?;
                }
            }
        }
        txn.commit()?;
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::store;

    fn hook(id: &str, branch: &str) -> WebhookRecord {
        WebhookRecord {
            id: id.into(),
            forge: "github".into(),
            repo: "org/app".into(),
            branch: branch.into(),
            project: "shop".into(),
            service: "web".into(),
            sealed_secret: vec![1, 2, 3],
            created_at: 5,
        }
    }

    #[test]
    fn webhooks_round_trip_and_conflict() {
        let (_d, store) = store();
        store.put_webhook(&hook("wh-1", "main")).unwrap();
        store.put_webhook(&hook("wh-2", "release/*")).unwrap();
        assert!(matches!(
            store.put_webhook(&hook("wh-1", "dev")),
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            store.put_webhook(&hook("wh-3", "main")),
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(store.list_webhooks().unwrap().len(), 2);
        assert_eq!(
            store.get_webhook("wh-2").unwrap(),
            Some(hook("wh-2", "release/*"))
        );
        assert!(store.delete_webhook("wh-1").unwrap());
        assert!(!store.delete_webhook("wh-1").unwrap());
        assert_eq!(
            store.list_webhooks().unwrap(),
            vec![hook("wh-2", "release/*")]
        );
        assert!(!format!("{:?}", hook("x", "y")).contains("[1, 2, 3]"));
    }

    #[test]
    fn deliveries_are_pruned_newest_first() {
        let (_d, store) = store();
        for i in 0..(DELIVERIES_KEPT + 5) {
            let d = DeliveryRecord {
                seq: 0,
                at: i,
                forge: "github".into(),
                delivery: Some(format!("d{i}")),
                event: Some("push".into()),
                status: 202,
                outcome: "redeploy".into(),
                detail: String::new(),
                hooks: vec!["wh-1".into()],
            };
            store.record_delivery(&d).unwrap();
        }
        let all = store.list_deliveries(1000).unwrap();
        assert_eq!(all.len() as u64, DELIVERIES_KEPT);
        assert_eq!(all[0].at, DELIVERIES_KEPT + 4);
        assert_eq!(all[0].seq, DELIVERIES_KEPT + 5);
    }

    #[test]
    fn a_delivery_id_is_claimed_once() {
        let (_d, store) = store();
        assert!(store.claim_delivery("abc", 1).unwrap());
        assert!(!store.claim_delivery("abc", 2).unwrap());
        assert!(store.claim_delivery("def", 2).unwrap());
    }
}
