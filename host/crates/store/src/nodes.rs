//! Owns tables `nodes` (the cluster's node table: one record per joined agent node),
//! `join_tokens` (join tokens by id, stored as hashes, with expiry and single use) and
//! `cluster_ca` (the cluster CA's certificate and its sealed private key).
//!
//! The store draws no randomness and reads no clock: ids, secrets' hashes and `now` come from
//! the caller, so every write here is replayable.

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::record::{decode, encode, hex_bytes};
use crate::{Store, StoreError};

const NODES_NAME: &str = "nodes";
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new(NODES_NAME);
const TOKENS_NAME: &str = "join_tokens";
const JOIN_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new(TOKENS_NAME);
const CA_NAME: &str = "cluster_ca";
const CA: TableDefinition<&str, &[u8]> = TableDefinition::new(CA_NAME);
const CA_KEY: &str = "ca";
const SCHEMA: u32 = 1;

pub(crate) fn create_table(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(NODES)?;
    txn.open_table(JOIN_TOKENS)?;
    txn.open_table(CA)?;
    Ok(())
}

/// A joined node as the master remembers it across restarts. Liveness (`ready`/`down`) is
/// not stored: it is derived from the live agent session and `last_seen_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub schema: u32,
    /// Unique node name (the agent's `--name`, default its hostname).
    pub name: String,
    /// The address the node publishes instance ports on and the master's proxy dials.
    pub advertise_addr: String,
    /// `--labels` of the agent.
    pub labels: std::collections::BTreeMap<String, String>,
    /// SHA-256 (hex) of the node certificate's DER: the one certificate accepted for this
    /// node. Removing the record revokes it at once.
    pub cert_sha256: String,
    /// Logical CPUs and memory reported by the node's engine at its last hello.
    pub cpus: u32,
    pub memory_bytes: u64,
    /// The agent's orca version and the engine's version at its last hello.
    pub agent_version: String,
    pub engine_version: String,
    /// Unix ms of join and of the last heartbeat seen.
    pub joined_ms: u64,
    pub last_seen_ms: u64,
    /// Whether an operator drained the node (no new instances; its instances migrate).
    #[serde(default)]
    pub draining: bool,
    /// When the drain started and its deadline (unix ms): at the deadline what is left on
    /// the node is stopped. `None`: no deadline.
    #[serde(default)]
    pub drain_started_ms: Option<u64>,
    #[serde(default)]
    pub drain_deadline_ms: Option<u64>,
}

impl NodeRecord {
    pub const SCHEMA: u32 = SCHEMA;
}

/// A join token as stored: its hash, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    pub schema: u32,
    /// Public id (part of the token string), the table key.
    pub id: String,
    /// SHA-256 of the token's secret part.
    #[serde(with = "hex_bytes")]
    pub secret_sha256: Vec<u8>,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// Reusable tokens may join many nodes until they expire; others join one.
    pub reusable: bool,
    /// The node that used a single-use token.
    pub used_by: Option<String>,
}

impl JoinTokenRecord {
    pub const SCHEMA: u32 = SCHEMA;
}

/// Why a join token was refused. Shown to the joining agent and logged on the master.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefusal {
    #[error("unknown join token (wrong token, or it was deleted)")]
    Unknown,
    #[error("join token has expired")]
    Expired,
    #[error("join token was already used by node {0:?} (single-use; create a new one or use --reusable)")]
    Used(String),
    #[error("a node named {0:?} is already joined with another certificate (remove it first: orca node remove {0})")]
    NameTaken(String),
}

/// The cluster CA: its certificate (PEM) and its private key sealed by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    pub schema: u32,
    pub cert_pem: String,
    #[serde(with = "hex_bytes")]
    pub sealed_key: Vec<u8>,
}

impl CaRecord {
    pub const SCHEMA: u32 = SCHEMA;
}

fn decode_node(key: &str, bytes: &[u8]) -> Result<NodeRecord, StoreError> {
    decode::<NodeRecord>(NODES_NAME, key, bytes, SCHEMA, |r| r.schema)
}

fn decode_token(key: &str, bytes: &[u8]) -> Result<JoinTokenRecord, StoreError> {
    decode::<JoinTokenRecord>(TOKENS_NAME, key, bytes, SCHEMA, |r| r.schema)
}

