//! Claims entries left pending by consumers that died (or failed to store them), and moves
//! entries delivered `WORKER_MAX_DELIVERIES` times to the dead-letter stream; every partition in
//! turn, each into its own dead-letter stream.
//!
//! Only entries idle for `WORKER_CLAIM_IDLE_MS` are claimed; a live worker renews the claim on the
//! batches it is still writing, so those never look idle. While this worker's MongoDB writes are
//! failing it claims nothing: an outage must not use up anybody's delivery budget.

use std::collections::HashMap;

use tokio::task::JoinSet;

use crate::metrics as m;
use crate::processor::Processor;
use crate::stream::{DeadLetter, to_entry};
use crate::stream_reader::sleep_unless_cancelled;

pub async fn run(processor: Processor) {
    let inflight = processor.inflight.clone();
    let config = processor.config.clone();
    let shutdown = processor.shutdown.clone();
    let mut tasks = JoinSet::new();
    let parts = processor.stream.partitions();
    while !shutdown.is_cancelled() {
        sleep_unless_cancelled(config.reclaim_every(), &shutdown).await;
        while tasks.try_join_next().is_some() {}
        for part in &parts {
            while !shutdown.is_cancelled() && processor.store_is_up() {
                let permit = tokio::select! {
                    permit = inflight.acquire() => match permit { Some(p) => p, None => return },
                    _ = shutdown.cancelled() => break,
                };
                let pending = match part.idle_pending(config.claim_idle, config.batch_size).await {
                    Ok(pending) if !pending.is_empty() => pending,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "XPENDING failed");
                        break;
                    }
                };
                let page_was_full = pending.len() >= config.batch_size;
                let delivered: HashMap<String, u64> =
                    pending.iter().map(|p| (p.id.clone(), p.times_delivered as u64)).collect();
                let ids: Vec<String> = pending.into_iter().map(|p| p.id).collect();
                let claimed = match part.claim(config.claim_idle, &ids).await {
                    Ok(claimed) => claimed,
                    Err(e) => {
                        tracing::warn!(error = %e, "XCLAIM failed");
                        break;
                    }
                };
                metrics::counter!(m::EVENTS_CLAIMED).increment(claimed.len() as u64);
                let mut retry = Vec::new();
                let mut exhausted = Vec::new();
                for id in claimed {
                    let before = delivered.get(&id.id).copied().unwrap_or(1);
                    let entry = to_entry(id, before + 1);
                    if before >= config.max_deliveries {
                        let reason = format!("not stored after {before} deliveries");
                        exhausted.push(DeadLetter { entry, reason, kind: "max_deliveries" });
                    } else {
                        retry.push(entry);
                    }
                }
                if !retry.is_empty() {
                    tracing::info!(entries = retry.len(), "claimed idle pending entries");
                }
                if !exhausted.is_empty() {
                    processor.dead_letter(part, exhausted).await;
                }
                if !retry.is_empty() {
                    processor.spawn(&mut tasks, part, retry, permit);
                }
                if !page_was_full {
                    break;
                }
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}
