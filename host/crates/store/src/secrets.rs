//! Owns table `secrets` (sealed secret values keyed `project/KEY`) and the cipher that seals
//! them, [`SecretBox`].
//!
//! Secrets are sealed with XChaCha20-Poly1305 under a 32-byte key kept in a separate key file
//! (`~/.orca/secrets.key`, mode 0600), so a copy of `cluster.db` alone reveals no secret. The
//! store only ever sees sealed bytes; sealing and opening happen in the caller with a
//! [`SecretBox`].

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::{RngCore, TryRngCore};
use redb::{ReadableDatabase, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::record::{check_name, decode, encode, project_range, scoped_key};
use crate::{Store, StoreError};

const TABLE_NAME: &str = "secrets";
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new(TABLE_NAME);
const SCHEMA: u32 = 1;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
/// Prefix of the associated data; versioned so a future format cannot be confused with this.
const AAD_PREFIX: &[u8] = b"orca-secret/v1\0";
/// Label deriving the fingerprint subkey, so fingerprints never use the encryption key itself.
const FINGERPRINT_LABEL: &[u8] = b"orca/env-fingerprint/v1";

type HmacSha256 = Hmac<Sha256>;

/// The secrets cipher: XChaCha20-Poly1305 under the cluster's secrets key, plus an HMAC
/// subkey for fingerprinting.
///
/// Its `Debug` output never shows key material.
#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
    fingerprint_key: [u8; 32],
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBox { key: <redacted> }")
    }
}

impl SecretBox {
    /// Loads the key from `key_path`, or creates it (32 bytes from the OS random source, file
    /// mode 0600, parent directory 0700 if created) when the file does not exist.
    ///
    /// Refuses an existing key file that group or others may access (fix with
    /// `chmod 600`) or whose length is not 32 bytes.
    pub fn load_or_create(key_path: &Path) -> Result<SecretBox, StoreError> {
        let key = match create_key_file(key_path)? {
            Some(key) => key,
            None => read_key_file(key_path)?,
        };
        Ok(SecretBox::from_key(&key))
    }

    /// Builds a box from raw key bytes.
    fn from_key(key: &[u8; KEY_LEN]) -> SecretBox {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(key)
            .expect("HMAC-SHA256 accepts keys of any length");
        mac.update(FINGERPRINT_LABEL);
        SecretBox {
            cipher: XChaCha20Poly1305::new(key.into()),
            fingerprint_key: mac.finalize().into_bytes().into(),
        }
    }

    /// Seals `plaintext` as the secret `project/key`: a random 24-byte nonce followed by the
    /// ciphertext and tag. The associated data binds `project/key`, so sealed bytes copied to
    /// another project or key fail to open.
    pub fn seal(&self, project: &str, key: &str, plaintext: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        // 24-byte nonces are long enough to pick at random without collision risk; the
        // thread RNG is a CSPRNG seeded from the OS.
        rand::rng().fill_bytes(&mut nonce);
        let aad = aad(project, key);
        let ciphertext = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad,
                },
            )
            // Encryption fails only for messages beyond ~256 GiB.
            .expect("XChaCha20-Poly1305 encryption of a secret cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Opens sealed bytes of the secret `project/key`. Fails with [`StoreError::Crypto`]
    /// (naming only project/key) if the bytes were tampered with, sealed under another key
    /// file, or sealed for another project/key.
    pub fn open(&self, project: &str, key: &str, sealed: &[u8]) -> Result<String, StoreError> {
        let fail = |why: &str| StoreError::Crypto {
            reason: format!("secret {project}/{key} cannot be opened: {why}"),
        };
        if sealed.len() < NONCE_LEN {
            return Err(fail("sealed value is truncated"));
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let aad = aad(project, key);
        let plaintext = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| {
                fail("authentication failed (wrong secrets key file, tampered value, or a value sealed for another project/key)")
            })?;
        String::from_utf8(plaintext).map_err(|_| fail("plaintext is not UTF-8"))
    }

    /// HMAC-SHA256 of `data` under a subkey derived from the secrets key (domain-separated
    /// from encryption). Used to detect that resolved environment values changed without
    /// storing or logging them; equal inputs give equal fingerprints on one cluster only.
    pub fn fingerprint(&self, data: &[u8]) -> [u8; 32] {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.fingerprint_key)
            .expect("HMAC-SHA256 accepts keys of any length");
        mac.update(data);
        mac.finalize().into_bytes().into()
    }
}

