//! One batch, from entries to acknowledgement: decode, bulk-write (retrying while MongoDB is
//! unavailable, renewing the claim on the entries meanwhile), then one XACK for everything stored.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mongodb::bson::{DateTime, Document};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::bulk_writer::{EventStore, WriteOutcome};
use crate::config::WorkerConfig;
use crate::document::to_document;
use crate::metrics as m;
use crate::stream::{DeadLetter, Entry, StreamClient};

/// Longest one bulk write may take before it counts as failed and is retried.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts for an XACK or a dead-letter move before the entries are left pending (they will be
/// redelivered, and redelivery is harmless).
const REDIS_ATTEMPTS: u32 = 5;

#[derive(Clone, Debug)]
pub struct Processor {
    pub stream: StreamClient,
    pub store: EventStore,
    pub config: Arc<WorkerConfig>,
    pub shutdown: CancellationToken,
    /// False while MongoDB writes fail; the reclaimer then leaves pending entries alone.
    store_up: Arc<AtomicBool>,
}

impl Processor {
    pub fn new(
        stream: StreamClient,
        store: EventStore,
        config: Arc<WorkerConfig>,
        shutdown: CancellationToken,
    ) -> Self {
        Self { stream, store, config, shutdown, store_up: Arc::new(AtomicBool::new(true)) }
    }

    pub fn store_is_up(&self) -> bool {
        self.store_up.load(Ordering::Relaxed)
    }

    /// Processes one batch to the end. Entries that could not be stored stay pending.
    pub async fn process(&self, entries: Vec<Entry>) {
        let mut ids = Vec::with_capacity(entries.len());
        let mut docs = Vec::with_capacity(entries.len());
        let mut undecodable = Vec::new();
        for entry in entries {
            match to_document(&entry.fields) {
                Ok(doc) => {
                    ids.push(entry.id);
                    docs.push(doc);
                }
                Err(reason) => {
                    undecodable.push(DeadLetter { entry, reason: format!("undecodable: {reason}") })
                }
            }
        }
        if !undecodable.is_empty() {
            self.dead_letter(undecodable, "undecodable").await;
        }
        if docs.is_empty() {
            return;
        }

        metrics::gauge!(m::INFLIGHT_BATCHES).increment(1.0);
        let lease = self.keep_claim(ids.clone());
        let outcome = self.write(&docs).await;
        if let Some(outcome) = outcome {
            for (index, reason) in &outcome.failed {
                let entry = ids.get(*index).map_or("?", String::as_str);
                tracing::warn!(
                    entry,
                    reason,
                    "MongoDB refused a document; it stays pending and will be retried"
                );
            }
            let failed: HashSet<usize> = outcome.failed.iter().map(|(index, _)| *index).collect();
            let stored: Vec<String> =
                ids.into_iter().enumerate().filter(|(i, _)| !failed.contains(i)).map(|(_, id)| id).collect();
            metrics::counter!(m::EVENTS_WRITTEN).increment(outcome.written as u64);
            metrics::counter!(m::EVENTS_DUPLICATE).increment(outcome.duplicates as u64);
            metrics::counter!(m::EVENTS_FAILED).increment(outcome.failed.len() as u64);
            self.ack(&stored).await;
        }
        lease.abort();
        metrics::gauge!(m::INFLIGHT_BATCHES).decrement(1.0);
    }

    /// Writes until MongoDB takes the batch; `None` when shutdown's grace ran out first.
    async fn write(&self, docs: &[Document]) -> Option<WriteOutcome> {
        let mut backoff = Backoff::new(self.config.backoff);
        let mut give_up_at: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let error = match tokio::time::timeout(WRITE_TIMEOUT, self.store.insert(docs)).await {
                Ok(Ok(outcome)) => {
                    metrics::histogram!(m::WRITE_SECONDS).record(started.elapsed().as_secs_f64());
                    metrics::histogram!(m::BATCH_EVENTS).record(docs.len() as f64);
                    if !self.store_up.swap(true, Ordering::Relaxed) {
                        tracing::info!("MongoDB writes succeed again");
                    }
                    return Some(outcome);
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {WRITE_TIMEOUT:?}"),
            };
            metrics::counter!(m::WRITE_RETRIES).increment(1);
            let delay = backoff.next_delay();
            if self.store_up.swap(false, Ordering::Relaxed) || backoff.attempts().is_multiple_of(10) {
                tracing::warn!(error, attempts = backoff.attempts(), ?delay, "bulk write failed; retrying");
            }
            if self.shutdown.is_cancelled() {
                let deadline = *give_up_at.get_or_insert_with(|| Instant::now() + self.config.shutdown_grace);
                if Instant::now() >= deadline {
                    tracing::warn!(
                        entries = docs.len(),
                        "shutting down with a batch unwritten; its entries stay pending for another worker"
                    );
                    return None;
                }
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// Renews this worker's claim on `ids` until the returned task is aborted.
    fn keep_claim(&self, ids: Vec<String>) -> JoinHandle<()> {
        let stream = self.stream.clone();
        let every = self.config.lease_renewal();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = stream.renew(&ids).await {
                    tracing::debug!(error = %e, "could not renew the claim on a batch in flight");
                }
            }
        })
    }

    async fn ack(&self, ids: &[String]) {
        let mut backoff = Backoff::new(self.config.backoff);
        loop {
            match self.stream.ack(ids).await {
                Ok(n) => {
                    metrics::counter!(m::EVENTS_ACKED).increment(n);
                    return;
                }
                Err(e) if backoff.attempts() + 1 >= REDIS_ATTEMPTS => {
                    tracing::error!(error = %e, entries = ids.len(), "XACK failed; the entries will be redelivered and deduplicated");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "XACK failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// Moves entries to the dead-letter stream (and acknowledges them), retrying a few times.
    pub async fn dead_letter(&self, letters: Vec<DeadLetter>, label: &'static str) {
        let now = DateTime::now().try_to_rfc3339_string().unwrap_or_default();
        let mut backoff = Backoff::new(self.config.backoff);
        loop {
            match self.stream.dead_letter(&letters, &now).await {
                Ok(()) => {
                    for letter in &letters {
                        tracing::warn!(
                            entry = letter.entry.id,
                            reason = letter.reason,
                            "moved to the dead-letter stream"
                        );
                    }
                    metrics::counter!(m::EVENTS_DEAD_LETTERED, "reason" => label)
                        .increment(letters.len() as u64);
                    return;
                }
                Err(e) if backoff.attempts() + 1 >= REDIS_ATTEMPTS => {
                    tracing::error!(error = %e, "could not dead-letter entries; they stay pending");
                    return;
                }
                Err(_) => tokio::time::sleep(backoff.next_delay()).await,
            }
        }
    }
}
