//! Certificates of the HTTPS listener: keeps the proxy's SNI set equal to what the store
//! holds for the services' domains, and obtains and renews certificates by ACME HTTP-01 in
//! its own task (never the controller's), with exponential back-off on failure.
//!
//! - `acme` — one order through instant-acme (account, challenge, finalize).
//! - `x509` — the leaf's notAfter, for renewal.
//!
//! The store is the source of truth (table `certificates`, keys sealed): a deploy with
//! `tls_cert`/`tls_key` writes a manual certificate there, ACME writes issued ones, and
//! this module loads whatever is there into the proxy. Failures and the next attempt are in
//! table `acme_orders`, which `status` shows.

mod acme;
pub mod x509;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use orca_config::AcmeSettings;
use orca_proxy::{Certificates, Challenges};
use orca_store::{
    AcmeOrderRecord, CertSource, CertificateRecord, SecretBox, Store, TLS_SEAL_SCOPE,
};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use acme::{AcmeClient, AcmeClientConfig};

/// How often the store is compared with what the proxy serves (new domains, new manual
/// certificates, removed services).
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// The longest one ACME order may take before it counts as failed.
const ORDER_TIMEOUT: Duration = Duration::from_secs(180);

/// What `[acme]` asks for, with paths resolved.
#[derive(Clone, Debug)]
pub struct AcmePolicy {
    client: AcmeClientConfig,
    renew_before: Duration,
    check_interval: Duration,
    retry_initial: Duration,
    retry_max: Duration,
}

impl AcmePolicy {
    /// The policy of `settings`; a relative `ca_root` is relative to `config_dir`. The root
    /// file is checked here so a wrong path fails the server start, not the first order.
    pub fn from_settings(
        settings: &AcmeSettings,
        config_dir: &std::path::Path,
    ) -> anyhow::Result<AcmePolicy> {
        let ca_root = match &settings.ca_root {
            Some(path) => {
                let path = config_dir.join(path);
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "cluster.toml [acme] ca_root: cannot read {}",
                        path.display()
                    )
                })?;
                if !text.contains("-----BEGIN CERTIFICATE-----") {
                    anyhow::bail!(
                        "cluster.toml [acme] ca_root: {} holds no PEM certificate",
                        path.display()
                    );
                }
                Some(path)
            }
            None => None,
        };
        Ok(AcmePolicy {
            client: AcmeClientConfig {
                directory: settings.directory_url().to_string(),
                email: settings.email.clone(),
                ca_root,
            },
            renew_before: Duration::from_secs(u64::from(settings.renew_before_days) * 86_400),
            check_interval: Duration::from_secs(settings.check_interval_secs),
            retry_initial: Duration::from_secs(settings.retry_initial_secs),
            retry_max: Duration::from_secs(settings.retry_max_secs),
        })
    }

    /// The wait after `failures` consecutive failures: `retry_initial · 2^(failures-1)`,
    /// at most `retry_max`.
    fn backoff(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        self.retry_initial
            .saturating_mul(1u32 << exp)
            .min(self.retry_max)
    }
}

/// Keeps the proxy's certificates in line with the store, and runs ACME.
pub struct CertManager {
    store: Store,
    secrets: Arc<SecretBox>,
    certificates: Certificates,
    challenges: Challenges,
    acme: Option<AcmePolicy>,
    events: crate::events::Events,
}

/// A domain some service wants served, and how its certificate comes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Wanted {
    service: String,
    manual: bool,
}

impl CertManager {
    pub fn new(
        store: Store,
        secrets: Arc<SecretBox>,
        certificates: Certificates,
        challenges: Challenges,
        acme: Option<AcmePolicy>,
    ) -> Self {
        CertManager {
            store,
            secrets,
            certificates,
            challenges,
            acme,
            events: crate::events::Events::disabled(),
        }
    }

    /// Emits certificate events through `events` (the default discards them).
    pub fn with_events(mut self, events: crate::events::Events) -> Self {
        self.events = events;
        self
    }

