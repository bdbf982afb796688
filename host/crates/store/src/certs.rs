//! Owns tables `certificates` (TLS certificates by domain, the private key sealed),
//! `acme_orders` (per-domain ACME attempt state: failures, the CA's last reason, the next
//! attempt) and `acme_accounts` (sealed ACME account credentials by directory URL).
//!
//! Private keys and account credentials are stored only as [`crate::SecretBox`]-sealed
//! bytes, sealed by the caller with [`TLS_SEAL_SCOPE`] / [`ACME_SEAL_SCOPE`] as the "project"
//! (names with a dot, which no real project can have), so they never sit in the file in
//! clear.

use std::fmt;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::record::{decode, encode, hex_bytes, Versioned};
use crate::{Store, StoreError};

const CERTS_NAME: &str = "certificates";
const CERTS: TableDefinition<&str, &[u8]> = TableDefinition::new(CERTS_NAME);
const ORDERS_NAME: &str = "acme_orders";
const ORDERS: TableDefinition<&str, &[u8]> = TableDefinition::new(ORDERS_NAME);
const ACCOUNTS_NAME: &str = "acme_accounts";
const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new(ACCOUNTS_NAME);
const SCHEMA: u32 = 1;

/// The seal scope of certificate private keys (`seal(TLS_SEAL_SCOPE, domain, pem)`).
pub const TLS_SEAL_SCOPE: &str = "orca.tls";
/// The seal scope of ACME account credentials (`seal(ACME_SEAL_SCOPE, directory, json)`).
pub const ACME_SEAL_SCOPE: &str = "orca.acme";

/// Where a certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertSource {
    /// Issued by the ACME CA of `[acme]`; renewed by orca.
    Acme,
    /// The service's own `tls_cert`/`tls_key`, sent with the deploy; never renewed by orca.
    Manual,
}

/// One served certificate.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRecord {
    /// The domain (lowercase), also the key.
    pub domain: String,
    /// The service it was obtained for, `project/name`.
    pub service: String,
    /// ACME or the service's own.
    pub source: CertSource,
    /// The PEM certificate chain, leaf first (public).
    pub cert_pem: String,
    /// The PEM private key, sealed under [`TLS_SEAL_SCOPE`]`/domain`.
    #[serde(with = "hex_bytes")]
    pub key_sealed: Vec<u8>,
    /// The leaf's notAfter, Unix seconds.
    pub not_after: u64,
    /// When it was stored, Unix seconds.
    pub stored_at: u64,
}

impl fmt::Debug for CertificateRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateRecord")
            .field("domain", &self.domain)
            .field("service", &self.service)
            .field("source", &self.source)
            .field("not_after", &self.not_after)
            .field("stored_at", &self.stored_at)
            .finish_non_exhaustive()
    }
}

/// The ACME attempt state of one domain: what the status shows while a certificate is being
/// obtained or after it failed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeOrderRecord {
    /// The domain, also the key.
    pub domain: String,
    /// Consecutive failed attempts (0 after a success).
    pub failures: u32,
    /// The last failure, with the CA's reason; `None` after a success.
    pub last_error: Option<String>,
    /// When the last attempt started, Unix seconds.
    pub last_attempt_at: u64,
    /// Not before this (Unix seconds) will the next attempt start.
    pub next_attempt_at: u64,
}

/// The value of an `acme_accounts` row.
#[derive(Clone, Serialize, Deserialize)]
struct AccountRow {
    #[serde(with = "hex_bytes")]
    sealed: Vec<u8>,
}

pub(crate) fn create_table(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(CERTS)?;
    txn.open_table(ORDERS)?;
    txn.open_table(ACCOUNTS)?;
    Ok(())
}

/// Stores a certificate inside a caller's write transaction (a deploy's).
pub(crate) fn put_in(txn: &WriteTransaction, record: &CertificateRecord) -> Result<(), StoreError> {
    let row = Versioned {
        schema: SCHEMA,
        value: record.clone(),
    };
    txn.open_table(CERTS)?
        .insert(record.domain.as_str(), encode(&row).as_slice())?;
    Ok(())
}

