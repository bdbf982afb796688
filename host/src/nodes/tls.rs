//! rustls configurations of the agent protocol: the master's acceptor (serving certificate
//! from the cluster CA, client certificates optional at the TLS layer and required for a
//! session), the agent's join connector (pins the CA by the token's fingerprint) and the
//! agent's session connector (the stored CA as the only root, the node certificate).

use std::sync::Arc;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use super::ca::{fingerprint, ClusterCa, MASTER_NAME};
use super::proto::SESSION_ALPN;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: CertificateDer<'static>) -> anyhow::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    roots.add(ca).context("adding the cluster CA as root")?;
    Ok(Arc::new(roots))
}

/// The master's TLS acceptor on the API port: ALPN `orca-agent/1` (sessions), `h2` and
/// `http/1.1` (join and the API over HTTPS). A client certificate, if sent, must chain to the
/// cluster CA; whether a session may use it is decided against the node table.
pub fn master_config(ca: &ClusterCa) -> anyhow::Result<Arc<ServerConfig>> {
    let (chain, key) = ca.master_identity()?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots(ca.cert_der().clone())?,
        provider(),
    )
    .allow_unauthenticated()
    .build()
    .context("building the node certificate verifier")?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("loading the master's serving certificate")?;
    config.alpn_protocols = vec![SESSION_ALPN.to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The server name agents verify the master's certificate against.
pub fn master_name() -> ServerName<'static> {
    ServerName::try_from(MASTER_NAME).expect("a valid DNS name")
}

/// Verifies the master as a chain to the CA whose certificate has the pinned fingerprint.
/// The master sends its CA after its leaf, so the agent learns the CA from the handshake and
/// trusts it only if its fingerprint is the token's.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| fingerprint(c) == self.fingerprint)
        else {
            let seen: Vec<String> = intermediates.iter().map(|c| fingerprint(c)).collect();
            return Err(rustls::Error::General(format!(
                "the master's CA is not the one the join token pins (token: {}, master sent: {}): wrong master, or a forged one",
                self.fingerprint,
                if seen.is_empty() { "none".to_string() } else { seen.join(", ") }
            )));
        };
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots(ca.clone().into_owned()).map_err(|e| rustls::Error::General(e.to_string()))?,
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The agent's connector for its join: no client certificate, the master verified against
/// the CA with `ca_fingerprint`.
pub fn join_config(ca_fingerprint: &str) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            fingerprint: ca_fingerprint.to_string(),
            provider,
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The agent's connector for its session: the stored CA is the only root; the node
/// certificate and key authenticate the agent.
pub fn session_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<Arc<ClientConfig>> {
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).context("reading the stored CA")?;
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .context("reading the stored node certificate")?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("reading the stored node key")?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(vec![cert], key)
        .context("loading the node certificate")?;
    config.alpn_protocols = vec![SESSION_ALPN.to_vec()];
    Ok(Arc::new(config))
}
