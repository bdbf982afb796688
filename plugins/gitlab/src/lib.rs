//! `gitlab`: GitLab's webhook deliveries.
//!
//! 1. The JSON body names the project (`project.path_with_namespace`); the hooks registered
//!    for it (case-insensitive; a hook's `repo` may also be a clone URL) are the candidates.
//!    None: 404. Malformed JSON: 400.
//! 2. `X-Gitlab-Token` is not a signature: GitLab sends the hook's secret token back as is. It
//!    must equal a candidate's secret, compared in constant time by the host (both sides are
//!    hashed to 32 bytes first, so not even the length leaks). Missing, empty or wrong: 401,
//!    nothing happens.
//! 3. `X-Gitlab-Event`: `Push Hook` → a redeploy per verified hook whose branch pattern
//!    matches, with the commit `checkout_sha` (or `after`); a deleted branch (`after` all
//!    zeros) and other branches are ignored with the reason; `Tag Push Hook` and other events
//!    are ignored.

#![deny(unsafe_code)]

use orca_plugin_sdk::types::{Hook, Rejection, WebhookOutcome, WebhookRequest};
use orca_plugin_sdk::webhook::{Crypto, Webhook};
use orca_plugin_sdk::{log, Level};

#[path = "../../shared/forge.rs"]
mod forge;

/// The event header.
pub const EVENT_HEADER: &str = "X-Gitlab-Event";
/// The secret token header.
pub const TOKEN_HEADER: &str = "X-Gitlab-Token";
/// The delivery id header (logged).
pub const DELIVERY_HEADER: &str = "X-Gitlab-Event-UUID";

/// Key under which tokens are hashed to a fixed length before the constant-time comparison.
const COMPARE_KEY: &[u8] = b"orca gitlab token comparison";

/// The GitLab webhook handler.
#[derive(Default)]
pub struct GitLab;

impl Webhook for GitLab {
    fn handle(
        &self,
        request: &WebhookRequest,
        hooks: &[Hook],
        crypto: &dyn Crypto,
    ) -> Result<WebhookOutcome, Rejection> {
        let payload = forge::parse(&request.body)?;
        let repo = payload
            .project
            .as_ref()
            .and_then(|p| p.path_with_namespace.as_deref())
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                Rejection::bad_request("payload names no project.path_with_namespace")
            })?;
        let candidates = forge::hooks_for(hooks, repo)?;

        let token = request
            .header(TOKEN_HEADER)
            .ok_or_else(|| Rejection::unauthorized(format!("missing {TOKEN_HEADER} header")))?;
        if token.is_empty() {
            return Err(Rejection::unauthorized(format!(
                "empty {TOKEN_HEADER} header (set a secret token on the webhook)"
            )));
        }
        let presented = crypto.hmac_sha256(COMPARE_KEY, token.as_bytes());
        let verified = forge::verified(&candidates, repo, TOKEN_HEADER, |secret| {
            crypto.constant_time_eq(&crypto.hmac_sha256(COMPARE_KEY, secret), &presented)
        })?;

        let delivery = request.header(DELIVERY_HEADER).unwrap_or("-");
        let event = forge::required_header(request, EVENT_HEADER)?;
        log(
            Level::Info,
            &format!("gitlab: verified {event} delivery {delivery} for {repo}"),
        );
        match event {
            "Push Hook" => {
                let after = payload.after.as_deref();
                forge::push_outcome(
                    &verified,
                    repo,
                    payload.git_ref.as_deref(),
                    payload
                        .checkout_sha
                        .as_deref()
                        .filter(|c| !c.is_empty())
                        .or(after),
                    after.is_some_and(forge::is_null_commit),
                    payload
                        .project
                        .as_ref()
                        .and_then(|p| p.default_branch.as_deref()),
                )
            }
            "Tag Push Hook" => Ok(WebhookOutcome::Ignore(format!(
                "tag push ({})",
                payload.git_ref.as_deref().unwrap_or("?")
            ))),
            other => Ok(WebhookOutcome::Ignore(format!(
                "event {other} is not handled"
            ))),
        }
    }
}

orca_plugin_sdk::export_webhook!(GitLab);

#[cfg(test)]
mod tests {
    use super::*;
    use orca_plugin_sdk::testing::SoftCrypto;
    use orca_plugin_sdk::types::{Pair, Redeploy};

    const PUSH: &[u8] = include_bytes!("../../../tests/fixtures/webhooks/gitlab/push.json");
    const TOKEN: &str = "glpat-not-really-but-a-token";

    fn hook(id: &str, repo: &str, branch: &str, secret: &str) -> Hook {
        Hook {
            id: id.into(),
            repo: repo.into(),
            branch: branch.into(),
            secret: secret.into(),
        }
    }

    fn delivery(event: &str, body: &[u8], token: Option<&str>) -> WebhookRequest {
        let mut headers = vec![
            Pair::new("Content-Type", "application/json"),
            Pair::new("User-Agent", "GitLab/17.4.0"),
            Pair::new("X-Gitlab-Event", event),
            Pair::new("X-Gitlab-Instance", "https://gitlab.example.com"),
            Pair::new(
                "X-Gitlab-Event-UUID",
                "13792a34-cac6-4fda-95a8-c58e00a3954e",
            ),
        ];
        if let Some(t) = token {
            headers.push(Pair::new("X-Gitlab-Token", t));
        }
        WebhookRequest {
            method: "POST".into(),
            path: "/webhooks/gitlab".into(),
            headers,
            body: body.to_vec(),
        }
    }

