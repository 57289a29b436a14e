//! `GET /whoami`: what the key sent may do, so a client (the dashboard) need not probe.

use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Viewer;
use crate::routes::responses::Unauthorized;

/// The key's tenant and role.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"tenant": "acme", "role": "tenant"}))]
pub struct WhoAmI {
    /// The tenant the key reads and writes; `null` for an operator key of `ADMIN_KEYS`, which
    /// belongs to no tenant.
    pub tenant: Option<String>,
    /// `tenant` (its own data) or `operator` (every tenant's analytics, `/admin/*`).
    #[schema(pattern = "^(tenant|operator)$")]
    pub role: &'static str,
}

/// The tenant and role of the key sent.
#[utoipa::path(get, path = "/whoami", tag = "auth",
    responses(
        (status = 200, description = "The key's tenant and role", body = WhoAmI),
        Unauthorized,
    ),
    security(("api_key" = [])))]
pub async fn whoami(viewer: Viewer) -> Json<WhoAmI> {
    Json(match viewer {
        Viewer::Tenant(tenant) => WhoAmI { tenant: Some(tenant.0.to_string()), role: "tenant" },
        Viewer::Operator(_) => WhoAmI { tenant: None, role: "operator" },
    })
}
