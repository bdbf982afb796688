//! `github`: GitHub's webhook deliveries.
//!
//! 1. The JSON body names the repository (`repository.full_name`); the hooks registered for
//!    it (case-insensitive; a hook's `repo` may also be a clone URL) are the candidates. None:
//!    404. Malformed JSON: 400.
//! 2. `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, raw body)>` must verify against a
//!    candidate's secret (compared by the host in constant time). Missing, empty, malformed or
//!    wrong: 401, and nothing happens — not even a ping is answered.
//! 3. `X-GitHub-Event`: `ping` → pong; `push` → a redeploy per verified hook whose branch
//!    pattern matches, with the commit `after`; tag pushes, deleted branches and other
//!    branches are ignored with the reason; any other event is ignored.

#![deny(unsafe_code)]

use orca_plugin_sdk::types::{Hook, Rejection, WebhookOutcome, WebhookRequest};
use orca_plugin_sdk::webhook::{Crypto, Webhook};

#[path = "../../shared/forge.rs"]
mod forge;

/// The event header.
pub const EVENT_HEADER: &str = "X-GitHub-Event";
/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";
/// The delivery id header (logged).
pub const DELIVERY_HEADER: &str = "X-GitHub-Delivery";

/// The GitHub webhook handler.
#[derive(Default)]
pub struct GitHub;

/// The 32-byte MAC a `sha256=<64 hex digits>` signature header carries.
pub fn parse_signature(header: Option<&str>) -> Result<Vec<u8>, Rejection> {
    let value = header
        .ok_or_else(|| Rejection::unauthorized(format!("missing {SIGNATURE_HEADER} header")))?
        .trim();
    let hex = value.strip_prefix("sha256=").unwrap_or(value);
    if hex.is_empty() {
        return Err(Rejection::unauthorized(format!(
            "empty {SIGNATURE_HEADER} header: the delivery is unsigned (set a secret on the webhook)"
        )));
    }
    if !value.starts_with("sha256=") {
        return Err(Rejection::unauthorized(format!(
            "malformed {SIGNATURE_HEADER} header: expected sha256=<hex digest>"
        )));
    }
    forge::decode_hex(hex)
        .filter(|mac| mac.len() == 32)
        .ok_or_else(|| {
            Rejection::unauthorized(format!(
                "malformed {SIGNATURE_HEADER} header: expected sha256= and 64 hex digits"
            ))
        })
}

impl Webhook for GitHub {
    fn handle(
        &self,
        request: &WebhookRequest,
        hooks: &[Hook],
        crypto: &dyn Crypto,
    ) -> Result<WebhookOutcome, Rejection> {
        let headers = forge::HmacForge {
            name: "github",
            event_header: EVENT_HEADER,
            signature_header: SIGNATURE_HEADER,
            delivery_header: DELIVERY_HEADER,
            parse_signature,
        };
        forge::handle_hmac_delivery(&headers, request, hooks, crypto)
    }
}

orca_plugin_sdk::export_webhook!(GitHub);

#[cfg(test)]
mod tests {
    use super::*;
    use orca_plugin_sdk::testing::SoftCrypto;
    use orca_plugin_sdk::types::{Pair, Redeploy};

    const PUSH_BRANCH: &[u8] =
        include_bytes!("../../../tests/fixtures/webhooks/github/push-branch.json");
    const PUSH_NEW_BRANCH: &[u8] =
        include_bytes!("../../../tests/fixtures/webhooks/github/push-new-branch.json");
    const PUSH_TAG_DELETED: &[u8] =
        include_bytes!("../../../tests/fixtures/webhooks/github/push-tag-deleted.json");
    const PING: &[u8] = include_bytes!("../../../tests/fixtures/webhooks/github/ping.json");

    const SECRET: &str = "s3cr3t, with some length to it";

    fn hook(id: &str, repo: &str, branch: &str, secret: &str) -> Hook {
        Hook {
            id: id.into(),
            repo: repo.into(),
            branch: branch.into(),
            secret: secret.into(),
        }
    }

    fn sign(secret: &str, body: &[u8]) -> String {
        format!(
            "sha256={}",
            SoftCrypto::hex(&SoftCrypto.hmac_sha256(secret.as_bytes(), body))
        )
    }

