//! `GET /analytics/metrics`: a tenant's exact counts from the rollups, and the pipeline's state.
//!
//! - [`AnalyticsQuery`] is the query string (unknown and repeated parameters refused) and what
//!   the OpenAPI document says of it; [`AnalyticsQuery::window`] checks it into a [`Window`]
//!   aligned on the bucket, refusing more than [`MAX_POINTS`] points.
//! - The counts are `evp_store::rollups`'s: count documents plus the not-yet-rolled tail, so the
//!   answer is exact and current. [`Metrics`] is the answer.
//! - [`Pipeline`] reads the stream and the group from Redis; [`RateSampler`] keeps one sample of
//!   Redis's own counters (`entries-added`, the group's `entries-read`) a second, so the rates
//!   over the last 10 s cost no write on the hot path.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evp_runtime::partitions::Partitions;
use evp_runtime::redis_conn::{RedisConn, RedisTarget};
use evp_runtime::stream_state::{self, ConsumerState, Snapshot};
use evp_store::rollups::{MINUTE_MS, RANGE_MS};
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::read::{invalid, parse_query, parse_time};

/// Most points a series may have.
pub const MAX_POINTS: i64 = 10_000;
/// Analytics answers one ingest process computes at once; the others wait (at most the read
/// timeout, then 503).
pub const CONCURRENT_ANSWERS: usize = 2;
/// The window of the rates.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Query parameters of `GET /analytics/metrics`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AnalyticsQuery {
    /// Start of the window, RFC 3339 (default: `to` minus one hour); rounded down to the bucket.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// End of the window, RFC 3339, exclusive (default: now); rounded up to the bucket.
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// `minute` (default), `hour` or `day` (UTC). A window of more than 10,000 buckets is refused.
    #[param(value_type = Option<String>, pattern = "^(minute|hour|day)$")]
    pub bucket: Option<String>,
    /// Only events of this type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
}

/// A checked window: `[from_ms, to_ms)` on bucket boundaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub from_ms: i64,
    pub to_ms: i64,
    pub bucket: &'static str,
    pub bucket_ms: i64,
    pub event_type: Option<String>,
}

/// Unix ms as RFC 3339 (UTC, `Z`).
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

impl AnalyticsQuery {
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        parse_query(raw)
    }

    /// The window, checked against `now_ms`'s defaults.
    pub fn window(&self, now_ms: i64) -> Result<Window, ApiError> {
        let (bucket, bucket_ms) = match self.bucket.as_deref() {
            None | Some("minute") => ("minute", MINUTE_MS),
            Some("hour") => ("hour", 60 * MINUTE_MS),
            Some("day") => ("day", 24 * 60 * MINUTE_MS),
            Some(other) => {
                return Err(invalid("bucket", format!("must be minute, hour or day, got {other:?}")));
            }
        };
        if let Some(t) = &self.event_type
            && !evp_events::input::is_event_type(t)
        {
            return Err(invalid("type", format!("not an event type: {t:?}")));
        }
        let to = self.to.as_deref().map(|s| parse_time("to", s)).transpose()?.unwrap_or(now_ms);
        let from =
            self.from.as_deref().map(|s| parse_time("from", s)).transpose()?.unwrap_or(to - 60 * MINUTE_MS);
        if from >= to {
            return Err(invalid(if self.to.is_some() { "to" } else { "from" }, "must be after from".into()));
        }
        let from_ms = from.div_euclid(bucket_ms) * bucket_ms;
        let to_ms = (to - 1).div_euclid(bucket_ms) * bucket_ms + bucket_ms;
        let points = (to_ms - from_ms) / bucket_ms;
        if points > MAX_POINTS {
            return Err(invalid(
                "bucket",
                format!(
                    "the window holds {points} {bucket}s, more than {MAX_POINTS}: use a larger bucket or a shorter window"
                ),
            ));
        }
        Ok(Window { from_ms, to_ms, bucket, bucket_ms, event_type: self.event_type.clone() })
    }
}

/// The analytics answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"from": "2026-11-20T09:00:00Z", "to": "2026-11-20T11:00:00Z", "bucket": "hour", "total": 1234,
    "by_type": [{"type": "page_view", "count": 1000}, {"type": "signup", "count": 234}],
    "series": [{"start": "2026-11-20T09:00:00Z", "count": 600, "by_type": {"page_view": 500, "signup": 100}},
               {"start": "2026-11-20T10:00:00Z", "count": 634, "by_type": {"page_view": 500, "signup": 134}}],
    "rollup": {"complete_until": "2026-11-20T10:59:58Z", "lag_seconds": 0.8},
    "pipeline": {"stream_length": 0, "pending": 0, "lag": 0, "dead_letters": 0,
        "consumers": [{"name": "worker-1", "pending": 0, "idle_ms": 12}], "ingest_rate": 0.0, "processing_rate": 0.0}}))]
