//! Owns table `tokens`: API tokens stored as SHA-256 hashes with a role, plus token
//! generation and the in-memory constant-time verifier [`TokenSet`].
//!
//! A token string is shown to the operator once, at creation; the store keeps only its hash.

use std::fmt;

use orca_config::Role;
use rand::TryRngCore;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::record::{decode, encode};
use crate::{Store, StoreError};

const TABLE_NAME: &str = "tokens";
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new(TABLE_NAME);
const SCHEMA: u32 = 1;

/// The prefix of every orca API token; it makes a leaked token recognisable to secret
/// scanners and to humans.
pub const TOKEN_PREFIX: &str = "orca_";

/// Generates a new API token: `orca_` followed by 32 bytes from the OS random source as
/// lowercase hex (256 bits of entropy).
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the OS random source is unavailable");
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// Hashes a token for storage and comparison.
///
/// A single SHA-256 is the right tool here, not a password hash (argon2, bcrypt): tokens
/// are high-entropy machine secrets — [`generate_token`] gives 256 random bits, and
/// operator-written tokens in `cluster.toml` must be long random strings (orca-config
/// enforces a minimum length) — so a stolen hash cannot be brute-forced however fast the
/// hash is, while a deliberately slow hash would add latency to every API request.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A stored API token: its name, the SHA-256 of the token string, its role and creation time.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// Unique name chosen by the operator (e.g. "ci").
    pub name: String,
    /// `hash_token(token)`.
    pub hash: [u8; 32],
    /// What the token may do.
    pub role: Role,
    /// Unix seconds, as passed in by the caller.
    pub created_at: u64,
}

// Hand-written so the hash is not printed: it is not the token, but there is no reason to put
// it in logs either.
impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// The on-disk form of a [`StoredToken`]; the hash is hex so the JSON stays readable.
#[derive(Serialize, Deserialize)]
struct Row {
    schema: u32,
    name: String,
    hash: String,
    role: Role,
    created_at: u64,
}

pub(crate) fn create_table(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(TOKENS)?;
    Ok(())
}

fn decode_row(key: &str, bytes: &[u8]) -> Result<StoredToken, StoreError> {
    let row = decode::<Row>(TABLE_NAME, key, bytes, SCHEMA, |r| r.schema)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        table: TABLE_NAME,
        key: key.to_owned(),
        reason,
    };
    let hash = hex::decode(&row.hash)
        .map_err(|e| corrupt(format!("token hash is not hex: {e}")))?
        .try_into()
        .map_err(|v: Vec<u8>| corrupt(format!("token hash is {} bytes, not 32", v.len())))?;
    if row.name != key {
        return Err(corrupt(format!("record names token `{}`", row.name)));
    }
    Ok(StoredToken {
        name: row.name,
        hash,
        role: row.role,
        created_at: row.created_at,
    })
}

impl Store {
    /// Stores a new token. [`StoreError::Conflict`] if a token with that name exists.
    pub fn put_token(&self, token: &StoredToken) -> Result<(), StoreError> {
        let _span = tracing::debug_span!("orca.store.write", op = "put_token").entered();
        if token.name.is_empty() {
            return Err(StoreError::InvalidName {
                what: "token name (empty)".to_owned(),
                reason: "must not be empty",
            });
        }
        let txn = self.db().begin_write()?;
        {
            let mut table = txn.open_table(TOKENS)?;
            if table.get(token.name.as_str())?.is_some() {
                return Err(StoreError::Conflict {
                    what: format!("token `{}` already exists", token.name),
                });
            }
            let row = Row {
                schema: SCHEMA,
                name: token.name.clone(),
                hash: hex::encode(token.hash),
                role: token.role,
                created_at: token.created_at,
            };
            table.insert(token.name.as_str(), encode(&row).as_slice())?;
        }
        txn.commit()?;
        tracing::info!(token = %token.name, role = %token.role, "api token stored");
        Ok(())
    }

