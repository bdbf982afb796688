//! What the forge webhook plugins (`github`, `gitea`, `gitlab`) share: the push payload's
//! fields, matching hooks to the payload's repository, hex decoding, and turning a verified
//! push into an outcome. Included by each of them with `#[path = "../../shared/forge.rs"]`
//! (one source, no extra crate in the workspace).
//!
//! Security rules every plugin follows: the repository named in the payload only selects which
//! hooks' secrets to try; nothing is acted on (not even a ping) until the delivery verified
//! against at least one of those secrets, and only the hooks whose secret verified act. A hook
//! with an empty secret never verifies anything.

#![allow(dead_code)]

use orca_plugin_sdk::types::{Hook, Redeploy, Rejection, WebhookOutcome, WebhookRequest};
use orca_plugin_sdk::webhook::Crypto;
use orca_plugin_sdk::{log, Level};
use serde::Deserialize;

/// The fields of a push payload the plugins read; everything else is ignored (notably Gitea's
/// legacy top-level `secret`, which is not a credential).
#[derive(Debug, Default, Deserialize)]
pub struct Payload {
    /// GitHub, Gitea.
    pub repository: Option<Repository>,
    /// GitLab.
    pub project: Option<Project>,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub after: Option<String>,
    pub deleted: Option<bool>,
    /// GitLab.
    pub checkout_sha: Option<String>,
    pub head_commit: Option<Commit>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Repository {
    pub full_name: Option<String>,
    pub default_branch: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Project {
    pub path_with_namespace: Option<String>,
    pub default_branch: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Commit {
    pub id: Option<String>,
}

/// The payload's `repository.full_name` (GitHub and Gitea shape), or 400.
pub fn full_name(payload: &Payload) -> Result<&str, Rejection> {
    payload
        .repository
        .as_ref()
        .and_then(|r| r.full_name.as_deref())
        .filter(|r| !r.is_empty())
        .ok_or_else(|| Rejection::bad_request("payload names no repository.full_name"))
}

/// A header that must be present and non-empty (the event name), or 400 naming it.
pub fn required_header<'a>(request: &'a WebhookRequest, name: &str) -> Result<&'a str, Rejection> {
    request
        .header(name)
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .ok_or_else(|| Rejection::bad_request(format!("missing {name} header")))
}

/// Parses a delivery's body; malformed JSON is a 400.
pub fn parse(body: &[u8]) -> Result<Payload, Rejection> {
    serde_json::from_slice(body)
        .map_err(|e| Rejection::bad_request(format!("malformed JSON payload: {e}")))
}

/// The comparable form of a repository: `owner/name`, lower-case, from `owner/name`,
/// `https://host/owner/name(.git)` or `git@host:owner/name(.git)`. The second value says
/// whether it came from a URL (which may carry a path prefix, e.g. a forge under `/git/`).
pub fn repo_key(repo: &str) -> (String, bool) {
    let s = repo.trim();
    let (path, url) = if let Some(i) = s.find("://") {
        let rest = &s[i + 3..];
        (rest.split_once('/').map_or("", |(_, p)| p), true)
    } else if let Some((_host, p)) = s.split_once(':').filter(|(h, _)| !h.contains('/')) {
        (p, true)
    } else {
        (s, false)
    };
    let path = path.trim_matches('/');
    let lower = path.to_ascii_lowercase();
    let key = lower
        .strip_suffix(".git")
        .unwrap_or(&lower)
        .trim_matches('/');
    (key.to_string(), url)
}

/// Whether a hook's configured `repo` names the payload's repository `full_name`
/// (case-insensitively; URL forms are reduced to their path).
pub fn repo_matches(configured: &str, full_name: &str) -> bool {
    let (want, _) = repo_key(full_name);
    if want.is_empty() {
        return false;
    }
    let (have, url) = repo_key(configured);
    have == want || (url && have.ends_with(&format!("/{want}")))
}

/// The hooks registered for `repo`; none is a 404.
pub fn hooks_for<'a>(hooks: &'a [Hook], repo: &str) -> Result<Vec<&'a Hook>, Rejection> {
    let found: Vec<&Hook> = hooks
        .iter()
        .filter(|h| repo_matches(&h.repo, repo))
        .collect();
    if found.is_empty() {
        return Err(Rejection::new(
            404,
            format!("no webhook registered for repository {repo}"),
        ));
    }
    Ok(found)
}

