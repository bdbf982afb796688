//! `orca update`: self-update from a signed release index, atomic replacement of the binary
//! (the previous one kept beside it for `--rollback`), then the running server's re-exec.
//!
//! The index is JSON signed with minisign (ed25519). It is trusted only if its signature
//! (`<index url>.minisig`) verifies against [`RELEASE_PUBLIC_KEY`], built into the binary;
//! each binary is then trusted by the sha256 and size the signed index gives for it. Nothing
//! is replaced before the download is complete, matches both, and runs (`--version` prints
//! the version the index claims).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The project's release index (the latest release), used without `--url` or `[update] url`.
pub const DEFAULT_INDEX_URL: &str =
    "https://github.com/orca-orchestrator/orca/releases/latest/download/orca-index.json";

/// The project's release signing key (minisign public key). Only indexes signed by its
/// secret key are trusted by a release build.
pub const RELEASE_PUBLIC_KEY: &str = "RWTyzK0ZywXkWhTChXjZ6Oyh5MIuteQwWQGFK3lQ8ioC9/rP0HQhpkps";

/// Debug builds only: a public key trusted instead of [`RELEASE_PUBLIC_KEY`] (tests sign
/// their own index). A release build refuses to run `orca update` when it is set.
pub const TEST_KEY_ENV: &str = "ORCA_UPDATE_TEST_PUBLIC_KEY";

/// The largest index accepted.
const MAX_INDEX: usize = 1 << 20;
/// The largest signature file accepted.
const MAX_SIGNATURE: usize = 4096;

/// A release index: the version it offers and one binary per target triple.
#[derive(Debug, Clone, Deserialize)]
pub struct Index {
    /// The release's version (semver), which each binary's `--version` must print.
    pub version: String,
    /// Binaries by target triple (`x86_64-unknown-linux-gnu`, ...).
    pub targets: std::collections::BTreeMap<String, Artifact>,
}

