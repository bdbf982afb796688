//! The decision core cannot do I/O because it cannot reach anything that does: its normal
//! dependency graph (as `cargo tree` resolves it) contains none of the I/O and runtime crates.

use std::process::Command;

const FORBIDDEN: [&str; 9] = [
    "tokio",
    "redb",
    "bollard",
    "wasmtime",
    "hyper",
    "reqwest",
    "axum",
    "mio",
    "orca-store",
];

#[test]
fn decision_core_depends_on_no_io_crate() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "-p",
            "orca-core",
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(names.contains(&"orca-core"), "{tree}");
    assert!(names.contains(&"orca-config"), "{tree}");
    for bad in FORBIDDEN {
        assert!(
            !names.contains(&bad),
            "orca-core must not depend on {bad}:\n{tree}"
        );
    }
}
