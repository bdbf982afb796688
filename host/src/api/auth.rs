//! Authentication and authorization: bearer tokens and the RBAC matrix, deny by default.
//!
//! Every API route is registered through the `guard` in `app()` with the one [`Permission`] it needs
//! (or explicitly as public); `tests/rbac.rs` calls every route with every role.

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use orca_config::Role;
use orca_store::TokenSet;

use super::error::ApiError;

/// What a route needs, mapped to the reference's matrix columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Logs/Status: every role.
    Read,
    /// Deploy: admin, deployer.
    Deploy,
    /// Stop/Scale: admin, deployer.
    Operate,
    /// Drain/Tokens (and secrets): admin only.
    Admin,
}

/// The RBAC matrix of the reference.
pub fn allows(role: Role, perm: Permission) -> bool {
    match role {
        Role::Admin => true,
        Role::Deployer => matches!(
            perm,
            Permission::Read | Permission::Deploy | Permission::Operate
        ),
        Role::Viewer => perm == Permission::Read,
    }
}

/// Verified identity of a request, put in its extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// Shared, swappable token verifier.
pub type Tokens = Arc<ArcSwap<TokenSet>>;

/// Middleware: 401 without a valid bearer token, 403 when the role lacks `perm`.
pub async fn authorize(
    State((tokens, perm)): State<(Tokens, Permission)>,
    mut req: Request,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .filter(|t| !t.is_empty());
    let Some(presented) = presented else {
        return unauthorized("missing bearer token: send Authorization: Bearer <token>");
    };
    let Some((name, role)) = tokens.load().verify(presented) else {
        return unauthorized("invalid token");
    };
    if !allows(role, perm) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "token \"{name}\" has role {role}, which may not {}",
                match perm {
                    Permission::Read => "read status or logs",
                    Permission::Deploy => "deploy",
                    Permission::Operate => "stop or scale services",
                    Permission::Admin => "manage tokens, secrets or nodes (admin only)",
                }
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(Caller { name, role });
    next.run(req).await
}

/// The credentials of a `Bearer` Authorization value; the scheme is case-insensitive
/// (RFC 9110 §11.1), so `bearer x` and `BEARER x` are the same as `Bearer x`.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

fn unauthorized(message: &str) -> Response {
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_scheme_is_case_insensitive() {
        for v in ["Bearer abc", "bearer abc", "BEARER  abc ", "bEaReR\tabc"] {
            assert_eq!(bearer(v), Some("abc"), "{v:?}");
        }
        for v in ["Basic abc", "Bearerabc", "abc", "Bearer"] {
            assert_eq!(bearer(v).filter(|t| !t.is_empty()), None, "{v:?}");
        }
    }

    #[test]
    fn matrix_matches_the_reference() {
        use Permission::*;
        let table = [
            (Role::Admin, [true, true, true, true]),
            (Role::Deployer, [true, true, true, false]),
            (Role::Viewer, [true, false, false, false]),
        ];
        for (role, expect) in table {
            for (perm, want) in [Read, Deploy, Operate, Admin].into_iter().zip(expect) {
                assert_eq!(allows(role, perm), want, "{role} {perm:?}");
            }
        }
    }
}