/// One binary of a release.
#[derive(Debug, Clone, Deserialize)]
pub struct Artifact {
    /// Where to download it: absolute, or relative to the index's URL.
    pub url: String,
    /// Lowercase hex sha256 of the file.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// Why an update was refused (nothing was replaced).
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// A download failed.
    #[error("downloading {url}: {reason}")]
    Download {
        /// What was downloaded.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The index signature did not verify.
    #[error("the signature of the release index {url} does not verify against the trusted key {key_id}: {reason}")]
    Signature {
        /// The index.
        url: String,
        /// The trusted key's id.
        key_id: String,
        /// The verifier's reason.
        reason: String,
    },
    /// The index is not what the format says.
    #[error("release index {url}: {reason}")]
    Index {
        /// The index.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The downloaded binary is not the one the index signed.
    #[error("{url}: {reason}")]
    Binary {
        /// The binary.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The index offers an older version.
    #[error("the release index offers {offered}, older than this binary's {current}; pass --allow-downgrade to install it anyway")]
    Downgrade {
        /// The index's version.
        offered: String,
        /// This binary's.
        current: String,
    },
    /// The trusted key is not usable.
    #[error("{0}")]
    Key(String),
    /// Replacing the file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The key `orca update` trusts: the built-in release key; in a debug build, the one named
/// by [`TEST_KEY_ENV`] if set.
pub fn trusted_key() -> Result<(minisign_verify::PublicKey, String), UpdateError> {
    let override_key = std::env::var(TEST_KEY_ENV).ok().filter(|k| !k.is_empty());
    let text = match override_key {
        Some(key) if cfg!(debug_assertions) => key,
        Some(_) => {
            return Err(UpdateError::Key(format!(
                "{TEST_KEY_ENV} is honoured by debug (test) builds only; a release build trusts \
                 only its built-in release key: unset it"
            )))
        }
        None => RELEASE_PUBLIC_KEY.to_string(),
    };
    Ok((parse_key(&text)?, key_id(&text)))
}

/// A minisign public key: the base64 line, or a whole `.pub` file.
pub fn parse_key(text: &str) -> Result<minisign_verify::PublicKey, UpdateError> {
    let line = text
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
        .unwrap_or("");
    minisign_verify::PublicKey::from_base64(line)
        .map_err(|e| UpdateError::Key(format!("the trusted public key is not a minisign key: {e}")))
}

/// How messages name a key: its base64 line.
fn key_id(text_key: &str) -> String {
    text_key
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
        .unwrap_or("?")
        .to_string()
}

/// What a checked index offers this binary.
#[derive(Debug, Clone)]
pub struct Offer {
    /// The index URL.
    pub index_url: String,
    /// The verified index.
    pub index: Index,
    /// This platform's binary, its URL resolved.
    pub artifact: Artifact,
    /// How the offered version compares with this binary's.
    pub ordering: std::cmp::Ordering,
}

/// Fetches the index and its signature, verifies it, picks this platform's binary.
pub async fn check(
    http: &reqwest::Client,
    index_url: &str,
    key: &minisign_verify::PublicKey,
    key_id: &str,
) -> Result<Offer, UpdateError> {
    let index_bytes = fetch_small(http, index_url, MAX_INDEX).await?;
    let sig_url = format!("{index_url}.minisig");
    let sig_bytes = fetch_small(http, &sig_url, MAX_SIGNATURE).await?;
    let sig_text = String::from_utf8_lossy(&sig_bytes);
    let signature =
        minisign_verify::Signature::decode(&sig_text).map_err(|e| UpdateError::Signature {
            url: index_url.to_string(),
            key_id: key_id.to_string(),
            reason: format!("{sig_url} is not a minisign signature: {e}"),
        })?;
    key.verify(&index_bytes, &signature, false)
        .map_err(|e| UpdateError::Signature {
            url: index_url.to_string(),
            key_id: key_id.to_string(),
            reason: e.to_string(),
        })?;
    let index: Index = serde_json::from_slice(&index_bytes).map_err(|e| UpdateError::Index {
        url: index_url.to_string(),
        reason: format!("not the index format (version, targets.<triple>.url/sha256/size): {e}"),
    })?;
    let offered = semver::Version::parse(&index.version).map_err(|e| UpdateError::Index {
        url: index_url.to_string(),
        reason: format!("version {:?} is not semver: {e}", index.version),
    })?;
    let current =
        semver::Version::parse(crate::version::current()).expect("the crate version is semver");
    let target = crate::version::TARGET;
    let mut artifact = index
        .targets
        .get(target)
        .cloned()
        .ok_or_else(|| UpdateError::Index {
            url: index_url.to_string(),
            reason: format!(
                "no binary for this platform ({target}); it has: {}",
                index.targets.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        })?;
    if artifact.sha256.len() != 64 || hex::decode(&artifact.sha256).is_err() {
        return Err(UpdateError::Index {
            url: index_url.to_string(),
            reason: format!("targets.{target}.sha256 is not 64 hex digits"),
        });
    }
    artifact.url = reqwest::Url::parse(index_url)
        .and_then(|base| base.join(&artifact.url))
        .map_err(|e| UpdateError::Index {
            url: index_url.to_string(),
            reason: format!("targets.{target}.url {:?}: {e}", artifact.url),
        })?
        .to_string();
    Ok(Offer {
        index_url: index_url.to_string(),
        ordering: offered.cmp(&current),
        index,
        artifact,
    })
}

async fn fetch_small(
    http: &reqwest::Client,
    url: &str,
    limit: usize,
) -> Result<Vec<u8>, UpdateError> {
    let fail = |reason: String| UpdateError::Download {
        url: url.to_string(),
        reason,
    };
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !response.status().is_success() {
        return Err(fail(format!("HTTP {}", response.status())));
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| fail(e.to_string()))?;
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            return Err(fail(format!("larger than {limit} bytes")));
        }
    }
    Ok(body)
}

/// Where the previous binary is kept.
pub fn previous_path(exe: &Path) -> PathBuf {
    let mut name = exe.file_name().unwrap_or_default().to_os_string();
    name.push(".previous");
    exe.with_file_name(name)
}

/// Downloads the offered binary beside `exe`, checks size, sha256 and version, and installs
/// it atomically (the current binary kept as [`previous_path`]). On any error the temporary
/// file is removed and `exe` is untouched.
pub async fn install(http: &reqwest::Client, offer: &Offer, exe: &Path) -> Result<(), UpdateError> {
    let staged = staged_path(exe);
    let result = download_and_install(http, offer, exe, &staged).await;
    if result.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    result
}

fn staged_path(exe: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(exe.file_name().unwrap_or_default());
    name.push(format!(".update-{}", std::process::id()));
    exe.with_file_name(name)
}

async fn download_and_install(
    http: &reqwest::Client,
    offer: &Offer,
    exe: &Path,
    staged: &Path,
) -> Result<(), UpdateError> {
    let artifact = &offer.artifact;
    let url = artifact.url.clone();
    let fail = |reason: String| UpdateError::Binary {
        url: url.clone(),
        reason,
    };
    let ioerr = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| UpdateError::Io { what, path, source }
    };
    let response = http
        .get(&artifact.url)
        .send()
        .await
        .map_err(|e| fail(format!("download failed: {e}")))?;
    if !response.status().is_success() {
        return Err(fail(format!("download failed: HTTP {}", response.status())));
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(staged)
        .map_err(ioerr("creating", staged))?;
    let mut hasher = Sha256::new();
    let mut got: u64 = 0;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            fail(format!(
                "truncated download: the connection ended after {got} of {} bytes ({e})",
                artifact.size
            ))
        })?;
        got += chunk.len() as u64;
        if got > artifact.size {
            return Err(fail(format!(
                "larger than the {} bytes the signed index gives",
                artifact.size
            )));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).map_err(ioerr("writing", staged))?;
    }
    if got != artifact.size {
        return Err(fail(format!(
            "truncated download: {got} of {} bytes",
            artifact.size
        )));
    }
    let digest = hex::encode(hasher.finalize());
    if !digest.eq_ignore_ascii_case(&artifact.sha256) {
        return Err(fail(format!(
            "checksum mismatch: sha256 {digest}, the signed index gives {}",
            artifact.sha256
        )));
    }
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o755))
            .map_err(ioerr("making executable", staged))?;
    }
    file.sync_all().map_err(ioerr("syncing", staged))?;
    drop(file);
    // The binary must be the release it claims to be: run it.
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(staged)
            .arg("--version")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| fail("the new binary did not answer --version within 20 s".into()))?
    .map_err(|e| fail(format!("the new binary does not run: {e}")))?;
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if printed != format!("orca {}", offer.index.version) {
        return Err(fail(format!(
            "the new binary prints {printed:?} for --version, not \"orca {}\" as the signed index says",
            offer.index.version
        )));
    }
    // Keep the current binary: a hard link beside it, renamed over the previous one.
    let previous = previous_path(exe);
    let link = staged.with_extension("previous");
    let _ = std::fs::remove_file(&link);
    std::fs::hard_link(exe, &link).map_err(ioerr("keeping the current binary as", &link))?;
    std::fs::rename(&link, &previous).map_err(ioerr("keeping the current binary as", &previous))?;
    std::fs::rename(staged, exe).map_err(ioerr("replacing", exe))?;
    sync_dir(exe);
    Ok(())
}

