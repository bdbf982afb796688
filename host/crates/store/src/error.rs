//! `StoreError`: every way a store, secrets or token operation can fail.
//!
//! Messages name tables, keys and services, never secret values or token material, so an
//! error can be logged or returned to an API client as it is.

use std::path::PathBuf;

/// An error from the store, the secrets cipher or the key file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed (I/O, lock held by another process, storage corruption detected by redb).
    #[error("database error: {0}")]
    Db(#[from] redb::Error),

    /// The database file is held by another process (another `orca server` on this
    /// `ORCA_HOME`).
    #[error("store {} is in use by another process (another orca server using this ORCA_HOME?)", path.display())]
    Locked {
        /// The database file.
        path: PathBuf,
    },

    /// The database file exists but is not a readable redb database (truncated, overwritten,
    /// damaged beyond redb's repair).
    #[error("store {} cannot be opened: {reason}; it is damaged or not an orca store (move it away to start empty, or restore a backup)", path.display())]
    Unreadable {
        /// The database file.
        path: PathBuf,
        /// redb's reason.
        reason: String,
    },

    /// A record exists but cannot be decoded: unparsable JSON or an unknown schema version.
    #[error("corrupt record in table `{table}` at key `{key}`: {reason}")]
    Corrupt {
        /// The table holding the bad record.
        table: &'static str,
        /// The record's key.
        key: String,
        /// Why decoding failed (a serde message or a schema mismatch; never a secret value).
        reason: String,
    },

    /// The caller asked for something that does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was missing, e.g. "service web/api".
        what: String,
    },

    /// The write would overwrite something that must stay unique.
    #[error("conflict: {what}")]
    Conflict {
        /// What clashed, e.g. "token `ci` already exists".
        what: String,
    },

    /// A name that would break the key layout (empty, or containing `/`).
    #[error("invalid {what}: {reason}")]
    InvalidName {
        /// Which name, e.g. "project name `a/b`".
        what: String,
        /// Why it is rejected.
        reason: &'static str,
    },

    /// A value is over the size the store accepts for it.
    #[error("{what} is {len} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// What was too large, e.g. "plugin state of the rollout of web/api".
        what: String,
        /// Its size in bytes.
        len: usize,
        /// The largest size accepted, in bytes.
        limit: usize,
    },

    /// Decryption failed: wrong key, tampered ciphertext, or a ciphertext moved to another
    /// project/key. Never carries plaintext.
    #[error("secret error: {reason}")]
    Crypto {
        /// What went wrong, naming the secret by project/key only.
        reason: String,
    },

    /// The secrets key file is unusable (bad permissions, wrong length, unreadable).
    #[error("secrets key file {}: {reason}", path.display())]
    KeyFile {
        /// The key file's path.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// File-system I/O outside redb (creating the data directory, the key file).
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

// redb splits its errors by operation; they all convert into `redb::Error`, and callers of the
// store only need to know "the database failed", so each is folded into `StoreError::Db`.
macro_rules! from_redb {
    ($($ty:ty),* $(,)?) => {$(
        impl From<$ty> for StoreError {
            fn from(e: $ty) -> Self {
                StoreError::Db(redb::Error::from(e))
            }
        }
    )*};
}

from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
);