impl Store {
    /// The cluster CA, or `fresh` stored now if there is none yet (first start).
    pub fn cluster_ca_or_init(
        &self,
        fresh: impl FnOnce() -> CaRecord,
    ) -> Result<CaRecord, StoreError> {
        {
            let txn = self.db().begin_read()?;
            let table = txn.open_table(CA)?;
            if let Some(v) = table.get(CA_KEY)? {
                return decode::<CaRecord>(CA_NAME, CA_KEY, v.value(), SCHEMA, |r| r.schema);
            }
        }
        let _span = tracing::debug_span!("orca.store.write", op = "cluster_ca").entered();
        let txn = self.db().begin_write()?;
        let ca = {
            let mut table = txn.open_table(CA)?;
            let existing = table.get(CA_KEY)?.map(|v| v.value().to_vec());
            match existing {
                Some(bytes) => decode::<CaRecord>(CA_NAME, CA_KEY, &bytes, SCHEMA, |r| r.schema)?,
                None => {
                    let ca = fresh();
                    table.insert(CA_KEY, encode(&ca).as_slice())?;
                    ca
                }
            }
        };
        txn.commit()?;
        Ok(ca)
    }

    /// Stores a new join token.
    pub fn put_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError> {
        let _span = tracing::debug_span!("orca.store.write", op = "put_join_token").entered();
        let txn = self.db().begin_write()?;
        {
            let mut table = txn.open_table(JOIN_TOKENS)?;
            if table.get(token.id.as_str())?.is_some() {
                return Err(StoreError::Conflict {
                    what: format!("join token `{}` already exists", token.id),
                });
            }
            table.insert(token.id.as_str(), encode(token).as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Every join token, by id (expired ones included, so the operator sees them).
    pub fn list_join_tokens(&self) -> Result<Vec<JoinTokenRecord>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(JOIN_TOKENS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            match decode_token(k.value(), v.value()) {
                Ok(t) => out.push(t),
                Err(e) => {
                    self.note(e);
                }
            }
        }
        Ok(out)
    }

    /// Joins a node in one transaction: checks the token (`secret_ok` compares the stored
    /// hash in constant time), marks a single-use token used, and stores `node`. A node of
    /// the same name is replaced only if `replace_existing` (a re-join of a known node).
    pub fn join_node(
        &self,
        token_id: &str,
        secret_ok: impl FnOnce(&[u8]) -> bool,
        now_ms: u64,
        node: &NodeRecord,
        replace_existing: bool,
    ) -> Result<Result<(), JoinRefusal>, StoreError> {
        let _span = tracing::debug_span!("orca.store.write", op = "join_node").entered();
        let txn = self.db().begin_write()?;
        {
            let mut tokens = txn.open_table(JOIN_TOKENS)?;
            let token = match tokens.get(token_id)? {
                Some(v) => decode_token(token_id, v.value())?,
                None => return Ok(Err(JoinRefusal::Unknown)),
            };
            if !secret_ok(&token.secret_sha256) {
                return Ok(Err(JoinRefusal::Unknown));
            }
            if now_ms >= token.expires_ms {
                return Ok(Err(JoinRefusal::Expired));
            }
            if let (false, Some(by)) = (token.reusable, &token.used_by) {
                return Ok(Err(JoinRefusal::Used(by.clone())));
            }
            let mut nodes = txn.open_table(NODES)?;
            if nodes.get(node.name.as_str())?.is_some() && !replace_existing {
                return Ok(Err(JoinRefusal::NameTaken(node.name.clone())));
            }
            if !token.reusable {
                let used = JoinTokenRecord {
                    used_by: Some(node.name.clone()),
                    ..token
                };
                tokens.insert(token_id, encode(&used).as_slice())?;
            }
            nodes.insert(node.name.as_str(), encode(node).as_slice())?;
        }
        txn.commit()?;
        tracing::info!(node = %node.name, "node joined");
        Ok(Ok(()))
    }

    /// One node's record.
    pub fn get_node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(NODES)?;
        match table.get(name)? {
            Some(v) => Ok(Some(decode_node(name, v.value())?)),
            None => Ok(None),
        }
    }

    /// Every joined node, by name; an undecodable record is skipped and remembered.
    pub fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(NODES)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            match decode_node(k.value(), v.value()) {
                Ok(n) => out.push(n),
                Err(e) => {
                    self.note(e);
                }
            }
        }
        Ok(out)
    }

    /// Updates a node's record with `f` (hello facts, last seen, drain flag). `false` if the
    /// node is not (or no longer) joined: it was removed, so nothing is written.
    pub fn update_node(
        &self,
        name: &str,
        f: impl FnOnce(&mut NodeRecord),
    ) -> Result<bool, StoreError> {
        let txn = self.db().begin_write()?;
        let found = {
            let mut table = txn.open_table(NODES)?;
            let current = match table.get(name)? {
                Some(v) => Some(decode_node(name, v.value())?),
                None => None,
            };
            match current {
                Some(mut node) => {
                    f(&mut node);
                    table.insert(name, encode(&node).as_slice())?;
                    true
                }
                None => false,
            }
        };
        txn.commit()?;
        Ok(found)
    }

    /// Removes a node (its certificate stops being accepted); `true` if it existed.
    pub fn remove_node(&self, name: &str) -> Result<bool, StoreError> {
        let _span = tracing::debug_span!("orca.store.write", op = "remove_node").entered();
        let txn = self.db().begin_write()?;
        let existed = txn.open_table(NODES)?.remove(name)?.is_some();
        txn.commit()?;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::store;

    fn node(name: &str) -> NodeRecord {
        NodeRecord {
            schema: SCHEMA,
            name: name.into(),
            advertise_addr: "10.0.0.2".into(),
            labels: Default::default(),
            cert_sha256: "ab".into(),
            cpus: 2,
            memory_bytes: 1 << 30,
            agent_version: "0".into(),
            engine_version: "1".into(),
            joined_ms: 1,
            last_seen_ms: 1,
            draining: false,
            drain_started_ms: None,
            drain_deadline_ms: None,
        }
    }

    fn token(id: &str, reusable: bool) -> JoinTokenRecord {
        JoinTokenRecord {
            schema: SCHEMA,
            id: id.into(),
            secret_sha256: vec![7; 32],
            created_ms: 0,
            expires_ms: 1000,
            reusable,
            used_by: None,
        }
    }

    #[test]
    fn single_use_token_joins_once_and_names_the_node_that_used_it() {
        let (_d, s) = store();
        s.put_join_token(&token("t1", false)).unwrap();
        let ok = |h: &[u8]| h == [7; 32];
        assert_eq!(
            s.join_node("t1", ok, 10, &node("n1"), false).unwrap(),
            Ok(())
        );
        assert_eq!(
            s.join_node("t1", ok, 11, &node("n2"), false).unwrap(),
            Err(JoinRefusal::Used("n1".into()))
        );
        assert_eq!(s.list_nodes().unwrap().len(), 1);
    }

    #[test]
    fn expired_wrong_and_unknown_tokens_are_refused_and_change_nothing() {
        let (_d, s) = store();
        s.put_join_token(&token("t1", true)).unwrap();
        let ok = |h: &[u8]| h == [7; 32];
        assert_eq!(
            s.join_node("t1", ok, 1000, &node("n1"), false).unwrap(),
            Err(JoinRefusal::Expired)
        );
        assert_eq!(
            s.join_node("t1", |_| false, 10, &node("n1"), false)
                .unwrap(),
            Err(JoinRefusal::Unknown)
        );
        assert_eq!(
            s.join_node("nope", ok, 10, &node("n1"), false).unwrap(),
            Err(JoinRefusal::Unknown)
        );
        assert!(s.list_nodes().unwrap().is_empty());
        // A reusable token joins many, but a taken name is refused.
        assert_eq!(
            s.join_node("t1", ok, 10, &node("n1"), false).unwrap(),
            Ok(())
        );
        assert_eq!(
            s.join_node("t1", ok, 10, &node("n2"), false).unwrap(),
            Ok(())
        );
        assert_eq!(
            s.join_node("t1", ok, 10, &node("n1"), false).unwrap(),
            Err(JoinRefusal::NameTaken("n1".into()))
        );
    }

    #[test]
    fn removed_node_is_not_updated_again() {
        let (_d, s) = store();
        s.put_join_token(&token("t1", true)).unwrap();
        s.join_node("t1", |_| true, 1, &node("n1"), false)
            .unwrap()
            .unwrap();
        assert!(s.update_node("n1", |n| n.last_seen_ms = 5).unwrap());
        assert_eq!(s.get_node("n1").unwrap().unwrap().last_seen_ms, 5);
        assert!(s.remove_node("n1").unwrap());
        assert!(!s.update_node("n1", |n| n.last_seen_ms = 6).unwrap());
        assert!(s.get_node("n1").unwrap().is_none());
    }

    #[test]
    fn cluster_ca_is_made_once() {
        let (_d, s) = store();
        let a = s
            .cluster_ca_or_init(|| CaRecord {
                schema: SCHEMA,
                cert_pem: "A".into(),
                sealed_key: vec![1],
            })
            .unwrap();
        let b = s
            .cluster_ca_or_init(|| CaRecord {
                schema: SCHEMA,
                cert_pem: "B".into(),
                sealed_key: vec![2],
            })
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(b.cert_pem, "A");
    }
}
