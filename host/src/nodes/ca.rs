//! The cluster CA: made at first start (rcgen), its key sealed in the store. It signs the
//! master's serving certificate (fresh at every start) and each node's certificate at join;
//! its SHA-256 fingerprint is what join tokens carry and agents pin.

use std::sync::Arc;

use anyhow::Context;
use orca_store::{CaRecord, SecretBox, Store};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// The seal scope of the CA key in the store.
const CA_SEAL_SCOPE: &str = "orca.ca";

/// The DNS name in the master's serving certificate. Agents verify the master against the
/// pinned CA and this name, whatever address they dial (an IP, a NAT'd name).
pub const MASTER_NAME: &str = "orca-master";

/// The loaded CA.
pub struct ClusterCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a certificate's DER, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Validity of every certificate the CA issues: wide and fixed. Revocation is by the node
/// table (removing a node stops its certificate at once), and a clock skewed between master
/// and agent must not break a join.
fn validity(params: &mut CertificateParams) {
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2120, 1, 1);
}

impl ClusterCa {
    /// The store's CA, or a new one made and stored now (first start).
    pub fn load_or_create(
        store: &Store,
        secrets: &SecretBox,
        cluster: &str,
    ) -> anyhow::Result<Arc<ClusterCa>> {
        let mut made: Option<anyhow::Error> = None;
        let record = store.cluster_ca_or_init(|| match ClusterCa::generate(cluster) {
            Ok((cert_pem, key_pem)) => CaRecord {
                schema: CaRecord::SCHEMA,
                cert_pem,
                sealed_key: secrets.seal(CA_SEAL_SCOPE, "key", &key_pem),
            },
            Err(e) => {
                made = Some(e);
                CaRecord {
                    schema: CaRecord::SCHEMA,
                    cert_pem: String::new(),
                    sealed_key: Vec::new(),
                }
            }
        });
        if let Some(e) = made {
            return Err(e.context("making the cluster CA"));
        }
        let record = record.context("reading the cluster CA from the store")?;
        let key_pem = secrets
            .open(CA_SEAL_SCOPE, "key", &record.sealed_key)
            .context("opening the cluster CA key (was secret.key replaced?)")?;
        let key = KeyPair::from_pem(&key_pem).context("decoding the cluster CA key")?;
        let cert_der = CertificateDer::from_pem_slice(record.cert_pem.as_bytes())
            .context("decoding the cluster CA certificate")?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .context("reading the cluster CA certificate")?;
        Ok(Arc::new(ClusterCa {
            cert_pem: record.cert_pem,
            cert_der,
            issuer,
        }))
    }

    fn generate(cluster: &str) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(DnType::CommonName, format!("orca cluster CA ({cluster})"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params);
        let cert = params.self_signed(&key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// SHA-256 of the CA certificate (hex): what join tokens carry.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A fresh serving certificate for the master (SAN [`MASTER_NAME`]), with its key: the
    /// chain is leaf then CA, so a joining agent can find the CA it pins.
    pub fn master_identity(
        &self,
    ) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![MASTER_NAME.to_string()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, MASTER_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params);
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| anyhow::anyhow!("master key: {e}"))?;
        Ok((vec![cert.der().clone(), self.cert_der.clone()], key_der))
    }

    /// Signs a node certificate for `node` over the public key of `csr_pem` (nothing else of
    /// the request is trusted: the name is the master's). Returns the certificate PEM and the
    /// SHA-256 of its DER.
    pub fn sign_node(&self, node: &str, csr_pem: &str) -> anyhow::Result<(String, String)> {
        let csr_der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .context("the certificate request is not PEM")?;
        let csr = CertificateSigningRequestParams::from_der(&csr_der)
            .context("the certificate request cannot be read")?;
        let mut params = CertificateParams::new(vec![node.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, node);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params);
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok((cert.pem(), fingerprint(cert.der())))
    }
}

/// A new key and a certificate request for it (the agent's side of a join): key PEM and CSR
/// PEM. The request's subject is informational; the master names the node.
pub fn node_key_and_request(name: &str) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![name.to_string()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_made_once_and_signs_node_certificates_that_verify() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.db")).unwrap();
        let secrets = SecretBox::load_or_create(&dir.path().join("k")).unwrap();
        let a = ClusterCa::load_or_create(&store, &secrets, "t").unwrap();
        let b = ClusterCa::load_or_create(&store, &secrets, "t").unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        let (_key, csr) = node_key_and_request("n1").unwrap();
        let (cert_pem, sha) = a.sign_node("n1", &csr).unwrap();
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        assert_eq!(fingerprint(&der), sha);
        // The node certificate verifies against the CA as a client certificate.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(a.cert_der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        verifier
            .verify_client_cert(&der, &[], rustls::pki_types::UnixTime::now())
            .unwrap();
        assert!(a.sign_node("n1", "not a csr").is_err());
    }
}
