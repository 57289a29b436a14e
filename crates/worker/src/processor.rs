//! One batch, from entries to acknowledgement.
//!
//! 1. Each entry becomes a BSON document ([`to_document`]); one that cannot (undecodable, or data
//!    MongoDB cannot store exactly) is dead-lettered alone.
//! 2. The documents are bulk-written ([`EventStore::insert`]), and each gets a verdict. Written and
//!    duplicate documents are stored. A document MongoDB refuses for good is dead-lettered alone.
//!    Transient failures (of one document or of the whole write) are retried with backoff until
//!    MongoDB takes them; a whole-batch failure that can never succeed (the driver cannot send
//!    it) makes the batch go one document at a time, so the culprit is isolated.
//! 3. One script acknowledges every stored entry (one XACK per tenant) and takes them off their
//!    tenants' unstored counts ([`evp_runtime::unstored`]).
//!
//! Meanwhile the batch renews this worker's claim on its entries, so no other worker takes them
//! over while MongoDB is slow or down. The renewal and the in-flight gauge are owned by guards:
//! if processing panics, both are released on unwinding and the entries become claimable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mongodb::bson::{DateTime, RawDocumentBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::WorkerConfig;
use crate::inflight_limit::InflightLimit;
use crate::metrics as m;
use crate::stream::{DeadLetter, Entry, StreamClient};
use evp_store::bulk_writer::{EventStore, Failure, Verdict, classify_batch_error};
use evp_store::document::{Position, to_document};

/// Longest one bulk write may take before it counts as failed and is retried.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts for an XACK or a dead-letter move before the entries are left pending (they will be
/// redelivered, and redelivery is harmless).
const REDIS_ATTEMPTS: u32 = 5;

#[derive(Clone, Debug)]
pub struct Processor {
    /// Partition 0's client; [`StreamClient::partitions`] gives every partition's.
    pub stream: StreamClient,
    pub store: EventStore,
    pub config: Arc<WorkerConfig>,
    pub shutdown: CancellationToken,
    /// Write slots: the reader and the reclaimer take one per batch; adaptive.
    pub inflight: Arc<InflightLimit>,
    /// False while MongoDB writes fail; the reclaimer then leaves pending entries alone.
    store_up: Arc<AtomicBool>,
}

/// Aborts a background task when dropped, panics included.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Counts a batch in `evp_worker_inflight_batches` for as long as it lives, panics included.
struct InflightGauge;

impl InflightGauge {
    fn enter() -> Self {
        metrics::gauge!(m::INFLIGHT_BATCHES).increment(1.0);
        Self
    }
}

impl Drop for InflightGauge {
    fn drop(&mut self) {
        metrics::gauge!(m::INFLIGHT_BATCHES).decrement(1.0);
    }
}

impl Processor {
    pub fn new(
        stream: StreamClient,
        store: EventStore,
        config: Arc<WorkerConfig>,
        shutdown: CancellationToken,
    ) -> Self {
        let inflight = Arc::new(InflightLimit::new(config.max_inflight));
        Self { stream, store, config, shutdown, inflight, store_up: Arc::new(AtomicBool::new(true)) }
    }

    pub fn store_is_up(&self) -> bool {
        self.store_up.load(Ordering::Relaxed)
    }

    /// Processes `entries` of partition `part` in a task of `tasks`, which keeps `slot` (a write
    /// slot of [`InflightLimit`]) until the batch is done.
    pub fn spawn(
        &self,
        tasks: &mut JoinSet<()>,
        part: &StreamClient,
        entries: Vec<Entry>,
        slot: OwnedSemaphorePermit,
    ) {
        metrics::counter!(m::EVENTS_READ).increment(entries.len() as u64);
        let (processor, part) = (self.clone(), part.clone());
        tasks.spawn(async move {
            processor.process(&part, entries).await;
            drop(slot);
        });
    }

