//! Appending accepted events to the Redis stream.
//!
//! One [`StreamPublisher`] is shared by all requests: it holds one multiplexed connection
//! (redis-rs `ConnectionManager`, which reconnects by itself after Redis comes back), so concurrent
//! requests share a socket and every request costs exactly one round trip. A batch is sent as one
//! MULTI/EXEC pipeline of XADDs: all of its entries land, or none do. Every call is bounded by a
//! timeout, so an unreachable Redis turns into a quick 503, never a hanging request.
//!
//! The backlog monitor samples the stream length in the background for the high-water check, so
//! that check adds nothing to a request's round trip.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use evp_events::EncodedEvent;
use evp_events::entry::FIELD;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;

use crate::metrics as m;

/// Why events could not be appended. Always a 503 for the client.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis error: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Shared handle for appending to the events stream.
#[derive(Clone)]
pub struct StreamPublisher {
    conn: ConnectionManager,
    stream: Arc<str>,
    timeout: Duration,
    backlog: Arc<AtomicU64>,
    reachable: Arc<AtomicBool>,
}

impl std::fmt::Debug for StreamPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamPublisher").field("stream", &self.stream).finish_non_exhaustive()
    }
}

impl StreamPublisher {
    /// Creates the publisher without connecting: the ingest starts (and reports itself not ready)
    /// even while Redis is down, and connects on first use.
    pub fn new(redis_url: &str, stream: &str, timeout: Duration) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(redis_url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            conn,
            stream: Arc::from(stream),
            timeout,
            backlog: Arc::new(AtomicU64::new(0)),
            reachable: Arc::new(AtomicBool::new(true)),
        })
    }

    /// Appends every event, atomically, in one round trip.
    pub async fn publish(&self, events: &[EncodedEvent]) -> Result<(), PublishError> {
        let mut pipe = redis::pipe();
        if events.len() > 1 {
            pipe.atomic();
        }
        for event in events {
            pipe.cmd("XADD").arg(&*self.stream).arg("*").arg(FIELD).arg(&event.payload).ignore();
        }
        let started = Instant::now();
        let result = self.bounded(pipe.exec_async(&mut self.conn.clone())).await;
        metrics::histogram!(m::XADD_SECONDS).record(started.elapsed().as_secs_f64());
        result
    }

    /// PING, for health and readiness.
    pub async fn ping(&self) -> Result<(), PublishError> {
        self.bounded(redis::cmd("PING").exec_async(&mut self.conn.clone())).await
    }

    /// Entries in the stream: acknowledged entries are trimmed by the workers, so this is the
    /// backlog of entries not yet stored.
    pub async fn stream_length(&self) -> Result<u64, PublishError> {
        self.bounded(redis::cmd("XLEN").arg(&*self.stream).query_async(&mut self.conn.clone())).await
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

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, redis::RedisError>>,
    ) -> Result<T, PublishError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(PublishError::Timeout(self.timeout)),
        }
    }
}