    /// Every stored token, sorted by name.
    pub fn list_tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(TOKENS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push(decode_row(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Gives an existing token a new hash (its name and role stay): the old value stops
    /// working with the next reload of the verifier. [`StoreError::NotFound`] if absent.
    pub fn rotate_token(
        &self,
        name: &str,
        hash: [u8; 32],
        now: u64,
    ) -> Result<StoredToken, StoreError> {
        let _span = tracing::debug_span!("orca.store.write", op = "rotate_token").entered();
        let txn = self.db().begin_write()?;
        let token = {
            let mut table = txn.open_table(TOKENS)?;
            let old = match table.get(name)? {
                Some(v) => decode_row(name, v.value())?,
                None => {
                    return Err(StoreError::NotFound {
                        what: format!("token `{name}`"),
                    })
                }
            };
            let row = Row {
                schema: SCHEMA,
                name: old.name.clone(),
                hash: hex::encode(hash),
                role: old.role,
                created_at: now,
            };
            table.insert(name, encode(&row).as_slice())?;
            StoredToken {
                name: old.name,
                hash,
                role: old.role,
                created_at: now,
            }
        };
        txn.commit()?;
        tracing::info!(token = %name, "api token rotated");
        Ok(token)
    }

    /// Deletes a token; `true` if it existed.
    pub fn delete_token(&self, name: &str) -> Result<bool, StoreError> {
        let _span = tracing::debug_span!("orca.store.write", op = "delete_token").entered();
        let txn = self.db().begin_write()?;
        let existed = {
            let mut table = txn.open_table(TOKENS)?;
            let removed = table.remove(name)?;
            removed.is_some()
        };
        txn.commit()?;
        if existed {
            tracing::info!(token = %name, "api token deleted");
        }
        Ok(existed)
    }
}

/// An in-memory verifier over the stored tokens, rebuilt when tokens change.
#[derive(Clone)]
pub struct TokenSet {
    entries: Vec<(String, [u8; 32], Role)>,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("tokens", &self.entries.len())
            .finish()
    }
}

impl TokenSet {
    /// Builds a verifier from `(name, hash, role)` entries.
    pub fn new(entries: Vec<(String, [u8; 32], Role)>) -> TokenSet {
        TokenSet { entries }
    }

    /// Builds a verifier from stored tokens.
    pub fn from_stored(tokens: &[StoredToken]) -> TokenSet {
        TokenSet::new(
            tokens
                .iter()
                .map(|t| (t.name.clone(), t.hash, t.role))
                .collect(),
        )
    }

    /// Returns the name and role of the token matching `presented`, if any.
    ///
    /// The presented token is hashed and compared with *every* entry in constant time, with
    /// no early exit, so response timing reveals neither which entry matched nor how much of
    /// a hash agreed.
    pub fn verify(&self, presented: &str) -> Option<(String, Role)> {
        let hash = hash_token(presented);
        // Index of the first match, or u32::MAX; chosen with constant-time selects.
        let mut found = subtle::Choice::from(0);
        let mut index = u32::MAX;
        for (i, (_, stored, _)) in self.entries.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            let is_match = hash.ct_eq(stored) & !found;
            index = u32::conditional_select(&index, &i, is_match);
            found |= is_match;
        }
        if bool::from(found) {
            let (name, _, role) = &self.entries[index as usize];
            Some((name.clone(), *role))
        } else {
            None
        }
    }

    /// `true` if no tokens are configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many tokens the set holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::store;

    fn stored(name: &str, token: &str, role: Role, created_at: u64) -> StoredToken {
        StoredToken {
            name: name.to_owned(),
            hash: hash_token(token),
            role,
            created_at,
        }
    }

    #[test]
    fn generated_tokens_are_prefixed_hex_and_distinct() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        let body = a.strip_prefix(TOKEN_PREFIX).unwrap();
        assert_eq!(body.len(), 64);
        assert!(body
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
    }

    #[test]
    fn hash_is_sha256() {
        assert_eq!(
            hex::encode(hash_token("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn put_list_conflict_delete() {
        let (_dir, store) = store();
        store
            .put_token(&stored("viewer", "t2", Role::Viewer, 20))
            .unwrap();
        store
            .put_token(&stored("ci", "t1", Role::Deployer, 10))
            .unwrap();
        let err = store
            .put_token(&stored("ci", "other", Role::Admin, 30))
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict { what } if what.contains("ci")),
            "{err}"
        );
        let listed = store.list_tokens().unwrap();
        assert_eq!(
            listed,
            vec![
                stored("ci", "t1", Role::Deployer, 10),
                stored("viewer", "t2", Role::Viewer, 20)
            ]
        );
        assert!(store.delete_token("ci").unwrap());
        assert!(!store.delete_token("ci").unwrap());
        assert_eq!(store.list_tokens().unwrap().len(), 1);
    }

    #[test]
    fn tokens_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.db");
        {
            let store = Store::open(&path).unwrap();
            store
                .put_token(&stored("ci", "t1", Role::Admin, 10))
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.list_tokens().unwrap(),
            vec![stored("ci", "t1", Role::Admin, 10)]
        );
    }

    #[test]
    fn corrupt_token_record_names_table_and_key() {
        let (_dir, store) = store();
        let txn = store.db().begin_write().unwrap();
        txn.open_table(TOKENS)
            .unwrap()
            .insert(
                "ci",
                br#"{"schema":1,"name":"ci","hash":"zz","role":"admin","created_at":1}"#.as_slice(),
            )
            .unwrap();
        txn.commit().unwrap();
        match store.list_tokens().unwrap_err() {
            StoreError::Corrupt { table, key, .. } => {
                assert_eq!((table, key.as_str()), ("tokens", "ci"))
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn token_set_verifies_right_wrong_and_empty() {
        let admin = generate_token();
        let viewer = generate_token();
        let set = TokenSet::from_stored(&[
            stored("root", &admin, Role::Admin, 1),
            stored("dash", &viewer, Role::Viewer, 1),
        ]);
        assert!(!set.is_empty());
        assert_eq!(set.len(), 2);
        assert_eq!(set.verify(&admin), Some(("root".to_owned(), Role::Admin)));
        assert_eq!(set.verify(&viewer), Some(("dash".to_owned(), Role::Viewer)));
        assert_eq!(set.verify(&generate_token()), None);
        // A prefix or a one-character change of a valid token does not match.
        assert_eq!(set.verify(&admin[..admin.len() - 1]), None);
        let mut flipped = admin.clone();
        flipped.pop();
        flipped.push(if admin.ends_with('0') { '1' } else { '0' });
        assert_eq!(set.verify(&flipped), None);
        assert_eq!(set.verify(""), None);
    }

    #[test]
    fn empty_token_set_matches_nothing() {
        let set = TokenSet::new(Vec::new());
        assert!(set.is_empty());
        assert_eq!(set.verify(""), None);
        assert_eq!(set.verify(&generate_token()), None);
    }

    #[test]
    fn debug_output_shows_no_hash() {
        let t = stored("ci", "secret-token", Role::Admin, 1);
        let dbg = format!("{t:?}");
        assert!(!dbg.contains(&hex::encode(t.hash)));
        assert!(!dbg.contains("secret-token"));
        let set = TokenSet::from_stored(&[t]);
        assert!(!format!("{set:?}").contains("ci"));
    }
}
