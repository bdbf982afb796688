//! Join tokens (k3s's shape): `orcajoin1.<CA fingerprint>.<id>.<secret>`. The fingerprint
//! lets the agent pin the master's CA before it sends anything; the id finds the stored
//! record; the secret is checked against its stored SHA-256 in constant time.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "orcajoin1";

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the cluster CA's certificate, hex.
    pub ca_fingerprint: String,
    /// The stored record's key.
    pub id: String,
    /// The one-time secret (never stored, never logged).
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl JoinToken {
    /// A new token for the CA with `ca_fingerprint`, from the OS random source.
    pub fn generate(ca_fingerprint: &str) -> JoinToken {
        JoinToken {
            ca_fingerprint: ca_fingerprint.to_string(),
            id: hex::encode(rand::random::<[u8; 8]>()),
            secret: hex::encode(rand::random::<[u8; 32]>()),
        }
    }

    /// Parses a token string; the error says what is wrong with it (never echoing it).
    pub fn parse(text: &str) -> Result<JoinToken, String> {
        let parts: Vec<&str> = text.trim().split('.').collect();
        match parts.as_slice() {
            [PREFIX, fp, id, secret] if is_hex(fp, 64) && is_hex(id, 16) && is_hex(secret, 64) => {
                Ok(JoinToken {
                    ca_fingerprint: fp.to_string(),
                    id: id.to_string(),
                    secret: secret.to_string(),
                })
            }
            [PREFIX, ..] => Err("malformed join token: expected orcajoin1.<64 hex>.<16 hex>.<64 hex> (copy it whole from `orca node token create`)".into()),
            _ => Err("not an orca join token (it starts with `orcajoin1.`; make one with `orca node token create`)".into()),
        }
    }

    /// SHA-256 of the secret, as stored.
    pub fn secret_hash(&self) -> [u8; 32] {
        Sha256::digest(self.secret.as_bytes()).into()
    }

    /// Whether `stored` is this token's secret hash, compared in constant time.
    pub fn secret_matches(&self, stored: &[u8]) -> bool {
        stored.len() == 32 && bool::from(self.secret_hash().ct_eq(stored))
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}.{}.{}.{}",
            self.ca_fingerprint, self.id, self.secret
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_token_round_trips_and_checks_its_secret() {
        let t = JoinToken::generate(&"a".repeat(64));
        let parsed = JoinToken::parse(&t.to_string()).unwrap();
        assert_eq!(parsed, t);
        assert!(parsed.secret_matches(&t.secret_hash()));
        assert!(!parsed.secret_matches(&[0; 32]));
        assert!(!format!("{t:?}").contains(&t.secret));
    }

    #[test]
    fn malformed_join_tokens_are_refused_with_a_reason() {
        assert!(JoinToken::parse("orca_abc")
            .unwrap_err()
            .contains("not an orca join token"));
        assert!(JoinToken::parse("orcajoin1.xx.yy.zz")
            .unwrap_err()
            .contains("malformed"));
    }
}
