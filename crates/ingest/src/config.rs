//! `evp-ingest` configuration, read once from the environment at start.

use std::time::Duration;

use evp_events::Limits;
use evp_events::data::MAX_EVENT_BYTES_CEILING;
use evp_runtime::config::{CommonConfig, ConfigError, Env, error};
use evp_store::EventIndexes;

use crate::limiters::rate::{Limit, Limits as RateLimits, default_burst};

use crate::keys::{AdminKeys, ApiKeys};

/// Everything the ingest needs to run. Defaults are the contract's (see the README's table).
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// `REDIS_URL`, `MONGODB_URI` (reported by `/health`), `MONGODB_DATABASE`, `EVENTS_STREAM`,
    /// `LOG_FORMAT`.
    pub common: CommonConfig,
    /// `PORT`, default 3000.
    pub port: u16,
    /// `API_KEYS`, default none: comma-separated `tenant:key` pairs; a bare key is tenant `default`.
    pub api_keys: ApiKeys,
    /// `ADMIN_KEYS`, default empty: operator keys for `/admin/*` and the dashboard.
    pub admin_keys: AdminKeys,
    /// `CONSUMER_GROUP`, default `evp-workers-group`: the workers' group, whose pending entries,
    /// lag and consumers analytics reports.
    pub group: String,
    /// `REDIS_WAIT_REPLICAS`, default 0: replicas that must confirm appended entries (Redis
    /// `WAIT`) before a 202.
    pub wait_replicas: u32,
    /// `STREAM_HIGH_WATER`, default 1,000,000: backlog (summed over the partitions) at which
    /// requests get 503.
    pub stream_high_water: u64,
    /// `KEY_REFRESH_MS`, default 2,000: how often each replica reloads the keys created at runtime.
    pub key_refresh: Duration,
    /// `SUBSCRIPTION_ACK_TIMEOUT_MS`, default 30,000: a subscription's delivery not acknowledged
    /// within this is redelivered, and a consumer not heard from within it lets its partitions go.
    pub subscription_ack_timeout: Duration,
    /// `CURSOR_SECRET`: the page cursors' signing secret; unset, one is generated once and kept in
    /// MongoDB for every replica.
    pub cursor_secret: Option<String>,
    /// `TENANT_BACKLOG_SHARE`, default 0.5: the largest share of `STREAM_HIGH_WATER` one tenant's
    /// unstored events may hold (then 429), in (0, 1].
    pub tenant_backlog_share: f64,
    /// `MAX_EVENT_BYTES` (65,536) and `MAX_BATCH_EVENTS` (1,000).
    pub limits: Limits,
    /// `MAX_BODY_BYTES`, default 5,242,880, applied to the body after gzip decompression too.
    pub max_body_bytes: usize,
    /// `HTTP_HEADER_TIMEOUT_MS` (10,000) and `HTTP_IDLE_TIMEOUT_MS` (60,000): how long a
    /// connection may take to send a request head, and sit idle between requests.
    pub timeouts: crate::connections::Timeouts,
    /// `HTTP_BODY_TIMEOUT_MS`, default 30,000: the longest a request body may take to arrive
    /// (then 408).
    pub body_timeout: Duration,
    /// `MAX_CONNECTIONS`, default the open-files limit less 256: connections open at once.
    pub max_connections: usize,
    /// `TENANT_RATE_LIMIT` (events/s, 0 = none), `TENANT_BURST` (default the larger of one second
    /// of the rate and `MAX_BATCH_EVENTS`), `TENANT_LIMITS` (`tenant=rate[:burst]`, comma-separated).
    pub rate_limits: RateLimits,
    /// `MAX_PAGE_BYTES`, default 4 MiB: a page ends early (with `next_cursor`) before its JSON
    /// passes this.
    pub max_page_bytes: usize,
    /// `READ_CONCURRENCY_PER_TENANT`, default 4: one tenant's reads in progress on this replica.
    pub read_concurrency_per_tenant: usize,
    /// `TENANT_MAX_TYPES`, default 1,000: distinct event types per tenant.
    pub tenant_max_types: usize,
    /// `EVENT_INDEXES`, default [`EventIndexes::DEFAULT`]: the `GET /events` filters served by an
    /// index; any other filter is refused with 400.
    pub event_indexes: EventIndexes,
    /// `TOKIO_WORKER_THREADS`, default the number of CPUs: server threads, each serving its share of
    /// the connections on a single-threaded runtime ([`crate::shards`]).
    pub threads: usize,
    /// Longest a request waits on Redis before it gets 503 (not an env variable).
    pub redis_timeout: Duration,
    /// How often the stream backlog is sampled for the high-water check (not an env variable).
    pub backlog_poll: Duration,
    /// Longest the shutdown waits for in-flight requests (not an env variable).
    pub drain_timeout: Duration,
}

impl IngestConfig {
    pub const DEFAULT_HIGH_WATER: u64 = 1_000_000;

