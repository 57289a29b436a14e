//! The rollup job: run by whichever replica holds the `rollups` lease ([`crate::lease`]).
//!
//! Every round: read the group's acknowledged frontier from Redis (ranges below it are closed),
//! then for each partition count the closed ranges not yet applied and apply them under the
//! grant's fencing number (`evp_store::rollups` says why that is exact); advance a rebuild's new
//! generation by one batch, switch to it once it has caught up, and delete a retired one after a
//! minute. The lag (how far the rollups trail the frontier) goes to metrics and to health.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use evp_runtime::now_ms;
use evp_runtime::stream_state::{EntryId, acknowledged_frontier};
use evp_store::rollups::{
    ProvisionalCounts, RANGE_MS, RETIRED_KEEP_MS, RangeCounts, RollupError, RollupStore,
};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::lease::Grant;
use crate::metrics as m;
use crate::stream::StreamClient;
use crate::stream_reader::sleep_unless_cancelled;

/// Pause between rounds once caught up.
pub const ROUND_EVERY: Duration = Duration::from_millis(250);
/// Consecutive failed rounds after which health reports the job as failing.
const FAILING_AFTER: u32 = 3;
/// Batches of the current generation one round may apply before yielding.
const MAX_STEPS: usize = 50;
/// Longest stretch of stream time (ms) the kept counts are extended by in one read; past it the
/// ranges are read in batches of [`evp_store::rollups::MAX_BATCH_DOCS`] instead.
const KEPT_SPAN_MS: u64 = 10_000;

/// What health reports about the job (the `rollup` section of the worker's health JSON).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RollupStatus {
    /// Whether this replica holds the lease and runs the job.
    pub leader: bool,
    /// Seconds of stream time between the acknowledged frontier and the rollups (leader only).
    pub rollup_lag_seconds: Option<f64>,
    /// The last round's error, cleared by a good round.
    pub last_error: Option<String>,
    #[serde(skip)]
    pub failures: u32,
}

impl RollupStatus {
    /// Degraded: the lag is past `ROLLUP_MAX_LAG_S`, or the job keeps failing.
    pub fn degraded(&self, max_lag: Duration) -> bool {
        self.failures >= FAILING_AFTER
            || self.rollup_lag_seconds.is_some_and(|lag| lag > max_lag.as_secs_f64())
    }
}

pub type SharedStatus = Arc<Mutex<RollupStatus>>;

/// Per (generation, partition): the (next, frontier) the provisional counts were last written for
/// (nothing changed, nothing to write), and the counts themselves when within bounds.
#[derive(Default)]
struct Provisionals {
    written: HashMap<(i64, i32), (i64, EntryId)>,
    kept: HashMap<(i64, i32), Option<ProvisionalCounts>>,
}

/// The partitions' numbers and streams; each one's ranges close at its own frontier.
fn partitions(stream: &StreamClient) -> Vec<(i32, String)> {
    stream.partitions().iter().map(|p| (p.partition() as i32, p.stream().to_string())).collect()
}

