//! Plugin references → loaded plugins: built-ins, installed plugins and uploaded components.
//!
//! A service names a plugin as
//! - a built-in name (`rolling`, `canary`, `spread`, `http-probe`, ...), embedded in `orca`;
//! - an installed name (`orca plugin install FILE --name N` → `$ORCA_HOME/plugins/N.wasm`);
//! - `sha256:<hex>`, a component uploaded by `orca deploy` for a `./path.wasm` reference
//!   (`$ORCA_HOME/plugins/sha256/<hex>.wasm`; the path as the service file wrote it, sent
//!   with the upload, is kept beside it in `<hex>.name`).
//!
//! [`Registry::describe`] names a plugin as the user wrote it (`./ramp.wasm`, `canary`, an
//! installed name) with the digest as detail: errors, status and logs use it.
//!
//! A path is resolved by the CLI on the operator's machine, never by the server: the server
//! reads no file a request names.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::plugins::{builtin, builtin_names, Plugin, PluginOrigin, PluginRuntime, World};

/// Largest component accepted for upload or install.
pub const MAX_PLUGIN_BYTES: usize = 16 << 20;

/// Longest name an upload may carry as written (a path in a service file).
pub const MAX_WRITTEN_NAME: usize = 512;

/// How many hex digits of a digest [`Registry::describe`] shows.
const SHORT_DIGEST: usize = 12;

