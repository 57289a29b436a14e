//! `evp-worker` configuration, read once from the environment at start.

use std::time::Duration;

use evp_runtime::config::{CommonConfig, ConfigError, Env, error};
use evp_store::EventIndexes;

/// `CONSUMER_GROUP`'s default.
pub const DEFAULT_GROUP: &str = "evp-workers-group";

/// Everything a worker needs. Defaults are listed in the README.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `REDIS_URL`, `MONGODB_URI`, `MONGODB_DATABASE`, `EVENTS_STREAM`, `LOG_FORMAT`.
    pub common: CommonConfig,
    /// `CONSUMER_GROUP`, default `evp-workers-group`.
    pub group: String,
    /// `CONSUMER_NAME`, else `RAILWAY_REPLICA_ID`, else `HOSTNAME`, else a generated unique name.
    pub consumer: String,
    /// `WORKER_PORT`, default 9100; `0` turns the health and metrics listener off.
    pub port: u16,
    /// `WORKER_BATCH_SIZE`: entries per XREADGROUP and per MongoDB bulk write.
    pub batch_size: usize,
    /// `WORKER_MAX_INFLIGHT`: bulk writes in flight at once; no entry is read beyond them.
    pub max_inflight: usize,
    /// `WORKER_BLOCK_MS`: XREADGROUP block time (also bounds how long shutdown waits for a read).
    pub block: Duration,
    /// `WORKER_CLAIM_IDLE_MS`, default 30,000: idle time after which a pending entry is claimed.
    pub claim_idle: Duration,
    /// `WORKER_MAX_DELIVERIES`, default 5: deliveries after which an entry is dead-lettered.
    pub max_deliveries: u64,
    /// Longest shutdown waits for in-flight writes (MongoDB down) before leaving them pending.
    pub shutdown_grace: Duration,
    /// How often acknowledged entries are trimmed and the group gauges refreshed.
    pub trim_every: Duration,
    /// First and largest delay between retries of a failed write.
    pub backoff: (Duration, Duration),
    /// `LEASE_TTL_MS`, default 10,000: the rollup leader's lease.
    pub lease_ttl: Duration,
    /// `ROLLUP_MAX_LAG_S`, default 60: rollup lag past which health reports `degraded`.
    pub rollup_max_lag: Duration,
    /// `EVENT_INDEXES`, default [`EventIndexes::DEFAULT`]: the listing filters given an index.
    pub event_indexes: EventIndexes,
    /// `EVP_TEST_PANIC_ON_EVENT_ID`, for tests only: a batch holding this event id panics.
    pub test_panic_on_event_id: Option<String>,
}

impl WorkerConfig {
    pub const DEFAULT_BATCH_SIZE: usize = 500;
    pub const DEFAULT_MAX_INFLIGHT: usize = 4;
    pub const DEFAULT_BLOCK_MS: u64 = 1_000;

    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let consumer = env
            .get("CONSUMER_NAME")
            .or_else(|| env.get("RAILWAY_REPLICA_ID"))
            .or_else(|| env.get("HOSTNAME"))
            .unwrap_or_else(|| format!("evp-worker-{}", uuid::Uuid::now_v7().simple()));
        let batch_size = env.positive("WORKER_BATCH_SIZE", Self::DEFAULT_BATCH_SIZE)?;
        if batch_size > 10_000 {
            return Err(error("WORKER_BATCH_SIZE", "must be at most 10000"));
        }
        let claim_idle = env.millis("WORKER_CLAIM_IDLE_MS", 30_000)?;
        if claim_idle < Duration::from_millis(100) {
            return Err(error("WORKER_CLAIM_IDLE_MS", "must be at least 100"));
        }
        let lease_ttl = env.millis("LEASE_TTL_MS", 10_000)?;
        if lease_ttl < Duration::from_millis(300) {
            return Err(error("LEASE_TTL_MS", "must be at least 300"));
        }
        Ok(Self {
            lease_ttl,
            rollup_max_lag: Duration::from_secs(env.positive("ROLLUP_MAX_LAG_S", 60)?),
            common: CommonConfig::from_env(env)?,
            group: env.string("CONSUMER_GROUP", DEFAULT_GROUP),
            consumer,
            port: env.parse("WORKER_PORT", 9100)?,
            batch_size,
            max_inflight: env.positive("WORKER_MAX_INFLIGHT", Self::DEFAULT_MAX_INFLIGHT)?,
            block: env.millis("WORKER_BLOCK_MS", Self::DEFAULT_BLOCK_MS)?,
            claim_idle,
            max_deliveries: env.positive("WORKER_MAX_DELIVERIES", 5)?,
            shutdown_grace: Duration::from_secs(20),
            trim_every: Duration::from_secs(1),
            backoff: (Duration::from_millis(100), Duration::from_secs(5)),
            event_indexes: env.parse("EVENT_INDEXES", EventIndexes::default())?,
            test_panic_on_event_id: env.get("EVP_TEST_PANIC_ON_EVENT_ID"),
        })
    }

    /// How often a batch in flight renews its claim on its entries, so that no other worker
    /// takes them over while it is still writing (say, while MongoDB is down).
    pub fn lease_renewal(&self) -> Duration {
        (self.claim_idle / 3).max(Duration::from_millis(50))
    }

    /// How often idle pending entries are looked for.
    pub fn reclaim_every(&self) -> Duration {
        (self.claim_idle / 2).clamp(Duration::from_millis(50), Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<WorkerConfig, ConfigError> {
        WorkerConfig::from_env(&Env::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = config(&[]).unwrap();
        assert_eq!(c.group, "evp-workers-group");
        assert!(c.consumer.starts_with("evp-worker-"));
        assert_eq!(c.port, 9100);
        assert_eq!(c.claim_idle, Duration::from_secs(30));
        assert_eq!(c.max_deliveries, 5);
        assert_eq!(c.batch_size, WorkerConfig::DEFAULT_BATCH_SIZE);
    }

    #[test]
    fn consumer_name_falls_back_in_order() {
        let all = [("CONSUMER_NAME", "a"), ("RAILWAY_REPLICA_ID", "b"), ("HOSTNAME", "c")];
        assert_eq!(config(&all).unwrap().consumer, "a");
        assert_eq!(config(&all[1..]).unwrap().consumer, "b");
        assert_eq!(config(&all[2..]).unwrap().consumer, "c");
        assert_ne!(
            config(&[]).unwrap().consumer,
            config(&[]).unwrap().consumer,
            "generated names are unique"
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (k, v) in [
            ("WORKER_BATCH_SIZE", "0"),
            ("WORKER_BATCH_SIZE", "many"),
            ("WORKER_MAX_INFLIGHT", "0"),
            ("WORKER_CLAIM_IDLE_MS", "10"),
            ("WORKER_MAX_DELIVERIES", "0"),
            ("WORKER_PORT", "99999"),
            ("LEASE_TTL_MS", "100"),
            ("ROLLUP_MAX_LAG_S", "0"),
            ("REDIS_URL", "nope"),
        ] {
            assert_eq!(config(&[(k, v)]).unwrap_err().variable, k, "{k}={v}");
        }
    }
}
