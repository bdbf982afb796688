//! JSON record encoding shared by the table modules: a `schema` version on every value and
//! decode failures turned into [`StoreError::Corrupt`] naming the table and key.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::StoreError;

/// A record stored as its own fields plus a `schema` version, for tables whose rows are a
/// plain serde type.
#[derive(Serialize, serde::Deserialize)]
pub(crate) struct Versioned<T> {
    pub(crate) schema: u32,
    #[serde(flatten)]
    pub(crate) value: T,
}

/// Byte fields (sealed secrets, keys) stored as hex strings: `#[serde(with = "hex_bytes")]`.
pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

/// Encodes a record as JSON bytes.
///
/// Records are plain structs of strings and integers, so serialization cannot fail; a failure
/// would be a programming error in a record type, hence the panic.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records always serialize to JSON")
}

/// Decodes a record and checks its schema version.
///
/// `schema_of` reads the version field of the decoded value; a value written by a newer orca
/// (a higher schema) is reported as corrupt rather than misread.
pub(crate) fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: &str,
    bytes: &[u8],
    expected_schema: u32,
    schema_of: impl Fn(&T) -> u32,
) -> Result<T, StoreError> {
    let value: T = serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table,
        key: key.to_owned(),
        reason: e.to_string(),
    })?;
    let schema = schema_of(&value);
    if schema != expected_schema {
        return Err(StoreError::Corrupt {
            table,
            key: key.to_owned(),
            reason: format!("unsupported schema version {schema} (expected {expected_schema})"),
        });
    }
    Ok(value)
}

/// Rejects a name that would break the `prefix/name` key layout.
pub(crate) fn check_name(kind: &str, name: &str) -> Result<(), StoreError> {
    if name.is_empty() {
        return Err(StoreError::InvalidName {
            what: format!("{kind} (empty)"),
            reason: "must not be empty",
        });
    }
    if name.contains('/') {
        return Err(StoreError::InvalidName {
            what: format!("{kind} `{name}`"),
            reason: "must not contain `/` (it separates the parts of a store key)",
        });
    }
    Ok(())
}

/// The `project/name` key used by the services and secrets tables.
pub(crate) fn scoped_key(project: &str, name: &str) -> String {
    format!("{project}/{name}")
}

/// The half-open key range holding every `project/...` key: `/` is followed by `0` in ASCII,
/// so `["project/", "project0")` contains exactly the keys of that project.
pub(crate) fn project_range(project: &str) -> (String, String) {
    (format!("{project}/"), format!("{project}0"))
}
