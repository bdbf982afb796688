//! Plugin references → loaded plugins: built-ins, installed plugins and uploaded components.
//!
//! A service names a plugin as
//! - a built-in name (`rolling`, `canary`, `spread`, `http-probe`, ...), embedded in `orca`;
//! - an installed name (`orca plugin install FILE --name N` → `$ORCA_HOME/plugins/N.wasm`);
//! - `sha256:<hex>`, a component uploaded by `orca deploy` for a `./path.wasm` reference
//!   (`$ORCA_HOME/plugins/sha256/<hex>.wasm`).
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
}

impl Registry {
    /// A registry over `$ORCA_HOME/plugins`.
    pub fn new(runtime: PluginRuntime, home: &Path) -> Registry {
        Registry {
            runtime,
            dir: home.join("plugins"),
            builtins: Arc::default(),
        }
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
    pub fn upload(&self, bytes: &[u8]) -> Result<(String, Plugin), RegistryError> {
        let hex = hex::encode(Sha256::digest(bytes));
        let reference = format!("sha256:{hex}");
        let path = self.dir.join("sha256").join(format!("{hex}.wasm"));
        let plugin = self.store(bytes, &path, &reference)?;
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
        let io = |e: std::io::Error| RegistryError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let parent = path.parent().expect("plugin paths have a parent");
        fs::create_dir_all(parent).map_err(io)?;
        // Unique per upload: two concurrent uploads must not share a temp file.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = parent.join(format!(".upload-{}-{n}", std::process::id()));
        fs::write(&tmp, bytes).map_err(io)?;
        fs::rename(&tmp, path).map_err(io)?;
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
