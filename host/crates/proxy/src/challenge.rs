//! ACME HTTP-01 answers: the tokens the certificate manager is proving right now, served on
//! the plain-HTTP listener under `/.well-known/acme-challenge/<token>` for any host.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The path prefix of HTTP-01 challenges (RFC 8555 §8.3). Requests under it are answered by
/// the proxy itself and never redirected to HTTPS.
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Pending HTTP-01 challenges: token → key authorization. Cloning is cheap; all clones share
/// one map. A std `RwLock` is enough: entries change a few times per certificate and the
/// lock is never held across an await.
#[derive(Clone, Debug, Default)]
pub struct Challenges {
    tokens: Arc<RwLock<HashMap<String, String>>>,
}

impl Challenges {
    /// No pending challenge.
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers `token` with `key_authorization` until [`Challenges::remove`].
    pub fn insert(&self, token: &str, key_authorization: &str) {
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        tokens.insert(token.to_string(), key_authorization.to_string());
    }

    /// Stops answering `token`.
    pub fn remove(&self, token: &str) {
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        tokens.remove(token);
    }

    /// The key authorization for `token`, if it is pending.
    pub fn get(&self, token: &str) -> Option<String> {
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        tokens.get(token).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_remove() {
        let c = Challenges::new();
        assert_eq!(c.get("t"), None);
        c.clone().insert("t", "t.thumb");
        assert_eq!(c.get("t").as_deref(), Some("t.thumb"));
        c.remove("t");
        assert_eq!(c.get("t"), None);
    }
}
