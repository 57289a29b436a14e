//! Authentication: the `x-api-key` header names a tenant, or is an operator key: one of
//! `API_KEYS` / `ADMIN_KEYS` ([`crate::keys`]) or one created at runtime ([`crate::key_store`],
//! `evp_<id>_…`), both answered from memory. [`Tenant`] guards the tenant routes, [`Operator`] `/admin/*`,
//! and [`Viewer`] analytics (a tenant's counts, or an operator's over every tenant).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::error::ApiError;
use crate::key_store::Holder;
use crate::limiters::rate::KeyLimit;
use crate::state::AppState;

pub use crate::keys::{API_KEY_HEADER, ApiKeys, DEFAULT_TENANT};

/// The tenant authenticated by the request's `x-api-key`, and the key's own rate limit when it has
/// one (else the tenant's applies); extracting it answers 401 otherwise.
#[derive(Debug, Clone)]
pub struct Tenant(pub Arc<str>, pub Option<KeyLimit>);

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match Viewer::from_request_parts(parts, state).await? {
            Viewer::Tenant(tenant) => Ok(tenant),
            Viewer::Operator(_) => Err(ApiError::Forbidden(
                "an operator key names no tenant: send and read events with a tenant key",
            )),
        }
    }
}

impl Tenant {
    /// Whether the key in `headers` still names this tenant: asked again by a request that
    /// outlives its check (a body that takes its time, a long poll), so that a key revoked or
    /// expired meanwhile stops it.
    pub fn still_named_by(&self, state: &AppState, headers: &axum::http::HeaderMap) -> bool {
        let key = headers.get(API_KEY_HEADER).map(|k| k.as_bytes()).unwrap_or_default();
        matches!(Viewer::of_key(state, key), Ok(Viewer::Tenant(Tenant(now, _))) if now == self.0)
    }
}

/// Who is asking: a tenant, or an operator (an `ADMIN_KEYS` key, or an operator key created at
/// runtime), named by its key's id for the log of what it did.
#[derive(Debug, Clone)]
pub enum Viewer {
    Tenant(Tenant),
    Operator(Arc<str>),
}

impl Viewer {
    /// Whose read slots its reads take (`READ_CONCURRENCY_PER_TENANT`): its tenant's, or, for any
    /// operator key, the operators' one set.
    pub fn reader(&self) -> Arc<str> {
        match self {
            Self::Tenant(tenant) => tenant.0.clone(),
            Self::Operator(_) => Arc::from("(operators)"),
        }
    }

    /// Who the key `presented` names now, or the 401 a request with it gets. A request that
    /// outlives its check asks again through [`Tenant::still_named_by`].
    pub fn of_key(state: &AppState, presented: &[u8]) -> Result<Self, ApiError> {
        if let Some(holder) = state.keys.authenticate(presented) {
            return Ok(match holder {
                Holder::Tenant(tenant, limit) => Self::Tenant(Tenant(tenant, limit)),
                Holder::Operator { key_id } => Self::Operator(key_id),
            });
        }
        // Both lists are searched every time, so timing does not tell them apart.
        let tenant = state.config.api_keys.tenant_of(presented);
        let operator = state.config.admin_keys.position(presented);
        match (tenant, operator) {
            (Some(tenant), _) => Ok(Self::Tenant(Tenant(tenant, None))),
            (None, Some(n)) => Ok(Self::Operator(Arc::from(format!("env-admin-{}", n + 1)))),
            (None, None) => Err(ApiError::Unauthorized("unknown API key")),
        }
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let key =
            parts.headers.get(API_KEY_HEADER).ok_or(ApiError::Unauthorized("missing x-api-key header"))?;
        Self::of_key(state, key.as_bytes())
    }
}

/// An operator, by its key's id: only operator keys pass (a tenant key gets 403, none or an
/// unknown one 401).
#[derive(Debug, Clone)]
pub struct Operator {
    pub key_id: Arc<str>,
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match Viewer::from_request_parts(parts, state).await? {
            Viewer::Operator(key_id) => Ok(Self { key_id }),
            Viewer::Tenant(_) => {
                Err(ApiError::Forbidden("a tenant key cannot use /admin: use an operator key (ADMIN_KEYS)"))
            }
        }
    }
}
