//! The pipeline's state for `GET /analytics/metrics`: what an operator sees of the stream and the
//! worker group, and what a tenant sees of its own events.
//!
//! - [`Pipeline`] reads every partition's stream and group from Redis, and each tenant's appended
//!   and stored totals ([`evp_runtime::unstored`]).
//! - [`RateSampler`] keeps one sample a second of Redis's own counters (`entries-added`, the
//!   group's `entries-read`) and of the tenants' totals, so the rates over the last 10 s cost no
//!   write on the hot path.
//! - [`PipelineState`] is the answer's `pipeline`: for a tenant key only that tenant's rates and
//!   events not yet stored; stream length, pending, lag, dead letters and consumers only for
//!   operator keys.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evp_runtime::partitions::Partitions;
use evp_runtime::redis_conn::{RedisConn, RedisTarget};
use evp_runtime::stream_state::{self, ConsumerState, EntryId, Snapshot};
use evp_runtime::unstored::{self, Keys};
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// The window of the rates.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// The pipeline as the key's holder may see it. Rates are events/s over the last 10 s.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PipelineState {
    /// Events appended and not yet stored: the tenant's own with a tenant key, every tenant's
    /// with an operator key.
    pub unstored: u64,
    /// Events/s appended to the stream: the tenant's own, or every tenant's.
    pub ingest_rate: f64,
    /// Events/s stored (a tenant's), or read by the workers (every tenant's).
    pub processing_rate: f64,
    /// Operator keys only: entries in the stream (acknowledged ones are trimmed within a second or so).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_length: Option<u64>,
    /// Operator keys only: entries delivered to workers and not yet acknowledged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,
    /// Operator keys only: entries not yet delivered to any worker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// Operator keys only: entries in the dead-letter streams.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<u64>,
    /// Operator keys only: the workers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumers: Option<Vec<Consumer>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Consumer {
    pub name: String,
    pub pending: u64,
    pub idle_ms: u64,
}

/// One sample of Redis's counters.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    added: u64,
    read: u64,
    /// Tenant → (appended, stored) totals.
    tenants: Arc<HashMap<String, (u64, u64)>>,
}

/// The last [`RATE_WINDOW`] of counter samples, shared by every server thread.
#[derive(Debug, Clone, Default)]
pub struct RateSampler(Arc<Mutex<VecDeque<Sample>>>);

impl RateSampler {
    /// Samples the pipeline's counters every second until `shutdown`.
    pub fn spawn(&self, pipeline: Pipeline, shutdown: CancellationToken) {
        let samples = self.0.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Ok((s, tenants)) = tokio::try_join!(pipeline.snapshot(), pipeline.tenant_totals()) {
                    let sample = Sample {
                        at: Instant::now(),
                        added: s.total.entries_added.unwrap_or(0),
                        read: s.total.entries_read.unwrap_or(0),
                        tenants: Arc::new(tenants),
                    };
                    let now = sample.at;
                    let mut samples = samples.lock().unwrap_or_else(|p| p.into_inner());
                    samples.push_back(sample);
                    while samples.front().is_some_and(|f| now.duration_since(f.at) > RATE_WINDOW) {
                        samples.pop_front();
                    }
                }
            }
        });
    }

    /// (ingest, processing) events/s of every tenant over the samples kept; zeros before two
    /// samples exist.
    pub fn rates(&self) -> (f64, f64) {
        self.between(|s| (s.added, s.read))
    }

    /// `tenant`'s (ingest, processing) events/s: appended and stored.
    pub fn tenant_rates(&self, tenant: &str) -> (f64, f64) {
        self.between(|s| s.tenants.get(tenant).copied().unwrap_or((0, 0)))
    }

    fn between(&self, counters: impl Fn(&Sample) -> (u64, u64)) -> (f64, f64) {
        let samples = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (Some(first), Some(last)) = (samples.front(), samples.back()) else { return (0.0, 0.0) };
        let secs = last.at.duration_since(first.at).as_secs_f64();
        if secs <= 0.0 {
            return (0.0, 0.0);
        }
        let ((a0, r0), (a1, r1)) = (counters(first), counters(last));
        let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
        (rate(a0, a1), rate(r0, r1))
    }
}

/// Reads the partitions' and the group's state (one connection per server thread).
#[derive(Clone)]
pub struct Pipeline {
    target: RedisTarget,
    conn: RedisConn,
    partitions: Arc<Partitions>,
    group: Arc<str>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("partitions", &self.partitions.len())
            .field("group", &self.group)
            .finish()
    }
}

