//! Exact per-(tenant, type, minute) counts: the `event_counts` collection and its bookkeeping.
//!
//! # Why the counts are exact
//!
//! Every stored event carries its stream position (`partition`, `seq`). The stream of each
//! partition is cut into fixed **ranges** of [`RANGE_MS`] of entry-id time: range `k` holds the
//! entries whose id lies in `[k·RANGE_MS, (k+1)·RANGE_MS)` ms. The grid is the same for every
//! process, so two leaders can never disagree on where a range starts or ends.
//!
//! A range is **closed** once the consumer group has acknowledged every entry below its end and no
//! new entry can get an id below it (the worker reads both from Redis: the group's last-delivered
//! id and its oldest pending entry). A worker acknowledges an entry only after MongoDB acknowledged
//! its document, and an entry that is dead-lettered has no document; so once a range is closed, the
//! set of documents whose `seq` lies in it no longer changes. Counting a closed range always gives
//! the same numbers, whoever counts it, however often.
//!
//! Each count document (one per generation, tenant, type and minute of `timestamp`) holds `count`
//! and, per partition, `applied_<p>`: the last range whose contribution it includes. Invariant:
//! `count` = the sum of the contributions of partition `p`'s ranges ≤ `applied_<p>`, over all `p`.
//! The progress document of each (generation, partition) holds `next`: every range below it has
//! been applied to every count document it contributes to. The job:
//!
//! 1. counts the closed ranges `[next, K)` of a partition (documents with `seq` in them; a leader
//!    that keeps up takes them from the counts it kept since the ranges were open, `kept`, which
//!    are the same numbers: the documents below an acknowledged frontier are final);
//! 2. updates each count document with `$inc` **only if** `applied_<p>` is below the first range
//!    it is adding (else it re-reads the document and adds only the ranges above `applied_<p>`:
//!    compare-and-set), setting `applied_<p>` to the last range it added;
//! 3. only then moves `next` to `K`.
//!
//! A crash between steps leaves `next` behind; the next leader recounts the same ranges, gets the
//! same numbers, and step 2's condition skips what was already added. So each stored event is
//! counted exactly once, whatever crashed, was redelivered (same document, same `seq`), or retried
//! by a client (one document, with the position of whichever copy was stored).
//!
//! # Fencing
//!
//! Every write of the job carries the lease's fencing number and is refused by the document when
//! the document has seen a newer one ([`RollupError::Fenced`]); a new leader stamps its number on
//! every progress document before its first round, so a deposed leader's progress writes fail
//! everywhere, and a count write fails on every document the new leader has touched. (A deposed
//! leader's write that slips through is still exact: it adds a closed range's true contribution,
//! under the same condition.)
//!
//! # Reading
//!
//! [`RollupStore::counts`] reads the progress first, then the count documents, then the documents
//! of the tenant's events in ranges not yet applied (the tail), counting a tail event only when
//! its count document has not applied its range; so each stored event is in the answer once.
//!
//! # Rebuild
//!
//! `evp-worker rollups rebuild` asks for a new generation ([`RollupStore::request_rebuild`]). The
//! leader keeps the current generation up to date and builds the new one beside it from range 0,
//! with the same code; once the new generation has caught up with the current one in every
//! partition, one write on the pointer document switches readers to it ([`RollupStore::switch`]).
//! The old generation is deleted a minute later, once no reader can still be using it.
//!
//! # Where
//!
//! Here: the ranges, the types, the store and its generations (pointer, claim, rebuild, switch);
//! `job`: counting closed ranges, applying and advancing, the provisional counts (the leader's
//! side); `kept`: the counts a leader keeps between rounds; `read`: the progress and a window's
//! counts (the analytics side).

use std::collections::{BTreeMap, HashMap};

use mongodb::bson::{Bson, DateTime, Document, RawDocumentBuf, doc};
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};

use crate::indexes::Query;
use crate::is_duplicate;
use evp_events::EntryId;

mod job;
mod kept;
mod read;

pub use kept::ProvisionalCounts;
pub use read::{Window, counts_query, tail_query};

/// Width of one range, in stream-id milliseconds.
pub const RANGE_MS: i64 = 1_000;
/// A minute, in milliseconds: the finest bucket of the counts.
pub const MINUTE_MS: i64 = 60_000;
/// Most event documents read into one count batch (a single range larger than this is still
/// read whole).
pub const MAX_BATCH_DOCS: i64 = 200_000;
/// How long a retired generation is kept after a switch, for readers that started before it.
pub const RETIRED_KEEP_MS: i64 = 60_000;
/// Most keys the provisional counts of one partition may hold (they live in its progress
/// document, which must stay far below 16 MiB); past it readers read those events instead.
pub const MAX_PROVISIONAL: usize = 20_000;
const POINTER_ID: &str = "current";