    /// Processes one batch of partition `part` to the end. Entries that could not be stored
    /// (shutdown came first) stay pending.
    pub async fn process(&self, part: &StreamClient, entries: Vec<Entry>) {
        let _inflight = InflightGauge::enter();
        let _renewal = AbortOnDrop(self.keep_claim(part, entries.iter().map(|e| e.id.clone()).collect()));
        let partition = part.partition() as i32;

        let mut letters = Vec::new();
        let mut docs = Vec::with_capacity(entries.len());
        let mut writable = Vec::with_capacity(entries.len());
        for entry in entries {
            match to_document(&entry.fields, Position { partition, entry_id: &entry.id }) {
                Ok(doc) => {
                    docs.push(doc);
                    writable.push(entry);
                }
                Err(unusable) => {
                    letters.push(DeadLetter { entry, reason: unusable.reason, kind: unusable.kind })
                }
            }
        }
        if !letters.is_empty() {
            self.dead_letter(part, letters).await;
        }
        if docs.is_empty() {
            return;
        }
        self.test_hook(&docs);

        let Some(verdicts) = self.write(&docs).await else { return };
        let mut stored = Vec::with_capacity(writable.len());
        let mut refused = Vec::new();
        let (mut written, mut duplicates) = (0u64, 0u64);
        for ((entry, verdict), doc) in writable.into_iter().zip(verdicts).zip(&docs) {
            match verdict {
                Verdict::Written => written += 1,
                Verdict::Duplicate => duplicates += 1,
                Verdict::Refused(reason) => {
                    tracing::warn!(
                        entry = entry.id,
                        reason,
                        "MongoDB refused a document for good; dead-lettering it"
                    );
                    refused.push(DeadLetter { entry, reason: format!("refused: {reason}"), kind: "refused" });
                    continue;
                }
                // write() retries these until they are settled; were one left, leaving the entry
                // pending (to be redelivered) is the safe course.
                Verdict::Transient(_) => continue,
            }
            let tenant = doc.get_str("tenant").unwrap_or_default().to_owned();
            stored.push((entry.id, tenant));
        }
        metrics::counter!(m::EVENTS_WRITTEN).increment(written);
        metrics::counter!(m::EVENTS_DUPLICATE).increment(duplicates);
        metrics::counter!(m::EVENTS_FAILED).increment(refused.len() as u64);
        if !refused.is_empty() {
            self.dead_letter(part, refused).await;
        }
        self.ack(part, &stored).await;
    }

