//! `GET /api/v1/whoami`: the presented token's name and role, so a client (`orca mcp`) can
//! offer only what that role may do. The guard has verified the token already.

use axum::{Extension, Json};
use orca_contract::api::WhoAmI;

use super::auth::Caller;

/// `GET /api/v1/whoami` (any role).
pub async fn whoami(Extension(caller): Extension<Caller>) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: caller.name,
        role: caller.role.as_str().to_string(),
    })
}
