//! Syntax of the names orca uses: project/service/alias/token names, env keys and domains.

use crate::error::ConfigError;

/// The longest name orca accepts; it is also the longest DNS label, so every name can be used
/// as a container hostname or network alias.
pub const MAX_NAME_LEN: usize = 63;

/// Checks a project, service, alias, token or cluster name: 1 to 63 characters of `[a-z0-9-]`,
/// starting with a letter or digit and not ending with `-` (a DNS label, RFC 1123).
///
/// `kind` names what is checked (`"service"`, `"project"`, ...) and appears in the message:
/// `invalid service name "My_App": use 1-63 lowercase letters, digits and '-', starting with a
/// letter or digit and not ending with '-'`.
pub fn validate_name(kind: &str, value: &str) -> Result<(), ConfigError> {
    if is_dns_label(value) {
        Ok(())
    } else {
        Err(ConfigError::new(format!(
            "invalid {kind} name {value:?}: use 1-{MAX_NAME_LEN} lowercase letters, digits and '-', \
             starting with a letter or digit and not ending with '-'"
        )))
    }
}

/// True when `s` is a lowercase RFC 1123 label.
fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// True when `key` is a valid environment variable name, `[A-Za-z_][A-Za-z0-9_]*`.
///
/// The same syntax is used for secret keys in `${secrets.KEY}`.
pub fn is_env_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks a domain the proxy routes: a lowercase RFC 1123 hostname of at most 253 characters,
/// labels separated by dots, no trailing dot, no wildcard, and not an IP address (the last label
/// is not all digits). Single-label names such as `localhost` are allowed.
///
/// Returns the reason on failure.
pub fn validate_domain(domain: &str) -> Result<(), String> {
    const HINT: &str = "expected a lowercase hostname such as \"app.example.com\"";
    if domain.is_empty() {
        return Err(format!("empty domain: {HINT}"));
    }
    if domain.len() > 253 {
        return Err(format!(
            "invalid domain {domain:?}: longer than 253 characters"
        ));
    }
    if domain != domain.to_ascii_lowercase() {
        return Err(format!(
            "invalid domain {domain:?}: use lowercase ({:?})",
            domain.to_ascii_lowercase()
        ));
    }
    for label in domain.split('.') {
        if !is_dns_label(label) {
            return Err(format!(
                "invalid domain {domain:?}: each dot-separated label must be 1-63 letters, digits \
                 and '-', not starting or ending with '-'; {HINT}"
            ));
        }
    }
    let last = domain.rsplit('.').next().unwrap_or(domain);
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid domain {domain:?}: an IP address cannot be routed by name; {HINT}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "web", "my-app", "0day", "a1-b2", &"x".repeat(63)] {
            assert!(validate_name("service", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "My_App",
            "-web",
            "web-",
            "we b",
            "wéb",
            "a.b",
            &"x".repeat(64),
        ] {
            assert!(validate_name("service", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn name_message() {
        let e = validate_name("service", "My_App").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid service name \"My_App\": use 1-63 lowercase letters, digits and '-', \
             starting with a letter or digit and not ending with '-'"
        );
    }

    #[test]
    fn env_keys() {
        for ok in ["A", "_", "DB_URL", "a1", "_x_9"] {
            assert!(is_env_key(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "É", "A.B"] {
            assert!(!is_env_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn domains() {
        for ok in [
            "localhost",
            "hello.localhost",
            "app.example.com",
            "a-b.c1.io",
            "x.y.z.123a",
        ] {
            assert!(validate_domain(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "App.example.com",
            "app..example.com",
            ".example.com",
            "example.com.",
            "-a.example.com",
            "a-.example.com",
            "*.example.com",
            "a_b.example.com",
            "10.0.0.1",
            "example.com:8080",
        ] {
            assert!(validate_domain(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}.com", vec!["a".repeat(63); 4].join("."));
        assert!(validate_domain(&long).is_err());
    }
}
