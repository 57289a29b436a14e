//! `TENANT_RATE_LIMIT`, `TENANT_BURST`, `TENANT_LIMITS`: each tenant's events per second, held
//! across every ingest replica.
//!
//! # How the limit holds across replicas
//!
//! The tenant's bucket lives in Redis, one key per tenant (`<EVENTS_STREAM>:rate:<tenant>`), as a
//! GCRA state (its theoretical arrival time, on Redis's own clock, so replicas' clocks do not
//! matter): it refills at `rate` events/s up to `burst`. A replica does not ask it for every
//! request: it **leases** tokens in chunks (a tenth of a second of the rate, at least the events
//! of the request in hand) with one script call, keeps them in memory and spends them on the
//! tenant's next requests. So Redis sees about ten calls per second per busy tenant and replica,
//! whatever the request rate, and none for a tenant with leased tokens left.
//!
//! How close it gets: Redis never grants more than `burst + rate × t` tokens in any `t` seconds,
//! so the tenant's accepted events never exceed that, over all replicas together. Tokens a replica
//! leased and has not spent yet (at most one chunk per replica) are not lost, only late: they are
//! spent on that replica's next requests. Between two replicas that both see traffic, the accepted
//! rate is the limit, give or take one chunk per replica per second (a tenth of the rate each).
//! When Redis refuses, the replica answers 429 by itself until the time Redis named, so a tenant
//! flooding at ten times its limit costs Redis no more calls than one at its limit.
//!
//! A refused request enqueues nothing: the batch counts all its events and is refused whole.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use evp_runtime::redis_conn::RedisConn;
use tokio::time::Instant;

/// One tenant's limit: events per second and the most it may send at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub rate: f64,
    pub burst: u64,
}

/// A key's own limit (made with `/admin/keys`), which replaces its tenant's for requests sent
/// with that key: its bucket is the key's, `key:<id>` (no tenant name holds ':').
#[derive(Debug, Clone, PartialEq)]
pub struct KeyLimit {
    pub bucket: Arc<str>,
    pub limit: Limit,
}

/// Every tenant's limit: `TENANT_RATE_LIMIT`/`TENANT_BURST` for all, `TENANT_LIMITS` for some.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// `None`: no limit unless the tenant has its own.
    pub default: Option<Limit>,
    pub per_tenant: HashMap<String, Limit>,
}

impl Limits {
    /// The limit of `tenant`, if any.
    pub fn of(&self, tenant: &str) -> Option<Limit> {
        self.per_tenant.get(tenant).copied().or(self.default)
    }

    /// Parses `TENANT_LIMITS`: comma-separated `tenant=rate[:burst]`; a missing burst is the
    /// larger of one second of the rate and `min_burst` (`MAX_BATCH_EVENTS`).
    pub fn parse_overrides(raw: &str, min_burst: u64) -> Result<HashMap<String, Limit>, String> {
        let mut out = HashMap::new();
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (tenant, limit) =
                item.split_once('=').ok_or_else(|| format!("{item:?}: expected tenant=rate[:burst]"))?;
            let (rate, burst) = match limit.split_once(':') {
                Some((rate, burst)) => (rate, Some(burst)),
                None => (limit, None),
            };
            let rate: f64 = rate
                .trim()
                .parse()
                .ok()
                .filter(|r: &f64| r.is_finite() && *r > 0.0)
                .ok_or_else(|| format!("{item:?}: the rate must be a number of events/s above 0"))?;
            let burst = match burst {
                Some(b) => b
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|b| *b > 0)
                    .ok_or_else(|| format!("{item:?}: the burst must be a whole number above 0"))?,
                None => default_burst(rate, min_burst),
            };
            if out.insert(tenant.trim().to_string(), Limit { rate, burst }).is_some() {
                return Err(format!("tenant {:?} is listed twice", tenant.trim()));
            }
        }
        Ok(out)
    }
}

/// The burst when none is given: one second of the rate, and at least a full batch.
pub fn default_burst(rate: f64, min_burst: u64) -> u64 {
    (rate.ceil() as u64).max(min_burst)
}

/// Takes tokens from the bucket `KEYS[1]` (GCRA: `rate` = ARGV[1] events/s, `burst` = ARGV[2]):
/// at least ARGV[3] (the request's events) and up to ARGV[4] (a chunk). Returns
/// `{granted, retry_after_ms}`: granted 0 means refused, retry_after_ms when it would fit (-1:
/// never, the request is larger than the burst).
const LEASE: &str = r"
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local need, want = tonumber(ARGV[3]), tonumber(ARGV[4])
if need > burst then return {0, -1} end
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
local interval = 1000 / rate
local tolerance = burst * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local available = math.floor((tolerance - (tat - now)) / interval + 1e-9)
if available < need then
  return {0, math.ceil((need - available) * interval)}
end
local granted = math.min(math.max(need, want), available)
tat = tat + granted * interval
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil(tat - now + tolerance) + 1000)
return {granted, 0}
";

