//! End-to-end check: MongoDB must hold every accepted event of the run exactly once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use serde::Serialize;

use crate::generator::{event_id, event_type};

#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// Accepted events expected in MongoDB.
    pub expected: u64,
    /// Documents of this run found.
    pub stored: u64,
    /// Accepted events not found.
    pub missing: u64,
    /// Events found more than once (one per extra copy).
    pub duplicates: u64,
    /// Events found that were not answered with 202 (a refused or timed-out request whose
    /// events were stored anyway); reported, not a failure.
    pub unexpected: u64,
    /// Up to ten missing ids, to start looking.
    pub missing_examples: Vec<String>,
    /// Events stored per second, from the first request to the last event stored.
    pub processing_events_per_s: f64,
    /// From the last response to the last event stored.
    pub lag_s: f64,
    /// Whether every expected event arrived before the wait gave up.
    pub complete: bool,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.complete && self.missing == 0 && self.duplicates == 0
    }
}

/// Where the run's events are stored.
#[derive(Debug)]
pub struct Target<'a> {
    pub mongodb_uri: &'a str,
    pub database: &'a str,
    pub tenant: &'a str,
    pub run_id: &'a str,
}

/// Waits until the run's documents reach `expected_ids.len()` (giving up after `stall` without
/// progress), then compares ids. `started` and `sent_done` time the rates.
pub async fn verify(
    target: &Target<'_>,
    expected_ids: &[String],
    started: Instant,
    sent_done: Instant,
    stall: Duration,
    progress: bool,
) -> anyhow::Result<Verification> {
    let client = mongo_client(target.mongodb_uri).await?;
    let events = client.database(target.database).collection::<Document>("events");
    let filter = doc! {"tenant": target.tenant, "type": event_type(target.run_id)};
    let expected = expected_ids.len() as u64;

    let mut last_count = 0;
    let mut last_progress = Instant::now();
    let mut last_print = Instant::now();
    let complete = loop {
        let count = events.count_documents(filter.clone()).await?;
        if count != last_count {
            last_count = count;
            last_progress = Instant::now();
        }
        if count >= expected {
            break true;
        }
        if last_progress.elapsed() > stall {
            break false;
        }
        if progress && last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!("[verify] {count}/{expected} stored");
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let done = Instant::now();

    let mut seen: HashMap<String, u64> = HashMap::with_capacity(expected as usize);
    let mut cursor =
        events.find(filter).projection(doc! {"event_id": 1, "_id": 0}).batch_size(10_000).await?;
    while let Some(doc) = cursor.try_next().await? {
        if let Ok(id) = doc.get_str("event_id") {
            *seen.entry(id.to_string()).or_default() += 1;
        }
    }
    let stored = seen.values().sum();
    let duplicates = seen.values().map(|n| n - 1).sum();
    let mut missing_examples = Vec::new();
    let mut missing = 0;
    for id in expected_ids {
        if seen.remove(id).is_none() {
            missing += 1;
            if missing_examples.len() < 10 {
                missing_examples.push(id.clone());
            }
        }
    }
    Ok(Verification {
        expected,
        stored,
        missing,
        duplicates,
        unexpected: seen.len() as u64,
        missing_examples,
        processing_events_per_s: stored as f64 / done.duration_since(started).as_secs_f64().max(1e-9),
        lag_s: done.saturating_duration_since(sent_done).as_secs_f64(),
        complete,
    })
}

/// Waits until consumer group `group` has read and acknowledged everything in `stream`: the
/// workers' own account of having stored it all. Cheap to poll, unlike counting in MongoDB, which
/// would compete with the workers for the server. Returns when that happened.
pub async fn wait_acknowledged(
    redis_url: &str,
    stream: &str,
    group: &str,
    stall: Duration,
) -> anyhow::Result<Instant> {
    let mut conn = redis::Client::open(redis_url)?.get_multiplexed_async_connection().await?;
    let mut last = (u64::MAX, u64::MAX);
    let mut last_change = Instant::now();
    loop {
        let groups: redis::streams::StreamInfoGroupsReply =
            redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(&mut conn).await?;
        if let Some(g) = groups.groups.iter().find(|g| g.name == group) {
            let state = (g.pending as u64, g.lag.map_or(u64::MAX, |l| l as u64));
            if state == (0, 0) {
                return Ok(Instant::now());
            }
            if state != last {
                last = state;
                last_change = Instant::now();
            }
        }
        if last_change.elapsed() > stall {
            anyhow::bail!("group {group} made no progress for {stall:?} (pending, lag = {last:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ids of events `0..n` of a run (for verifying a run whose events were all accepted).
pub fn all_ids(run_id: &str, n: u64) -> Vec<String> {
    (0..n).map(|i| event_id(run_id, i)).collect()
}

async fn mongo_client(uri: &str) -> mongodb::error::Result<mongodb::Client> {
    let mut options = mongodb::options::ClientOptions::parse(uri).await?;
    options.server_selection_timeout = Some(Duration::from_secs(10));
    options.app_name = Some("evp-loadtest".into());
    mongodb::Client::with_options(options)
}
