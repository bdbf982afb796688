//! What a component is, from its own type: its world (by its exports), its WIT package
//! version (by the versioned interface names it imports or exports), and its digest.

use sha2::{Digest, Sha256};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::Component;
use wasmtime::Engine;

use super::error::PluginError;
use super::types::World;

/// The WIT package the host serves.
pub const PACKAGE: &str = "orca:plugin";

/// The live version of [`PACKAGE`] (`wit/types.wit`): what the SDK and the default plugins
/// are built against.
pub const CURRENT_VERSION: &str = "0.3.0";

/// The versions of [`PACKAGE`] the host loads, as semver-compatible families (`0.1` is any
/// `0.1.x`): the released, frozen ones (`wit/released/`) and the live one.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.1", "0.2", "0.3"];

/// `0.1.x, 0.2.x and 0.3.x`: [`SUPPORTED_VERSIONS`] for messages.
fn supported_list() -> String {
    let all: Vec<String> = SUPPORTED_VERSIONS
        .iter()
        .map(|v| format!("{v}.x"))
        .collect();
    match all.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// A version of the contract the host serves (one per [`SUPPORTED_VERSIONS`] entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Contract {
    /// `orca:plugin@0.1.x`, released and frozen in `wit/released/0.1.0/`.
    V0_1,
    /// `orca:plugin@0.2.x`, released and frozen in `wit/released/0.2.0/`.
    V0_2,
    /// `orca:plugin@0.3.x`, the live `wit/types.wit`.
    V0_3,
}

impl Contract {
    /// The contract of `version` (`0.1.0` → `V0_1`), if the host serves it.
    fn of(version: &str) -> Option<Contract> {
        let mut parts = version.split(['.', '-', '+']);
        match (parts.next(), parts.next()) {
            (Some("0"), Some("1")) => Some(Contract::V0_1),
            (Some("0"), Some("2")) => Some(Contract::V0_2),
            (Some("0"), Some("3")) => Some(Contract::V0_3),
            _ => None,
        }
    }

    /// `orca:plugin@0.1.0`: the release whose bindings serve this contract.
    pub(crate) fn package(self) -> &'static str {
        match self {
            Contract::V0_1 => "orca:plugin@0.1.0",
            Contract::V0_2 => "orca:plugin@0.2.0",
            Contract::V0_3 => "orca:plugin@0.3.0",
        }
    }
}

/// The contract a component was built against, from the versions of the `orca:plugin/...`
/// interfaces it imports or exports: `None` if it names none (then its exports' types
/// decide, see `PluginRuntime::load`), an error if it names an unsupported version or two
/// contracts.
pub(crate) fn contract_of(
    engine: &Engine,
    component: &Component,
) -> Result<Option<Contract>, String> {
    let ty = component.component_type();
    let names = ty
        .imports(engine)
        .map(|(n, _)| n)
        .chain(ty.exports(engine).map(|(n, _)| n));
    let mut found: Option<(Contract, String)> = None;
    for name in names {
        let Some(version) = version_of(name) else {
            continue;
        };
        let Some(contract) = Contract::of(version) else {
            return Err(format!(
                "built against {PACKAGE}@{version} (imports {name}); this host loads {PACKAGE} {}",
                supported_list()
            ));
        };
        match &found {
            Some((c, first)) if *c != contract => {
                return Err(format!(
                    "mixes two versions of {PACKAGE}: {first} and {name}"
                ));
            }
            Some(_) => {}
            None => found = Some((contract, name.to_string())),
        }
    }
    Ok(found.map(|(c, _)| c))
}

/// A component described for `orca plugin inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// The world it implements, `None` if its exports match none.
    pub world: Option<World>,
    /// `orca:plugin@X.Y.Z`, read from the versioned `orca:plugin/...` interface names it
    /// imports or exports; `None` if it names none (a world's top-level function exports
    /// carry no version, but a component built with wit-bindgen imports at least
    /// `orca:plugin/types@X.Y.Z`, which its exports' record types come from).
    pub package: Option<String>,
    /// Names of its exports (functions and interfaces).
    pub exports: Vec<String>,
    /// Names of its imports.
    pub imports: Vec<String>,
    /// Size in bytes.
    pub size: usize,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
}

