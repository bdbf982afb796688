//! End-to-end RBAC: every API route, called over HTTP with no token, a bad token, and each
//! role, against the reference's matrix. Deny by default: a guarded route answers 401
//! without a valid token and 403 to a role without the permission.

mod support;

use orca::api::{allows, Permission, ROUTES};
use orca_config::Role;
use support::*;

fn call(s: &Server, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let path = path
        .replace("{name}", "nosuch")
        .replace("{id}", "nosuch")
        .replace("{forge}", "nosuch")
        .replace("{key}", "NOSUCH");
    // Bodies that are invalid on purpose: an authorized call fails validation (4xx) and
    // changes nothing, so the matrix can be checked without side effects.
    let body: Option<&[u8]> = match method {
        "POST" | "PUT" => Some(b"{\"invalid\": true}"),
        _ => None,
    };
    http_raw(method, &format!("{}{}", s.api, path), token, &[], body).expect("API reachable")
}

#[test]
fn every_route_enforces_the_matrix() {
    let s = Server::start();
    let roles = [
        (Role::Admin, ADMIN),
        (Role::Deployer, DEPLOYER),
        (Role::Viewer, VIEWER),
    ];
    let mut checked = 0;
    for &(method, path, perm) in ROUTES {
        match perm {
            None => {
                for token in [None, Some("bad"), Some(VIEWER)] {
                    let (code, body) = call(&s, method, path, token);
                    assert!(
                        code != 401 && code != 403,
                        "{method} {path} is public, got {code}: {body}"
                    );
                }
            }
            Some(perm) => {
                let (code, body) = call(&s, method, path, None);
                assert_eq!(code, 401, "{method} {path} without a token: {body}");
                assert!(body.contains("missing bearer token"), "{body}");
                let (code, body) = call(&s, method, path, Some("not-a-real-token"));
                assert_eq!(code, 401, "{method} {path} with a bad token: {body}");
                for (role, token) in roles {
                    let (code, body) = call(&s, method, path, Some(token));
                    if allows(role, perm) {
                        assert!(
                            code != 401 && code != 403,
                            "{method} {path} as {role} must be allowed, got {code}: {body}"
                        );
                    } else {
                        assert_eq!(
                            code, 403,
                            "{method} {path} as {role} must be forbidden: {body}"
                        );
                        assert!(
                            body.contains(&role.to_string()),
                            "the 403 names the role: {body}"
                        );
                    }
                }
            }
        }
        checked += 1;
    }
    assert!(checked >= 20, "the route table covers the API");

    // The table matches the reference for the named columns.
    let perm_of = |m: &str, p: &str| ROUTES.iter().find(|r| r.0 == m && r.1 == p).unwrap().2;
    assert_eq!(perm_of("POST", "/api/v1/deploy"), Some(Permission::Deploy));
    assert_eq!(
        perm_of("POST", "/api/v1/services/{name}/scale"),
        Some(Permission::Operate)
    );
    assert_eq!(
        perm_of("GET", "/api/v1/services/{name}/logs"),
        Some(Permission::Read)
    );
    assert_eq!(
        perm_of("POST", "/api/v1/cluster/nodes/{id}/drain"),
        Some(Permission::Admin)
    );
    assert_eq!(perm_of("POST", "/api/v1/tokens"), Some(Permission::Admin));
    assert_eq!(perm_of("GET", "/api/v1/health"), None);
}

#[test]
fn created_tokens_work_once_shown_and_are_stored_hashed() {
    let s = Server::start();
    let value = s.cli(&[
        "token", "create", "--name", "gitea-ci", "--role", "deployer",
    ]);
    let value = value.trim();
    assert!(value.len() >= 32, "{value}");
    let list = s.cli(&["token", "list"]);
    assert!(
        list.contains("gitea-ci") && list.contains("deployer"),
        "{list}"
    );
    assert!(!list.contains(value), "token list never shows values");

    // The new token has the deployer's rights: status yes, token creation no.
    let (code, _) = http_raw(
        "GET",
        &format!("{}/api/v1/status", s.api),
        Some(value),
        &[],
        None,
    )
    .unwrap();
    assert_eq!(code, 200);
    let (code, _) = http_raw(
        "POST",
        &format!("{}/api/v1/tokens", s.api),
        Some(value),
        &[],
        Some(br#"{"name":"x","role":"admin"}"#),
    )
    .unwrap();
    assert_eq!(code, 403);

    // Duplicate names are refused; bad roles are named.
    let out = s.cli_in(
        ADMIN,
        None,
        &["token", "create", "--name", "gitea-ci", "--role", "viewer"],
    );
    assert!(!out.status.success());
    let out = s.cli_in(
        ADMIN,
        None,
        &["token", "create", "--name", "other", "--role", "owner"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin") && err.contains("deployer") && err.contains("viewer"),
        "{err}"
    );

    let db = std::fs::read(s.home().join("cluster.db")).unwrap();
    assert!(
        !db.windows(value.len()).any(|w| w == value.as_bytes()),
        "token stored in plaintext"
    );
}
