//! `/admin/keys`: create, list and revoke API keys at runtime, for operators (a tenant key gets
//! 403). The keys themselves are [`crate::key_store`]'s; every change is logged with the id of
//! the operator key that made it.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Operator;
use crate::body::EventBody;
use crate::error::{ApiError, ErrorResponse};
use crate::key_store::{KeyInfo, NewKey, Role};
use crate::read::parse_query;
use crate::routes::read::bounded;
use crate::routes::responses::{BodyRefused, MongoDown, OperatorOnly};
use crate::state::AppState;

/// A key to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"tenant": "acme", "name": "billing service", "expires_at": "2027-06-30T00:00:00Z"}))]
pub struct CreateKey {
    /// The tenant it sends and reads for (1–64 characters of `[A-Za-z0-9_.-]`); required for
    /// `role: "tenant"`, absent for operators.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub tenant: Option<String>,
    /// `tenant` (default) or `operator`.
    pub role: Option<Role>,
    /// Who or what holds it, for people (at most 128 characters).
    #[schema(max_length = 128)]
    pub name: Option<String>,
    /// RFC 3339, in the future: from then on the key gets 401.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// Events/s for requests sent with this key, replacing its tenant's limit (tenant keys only).
    #[schema(minimum = 0.001, maximum = 1_000_000_000)]
    pub rate_limit: Option<f64>,
    /// The most it may send at once (with `rate_limit`; default the larger of one second of it and
    /// `MAX_BATCH_EVENTS`).
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub burst: Option<u64>,
}

/// A key just created: its fields, and its secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "3f9c2a71d04be815", "tenant": "acme", "role": "tenant", "name": "billing service",
    "source": "api", "created_at": "2026-12-03T13:00:00Z", "expires_at": "2027-06-30T00:00:00Z", "revoked_at": null,
    "last_used_at": null,
    "key": "evp_3f9c2a71d04be815_6b1f…"}))]
pub struct CreatedKey {
    #[serde(flatten)]
    pub info: KeyInfo,
    /// The secret to send as `x-api-key`. It is not stored and cannot be shown again.
    pub key: String,
}

/// Query parameters of `GET /admin/keys`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct KeysQuery {
    /// Only this tenant's keys.
    pub tenant: Option<String>,
}

/// Every key, never a secret.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"keys": [
    {"id": "env-1", "tenant": "acme", "role": "tenant", "name": null, "source": "env", "created_at": null,
     "expires_at": null, "revoked_at": null, "last_used_at": null},
    {"id": "3f9c2a71d04be815", "tenant": "acme", "role": "tenant", "name": "billing service", "source": "api",
     "created_at": "2026-12-03T13:00:00Z", "expires_at": null, "revoked_at": null,
     "last_used_at": "2026-12-03T14:05:00Z", "rate_limit": 500.0, "burst": 1000}]}))]
pub struct KeyList {
    pub keys: Vec<KeyInfo>,
}

fn checked(body: &[u8]) -> Result<NewKey, ApiError> {
    let parsed: CreateKey = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidJson(format!("not a key to create: {e}")))?;
    let role = parsed.role.unwrap_or(Role::Tenant);
    NewKey::checked(
        parsed.tenant,
        role,
        parsed.name,
        parsed.expires_at.as_deref(),
        parsed.rate_limit,
        parsed.burst,
    )
    .map_err(ApiError::InvalidJson)
}

/// Creates an API key. Its secret is in this answer only: it is stored as a digest.
#[utoipa::path(post, path = "/admin/keys", tag = "admin", request_body = CreateKey,
    responses(
        (status = 201, description = "Created; `key` is the secret, shown this once", body = CreatedKey),
        (status = 400, description = "`invalid_json`: not a key to create, naming the field", body = ErrorResponse),
        OperatorOnly, BodyRefused, MongoDown,
    ),
    security(("api_key" = [])))]
pub async fn create(
    State(state): State<AppState>,
    operator: Operator,
    EventBody(body): EventBody,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let new = checked(&body)?;
    let (info, key) = bounded(state.keys.create(new)).await?;
    tracing::info!(operator = %operator.key_id, key = info.id, tenant = info.tenant, "API key created");
    Ok((StatusCode::CREATED, Json(CreatedKey { info, key })))
}

/// Lists the API keys, without secrets: those created here, and those of `API_KEYS` and
/// `ADMIN_KEYS` (`source: "env"`).
#[utoipa::path(get, path = "/admin/keys", tag = "admin", params(KeysQuery),
    responses(
        (status = 200, description = "The keys", body = KeyList),
        (status = 400, description = "`invalid_query`: an unknown or repeated parameter", body = ErrorResponse),
        OperatorOnly, MongoDown,
    ),
    security(("api_key" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _operator: Operator,
    RawQuery(raw): RawQuery,
) -> Result<Json<KeyList>, ApiError> {
    let query: KeysQuery = parse_query(raw.as_deref())?;
    let tenant = query.tenant.as_deref();
    let env = |id: String, tenant: Option<&str>, role| KeyInfo {
        id,
        tenant: tenant.map(str::to_owned),
        role,
        name: None,
        source: "env",
        created_at: None,
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
        rate_limit: None,
        burst: None,
    };
    let mut keys: Vec<KeyInfo> = state
        .config
        .api_keys
        .tenants()
        .enumerate()
        .filter(|(_, t)| tenant.is_none_or(|wanted| wanted == *t))
        .map(|(n, t)| env(format!("env-{}", n + 1), Some(t), Role::Tenant))
        .collect();
    if tenant.is_none() {
        keys.extend(
            (0..state.config.admin_keys.len())
                .map(|n| env(format!("env-admin-{}", n + 1), None, Role::Operator)),
        );
    }
    keys.extend(bounded(state.keys.list(tenant)).await?);
    Ok(Json(KeyList { keys }))
}

/// Revokes an API key: every ingest replica refuses it within `KEY_REFRESH_MS`.
#[utoipa::path(delete, path = "/admin/keys/{id}", tag = "admin",
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 204, description = "Revoked (or already revoked)"),
        (status = 404, description = "`not_found`: no such key", body = ErrorResponse),
        (status = 409, description = "`conflict`: a key of API_KEYS or ADMIN_KEYS, which only the variable can remove",
            body = ErrorResponse),
        OperatorOnly, MongoDown,
    ),
    security(("api_key" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if id.starts_with("env-") {
        return Err(ApiError::Conflict(format!(
            "key {id} comes from API_KEYS or ADMIN_KEYS: remove it from the variable and restart the ingest replicas"
        )));
    }
    match bounded(state.keys.revoke(&id)).await? {
        None => Err(ApiError::NotFound(format!("no API key {id:?}"))),
        Some(info) => {
            tracing::info!(operator = %operator.key_id, key = info.id, tenant = info.tenant, "API key revoked");
            Ok(StatusCode::NO_CONTENT)
        }
    }
}
