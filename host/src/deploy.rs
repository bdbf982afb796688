//! Deploy-time preparation of a revision: the environment is resolved (secrets included)
//! once, sealed into the revision record, and fingerprinted; every instance of that revision
//! gets exactly that environment, whatever happens to the secrets later.

use std::collections::BTreeMap;

use orca_config::ServiceSpec;
use orca_store::{DeployItem, RevisionRecord, SecretBox, Store};

use crate::instance;
use crate::secrets::{resolve_env, ResolveError};

/// The secret-box key a revision's environment is sealed under (bound to project and service).
fn env_key(service: &str) -> String {
    format!("env:{service}")
}

/// Resolves, seals and fingerprints one spec for `Store::apply_deploy`. A `commit` (a push
/// or a build) is part of the version: redeploying the same image for a new commit rolls.
pub fn prepare(
    store: &Store,
    secrets: &SecretBox,
    spec: &ServiceSpec,
    commit: Option<&str>,
) -> Result<DeployItem, ResolveError> {
    let env = resolve_env(store, secrets, spec)?;
    let env_json = serde_json::to_string(&env).expect("a string map always serializes");
    let fingerprint =
        instance::fingerprint(spec, &secrets.fingerprint(env_json.as_bytes()), commit);
    let sealed_env = secrets.seal(spec.project(), &env_key(&spec.name), &env_json);
    Ok(DeployItem {
        spec: spec.clone(),
        sealed_env,
        fingerprint,
        commit: commit.map(str::to_owned),
    })
}

/// The environment a revision was deployed with.
pub fn open_env(
    secrets: &SecretBox,
    rev: &RevisionRecord,
) -> Result<BTreeMap<String, String>, String> {
    let json = secrets
        .open(&rev.project, &env_key(&rev.name), &rev.sealed_env)
        .map_err(|e| format!("opening the environment of revision {}: {e}", rev.number))?;
    serde_json::from_str(&json).map_err(|e| format!("revision {} environment: {e}", rev.number))
}