    /// Runs until `shutdown`: the sync loop, and the ACME loop if `[acme]` is configured.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let mut loaded: HashMap<String, (u64, u64)> = HashMap::new();
        // The first sync runs before anything else, so a restarted server serves its
        // stored certificates at once.
        this.sync(&mut loaded);
        if let Some(policy) = this.acme.clone() {
            let acme = this.clone();
            let stop = shutdown.clone();
            tokio::spawn(
                async move { acme.acme_loop(policy, stop).await }
                    .instrument(info_span!("orca.acme")),
            );
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(SYNC_INTERVAL) => this.sync(&mut loaded),
            }
        }
    }

    /// The domains services want, from the store.
    fn wanted(&self) -> anyhow::Result<BTreeMap<String, Wanted>> {
        let mut wanted = BTreeMap::new();
        for record in self.store.list_services()? {
            if let Some(domain) = &record.spec.domain {
                wanted.insert(
                    domain.to_ascii_lowercase(),
                    Wanted {
                        service: record.key(),
                        manual: record.spec.tls_cert.is_some(),
                    },
                );
            }
        }
        Ok(wanted)
    }

    /// One comparison of store and proxy: load new or changed certificates, drop those no
    /// service wants any more (and ACME ones replaced by a service's own, and vice versa).
    /// `loaded` remembers `(stored_at, not_after)` of what the proxy serves.
    fn sync(&self, loaded: &mut HashMap<String, (u64, u64)>) {
        let result = (|| -> anyhow::Result<()> {
            let wanted = self.wanted()?;
            let stored = self.store.list_certificates()?;
            let mut keep = Vec::new();
            for record in stored {
                let fits = wanted
                    .get(&record.domain)
                    .is_some_and(|w| w.manual == (record.source == CertSource::Manual));
                if !fits {
                    info!(domain = %record.domain, source = ?record.source, "certificate no longer wanted; removed");
                    self.store.delete_certificate(&record.domain)?;
                    continue;
                }
                keep.push(record.domain.clone());
                let version = (record.stored_at, record.not_after);
                if loaded.get(&record.domain) == Some(&version) {
                    continue;
                }
                match self.certified_key(&record) {
                    Ok(key) => {
                        self.certificates.insert(&record.domain, Arc::new(key));
                        loaded.insert(record.domain.clone(), version);
                        info!(domain = %record.domain, source = ?record.source, not_after = record.not_after, "serving certificate");
                    }
                    Err(e) => {
                        // Remember the version so a broken record is not retried every second.
                        loaded.insert(record.domain.clone(), version);
                        warn!(domain = %record.domain, error = %e, "stored certificate cannot be served");
                    }
                }
            }
            let gone: Vec<String> = loaded
                .keys()
                .filter(|d| !keep.contains(d))
                .cloned()
                .collect();
            for domain in gone {
                self.certificates.remove(&domain);
                loaded.remove(&domain);
            }
            for order in self.store.list_acme_orders()? {
                if wanted.get(&order.domain).is_none_or(|w| w.manual) {
                    self.store.delete_acme_order(&order.domain)?;
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            warn!(error = %format!("{e:#}"), "certificate sync failed");
        }
    }

    fn certified_key(
        &self,
        record: &CertificateRecord,
    ) -> anyhow::Result<rustls::sign::CertifiedKey> {
        let key_pem = self
            .secrets
            .open(TLS_SEAL_SCOPE, &record.domain, &record.key_sealed)?;
        Ok(orca_proxy::certified_key(&record.cert_pem, &key_pem)?)
    }

    /// Orders certificates for domains without one, renews those inside the renewal
    /// window (each at most once per `check_interval`), one order at a time.
    async fn acme_loop(self: Arc<Self>, policy: AcmePolicy, shutdown: CancellationToken) {
        let mut client = AcmeClient::new(
            policy.client.clone(),
            self.store.clone(),
            self.secrets.clone(),
        );
        let mut last_check: HashMap<String, u64> = HashMap::new();
        loop {
            if let Err(e) = self
                .acme_pass(&policy, &mut client, &mut last_check, &shutdown)
                .await
            {
                warn!(error = %format!("{e:#}"), "ACME pass failed");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(SYNC_INTERVAL) => {}
            }
        }
    }

    async fn acme_pass(
        &self,
        policy: &AcmePolicy,
        client: &mut AcmeClient,
        last_check: &mut HashMap<String, u64>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let wanted = self.wanted()?;
        for (domain, want) in wanted.iter().filter(|(_, w)| !w.manual) {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let now = now_unix();
            let order = self.store.get_acme_order(domain)?;
            if order.as_ref().is_some_and(|o| o.next_attempt_at > now) {
                continue;
            }
            let why = match self.store.get_certificate(domain)? {
                None => "issue",
                Some(cert) if cert.source != CertSource::Acme => continue,
                Some(cert) => {
                    let in_window = now + policy.renew_before.as_secs() >= cert.not_after;
                    let checked = last_check.get(domain).copied().unwrap_or(cert.stored_at);
                    if !in_window || now < checked + policy.check_interval.as_secs() {
                        continue;
                    }
                    "renew"
                }
            };
            last_check.insert(domain.clone(), now);
            let failures = order.as_ref().map_or(0, |o| o.failures);
            info!(%domain, service = %want.service, action = why, "ACME order started");
            let attempt =
                tokio::time::timeout(ORDER_TIMEOUT, client.issue(domain, &self.challenges))
                    .await
                    .unwrap_or_else(|_| {
                        Err(anyhow::anyhow!(
                            "the order did not complete within {ORDER_TIMEOUT:?}"
                        ))
                    })
                    .and_then(|issued| self.store_issued(domain, &want.service, issued));
            match attempt {
                Ok(not_after) => {
                    info!(%domain, not_after, action = why, "ACME certificate issued");
                    self.events.certificate(domain, &want.service, why, None);
                    self.store.delete_acme_order(domain)?;
                }
                Err(e) => {
                    let failures = failures + 1;
                    let wait = policy.backoff(failures);
                    let reason = format!("{e:#}");
                    warn!(%domain, failures, retry_in = ?wait, error = %reason, "ACME order failed");
                    self.events
                        .certificate(domain, &want.service, why, Some(&reason));
                    self.store.put_acme_order(&AcmeOrderRecord {
                        domain: domain.clone(),
                        failures,
                        last_error: Some(reason),
                        last_attempt_at: now,
                        next_attempt_at: now_unix() + wait.as_secs(),
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Checks an issued certificate, seals its key and stores it, and serves it at once.
    fn store_issued(
        &self,
        domain: &str,
        service: &str,
        issued: acme::Issued,
    ) -> anyhow::Result<u64> {
        let key = orca_proxy::certified_key(&issued.cert_pem, &issued.key_pem)
            .context("the issued certificate cannot be served")?;
        let not_after = x509::not_after(&issued.cert_pem)
            .map_err(|e| anyhow::anyhow!("the issued certificate: {e}"))?;
        let record = CertificateRecord {
            domain: domain.to_string(),
            service: service.to_string(),
            source: CertSource::Acme,
            cert_pem: issued.cert_pem,
            key_sealed: self.secrets.seal(TLS_SEAL_SCOPE, domain, &issued.key_pem),
            not_after,
            stored_at: now_unix(),
        };
        self.store.put_certificate(&record)?;
        self.certificates.insert(domain, Arc::new(key));
        debug!(domain, "certificate swapped in");
        Ok(not_after)
    }
}

/// Stores a service's own certificate (from a deploy): parsed and matched against its key
/// first, the key sealed. Errors name the service and what is wrong, never key material.
pub fn store_manual(
    store: &Store,
    secrets: &SecretBox,
    service: &str,
    domain: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), String> {
    let record = manual_record(secrets, service, domain, cert_pem, key_pem)?;
    store
        .put_certificate(&record)
        .map_err(|e| format!("storing the certificate of \"{service}\": {e}"))
}

/// The record of a service's own certificate (checked against its key, key sealed), for a
/// deploy to store in its transaction.
pub fn manual_record(
    secrets: &SecretBox,
    service: &str,
    domain: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<CertificateRecord, String> {
    orca_proxy::certified_key(cert_pem, key_pem)
        .map_err(|e| format!("service \"{service}\": tls_cert/tls_key: {e}"))?;
    let not_after =
        x509::not_after(cert_pem).map_err(|e| format!("service \"{service}\": tls_cert: {e}"))?;
    let domain = domain.to_ascii_lowercase();
    let record = CertificateRecord {
        domain: domain.clone(),
        service: service.to_string(),
        source: CertSource::Manual,
        cert_pem: cert_pem.to_string(),
        key_sealed: secrets.seal(TLS_SEAL_SCOPE, &domain, key_pem),
        not_after,
        stored_at: now_unix(),
    };
    Ok(record)
}

/// The `tls` object of a service's status: whether HTTPS is served for its domain, until
/// when, and the last ACME failure with the CA's reason and the next attempt.
pub fn status(store: &Store, domain: Option<&str>) -> Value {
    let Some(domain) = domain.map(str::to_ascii_lowercase) else {
        return Value::Null;
    };
    let cert = store.get_certificate(&domain).ok().flatten();
    let order = store.get_acme_order(&domain).ok().flatten();
    let state = match (&cert, &order) {
        (Some(_), Some(_)) => "renewal-failing",
        (Some(_), None) => "active",
        (None, Some(_)) => "failed",
        (None, None) => "none",
    };
    json!({
        "state": state,
        "source": cert.as_ref().map(|c| c.source),
        "not_after": cert.as_ref().map(|c| c.not_after),
        "error": order.as_ref().and_then(|o| o.last_error.clone()),
        "failures": order.as_ref().map_or(0, |o| o.failures),
        "next_attempt_at": order.as_ref().map(|o| o.next_attempt_at),
    })
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where `cluster.toml`'s `[acme] ca_root` points, for error messages.
pub fn describe(policy: &AcmePolicy) -> String {
    let root: Option<&PathBuf> = policy.client.ca_root.as_ref();
    match root {
        Some(root) => format!(
            "{} (extra root {})",
            policy.client.directory,
            root.display()
        ),
        None => policy.client.directory.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orca_store::DeployItem;

    fn deploy(store: &Store, domain: &str, manual: bool) {
        let mut spec = serde_json::json!({
            "name": "web", "project": "p", "image": "i", "port": 80, "domain": domain,
        });
        if manual {
            spec["tls_cert"] = "c.pem".into();
            spec["tls_key"] = "k.pem".into();
        }
        let item = DeployItem {
            spec: serde_json::from_value(spec).unwrap(),
            sealed_env: Vec::new(),
            fingerprint: format!("{domain}{manual}"),
            commit: None,
        };
        store.apply_deploy(&[item], 1).unwrap();
    }

    #[test]
    fn sync_serves_what_the_store_holds_and_drops_what_no_service_wants() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cluster.db")).unwrap();
        let secrets = Arc::new(SecretBox::load_or_create(&dir.path().join("secret.key")).unwrap());
        let certificates = Certificates::new();
        let manager = CertManager::new(
            store.clone(),
            secrets.clone(),
            certificates.clone(),
            Challenges::new(),
            None,
        );
        let mut loaded = HashMap::new();
        deploy(&store, "a.test", true);
        let cert = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        store_manual(
            &store,
            &secrets,
            "p/web",
            "A.test",
            &cert.cert.pem(),
            &cert.signing_key.serialize_pem(),
        )
        .unwrap();
        assert_eq!(status(&store, Some("a.test"))["state"], "active");
        manager.sync(&mut loaded);
        assert!(certificates.contains("a.test:443"));

        // The service drops its own certificate: it is no longer served (ACME would take
        // over if configured).
        deploy(&store, "a.test", false);
        manager.sync(&mut loaded);
        assert!(!certificates.contains("a.test"));
        assert_eq!(store.get_certificate("a.test").unwrap(), None);
        assert_eq!(status(&store, Some("a.test"))["state"], "none");
        assert_eq!(status(&store, None), Value::Null);
    }

    #[test]
    fn a_mismatched_key_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cluster.db")).unwrap();
        let secrets = SecretBox::load_or_create(&dir.path().join("secret.key")).unwrap();
        let a = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        let key = b.signing_key.serialize_pem();
        let err =
            store_manual(&store, &secrets, "p/web", "a.test", &a.cert.pem(), &key).unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        assert!(!err.contains("PRIVATE KEY"), "{err}");
        assert_eq!(store.get_certificate("a.test").unwrap(), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let settings = AcmeSettings {
            email: "a@b.c".into(),
            directory: "letsencrypt".into(),
            ca_root: None,
            renew_before_days: 30,
            check_interval_secs: 10,
            retry_initial_secs: 5,
            retry_max_secs: 60,
        };
        let policy = AcmePolicy::from_settings(&settings, std::path::Path::new(".")).unwrap();
        let waits: Vec<u64> = (1..=6).map(|n| policy.backoff(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 60, 60]);
        assert_eq!(policy.backoff(1000).as_secs(), 60);
    }
}