    /// Reads and validates every variable; the first bad one is the error.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let api_keys = ApiKeys::parse(&env.string("API_KEYS", "")).map_err(|m| error("API_KEYS", m))?;
        let limits = Limits {
            max_event_bytes: env.positive("MAX_EVENT_BYTES", 65_536)?,
            max_batch_events: env.positive("MAX_BATCH_EVENTS", 1_000)?,
        };
        if limits.max_event_bytes > MAX_EVENT_BYTES_CEILING {
            return Err(error(
                "MAX_EVENT_BYTES",
                format!(
                    "must be at most {MAX_EVENT_BYTES_CEILING}: a larger event could exceed MongoDB's 16 MiB \
                     document limit once encoded as BSON"
                ),
            ));
        }
        let rate_limits = rate_limits(env, limits.max_batch_events as u64)?;
        Ok(Self {
            rate_limits,
            common: CommonConfig::from_env(env)?,
            port: env.parse("PORT", 3000)?,
            admin_keys: AdminKeys::parse(&env.string("ADMIN_KEYS", ""), &api_keys)
                .map_err(|m| error("ADMIN_KEYS", m))?,
            api_keys,
            group: env.string("CONSUMER_GROUP", "evp-workers-group"),
            wait_replicas: env.parse("REDIS_WAIT_REPLICAS", 0)?,
            stream_high_water: env.positive("STREAM_HIGH_WATER", Self::DEFAULT_HIGH_WATER)?,
            key_refresh: positive_ms(env, "KEY_REFRESH_MS", 2_000)?,
            subscription_ack_timeout: positive_ms(env, "SUBSCRIPTION_ACK_TIMEOUT_MS", 30_000)?,
            cursor_secret: match env.get("CURSOR_SECRET") {
                Some(s) if s.len() < 16 => {
                    return Err(error(
                        "CURSOR_SECRET",
                        "must be at least 16 characters (32 random bytes in hex are best)",
                    ));
                }
                other => other,
            },
            tenant_backlog_share: match env.parse("TENANT_BACKLOG_SHARE", 0.5f64)? {
                share if share > 0.0 && share <= 1.0 => share,
                _ => {
                    return Err(error(
                        "TENANT_BACKLOG_SHARE",
                        "must be a share above 0 and at most 1, such as 0.5",
                    ));
                }
            },
            limits,
            max_body_bytes: env.positive("MAX_BODY_BYTES", 5_242_880)?,
            event_indexes: env.parse("EVENT_INDEXES", EventIndexes::default())?,
            tenant_max_types: env.positive("TENANT_MAX_TYPES", 1_000)?,
            read_concurrency_per_tenant: env.positive("READ_CONCURRENCY_PER_TENANT", 4)?,
            max_page_bytes: env.positive("MAX_PAGE_BYTES", 4_194_304)?,
            timeouts: crate::connections::Timeouts {
                header: positive_ms(env, "HTTP_HEADER_TIMEOUT_MS", 10_000)?,
                idle: positive_ms(env, "HTTP_IDLE_TIMEOUT_MS", 60_000)?,
            },
            body_timeout: positive_ms(env, "HTTP_BODY_TIMEOUT_MS", 30_000)?,
            max_connections: env
                .positive("MAX_CONNECTIONS", crate::connections::default_max_connections())?,
            threads: env.positive("TOKIO_WORKER_THREADS", default_threads())?,
            redis_timeout: Duration::from_secs(2),
            backlog_poll: Duration::from_millis(250),
            drain_timeout: Duration::from_secs(25),
        })
    }

    /// The most unstored events one tenant may have: `TENANT_BACKLOG_SHARE` of `STREAM_HIGH_WATER`.
    pub fn tenant_backlog_limit(&self) -> u64 {
        ((self.stream_high_water as f64 * self.tenant_backlog_share) as u64).max(1)
    }

    /// A config for tests: the given servers and keys, contract defaults for the rest.
    pub fn for_test(redis_url: &str, mongodb_uri: &str, api_keys: &str) -> Self {
        let env =
            Env::from_pairs([("API_KEYS", api_keys), ("REDIS_URL", redis_url), ("MONGODB_URI", mongodb_uri)]);
        let mut config = Self::from_env(&env).expect("test config");
        config.redis_timeout = Duration::from_millis(500);
        config.backlog_poll = Duration::from_millis(50);
        // More than one, whatever the machine, so every test crosses threads.
        config.threads = 2;
        config
    }
}

/// `TENANT_RATE_LIMIT`, `TENANT_BURST`, `TENANT_LIMITS`.
fn rate_limits(env: &Env, max_batch: u64) -> Result<RateLimits, ConfigError> {
    let rate: f64 = env.parse("TENANT_RATE_LIMIT", 0.0)?;
    if !rate.is_finite() || rate < 0.0 {
        return Err(error("TENANT_RATE_LIMIT", "must be a number of events/s, 0 for no limit"));
    }
    let burst: Option<u64> = env.get("TENANT_BURST").map(|_| env.positive("TENANT_BURST", 1)).transpose()?;
    let default =
        (rate > 0.0).then(|| Limit { rate, burst: burst.unwrap_or(default_burst(rate, max_batch)) });
    let per_tenant = RateLimits::parse_overrides(&env.string("TENANT_LIMITS", ""), max_batch)
        .map_err(|m| error("TENANT_LIMITS", m))?;
    Ok(RateLimits { default, per_tenant })
}