/// What went wrong with a rollup write.
#[derive(Debug, thiserror::Error)]
pub enum RollupError {
    /// A newer leader has written here: this process is no longer the leader.
    #[error("refused: a newer lease grant (fencing number {seen} > {ours}) has written the rollups")]
    Fenced { ours: i64, seen: i64 },
    /// The progress moved under us (another leader): nothing was changed.
    #[error("the rollup progress of generation {generation} partition {partition} moved under this leader")]
    Conflict { generation: i64, partition: i32 },
    #[error(transparent)]
    Mongo(#[from] mongodb::error::Error),
}

/// Which generation readers use, and which one is being built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generations {
    pub current: i64,
    pub building: Option<i64>,
    /// A generation replaced by a rebuild, and when (Unix ms): deleted after [`RETIRED_KEEP_MS`].
    pub retired: Option<(i64, i64)>,
}

/// One count document's share of a batch: its identity and what each range adds to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contribution {
    pub tenant: String,
    pub event_type: String,
    pub minute_ms: i64,
    /// Range → events, ascending.
    pub ranges: BTreeMap<i64, i64>,
}

/// The counts of ranges `[from, to)` of one partition.
#[derive(Debug, Clone, Default)]
pub struct RangeCounts {
    pub partition: i32,
    pub from: i64,
    /// Exclusive end: every range below it is counted here (or was before `from`).
    pub to: i64,
    pub contributions: Vec<Contribution>,
    pub events: u64,
}

/// The answer to [`RollupStore::counts`]: per (type, minute) counts of one tenant.
#[derive(Debug, Clone, Default)]
pub struct MinuteCounts {
    /// (type, minute start in Unix ms) → events.
    pub counts: HashMap<(String, i64), i64>,
    /// Per partition, the first range not in the rollups (`next`).
    pub next_range: BTreeMap<i32, i64>,
}

/// What readers read first: the generation, and per partition where the rollups stand.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub generation: i64,
    pub partitions: BTreeMap<i32, PartitionProgress>,
}

#[derive(Debug, Clone, Default)]
pub struct PartitionProgress {
    /// The first range not in the count documents.
    pub next: i64,
    /// Where the provisional counts end (exclusive, a stream id); `range_start(next)` without any.
    pub until: EntryId,
    pub provisional: Vec<Provisional>,
}

/// One provisional count: the acknowledged events of one range (not yet closed, or not yet
/// applied) for one (tenant, type, minute).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisional {
    pub tenant: String,
    pub event_type: String,
    pub minute_ms: i64,
    pub range: i64,
    pub count: i64,
}

/// The range holding a stream position (`sortable` `seq`), if it parses.
pub fn range_of(seq: &str) -> Option<i64> {
    let ms = EntryId::parse(seq)?.ms;
    Some(ms as i64 / RANGE_MS)
}

/// The first `seq` of range `k`.
pub fn range_start_seq(k: i64) -> String {
    EntryId::new(u64::try_from(k.max(0) * RANGE_MS).unwrap_or(0), 0).sortable()
}

/// The minute holding `ms` (floor, also before 1970).
pub fn minute_of(ms: i64) -> i64 {
    ms.div_euclid(MINUTE_MS) * MINUTE_MS
}

fn count_id(generation: i64, tenant: &str, event_type: &str, minute_ms: i64) -> String {
    // `type` has no '|' and the minute is digits, so the id is unique per (tenant, type, minute).
    format!("{generation}|{tenant}|{event_type}|{minute_ms}")
}

/// The field holding the last range of partition `p` a count document includes.
fn applied_field(p: i32) -> String {
    format!("applied_{p}")
}

fn progress_id(generation: i64, partition: i32) -> String {
    format!("{generation}|{partition}")
}

/// The rollups' collections: `event_counts` (the counts) and `rollup_progress` (the pointer to the
/// current generation and each partition's `next`), plus reads of `events`.
#[derive(Clone, Debug)]
pub struct RollupStore {
    counts: Collection<Document>,
    progress: Collection<Document>,
    events: Collection<Document>,
    /// `events` read as raw BSON, for the positions the job counts (no map built per document).
    positions: Collection<RawDocumentBuf>,
}

impl RollupStore {
    pub fn new(client: &mongodb::Client, database: &str) -> Self {
        let db = client.database(database);
        Self {
            counts: db.collection("event_counts"),
            progress: db.collection("rollup_progress"),
            events: db.collection("events"),
            positions: db.collection("events"),
        }
    }

