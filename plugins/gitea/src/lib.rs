//! `gitea`: Gitea's (and Forgejo's) webhook deliveries.
//!
//! The same shape as `github`, with Gitea's headers — and only those: Gitea also sends
//! GitHub-style headers (`X-GitHub-Event`, `X-Hub-Signature-256`), which this plugin never
//! trusts.
//!
//! 1. The JSON body names the repository (`repository.full_name`); the hooks registered for
//!    it are the candidates. None: 404. Malformed JSON: 400.
//! 2. `X-Gitea-Signature: <bare lowercase hex HMAC-SHA256(secret, raw body)>` must verify
//!    against a candidate's secret (constant-time, by the host). Missing, empty (Gitea sends
//!    it empty when the hook has no secret), malformed or wrong: 401, nothing happens. The
//!    legacy top-level `"secret"` field of old payloads is not a credential and is ignored.
//! 3. `X-Gitea-Event`: `push` → a redeploy per verified hook whose branch pattern matches,
//!    with the commit `after`; tags, deleted branches and other branches are ignored with the
//!    reason; other events are ignored.

#![deny(unsafe_code)]

use orca_plugin_sdk::types::{Hook, Rejection, WebhookOutcome, WebhookRequest};
use orca_plugin_sdk::webhook::{Crypto, Webhook};

#[path = "../../shared/forge.rs"]
mod forge;

/// The event header.
pub const EVENT_HEADER: &str = "X-Gitea-Event";
/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Gitea-Signature";
/// The delivery id header (logged).
pub const DELIVERY_HEADER: &str = "X-Gitea-Delivery";

/// The Gitea webhook handler.
#[derive(Default)]
pub struct Gitea;

/// The 32-byte MAC an `X-Gitea-Signature` header (64 hex digits) carries.
pub fn parse_signature(header: Option<&str>) -> Result<Vec<u8>, Rejection> {
    let value = header
        .ok_or_else(|| Rejection::unauthorized(format!("missing {SIGNATURE_HEADER} header")))?
        .trim();
    if value.is_empty() {
        return Err(Rejection::unauthorized(format!(
            "empty {SIGNATURE_HEADER} header: the delivery is unsigned (set a secret on the webhook)"
        )));
    }
    forge::decode_hex(value)
        .filter(|mac| mac.len() == 32)
        .ok_or_else(|| {
            Rejection::unauthorized(format!(
                "malformed {SIGNATURE_HEADER} header: expected 64 hex digits"
            ))
        })
}

impl Webhook for Gitea {
    fn handle(
        &self,
        request: &WebhookRequest,
        hooks: &[Hook],
        crypto: &dyn Crypto,
    ) -> Result<WebhookOutcome, Rejection> {
        let headers = forge::HmacForge {
            name: "gitea",
            event_header: EVENT_HEADER,
            signature_header: SIGNATURE_HEADER,
            delivery_header: DELIVERY_HEADER,
            parse_signature,
        };
        forge::handle_hmac_delivery(&headers, request, hooks, crypto)
    }
}

orca_plugin_sdk::export_webhook!(Gitea);

#[cfg(test)]
mod tests {
    use super::*;
    use orca_plugin_sdk::testing::SoftCrypto;
    use orca_plugin_sdk::types::{Pair, Redeploy};

    const PUSH_DOCS: &[u8] =
        include_bytes!("../../../tests/fixtures/webhooks/gitea/push-docs-example.json");
    const PUSH_NEW_BRANCH: &[u8] =
        include_bytes!("../../../tests/fixtures/webhooks/gitea/push-new-branch.json");

    const SECRET: &str = "a gitea hook secret";
    /// The legacy `"secret"` field in `push-docs-example.json`.
    const LEGACY_BODY_SECRET: &str = "3gEsCfjlV2ugRwgpU#w1*WaW*wa4NXgGmpCfkbG3";

    fn hook(id: &str, repo: &str, branch: &str, secret: &str) -> Hook {
        Hook {
            id: id.into(),
            repo: repo.into(),
            branch: branch.into(),
            secret: secret.into(),
        }
    }

    fn mac_hex(secret: &str, body: &[u8]) -> String {
        SoftCrypto::hex(&SoftCrypto.hmac_sha256(secret.as_bytes(), body))
    }