pub struct Metrics {
    /// Start of the window (on a bucket boundary).
    pub from: String,
    /// End of the window, exclusive (on a bucket boundary).
    pub to: String,
    pub bucket: String,
    /// Events in the window.
    pub total: i64,
    /// Events per type in the window, most first.
    pub by_type: Vec<TypeCount>,
    /// One point per bucket, empty ones included, oldest first.
    pub series: Vec<Point>,
    pub rollup: RollupState,
    pub pipeline: PipelineState,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TypeCount {
    #[serde(rename = "type")]
    pub event_type: String,
    pub count: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Point {
    /// Start of the bucket.
    pub start: String,
    pub count: i64,
    /// Counts per type in this bucket (types with none are left out).
    pub by_type: BTreeMap<String, i64>,
}

/// How far the rollups reach. Counts are exact either way: what the rollups do not hold yet is
/// counted from the stored events.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RollupState {
    /// Every event appended to the stream before this instant (stream time) is in the rollups.
    pub complete_until: Option<String>,
    /// Seconds of stream time between the acknowledged events and the rollups.
    pub lag_seconds: f64,
}

/// The pipeline, for every tenant alike.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PipelineState {
    /// Entries in the stream (acknowledged ones are trimmed within a second or so).
    pub stream_length: u64,
    /// Entries delivered to workers and not yet acknowledged.
    pub pending: u64,
    /// Entries not yet delivered to any worker.
    pub lag: u64,
    /// Entries in the dead-letter stream.
    pub dead_letters: u64,
    pub consumers: Vec<Consumer>,
    /// Events/s appended to the stream over the last 10 s.
    pub ingest_rate: f64,
    /// Events/s read by the workers over the last 10 s.
    pub processing_rate: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Consumer {
    pub name: String,
    pub pending: u64,
    pub idle_ms: u64,
}

/// Folds per-(type, minute) counts into the answer's totals and series.
pub fn summarize(window: &Window, counts: &HashMap<(String, i64), i64>) -> (i64, Vec<TypeCount>, Vec<Point>) {
    let buckets = ((window.to_ms - window.from_ms) / window.bucket_ms) as usize;
    let mut series: Vec<Point> = (0..buckets)
        .map(|i| Point {
            start: rfc3339(window.from_ms + i as i64 * window.bucket_ms),
            count: 0,
            by_type: BTreeMap::new(),
        })
        .collect();
    let mut by_type: HashMap<&str, i64> = HashMap::new();
    let mut total = 0;
    for ((event_type, minute), &count) in counts {
        if count == 0 || *minute < window.from_ms || *minute >= window.to_ms {
            continue;
        }
        let point = &mut series[((minute - window.from_ms) / window.bucket_ms) as usize];
        point.count += count;
        *point.by_type.entry(event_type.clone()).or_default() += count;
        *by_type.entry(event_type).or_default() += count;
        total += count;
    }
    let mut by_type: Vec<TypeCount> =
        by_type.into_iter().map(|(t, count)| TypeCount { event_type: t.to_owned(), count }).collect();
    by_type.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.event_type.cmp(&b.event_type)));
    (total, by_type, series)
}

/// One sample of Redis's counters.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    added: u64,
    read: u64,
}

/// The last [`RATE_WINDOW`] of counter samples, shared by every server thread.
#[derive(Debug, Clone, Default)]
pub struct RateSampler(Arc<Mutex<VecDeque<Sample>>>);

impl RateSampler {
    /// Samples `snapshot`'s counters every second until `shutdown`.
    pub fn spawn(&self, pipeline: Pipeline, shutdown: CancellationToken) {
        let samples = self.0.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Ok(s) = pipeline.snapshot().await {
                    let sample = Sample {
                        at: Instant::now(),
                        added: s.total.entries_added.unwrap_or(0),
                        read: s.total.entries_read.unwrap_or(0),
                    };
                    let mut samples = samples.lock().unwrap_or_else(|p| p.into_inner());
                    samples.push_back(sample);
                    while samples.front().is_some_and(|f| sample.at.duration_since(f.at) > RATE_WINDOW) {
                        samples.pop_front();
                    }
                }
            }
        });
    }

    /// (ingest, processing) events/s over the samples kept; zeros before two samples exist.
    pub fn rates(&self) -> (f64, f64) {
        let samples = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (Some(first), Some(last)) = (samples.front(), samples.back()) else { return (0.0, 0.0) };
        let secs = last.at.duration_since(first.at).as_secs_f64();
        if secs <= 0.0 {
            return (0.0, 0.0);
        }
        let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
        (rate(first.added, last.added), rate(first.read, last.read))
    }
}

