//! API keys (`API_KEYS`): which key belongs to which tenant.
//!
//! Keys are compared in constant time, and every configured key is compared on every request, so
//! response timing says nothing about how much of a guess was right or which key it was near.
//! Nothing here knows about requests or state, so configuration can use it without a cycle.

use std::sync::Arc;

use subtle::ConstantTimeEq;

/// Header carrying the API key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Tenant that a bare key (no `tenant:` prefix) belongs to.
pub const DEFAULT_TENANT: &str = "default";

/// Whether `tenant` is a tenant name: 1 to 64 characters of `[A-Za-z0-9_.-]`.
pub fn valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 64
        && tenant.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The configured keys and their tenants.
#[derive(Clone)]
pub struct ApiKeys {
    keys: Vec<(Vec<u8>, Arc<str>)>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the keys themselves.
        let tenants: Vec<&str> = self.keys.iter().map(|(_, t)| &**t).collect();
        f.debug_struct("ApiKeys").field("tenants", &tenants).finish()
    }
}

impl ApiKeys {
    /// Parses `API_KEYS`: comma-separated `tenant:key` pairs or bare keys.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut keys: Vec<(Vec<u8>, Arc<str>)> = Vec::new();
        if raw.trim().is_empty() {
            return Ok(Self { keys }); // none: keys are made at runtime (`/admin/keys`, `evp-ingest keys`)
        }
        for (n, item) in raw.split(',').map(str::trim).enumerate() {
            let position = n + 1;
            if item.is_empty() {
                return Err(format!("entry {position} is empty"));
            }
            let (tenant, key) = match item.split_once(':') {
                Some((tenant, key)) => (tenant.trim(), key.trim()),
                None => (DEFAULT_TENANT, item),
            };
            if key.is_empty() || key.contains(':') {
                return Err(format!("entry {position}: expected tenant:key or key"));
            }
            if !valid_tenant(tenant) {
                return Err(format!("entry {position}: tenant must be 1 to 64 characters of [A-Za-z0-9_.-]"));
            }
            if keys.iter().any(|(k, _)| k.as_slice() == key.as_bytes()) {
                return Err(format!("entry {position}: the same key is listed twice"));
            }
            keys.push((key.as_bytes().to_vec(), Arc::from(tenant)));
        }
        Ok(Self { keys })
    }

    /// Each key's tenant, in `API_KEYS` order (never the keys).
    pub fn tenants(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(_, tenant)| &**tenant)
    }

    /// The tenant of `candidate`, if it is a configured key.
    pub fn tenant_of(&self, candidate: &[u8]) -> Option<Arc<str>> {
        let mut found = None;
        for (key, tenant) in &self.keys {
            if bool::from(key.as_slice().ct_eq(candidate)) {
                found = Some(tenant.clone());
            }
        }
        found
    }
}

/// Operator keys (`ADMIN_KEYS`): they open `/admin/*`, the dashboard's operator panels, and
/// analytics over every tenant; they name no tenant.
#[derive(Clone, Default)]
pub struct AdminKeys {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for AdminKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminKeys").field("count", &self.keys.len()).finish()
    }
}

impl AdminKeys {
    /// Parses `ADMIN_KEYS`: comma-separated keys (empty: no operator key); none may also be an
    /// API key.
    pub fn parse(raw: &str, api_keys: &ApiKeys) -> Result<Self, String> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        if raw.trim().is_empty() {
            return Ok(Self { keys });
        }
        for (n, key) in raw.split(',').map(str::trim).enumerate() {
            let position = n + 1;
            if key.is_empty() {
                return Err(format!("entry {position} is empty"));
            }
            if api_keys.tenant_of(key.as_bytes()).is_some() {
                return Err(format!(
                    "entry {position} is also in API_KEYS: a key is either a tenant's or an operator's"
                ));
            }
            keys.push(key.as_bytes().to_vec());
        }
        Ok(Self { keys })
    }

    /// Whether `candidate` is an operator key (compared in constant time against every key).
    pub fn contains(&self, candidate: &[u8]) -> bool {
        self.position(candidate).is_some()
    }

    /// Which operator key `candidate` is (0-based, in `ADMIN_KEYS` order), compared in constant
    /// time against every key.
    pub fn position(&self, candidate: &[u8]) -> Option<usize> {
        let mut found = None;
        for (n, key) in self.keys.iter().enumerate() {
            if bool::from(key.as_slice().ct_eq(candidate)) {
                found = Some(n);
            }
        }
        found
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_and_bare_keys() {
        let keys = ApiKeys::parse("acme:k1, globex:k2 ,k3").unwrap();
        assert_eq!(keys.tenant_of(b"k1").as_deref(), Some("acme"));
        assert_eq!(keys.tenant_of(b"k2").as_deref(), Some("globex"));
        assert_eq!(keys.tenant_of(b"k3").as_deref(), Some(DEFAULT_TENANT));
        assert_eq!(keys.tenant_of(b"k"), None);
        assert_eq!(keys.tenant_of(b"k11"), None);
        assert_eq!(keys.tenant_of(b""), None);
    }

    #[test]
    fn refuses_malformed_lists() {
        assert!(ApiKeys::parse(" ").unwrap().tenants().next().is_none(), "no keys at all is allowed");
        for bad in ["a:", ":k", "a:b:c", "k,,j", "bad tenant:k", "a:k,b:k"] {
            assert!(ApiKeys::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn admin_keys_are_their_own() {
        let api = ApiKeys::parse("acme:k1").unwrap();
        let admin = AdminKeys::parse(" ops1 , ops2", &api).unwrap();
        assert!(admin.contains(b"ops1") && admin.contains(b"ops2") && !admin.contains(b"k1"));
        assert!(!AdminKeys::parse("", &api).unwrap().contains(b""));
        assert!(AdminKeys::parse("k1", &api).is_err(), "an API key cannot be an operator key");
        assert!(AdminKeys::parse("a,,b", &api).is_err());
    }

    #[test]
    fn debug_output_hides_keys() {
        let keys = ApiKeys::parse("acme:supersecret").unwrap();
        assert!(!format!("{keys:?}").contains("supersecret"));
    }
}