    /// A delivery with every header Gitea sends, signature(s) as given.
    fn delivery(
        body: &[u8],
        gitea_signature: Option<String>,
        github_signature: Option<String>,
    ) -> WebhookRequest {
        let mut headers = vec![
            Pair::new("Content-Type", "application/json"),
            Pair::new("X-GitHub-Delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473"),
            Pair::new("X-GitHub-Event", "push"),
            Pair::new("X-GitHub-Event-Type", "push"),
            Pair::new("X-Gitea-Delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473"),
            Pair::new("X-Gitea-Event", "push"),
            Pair::new("X-Gitea-Event-Type", "push"),
            Pair::new("X-Gogs-Delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473"),
            Pair::new("X-Gogs-Event", "push"),
        ];
        if let Some(sig) = gitea_signature {
            headers.push(Pair::new("X-Gitea-Signature", sig.clone()));
            headers.push(Pair::new("X-Gogs-Signature", sig));
        }
        if let Some(sig) = github_signature {
            headers.push(Pair::new("X-Hub-Signature-256", format!("sha256={sig}")));
        }
        WebhookRequest {
            method: "POST".into(),
            path: "/webhooks/gitea".into(),
            headers,
            body: body.to_vec(),
        }
    }

    fn signed(body: &[u8]) -> WebhookRequest {
        let sig = mac_hex(SECRET, body);
        delivery(body, Some(sig.clone()), Some(sig))
    }

    fn handle(request: &WebhookRequest, hooks: &[Hook]) -> Result<WebhookOutcome, Rejection> {
        Gitea.handle(request, hooks, &SoftCrypto)
    }

    #[test]
    fn the_published_test_vector() {
        // go-playground/webhooks: this secret over the exact bytes of push-new-branch.json.
        let secret = "IsWishesWereHorsesWedAllBeEatingSteak!";
        let expected = "60fe446c74fa0cb9474f98cc557db79e10c7aaf22cf324ad65239600b9e4d915";
        assert_eq!(mac_hex(secret, PUSH_NEW_BRANCH), expected);
        let hooks = [hook("app", "example/example", "master", secret)];
        assert_eq!(
            handle(
                &delivery(PUSH_NEW_BRANCH, Some(expected.into()), None),
                &hooks
            ),
            Ok(WebhookOutcome::Redeploy(vec![Redeploy {
                hook: "app".into(),
                repo: "example/example".into(),
                branch: "master".into(),
                commit: "67b56589a45103f891bdee7c0546e5d40bc02001".into(),
            }]))
        );
    }

    #[test]
    fn the_docs_example_push_redeploys() {
        let hooks = [hook("web", "gitea/webhooks", "develop", SECRET)];
        assert_eq!(
            handle(&signed(PUSH_DOCS), &hooks),
            Ok(WebhookOutcome::Redeploy(vec![Redeploy {
                hook: "web".into(),
                repo: "gitea/webhooks".into(),
                branch: "develop".into(),
                commit: "bffeb74224043ba2feb48d137756c8a9331c449a".into(),
            }]))
        );
    }

