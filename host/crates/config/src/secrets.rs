//! `${secrets.KEY}` references in env values: finding, checking and substituting them.
//!
//! Only text starting with `${secrets.` is a reference; any other `${...}` is left alone, so
//! values meant for the container's own shell expansion pass through. There is no escape
//! syntax: a value cannot contain the literal text `${secrets.`.

use crate::error::ConfigError;
use crate::names::is_env_key;

const OPEN: &str = "${secrets.";

/// One piece of a value: literal text or a secret key.
enum Piece<'a> {
    Text(&'a str),
    Secret(&'a str),
}

/// Splits `value` into pieces, failing on the first malformed reference.
fn pieces(value: &str) -> Result<Vec<Piece<'_>>, ConfigError> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find(OPEN) {
        if start > 0 {
            out.push(Piece::Text(&rest[..start]));
        }
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after.find('}') else {
            return Err(ConfigError::new(format!(
                "unterminated secret reference {:?}: expected `}}` after the key, e.g. \
                 \"${{secrets.DB_PASSWORD}}\"",
                &rest[start..]
            )));
        };
        let key = &after[..end];
        if !is_env_key(key) {
            return Err(ConfigError::new(format!(
                "malformed secret reference {:?}: the key must match [A-Za-z_][A-Za-z0-9_]*, e.g. \
                 \"${{secrets.DB_PASSWORD}}\"",
                &rest[start..start + OPEN.len() + end + 1]
            )));
        }
        out.push(Piece::Secret(key));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// Returns every `KEY` referenced as `${secrets.KEY}` in `value`, in order of first appearance,
/// without duplicates.
///
/// A malformed reference — an empty or invalid key (`${secrets.}`, `${secrets.A-B}`) or a
/// missing `}` — is an error whose message quotes the reference.
pub fn secret_refs(value: &str) -> Result<Vec<String>, ConfigError> {
    let mut keys: Vec<String> = Vec::new();
    for piece in pieces(value)? {
        if let Piece::Secret(key) = piece {
            if !keys.iter().any(|k| k == key) {
                keys.push(key.to_string());
            }
        }
    }
    Ok(keys)
}

/// Replaces every `${secrets.KEY}` in `value` with `lookup(KEY)`.
///
/// Fails with the first key `lookup` does not know. Values are validated with [`secret_refs`]
/// when a spec is loaded; should a malformed reference reach this function anyway, the whole
/// value is returned unchanged rather than half-substituted.
pub fn substitute_secrets(
    value: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let Ok(pieces) = pieces(value) else {
        return Ok(value.to_string());
    };
    let mut out = String::with_capacity(value.len());
    for piece in pieces {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Secret(key) => match lookup(key) {
                Some(secret) => out.push_str(&secret),
                None => return Err(key.to_string()),
            },
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_references() {
        assert_eq!(secret_refs("plain").unwrap(), Vec::<String>::new());
        assert_eq!(secret_refs("${secrets.A}").unwrap(), vec!["A"]);
        assert_eq!(
            secret_refs("postgres://u:${secrets.DB_PASS}@db/${secrets.DB}?x=${secrets.DB_PASS}")
                .unwrap(),
            vec!["DB_PASS", "DB"]
        );
        // Other `${...}` forms are not references.
        assert_eq!(
            secret_refs("${HOME}/x ${secret.A}").unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn rejects_malformed_references() {
        let e = secret_refs("x${secrets.}y").unwrap_err();
        assert_eq!(
            e.message,
            "malformed secret reference \"${secrets.}\": the key must match \
             [A-Za-z_][A-Za-z0-9_]*, e.g. \"${secrets.DB_PASSWORD}\""
        );
        let e = secret_refs("${secrets.DB_PASS").unwrap_err();
        assert_eq!(
            e.message,
            "unterminated secret reference \"${secrets.DB_PASS\": expected `}` after the key, \
             e.g. \"${secrets.DB_PASSWORD}\""
        );
        assert!(secret_refs("${secrets.A-B}").is_err());
        assert!(secret_refs("${secrets.1A}").is_err());
        assert!(secret_refs("${secrets.A}${secrets. A}").is_err());
    }

    #[test]
    fn substitutes() {
        let lookup = |k: &str| match k {
            "USER" => Some("orca".to_string()),
            "PASS" => Some("s3cret${secrets.USER}".to_string()),
            _ => None,
        };
        assert_eq!(
            substitute_secrets("${secrets.USER}:${secrets.PASS}@db", lookup).unwrap(),
            // Substituted text is not expanded again.
            "orca:s3cret${secrets.USER}@db"
        );
        assert_eq!(substitute_secrets("plain $x", lookup).unwrap(), "plain $x");
        assert_eq!(
            substitute_secrets("${secrets.USER}${secrets.NOPE}${secrets.NADA}", lookup)
                .unwrap_err(),
            "NOPE"
        );
        assert_eq!(
            substitute_secrets("${secrets.}", lookup).unwrap(),
            "${secrets.}"
        );
    }
}