/// Reads the partitions' and the group's state (one connection per server thread).
#[derive(Clone)]
pub struct Pipeline {
    target: RedisTarget,
    conn: RedisConn,
    partitions: Arc<Partitions>,
    group: Arc<str>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("partitions", &self.partitions.len())
            .field("group", &self.group)
            .finish()
    }
}

/// Every partition's state at one moment, added up, and each partition's last appended id.
#[derive(Debug, Clone, Default)]
pub struct PipelineSnapshot {
    /// Sums over the partitions; a consumer's pending entries are summed and its idle time is
    /// its smallest.
    pub total: Snapshot,
    /// The last entry appended to each partition (absent while its stream does not exist).
    pub appended: BTreeMap<i32, (u64, u64)>,
}

impl Pipeline {
    pub fn new(
        target: RedisTarget,
        partitions: Partitions,
        group: &str,
        timeout: Duration,
    ) -> redis::RedisResult<Self> {
        let conn = target.shared(timeout)?;
        Ok(Self { target, conn, partitions: Arc::new(partitions), group: Arc::from(group) })
    }

    /// The same, with a connection of the calling thread's runtime.
    pub fn on_this_runtime(&self, timeout: Duration) -> redis::RedisResult<Self> {
        Ok(Self { conn: self.target.shared(timeout)?, ..self.clone() })
    }

    /// The dead letters of every partition, on this connection.
    pub fn dead_letters(&self) -> evp_runtime::dead_letters::DeadLetters {
        evp_runtime::dead_letters::DeadLetters::new(self.conn.clone(), (*self.partitions).clone())
    }

    /// Every partition's snapshot (read concurrently), added up.
    pub async fn snapshot(&self) -> redis::RedisResult<PipelineSnapshot> {
        let reads = self
            .partitions
            .iter()
            .map(|p| stream_state::snapshot(&self.conn, &p.stream, &p.dlq, &self.group));
        let mut out = PipelineSnapshot::default();
        let mut consumers: BTreeMap<String, ConsumerState> = BTreeMap::new();
        for (partition, snapshot) in self.partitions.iter().zip(join_all(reads).await) {
            let snapshot = snapshot?;
            let total = &mut out.total;
            total.length += snapshot.length;
            total.pending += snapshot.pending;
            total.dead_letters += snapshot.dead_letters;
            total.entries_added = add(total.entries_added, snapshot.entries_added);
            total.entries_read = add(total.entries_read, snapshot.entries_read);
            total.lag = add(total.lag, snapshot.lag);
            if let Some(last) = snapshot.last_generated {
                out.appended.insert(partition.index as i32, last);
            }
            for consumer in snapshot.consumers {
                match consumers.get_mut(&consumer.name) {
                    Some(seen) => {
                        seen.pending += consumer.pending;
                        seen.idle_ms = seen.idle_ms.min(consumer.idle_ms);
                    }
                    None => drop(consumers.insert(consumer.name.clone(), consumer)),
                }
            }
        }
        out.total.consumers = consumers.into_values().collect();
        Ok(out)
    }

    /// Each partition's acknowledged frontier, in ms of stream time (partitions without a group
    /// yet are absent).
    pub async fn frontiers_ms(&self) -> redis::RedisResult<BTreeMap<i32, i64>> {
        let reads = self
            .partitions
            .iter()
            .map(|p| stream_state::acknowledged_frontier(&self.conn, &p.stream, &self.group));
        let mut out = BTreeMap::new();
        for (partition, frontier) in self.partitions.iter().zip(join_all(reads).await) {
            if let Some((ms, _)) = frontier? {
                out.insert(partition.index as i32, ms as i64);
            }
        }
        Ok(out)
    }

    /// The partition numbers, as the rollups name them.
    pub fn partition_numbers(&self) -> Vec<i32> {
        self.partitions.iter().map(|p| p.index as i32).collect()
    }
}

/// A sum of counters a partition may not report (its stream does not exist yet).
fn add(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (None, None) => None,
        _ => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    }
}

