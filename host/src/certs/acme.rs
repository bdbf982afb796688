//! One ACME (RFC 8555) order by HTTP-01 through instant-acme: the account (created once per
//! directory, its credentials sealed in the store), the challenge answered by the proxy's
//! plain-HTTP listener, the certificate with a fresh private key.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use orca_proxy::Challenges;
use orca_store::{SecretBox, Store, ACME_SEAL_SCOPE};
use tracing::{debug, info};

/// How to reach the CA.
#[derive(Clone, Debug)]
pub struct AcmeClientConfig {
    /// Directory URL.
    pub directory: String,
    /// Contact email.
    pub email: String,
    /// Extra root for the directory's TLS (Pebble, private CAs).
    pub ca_root: Option<PathBuf>,
}

/// An account at one CA, created or restored on first use.
pub struct AcmeClient {
    config: AcmeClientConfig,
    store: Store,
    secrets: std::sync::Arc<SecretBox>,
    account: Option<Account>,
}

/// A certificate the CA issued.
pub struct Issued {
    /// PEM chain, leaf first.
    pub cert_pem: String,
    /// PEM private key (generated here; never logged).
    pub key_pem: String,
}

impl AcmeClient {
    pub fn new(config: AcmeClientConfig, store: Store, secrets: std::sync::Arc<SecretBox>) -> Self {
        AcmeClient {
            config,
            store,
            secrets,
            account: None,
        }
    }

    fn builder(&self) -> anyhow::Result<instant_acme::AccountBuilder> {
        match &self.config.ca_root {
            Some(root) => Account::builder_with_root(root).with_context(|| {
                format!("[acme] ca_root {}: not a usable PEM root", root.display())
            }),
            None => Account::builder().context("the system's root certificates"),
        }
    }

    /// The account: from memory, else restored from the store, else created at the CA.
    async fn account(&mut self) -> anyhow::Result<Account> {
        if let Some(account) = &self.account {
            return Ok(account.clone());
        }
        let directory = self.config.directory.clone();
        let account = match self.store.get_acme_account(&directory)? {
            Some(sealed) => {
                let json = self.secrets.open(ACME_SEAL_SCOPE, &directory, &sealed)?;
                let credentials: AccountCredentials = serde_json::from_str(&json)
                    .context("stored ACME account credentials do not parse")?;
                self.builder()?
                    .from_credentials(credentials)
                    .await
                    .with_context(|| format!("restoring the ACME account at {directory}"))?
            }
            None => {
                let contact = format!("mailto:{}", self.config.email);
                let (account, credentials) = self
                    .builder()?
                    .create(
                        &NewAccount {
                            contact: &[&contact],
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        directory.clone(),
                        None,
                    )
                    .await
                    .with_context(|| format!("creating an ACME account at {directory}"))?;
                let json = serde_json::to_string(&credentials)
                    .context("serializing ACME account credentials")?;
                let sealed = self.secrets.seal(ACME_SEAL_SCOPE, &directory, &json);
                self.store.put_acme_account(&directory, &sealed)?;
                info!(%directory, "ACME account created");
                account
            }
        };
        self.account = Some(account.clone());
        Ok(account)
    }

    /// Orders a certificate for `domain`, answering HTTP-01 through `challenges`. Errors
    /// carry the CA's reason (e.g. the validation error of the challenge).
    pub async fn issue(&mut self, domain: &str, challenges: &Challenges) -> anyhow::Result<Issued> {
        let account = match self.account().await {
            Ok(account) => account,
            Err(e) => {
                // A broken restore must not stick: try again from the store next time.
                self.account = None;
                return Err(e);
            }
        };
        let identifiers = [Identifier::Dns(domain.to_string())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .context("creating the order")?;
        let mut tokens = Vec::new();
        let result = async {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.context("fetching the authorization")?;
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => bail!("authorization is {other:?}"),
                }
                let mut challenge = authz
                    .challenge(ChallengeType::Http01)
                    .ok_or_else(|| anyhow!("the CA offers no http-01 challenge"))?;
                let key_authorization = challenge.key_authorization();
                challenges.insert(&challenge.token, key_authorization.as_str());
                tokens.push(challenge.token.clone());
                challenge
                    .set_ready()
                    .await
                    .context("telling the CA the challenge is ready")?;
            }
            let retries = RetryPolicy::new()
                .initial_delay(Duration::from_millis(250))
                .timeout(Duration::from_secs(90));
            let status = order
                .poll_ready(&retries)
                .await
                .context("waiting for the CA to validate")?;
            if status != OrderStatus::Ready {
                bail!("{}", invalid_reason(&mut order).await);
            }
            let key_pem = order.finalize().await.context("finalizing the order")?;
            let cert_pem = order
                .poll_certificate(&retries)
                .await
                .context("downloading the certificate")?;
            Ok(Issued { cert_pem, key_pem })
        }
        .await;
        for token in &tokens {
            challenges.remove(token);
        }
        debug!(domain, ok = result.is_ok(), "ACME order finished");
        result
    }
}

/// Why an order became invalid: the challenge errors the CA reports.
async fn invalid_reason(order: &mut instant_acme::Order) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        if authz.refresh().await.is_err() {
            continue;
        }
        for challenge in &authz.challenges {
            if let Some(error) = &challenge.error {
                reasons.push(error.to_string());
            }
        }
    }
    if reasons.is_empty() {
        "the CA marked the order invalid".to_string()
    } else {
        format!("the CA could not validate: {}", reasons.join("; "))
    }
}
