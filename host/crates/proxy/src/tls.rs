//! TLS termination: the certificate set the HTTPS listener serves by SNI, swapped at run time
//! without touching open connections, and the rustls server configuration (ALPN `h2`,
//! `http/1.1`).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::table::normalize_host;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate PEM holds no `CERTIFICATE` block, or one that does not parse.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The key PEM holds no private key, or one rustls cannot use.
    #[error("private key: {0}")]
    Key(String),
    /// The private key does not belong to the first certificate of the chain.
    #[error("the private key does not match the certificate: {0}")]
    Mismatch(String),
}

/// Parses a PEM certificate chain (leaf first) and its PEM private key into a key rustls can
/// serve, checking that the key belongs to the leaf. Error texts never quote key material.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Certificate(format!("not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::Certificate(
            "no \"BEGIN CERTIFICATE\" block found".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
        TlsError::Key(format!(
            "no usable \"BEGIN PRIVATE KEY\" (PKCS#8), \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" block: {e}"
        ))
    })?;
    let provider = provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch(e.to_string()),
        other => TlsError::Key(other.to_string()),
    })
}

/// The crypto provider orca uses everywhere (ring): the process default if one is
/// installed, else ring's.
fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// The certificates the HTTPS listener serves, by domain (lowercase, no port).
///
/// Cloning is cheap; all clones share one set. A handshake reads one snapshot (`ArcSwap`),
/// so replacing a certificate never blocks or drops a connection: connections already
/// established keep the certificate they were made with, new ones get the new one.
#[derive(Clone, Default)]
pub struct Certificates {
    current: Arc<ArcSwap<HashMap<String, Arc<CertifiedKey>>>>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Domains only: never key material.
        let mut domains = self.domains();
        domains.sort();
        f.debug_struct("Certificates")
            .field("domains", &domains)
            .finish()
    }
}

impl Certificates {
    /// An empty set: every TLS handshake fails (no certificate for the name).
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `key` for `domain` from the next handshake on.
    pub fn insert(&self, domain: &str, key: Arc<CertifiedKey>) {
        let domain = normalize_host(domain);
        self.current.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(domain.clone(), key.clone());
            map
        });
    }

    /// Stops serving `domain`.
    pub fn remove(&self, domain: &str) {
        let domain = normalize_host(domain);
        self.current.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.remove(&domain);
            map
        });
    }

    /// Whether a certificate is served for `host` (any case, with or without a port).
    pub fn contains(&self, host: &str) -> bool {
        self.current.load().contains_key(&normalize_host(host))
    }

    /// The key served for `host`, if any.
    pub fn get(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        self.current.load().get(&normalize_host(host)).cloned()
    }

    /// The domains with a certificate, in no particular order.
    pub fn domains(&self) -> Vec<String> {
        self.current.load().keys().cloned().collect()
    }

    /// The SNI resolver over this set, for a rustls [`ServerConfig`].
    pub fn resolver(&self) -> Arc<dyn ResolvesServerCert> {
        Arc::new(SniResolver {
            certificates: self.clone(),
        })
    }
}

/// Picks the certificate by the client's SNI name. A client sending no SNI (or an IP
/// address, which SNI cannot carry) gets no certificate and the handshake fails: orca
/// routes by name, so there is nothing sensible to serve it.
#[derive(Debug)]
struct SniResolver {
    certificates: Certificates,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        self.certificates.get(name)
    }
}

/// The ALPN protocol id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// The ALPN protocol id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The server configuration of the HTTPS listener: certificates by SNI from `certificates`,
/// ALPN `h2` preferred over `http/1.1`, TLS 1.2 and 1.3.
pub fn server_config(certificates: &Certificates) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Key(format!("TLS configuration: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(certificates.resolver());
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let e = certified_key("nope", "nope").unwrap_err();
        assert_eq!(
            e.to_string(),
            "certificate: no \"BEGIN CERTIFICATE\" block found"
        );
    }

    #[test]
    fn empty_set_serves_nothing() {
        let certs = Certificates::new();
        assert!(!certs.contains("a.test"));
        assert!(certs.domains().is_empty());
        assert!(format!("{certs:?}").contains("domains"));
    }
}