pub async fn run(
    stream: StreamClient,
    rollups: RollupStore,
    mut grants: watch::Receiver<Option<Grant>>,
    status: SharedStatus,
    shutdown: CancellationToken,
) {
    let mut claimed: Option<i64> = None;
    // Per (generation, partition), the (next, frontier) the provisional counts were last written
    // for, and those counts (the next write reads only what was acknowledged since).
    let mut provisional = Provisionals::default();
    while !shutdown.is_cancelled() {
        let grant = *grants.borrow_and_update();
        let Some(grant) = grant.filter(Grant::is_valid) else {
            claimed = None;
            {
                let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
                s.leader = false;
                s.rollup_lag_seconds = None;
            }
            tokio::select! {
                _ = grants.changed() => {}
                _ = tokio::time::sleep(ROUND_EVERY) => {}
                _ = shutdown.cancelled() => {}
            }
            continue;
        };
        status.lock().unwrap_or_else(|p| p.into_inner()).leader = true;
        let result = async {
            if claimed != Some(grant.fence) {
                rollups.claim(grant.fence).await?;
                claimed = Some(grant.fence);
                tracing::info!(fence = grant.fence, "rollup job starting under this grant");
            }
            round(&stream, &rollups, &grants, grant, &mut provisional).await
        }
        .await;
        let pause = match result {
            Ok(outcome) => {
                metrics::gauge!(m::ROLLUP_LAG).set(outcome.lag_seconds);
                let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
                s.rollup_lag_seconds = Some(outcome.lag_seconds);
                s.last_error = None;
                s.failures = 0;
                if outcome.busy { Duration::ZERO } else { ROUND_EVERY }
            }
            Err(e) => {
                if matches!(e, RoundError::Rollup(RollupError::Fenced { .. })) {
                    metrics::counter!(m::ROLLUP_FENCED).increment(1);
                    tracing::warn!(error = %e, "rollup write refused: a newer leader exists; standing by");
                    claimed = None;
                } else {
                    tracing::warn!(error = %e, "rollup round failed; retrying");
                }
                metrics::counter!(m::ROLLUP_ERRORS).increment(1);
                let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
                s.failures += 1;
                s.last_error = Some(e.to_string());
                ROUND_EVERY * 4
            }
        };
        if !pause.is_zero() {
            sleep_unless_cancelled(pause, &shutdown).await;
        }
    }
}

/// Why a round failed: a rollup write or read, or Redis.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error(transparent)]
    Rollup(#[from] RollupError),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl From<mongodb::error::Error> for RoundError {
    fn from(e: mongodb::error::Error) -> Self {
        Self::Rollup(e.into())
    }
}

struct Outcome {
    lag_seconds: f64,
    /// More work is waiting: run the next round at once.
    busy: bool,
}

/// Why a round stops early without an error: the grant ran out.
fn still_leading(grants: &watch::Receiver<Option<Grant>>, grant: Grant) -> bool {
    grant.is_valid() && grants.borrow().is_some_and(|g| g.fence == grant.fence)
}

