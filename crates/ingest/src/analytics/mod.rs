//! `GET /analytics/metrics`: a tenant's exact counts from the rollups, and the pipeline's state.
//!
//! - [`AnalyticsQuery`] is the query string (unknown and repeated parameters refused) and what
//!   the OpenAPI document says of it; [`AnalyticsQuery::window`] checks it into a [`Window`]
//!   aligned on the bucket, refusing more than [`MAX_POINTS`] points.
//! - The counts are `evp_store::rollups`'s: count documents plus the not-yet-rolled tail, so the
//!   answer is exact and current. [`Metrics`] is the answer.
//! - [`pipeline`]: the answer's `pipeline` section ([`PipelineState`]: a tenant sees only its own
//!   figures), read from Redis ([`Pipeline`]) and sampled for the rates ([`RateSampler`]).

use std::collections::{BTreeMap, HashMap};

use evp_events::EntryId;
use evp_store::rollups::{MINUTE_MS, RANGE_MS};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;

mod pipeline;

use crate::read::{invalid, parse_query, parse_time};
pub use pipeline::{Consumer, Pipeline, PipelineSnapshot, PipelineState, RATE_WINDOW, RateSampler};

/// Most points a series may have.
pub const MAX_POINTS: i64 = 10_000;
/// Analytics answers one ingest process computes at once; the others wait (at most the read
/// timeout, then 503).
pub const CONCURRENT_ANSWERS: usize = 2;

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
    "pipeline": {"unstored": 0, "ingest_rate": 0.0, "processing_rate": 0.0, "stream_length": 0, "pending": 0,
        "lag": 0, "dead_letters": 0, "consumers": [{"name": "worker-1", "pending": 0, "idle_ms": 12}]}}))]
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

/// The rollup section from each partition's `next` range and acknowledged frontier: complete
/// until the earliest partition's `next`, lagging by the partition furthest behind its frontier.
///
/// A partition whose every appended entry is before its `next` range (an empty partition, one
/// that had no new event for a while) is counted through the present and does not hold
/// `complete_until` back; when every partition is like that, it is the furthest `next`.
pub fn rollup_state(
    next_range: &BTreeMap<i32, i64>,
    frontiers_ms: &BTreeMap<i32, i64>,
    appended: &BTreeMap<i32, EntryId>,
) -> RollupState {
    let counted_through_now = |p: &i32, next: &i64| {
        // (0, 0): the stream exists but nothing was ever appended to it.
        appended.get(p).is_none_or(|last| {
            *last == EntryId::default() || i64::try_from(last.ms).is_ok_and(|ms| ms < next * RANGE_MS)
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
        let appended: BTreeMap<i32, EntryId> = [
            (0, EntryId::new(1_700_000_100_400, 0)),
            (1, EntryId::new(0, 0)),
            (2, EntryId::new(1_700_000_049_999, 3)),
        ]
        .into();
        let state = rollup_state(&next, &frontiers, &appended);
        assert_eq!(state.complete_until.as_deref(), Some("2023-11-14T22:15:00Z"));
        assert_eq!(state.lag_seconds, 0.5);
        // Partition 2 has an entry in a range not yet counted: it holds the rollups back.
        let appended: BTreeMap<i32, EntryId> =
            [(0, EntryId::new(1_700_000_100_400, 0)), (2, EntryId::new(1_700_000_050_001, 0))].into();
        assert_eq!(
            rollup_state(&next, &frontiers, &appended).complete_until.as_deref(),
            Some("2023-11-14T22:14:10Z")
        );
        // Nothing anywhere: the furthest `next`.
        let all_quiet: BTreeMap<i32, EntryId> = BTreeMap::new();
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