    /// The counts' index (generation, tenant, minute, type): the analytics query is one range
    /// scan. The `events` index the job needs (`rollup_position`) is created with the others by
    /// [`crate::EventStore::ensure_indexes`].
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let index = IndexModel::builder()
            .keys(doc! { "gen": 1, "tenant": 1, "minute": 1, "type": 1 })
            .options(IndexOptions::builder().name("gen_tenant_minute_type".to_string()).build())
            .build();
        self.counts.create_index(index).await?;
        Ok(())
    }

    /// The generations, creating the pointer (generation 1) on first use.
    pub async fn generations(&self) -> mongodb::error::Result<Generations> {
        let pointer = match self.progress.find_one(doc! { "_id": POINTER_ID }).await? {
            Some(pointer) => pointer,
            None => {
                let fresh = doc! { "_id": POINTER_ID, "current": 1_i64, "fence": 0_i64 };
                match self.progress.insert_one(fresh.clone()).await {
                    Ok(_) => fresh,
                    Err(e) if is_duplicate(&e) => {
                        self.progress.find_one(doc! { "_id": POINTER_ID }).await?.unwrap_or(fresh)
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        Ok(Generations {
            current: int(&pointer, "current").unwrap_or(1),
            building: int(&pointer, "building"),
            retired: int(&pointer, "retired")
                .zip(pointer.get_datetime("retired_at").ok().map(|at| at.timestamp_millis())),
        })
    }

    /// Stamps a new lease grant's fencing number on the pointer and every progress document, so
    /// that an older leader's progress writes are refused from now on. `Fenced` when a newer grant
    /// has already written.
    pub async fn claim(&self, fence: i64) -> Result<(), RollupError> {
        self.generations().await?;
        self.progress
            .update_many(doc! { "fence": { "$lte": fence } }, doc! { "$set": { "fence": fence } })
            .await?;
        if let Some(newer) = self.progress.find_one(doc! { "fence": { "$gt": fence } }).await? {
            return Err(RollupError::Fenced { ours: fence, seen: int(&newer, "fence").unwrap_or(i64::MAX) });
        }
        Ok(())
    }

    /// The first range of `partition` not yet in `generation` (0 when it never ran).
    pub async fn next_range(&self, generation: i64, partition: i32) -> mongodb::error::Result<i64> {
        let found = self.progress.find_one(doc! { "_id": progress_id(generation, partition) }).await?;
        Ok(found.and_then(|d| int(&d, "next")).unwrap_or(0))
    }

    /// Asks the leader for a new generation built from every stored event; returns its number
    /// (the one already being built, if a rebuild is under way).
    pub async fn request_rebuild(&self) -> mongodb::error::Result<i64> {
        let generations = self.generations().await?;
        if let Some(building) = generations.building {
            return Ok(building);
        }
        let next = generations.current.max(generations.retired.map_or(0, |r| r.0)) + 1;
        // Leftovers of an abandoned build of that number.
        self.counts.delete_many(doc! { "gen": { "$gte": next } }).await?;
        self.progress.delete_many(doc! { "gen": { "$gte": next } }).await?;
        let filter = doc! { "_id": POINTER_ID, "current": generations.current, "building": Bson::Null };
        self.progress.update_one(filter, doc! { "$set": { "building": next } }).await?;
        Ok(self.generations().await?.building.unwrap_or(next))
    }

    /// Makes `building` the current generation (it has caught up in every partition).
    pub async fn switch(&self, building: i64, now_ms: i64, fence: i64) -> Result<(), RollupError> {
        let generations = self.generations().await?;
        let filter = doc! { "_id": POINTER_ID, "building": building, "fence": { "$lte": fence } };
        let update = doc! { "$set": {
            "current": building, "building": Bson::Null, "retired": generations.current,
            "retired_at": DateTime::from_millis(now_ms), "fence": fence,
        } };
        if self.progress.update_one(filter, update).await?.matched_count == 1 {
            Ok(())
        } else {
            Err(RollupError::Conflict { generation: building, partition: -1 })
        }
    }

    /// Deletes a retired generation once readers can no longer be using it.
    pub async fn drop_retired(&self, generation: i64, fence: i64) -> Result<(), RollupError> {
        self.counts.delete_many(doc! { "gen": generation }).await?;
        self.progress.delete_many(doc! { "gen": generation }).await?;
        let filter = doc! { "_id": POINTER_ID, "retired": generation, "fence": { "$lte": fence } };
        self.progress.update_one(filter, doc! { "$unset": { "retired": "", "retired_at": "" } }).await?;
        Ok(())
    }
}

/// The events of `partition` with `seq` in `[from_seq, to_seq)`, in position order: one range of
/// the `rollup_position` index (the rollup job's counts and provisional counts).
pub fn position_query(partition: i32, from_seq: &str, to_seq: &str) -> Query {
    Query {
        filter: doc! { "partition": partition, "seq": { "$gte": from_seq, "$lt": to_seq } },
        sort: doc! { "seq": 1 },
        hint: None,
    }
}

/// An integer field of ours: written as Int64, kept as Int64 by MongoDB (`$inc` included).
fn int(d: &Document, key: &str) -> Option<i64> {
    d.get_i64(key).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_the_stream_id_grid() {
        assert_eq!(range_of("00000001700000000999-00000000000000000003"), Some(1_700_000_000));
        assert_eq!(range_of("00000001700000001000-00000000000000000000"), Some(1_700_000_001));
        assert_eq!(range_start_seq(1_700_000_001), "00000001700000001000-00000000000000000000");
        assert!(range_start_seq(5).as_str() > "00000000000000004999-99999999999999999999");
        assert_eq!(range_of("nonsense"), None);
    }

    #[test]
    fn minutes_floor_before_and_after_1970() {
        assert_eq!(minute_of(61_000), 60_000);
        assert_eq!(minute_of(-1), -60_000);
        assert_eq!(minute_of(0), 0);
    }
}