    #[test]
    fn a_new_branch_push_redeploys() {
        let hooks = [hook(
            "app",
            "https://gitea.example.com/example/example.git",
            "mast*",
            SECRET,
        )];
        let Ok(WebhookOutcome::Redeploy(r)) = handle(&signed(PUSH_NEW_BRANCH), &hooks) else {
            panic!("expected a redeploy");
        };
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].commit, "67b56589a45103f891bdee7c0546e5d40bc02001");
    }

    #[test]
    fn the_legacy_body_secret_is_not_a_credential() {
        // A hook whose secret is the one printed in the body: a delivery that merely carries
        // it (unsigned, or signed with something else) is refused.
        let hooks = [hook("web", "gitea/webhooks", "develop", LEGACY_BODY_SECRET)];
        for sig in [
            None,
            Some(String::new()),
            Some(mac_hex("attacker", PUSH_DOCS)),
        ] {
            let r = handle(&delivery(PUSH_DOCS, sig.clone(), None), &hooks).unwrap_err();
            assert_eq!(r.status, 401, "{sig:?}: {r}");
        }
        // Signed properly with that secret, it verifies like any other.
        let sig = mac_hex(LEGACY_BODY_SECRET, PUSH_DOCS);
        assert!(matches!(
            handle(&delivery(PUSH_DOCS, Some(sig), None), &hooks),
            Ok(WebhookOutcome::Redeploy(_))
        ));
    }

    #[test]
    fn github_style_headers_are_not_trusted() {
        let hooks = [hook("web", "gitea/webhooks", "develop", SECRET)];
        // A valid X-Hub-Signature-256 without X-Gitea-Signature.
        let req = delivery(PUSH_DOCS, None, Some(mac_hex(SECRET, PUSH_DOCS)));
        let r = handle(&req, &hooks).unwrap_err();
        assert_eq!(
            r,
            Rejection::unauthorized("missing X-Gitea-Signature header")
        );
        // X-GitHub-Event without X-Gitea-Event: verified, but not a Gitea delivery.
        let mut req = signed(PUSH_DOCS);
        req.headers.retain(|h| h.key != "X-Gitea-Event");
        assert_eq!(handle(&req, &hooks).unwrap_err().status, 400);
    }

    #[test]
    fn bad_signatures_are_refused() {
        let hooks = [hook("web", "gitea/webhooks", "develop", SECRET)];
        let good = mac_hex(SECRET, PUSH_DOCS);
        let cases: [(Option<String>, &str); 6] = [
            (None, "missing X-Gitea-Signature header"),
            (Some(String::new()), "empty X-Gitea-Signature header"),
            (
                Some(format!("sha256={good}")),
                "malformed X-Gitea-Signature header",
            ),
            (
                Some(good[..40].into()),
                "malformed X-Gitea-Signature header",
            ),
            (Some("zz".repeat(32)), "malformed X-Gitea-Signature header"),
            (
                Some(mac_hex("wrong", PUSH_DOCS)),
                "X-Gitea-Signature does not match the webhook secret for gitea/webhooks",
            ),
        ];
        for (sig, reason) in cases {
            let r = handle(&delivery(PUSH_DOCS, sig.clone(), None), &hooks).unwrap_err();
            assert_eq!(r.status, 401, "{sig:?}: {r}");
            assert!(r.reason.starts_with(reason), "{sig:?}: {r}");
        }
    }

    #[test]
    fn a_tampered_body_is_refused() {
        let hooks = [hook("web", "gitea/webhooks", "develop", SECRET)];
        let sig = mac_hex(SECRET, PUSH_DOCS);
        let tampered = String::from_utf8(PUSH_DOCS.to_vec())
            .unwrap()
            .replace("refs/heads/develop", "refs/heads/master");
        let r = handle(&delivery(tampered.as_bytes(), Some(sig), None), &hooks).unwrap_err();
        assert_eq!(r.status, 401);
    }

    #[test]
    fn unknown_repositories_and_malformed_bodies() {
        let hooks = [hook("web", "someone/else", "*", SECRET)];
        assert_eq!(
            handle(&signed(PUSH_DOCS), &hooks).unwrap_err(),
            Rejection::new(404, "no webhook registered for repository gitea/webhooks")
        );
        assert_eq!(
            handle(&signed(b"{\"ref\": "), &hooks).unwrap_err().status,
            400
        );
    }

    #[test]
    fn tags_deletions_and_other_branches_are_ignored() {
        let hooks = [hook("web", "gitea/webhooks", "develop", SECRET)];
        let text = String::from_utf8(PUSH_DOCS.to_vec()).unwrap();
        let tag = text.replace("refs/heads/develop", "refs/tags/v1.0");
        assert_eq!(
            handle(&signed(tag.as_bytes()), &hooks),
            Ok(WebhookOutcome::Ignore("tag push (refs/tags/v1.0)".into()))
        );
        let deleted = text.replace(
            "\"after\": \"bffeb74224043ba2feb48d137756c8a9331c449a\"",
            "\"after\": \"0000000000000000000000000000000000000000\"",
        );
        assert_ne!(deleted, text);
        assert_eq!(
            handle(&signed(deleted.as_bytes()), &hooks),
            Ok(WebhookOutcome::Ignore("branch deleted (develop)".into()))
        );
        let hooks = [hook("web", "gitea/webhooks", "main", SECRET)];
        assert_eq!(
            handle(&signed(PUSH_DOCS), &hooks),
            Ok(WebhookOutcome::Ignore(
                "branch develop does not match main".into()
            ))
        );
    }
}
