//! Authentication: the `x-api-key` header names a tenant, or is an operator key
//! ([`crate::keys`] holds both). [`Tenant`] guards the tenant routes, [`Operator`] `/admin/*`,
//! and [`Viewer`] analytics (a tenant's counts, or an operator's over every tenant).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::error::ApiError;
use crate::state::AppState;

pub use crate::keys::{API_KEY_HEADER, ApiKeys, DEFAULT_TENANT};

/// The tenant authenticated by the request's `x-api-key`; extracting it answers 401 otherwise.
#[derive(Debug, Clone)]
pub struct Tenant(pub Arc<str>);

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match Viewer::from_request_parts(parts, state).await? {
            Viewer::Tenant(tenant) => Ok(tenant),
            Viewer::Operator => Err(ApiError::Forbidden(
                "an operator key names no tenant: send and read events with a tenant key",
            )),
        }
    }
}

/// Who is asking: a tenant, or an operator (an `ADMIN_KEYS` key).
#[derive(Debug, Clone)]
pub enum Viewer {
    Tenant(Tenant),
    Operator,
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let key =
            parts.headers.get(API_KEY_HEADER).ok_or(ApiError::Unauthorized("missing x-api-key header"))?;
        // Both lists are searched every time, so timing does not tell them apart.
        let tenant = state.config.api_keys.tenant_of(key.as_bytes());
        let operator = state.config.admin_keys.contains(key.as_bytes());
        match (tenant, operator) {
            (Some(tenant), _) => Ok(Self::Tenant(Tenant(tenant))),
            (None, true) => Ok(Self::Operator),
            (None, false) => Err(ApiError::Unauthorized("unknown API key")),
        }
    }
}

/// An operator: only `ADMIN_KEYS` keys pass (a tenant key gets 403, none or an unknown one 401).
#[derive(Debug, Clone, Copy)]
pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match Viewer::from_request_parts(parts, state).await? {
            Viewer::Operator => Ok(Self),
            Viewer::Tenant(_) => {
                Err(ApiError::Forbidden("a tenant key cannot use /admin: use an operator key (ADMIN_KEYS)"))
            }
        }
    }
}