async fn round(
    stream: &StreamClient,
    rollups: &RollupStore,
    grants: &watch::Receiver<Option<Grant>>,
    grant: Grant,
    provisional: &mut Provisionals,
) -> Result<Outcome, RoundError> {
    let generations = rollups.generations().await?;
    // What was kept for a generation readers no longer use (after a rebuild) is dropped.
    provisional.kept.retain(|(g, _), _| *g == generations.current);
    provisional.written.retain(|(g, _), _| *g == generations.current);
    let mut lag_seconds: f64 = 0.0;
    let mut busy = false;
    let mut caught_up = true;
    for (partition, key) in partitions(stream) {
        let frontier = acknowledged_frontier(stream.conn(), &key, stream.group()).await?;
        let Some(frontier) = frontier else { continue };
        let frontier_ms = frontier.ms;
        let closed = frontier_ms as i64 / RANGE_MS;
        let mut next = rollups.next_range(generations.current, partition).await?;
        let key = (generations.current, partition);
        // Caught up last round: close the ranges from the counts kept then, extended by what was
        // acknowledged since, instead of reading their events again.
        let kept = provisional.kept.entry(key).or_default();
        if kept.as_ref().is_some_and(|k| frontier.ms.saturating_sub(k.until().ms) > KEPT_SPAN_MS) {
            // Far behind (the job paused): the ranges are read in batches instead, as from cold.
            *kept = None;
        }
        if next < closed && kept.as_ref().is_some_and(|k| k.next() == next) && still_leading(grants, grant) {
            rollups.extend_kept(partition, next, frontier, kept).await?;
            if let Some(counts) = kept.as_mut().and_then(|k| k.take_closed(partition, closed)) {
                // Whatever fails from here, the kept counts no longer start at `next`: the next
                // round reads the ranges instead.
                next = close(rollups, generations.current, next, &counts, grant.fence).await?;
            }
        }
        let mut steps = 0;
        while next < closed && steps < MAX_STEPS && still_leading(grants, grant) {
            next = step(rollups, generations.current, partition, next, closed, grant.fence).await?;
            steps += 1;
        }
        busy |= next < closed;
        // Caught up: count the acknowledged events past the closed ranges once more, so that
        // readers need not read them (only when something changed).
        if next >= closed
            && provisional.written.get(&key) != Some(&(next, frontier))
            && still_leading(grants, grant)
        {
            let kept = provisional.kept.entry(key).or_default();
            rollups
                .write_provisional(generations.current, partition, next, frontier, grant.fence, kept)
                .await?;
            provisional.written.insert(key, (next, frontier));
        }
        lag_seconds = lag_seconds.max((frontier_ms as f64 - (next * RANGE_MS) as f64).max(0.0) / 1000.0);
        if let Some(building) = generations.building {
            let mut built = rollups.next_range(building, partition).await?;
            if built < closed && still_leading(grants, grant) {
                built = step(rollups, building, partition, built, closed, grant.fence).await?;
            }
            busy |= built < closed;
            caught_up &= built == next;
        }
    }
    if let Some(building) = generations.building
        && caught_up
        && still_leading(grants, grant)
    {
        rollups.switch(building, now_ms(), grant.fence).await?;
        tracing::info!(generation = building, "rollups rebuilt: readers now use the new generation");
    }
    if let Some((retired, at)) = generations.retired
        && now_ms() - at > RETIRED_KEEP_MS
    {
        rollups.drop_retired(retired, grant.fence).await?;
        tracing::info!(generation = retired, "deleted the retired rollup generation");
    }
    Ok(Outcome { lag_seconds, busy })
}

/// Counts one batch of closed ranges from `next` (up to `closed`), applies it and advances;
/// returns the new `next`.
async fn step(
    rollups: &RollupStore,
    generation: i64,
    partition: i32,
    next: i64,
    closed: i64,
    fence: i64,
) -> Result<i64, RollupError> {
    let started = Instant::now();
    let counts = rollups.count_ranges(partition, next, closed).await?;
    let to = close(rollups, generation, next, &counts, fence).await?;
    tracing::debug!(
        generation,
        partition,
        from = next,
        to,
        events = counts.events,
        took_ms = started.elapsed().as_millis() as u64,
        "closed ranges counted"
    );
    Ok(to)
}

/// Applies the counts of closed ranges `[next, counts.to)` and advances `next` past them (steps 2
/// and 3 of the module map); returns the new `next`.
async fn close(
    rollups: &RollupStore,
    generation: i64,
    next: i64,
    counts: &RangeCounts,
    fence: i64,
) -> Result<i64, RollupError> {
    rollups.apply(generation, counts, fence).await?;
    rollups.advance(generation, counts.partition, next, counts.to, fence).await?;
    metrics::counter!(m::ROLLUP_RANGES).increment((counts.to - next) as u64);
    metrics::counter!(m::ROLLUP_EVENTS).increment(counts.events);
    Ok(counts.to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degraded_while_lagging_or_failing_only() {
        let max = Duration::from_secs(60);
        let healthy = RollupStatus { leader: true, rollup_lag_seconds: Some(59.0), ..Default::default() };
        assert!(!healthy.degraded(max));
        let lagging = RollupStatus { rollup_lag_seconds: Some(61.0), ..healthy.clone() };
        assert!(lagging.degraded(max));
        let failing = RollupStatus { failures: FAILING_AFTER, ..healthy.clone() };
        assert!(failing.degraded(max));
        let once = RollupStatus { failures: 1, last_error: Some("x".into()), ..healthy };
        assert!(!once.degraded(max), "one failed round is not yet degraded");
        assert!(!RollupStatus::default().degraded(max), "a standby is not degraded");
    }
}
