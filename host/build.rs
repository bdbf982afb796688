//! Builds the default plugins (`plugins/`, its own cargo workspace) into WebAssembly
//! components and generates `$OUT_DIR/builtin_plugins.rs`, which embeds them in `orca`.
//!
//! The nested cargo gets its own target dir (`target/plugins`: sharing the outer one
//! deadlocks on its lock), a clean environment (no flags meant for the host build leak into
//! the wasm build), and `wasm-component-ld` as linker for `wasm32-unknown-unknown`, which
//! yields components that import nothing but `orca:plugin` interfaces. When no plugin source
//! changed, the nested build is a no-op of a few tens of milliseconds.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Built-in plugins: (name used in service.toml, crate directory under plugins/).
const DEFAULTS: &[&str] = &[
    "rolling",
    "canary",
    "spread",
    "http-probe",
    "tcp-probe",
    "github",
    "gitea",
    "gitlab",
    "git-build",
];

const TARGET: &str = "wasm32-unknown-unknown";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.parent().expect("host/ has a parent").to_path_buf();
    let plugins = root.join("plugins");
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));

    // `orca update` picks the release index entry of the platform it was built for.
    println!(
        "cargo:rustc-env=ORCA_TARGET={}",
        env::var("TARGET").expect("set by cargo")
    );

    for dir in ["plugins", "sdk/src", "sdk/Cargo.toml", "wit"] {
        rerun_tree(&root.join(dir));
    }

    let present: Vec<&str> = DEFAULTS
        .iter()
        .copied()
        .filter(|name| plugins.join(name).join("Cargo.toml").is_file())
        .collect();
    let target_dir = root.join("target").join("plugins");
    if !present.is_empty() {
        build(&plugins, &target_dir, &present);
    }

    let mut code = String::from(
        "/// Default plugins embedded at build time: (name, component bytes).\n\
         static BUILTINS: &[(&str, &[u8])] = &[\n",
    );
    for name in &present {
        let file = target_dir
            .join(TARGET)
            .join("release")
            .join(format!("orca_plugin_{}.wasm", name.replace('-', "_")));
        assert!(
            file.is_file(),
            "plugin {name} was built but {} is missing",
            file.display()
        );
        writeln!(
            code,
            "    ({name:?}, include_bytes!({:?})),",
            file.display().to_string()
        )
        .expect("writing to a String");
    }
    code.push_str("];\n");
    std::fs::write(out.join("builtin_plugins.rs"), code).expect("writing builtin_plugins.rs");
}

fn build(plugins: &Path, target_dir: &Path, names: &[&str]) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(plugins)
        .arg("build")
        .arg("--release")
        .arg("--locked")
        .arg("--target")
        .arg(TARGET)
        .arg("--target-dir")
        .arg(target_dir);
    for name in names {
        cmd.arg("-p").arg(format!("orca-plugin-{name}"));
    }
    // A clean environment: nothing meant for the host build may reach the wasm build.
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let strip = matches!(
            key,
            "RUSTFLAGS"
                | "CARGO_ENCODED_RUSTFLAGS"
                | "RUSTC_WRAPPER"
                | "RUSTC_WORKSPACE_WRAPPER"
                | "CARGO_TARGET_DIR"
                | "CARGO_BUILD_TARGET"
                | "TARGET"
                | "HOST"
                | "OUT_DIR"
                | "OPT_LEVEL"
                | "PROFILE"
                | "DEBUG"
                | "NUM_JOBS"
                | "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_PKG_NAME"
        ) || key.starts_with("CARGO_PROFILE_")
            || key.starts_with("CARGO_TARGET_")
            || key.starts_with("CARGO_CFG_")
            || key.starts_with("CARGO_FEATURE_")
            || key.starts_with("CARGO_PKG_");
        if strip {
            cmd.env_remove(key);
        }
    }
    cmd.env(
        "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER",
        "wasm-component-ld",
    );
    let status = cmd
        .status()
        .expect("running cargo to build the default plugins");
    assert!(
        status.success(),
        "building the default plugins failed (cd plugins && cargo build --release --target {TARGET}); \
         is the wasm32-unknown-unknown target installed? (rustup target add {TARGET})"
    );
}

/// Asks cargo to rerun this script when any file under `path` changes.
fn rerun_tree(path: &Path) {
    println!("cargo:rerun-if-changed={}", path.display());
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        let name = entry.file_name();
        if name == "target" || name == "faults" {
            continue;
        }
        if p.is_dir() {
            rerun_tree(&p);
        } else {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}
