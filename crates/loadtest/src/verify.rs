//! End-to-end check: MongoDB must hold every accepted event of the run exactly once.
//!
//! Waiting must not load the system being measured. Counting the run's documents in MongoDB
//! every 200 ms (what this tool did before) competes with the workers for the server, and on a
//! saturated one cut the rate it measured eightfold. So the wait watches the consumer group in Redis instead (pending and lag
//! reaching 0: the workers' own account of having stored and acknowledged everything, cheap to ask
//! every 250 ms) and sends MongoDB nothing until the end. Only when the group cannot be watched
//! (Redis not reachable from here, `--no-group-watch`, or Redis unable to tell the lag) does it
//! count in MongoDB, at most every [`MONGO_POLL`]. Then the ids are compared exactly once, so the
//! verdict stays exact.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use serde::Serialize;

use crate::generator::{event_id, event_type};

/// Least time between two counts of the run's documents in MongoDB while waiting.
pub const MONGO_POLL: Duration = Duration::from_secs(5);
/// Time between two looks at the consumer group.
const GROUP_POLL: Duration = Duration::from_millis(250);

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
    /// Entries the consumer group acknowledged per second after sending ended, while it drained
    /// the backlog left then; absent when the group was not watched or had no backlog to drain.
    pub drain_events_per_s: Option<f64>,
    /// How the end of the run was seen: `redis` (the group) or `mongodb` (a count).
    pub seen_by: &'static str,
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

/// The consumer group whose acknowledgements say the pipeline is done.
#[derive(Debug, Clone, Copy)]
pub struct Group<'a> {
    pub redis_url: &'a str,
    /// `redis_url` lists a Redis Cluster's seed nodes.
    pub cluster: bool,
    pub stream: &'a str,
    /// `STREAM_PARTITIONS`: the group's state is the sum over the partitions.
    pub partitions: u32,
    pub name: &'a str,
}

/// What the group says at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GroupState {
    pending: u64,
    /// `None` when Redis cannot tell (entries deleted out of order).
    lag: Option<u64>,
    /// Entries read and acknowledged so far (`entries-read` − pending).
    acked: Option<u64>,
}

struct GroupWatch {
    conn: evp_runtime::redis_conn::RedisConn,
    /// Every partition's stream.
    streams: Vec<String>,
    name: String,
}

impl GroupWatch {
    /// Connects; the group need not exist yet.
    async fn open(group: &Group<'_>) -> anyhow::Result<Self> {
        let target = evp_runtime::redis_conn::RedisTarget::new(group.redis_url, group.cluster)?;
        let conn = target.shared(Duration::from_secs(5))?;
        conn.ping().await?;
        let partitions = evp_runtime::partitions::Partitions::new(group.stream, group.partitions);
        let streams = partitions.iter().map(|p| p.stream.clone()).collect();
        Ok(Self { conn, streams, name: group.name.to_string() })
    }

    /// Connects to a group that exists.
    async fn connect(group: &Group<'_>) -> anyhow::Result<Self> {
        let mut watch = Self::open(group).await?;
        watch
            .state()
            .await?
            .ok_or_else(|| anyhow::anyhow!("no consumer group {} on {}", group.name, group.stream))?;
        Ok(watch)
    }

    /// The group's state summed over the partitions; `None` while a partition has no group.
    async fn state(&mut self) -> anyhow::Result<Option<GroupState>> {
        let mut total = GroupState { pending: 0, lag: Some(0), acked: Some(0) };
        for stream in &self.streams {
            let groups: redis::streams::StreamInfoGroupsReply =
                redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(&mut self.conn).await?;
            let Some(g) = groups.groups.iter().find(|g| g.name == self.name) else { return Ok(None) };
            total.pending += g.pending as u64;
            total.lag = total.lag.zip(g.lag).map(|(a, b)| a + b as u64);
            let acked = g.entries_read.map(|r| (r as u64).saturating_sub(g.pending as u64));
            total.acked = total.acked.zip(acked).map(|(a, b)| a + b);
        }
        Ok(Some(total))
    }
}

/// How the end of a run is waited for.
#[derive(Debug, Clone, Copy)]
pub enum Wait<'a> {
    /// Watch the consumer group; count in MongoDB only if it cannot be watched.
    Group(Group<'a>),
    /// Count in MongoDB every [`MONGO_POLL`].
    Count,
    /// The caller already knows the run is stored (and when): compare at once.
    Done(Instant),
}

