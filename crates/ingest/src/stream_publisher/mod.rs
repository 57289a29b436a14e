//! Appending accepted events to the Redis stream partitions.
//!
//! One [`StreamPublisher`] is shared by all requests of a server thread ([`crate::shards`]; each
//! thread has its own, made with [`StreamPublisher::on_this_runtime`]). It holds one shared
//! connection ([`evp_runtime::redis_conn`]: one server, or a Redis Cluster whose client routes each
//! pipeline to the master of its partition's slot), so concurrent requests share sockets. Every
//! call is bounded by a timeout, so an unreachable Redis turns into a quick 503, never a hanging
//! request.
//!
//! Each event goes to the partition of its routing hash ([`evp_runtime::partitions`]); every
//! pipeline below holds one partition's XADDs only, so it goes to one node.
//!
//! - A **batch** is one MULTI/EXEC pipeline of XADDs per partition it touches
//!   ([`StreamPublisher::publish_batch`]), sent concurrently: within a partition all of its
//!   entries land or none do, and the same MULTI counts them as the tenant's unstored events
//!   ([`evp_runtime::unstored`]). If some partitions fail, the answer is 503 although other
//!   partitions' entries landed; a retry with the same ids (the client library's, or the same
//!   `Idempotency-Key`) appends them again and the workers store each event once.
//! - With `REDIS_WAIT_REPLICAS=N`, each pipeline ends with `WAIT N`: the events count as appended
//!   only once N replicas confirmed them, otherwise the answer is 503.
//! - A **single event** ([`StreamPublisher::publish_one`]) goes through a coalescer: a task that
//!   takes every single event queued at that moment and sends them as one script of independent
//!   XADDs ([`evp_runtime::unstored::APPEND_SCRIPT`]), each with its own reply, counting those that
//!   were appended. Under load many requests share one round trip, which costs
//!   Redis (single-threaded, shared by every ingest replica) far less CPU than one command per
//!   round trip; when idle a pipeline holds one event, so nothing waits for a batch to fill. Each
//!   request still gets the outcome of its own XADD, and an event whose request has already given
//!   up (timed out, client gone) is not sent at all.
//!
//! The backlog monitor samples the stream length and each tenant's unstored events in the
//! background for the high-water and backlog-share checks, so they add nothing to a request's
//! round trip.
//!
//! Here: the publisher and its errors; [`appender`]: the MULTI/EXEC, the append script and `WAIT`;
//! [`coalescer`]: the single events' shared pipelines; [`backlog`]: the backlog monitor.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use evp_events::EncodedEvent;
use evp_runtime::partitions::Partitions;
use evp_runtime::redis_conn::{RedisConn, RedisTarget};
use evp_runtime::unstored::Keys;
use futures::future::join_all;
use tokio::sync::{mpsc, oneshot};

use crate::metrics as m;

mod appender;
mod backlog;
mod coalescer;

use appender::Appender;
use coalescer::Coalescer;

/// Most single events in one coalesced pipeline.
const MAX_COALESCED: usize = 256;
/// Coalesced pipelines in flight at once; further single events queue meanwhile and go out
/// together in the next pipeline.
const MAX_PIPELINES: usize = 8;
/// Single events waiting for a pipeline before senders wait too (backpressure, still bounded by
/// the request's timeout).
const QUEUE: usize = 4 * MAX_COALESCED * MAX_PIPELINES;

/// Why events could not be appended. Always a 503 for the client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis error: {0}")]
    Redis(Arc<redis::RedisError>),
    #[error("Redis refused the XADD: {0}")]
    Refused(String),
    #[error("{got} of the {wanted} replicas required (REDIS_WAIT_REPLICAS) confirmed the write in time")]
    Replicas { wanted: u32, got: i64 },
    #[error("the publisher has stopped")]
    Stopped,
    /// Some partitions of a batch failed after others had appended theirs.
    #[error("{failed} partition(s) of the batch failed after the others appended: {first}")]
    Partial { failed: usize, first: Box<PublishError> },
}

