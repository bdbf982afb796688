//! A webhook handler: verifies `X-Hub-Signature-256` (`sha256=<hex>`) over the raw body with
//! `hooks[0].secret` through the host's crypto import. A valid `ping` event answers pong,
//! any other valid delivery redeploys `hooks[0]` at the commit in the `X-Commit` header (or
//! is ignored without one); a bad signature is a 401.

wit_bindgen::generate!({ world: "webhook", path: "../../../wit" });

use orca::plugin::crypto;
use orca::plugin::types::{Pair, Redeploy};

struct Echo;

fn header<'a>(headers: &'a [Pair], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|p| p.key.eq_ignore_ascii_case(name))
        .map(|p| p.value.as_str())
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn reject(status: u16, reason: &str) -> Rejection {
    Rejection {
        status,
        reason: reason.into(),
    }
}

impl Guest for Echo {
    fn handle(request: WebhookRequest, hooks: Vec<Hook>) -> Result<WebhookOutcome, Rejection> {
        let hook = hooks
            .first()
            .ok_or_else(|| reject(404, "no hook registered"))?;
        let signature = header(&request.headers, "x-hub-signature-256")
            .and_then(|v| v.strip_prefix("sha256="))
            .and_then(unhex)
            .ok_or_else(|| reject(401, "missing or malformed X-Hub-Signature-256"))?;
        let expected = crypto::hmac_sha256(hook.secret.as_bytes(), &request.body);
        if !crypto::constant_time_eq(&expected, &signature) {
            return Err(reject(401, "signature mismatch"));
        }
        if header(&request.headers, "x-github-event") == Some("ping") {
            return Ok(WebhookOutcome::Pong);
        }
        match header(&request.headers, "x-commit") {
            Some(commit) => Ok(WebhookOutcome::Redeploy(vec![Redeploy {
                hook: hook.id.clone(),
                repo: hook.repo.clone(),
                branch: hook.branch.clone(),
                commit: commit.into(),
            }])),
            None => Ok(WebhookOutcome::Ignore("no commit".into())),
        }
    }
}

export!(Echo);