/// A refusal: how long until the request would fit (`None`: never, it is larger than the burst).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refused {
    pub limit: Limit,
    pub retry_after: Option<Duration>,
}

/// What this replica holds for one tenant.
#[derive(Debug, Default)]
struct Held {
    tokens: u64,
    /// Redis refused until then: refuse without asking.
    refused_until: Option<(Instant, Limit)>,
}

/// The per-tenant rate limiter of one process (shared by its server threads).
#[derive(Clone, Debug)]
pub struct RateLimiter {
    limits: Arc<Limits>,
    prefix: String,
    script: Arc<redis::Script>,
    held: Arc<Mutex<HashMap<Arc<str>, Held>>>,
}

/// Why the limit could not be checked (Redis).
#[derive(Debug, thiserror::Error)]
#[error("the rate limit could not be checked: {0}")]
pub struct Unchecked(#[from] pub redis::RedisError);

impl RateLimiter {
    pub fn new(limits: Limits, stream: &str) -> Self {
        Self {
            limits: Arc::new(limits),
            prefix: format!("{stream}:rate:"),
            script: Arc::new(redis::Script::new(LEASE)),
            held: Arc::default(),
        }
    }

    /// The limit of `tenant`, if any.
    pub fn limit_of(&self, tenant: &str) -> Option<Limit> {
        self.limits.of(tenant)
    }

    /// Takes `events` tokens of `tenant`'s bucket: `Ok(Ok(()))` to admit, `Ok(Err(refused))` for a
    /// 429. From memory while this replica holds enough; else one script call.
    pub async fn take(
        &self,
        conn: &RedisConn,
        tenant: &Arc<str>,
        events: u64,
    ) -> Result<Result<(), Refused>, Unchecked> {
        self.take_for(conn, tenant, self.limits.of(tenant), events).await
    }

    /// The same for a key with its own limit: its own bucket, its own rate and burst.
    pub async fn take_for_key(
        &self,
        conn: &RedisConn,
        key: &KeyLimit,
        events: u64,
    ) -> Result<Result<(), Refused>, Unchecked> {
        self.take_for(conn, &key.bucket, Some(key.limit), events).await
    }

    /// Takes `events` tokens of `bucket`, limited by `limit` (none: always admitted).
    async fn take_for(
        &self,
        conn: &RedisConn,
        tenant: &Arc<str>,
        limit: Option<Limit>,
        events: u64,
    ) -> Result<Result<(), Refused>, Unchecked> {
        let Some(limit) = limit else { return Ok(Ok(())) };
        {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            let mine = held.entry(tenant.clone()).or_default();
            if mine.tokens >= events {
                mine.tokens -= events;
                return Ok(Ok(()));
            }
            if let Some((until, seen)) = mine.refused_until {
                let now = Instant::now();
                if now < until && seen == limit {
                    return Ok(Err(Refused { limit, retry_after: Some(until - now) }));
                }
                mine.refused_until = None;
            }
        }
        let chunk = ((limit.rate / 10.0).ceil() as u64).clamp(1, limit.burst);
        let mut invocation = self.script.key(format!("{}{tenant}", self.prefix));
        invocation.arg(limit.rate).arg(limit.burst).arg(events).arg(chunk);
        let (granted, retry_ms): (u64, i64) = invocation.invoke_async(&mut conn.clone()).await?;
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let mine = held.entry(tenant.clone()).or_default();
        if granted >= events {
            mine.tokens += granted - events;
            return Ok(Ok(()));
        }
        if retry_ms < 0 {
            return Ok(Err(Refused { limit, retry_after: None }));
        }
        let retry_after = Duration::from_millis(retry_ms.max(1) as u64);
        mine.refused_until = Some((Instant::now() + retry_after, limit));
        Ok(Err(Refused { limit, retry_after: Some(retry_after) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_and_name_what_is_wrong() {
        let parsed = Limits::parse_overrides("acme=100, globex=2.5:10", 1000).unwrap();
        assert_eq!(parsed["acme"], Limit { rate: 100.0, burst: 1000 }, "burst defaults to a full batch");
        assert_eq!(parsed["globex"], Limit { rate: 2.5, burst: 10 });
        assert!(Limits::parse_overrides("", 1000).unwrap().is_empty());
        for bad in ["acme", "acme=0", "acme=fast", "acme=10:0", "a=1,a=2"] {
            assert!(Limits::parse_overrides(bad, 1000).is_err(), "{bad}");
        }
        assert_eq!(default_burst(5000.0, 1000), 5000);
        assert_eq!(default_burst(10.0, 1000), 1000);
    }

    #[test]
    fn a_tenant_of_its_own_overrides_the_default() {
        let limits = Limits {
            default: Some(Limit { rate: 10.0, burst: 10 }),
            per_tenant: [("vip".to_string(), Limit { rate: 1000.0, burst: 1000 })].into(),
        };
        assert_eq!(limits.of("vip").unwrap().rate, 1000.0);
        assert_eq!(limits.of("anyone").unwrap().rate, 10.0);
        assert_eq!(Limits::default().of("anyone"), None);
    }
}