/// Swaps the binary with the one kept by the last update (so a second rollback undoes the
/// first). Returns the version now installed.
pub fn rollback(exe: &Path) -> Result<(), UpdateError> {
    let previous = previous_path(exe);
    if !previous.is_file() {
        return Err(UpdateError::Io {
            what: "no previous binary to roll back to at",
            path: previous,
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let keep = staged_path(exe).with_extension("current");
    let _ = std::fs::remove_file(&keep);
    let ioerr = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| UpdateError::Io { what, path, source }
    };
    std::fs::hard_link(exe, &keep).map_err(ioerr("keeping the current binary as", &keep))?;
    if let Err(e) = std::fs::rename(&previous, exe) {
        let _ = std::fs::remove_file(&keep);
        return Err(ioerr("restoring", exe)(e));
    }
    std::fs::rename(&keep, &previous)
        .map_err(ioerr("keeping the replaced binary as", &previous))?;
    sync_dir(exe);
    Ok(())
}

fn sync_dir(file: &Path) {
    if let Some(dir) = file.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// An HTTP client for the index and binaries (TLS with the system's roots).
pub fn client() -> Result<reqwest::Client, UpdateError> {
    crate::process::crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(30))
        .user_agent(format!("orca/{}", crate::version::current()))
        .build()
        .map_err(|e| UpdateError::Download {
            url: "(client)".into(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_release_key_parses() {
        parse_key(RELEASE_PUBLIC_KEY).unwrap();
    }

    #[test]
    fn previous_binary_sits_beside() {
        assert_eq!(
            previous_path(Path::new("/usr/local/bin/orca")),
            Path::new("/usr/local/bin/orca.previous")
        );
    }
}