fn aad(project: &str, key: &str) -> Vec<u8> {
    let mut aad = AAD_PREFIX.to_vec();
    aad.extend_from_slice(scoped_key(project, key).as_bytes());
    aad
}

/// Creates the key file if it does not exist; `Ok(None)` if it already exists.
fn create_key_file(path: &Path) -> Result<Option<[u8; KEY_LEN]>, StoreError> {
    let io = |context: String| move |source| StoreError::Io { context, source };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(io(format!("creating directory {}", parent.display())))?;
        }
    }
    // `create_new` makes creation atomic: two processes racing here cannot both write a key.
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(None),
        Err(e) => {
            return Err(io(format!("creating secrets key file {}", path.display()))(
                e,
            ))
        }
    };
    let mut key = [0u8; KEY_LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut key)
        .expect("the OS random source is unavailable");
    let written = file.write_all(&key).and_then(|()| file.sync_all());
    if let Err(e) = written {
        // Do not leave a short key file behind: the next start would refuse it.
        let _ = std::fs::remove_file(path);
        return Err(io(format!("writing secrets key file {}", path.display()))(
            e,
        ));
    }
    tracing::info!(path = %path.display(), "created secrets key file");
    Ok(Some(key))
}

fn read_key_file(path: &Path) -> Result<[u8; KEY_LEN], StoreError> {
    let key_error = |reason: String| StoreError::KeyFile {
        path: path.to_owned(),
        reason,
    };
    let mut file = File::open(path).map_err(|source| StoreError::Io {
        context: format!("opening secrets key file {}", path.display()),
        source,
    })?;
    let meta = file.metadata().map_err(|source| StoreError::Io {
        context: format!("reading metadata of {}", path.display()),
        source,
    })?;
    if !meta.is_file() {
        return Err(key_error("is not a regular file".to_owned()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(key_error(format!(
            "permissions {mode:03o} allow group/other access; run `chmod 600 {}`",
            path.display()
        )));
    }
    // Read one byte past the expected length to detect an over-long file.
    let mut buf = Vec::with_capacity(KEY_LEN + 1);
    Read::take(&mut file, KEY_LEN as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|source| StoreError::Io {
            context: format!("reading secrets key file {}", path.display()),
            source,
        })?;
    buf.try_into().map_err(|buf: Vec<u8>| {
        key_error(format!(
            "expected exactly {KEY_LEN} bytes, found {}{}",
            if buf.len() > KEY_LEN {
                "more than "
            } else {
                ""
            },
            buf.len().min(KEY_LEN)
        ))
    })
}

/// A stored secret's name and last update time (never its value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretMeta {
    /// The secret's key within its project, e.g. `DATABASE_URL`.
    pub key: String,
    /// Unix seconds of the last write, as passed in by the caller.
    pub updated_at: u64,
}

/// The on-disk form of a secret: sealed bytes (hex) and the update time.
#[derive(Serialize, Deserialize)]
struct Row {
    schema: u32,
    sealed: String,
    updated_at: u64,
}

pub(crate) fn create_table(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(SECRETS)?;
    Ok(())
}

fn decode_row(key: &str, bytes: &[u8]) -> Result<Row, StoreError> {
    decode::<Row>(TABLE_NAME, key, bytes, SCHEMA, |r| r.schema)
}

impl Store {
    /// Stores (or replaces) the sealed value of secret `project/key`.
    pub fn put_secret(
        &self,
        project: &str,
        key: &str,
        sealed: &[u8],
        now_unix: u64,
    ) -> Result<(), StoreError> {
        let _span = tracing::debug_span!("orca.store.write", op = "put_secret").entered();
        check_name("project name", project)?;
        check_name("secret key", key)?;
        let row = Row {
            schema: SCHEMA,
            sealed: hex::encode(sealed),
            updated_at: now_unix,
        };
        let txn = self.db().begin_write()?;
        {
            let mut table = txn.open_table(SECRETS)?;
            table.insert(scoped_key(project, key).as_str(), encode(&row).as_slice())?;
        }
        txn.commit()?;
        tracing::info!(project, key, "secret stored");
        Ok(())
    }

    /// The sealed value of secret `project/key`, if set.
    pub fn get_secret(&self, project: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(SECRETS)?;
        let k = scoped_key(project, key);
        let Some(value) = table.get(k.as_str())? else {
            return Ok(None);
        };
        let row = decode_row(&k, value.value())?;
        hex::decode(&row.sealed)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                table: TABLE_NAME,
                key: k,
                reason: format!("sealed value is not hex: {e}"),
            })
    }

    /// The keys and update times of a project's secrets, sorted by key.
    pub fn list_secret_keys(&self, project: &str) -> Result<Vec<SecretMeta>, StoreError> {
        check_name("project name", project)?;
        let txn = self.db().begin_read()?;
        let table = txn.open_table(SECRETS)?;
        let (start, end) = project_range(project);
        let mut out = Vec::new();
        for entry in table.range(start.as_str()..end.as_str())? {
            let (k, v) = entry?;
            let full = k.value();
            let row = decode_row(full, v.value())?;
            out.push(SecretMeta {
                key: full[start.len()..].to_owned(),
                updated_at: row.updated_at,
            });
        }
        Ok(out)
    }

    /// Deletes secret `project/key`; `true` if it existed.
    pub fn delete_secret(&self, project: &str, key: &str) -> Result<bool, StoreError> {
        let _span = tracing::debug_span!("orca.store.write", op = "delete_secret").entered();
        let txn = self.db().begin_write()?;
        let existed = {
            let mut table = txn.open_table(SECRETS)?;
            let removed = table.remove(scoped_key(project, key).as_str())?;
            removed.is_some()
        };
        txn.commit()?;
        if existed {
            tracing::info!(project, key, "secret deleted");
        }
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::store;

    fn new_box() -> (tempfile::TempDir, SecretBox) {
        let dir = tempfile::tempdir().unwrap();
        let sb = SecretBox::load_or_create(&dir.path().join("secrets.key")).unwrap();
        (dir, sb)
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn seal_open_roundtrip() {
        let (_dir, sb) = new_box();
        let sealed = sb.seal("web", "DB_URL", "postgres://u:p@h/db");
        assert_eq!(
            sb.open("web", "DB_URL", &sealed).unwrap(),
            "postgres://u:p@h/db"
        );
        // Random nonces: sealing twice gives different bytes.
        assert_ne!(sealed, sb.seal("web", "DB_URL", "postgres://u:p@h/db"));
        assert_eq!(sb.open("web", "E", &sb.seal("web", "E", "")).unwrap(), "");
    }

    #[test]
    fn moved_ciphertext_fails_to_open() {
        let (_dir, sb) = new_box();
        let sealed = sb.seal("web", "DB_URL", "hunter2");
        for (project, key) in [("other", "DB_URL"), ("web", "OTHER"), ("web/DB", "URL")] {
            let err = sb.open(project, key, &sealed).unwrap_err();
            assert!(matches!(err, StoreError::Crypto { .. }), "{err}");
            assert!(!err.to_string().contains("hunter2"));
        }
    }

    #[test]
    fn tampered_or_truncated_ciphertext_fails() {
        let (_dir, sb) = new_box();
        let sealed = sb.seal("web", "K", "value");
        for i in [0, NONCE_LEN, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(matches!(
                sb.open("web", "K", &bad),
                Err(StoreError::Crypto { .. })
            ));
        }
        assert!(sb.open("web", "K", &sealed[..NONCE_LEN - 1]).is_err());
        assert!(sb.open("web", "K", &sealed[..sealed.len() - 1]).is_err());
    }

    #[test]
    fn different_key_file_cannot_open() {
        let (_a, one) = new_box();
        let (_b, two) = new_box();
        let sealed = one.seal("web", "K", "v");
        assert!(two.open("web", "K", &sealed).is_err());
    }

    #[test]
    fn key_file_is_created_0600_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/secrets.key");
        let first = SecretBox::load_or_create(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), KEY_LEN as u64);
        let sealed = first.seal("web", "K", "persisted");
        let second = SecretBox::load_or_create(&path).unwrap();
        assert_eq!(second.open("web", "K", &sealed).unwrap(), "persisted");
        assert_eq!(first.fingerprint(b"x"), second.fingerprint(b"x"));
    }

    #[test]
    fn group_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        SecretBox::load_or_create(&path).unwrap();
        for bad in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(bad)).unwrap();
            let err = SecretBox::load_or_create(&path).unwrap_err();
            assert!(matches!(err, StoreError::KeyFile { .. }), "{bad:o}: {err}");
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        // Owner-only read access is fine.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        SecretBox::load_or_create(&path).unwrap();
    }

    #[test]
    fn wrong_length_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 31, 33, 64] {
            let path = dir.path().join(format!("k{len}"));
            std::fs::write(&path, vec![7u8; len]).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let err = SecretBox::load_or_create(&path).unwrap_err();
            assert!(matches!(err, StoreError::KeyFile { .. }), "{len}: {err}");
        }
    }

    #[test]
    fn fingerprint_is_keyed_and_deterministic() {
        let (_a, one) = new_box();
        let (_b, two) = new_box();
        assert_eq!(one.fingerprint(b"A=1"), one.fingerprint(b"A=1"));
        assert_ne!(one.fingerprint(b"A=1"), one.fingerprint(b"A=2"));
        assert_ne!(one.fingerprint(b"A=1"), two.fingerprint(b"A=1"));
    }

    #[test]
    fn debug_never_shows_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let sb = SecretBox::load_or_create(&path).unwrap();
        let key_hex = hex::encode(std::fs::read(&path).unwrap());
        let dbg = format!("{sb:?}");
        assert!(dbg.contains("redacted"));
        assert!(!dbg.contains(&key_hex));
        assert!(!dbg.contains(&format!("{:?}", std::fs::read(&path).unwrap())));
    }

    #[test]
    fn store_put_get_list_delete_secrets() {
        let (_dir, store) = store();
        let (_k, sb) = new_box();
        store
            .put_secret("web", "B_KEY", &sb.seal("web", "B_KEY", "b"), 10)
            .unwrap();
        store
            .put_secret("web", "A_KEY", &sb.seal("web", "A_KEY", "a"), 20)
            .unwrap();
        // Neighbouring projects whose names share a prefix must not leak into the listing.
        store.put_secret("web2", "X", b"x", 30).unwrap();
        store.put_secret("we", "Y", b"y", 30).unwrap();
        let sealed = store.get_secret("web", "A_KEY").unwrap().unwrap();
        assert_eq!(sb.open("web", "A_KEY", &sealed).unwrap(), "a");
        assert_eq!(store.get_secret("web", "NOPE").unwrap(), None);
        assert_eq!(
            store.list_secret_keys("web").unwrap(),
            vec![
                SecretMeta {
                    key: "A_KEY".into(),
                    updated_at: 20
                },
                SecretMeta {
                    key: "B_KEY".into(),
                    updated_at: 10
                },
            ]
        );
        // Overwrite updates value and time.
        store
            .put_secret("web", "A_KEY", &sb.seal("web", "A_KEY", "a2"), 40)
            .unwrap();
        let sealed = store.get_secret("web", "A_KEY").unwrap().unwrap();
        assert_eq!(sb.open("web", "A_KEY", &sealed).unwrap(), "a2");
        assert_eq!(store.list_secret_keys("web").unwrap()[0].updated_at, 40);
        assert!(store.delete_secret("web", "A_KEY").unwrap());
        assert!(!store.delete_secret("web", "A_KEY").unwrap());
        assert_eq!(store.list_secret_keys("web").unwrap().len(), 1);
        assert!(store.list_secret_keys("nobody").unwrap().is_empty());
    }

    #[test]
    fn secrets_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("cluster.db");
        let keyfile = dir.path().join("secrets.key");
        {
            let store = Store::open(&db).unwrap();
            let sb = SecretBox::load_or_create(&keyfile).unwrap();
            store
                .put_secret("web", "K", &sb.seal("web", "K", "kept"), 5)
                .unwrap();
        }
        let store = Store::open(&db).unwrap();
        let sb = SecretBox::load_or_create(&keyfile).unwrap();
        let sealed = store.get_secret("web", "K").unwrap().unwrap();
        assert_eq!(sb.open("web", "K", &sealed).unwrap(), "kept");
    }

    #[test]
    fn corrupt_secret_record_names_table_and_key() {
        let (_dir, store) = store();
        let txn = store.db().begin_write().unwrap();
        txn.open_table(SECRETS)
            .unwrap()
            .insert("web/K", b"[1,2".as_slice())
            .unwrap();
        txn.commit().unwrap();
        for err in [
            store.get_secret("web", "K").unwrap_err(),
            store.list_secret_keys("web").unwrap_err(),
        ] {
            match err {
                StoreError::Corrupt { table, key, .. } => {
                    assert_eq!((table, key.as_str()), ("secrets", "web/K"))
                }
                other => panic!("expected Corrupt, got {other:?}"),
            }
        }
    }

    #[test]
    fn invalid_secret_names_are_rejected() {
        let (_dir, store) = store();
        assert!(matches!(
            store.put_secret("web", "A/B", b"x", 1),
            Err(StoreError::InvalidName { .. })
        ));
        assert!(matches!(
            store.put_secret("", "A", b"x", 1),
            Err(StoreError::InvalidName { .. })
        ));
    }
}
