//! The precompiled-component cache: `<dir>/<key>.cwasm`, where the key is the SHA-256 of the
//! component's bytes and of the engine's precompile-compatibility hash, so a new wasmtime or
//! a changed engine configuration never reads an old artifact. Written atomically (temp file
//! + rename) into a directory of mode 0700.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Precompiled};

use super::error::PluginError;

/// Feeds a `Hash` value into SHA-256 (the compatibility hash is only exposed as `impl Hash`).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The cache key of `bytes` (whose SHA-256 is `sha256`) compiled by `engine`.
pub(crate) fn key(engine: &Engine, sha256: &[u8; 32]) -> String {
    let mut h = ShaHasher(Sha256::new());
    h.write(sha256);
    engine.precompile_compatibility_hash().hash(&mut h);
    hex::encode(h.0.finalize())
}

/// Creates the cache directory (mode 0700) if needed.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), PluginError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| PluginError::Cache {
            reason: format!("creating {}: {e}", dir.display()),
        })?;
    // An existing directory keeps its mode with `create`; tighten it.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
        PluginError::Cache {
            reason: format!("chmod 0700 {}: {e}", dir.display()),
        }
    })
}

pub(crate) fn path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.cwasm"))
}

/// The cached component at `path`, if there is a usable one.
///
/// The file is read into memory rather than mapped (`deserialize_file`): a mapped file that
/// someone truncates in place while it is in use kills the process with SIGBUS, and reading
/// ~100 KB costs a few microseconds.
pub(crate) fn read(engine: &Engine, path: &Path) -> Option<Component> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), "unreadable plugin cache entry: {e}");
            return None;
        }
    };
    if Engine::detect_precompiled(&bytes) != Some(Precompiled::Component) {
        tracing::warn!(path = %path.display(), "ignoring plugin cache entry: not a precompiled component");
        return None;
    }
    // SAFETY: `deserialize` trusts its bytes to be an artifact produced by
    // `Component::serialize` of a compatible engine, since it maps them as executable code.
    // These are: the cache directory is created by orca with mode 0700 (only orca's user can
    // write into it), its entries are written only by `write` below from
    // `Component::serialize`, atomically (temp file + rename: a reader never sees a partial
    // file), and the key includes the engine's precompile-compatibility hash; wasmtime itself
    // checks the header, the wasmtime version and the engine configuration again.
    #[allow(unsafe_code)]
    let loaded = unsafe { Component::deserialize(engine, &bytes) };
    match loaded {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(path = %path.display(), "ignoring plugin cache entry: {e}");
            None
        }
    }
}

/// Makes temporary file names unique within the process (the pid makes them unique across).
static TMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Stores `component` at `path` through a temporary file in the same directory.
pub(crate) fn write(component: &Component, path: &Path) -> Result<(), PluginError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| PluginError::Cache {
        reason: format!("{what} {}: {e}", path.display()),
    };
    let bytes = component.serialize().map_err(|e| fail("serializing", &e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.{:x}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("plugin"),
        std::process::id(),
        TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let result = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail("writing", &e)
    })
}
