//! What a key is, as created and as shown: its role, the fields an operator sees (never a secret),
//! a new key's checks, and the stored document read back.

use mongodb::bson::{DateTime, Document};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sends and reads its tenant's events.
    Tenant,
    /// `/admin/*`, and analytics over every tenant.
    Operator,
}

/// A key as an operator sees it: never its secret.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyInfo {
    /// `evp_<id>_…` for keys created here; `env-<n>` / `env-admin-<n>` for `API_KEYS` / `ADMIN_KEYS`.
    pub id: String,
    /// Its tenant (`null` for operator keys).
    pub tenant: Option<String>,
    pub role: Role,
    pub name: Option<String>,
    /// `api` (created here) or `env` (from `API_KEYS` / `ADMIN_KEYS`).
    pub source: &'static str,
    pub created_at: Option<String>,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    /// When it was last used, to the minute (written at most once a minute per key and replica).
    pub last_used_at: Option<String>,
    /// Its own events/s, replacing its tenant's for requests with this key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<f64>,
    /// Its own burst (with `rate_limit`; default as `TENANT_BURST`'s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

/// Bounds of a key's own limit (what the rate limiter computes with stays finite and in range).
pub const MIN_RATE: f64 = 0.001;
pub const MAX_RATE: f64 = 1e9;
pub const MAX_BURST: u64 = 1_000_000_000;

/// A key being created.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub tenant: Option<String>,
    pub role: Role,
    pub name: Option<String>,
    pub expires_at_ms: Option<i64>,
    /// Its own rate limit: events/s and, optionally, burst.
    pub rate_limit: Option<(f64, Option<u64>)>,
}

impl NewKey {
    /// A key to create, checked; the error names the field at fault.
    pub fn checked(
        tenant: Option<String>,
        role: Role,
        name: Option<String>,
        expires_at: Option<&str>,
        rate_limit: Option<f64>,
        burst: Option<u64>,
    ) -> Result<Self, String> {
        let rate_limit = match (rate_limit, burst) {
            (None, None) => None,
            (None, Some(_)) => return Err("burst: only with rate_limit".into()),
            (Some(_), _) if role == Role::Operator => {
                return Err("rate_limit: operator keys send no events".into());
            }
            (Some(rate), _) if !(MIN_RATE..=MAX_RATE).contains(&rate) => {
                return Err(format!("rate_limit: must be events/s from {MIN_RATE} to {MAX_RATE}"));
            }
            (Some(_), Some(burst)) if !(1..=MAX_BURST).contains(&burst) => {
                return Err(format!("burst: must be from 1 to {MAX_BURST}"));
            }
            (Some(rate), burst) => Some((rate, burst)),
        };
        match (&tenant, role) {
            (None, Role::Tenant) => return Err("tenant: required for a tenant key".into()),
            (Some(_), Role::Operator) => return Err("tenant: an operator key names no tenant".into()),
            (Some(t), _) if !crate::keys::valid_tenant(t) => {
                return Err("tenant: must be 1 to 64 characters of [A-Za-z0-9_.-]".into());
            }
            _ => {}
        }
        if name.as_ref().is_some_and(|n| n.chars().count() > 128) {
            return Err("name: at most 128 characters".into());
        }
        let expires_at_ms = match expires_at {
            None => None,
            Some(at) => {
                use time::format_description::well_known::Rfc3339;
                let at = time::OffsetDateTime::parse(at, &Rfc3339)
                    .map_err(|_| format!("expires_at: not an RFC 3339 time: {at:?}"))?;
                let ms = (at.unix_timestamp_nanos() / 1_000_000) as i64;
                if ms <= evp_runtime::now_ms() {
                    return Err("expires_at: must be in the future".into());
                }
                Some(ms)
            }
        };
        Ok(Self { tenant, role, name, expires_at_ms, rate_limit })
    }
}

fn rfc3339(t: Option<DateTime>) -> Option<String> {
    t.and_then(|t| t.try_to_rfc3339_string().ok())
}

pub(super) fn info(d: &Document) -> KeyInfo {
    KeyInfo {
        id: d.get_str("_id").unwrap_or_default().to_owned(),
        tenant: d.get_str("tenant").ok().map(str::to_owned),
        role: if d.get_str("role").ok() == Some("operator") { Role::Operator } else { Role::Tenant },
        name: d.get_str("name").ok().map(str::to_owned),
        source: "api",
        created_at: rfc3339(d.get_datetime("created_at").ok().copied()),
        expires_at: rfc3339(d.get_datetime("expires_at").ok().copied()),
        revoked_at: rfc3339(d.get_datetime("revoked_at").ok().copied()),
        last_used_at: rfc3339(d.get_datetime("last_used_at").ok().copied()),
        rate_limit: d.get_f64("rate_limit").ok(),
        burst: d.get_i64("burst").ok().map(|b| b.max(0) as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_limit_stays_in_range() {
        let limit =
            |rate, burst| NewKey::checked(Some("acme".into()), Role::Tenant, None, None, Some(rate), burst);
        assert!(
            limit(5.0, Some(10)).is_ok()
                && limit(MIN_RATE, None).is_ok()
                && limit(MAX_RATE, Some(MAX_BURST)).is_ok()
        );
        for (rate, burst, field) in [
            (5e-324, None, "rate_limit"),
            (0.0, None, "rate_limit"),
            (f64::INFINITY, None, "rate_limit"),
            (2e9, None, "rate_limit"),
            (5.0, Some(0), "burst"),
            (5.0, Some(9_223_372_036_854_775_808), "burst"),
        ] {
            let err = limit(rate, burst).unwrap_err();
            assert!(err.starts_with(field), "{rate} {burst:?}: {err}");
        }
    }
}