/// Decodes hex (either case); `None` unless it is an even number of hex digits.
pub fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    bytes
        .chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// The hooks among `candidates` whose secret verifies the delivery (`verify(secret)`); a hook
/// with an empty secret never does. None is a 401 naming what failed.
pub fn verified<'a>(
    candidates: &[&'a Hook],
    repo: &str,
    what: &str,
    mut verify: impl FnMut(&[u8]) -> bool,
) -> Result<Vec<&'a Hook>, Rejection> {
    if candidates.iter().all(|h| h.secret.is_empty()) {
        return Err(Rejection::unauthorized(format!(
            "the webhook for {repo} has no secret: unsigned deliveries are refused"
        )));
    }
    let ok: Vec<&Hook> = candidates
        .iter()
        .copied()
        .filter(|h| !h.secret.is_empty() && verify(h.secret.as_bytes()))
        .collect();
    if ok.is_empty() {
        return Err(Rejection::unauthorized(format!(
            "{what} does not match the webhook secret for {repo}"
        )));
    }
    Ok(ok)
}

/// Whether a commit id is all zeros (a deleted ref's `after`).
pub fn is_null_commit(commit: &str) -> bool {
    !commit.is_empty() && commit.bytes().all(|b| b == b'0')
}

/// A verified push: `Redeploy` for every hook whose branch pattern matches, or `Ignore` for
/// tags, deleted branches and other branches. An empty branch pattern means the repository's
/// default branch (any branch when the payload does not say which it is).
pub fn push_outcome(
    hooks: &[&Hook],
    repo: &str,
    git_ref: Option<&str>,
    commit: Option<&str>,
    deleted: bool,
    default_branch: Option<&str>,
) -> Result<WebhookOutcome, Rejection> {
    let git_ref = git_ref
        .filter(|r| !r.is_empty())
        .ok_or_else(|| Rejection::bad_request("push payload has no ref"))?;
    if git_ref.starts_with("refs/tags/") {
        return Ok(WebhookOutcome::Ignore(format!("tag push ({git_ref})")));
    }
    let Some(branch) = git_ref.strip_prefix("refs/heads/") else {
        return Ok(WebhookOutcome::Ignore(format!(
            "ref {git_ref} is not a branch"
        )));
    };
    if deleted || commit.is_some_and(is_null_commit) {
        return Ok(WebhookOutcome::Ignore(format!("branch deleted ({branch})")));
    }
    let commit = commit
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Rejection::bad_request("push payload names no commit"))?;
    let matches = |h: &Hook| match h.branch.trim() {
        "" => default_branch.is_none_or(|d| d == branch),
        _ => h.matches_branch(branch),
    };
    let redeploys: Vec<Redeploy> = hooks
        .iter()
        .filter(|h| matches(h))
        .map(|h| Redeploy {
            hook: h.id.clone(),
            repo: repo.to_string(),
            branch: branch.to_string(),
            commit: commit.to_string(),
        })
        .collect();
    if redeploys.is_empty() {
        let mut patterns: Vec<String> = hooks
            .iter()
            .map(|h| match h.branch.trim() {
                "" => default_branch.unwrap_or("*").to_string(),
                b => b.to_string(),
            })
            .collect();
        patterns.sort();
        patterns.dedup();
        return Ok(WebhookOutcome::Ignore(format!(
            "branch {branch} does not match {}",
            patterns.join(", ")
        )));
    }
    Ok(WebhookOutcome::Redeploy(redeploys))
}

/// The headers of a forge that signs the raw body with HMAC-SHA256 (GitHub, Gitea).
pub struct HmacForge {
    /// Name in log lines.
    pub name: &'static str,
    pub event_header: &'static str,
    pub signature_header: &'static str,
    pub delivery_header: &'static str,
    /// The MAC a signature header carries, or why it is unusable (401).
    pub parse_signature: fn(Option<&str>) -> Result<Vec<u8>, Rejection>,
}

