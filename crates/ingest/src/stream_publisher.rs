//! Appending accepted events to the Redis stream.
//!
//! One [`StreamPublisher`] is shared by all requests of a server thread ([`crate::shards`]; each
//! thread has its own, made with [`StreamPublisher::on_this_runtime`]). It holds one multiplexed
//! connection (redis-rs `ConnectionManager`, which reconnects by itself after Redis comes back), so
//! concurrent requests share a socket. Every call is bounded by a timeout, so an unreachable Redis
//! turns into a quick 503, never a hanging request.
//!
//! - A **batch** is one MULTI/EXEC pipeline of XADDs ([`StreamPublisher::publish_batch`]): all of
//!   its entries land, or none do.
//! - A **single event** ([`StreamPublisher::publish_one`]) goes through a coalescer: a task that
//!   takes every single event queued at that moment and sends them as one pipeline of independent
//!   XADDs, each with its own reply. Under load many requests share one round trip, which costs
//!   Redis (single-threaded, shared by every ingest replica) far less CPU than one command per
//!   round trip; when idle a pipeline holds one event, so nothing waits for a batch to fill. Each
//!   request still gets the outcome of its own XADD, and an event whose request has already given
//!   up (timed out, client gone) is not sent at all.
//!
//! The backlog monitor samples the stream length in the background for the high-water check, so
//! that check adds nothing to a request's round trip.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use evp_events::EncodedEvent;
use evp_events::entry::FIELD;
use evp_runtime::connect::redis_manager;
use redis::aio::ConnectionManager;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::metrics as m;

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
    #[error("the publisher has stopped")]
    Stopped,
}

impl From<redis::RedisError> for PublishError {
    fn from(e: redis::RedisError) -> Self {
        Self::Redis(Arc::new(e))
    }
}

/// Shared handle for appending to the events stream.
#[derive(Clone)]
pub struct StreamPublisher {
    client: redis::Client,
    conn: ConnectionManager,
    stream: Arc<str>,
    timeout: Duration,
    backlog: Arc<AtomicU64>,
    reachable: Arc<AtomicBool>,
    singles: mpsc::Sender<Single>,
    metrics: PipelineMetrics,
}

/// One single event waiting for the coalescer, and where its outcome goes.
struct Single {
    payload: Vec<u8>,
    reply: oneshot::Sender<Result<(), PublishError>>,
}

#[derive(Clone)]
struct PipelineMetrics {
    seconds: metrics::Histogram,
    events: metrics::Histogram,
}

impl std::fmt::Debug for StreamPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamPublisher").field("stream", &self.stream).finish_non_exhaustive()
    }
}

impl StreamPublisher {
    /// Creates the publisher without connecting: the ingest starts (and reports itself not ready)
    /// even while Redis is down, and connects on first use. Starts the coalescer task, so call it
    /// inside the runtime, and after the metrics recorder is installed (it takes its metric
    /// handles here). The coalescer stops once every clone of the publisher is dropped.
    pub fn new(redis_url: &str, stream: &str, timeout: Duration) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(redis_url)?;
        let conn = redis_manager(&client, timeout)?;
        let metrics = PipelineMetrics {
            seconds: metrics::histogram!(m::XADD_SECONDS),
            events: metrics::histogram!(m::PIPELINE_EVENTS),
        };
        let (singles, queue) = mpsc::channel(QUEUE);
        let this = Self {
            client,
            conn,
            stream: Arc::from(stream),
            timeout,
            backlog: Arc::new(AtomicU64::new(0)),
            reachable: Arc::new(AtomicBool::new(true)),
            singles,
            metrics,
        };
        tokio::spawn(this.coalescer().run(queue));
        Ok(this)
    }

    /// A publisher for the runtime this is called on, with its own connection and coalescer, that
    /// shares the backlog sample with `self`. A connection's tasks run on the runtime that made
    /// it, so each server thread appends through a publisher of its own rather than waking
    /// another thread for every request.
    pub fn on_this_runtime(&self) -> Result<Self, redis::RedisError> {
        let conn = redis_manager(&self.client, self.timeout)?;
        let (singles, queue) = mpsc::channel(QUEUE);
        let this = Self { conn, singles, ..self.clone() };
        tokio::spawn(this.coalescer().run(queue));
        Ok(this)
    }

    fn coalescer(&self) -> Coalescer {
        Coalescer {
            conn: self.conn.clone(),
            stream: self.stream.clone(),
            timeout: self.timeout,
            metrics: self.metrics.clone(),
        }
    }

    /// Appends every event of a batch, atomically (MULTI/EXEC), in one round trip.
    pub async fn publish_batch(&self, events: &[EncodedEvent]) -> Result<(), PublishError> {
        let mut pipe = redis::Pipeline::with_capacity(events.len());
        pipe.atomic();
        for event in events {
            pipe.add_command(xadd(&self.stream, &event.payload)).ignore();
        }
        let started = Instant::now();
        let result = bounded(self.timeout, pipe.exec_async(&mut self.conn.clone())).await;
        self.metrics.seconds.record(started.elapsed().as_secs_f64());
        self.metrics.events.record(events.len() as f64);
        result
    }

    /// Appends one event, sharing a pipeline with the single events of concurrent requests.
    pub async fn publish_one(&self, payload: Vec<u8>) -> Result<(), PublishError> {
        let (reply, outcome) = oneshot::channel();
        let queued_and_answered = async {
            self.singles.send(Single { payload, reply }).await.map_err(|_| PublishError::Stopped)?;
            outcome.await.map_err(|_| PublishError::Stopped)?
        };
        match tokio::time::timeout(self.timeout, queued_and_answered).await {
            Ok(result) => result,
            Err(_) => Err(PublishError::Timeout(self.timeout)),
        }
    }

    /// PING, for health and readiness.
    pub async fn ping(&self) -> Result<(), PublishError> {
        bounded(self.timeout, evp_runtime::connect::redis_ping(&self.conn)).await
    }

    /// Entries in the stream: acknowledged entries are trimmed by the workers, so this is the
    /// backlog of entries not yet stored.
    pub async fn stream_length(&self) -> Result<u64, PublishError> {
        bounded(self.timeout, redis::cmd("XLEN").arg(&*self.stream).query_async(&mut self.conn.clone())).await
    }

    /// The last sampled backlog, for the high-water check.
    pub fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Samples the stream length every `every` until `shutdown`.
    pub fn spawn_backlog_monitor(&self, every: Duration, shutdown: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match this.stream_length().await {
                    Ok(len) => {
                        this.backlog.store(len, Ordering::Relaxed);
                        metrics::gauge!(m::STREAM_BACKLOG).set(len as f64);
                        if !this.reachable.swap(true, Ordering::Relaxed) {
                            tracing::info!("Redis is reachable again");
                        }
                    }
                    Err(e) => {
                        if this.reachable.swap(false, Ordering::Relaxed) {
                            tracing::warn!(error = %e, "Redis is unreachable");
                        }
                    }
                }
            }
        });
    }
}

