//! The build context: the directory of a checkout the image is built from, packed as the
//! tar the Docker Engine's build endpoint takes. Paths from the service (`dockerfile`,
//! `context`) are resolved inside the checkout and may not leave it, symlinks included.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Largest build context accepted (bytes of file content).
pub const MAX_CONTEXT_BYTES: u64 = 1024 * 1024 * 1024;
/// Where a Dockerfile that lies outside the context goes inside the tar.
const OUTSIDE_DOCKERFILE: &str = ".orca-build.Dockerfile";

/// A packed context and the Dockerfile's path inside it.
#[derive(Debug)]
pub struct Packed {
    /// The uncompressed tar.
    pub tar: Vec<u8>,
    /// The Dockerfile's path inside the tar.
    pub dockerfile: String,
    /// Files packed.
    pub files: usize,
}

/// `rel` (a relative path from the service's `[service.build]`) inside `root`, resolved
/// through symlinks and checked to stay inside `root`.
pub fn resolve_inside(root: &Path, rel: &str, what: &str) -> Result<PathBuf, String> {
    let rel_path = Path::new(rel);
    if rel_path.is_absolute()
        || rel_path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
    {
        return Err(format!(
            "{what} {rel:?} must be a relative path inside the repository"
        ));
    }
    let root = root
        .canonicalize()
        .map_err(|e| format!("checkout {}: {e}", root.display()))?;
    let full = root
        .join(rel_path)
        .canonicalize()
        .map_err(|e| format!("{what} {rel:?} not found in the repository: {e}"))?;
    if !full.starts_with(&root) {
        return Err(format!("{what} {rel:?} leads outside the repository"));
    }
    Ok(full)
}

/// Packs `context` (relative to the checkout `root`) and finds `dockerfile` (relative to
/// `root`). The top-level `.git` directory is left out; symlinks are packed as symlinks.
pub fn pack(root: &Path, context: &str, dockerfile: &str) -> Result<Packed, String> {
    let context_dir = resolve_inside(root, context, "context")?;
    if !context_dir.is_dir() {
        return Err(format!("context {context:?} is not a directory"));
    }
    let dockerfile_path = resolve_inside(root, dockerfile, "dockerfile")?;
    if !dockerfile_path.is_file() {
        return Err(format!("dockerfile {dockerfile:?} is not a file"));
    }
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Deterministic);
    let mut total = 0u64;
    let mut files = 0usize;
    add_dir(
        &mut builder,
        &context_dir,
        Path::new(""),
        &mut total,
        &mut files,
        true,
    )
    .map_err(|e| format!("packing the build context: {e}"))?;
    let in_tar = match dockerfile_path.strip_prefix(&context_dir) {
        Ok(inside) => inside.to_string_lossy().into_owned(),
        Err(_) => {
            builder
                .append_path_with_name(&dockerfile_path, OUTSIDE_DOCKERFILE)
                .map_err(|e| format!("packing the dockerfile: {e}"))?;
            OUTSIDE_DOCKERFILE.to_string()
        }
    };
    let tar = builder
        .into_inner()
        .map_err(|e| format!("packing the build context: {e}"))?;
    Ok(Packed {
        tar,
        dockerfile: in_tar,
        files,
    })
}

fn add_dir(
    builder: &mut tar::Builder<Vec<u8>>,
    dir: &Path,
    prefix: &Path,
    total: &mut u64,
    files: &mut usize,
    top: bool,
) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if top && name == ".git" {
            continue;
        }
        let path = entry.path();
        let rel = prefix.join(&name);
        let kind = entry.file_type()?;
        if kind.is_dir() {
            builder.append_dir(&rel, &path)?;
            add_dir(builder, &path, &rel, total, files, false)?;
        } else if kind.is_file() || kind.is_symlink() {
            *total += entry.metadata()?.len();
            if *total > MAX_CONTEXT_BYTES {
                return Err(io::Error::other(format!(
                    "the build context is larger than {} MiB",
                    MAX_CONTEXT_BYTES >> 20
                )));
            }
            builder.append_path_with_name(&path, &rel)?;
            *files += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar: &[u8]) -> Vec<String> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn packs_the_context_without_git_and_places_the_dockerfile() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join(".git/objects")).unwrap();
        fs::create_dir_all(root.join("app/src")).unwrap();
        fs::create_dir_all(root.join("deploy")).unwrap();
        fs::write(root.join("app/src/main.rs"), "fn main() {}").unwrap();
        fs::write(root.join("app/Dockerfile"), "FROM scratch").unwrap();
        fs::write(root.join("deploy/Dockerfile"), "FROM scratch").unwrap();

        let packed = pack(root, ".", "app/Dockerfile").unwrap();
        let listed = names(&packed.tar);
        assert!(listed.iter().all(|n| !n.starts_with(".git")), "{listed:?}");
        assert!(
            listed.contains(&"app/src/main.rs".to_string()),
            "{listed:?}"
        );
        assert_eq!(packed.dockerfile, "app/Dockerfile");

        let packed = pack(root, "app", "deploy/Dockerfile").unwrap();
        assert_eq!(packed.dockerfile, OUTSIDE_DOCKERFILE);
        let listed = names(&packed.tar);
        assert!(listed.contains(&"src/main.rs".to_string()), "{listed:?}");
        assert!(
            listed.contains(&OUTSIDE_DOCKERFILE.to_string()),
            "{listed:?}"
        );
    }

    #[test]
    fn paths_may_not_leave_the_checkout() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("repo");
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("Dockerfile"), "FROM scratch").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("escape")).unwrap();
        assert!(pack(&root, "..", "Dockerfile")
            .unwrap_err()
            .contains("relative path"));
        assert!(pack(&root, "/etc", "Dockerfile")
            .unwrap_err()
            .contains("relative path"));
        assert!(pack(&root, "escape", "Dockerfile")
            .unwrap_err()
            .contains("outside"));
        assert!(pack(&root, ".", "escape/passwd")
            .unwrap_err()
            .contains("outside"));
        assert!(pack(&root, ".", "missing")
            .unwrap_err()
            .contains("not found"));
    }
}