    fn handle(request: &WebhookRequest, hooks: &[Hook]) -> Result<WebhookOutcome, Rejection> {
        GitLab.handle(request, hooks, &SoftCrypto)
    }

    #[test]
    fn a_push_with_the_token_redeploys() {
        let hooks = [
            hook("app", "mike/diaspora", "master", TOKEN),
            hook(
                "url",
                "git@gitlab.example.com:Mike/Diaspora.git",
                "*",
                TOKEN,
            ),
            hook("other", "mike/other", "master", TOKEN),
        ];
        let Ok(WebhookOutcome::Redeploy(r)) =
            handle(&delivery("Push Hook", PUSH, Some(TOKEN)), &hooks)
        else {
            panic!("expected a redeploy");
        };
        assert_eq!(
            r,
            ["app", "url"]
                .iter()
                .map(|id| Redeploy {
                    hook: (*id).into(),
                    repo: "mike/diaspora".into(),
                    branch: "master".into(),
                    commit: "da1560886d4f094c3e6c9ef40349f7d38b5d27d7".into(),
                })
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn missing_empty_or_wrong_tokens_are_refused() {
        let hooks = [hook("app", "mike/diaspora", "master", TOKEN)];
        let longer = format!("{TOKEN}x");
        let cases: [(Option<&str>, &str); 5] = [
            (None, "missing X-Gitlab-Token header"),
            (Some(""), "empty X-Gitlab-Token header"),
            (Some("wrong"), "X-Gitlab-Token does not match"),
            (
                Some(&TOKEN[..TOKEN.len() - 1]),
                "X-Gitlab-Token does not match",
            ),
            (Some(&longer), "X-Gitlab-Token does not match"),
        ];
        for (token, reason) in cases {
            let r = handle(&delivery("Push Hook", PUSH, token), &hooks).unwrap_err();
            assert_eq!(r.status, 401, "{token:?}: {r}");
            assert!(r.reason.starts_with(reason), "{token:?}: {r}");
        }
        // A hook without a secret never matches, not even an empty-looking token.
        let open = [hook("app", "mike/diaspora", "master", "")];
        assert_eq!(
            handle(&delivery("Push Hook", PUSH, Some("x")), &open)
                .unwrap_err()
                .status,
            401
        );
    }

    #[test]
    fn tag_pushes_and_deleted_branches_are_ignored() {
        let hooks = [hook("app", "mike/diaspora", "*", TOKEN)];
        let text = String::from_utf8(PUSH.to_vec()).unwrap();
        let tag = text
            .replace("\"object_kind\": \"push\"", "\"object_kind\": \"tag_push\"")
            .replace("refs/heads/master", "refs/tags/v1.0.0");
        assert_eq!(
            handle(
                &delivery("Tag Push Hook", tag.as_bytes(), Some(TOKEN)),
                &hooks
            ),
            Ok(WebhookOutcome::Ignore("tag push (refs/tags/v1.0.0)".into()))
        );
        let deleted = text
            .replace(
                "\"after\": \"da1560886d4f094c3e6c9ef40349f7d38b5d27d7\"",
                "\"after\": \"0000000000000000000000000000000000000000\"",
            )
            .replace(
                "\"checkout_sha\": \"da1560886d4f094c3e6c9ef40349f7d38b5d27d7\"",
                "\"checkout_sha\": null",
            );
        assert_ne!(deleted, text);
        assert_eq!(
            handle(
                &delivery("Push Hook", deleted.as_bytes(), Some(TOKEN)),
                &hooks
            ),
            Ok(WebhookOutcome::Ignore("branch deleted (master)".into()))
        );
        // A tag event still needs the token.
        assert_eq!(
            handle(&delivery("Tag Push Hook", tag.as_bytes(), None), &hooks)
                .unwrap_err()
                .status,
            401
        );
    }

    #[test]
    fn other_branches_and_events_are_ignored() {
        let hooks = [hook("app", "mike/diaspora", "main", TOKEN)];
        assert_eq!(
            handle(&delivery("Push Hook", PUSH, Some(TOKEN)), &hooks),
            Ok(WebhookOutcome::Ignore(
                "branch master does not match main".into()
            ))
        );
        assert_eq!(
            handle(&delivery("Issue Hook", PUSH, Some(TOKEN)), &hooks),
            Ok(WebhookOutcome::Ignore(
                "event Issue Hook is not handled".into()
            ))
        );
    }

    #[test]
    fn unknown_projects_and_malformed_bodies() {
        let hooks = [hook("app", "someone/else", "*", TOKEN)];
        assert_eq!(
            handle(&delivery("Push Hook", PUSH, Some(TOKEN)), &hooks).unwrap_err(),
            Rejection::new(404, "no webhook registered for repository mike/diaspora")
        );
        assert_eq!(
            handle(&delivery("Push Hook", b"not json", Some(TOKEN)), &hooks)
                .unwrap_err()
                .status,
            400
        );
        // A GitHub-shaped body names no project.
        assert_eq!(
            handle(
                &delivery(
                    "Push Hook",
                    br#"{"repository":{"full_name":"mike/diaspora"}}"#,
                    Some(TOKEN)
                ),
                &hooks
            )
            .unwrap_err()
            .status,
            400
        );
    }
}
