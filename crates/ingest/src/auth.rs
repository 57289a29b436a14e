//! Authentication: the `x-api-key` header names a tenant ([`crate::keys`] holds the keys).

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
        let key =
            parts.headers.get(API_KEY_HEADER).ok_or(ApiError::Unauthorized("missing x-api-key header"))?;
        state
            .config
            .api_keys
            .tenant_of(key.as_bytes())
            .map(Tenant)
            .ok_or(ApiError::Unauthorized("unknown API key"))
    }
}
