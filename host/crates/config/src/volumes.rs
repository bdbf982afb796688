//! Mounts in `service.toml`: `volumes = ["data:/var/lib/db", "/srv/orca/site:/site:ro"]`
//! parsed into typed [`Mount`]s, the syntax checks on them, and the lexical half of the
//! host-path rule (`[volumes] host_paths`); the host canonicalizes what exists on disk.
//!
//! A mount is `SOURCE:TARGET[:OPTIONS]`. A source starting with `/` is a host path (a bind
//! mount); anything else is the name of a volume owned by the service's project. Options are
//! comma-separated: `ro` (read-only) and `shared` (a named volume several instances may write
//! at once; the application coordinates them).

use std::path::{Component, Path};

/// Where a mount's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A named volume of the service's project (Docker volume
    /// `orca-<cluster>-<project>-<name>`).
    Volume(String),
    /// A directory or file of the node's filesystem, absolute and normalised.
    HostPath(String),
}

/// One entry of a service's `volumes`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// A named volume or a host path.
    pub source: MountSource,
    /// Absolute path inside the container.
    pub target: String,
    /// `:ro`.
    pub read_only: bool,
    /// `:shared` (named volumes only): several writers allowed.
    pub shared: bool,
}

impl Mount {
    /// The volume's name, for a named volume.
    pub fn volume(&self) -> Option<&str> {
        match &self.source {
            MountSource::Volume(name) => Some(name),
            MountSource::HostPath(_) => None,
        }
    }

    /// A writable named volume that is not shared: at most one instance may use it, and a
    /// rollout stops the old instance before the new one starts.
    pub fn is_exclusive(&self) -> bool {
        self.volume().is_some() && !self.read_only && !self.shared
    }
}

/// The longest volume name (the Docker volume name adds the cluster and project).
pub const MAX_VOLUME_NAME: usize = 63;

/// The options a mount may carry.
pub const MOUNT_OPTIONS: [&str; 2] = ["ro", "shared"];

/// Parses one `volumes` entry; the error says what is wrong and what is allowed.
pub fn parse_mount(entry: &str) -> Result<Mount, String> {
    let mut parts = entry.split(':');
    let (Some(source), Some(target)) = (parts.next(), parts.next()) else {
        return Err(format!(
            "invalid volume {entry:?}: expected \"NAME:/container/path\" or \"/host/path:/container/path\", optionally followed by \":ro\", \":shared\" or \":ro,shared\""
        ));
    };
    let options = parts.next();
    if parts.next().is_some() {
        return Err(format!(
            "invalid volume {entry:?}: too many ':' (expected SOURCE:TARGET[:OPTIONS])"
        ));
    }
    let (mut read_only, mut shared) = (false, false);
    if let Some(options) = options {
        for option in options.split(',') {
            match option {
                "ro" => read_only = true,
                "shared" => shared = true,
                other => {
                    return Err(format!(
                        "invalid volume {entry:?}: unknown option {other:?}: allowed {}",
                        MOUNT_OPTIONS.join(", ")
                    ))
                }
            }
        }
    }
    let target = check_absolute(target)
        .map_err(|why| format!("invalid volume {entry:?}: container path {target:?} {why}"))?;
    if target == "/" {
        return Err(format!(
            "invalid volume {entry:?}: cannot mount over the container's root \"/\""
        ));
    }
    let source = if source.starts_with('/') {
        if shared {
            return Err(format!(
                "invalid volume {entry:?}: \"shared\" applies to named volumes only"
            ));
        }
        let path = check_absolute(source)
            .map_err(|why| format!("invalid volume {entry:?}: host path {source:?} {why}"))?;
        MountSource::HostPath(path)
    } else {
        check_volume_name(source).map_err(|why| format!("invalid volume {entry:?}: {why}"))?;
        MountSource::Volume(source.to_string())
    };
    Ok(Mount {
        source,
        target,
        read_only,
        shared,
    })
}