/// The rollup section from each partition's `next` range and acknowledged frontier: complete
/// until the earliest partition's `next`, lagging by the partition furthest behind its frontier.
///
/// A partition whose every appended entry is before its `next` range (an empty partition, one
/// that had no new event for a while) is counted through the present and does not hold
/// `complete_until` back; when every partition is like that, it is the furthest `next`.
pub fn rollup_state(
    next_range: &BTreeMap<i32, i64>,
    frontiers_ms: &BTreeMap<i32, i64>,
    appended: &BTreeMap<i32, (u64, u64)>,
) -> RollupState {
    let counted_through_now = |p: &i32, next: &i64| {
        // (0, 0): the stream exists but nothing was ever appended to it.
        appended.get(p).is_none_or(|&(ms, seq)| {
            (ms, seq) == (0, 0) || i64::try_from(ms).is_ok_and(|ms| ms < next * RANGE_MS)
        })
    };
    let behind =
        next_range.iter().filter(|(p, next)| !counted_through_now(p, next)).map(|(_, next)| *next).min();
    let complete = behind.or_else(|| next_range.values().max().copied()).map(|next| next * RANGE_MS);
    let lag_ms = frontiers_ms
        .iter()
        .filter_map(|(p, frontier)| next_range.get(p).map(|next| (frontier - next * RANGE_MS).max(0)))
        .max()
        .unwrap_or(0);
    let lag_seconds = lag_ms as f64 / 1000.0;
    RollupState { complete_until: complete.filter(|c| *c > 0).map(rfc3339), lag_seconds }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_partitions_do_not_hold_the_rollups_back() {
        let next: BTreeMap<i32, i64> = [(0, 1_700_000_100), (1, 0), (2, 1_700_000_050)].into();
        let frontiers: BTreeMap<i32, i64> = [(0, 1_700_000_100_500), (1, 0), (2, 1_700_000_050_000)].into();
        // Partition 1 never had an entry; partition 2's last entry is before its next range.
        let appended: BTreeMap<i32, (u64, u64)> =
            [(0, (1_700_000_100_400, 0)), (1, (0, 0)), (2, (1_700_000_049_999, 3))].into();
        let state = rollup_state(&next, &frontiers, &appended);
        assert_eq!(state.complete_until.as_deref(), Some("2023-11-14T22:15:00Z"));
        assert_eq!(state.lag_seconds, 0.5);
        // Partition 2 has an entry in a range not yet counted: it holds the rollups back.
        let appended: BTreeMap<i32, (u64, u64)> =
            [(0, (1_700_000_100_400, 0)), (2, (1_700_000_050_001, 0))].into();
        assert_eq!(
            rollup_state(&next, &frontiers, &appended).complete_until.as_deref(),
            Some("2023-11-14T22:14:10Z")
        );
        // Nothing anywhere: the furthest `next`.
        let all_quiet: BTreeMap<i32, (u64, u64)> = BTreeMap::new();
        assert_eq!(
            rollup_state(&next, &frontiers, &all_quiet).complete_until.as_deref(),
            Some("2023-11-14T22:15:00Z")
        );
    }

    fn query(pairs: &str) -> Result<Window, ApiError> {
        AnalyticsQuery::parse(Some(pairs))?.window(1_700_000_123_456)
    }

    #[test]
    fn default_window_is_the_last_hour_in_minutes() {
        let w = query("").unwrap();
        assert_eq!(w.bucket, "minute");
        assert_eq!(w.to_ms, 1_700_000_160_000, "now rounded up to the minute");
        assert_eq!(w.from_ms, 1_699_996_500_000);
        assert_eq!((w.to_ms - w.from_ms) / MINUTE_MS, 61);
    }

    #[test]
    fn bad_parameters_are_named() {
        for (q, parameter) in [
            ("bucket=week", "bucket"),
            ("from=yesterday", "from"),
            ("to=2026-13-01T00:00:00Z", "to"),
            ("from=2026-11-20T10:00:00Z&to=2026-11-20T09:00:00Z", "to"),
            ("from=2000-01-01T00:00:00Z&to=2026-01-01T00:00:00Z", "bucket"),
            ("type=no%20spaces", "type"),
        ] {
            match query(q) {
                Err(ApiError::InvalidQuery { parameter: p, .. }) => assert_eq!(p, Some(parameter), "{q}"),
                other => panic!("{q}: {other:?}"),
            }
        }
        assert!(matches!(query("limit=3"), Err(ApiError::InvalidQuery { parameter: None, .. })));
        assert!(query("from=2000-01-01T00:00:00Z&to=2026-01-01T00:00:00Z&bucket=day").is_ok());
    }

    #[test]
    fn series_has_every_bucket_and_types_sort_by_count() {
        let w = AnalyticsQuery::parse(Some("from=2026-11-20T09:30:00Z&to=2026-11-20T11:00:00Z&bucket=hour"))
            .unwrap()
            .window(0)
            .unwrap();
        let nine = parse_time("x", "2026-11-20T09:00:00Z").unwrap();
        let counts = HashMap::from([
            (("a".to_owned(), nine + 5 * MINUTE_MS), 2),
            (("b".to_owned(), nine + 61 * MINUTE_MS), 3),
            (("a".to_owned(), nine + 120 * MINUTE_MS), 7),
        ]);
        let (total, by_type, series) = summarize(&w, &counts);
        assert_eq!(total, 5, "the minute after the window is not counted");
        assert_eq!(by_type[0].event_type, "b");
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].start, "2026-11-20T09:00:00Z");
        assert_eq!(series[1].by_type.get("b"), Some(&3));
    }
}
