//! An example webhook plugin for a custom forge (say, an in-house git server): deliveries are
//! JSON `{"repository": "team/site", "branch": "main", "commit": "<sha>"}` carrying the hook's
//! secret in `X-Custom-Token`. It shows the whole contract of the `webhook` world:
//!
//! 1. find the hooks registered for the payload's repository (none: 404);
//! 2. verify the delivery against each candidate hook's secret, in constant time through the
//!    host's `crypto` capability (none verifies: 401);
//! 3. answer what the verified delivery asks for: a redeploy per matching hook, or an ignore
//!    with the reason when the branch does not match.
//!
//! Register it with `orca webhooks add --forge ./custom-forge.wasm ...`; the forge then posts
//! to `/api/v1/webhooks/custom-forge`.

#![deny(unsafe_code)]

use orca_plugin_sdk::types::{Hook, Redeploy, Rejection, WebhookOutcome, WebhookRequest};
use orca_plugin_sdk::webhook::{Crypto, Webhook};
use serde::Deserialize;

/// The custom forge's handler.
#[derive(Default)]
pub struct CustomForge;

#[derive(Deserialize)]
struct Push {
    repository: String,
    branch: String,
    commit: String,
}

impl Webhook for CustomForge {
    fn handle(
        &self,
        request: &WebhookRequest,
        hooks: &[Hook],
        crypto: &dyn Crypto,
    ) -> Result<WebhookOutcome, Rejection> {
        let push: Push = serde_json::from_slice(&request.body)
            .map_err(|e| Rejection::bad_request(format!("malformed payload: {e}")))?;
        let candidates: Vec<&Hook> = hooks
            .iter()
            .filter(|h| h.repo.eq_ignore_ascii_case(&push.repository))
            .collect();
        if candidates.is_empty() {
            return Err(Rejection::new(
                404,
                format!("no webhook registered for {}", push.repository),
            ));
        }
        let token = request.header("x-custom-token").unwrap_or("").as_bytes();
        let verified: Vec<&Hook> = candidates
            .into_iter()
            .filter(|h| !h.secret.is_empty() && crypto.constant_time_eq(token, h.secret.as_bytes()))
            .collect();
        if verified.is_empty() {
            return Err(Rejection::unauthorized("X-Custom-Token does not match"));
        }
        let redeploys: Vec<Redeploy> = verified
            .iter()
            .filter(|h| h.matches_branch(&push.branch))
            .map(|h| Redeploy {
                hook: h.id.clone(),
                repo: push.repository.clone(),
                branch: push.branch.clone(),
                commit: push.commit.clone(),
            })
            .collect();
        if redeploys.is_empty() {
            return Ok(WebhookOutcome::Ignore(format!(
                "branch {} matches no webhook",
                push.branch
            )));
        }
        Ok(WebhookOutcome::Redeploy(redeploys))
    }
}

orca_plugin_sdk::export_webhook!(CustomForge);

#[cfg(test)]
mod tests {
    use super::*;
    use orca_plugin_sdk::testing::SoftCrypto;
    use orca_plugin_sdk::types::Pair;

    fn request(token: &str, branch: &str) -> WebhookRequest {
        WebhookRequest {
            method: "POST".into(),
            path: "/api/v1/webhooks/custom-forge".into(),
            headers: vec![Pair {
                key: "X-Custom-Token".into(),
                value: token.into(),
            }],
            body: format!(r#"{{"repository":"team/site","branch":"{branch}","commit":"abc1234"}}"#)
                .into_bytes(),
        }
    }

    fn hooks() -> Vec<Hook> {
        vec![Hook {
            id: "wh-1".into(),
            repo: "team/site".into(),
            branch: "main".into(),
            secret: "s3cret".into(),
        }]
    }

    #[test]
    fn verified_pushes_redeploy_and_others_are_refused() {
        let ok = CustomForge.handle(&request("s3cret", "main"), &hooks(), &SoftCrypto);
        assert!(matches!(ok, Ok(WebhookOutcome::Redeploy(r)) if r[0].commit == "abc1234"));
        let bad = CustomForge.handle(&request("nope", "main"), &hooks(), &SoftCrypto);
        assert_eq!(bad.unwrap_err().status, 401);
        let other = CustomForge.handle(&request("s3cret", "dev"), &hooks(), &SoftCrypto);
        assert!(matches!(other, Ok(WebhookOutcome::Ignore(_))));
        let unknown = CustomForge.handle(&request("s3cret", "main"), &[], &SoftCrypto);
        assert_eq!(unknown.unwrap_err().status, 404);
    }
}