/// Every partition's state at one moment, added up, and each partition's last appended id.
#[derive(Debug, Clone, Default)]
pub struct PipelineSnapshot {
    /// Sums over the partitions; a consumer's pending entries are summed and its idle time is
    /// its smallest.
    pub total: Snapshot,
    /// The last entry appended to each partition (absent while its stream does not exist).
    pub appended: BTreeMap<i32, EntryId>,
}

impl Pipeline {
    pub fn new(
        target: RedisTarget,
        partitions: Partitions,
        group: &str,
        timeout: Duration,
    ) -> redis::RedisResult<Self> {
        let conn = target.shared(timeout)?;
        Ok(Self { target, conn, partitions: Arc::new(partitions), group: Arc::from(group) })
    }

    /// The same, with a connection of the calling thread's runtime.
    pub fn on_this_runtime(&self, timeout: Duration) -> redis::RedisResult<Self> {
        Ok(Self { conn: self.target.shared(timeout)?, ..self.clone() })
    }

    /// The dead letters of every partition, on this connection.
    pub fn dead_letters(&self) -> evp_runtime::dead_letters::DeadLetters {
        evp_runtime::dead_letters::DeadLetters::new(
            self.conn.clone(),
            (*self.partitions).clone(),
            &self.group,
        )
    }

    /// Every partition's snapshot (read concurrently), added up.
    pub async fn snapshot(&self) -> redis::RedisResult<PipelineSnapshot> {
        let reads = self
            .partitions
            .iter()
            .map(|p| stream_state::snapshot(&self.conn, &p.stream, &p.dlq, &self.group));
        let mut out = PipelineSnapshot::default();
        let mut consumers: BTreeMap<String, ConsumerState> = BTreeMap::new();
        for (partition, snapshot) in self.partitions.iter().zip(join_all(reads).await) {
            let snapshot = snapshot?;
            let total = &mut out.total;
            total.length += snapshot.length;
            total.pending += snapshot.pending;
            total.dead_letters += snapshot.dead_letters;
            total.entries_added = add(total.entries_added, snapshot.entries_added);
            total.entries_read = add(total.entries_read, snapshot.entries_read);
            total.lag = add(total.lag, snapshot.lag);
            if let Some(last) = snapshot.last_generated {
                out.appended.insert(partition.index as i32, last);
            }
            for consumer in snapshot.consumers {
                match consumers.get_mut(&consumer.name) {
                    Some(seen) => {
                        seen.pending += consumer.pending;
                        seen.idle_ms = seen.idle_ms.min(consumer.idle_ms);
                    }
                    None => drop(consumers.insert(consumer.name.clone(), consumer)),
                }
            }
        }
        out.total.consumers = consumers.into_values().collect();
        Ok(out)
    }

    /// Each partition's acknowledged frontier, in ms of stream time (partitions without a group
    /// yet are absent).
    pub async fn frontiers_ms(&self) -> redis::RedisResult<BTreeMap<i32, i64>> {
        Ok(self.frontiers().await?.into_iter().map(|(p, id)| (p, id.ms as i64)).collect())
    }

    /// Each partition's acknowledged frontier: below it, every entry was acknowledged by the
    /// workers (stored or dead-lettered) and none can be appended any more (partitions without a
    /// group yet are absent).
    pub async fn frontiers(&self) -> redis::RedisResult<BTreeMap<i32, EntryId>> {
        let reads = self
            .partitions
            .iter()
            .map(|p| stream_state::acknowledged_frontier(&self.conn, &p.stream, &self.group));
        let mut out = BTreeMap::new();
        for (partition, frontier) in self.partitions.iter().zip(join_all(reads).await) {
            if let Some(id) = frontier? {
                out.insert(partition.index as i32, id);
            }
        }
        Ok(out)
    }

    /// Every tenant's totals over the partitions: tenant → (appended, stored).
    pub async fn tenant_totals(&self) -> redis::RedisResult<HashMap<String, (u64, u64)>> {
        let keys: Vec<Keys> = self.partitions.iter().map(|p| Keys::new(p, &self.group)).collect();
        let reads = keys.iter().map(|k| unstored::totals(&self.conn, k));
        let mut out: HashMap<String, (u64, u64)> = HashMap::new();
        for partition in join_all(reads).await {
            for (tenant, (appended, stored)) in partition? {
                let total = out.entry(tenant).or_default();
                total.0 += appended;
                total.1 += stored;
            }
        }
        Ok(out)
    }

    /// The partition numbers, as the rollups name them.
    pub fn partition_numbers(&self) -> Vec<i32> {
        self.partitions.iter().map(|p| p.index as i32).collect()
    }
}

/// A sum of counters a partition may not report (its stream does not exist yet).
fn add(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (None, None) => None,
        _ => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    }
}