/// A duration in milliseconds, greater than zero.
fn positive_ms(env: &Env, name: &str, default_ms: u64) -> Result<Duration, ConfigError> {
    env.positive(name, default_ms).map(Duration::from_millis)
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_contract() {
        let c = IngestConfig::from_env(&Env::from_pairs([("API_KEYS", "k")])).unwrap();
        assert_eq!(c.port, 3000);
        assert_eq!(
            (c.limits.max_event_bytes, c.limits.max_batch_events, c.max_body_bytes),
            (65_536, 1_000, 5_242_880)
        );
        assert_eq!(c.stream_high_water, IngestConfig::DEFAULT_HIGH_WATER);
        assert_eq!(c.tenant_backlog_share, 0.5);
        assert_eq!(c.tenant_backlog_limit(), IngestConfig::DEFAULT_HIGH_WATER / 2);
        assert_eq!((c.timeouts.header, c.timeouts.idle), (Duration::from_secs(10), Duration::from_secs(60)));
        assert_eq!(c.body_timeout, Duration::from_secs(30));
        assert_eq!(c.max_connections, crate::connections::default_max_connections());
        assert_eq!(c.tenant_max_types, 1_000);
        assert_eq!(c.read_concurrency_per_tenant, 4);
        assert_eq!(c.max_page_bytes, 4_194_304);
        assert_eq!(c.rate_limits, RateLimits::default(), "no limit unless asked");
        let limited =
            IngestConfig::from_env(&Env::from_pairs([("API_KEYS", "k"), ("TENANT_RATE_LIMIT", "5000")]));
        let default = limited.unwrap().rate_limits.default.unwrap();
        assert_eq!((default.rate, default.burst), (5000.0, 5000), "burst: one second of the rate");
        assert_eq!(c.threads, std::thread::available_parallelism().unwrap().get());
        let one =
            IngestConfig::from_env(&Env::from_pairs([("API_KEYS", "k"), ("TOKIO_WORKER_THREADS", "1")]));
        assert_eq!(one.unwrap().threads, 1);
    }

    #[test]
    fn bad_values_name_their_variable() {
        let bad = |k: &str, v: &str| {
            let mut pairs = vec![("API_KEYS", "k")];
            pairs.push((k, v));
            IngestConfig::from_env(&Env::from_pairs(pairs)).unwrap_err().variable
        };
        assert_eq!(bad("PORT", "http"), "PORT");
        assert_eq!(bad("MAX_BATCH_EVENTS", "0"), "MAX_BATCH_EVENTS");
        assert_eq!(bad("MAX_EVENT_BYTES", "2097153"), "MAX_EVENT_BYTES");
        assert_eq!(bad("LOG_FORMAT", "xml"), "LOG_FORMAT");
        assert_eq!(bad("MONGODB_URI", "postgres://x"), "MONGODB_URI");
        assert_eq!(bad("API_KEYS", "a:b:c"), "API_KEYS");
        assert_eq!(bad("TOKIO_WORKER_THREADS", "0"), "TOKIO_WORKER_THREADS");
        assert_eq!(bad("TOKIO_WORKER_THREADS", "all"), "TOKIO_WORKER_THREADS");
        assert_eq!(bad("EVENT_INDEXES", "type,data"), "EVENT_INDEXES");
        assert_eq!(bad("TENANT_MAX_TYPES", "0"), "TENANT_MAX_TYPES");
        assert_eq!(bad("HTTP_HEADER_TIMEOUT_MS", "0"), "HTTP_HEADER_TIMEOUT_MS");
        assert_eq!(bad("HTTP_BODY_TIMEOUT_MS", "soon"), "HTTP_BODY_TIMEOUT_MS");
        assert_eq!(bad("MAX_CONNECTIONS", "-1"), "MAX_CONNECTIONS");
        assert_eq!(bad("TENANT_RATE_LIMIT", "-5"), "TENANT_RATE_LIMIT");
        assert_eq!(bad("TENANT_BURST", "0"), "TENANT_BURST");
        assert_eq!(bad("TENANT_LIMITS", "acme"), "TENANT_LIMITS");
        assert_eq!(bad("TENANT_BACKLOG_SHARE", "0"), "TENANT_BACKLOG_SHARE");
        assert_eq!(bad("TENANT_BACKLOG_SHARE", "1.5"), "TENANT_BACKLOG_SHARE");
        assert_eq!(bad("TENANT_BACKLOG_SHARE", "half"), "TENANT_BACKLOG_SHARE");
        assert_eq!(bad("CURSOR_SECRET", "short"), "CURSOR_SECRET");
        assert_eq!(bad("KEY_REFRESH_MS", "0"), "KEY_REFRESH_MS");
        let keyless = IngestConfig::from_env(&Env::from_pairs::<[(&str, &str); 0], _, _>([])).unwrap();
        assert!(keyless.api_keys.tenants().next().is_none(), "no API_KEYS: keys are made at runtime");
    }
}
