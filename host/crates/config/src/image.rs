//! The OCI image reference grammar (distribution/reference): `[host[:port]/]path[:tag][@digest]`.
//!
//! Checked at deploy so that `$(id)`, `-v` or `../../etc/passwd` are refused with the rule they
//! break instead of failing later at pull or create.

/// Longest repository name (host and path) the grammar allows.
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag.
pub const MAX_TAG_LEN: usize = 128;

/// Checks `image` against the OCI reference grammar; the error says which part is wrong.
pub fn check_image_reference(image: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "invalid image {image:?}: {why}; expected [HOST[:PORT]/]PATH[:TAG][@DIGEST] such as \"nginx:alpine\" or \"ghcr.io/org/app:v1\""
        ))
    };
    if image.is_empty() {
        return Err("empty image: expected a reference such as \"nginx:alpine\"".to_string());
    }
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        if !is_digest(digest) {
            return bad("the digest after '@' is not ALGORITHM:HEX (e.g. sha256:<64 hex digits>)");
        }
    }
    // A tag is after the last ':' that follows the last '/'.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        if !is_tag(tag) {
            return bad("the tag must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'");
        }
    }
    if name.is_empty() {
        return bad("the repository name is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("the repository name is longer than 255 characters");
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    let first = parts[0];
    let has_host = parts.len() > 1
        && (first.contains('.')
            || first.contains(':')
            || first == "localhost"
            || first.bytes().any(|b| b.is_ascii_uppercase()));
    if has_host {
        if !is_host(first) {
            return bad("the registry host must be DNS labels with an optional :PORT");
        }
        parts.remove(0);
    }
    for part in parts {
        if !is_path_component(part) {
            return bad(&format!(
                "path component {part:?} must be lowercase letters and digits, separated by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_path_component(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || !is_lower_alnum(b[0]) || !is_lower_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_lower_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or one or more '-'.
        let start = i;
        while i < b.len() && !is_lower_alnum(b[i]) {
            i += 1;
        }
        let sep = &s[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// DNS labels separated by '.', then an optional `:PORT`.
fn is_host(s: &str) -> bool {
    let (host, port) = match s.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

/// `ALGORITHM:HEX` with an algorithm of `[a-z0-9]+([+._-][a-z0-9]+)*` and 32+ hex digits.
fn is_digest(s: &str) -> bool {
    let Some((alg, hex)) = s.split_once(':') else {
        return false;
    };
    let alg_ok = !alg.is_empty()
        && alg
            .split(['+', '.', '_', '-'])
            .all(|c| !c.is_empty() && c.bytes().all(is_lower_alnum));
    alg_ok && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::check_image_reference;

    #[test]
    fn accepts_the_references_people_use() {
        for ok in [
            "nginx",
            "nginx:alpine",
            "orca-testapp:latest",
            "library/nginx:1.27",
            "ghcr.io/org/app:v1",
            "localhost:5000/app",
            "registry.example.com:443/team/sub/app:2024.01_rc-1",
            "Registry.Example/app",
            "app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "a__b/c-d--e.f:tag",
        ] {
            assert_eq!(check_image_reference(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn image_reference_validation_refuses_shell_flags_and_paths() {
        for bad in [
            "$(id)",
            "-v",
            "../../etc/passwd",
            "/etc/passwd",
            "Nginx",
            "nginx:",
            "nginx:-x",
            "nginx@sha256:xyz",
            "a//b",
            "a/b/",
            "app;rm",
            "app:tag with space",
        ] {
            let err = check_image_reference(bad).unwrap_err();
            assert!(err.contains("invalid image"), "{bad}: {err}");
        }
    }
}