    fn delivery(event: &str, body: &[u8], signature: Option<String>) -> WebhookRequest {
        let mut headers = vec![
            Pair::new("User-Agent", "GitHub-Hookshot/044aadd"),
            Pair::new("Content-Type", "application/json"),
            Pair::new("X-GitHub-Event", event),
            Pair::new("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ];
        if let Some(sig) = signature {
            headers.push(Pair::new("X-Hub-Signature-256", sig));
        }
        WebhookRequest {
            method: "POST".into(),
            path: "/webhooks/github".into(),
            headers,
            body: body.to_vec(),
        }
    }

    fn signed(event: &str, body: &[u8]) -> WebhookRequest {
        delivery(event, body, Some(sign(SECRET, body)))
    }

    fn handle(request: &WebhookRequest, hooks: &[Hook]) -> Result<WebhookOutcome, Rejection> {
        GitHub.handle(request, hooks, &SoftCrypto)
    }

    #[test]
    fn the_published_test_vector() {
        // GitHub's docs: secret "It's a Secret to Everybody", body "Hello, World!".
        let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            sign("It's a Secret to Everybody", b"Hello, World!"),
            expected
        );
        let mac = parse_signature(Some(expected)).unwrap();
        assert!(SoftCrypto.constant_time_eq(
            &SoftCrypto.hmac_sha256(b"It's a Secret to Everybody", b"Hello, World!"),
            &mac
        ));
    }

    #[test]
    fn a_signed_branch_push_redeploys() {
        let hooks = [
            hook("web", "woodpecker-ci/woodpecker", "main", SECRET),
            hook("other", "someone/else", "main", SECRET),
        ];
        assert_eq!(
            handle(&signed("push", PUSH_BRANCH), &hooks),
            Ok(WebhookOutcome::Redeploy(vec![Redeploy {
                hook: "web".into(),
                repo: "woodpecker-ci/woodpecker".into(),
                branch: "main".into(),
                commit: "366701fde727cb7a9e7f21eb88264f59f6f9b89c".into(),
            }]))
        );
    }

    #[test]
    fn a_new_branch_push_redeploys_every_matching_hook() {
        let hooks = [
            hook(
                "a",
                "https://github.com/Codertocat/Hello-World.git",
                "master",
                SECRET,
            ),
            hook("b", "codertocat/hello-world", "*", SECRET),
            hook("c", "Codertocat/Hello-World", "release/*", SECRET),
        ];
        let Ok(WebhookOutcome::Redeploy(r)) = handle(&signed("push", PUSH_NEW_BRANCH), &hooks)
        else {
            panic!("expected a redeploy");
        };
        assert_eq!(
            r.iter().map(|r| r.hook.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(r.iter().all(|r| r.branch == "master"
            && r.commit == "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
            && r.repo == "Codertocat/Hello-World"));
    }

    #[test]
    fn other_branches_are_ignored() {
        let hooks = [hook("web", "woodpecker-ci/woodpecker", "release/*", SECRET)];
        assert_eq!(
            handle(&signed("push", PUSH_BRANCH), &hooks),
            Ok(WebhookOutcome::Ignore(
                "branch main does not match release/*".into()
            ))
        );
    }

    #[test]
    fn a_deleted_tag_is_ignored() {
        let hooks = [hook("web", "Codertocat/Hello-World", "*", SECRET)];
        let outcome = handle(&signed("push", PUSH_TAG_DELETED), &hooks);
        assert_eq!(
            outcome,
            Ok(WebhookOutcome::Ignore(
                "tag push (refs/tags/simple-tag)".into()
            ))
        );
    }

    #[test]
    fn a_deleted_branch_is_ignored() {
        let body = String::from_utf8(PUSH_TAG_DELETED.to_vec())
            .unwrap()
            .replace("refs/tags/simple-tag", "refs/heads/feature");
        let hooks = [hook("web", "Codertocat/Hello-World", "*", SECRET)];
        assert_eq!(
            handle(&signed("push", body.as_bytes()), &hooks),
            Ok(WebhookOutcome::Ignore("branch deleted (feature)".into()))
        );
    }

    #[test]
    fn a_signed_ping_pongs() {
        let hooks = [hook("web", "Octocoders/Hello-World", "main", SECRET)];
        assert_eq!(
            handle(&signed("ping", PING), &hooks),
            Ok(WebhookOutcome::Pong)
        );
    }

    #[test]
    fn an_unsigned_or_wrongly_signed_ping_is_refused() {
        let hooks = [hook("web", "Octocoders/Hello-World", "main", SECRET)];
        for signature in [None, Some(sign("wrong", PING)), Some(String::new())] {
            let r = handle(&delivery("ping", PING, signature.clone()), &hooks).unwrap_err();
            assert_eq!(r.status, 401, "{signature:?}: {r}");
        }
    }

    #[test]
    fn bad_signatures_are_refused_with_the_reason() {
        let hooks = [hook("web", "woodpecker-ci/woodpecker", "main", SECRET)];
        let cases: [(Option<String>, &str); 7] = [
            (None, "missing X-Hub-Signature-256 header"),
            (Some(String::new()), "empty X-Hub-Signature-256 header"),
            (Some("sha256=".into()), "empty X-Hub-Signature-256 header"),
            (Some("sha256=abc".into()), "malformed X-Hub-Signature-256 header"),
            (
                Some(sign(SECRET, PUSH_BRANCH).replace("sha256=", "sha1=")),
                "malformed X-Hub-Signature-256 header",
            ),
            (
                Some(sign(SECRET, PUSH_BRANCH).replace("sha256=", "")),
                "malformed X-Hub-Signature-256 header",
            ),
            (
                Some(sign("not the secret", PUSH_BRANCH)),
                "X-Hub-Signature-256 does not match the webhook secret for woodpecker-ci/woodpecker",
            ),
        ];
        for (signature, reason) in cases {
            let r = handle(&delivery("push", PUSH_BRANCH, signature.clone()), &hooks).unwrap_err();
            assert_eq!(r.status, 401, "{signature:?}: {r}");
            assert!(r.reason.starts_with(reason), "{signature:?}: {r}");
        }
    }

    #[test]
    fn a_tampered_body_is_refused() {
        let hooks = [hook("web", "woodpecker-ci/woodpecker", "main", SECRET)];
        let signature = sign(SECRET, PUSH_BRANCH);
        let tampered = String::from_utf8(PUSH_BRANCH.to_vec()).unwrap().replace(
            "366701fde727cb7a9e7f21eb88264f59f6f9b89c",
            "1111111111111111111111111111111111111111",
        );
        let r = handle(
            &delivery("push", tampered.as_bytes(), Some(signature.clone())),
            &hooks,
        )
        .unwrap_err();
        assert_eq!(r.status, 401);
        // Even one byte more (a trailing newline) breaks it.
        let mut longer = PUSH_BRANCH.to_vec();
        longer.push(b'\n');
        let r = handle(&delivery("push", &longer, Some(signature)), &hooks).unwrap_err();
        assert_eq!(r.status, 401);
    }

    #[test]
    fn only_hooks_whose_secret_verifies_act() {
        let hooks = [
            hook("mine", "woodpecker-ci/woodpecker", "main", SECRET),
            hook(
                "theirs",
                "woodpecker-ci/woodpecker",
                "main",
                "another secret",
            ),
            hook("open", "woodpecker-ci/woodpecker", "main", ""),
        ];
        let Ok(WebhookOutcome::Redeploy(r)) = handle(&signed("push", PUSH_BRANCH), &hooks) else {
            panic!("expected a redeploy");
        };
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].hook, "mine");
    }

    #[test]
    fn a_hook_without_secret_never_verifies() {
        let hooks = [hook("open", "woodpecker-ci/woodpecker", "main", "")];
        // Even a delivery signed with the empty key.
        let r = handle(
            &delivery("push", PUSH_BRANCH, Some(sign("", PUSH_BRANCH))),
            &hooks,
        )
        .unwrap_err();
        assert_eq!(r.status, 401);
        assert!(r.reason.contains("no secret"), "{r}");
    }

    #[test]
    fn unknown_repositories_are_404() {
        let hooks = [hook("web", "someone/else", "main", SECRET)];
        let r = handle(&signed("push", PUSH_BRANCH), &hooks).unwrap_err();
        assert_eq!(
            r,
            Rejection::new(
                404,
                "no webhook registered for repository woodpecker-ci/woodpecker"
            )
        );
        assert_eq!(
            handle(&signed("push", PUSH_BRANCH), &[])
                .unwrap_err()
                .status,
            404
        );
    }

    #[test]
    fn malformed_payloads_are_400() {
        let hooks = [hook("web", "woodpecker-ci/woodpecker", "main", SECRET)];
        for body in [
            &b"{not json"[..],
            b"",
            b"[]",
            &PUSH_BRANCH[..PUSH_BRANCH.len() / 2],
        ] {
            let r = handle(&signed("push", body), &hooks).unwrap_err();
            assert_eq!(r.status, 400, "{r}");
        }
        // Valid JSON naming no repository.
        let r = handle(&signed("push", b"{\"ref\":\"refs/heads/main\"}"), &hooks).unwrap_err();
        assert_eq!(r.status, 400);
        // A verified delivery without an event header.
        let mut req = signed("push", PUSH_BRANCH);
        req.headers.retain(|h| h.key != "X-GitHub-Event");
        assert_eq!(handle(&req, &hooks).unwrap_err().status, 400);
    }

    #[test]
    fn other_events_are_ignored_once_verified() {
        let hooks = [hook("web", "woodpecker-ci/woodpecker", "main", SECRET)];
        assert_eq!(
            handle(&signed("issues", PUSH_BRANCH), &hooks),
            Ok(WebhookOutcome::Ignore("event issues is not handled".into()))
        );
        let r = handle(&delivery("issues", PUSH_BRANCH, None), &hooks).unwrap_err();
        assert_eq!(r.status, 401);
    }

    #[test]
    fn headers_are_case_insensitive() {
        let hooks = [hook("web", "woodpecker-ci/woodpecker", "main", SECRET)];
        let mut req = signed("push", PUSH_BRANCH);
        for h in &mut req.headers {
            h.key = h.key.to_ascii_lowercase();
        }
        assert!(matches!(
            handle(&req, &hooks),
            Ok(WebhookOutcome::Redeploy(_))
        ));
    }
}