/// `XADD <stream> * e <payload>`, its buffer sized once: built argument by argument, a command's
/// buffer grows (and copies the payload) several times.
fn xadd(stream: &str, payload: &[u8]) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(5, "XADD*".len() + stream.len() + FIELD.len() + payload.len());
    cmd.arg("XADD").arg(stream).arg("*").arg(FIELD).arg(payload);
    cmd
}

async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, PublishError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(PublishError::Timeout(timeout)),
    }
}

/// Sends queued single events as pipelines, at most [`MAX_PIPELINES`] at a time.
struct Coalescer {
    conn: ConnectionManager,
    stream: Arc<str>,
    timeout: Duration,
    metrics: PipelineMetrics,
}

impl Coalescer {
    async fn run(self, mut queue: mpsc::Receiver<Single>) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(MAX_PIPELINES));
        loop {
            // Take a pipeline slot first: while every slot is busy, events keep queueing and the
            // next pipeline takes them all.
            let Ok(slot) = slots.clone().acquire_owned().await else { return };
            let mut batch = Vec::with_capacity(MAX_COALESCED);
            if queue.recv_many(&mut batch, MAX_COALESCED).await == 0 {
                return; // every publisher is gone
            }
            let this = this.clone();
            tokio::spawn(async move {
                this.send(batch).await;
                drop(slot);
            });
        }
    }

    async fn send(&self, mut batch: Vec<Single>) {
        // A request that gave up (timed out, or its client went away) has answered 503 or
        // nothing: its event must not be appended behind its back.
        batch.retain(|single| !single.reply.is_closed());
        if batch.is_empty() {
            return;
        }
        let mut pipe = redis::Pipeline::with_capacity(batch.len());
        pipe.ignore_errors();
        for single in &batch {
            pipe.add_command(xadd(&self.stream, &single.payload));
        }
        let started = Instant::now();
        let replies: Result<Vec<redis::Value>, PublishError> =
            bounded(self.timeout, pipe.query_async(&mut self.conn.clone())).await;
        self.metrics.seconds.record(started.elapsed().as_secs_f64());
        self.metrics.events.record(batch.len() as f64);
        match replies {
            Ok(replies) if replies.len() == batch.len() => {
                for (single, reply) in batch.into_iter().zip(replies) {
                    let outcome = match reply {
                        redis::Value::ServerError(e) => Err(PublishError::Refused(e.to_string())),
                        _ => Ok(()),
                    };
                    let _ = single.reply.send(outcome);
                }
            }
            Ok(replies) => {
                let e = PublishError::Refused(format!("{} replies to {} XADDs", replies.len(), batch.len()));
                batch.into_iter().for_each(|single| drop(single.reply.send(Err(e.clone()))));
            }
            Err(e) => batch.into_iter().for_each(|single| drop(single.reply.send(Err(e.clone())))),
        }
    }
}

#[cfg(test)]
mod tests {
    use evp_testkit::RedisServer;

    use super::*;

    fn single(payload: &str) -> (Single, oneshot::Receiver<Result<(), PublishError>>) {
        let (reply, outcome) = oneshot::channel();
        (Single { payload: payload.as_bytes().to_vec(), reply }, outcome)
    }

    #[tokio::test]
    async fn an_event_whose_request_gave_up_is_not_sent_and_the_others_get_their_own_replies() {
        let redis = RedisServer::start();
        let publisher = StreamPublisher::new(&redis.url(), "events", Duration::from_secs(2)).unwrap();
        let coalescer = publisher.coalescer();
        let (kept, kept_outcome) = single("kept");
        let (abandoned, abandoned_outcome) = single("abandoned");
        drop(abandoned_outcome); // the request timed out or its client went away
        let (also_kept, also_kept_outcome) = single("also kept");
        coalescer.send(vec![kept, abandoned, also_kept]).await;

        assert!(kept_outcome.await.unwrap().is_ok());
        assert!(also_kept_outcome.await.unwrap().is_ok());
        let mut conn = redis.connection().await;
        let entries: Vec<(String, Vec<(String, String)>)> =
            redis::cmd("XRANGE").arg("events").arg("-").arg("+").query_async(&mut conn).await.unwrap();
        let payloads: Vec<&str> = entries.iter().map(|(_, fields)| fields[0].1.as_str()).collect();
        assert_eq!(payloads, ["kept", "also kept"]);
    }
}