/// Describes `bytes` with a throwaway engine (no pooling, no cache, no ticker): for the CLI.
/// A running host uses [`PluginRuntime::inspect`](super::PluginRuntime::inspect).
pub fn inspect(bytes: &[u8]) -> Result<PluginInfo, PluginError> {
    let origin = "<inspected>".to_string();
    check_header(bytes).map_err(|reason| PluginError::Invalid {
        origin: origin.clone(),
        reason,
    })?;
    let config = super::runtime::engine_config(&Default::default(), false);
    let engine = Engine::new(&config).map_err(|e| PluginError::Engine {
        reason: format!("{e:#}"),
    })?;
    let component = Component::new(&engine, bytes).map_err(|e| PluginError::Invalid {
        origin,
        reason: format!("compiling: {e:#}"),
    })?;
    let sha256: [u8; 32] = Sha256::digest(bytes).into();
    Ok(describe(&engine, &component, bytes, &sha256))
}

/// A WebAssembly binary whose header says "component" (not a core module, not text).
pub(crate) fn check_header(bytes: &[u8]) -> Result<(), String> {
    const MAGIC: &[u8] = b"\0asm";
    match bytes.get(..8) {
        Some(h) if &h[..4] == MAGIC && h[4..] == [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        Some(h) if &h[..4] == MAGIC && h[4..] == [0x01, 0x00, 0x00, 0x00] => {
            Err("a core WebAssembly module, not a component (build it with wasm-component-ld or `wasm-tools component new`)".into())
        }
        Some(h) if &h[..4] == MAGIC => Err("a WebAssembly binary of an unsupported version or layer".into()),
        _ => Err("not a WebAssembly binary".into()),
    }
}

/// The world whose export the component has; exactly one must match.
pub(crate) fn world_of(engine: &Engine, component: &Component) -> Result<World, String> {
    let ty = component.component_type();
    let exports: Vec<(&str, ComponentItem)> = ty.exports(engine).map(|(n, e)| (n, e.ty)).collect();
    let found: Vec<World> = World::ALL
        .into_iter()
        .filter(|w| {
            exports.iter().any(|(n, item)| {
                *n == w.export() && matches!(item, ComponentItem::ComponentFunc(_))
            })
        })
        .collect();
    match found.as_slice() {
        [world] => Ok(*world),
        [] => Err(format!(
            "exports no function of a known world (plan, place, check, handle, build); it exports: {}",
            exports.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        )),
        many => Err(format!(
            "exports the functions of several worlds ({}); a plugin implements one",
            many.iter().map(|w| w.name()).collect::<Vec<_>>().join(", ")
        )),
    }
}

pub(crate) fn describe(
    engine: &Engine,
    component: &Component,
    bytes: &[u8],
    sha256: &[u8; 32],
) -> PluginInfo {
    let ty = component.component_type();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let package = imports
        .iter()
        .chain(&exports)
        .find_map(|name| package_of(name));
    PluginInfo {
        world: world_of(engine, component).ok(),
        package,
        exports,
        imports,
        size: bytes.len(),
        sha256: hex::encode(sha256),
    }
}

/// `orca:plugin@0.1.0` from `orca:plugin/logging@0.1.0`.
fn package_of(name: &str) -> Option<String> {
    Some(format!("{PACKAGE}@{}", version_of(name)?))
}

/// `0.1.0` from `orca:plugin/logging@0.1.0`.
fn version_of(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(PACKAGE)?.strip_prefix('/')?;
    let (_, version) = rest.split_once('@')?;
    Some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_from_interface_names() {
        assert_eq!(
            package_of("orca:plugin/logging@0.1.0").as_deref(),
            Some("orca:plugin@0.1.0")
        );
        assert_eq!(package_of("orca:plugin/logging"), None);
        assert_eq!(package_of("wasi:cli/environment@0.2.0"), None);
        assert_eq!(Contract::of("0.1.0"), Some(Contract::V0_1));
        assert_eq!(Contract::of("0.1.7"), Some(Contract::V0_1));
        assert_eq!(Contract::of("0.2.0"), Some(Contract::V0_2));
        assert_eq!(Contract::of("0.3.0"), Some(Contract::V0_3));
        assert_eq!(Contract::of("0.4.0"), None);
        assert_eq!(Contract::of("1.0.0"), None);
    }

    #[test]
    fn headers() {
        assert!(check_header(b"\0asm\x0d\x00\x01\x00rest").is_ok());
        assert!(check_header(b"\0asm\x01\x00\x00\x00")
            .unwrap_err()
            .contains("core"));
        assert!(check_header(b"hello world").is_err());
    }
}
