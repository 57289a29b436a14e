//! The backlog monitor: samples the streams' length in the background for the high-water check,
//! so that check adds nothing to a request's round trip.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::join_all;
use tokio_util::sync::CancellationToken;

use super::{PublishError, StreamPublisher, bounded};
use crate::metrics as m;

impl StreamPublisher {
    /// Entries in every partition's stream: acknowledged entries are trimmed by the workers, so
    /// this is the backlog of entries not yet stored.
    pub async fn stream_length(&self) -> Result<u64, PublishError> {
        let lengths = self.partitions.iter().map(|partition| {
            let mut conn = self.conn.clone();
            let xlen = redis::cmd("XLEN").arg(&partition.stream).clone();
            bounded(self.timeout, async move { xlen.query_async::<u64>(&mut conn).await })
        });
        join_all(lengths).await.into_iter().sum()
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