impl PublishError {
    /// Whether the events may be in the stream although the append failed: the command was sent
    /// and its answer lost (a timeout, a connection dropped mid-request), the entries were appended
    /// but too few replicas confirmed them, or other partitions of the batch landed. False only
    /// when Redis refused the command or it was never sent.
    pub fn may_have_appended(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::Replicas { .. } | Self::Partial { .. } => true,
            // Sent and its answer lost; a refusal by the server (an error reply) stored nothing.
            Self::Redis(e) => {
                e.is_timeout() || e.is_connection_dropped() || e.is_io_error() && !e.is_connection_refusal()
            }
            Self::Refused(_) | Self::Stopped => false,
        }
    }
}

impl From<redis::RedisError> for PublishError {
    fn from(e: redis::RedisError) -> Self {
        Self::Redis(Arc::new(e))
    }
}

/// Shared handle for appending to the events stream.
#[derive(Clone)]
pub struct StreamPublisher {
    target: RedisTarget,
    conn: RedisConn,
    partitions: Arc<Partitions>,
    /// Each partition's per-tenant counts, by partition index.
    counts: Arc<[Keys]>,
    /// `REDIS_WAIT_REPLICAS`.
    wait_replicas: u32,
    timeout: Duration,
    backlog: Arc<AtomicU64>,
    /// Each tenant's unstored events, as last sampled.
    tenant_backlog: Arc<std::sync::RwLock<Arc<std::collections::HashMap<String, u64>>>>,
    reachable: Arc<AtomicBool>,
    singles: mpsc::Sender<Single>,
    metrics: PipelineMetrics,
}

/// One single event waiting for the coalescer, and where its outcome goes.
struct Single {
    tenant: Arc<str>,
    payload: Vec<u8>,
    /// The event's routing hash.
    route: u64,
    reply: oneshot::Sender<Result<(), PublishError>>,
}

#[derive(Clone)]
struct PipelineMetrics {
    seconds: metrics::Histogram,
    events: metrics::Histogram,
}

impl std::fmt::Debug for StreamPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamPublisher").field("partitions", &self.partitions.len()).finish_non_exhaustive()
    }
}

impl StreamPublisher {
    /// Creates the publisher without connecting: the ingest starts (and reports itself not ready)
    /// even while Redis is down, and connects on first use. Starts the coalescer task, so call it
    /// inside the runtime, and after the metrics recorder is installed (it takes its metric
    /// handles here). The coalescer stops once every clone of the publisher is dropped.
    pub fn new(
        target: RedisTarget,
        partitions: Partitions,
        group: &str,
        wait_replicas: u32,
        timeout: Duration,
    ) -> Result<Self, redis::RedisError> {
        let conn = target.shared(timeout)?;
        let metrics = PipelineMetrics {
            seconds: metrics::histogram!(m::XADD_SECONDS),
            events: metrics::histogram!(m::PIPELINE_EVENTS),
        };
        let (singles, queue) = mpsc::channel(QUEUE);
        let this = Self {
            target,
            conn,
            counts: partitions.iter().map(|p| Keys::new(p, group)).collect(),
            partitions: Arc::new(partitions),
            wait_replicas,
            timeout,
            backlog: Arc::new(AtomicU64::new(0)),
            tenant_backlog: Arc::default(),
            reachable: Arc::new(AtomicBool::new(true)),
            singles,
            metrics,
        };
        tokio::spawn(this.coalescer().run(queue, this.partitions.clone()));
        Ok(this)
    }

    /// A publisher for the runtime this is called on, with its own connection and coalescer, that
    /// shares the backlog sample with `self`. A connection's tasks run on the runtime that made
    /// it, so each server thread appends through a publisher of its own rather than waking
    /// another thread for every request.
    pub fn on_this_runtime(&self) -> Result<Self, redis::RedisError> {
        let conn = self.target.shared(self.timeout)?;
        let (singles, queue) = mpsc::channel(QUEUE);
        let this = Self { conn, singles, ..self.clone() };
        tokio::spawn(this.coalescer().run(queue, this.partitions.clone()));
        Ok(this)
    }