/// Why a reference does not resolve.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Nothing by that name.
    #[error("unknown plugin {reference:?}: built-in plugins are {builtins}; others must be installed (orca plugin install) or referenced by a ./path.wasm in service.toml")]
    Unknown {
        /// The reference.
        reference: String,
        /// Comma-separated built-in names.
        builtins: String,
    },
    /// A path reached the server.
    #[error("plugin path {0:?} must be uploaded: `orca deploy` uploads ./path.wasm references; the API takes names or sha256:<hex>")]
    Path(String),
    /// The component does not load.
    #[error("plugin {reference:?}: {reason}")]
    Load {
        /// The reference.
        reference: String,
        /// Why.
        reason: String,
    },
    /// It loads, but implements another world.
    #[error("plugin {reference:?} is a {found} plugin, but a {expected} plugin is needed here")]
    WrongWorld {
        /// The reference.
        reference: String,
        /// Needed world.
        expected: &'static str,
        /// Its world.
        found: &'static str,
    },
    /// Reading or writing the plugin directory failed.
    #[error("plugin store {path}: {reason}")]
    Io {
        /// Path.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Resolves references with one runtime (whose caches make repeated resolution cheap).
#[derive(Clone)]
pub struct Registry {
    runtime: PluginRuntime,
    dir: PathBuf,
    /// Built-ins once loaded: their bytes never change, so they are not copied and hashed
    /// again on every call (a probe or placement resolves its plugin each time; 10,000
    /// instances are 1,000 probes a second).
    builtins: Arc<Mutex<HashMap<String, Plugin>>>,
    /// Uploaded digests (`sha256:<hex>`) → the name they were written as, once read.
    written: Arc<Mutex<HashMap<String, Option<String>>>>,
}

impl Registry {
    /// A registry over `$ORCA_HOME/plugins`.
    pub fn new(runtime: PluginRuntime, home: &Path) -> Registry {
        Registry {
            runtime,
            dir: home.join("plugins"),
            builtins: Arc::default(),
            written: Arc::default(),
        }
    }

    /// The plugin `reference` names, as the user wrote it: an uploaded component as the path
    /// its service file wrote (`./ramp.wasm (sha256:0123456789ab)`), a built-in or installed
    /// name as it is. A digest uploaded without a name is shown as the digest.
    pub fn describe(&self, reference: &str) -> String {
        let Some(hex) = reference.strip_prefix("sha256:") else {
            return reference.to_string();
        };
        let short = &hex[..hex.len().min(SHORT_DIGEST)];
        match self.written_name(reference, hex) {
            Some(name) => format!("{name} (sha256:{short})"),
            None => reference.to_string(),
        }
    }

    /// Every reference in `text` replaced by [`Registry::describe`] of it (for messages made
    /// where only the reference was known).
    pub fn describe_in(&self, text: &str, reference: &str) -> String {
        if reference.starts_with("sha256:") && text.contains(reference) {
            text.replace(reference, &self.describe(reference))
        } else {
            text.to_string()
        }
    }

    fn written_name(&self, reference: &str, hex: &str) -> Option<String> {
        let mut cache = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = cache.get(reference) {
            return known.clone();
        }
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let name = fs::read_to_string(self.dir.join("sha256").join(format!("{hex}.name")))
            .ok()
            .map(|n| n.trim().to_string())
            .filter(|n| valid_written_name(n).is_ok());
        cache.insert(reference.to_string(), name.clone());
        name
    }

    /// The runtime.
    pub fn runtime(&self) -> &PluginRuntime {
        &self.runtime
    }

    /// Loads the plugin `reference` names and checks it implements `world`.
    pub fn resolve(&self, reference: &str, world: World) -> Result<Plugin, RegistryError> {
        let cached = self
            .builtins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(reference)
            .cloned();
        let plugin = match cached {
            Some(plugin) => plugin,
            None => {
                let plugin = self.load(reference)?;
                if matches!(plugin.origin(), PluginOrigin::Builtin(_)) {
                    self.builtins
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(reference.to_string(), plugin.clone());
                }
                plugin
            }
        };
        if plugin.world() != world {
            return Err(RegistryError::WrongWorld {
                reference: reference.to_string(),
                expected: world.name(),
                found: plugin.world().name(),
            });
        }
        Ok(plugin)
    }

    /// Reads and loads the plugin `reference` names (through the runtime's caches).
    fn load(&self, reference: &str) -> Result<Plugin, RegistryError> {
        let (bytes, origin): (Vec<u8>, PluginOrigin) = if let Some(b) = builtin(reference) {
            (b.to_vec(), PluginOrigin::Builtin(reference.to_string()))
        } else if reference.ends_with(".wasm") {
            return Err(RegistryError::Path(reference.to_string()));
        } else {
            let path = self.path_of(reference)?;
            match fs::read(&path) {
                Ok(b) => (b, PluginOrigin::Path(path)),
                Err(_) => {
                    return Err(RegistryError::Unknown {
                        reference: reference.to_string(),
                        builtins: builtin_names().join(", "),
                    })
                }
            }
        };
        self.runtime
            .load(&bytes, origin)
            .map_err(|e| RegistryError::Load {
                reference: reference.to_string(),
                reason: e.to_string(),
            })
    }

    fn path_of(&self, reference: &str) -> Result<PathBuf, RegistryError> {
        if let Some(hex) = reference.strip_prefix("sha256:") {
            if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(self.dir.join("sha256").join(format!("{hex}.wasm")));
            }
        } else if orca_config::validate_name("plugin", reference).is_ok() {
            return Ok(self.dir.join(format!("{reference}.wasm")));
        }
        Err(RegistryError::Unknown {
            reference: reference.to_string(),
            builtins: builtin_names().join(", "),
        })
    }

    /// Validates and stores an uploaded component by content; returns `sha256:<hex>`.
    /// `written`: the name its service file wrote (`./ramp.wasm`), kept for
    /// [`Registry::describe`] (the latest upload's name wins).
    pub fn upload(
        &self,
        bytes: &[u8],
        written: Option<&str>,
    ) -> Result<(String, Plugin), RegistryError> {
        let hex = hex::encode(Sha256::digest(bytes));
        let reference = format!("sha256:{hex}");
        if let Some(name) = written {
            valid_written_name(name).map_err(|reason| RegistryError::Load {
                reference: reference.clone(),
                reason,
            })?;
        }
        let path = self.dir.join("sha256").join(format!("{hex}.wasm"));
        let plugin = self.store(bytes, &path, &reference)?;
        if let Some(name) = written {
            let sidecar = self.dir.join("sha256").join(format!("{hex}.name"));
            write_atomically(&sidecar, name.as_bytes())?;
            self.written
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(reference.clone(), Some(name.to_string()));
        }
        Ok((reference, plugin))
    }

    /// Validates and stores a component under an installed name.
    pub fn install(&self, name: &str, bytes: &[u8]) -> Result<Plugin, RegistryError> {
        if builtin(name).is_some() {
            return Err(RegistryError::Load {
                reference: name.to_string(),
                reason: "that name belongs to a built-in plugin".into(),
            });
        }
        orca_config::validate_name("plugin", name).map_err(|e| RegistryError::Load {
            reference: name.to_string(),
            reason: e.to_string(),
        })?;
        let path = self.dir.join(format!("{name}.wasm"));
        self.store(bytes, &path, name)
    }

    fn store(&self, bytes: &[u8], path: &Path, reference: &str) -> Result<Plugin, RegistryError> {
        // Validate by loading before anything is written.
        let plugin = self
            .runtime
            .load(bytes, PluginOrigin::Path(path.to_path_buf()))
            .map_err(|e| RegistryError::Load {
                reference: reference.to_string(),
                reason: e.to_string(),
            })?;
        write_atomically(path, bytes)?;
        Ok(plugin)
    }

    /// Installed plugins: (name, path), sorted.
    pub fn installed(&self) -> Vec<(String, PathBuf)> {
        let mut out: Vec<(String, PathBuf)> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let p = e.path();
                let name = p.file_name()?.to_str()?.strip_suffix(".wasm")?.to_string();
                p.is_file().then_some((name, p))
            })
            .collect();
        out.sort();
        out
    }
}

