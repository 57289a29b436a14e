//! Metric names of `evp-worker`, in one place.

/// Counter: entries read from the stream (new and claimed).
pub const EVENTS_READ: &str = "evp_worker_events_read_total";
/// Counter: documents newly inserted.
pub const EVENTS_WRITTEN: &str = "evp_worker_events_written_total";
/// Counter: entries whose document was already stored (redelivery).
pub const EVENTS_DUPLICATE: &str = "evp_worker_events_duplicate_total";
/// Counter: documents MongoDB refused for good (each is dead-lettered with reason `refused`).
pub const EVENTS_FAILED: &str = "evp_worker_events_failed_total";
/// Counter, label `reason` (`undecodable`, `unstorable`, `refused`, `max_deliveries`): entries
/// moved to the dead-letter stream.
pub const EVENTS_DEAD_LETTERED: &str = "evp_worker_events_dead_lettered_total";
/// Counter: entries acknowledged.
pub const EVENTS_ACKED: &str = "evp_worker_events_acked_total";
/// Counter: pending entries claimed from idle consumers.
pub const EVENTS_CLAIMED: &str = "evp_worker_events_claimed_total";
/// Counter: bulk writes retried after a failure of the whole batch.
pub const WRITE_RETRIES: &str = "evp_worker_write_retries_total";
/// Counter: entries trimmed from the stream after every group acknowledged them.
pub const EVENTS_TRIMMED: &str = "evp_worker_events_trimmed_total";
/// Histogram: documents per bulk write.
pub const BATCH_EVENTS: &str = "evp_worker_batch_events";
/// Histogram: duration of one successful bulk write.
pub const WRITE_SECONDS: &str = "evp_worker_write_duration_seconds";
/// Gauge: bulk writes in flight in this worker.
pub const INFLIGHT_BATCHES: &str = "evp_worker_inflight_batches";
/// Gauge: the adaptive limit on bulk writes in flight, 1 to `WORKER_MAX_INFLIGHT`.
pub const INFLIGHT_LIMIT: &str = "evp_worker_inflight_limit";
/// Histogram: time the reader waited for a free write slot before each read (backpressure);
/// its `_sum` is the total time spent blocked.
pub const BACKPRESSURE_SECONDS: &str = "evp_worker_backpressure_wait_seconds";
/// Gauge: entries delivered to the group and not yet acknowledged.
pub const GROUP_PENDING: &str = "evp_worker_group_pending";
/// Gauge: entries not yet delivered to the group.
pub const GROUP_LAG: &str = "evp_worker_group_lag";
/// Gauge, by `partition`: entries of that partition delivered to the group and not acknowledged.
pub const PARTITION_PENDING: &str = "evp_worker_partition_pending";
/// Gauge, by `partition`: entries of that partition not yet delivered to the group.
pub const PARTITION_LAG: &str = "evp_worker_partition_lag";
/// Counter: trim rounds completed (whether or not anything was trimmed): proof that the trimmer runs.
pub const TRIM_RUNS: &str = "evp_worker_trim_runs_total";
/// Counter: partitions whose per-tenant unstored counts had drifted (an entry added or removed by
/// hand, or appended before the counts existed) and were reset once nothing was unstored. Stays 0
/// while every entry goes through the ingest and the workers.
pub const UNSTORED_RECONCILED: &str = "evp_worker_unstored_counts_reconciled_total";
/// Counter: upkeep that failed (trim, consumer cleanup, claim renewal), by `task`; each is also a warning.
pub const MAINTENANCE_FAILURES: &str = "evp_worker_maintenance_failures_total";
/// Gauge, label `lease`: 1 while this worker holds the lease (leads), else 0.
pub const LEADER: &str = "evp_worker_leader";
/// Counter, labels `lease` and `change` (`acquired`, `lost`, `released`): lease changes.
pub const LEASE_CHANGES: &str = "evp_worker_lease_changes_total";
/// Gauge: seconds of stream time the rollups trail the acknowledged frontier (leader only).
pub const ROLLUP_LAG: &str = "evp_worker_rollup_lag_seconds";
/// Counter: stream ranges (one second of entry ids each) closed and applied to the rollups.
pub const ROLLUP_RANGES: &str = "evp_worker_rollup_ranges_closed_total";
/// Counter: events counted into the rollups (a rebuild counts them again).
pub const ROLLUP_EVENTS: &str = "evp_worker_rollup_events_counted_total";
/// Counter: rollup rounds that failed.
pub const ROLLUP_ERRORS: &str = "evp_worker_rollup_errors_total";
/// Counter: rollup writes refused because a newer lease grant had written (a deposed leader).
pub const ROLLUP_FENCED: &str = "evp_worker_rollup_fenced_total";