/// Waits until the run is stored (see [`Wait`]), giving up after `stall` without progress; then
/// compares ids once. `started` and `sent_done` time the rates.
pub async fn verify(
    target: &Target<'_>,
    wait: Wait<'_>,
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

    let mut watch = match wait {
        Wait::Count | Wait::Done(_) => None,
        Wait::Group(group) => match GroupWatch::connect(&group).await {
            Ok(watch) => Some(watch),
            Err(e) => {
                eprintln!(
                    "[verify] not watching the consumer group ({e:#}); counting in MongoDB every {MONGO_POLL:?}"
                );
                None
            }
        },
    };
    let at_sent_done = match watch.as_mut() {
        Some(w) => w.state().await?.map(|s| (Instant::now(), s)),
        None => None,
    };

    let mut last_seen = None;
    let mut last_progress = Instant::now();
    let mut last_count: Option<Instant> = None;
    let mut last_print = Instant::now();
    let (complete, seen_by, last_state) = loop {
        if let Wait::Done(_) = wait {
            break (true, "caller", None);
        }
        let mut state = None;
        if let Some(w) = watch.as_mut() {
            state = w.state().await?;
            if let Some(s) = state
                && s.pending == 0
                && s.lag == Some(0)
            {
                break (true, "redis", state);
            }
        }
        let mut count = None;
        let group_tells = state.is_some_and(|s| s.lag.is_some());
        if !group_tells && last_count.is_none_or(|t| t.elapsed() >= MONGO_POLL) {
            let n = events.count_documents(filter.clone()).await?;
            last_count = Some(Instant::now());
            if n >= expected {
                break (true, "mongodb", state);
            }
            count = Some(n);
        }
        let seen = (state.map(|s| (s.pending, s.lag, s.acked)), count);
        if seen != (None, None) && Some(seen) != last_seen {
            last_seen = Some(seen);
            last_progress = Instant::now();
        }
        if last_progress.elapsed() > stall {
            break (false, if watch.is_some() { "redis" } else { "mongodb" }, state);
        }
        if progress && last_print.elapsed() >= Duration::from_secs(1) {
            match state {
                Some(s) => eprintln!("[verify] waiting: group pending {}, lag {:?}", s.pending, s.lag),
                None => eprintln!(
                    "[verify] waiting: {} of {expected} stored at the last count",
                    count.unwrap_or(0)
                ),
            }
            last_print = Instant::now();
        }
        tokio::time::sleep(if watch.is_some() { GROUP_POLL } else { MONGO_POLL }).await;
    };
    let done = match wait {
        Wait::Done(at) => at,
        _ => Instant::now(),
    };
    let drain_events_per_s = drain_rate(at_sent_done, last_state, done);

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
        drain_events_per_s,
        seen_by,
        complete,
    })
}

/// Entries acknowledged per second between the end of sending and `done`, when at least a
/// second's worth of backlog (1,000 entries) was left to drain.
fn drain_rate(start: Option<(Instant, GroupState)>, end: Option<GroupState>, done: Instant) -> Option<f64> {
    let (at, before) = start?;
    let backlog = before.pending + before.lag?;
    let acked = end?.acked?.checked_sub(before.acked?)?;
    let seconds = done.duration_since(at).as_secs_f64();
    (backlog >= 1_000 && seconds > 0.0).then(|| acked as f64 / seconds)
}

/// Waits until consumer group `group` has read and acknowledged everything in its stream (the
/// group may not exist yet): the workers' own account of having stored it all. Returns when that
/// happened; gives up after `stall` without progress.
pub async fn wait_acknowledged(group: &Group<'_>, stall: Duration) -> anyhow::Result<Instant> {
    let mut watch = GroupWatch::open(group).await?;
    let mut last = None;
    let mut last_change = Instant::now();
    loop {
        let state = watch.state().await?;
        if let Some(s) = state
            && s.pending == 0
            && s.lag == Some(0)
        {
            return Ok(Instant::now());
        }
        if state.is_some() && state != last {
            last = state;
            last_change = Instant::now();
        }
        if last_change.elapsed() > stall {
            anyhow::bail!("group {} made no progress for {stall:?} (last seen: {last:?})", group.name);
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