/// A volume name: a DNS label, so it never holds `/`, `..` or anything Docker or a shell
/// would read differently.
pub fn check_volume_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_VOLUME_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid volume name {name:?}: use 1-{MAX_VOLUME_NAME} lowercase letters, digits and '-' (no '/', '.' or '..'), starting with a letter or digit and not ending with '-', or an absolute host path"
        ))
    }
}

/// An absolute path without `.`/`..` components or empty segments, returned with any
/// trailing `/` removed.
fn check_absolute(path: &str) -> Result<String, &'static str> {
    if !path.starts_with('/') {
        return Err("must be absolute (start with '/')");
    }
    if path.chars().any(|c| c.is_control()) {
        return Err("holds a control character");
    }
    let trimmed = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
    for part in trimmed.split('/').skip(1) {
        match part {
            "" if trimmed != "/" => return Err("holds an empty segment ('//')"),
            "." | ".." => return Err("may not contain '.' or '..' segments"),
            _ => {}
        }
    }
    Ok(trimmed.to_string())
}

/// Whether `path` (absolute, normalised) is one of `prefixes` or below one, compared by path
/// components, so `/srv/orca` allows `/srv/orca/site` but not `/srv/orcax`.
pub fn under_prefix(path: &Path, prefixes: &[impl AsRef<Path>]) -> bool {
    let normal = |p: &Path| -> bool {
        p.is_absolute()
            && p.components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
    };
    normal(path)
        && prefixes
            .iter()
            .any(|prefix| normal(prefix.as_ref()) && path.starts_with(prefix.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(
            parse_mount("data:/var/lib/db").unwrap(),
            Mount {
                source: MountSource::Volume("data".into()),
                target: "/var/lib/db".into(),
                read_only: false,
                shared: false,
            }
        );
        let m = parse_mount("cache:/cache:ro").unwrap();
        assert!(m.read_only && !m.is_exclusive());
        let m = parse_mount("data:/d:shared").unwrap();
        assert!(m.shared && !m.is_exclusive());
        let m = parse_mount("data:/d:ro,shared").unwrap();
        assert!(m.shared && m.read_only);
        assert!(parse_mount("data:/d").unwrap().is_exclusive());
        let m = parse_mount("/srv/orca/site/:/usr/share/site:ro").unwrap();
        assert_eq!(m.source, MountSource::HostPath("/srv/orca/site".into()));
        assert!(!m.is_exclusive());
    }

    #[test]
    fn refusals_say_why() {
        for (entry, want) in [
            ("data", "expected \"NAME:/container/path\""),
            ("data:/d:rw", "unknown option \"rw\": allowed ro, shared"),
            ("data:d", "must be absolute"),
            ("data:/", "root"),
            ("data:/a/../b", "'..'"),
            ("../etc:/d", "invalid volume name \"../etc\""),
            ("a/b:/d", "invalid volume name \"a/b\""),
            ("..:/d", "invalid volume name \"..\""),
            ("Data:/d", "invalid volume name"),
            (
                "/srv/../etc:/d",
                "host path \"/srv/../etc\" may not contain",
            ),
            ("/srv//x:/d", "empty segment"),
            ("/srv:/d:shared", "named volumes only"),
            ("a:/b:ro:x", "too many ':'"),
        ] {
            let err = parse_mount(entry).unwrap_err();
            assert!(err.contains(want), "{entry}: {err}");
        }
    }

    #[test]
    fn prefixes_compare_by_component() {
        let allowed = ["/srv/orca"];
        assert!(under_prefix(Path::new("/srv/orca"), &allowed));
        assert!(under_prefix(Path::new("/srv/orca/site"), &allowed));
        assert!(!under_prefix(Path::new("/srv/orcax"), &allowed));
        assert!(!under_prefix(Path::new("/srv/orca/../x"), &allowed));
        assert!(!under_prefix(Path::new("/"), &allowed));
        assert!(!under_prefix(Path::new("/var/run/docker.sock"), &allowed));
        assert!(!under_prefix(Path::new("/srv/orca"), &[] as &[&str]));
    }
}