    fn coalescer(&self) -> Coalescer {
        Coalescer { appender: self.appender(), counts: self.counts.clone() }
    }

    fn appender(&self) -> Appender {
        Appender {
            conn: self.conn.clone(),
            wait_replicas: self.wait_replicas,
            timeout: self.timeout,
            metrics: self.metrics.clone(),
        }
    }

    /// Appends every event of `tenant`'s batch: per partition, atomically (MULTI/EXEC) in one
    /// round trip; the partitions concurrently. Fails if any partition failed.
    pub async fn publish_batch(&self, tenant: &str, events: &[EncodedEvent]) -> Result<(), PublishError> {
        let appender = self.appender();
        if self.partitions.len() == 1 {
            return appender
                .atomic(&self.counts[0], tenant, events.iter().map(|e| e.payload.as_slice()))
                .await;
        }
        let mut by_partition: Vec<Vec<&[u8]>> = vec![Vec::new(); self.partitions.len()];
        for event in events {
            by_partition[self.partitions.for_hash(event.route).index as usize].push(&event.payload);
        }
        let sends: Vec<_> = self
            .counts
            .iter()
            .zip(by_partition)
            .filter(|(_, payloads)| !payloads.is_empty())
            .map(|(keys, payloads)| {
                let appender = &appender;
                async move { appender.atomic(keys, tenant, payloads.into_iter()).await }
            })
            .collect();
        let attempted = sends.len();
        let results = join_all(sends).await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        match results.into_iter().find_map(Result::err) {
            None => Ok(()),
            Some(first) if failed < attempted => {
                Err(PublishError::Partial { failed, first: Box::new(first) })
            }
            Some(first) => Err(first),
        }
    }

    /// Appends one event of `tenant`, sharing a pipeline with the single events of concurrent
    /// requests.
    pub async fn publish_one(
        &self,
        tenant: Arc<str>,
        payload: Vec<u8>,
        route: u64,
    ) -> Result<(), PublishError> {
        let (reply, outcome) = oneshot::channel();
        let queued_and_answered = async {
            self.singles
                .send(Single { tenant, payload, route, reply })
                .await
                .map_err(|_| PublishError::Stopped)?;
            outcome.await.map_err(|_| PublishError::Stopped)?
        };
        match tokio::time::timeout(self.timeout, queued_and_answered).await {
            Ok(result) => result,
            Err(_) => Err(PublishError::Timeout(self.timeout)),
        }
    }

    /// Remembers `digest` as the body first sent with `tenant`'s Idempotency-Key `key`, for
    /// [`IDEMPOTENCY_TTL_S`]; returns the digest already remembered, if any (`SET NX GET EX`, one
    /// round trip, only for requests that carry the header).
    pub async fn remember_idempotency_key(
        &self,
        tenant: &str,
        key: &str,
        digest: &str,
    ) -> Result<Option<String>, PublishError> {
        let name = format!("{}:idem:{tenant}:{key}", self.partitions.first().stream);
        let mut set = redis::cmd("SET");
        set.arg(name).arg(digest).arg("NX").arg("GET").arg("EX").arg(IDEMPOTENCY_TTL_S);
        let mut conn = self.conn.clone();
        bounded(self.timeout, async move { set.query_async::<Option<String>>(&mut conn).await }).await
    }

    /// Its connection, for the limiters' own Redis state.
    pub fn conn(&self) -> &RedisConn {
        &self.conn
    }

    /// PING, for health and readiness.
    pub async fn ping(&self) -> Result<(), PublishError> {
        bounded(self.timeout, self.conn.ping()).await
    }
}

/// How long the body digest of an Idempotency-Key is kept (Stripe keeps keys for 24 hours).
pub const IDEMPOTENCY_TTL_S: u64 = 86_400;

async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, PublishError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(PublishError::Timeout(timeout)),
    }
}