/// The whole handling of a GitHub-shaped delivery signed with HMAC-SHA256 of the raw body:
/// candidates by repository, signature verified against them, then `ping` → pong, `push` →
/// redeploys of the verified hooks, any other event ignored.
pub fn handle_hmac_delivery(
    forge: &HmacForge,
    request: &WebhookRequest,
    hooks: &[Hook],
    crypto: &dyn Crypto,
) -> Result<WebhookOutcome, Rejection> {
    let payload = parse(&request.body)?;
    let repo = full_name(&payload)?;
    let candidates = hooks_for(hooks, repo)?;

    let mac = (forge.parse_signature)(request.header(forge.signature_header))?;
    let verified = verified(&candidates, repo, forge.signature_header, |secret| {
        crypto.constant_time_eq(&crypto.hmac_sha256(secret, &request.body), &mac)
    })?;

    let delivery = request.header(forge.delivery_header).unwrap_or("-");
    let event = required_header(request, forge.event_header)?;
    log(
        Level::Info,
        &format!(
            "{}: verified {event} delivery {delivery} for {repo}",
            forge.name
        ),
    );
    match event {
        "ping" => Ok(WebhookOutcome::Pong),
        "push" => push_outcome(
            &verified,
            repo,
            payload.git_ref.as_deref(),
            payload
                .after
                .as_deref()
                .or(payload.head_commit.as_ref().and_then(|c| c.id.as_deref())),
            payload.deleted.unwrap_or(false),
            payload
                .repository
                .as_ref()
                .and_then(|r| r.default_branch.as_deref()),
        ),
        other => Ok(WebhookOutcome::Ignore(format!(
            "event {other} is not handled"
        ))),
    }
}

#[cfg(test)]
mod shared_tests {
    use super::*;

    #[test]
    fn repositories_match_in_every_spelling() {
        for configured in [
            "octo/Hello-World",
            "OCTO/hello-world",
            "https://github.com/octo/Hello-World",
            "https://github.com/octo/Hello-World.git",
            "git@github.com:octo/Hello-World.git",
            "ssh://git@github.com/octo/hello-world.git/",
            "https://git.example.com/gitea/octo/Hello-World.git",
        ] {
            assert!(repo_matches(configured, "octo/Hello-World"), "{configured}");
        }
        for configured in [
            "octo/Hello",
            "other/Hello-World",
            "evil-octo/Hello-World",
            "x/octo/Hello-World",
            "https://github.com/octo/Hello-World-2",
            "",
        ] {
            assert!(
                !repo_matches(configured, "octo/Hello-World"),
                "{configured}"
            );
        }
        assert!(!repo_matches("octo/x", ""));
    }

    #[test]
    fn hex() {
        assert_eq!(decode_hex("00ffA0"), Some(vec![0, 255, 160]));
        assert_eq!(decode_hex(""), Some(vec![]));
        assert_eq!(decode_hex("abc"), None);
        assert_eq!(decode_hex("zz"), None);
        assert!(is_null_commit("0000000000000000000000000000000000000000"));
        assert!(!is_null_commit("0000000000000000000000000000000000000001"));
        assert!(!is_null_commit(""));
    }

    #[test]
    fn empty_branch_pattern_means_the_default_branch() {
        let hook = Hook {
            id: "h".into(),
            repo: "o/r".into(),
            branch: String::new(),
            secret: "s".into(),
        };
        let hooks = [&hook];
        let c = Some("abc");
        assert!(matches!(
            push_outcome(
                &hooks,
                "o/r",
                Some("refs/heads/main"),
                c,
                false,
                Some("main")
            ),
            Ok(WebhookOutcome::Redeploy(_))
        ));
        assert_eq!(
            push_outcome(
                &hooks,
                "o/r",
                Some("refs/heads/dev"),
                c,
                false,
                Some("main")
            ),
            Ok(WebhookOutcome::Ignore(
                "branch dev does not match main".into()
            ))
        );
        assert!(matches!(
            push_outcome(&hooks, "o/r", Some("refs/heads/dev"), c, false, None),
            Ok(WebhookOutcome::Redeploy(_))
        ));
        assert_eq!(
            push_outcome(&hooks, "o/r", Some("refs/pull/1/head"), c, false, None),
            Ok(WebhookOutcome::Ignore(
                "ref refs/pull/1/head is not a branch".into()
            ))
        );
        assert_eq!(
            push_outcome(&hooks, "o/r", None, c, false, None)
                .unwrap_err()
                .status,
            400
        );
    }
}