fn put<T: Serialize + Clone>(
    store: &Store,
    table: TableDefinition<&str, &[u8]>,
    op: &'static str,
    key: &str,
    value: &T,
) -> Result<(), StoreError> {
    let _span = tracing::debug_span!("orca.store.write", op).entered();
    let row = Versioned {
        schema: SCHEMA,
        value: value.clone(),
    };
    let txn = store.db().begin_write()?;
    {
        let mut t = txn.open_table(table)?;
        t.insert(key, encode(&row).as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

fn get<T: for<'de> Deserialize<'de>>(
    store: &Store,
    table: TableDefinition<&str, &[u8]>,
    name: &'static str,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let txn = store.db().begin_read()?;
    let t = txn.open_table(table)?;
    let Some(value) = t.get(key)? else {
        return Ok(None);
    };
    let row = decode::<Versioned<T>>(name, key, value.value(), SCHEMA, |r| r.schema)?;
    Ok(Some(row.value))
}

fn list<T: for<'de> Deserialize<'de>>(
    store: &Store,
    table: TableDefinition<&str, &[u8]>,
    name: &'static str,
) -> Result<Vec<T>, StoreError> {
    let txn = store.db().begin_read()?;
    let t = txn.open_table(table)?;
    let mut out = Vec::new();
    for entry in t.iter()? {
        let (key, value) = entry?;
        let row = decode::<Versioned<T>>(name, key.value(), value.value(), SCHEMA, |r| r.schema)?;
        out.push(row.value);
    }
    Ok(out)
}

fn delete(
    store: &Store,
    table: TableDefinition<&str, &[u8]>,
    op: &'static str,
    key: &str,
) -> Result<bool, StoreError> {
    let _span = tracing::debug_span!("orca.store.write", op).entered();
    let txn = store.db().begin_write()?;
    let existed = {
        let mut t = txn.open_table(table)?;
        let removed = t.remove(key)?;
        removed.is_some()
    };
    txn.commit()?;
    Ok(existed)
}

impl Store {
    /// Stores (or replaces) the certificate of `record.domain`.
    pub fn put_certificate(&self, record: &CertificateRecord) -> Result<(), StoreError> {
        put(self, CERTS, "put_certificate", &record.domain, record)?;
        tracing::info!(domain = %record.domain, source = ?record.source, not_after = record.not_after, "certificate stored");
        Ok(())
    }

    /// The certificate of `domain`, if any.
    pub fn get_certificate(&self, domain: &str) -> Result<Option<CertificateRecord>, StoreError> {
        get(self, CERTS, CERTS_NAME, domain)
    }

    /// Every stored certificate, by domain.
    pub fn list_certificates(&self) -> Result<Vec<CertificateRecord>, StoreError> {
        list(self, CERTS, CERTS_NAME)
    }

    /// Removes the certificate of `domain`; whether there was one.
    pub fn delete_certificate(&self, domain: &str) -> Result<bool, StoreError> {
        delete(self, CERTS, "delete_certificate", domain)
    }

    /// Stores the ACME attempt state of `record.domain`.
    pub fn put_acme_order(&self, record: &AcmeOrderRecord) -> Result<(), StoreError> {
        put(self, ORDERS, "put_acme_order", &record.domain, record)
    }

    /// The ACME attempt state of `domain`, if any attempt was made.
    pub fn get_acme_order(&self, domain: &str) -> Result<Option<AcmeOrderRecord>, StoreError> {
        get(self, ORDERS, ORDERS_NAME, domain)
    }

    /// Every domain's ACME attempt state.
    pub fn list_acme_orders(&self) -> Result<Vec<AcmeOrderRecord>, StoreError> {
        list(self, ORDERS, ORDERS_NAME)
    }

    /// Forgets the ACME attempt state of `domain`.
    pub fn delete_acme_order(&self, domain: &str) -> Result<bool, StoreError> {
        delete(self, ORDERS, "delete_acme_order", domain)
    }

    /// Stores the sealed account credentials for the ACME `directory` URL.
    pub fn put_acme_account(&self, directory: &str, sealed: &[u8]) -> Result<(), StoreError> {
        let row = AccountRow {
            sealed: sealed.to_vec(),
        };
        put(self, ACCOUNTS, "put_acme_account", directory, &row)
    }

    /// The sealed account credentials for `directory`, if an account was created.
    pub fn get_acme_account(&self, directory: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row = get::<AccountRow>(self, ACCOUNTS, ACCOUNTS_NAME, directory)?;
        Ok(row.map(|r| r.sealed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::store;
    use crate::SecretBox;

    #[test]
    fn certificates_round_trip_with_the_key_sealed() {
        let (dir, store) = store();
        let secrets = SecretBox::load_or_create(&dir.path().join("secret.key")).unwrap();
        let key_pem =
            "-----BEGIN PRIVATE KEY-----\nsecret-key-material\n-----END PRIVATE KEY-----\n";
        let record = CertificateRecord {
            domain: "a.test".into(),
            service: "p/web".into(),
            source: CertSource::Acme,
            cert_pem: "-----BEGIN CERTIFICATE-----\n".into(),
            key_sealed: secrets.seal(TLS_SEAL_SCOPE, "a.test", key_pem),
            not_after: 100,
            stored_at: 1,
        };
        store.put_certificate(&record).unwrap();
        assert_eq!(
            store.get_certificate("a.test").unwrap(),
            Some(record.clone())
        );
        assert_eq!(store.list_certificates().unwrap(), vec![record.clone()]);
        assert!(!format!("{record:?}").contains("secret-key-material"));
        let raw = std::fs::read(store.path()).unwrap();
        assert!(
            !raw.windows(19).any(|w| w == b"secret-key-material"),
            "the private key must never be stored in clear"
        );
        let opened = secrets
            .open(TLS_SEAL_SCOPE, "a.test", &record.key_sealed)
            .unwrap();
        assert_eq!(opened, key_pem);
        assert!(store.delete_certificate("a.test").unwrap());
        assert_eq!(store.get_certificate("a.test").unwrap(), None);
    }

    #[test]
    fn orders_and_accounts() {
        let (_dir, store) = store();
        let order = AcmeOrderRecord {
            domain: "a.test".into(),
            failures: 2,
            last_error: Some("connection refused".into()),
            last_attempt_at: 5,
            next_attempt_at: 9,
        };
        store.put_acme_order(&order).unwrap();
        assert_eq!(store.list_acme_orders().unwrap(), vec![order.clone()]);
        assert_eq!(store.get_acme_order("a.test").unwrap(), Some(order));
        assert!(store.delete_acme_order("a.test").unwrap());
        assert_eq!(store.get_acme_account("https://ca/dir").unwrap(), None);
        store
            .put_acme_account("https://ca/dir", &[1, 2, 3])
            .unwrap();
        assert_eq!(
            store.get_acme_account("https://ca/dir").unwrap(),
            Some(vec![1, 2, 3])
        );
    }
}
