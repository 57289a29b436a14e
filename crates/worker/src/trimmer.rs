//! Trims acknowledged entries of every partition so Redis memory stays flat, refreshes the group
//! gauges (per partition and in total), reconciles the per-tenant unstored counts of a partition
//! with nothing unstored ([`evp_runtime::unstored`]), and now and then forgets consumers that left
//! (never one with pending entries).

use std::time::Duration;

use crate::metrics as m;
use crate::processor::Processor;
use crate::stream_reader::sleep_unless_cancelled;

/// A consumer idle this long with nothing pending is a replica that is gone.
const DEPARTED_AFTER: Duration = Duration::from_secs(3600);
/// Consumers are checked once every this many trims.
const CONSUMER_CHECK_EVERY: u32 = 60;

pub async fn run(processor: Processor) {
    let shutdown = processor.shutdown.clone();
    let parts = processor.stream.partitions();
    let mut round = 0u32;
    while !shutdown.is_cancelled() {
        sleep_unless_cancelled(processor.config.trim_every, &shutdown).await;
        // Totals over the partitions, published only when every partition answered.
        let (mut pending, mut lag, mut complete) = (0u64, 0u64, true);
        for part in &parts {
            let label = part.partition().to_string();
            match part.trim_acknowledged().await {
                Ok(Some(state)) => {
                    metrics::counter!(m::EVENTS_TRIMMED).increment(state.trimmed);
                    metrics::gauge!(m::PARTITION_PENDING, "partition" => label.clone())
                        .set(state.pending as f64);
                    pending += state.pending;
                    if let Some(l) = state.lag {
                        metrics::gauge!(m::PARTITION_LAG, "partition" => label).set(l as f64);
                        lag += l;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    complete = false;
                    metrics::counter!(m::MAINTENANCE_FAILURES, "task" => "trim").increment(1);
                    tracing::warn!(error = %e, stream = part.stream(), "could not trim the stream; retrying next round");
                    continue;
                }
            }
            match part.reconcile_counts().await {
                Ok(false) => {}
                Ok(true) => {
                    metrics::counter!(m::UNSTORED_RECONCILED).increment(1);
                    tracing::warn!(
                        stream = part.stream(),
                        "the per-tenant unstored counts had drifted (entries added or removed by hand?); reset them \
                         now that nothing is unstored"
                    );
                }
                Err(e) => {
                    metrics::counter!(m::MAINTENANCE_FAILURES, "task" => "reconcile").increment(1);
                    tracing::warn!(error = %e, stream = part.stream(), "could not reconcile the unstored counts");
                }
            }
        }
        if complete {
            metrics::gauge!(m::GROUP_PENDING).set(pending as f64);
            metrics::gauge!(m::GROUP_LAG).set(lag as f64);
        }
        metrics::counter!(m::TRIM_RUNS).increment(1);
        round = round.wrapping_add(1);
        if round.is_multiple_of(CONSUMER_CHECK_EVERY) {
            let mut removed = Ok(0);
            for part in &parts {
                match part.remove_departed_consumers(DEPARTED_AFTER).await {
                    Ok(n) => removed = removed.map(|total| total + n),
                    Err(e) => removed = Err(e),
                }
            }
            match removed {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "removed consumers that left with nothing pending"),
                Err(e) => {
                    metrics::counter!(m::MAINTENANCE_FAILURES, "task" => "consumer_cleanup").increment(1);
                    tracing::warn!(error = %e, "could not check for departed consumers; retrying later");
                }
            }
        }
    }
}