    /// Writes until every document has a final verdict (written, duplicate or refused); `None`
    /// when shutdown's grace ran out first.
    async fn write(&self, docs: &[RawDocumentBuf]) -> Option<Vec<Verdict>> {
        let mut verdicts: Vec<Option<Verdict>> = vec![None; docs.len()];
        let mut todo: Vec<usize> = (0..docs.len()).collect();
        let mut one_at_a_time = false;
        let mut backoff = Backoff::new(self.config.backoff);
        let mut give_up_at: Option<Instant> = None;
        while !todo.is_empty() {
            let attempt: Vec<usize> = if one_at_a_time { todo[..1].to_vec() } else { todo.clone() };
            let batch: Vec<&RawDocumentBuf> = attempt.iter().map(|&i| &docs[i]).collect();
            let started = Instant::now();
            let failure = match tokio::time::timeout(WRITE_TIMEOUT, self.store.insert(&batch)).await {
                Ok(Ok(results)) => {
                    metrics::histogram!(m::WRITE_SECONDS).record(started.elapsed().as_secs_f64());
                    metrics::histogram!(m::BATCH_EVENTS).record(batch.len() as f64);
                    let mut transient = None;
                    for (&i, verdict) in attempt.iter().zip(results) {
                        match verdict {
                            Verdict::Transient(reason) => transient = Some(reason),
                            done => verdicts[i] = Some(done),
                        }
                    }
                    todo.retain(|&i| verdicts[i].is_none());
                    match transient {
                        None => {
                            self.inflight.succeeded(batch.len(), started.elapsed());
                            if !self.store_up.swap(true, Ordering::Relaxed) {
                                tracing::info!("MongoDB writes succeed again");
                            }
                            backoff = Backoff::new(self.config.backoff);
                            continue;
                        }
                        Some(reason) => format!("{} document(s) not written: {reason}", todo.len()),
                    }
                }
                Ok(Err(e)) if classify_batch_error(&e) == Failure::Permanent => {
                    if attempt.len() == 1 {
                        let reason = e.to_string();
                        tracing::warn!(reason, "the driver cannot write a document; dead-lettering it");
                        verdicts[attempt[0]] = Some(Verdict::Refused(reason));
                        todo.retain(|&i| i != attempt[0]);
                    } else {
                        tracing::warn!(error = %e, "a bulk write cannot succeed as it is; writing its documents one at a time");
                        one_at_a_time = true;
                    }
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {WRITE_TIMEOUT:?}"),
            };
            metrics::counter!(m::WRITE_RETRIES).increment(1);
            self.inflight.failed();
            let delay = backoff.next_delay();
            if self.store_up.swap(false, Ordering::Relaxed) || backoff.attempts().is_multiple_of(10) {
                tracing::warn!(
                    error = failure,
                    attempts = backoff.attempts(),
                    ?delay,
                    "bulk write failed (transient); retrying"
                );
            }
            if self.shutdown.is_cancelled() {
                let deadline = *give_up_at.get_or_insert_with(|| Instant::now() + self.config.shutdown_grace);
                if Instant::now() >= deadline {
                    tracing::warn!(
                        entries = todo.len(),
                        "shutting down with a batch unwritten; its entries stay pending for another worker"
                    );
                    return None;
                }
            }
            tokio::time::sleep(delay).await;
        }
        Some(verdicts.into_iter().map(|v| v.unwrap_or(Verdict::Written)).collect())
    }

    /// Renews this worker's claim on `ids` until the returned task is aborted. Entries another
    /// worker has claimed meanwhile are left to it.
    fn keep_claim(&self, part: &StreamClient, ids: Vec<String>) -> JoinHandle<()> {
        let stream = part.clone();
        let every = self.config.lease_renewal();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = stream.renew(&ids).await {
                    metrics::counter!(m::MAINTENANCE_FAILURES, "task" => "claim_renewal").increment(1);
                    tracing::warn!(error = %e, "could not renew the claim on a batch in flight");
                }
            }
        })
    }

    /// Test hook (`EVP_TEST_PANIC_ON_EVENT_ID`): panics while holding a batch with that event, to
    /// prove that a panicking batch releases its claim and its in-flight count.
    fn test_hook(&self, docs: &[RawDocumentBuf]) {
        if let Some(id) = self.config.test_panic_on_event_id.as_deref()
            && docs.iter().any(|d| d.get_str("event_id").ok() == Some(id))
        {
            panic!("EVP_TEST_PANIC_ON_EVENT_ID: event {id} is in this batch");
        }
    }

    /// Acknowledges stored entries, `(id, tenant)`, retrying a few times.
    async fn ack(&self, part: &StreamClient, ids: &[(String, String)]) {
        let mut backoff = Backoff::new(self.config.backoff);
        loop {
            match part.ack(ids).await {
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

    /// Moves entries of partition `part` to its dead-letter stream (and acknowledges them),
    /// retrying a few times.
    pub async fn dead_letter(&self, part: &StreamClient, letters: Vec<DeadLetter>) {
        let now = DateTime::now().try_to_rfc3339_string().unwrap_or_default();
        let mut backoff = Backoff::new(self.config.backoff);
        loop {
            match part.dead_letter(&letters, &now).await {
                Ok(()) => {
                    for letter in &letters {
                        tracing::warn!(
                            entry = letter.entry.id,
                            reason = letter.reason,
                            "moved to the dead-letter stream"
                        );
                        metrics::counter!(m::EVENTS_DEAD_LETTERED, "reason" => letter.kind).increment(1);
                    }
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
