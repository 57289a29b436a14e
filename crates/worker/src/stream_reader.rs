//! The read loop: XREADGROUP only when a write slot is free.
//!
//! Backpressure is a write slot ([`crate::inflight_limit`], at most `WORKER_MAX_INFLIGHT`, fewer
//! while MongoDB is congested) shared with the reclaimer. A slot is taken *before* reading and
//! released when the batch is acknowledged, so a worker never holds more than
//! `max_inflight × batch_size` entries it has not stored: while MongoDB is slow, entries wait in
//! Redis, not in memory. On start, the worker first re-reads its own pending
//! entries (a restart under the same name), then reads new ones.
//!
//! With several partitions one loop serves them all, so the bound stays global: each read takes
//! the next partition in turn (one batch each while all have entries), without blocking; only
//! after a whole round of empty partitions does it block, briefly ([`IDLE_BLOCK`]) on the next one,
//! then start a new round. An idle worker costs Redis about N + 1 reads per `IDLE_BLOCK`, a new
//! entry on any partition waits about one `IDLE_BLOCK` at most, and a busy worker never waits on
//! an empty partition. With one partition it blocks for `WORKER_BLOCK_MS` as before.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::backoff::Backoff;
use crate::metrics as m;
use crate::processor::Processor;
use crate::stream::Reader;

/// Longest block on one partition when every partition was empty (more than one partition).
pub const IDLE_BLOCK: Duration = Duration::from_millis(100);

pub async fn run(processor: Processor) {
    let inflight = processor.inflight.clone();
    let config = processor.config.clone();
    let shutdown = processor.shutdown.clone();
    let mut tasks = JoinSet::new();
    let mut reader: Option<Reader> = None;
    let parts = processor.stream.partitions();
    // Per partition, our own pending entries first: `0-0` and then the last id seen, until none
    // is left.
    let mut history: Vec<Option<String>> = vec![Some("0-0".into()); parts.len()];
    // The partition read next, and how many reads in a row found nothing.
    let (mut turn, mut empty_reads) = (0usize, 0usize);
    let mut backoff = Backoff::new(config.backoff);

    while !shutdown.is_cancelled() {
        let waited = Instant::now();
        let permit = tokio::select! {
            permit = inflight.acquire() => match permit { Some(p) => p, None => break },
            _ = shutdown.cancelled() => break,
        };
        metrics::histogram!(m::BACKPRESSURE_SECONDS).record(waited.elapsed().as_secs_f64());
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                tracing::error!(error = %e, "a batch task panicked; its entries stay pending");
            }
        }

        let conn = match reader.as_mut() {
            Some(conn) => conn,
            None => match processor.stream.reader(config.block).await {
                Ok(conn) => reader.insert(conn),
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, ?delay, "cannot connect to Redis; retrying");
                    sleep_unless_cancelled(delay, &shutdown).await;
                    continue;
                }
            },
        };
        let part = &parts[turn];
        let from = history[turn].as_deref().unwrap_or(">");
        let block = match parts.len() {
            1 => Some(config.block),
            n if empty_reads >= n => Some(IDLE_BLOCK.min(config.block)),
            _ => None,
        };
        match conn.read(part.stream(), from, config.batch_size, block).await {
            Ok(entries) => {
                backoff = Backoff::new(config.backoff);
                if let Some(cursor) = history[turn].as_mut() {
                    match entries.last() {
                        Some(last) => *cursor = last.id.clone(),
                        None => history[turn] = None,
                    }
                }
                // Own pending entries are read to the end before the partition's turn passes.
                if history[turn].is_none() || entries.is_empty() {
                    turn = (turn + 1) % parts.len();
                }
                if entries.is_empty() {
                    // A round of empty partitions, then one short blocking read, then a new round:
                    // an entry on any partition waits at most about one IDLE_BLOCK.
                    empty_reads = if empty_reads >= parts.len() { 0 } else { empty_reads + 1 };
                    continue;
                }
                empty_reads = 0;
                processor.spawn(&mut tasks, part, entries, permit);
            }
            Err(e) if e.code() == Some("NOGROUP") => {
                tracing::warn!(
                    stream = part.stream(),
                    "the consumer group or stream is gone (Redis restarted empty?); recreating it"
                );
                if let Err(e) = part.ensure_group().await {
                    tracing::warn!(error = %e, "could not recreate the consumer group");
                    sleep_unless_cancelled(backoff.next_delay(), &shutdown).await;
                }
                history[turn] = Some("0-0".into());
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, ?delay, "XREADGROUP failed; retrying");
                reader = None;
                sleep_unless_cancelled(delay, &shutdown).await;
            }
        }
    }

    if !tasks.is_empty() {
        tracing::info!(batches = tasks.len(), "finishing the batches in flight");
    }
    while tasks.join_next().await.is_some() {}
}

pub(crate) async fn sleep_unless_cancelled(
    delay: std::time::Duration,
    shutdown: &tokio_util::sync::CancellationToken,
) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.cancelled() => {}
    }
}