/// Writes `bytes` to `path` through a temporary file renamed over it.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    let io = |e: std::io::Error| RegistryError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let parent = path.parent().expect("plugin paths have a parent");
    fs::create_dir_all(parent).map_err(io)?;
    // Unique per write: two concurrent uploads must not share a temp file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = parent.join(format!(".upload-{}-{n}", std::process::id()));
    fs::write(&tmp, bytes).map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

/// A name an upload may carry: what a service file wrote, printable, at most
/// [`MAX_WRITTEN_NAME`] bytes.
pub fn valid_written_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_WRITTEN_NAME {
        return Err(format!(
            "the name an upload is written as must be 1 to {MAX_WRITTEN_NAME} bytes, not {}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("the name an upload is written as must not contain control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::RuntimeLimits;

    fn registry(home: &Path) -> Registry {
        Registry::new(
            PluginRuntime::new(RuntimeLimits::default(), None).unwrap(),
            home,
        )
    }

    #[test]
    fn an_upload_is_described_as_written_also_after_a_restart() {
        let home = tempfile::tempdir().unwrap();
        let bytes = builtin("rolling").unwrap();
        let r = registry(home.path());
        let (reference, _) = r.upload(bytes, Some("./ramp.wasm")).unwrap();
        let hex = reference.strip_prefix("sha256:").unwrap();
        let want = format!("./ramp.wasm (sha256:{})", &hex[..12]);
        assert_eq!(r.describe(&reference), want);
        assert_eq!(
            r.describe_in(&format!("strategy {reference} failed: trap"), &reference),
            format!("strategy {want} failed: trap")
        );
        // A new server over the same state dir reads the name back.
        assert_eq!(registry(home.path()).describe(&reference), want);
        // Built-in and installed names are shown as they are.
        assert_eq!(r.describe("canary"), "canary");
    }

    #[test]
    fn an_upload_without_a_name_is_its_digest_and_a_bad_name_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let bytes = builtin("rolling").unwrap();
        let r = registry(home.path());
        let (reference, _) = r.upload(bytes, None).unwrap();
        assert_eq!(r.describe(&reference), reference);
        let err = r
            .upload(bytes, Some("./a\nb.wasm"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("control characters"), "{err}");
        let long = "x".repeat(MAX_WRITTEN_NAME + 1);
        let err = r.upload(bytes, Some(&long)).unwrap_err().to_string();
        assert!(err.contains("1 to 512 bytes"), "{err}");
        assert_eq!(r.describe(&reference), reference, "nothing written");
    }
}
