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
//! 1. counts the closed ranges `[next, K)` of a partition (documents with `seq` in them);
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

use std::collections::{BTreeMap, HashMap};

use futures::TryStreamExt;
use mongodb::bson::{Bson, DateTime, Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};

use crate::DUPLICATE_KEY;
use crate::document::{sortable_seq_of, sortable_seq_parts};
use crate::indexes::Query;

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
    pub until: (u64, u64),
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
    let (ms, _) = sortable_seq_parts(seq)?;
    Some(ms as i64 / RANGE_MS)
}

/// The first `seq` of range `k`.
pub fn range_start_seq(k: i64) -> String {
    sortable_seq_of((u64::try_from(k.max(0) * RANGE_MS).unwrap_or(0), 0))
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
}

impl RollupStore {
    pub fn new(client: &mongodb::Client, database: &str) -> Self {
        let db = client.database(database);
        Self {
            counts: db.collection("event_counts"),
            progress: db.collection("rollup_progress"),
            events: db.collection("events"),
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

    /// Counts the events of `partition` in ranges `[from, to)`: each document's (tenant, type,
    /// minute of `timestamp`), per range. Reads at most about [`MAX_BATCH_DOCS`] documents; the
    /// answer's `to` says how far it got (always past `from` when `from < to`).
    pub async fn count_ranges(
        &self,
        partition: i32,
        from: i64,
        to: i64,
    ) -> mongodb::error::Result<RangeCounts> {
        let mut counts = RangeCounts { partition, from, to: from, ..Default::default() };
        if from >= to {
            return Ok(counts);
        }
        let query = |hi: i64| position_query(partition, &range_start_seq(from), &range_start_seq(hi));
        let projection = position_projection();
        let mut by_doc: HashMap<(String, String, i64), BTreeMap<i64, i64>> = HashMap::new();
        let mut read = 0_i64;
        let mut last_range = from;
        let Query { filter, sort, .. } = query(to);
        let mut cursor = self
            .events
            .find(filter)
            .sort(sort)
            .limit(MAX_BATCH_DOCS + 1)
            .projection(projection.clone())
            .await?;
        while let Some(d) = cursor.try_next().await? {
            read += 1;
            if let Some(k) = add(&mut by_doc, &d) {
                last_range = k;
            }
        }
        let mut end = to;
        if read > MAX_BATCH_DOCS {
            // Sorted by position: only ranges before the last one read are complete.
            for ranges in by_doc.values_mut() {
                ranges.remove(&last_range);
            }
            end = last_range;
            if last_range <= from {
                // One range holds more than a batch: read it whole.
                end = from + 1;
                by_doc.clear();
                let mut whole = self.events.find(query(end).filter).projection(projection).await?;
                while let Some(d) = whole.try_next().await? {
                    add(&mut by_doc, &d);
                }
            }
        }
        by_doc.retain(|_, ranges| !ranges.is_empty());
        counts.events = by_doc.values().flat_map(BTreeMap::values).sum::<i64>() as u64;
        counts.to = end;
        counts.contributions = by_doc
            .into_iter()
            .map(|((tenant, event_type, minute_ms), ranges)| Contribution {
                tenant,
                event_type,
                minute_ms,
                ranges,
            })
            .collect();
        Ok(counts)
    }

    /// Adds `counts` to `generation`'s count documents (step 2 above), each at most once.
    pub async fn apply(&self, generation: i64, counts: &RangeCounts, fence: i64) -> Result<(), RollupError> {
        let applied = applied_field(counts.partition);
        for chunk in counts.contributions.chunks(1_000) {
            let updates: Vec<Document> = chunk
                .iter()
                .filter_map(|c| {
                    let (first, _) = c.ranges.first_key_value()?;
                    let (last, _) = c.ranges.last_key_value()?;
                    let total: i64 = c.ranges.values().sum();
                    Some(doc! {
                        "q": {
                            "_id": count_id(generation, &c.tenant, &c.event_type, c.minute_ms),
                            "fence": { "$lte": fence },
                            // Nothing of this partition applied yet, or only ranges below these.
                            "$or": [ { &applied: { "$lt": *first } }, { &applied: { "$exists": false } } ],
                        },
                        "u": {
                            "$inc": { "count": total },
                            "$set": { &applied: *last, "fence": fence },
                            "$setOnInsert": {
                                "gen": generation, "tenant": &c.tenant, "type": &c.event_type,
                                "minute": DateTime::from_millis(c.minute_ms),
                            },
                        },
                        "upsert": true,
                    })
                })
                .collect();
            let command = doc! { "update": self.counts.name(), "updates": updates, "ordered": false };
            let reply =
                self.counts.client().database(&self.counts.namespace().db).run_command(command).await?;
            if let Ok(errors) = reply.get_array("writeErrors") {
                for error in errors.iter().filter_map(Bson::as_document) {
                    let index = error.get_i32("index").unwrap_or(-1);
                    let code = error.get_i32("code").unwrap_or(0);
                    let Some(c) = usize::try_from(index).ok().and_then(|i| chunk.get(i)) else { continue };
                    if code != DUPLICATE_KEY {
                        let message = error.get_str("errmsg").unwrap_or("write error").to_owned();
                        return Err(RollupError::Mongo(mongodb::error::Error::custom(format!(
                            "event_counts update refused: {message} (code {code})"
                        ))));
                    }
                    // The document exists and its condition failed: fenced, or part applied.
                    self.apply_rest(generation, counts.partition, c, fence).await?;
                }
            }
        }
        Ok(())
    }

    /// Compare-and-set for one count document whose fast-path condition failed: adds only the
    /// ranges above the `applied_<p>` it finds.
    async fn apply_rest(
        &self,
        generation: i64,
        partition: i32,
        c: &Contribution,
        fence: i64,
    ) -> Result<(), RollupError> {
        let id = count_id(generation, &c.tenant, &c.event_type, c.minute_ms);
        let applied = applied_field(partition);
        for _ in 0..5 {
            let Some(found) = self.counts.find_one(doc! { "_id": &id }).await? else { continue };
            let seen = int(&found, "fence").unwrap_or(0);
            if seen > fence {
                return Err(RollupError::Fenced { ours: fence, seen });
            }
            let done = int(&found, &applied);
            let rest: i64 = c.ranges.range(done.map_or(i64::MIN, |d| d + 1)..).map(|(_, n)| n).sum();
            let Some((&last, _)) = c.ranges.last_key_value() else { return Ok(()) };
            if rest == 0 {
                return Ok(());
            }
            let mut filter = doc! { "_id": &id, "fence": { "$lte": fence } };
            filter.insert(&applied, done.map_or(Bson::Document(doc! { "$exists": false }), Bson::Int64));
            let update = doc! { "$inc": { "count": rest }, "$set": { &applied: last, "fence": fence } };
            if self.counts.update_one(filter, update).await?.matched_count == 1 {
                return Ok(());
            }
        }
        Err(RollupError::Conflict { generation, partition })
    }

    /// Moves `next` of (generation, partition) from `from` to `to` (step 3), refused when a newer
    /// grant has written or the progress is not where this leader left it.
    pub async fn advance(
        &self,
        generation: i64,
        partition: i32,
        from: i64,
        to: i64,
        fence: i64,
    ) -> Result<(), RollupError> {
        let id = progress_id(generation, partition);
        if from == 0 {
            let fresh =
                doc! { "_id": &id, "gen": generation, "partition": partition, "next": 0_i64, "fence": fence };
            match self.progress.insert_one(fresh).await {
                Ok(_) => {}
                Err(e) if is_duplicate(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let filter = doc! { "_id": &id, "next": from, "fence": { "$lte": fence } };
        let result =
            self.progress.update_one(filter, doc! { "$set": { "next": to, "fence": fence } }).await?;
        if result.matched_count == 1 {
            return Ok(());
        }
        let found = self.progress.find_one(doc! { "_id": &id }).await?;
        match found.as_ref().and_then(|d| int(d, "fence")) {
            Some(seen) if seen > fence => Err(RollupError::Fenced { ours: fence, seen }),
            _ => Err(RollupError::Conflict { generation, partition }),
        }
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

    /// Counts the acknowledged events past the closed ranges, `[range_start(next), until)`, and
    /// stores them beside `next` (the *provisional* counts, per range), so that readers need not
    /// read those events. Written only while `next` is still what the caller saw; `until` is the
    /// acknowledged frontier (every entry below it is acknowledged, so the documents counted are
    /// final). Does nothing (and returns false) when that region holds more than
    /// [`MAX_PROVISIONAL`] count keys.
    pub async fn write_provisional(
        &self,
        generation: i64,
        partition: i32,
        next: i64,
        until: (u64, u64),
        fence: i64,
    ) -> Result<bool, RollupError> {
        let until_seq = sortable_seq_of(until);
        let query = position_query(partition, &range_start_seq(next), &until_seq);
        let mut by_doc: HashMap<(String, String, i64), BTreeMap<i64, i64>> = HashMap::new();
        let mut cursor = self.events.find(query.filter).projection(position_projection()).await?;
        while let Some(d) = cursor.try_next().await? {
            add(&mut by_doc, &d);
        }
        let entries: Vec<Document> = by_doc
            .iter()
            .flat_map(|((t, y, m), ranges)| {
                ranges
                    .iter()
                    .map(move |(k, n)| doc! { "t": t.as_str(), "y": y.as_str(), "m": *m, "k": *k, "n": *n })
            })
            .collect();
        if entries.len() > MAX_PROVISIONAL {
            return Ok(false);
        }
        let provisional = doc! { "next": next, "until": until_seq, "counts": entries };
        let filter =
            doc! { "_id": progress_id(generation, partition), "next": next, "fence": { "$lte": fence } };
        self.progress.update_one(filter, doc! { "$set": { "provisional": provisional } }).await?;
        Ok(true)
    }

    /// What a reader needs first (before the count documents): the current generation and, per
    /// partition, `next` and the provisional counts written for it.
    pub async fn progress(&self, partitions: &[i32]) -> mongodb::error::Result<Progress> {
        let generation = self.generations().await?.current;
        let mut out = Progress { generation, partitions: BTreeMap::new() };
        for &p in partitions {
            let found = self.progress.find_one(doc! { "_id": progress_id(generation, p) }).await?;
            let next = found.as_ref().and_then(|d| int(d, "next")).unwrap_or(0);
            let mut part = PartitionProgress {
                next,
                until: (u64::try_from(next * RANGE_MS).unwrap_or(0), 0),
                provisional: Vec::new(),
            };
            let provisional = found.as_ref().and_then(|d| d.get_document("provisional").ok());
            if let Some(prov) = provisional.filter(|prov| int(prov, "next") == Some(next))
                && let Some(until) = prov.get_str("until").ok().and_then(sortable_seq_parts)
            {
                part.until = until;
                for c in prov.get_array("counts").into_iter().flatten().filter_map(Bson::as_document) {
                    let (Ok(t), Ok(y), Some(m), Some(k), Some(n)) =
                        (c.get_str("t"), c.get_str("y"), int(c, "m"), int(c, "k"), int(c, "n"))
                    else {
                        continue;
                    };
                    part.provisional.push(Provisional {
                        tenant: t.into(),
                        event_type: y.into(),
                        minute_ms: m,
                        range: k,
                        count: n,
                    });
                }
            }
            out.partitions.insert(p, part);
        }
        Ok(out)
    }

    /// `tenant`'s (every tenant's with `None`) exact counts per (type, minute) for minutes in
    /// `[from_ms, to_ms)` (both on minute boundaries), optionally of one type: the count documents of `progress`'s generation,
    /// plus the provisional counts and the stored events past them that the count documents do
    /// not hold yet. `appended` gives, per partition, the last entry id Redis has appended, read
    /// *after* `progress`: when it is below where the provisional counts end, no event can be
    /// past them and the events are not read at all.
    pub async fn counts(
        &self,
        tenant: Option<&str>,
        event_type: Option<&str>,
        from_ms: i64,
        to_ms: i64,
        progress: &Progress,
        appended: &BTreeMap<i32, (u64, u64)>,
    ) -> mongodb::error::Result<MinuteCounts> {
        let mut out = MinuteCounts {
            next_range: progress.partitions.iter().map(|(&p, part)| (p, part.next)).collect(),
            ..Default::default()
        };
        let window = Window { tenant, event_type, from_ms, to_ms };
        let filter = counts_query(progress.generation, &window).filter;
        // Per count document (tenant, type, minute), what it has applied.
        let mut applied: HashMap<(String, String, i64), Document> = HashMap::new();
        let projection = doc! { "_id": 0, "gen": 0, "fence": 0 };
        let mut cursor =
            self.counts.find(filter).projection(projection).max_time(crate::READ_MAX_TIME).await?;
        while let Some(d) = cursor.try_next().await? {
            let (Ok(owner), Ok(t), Ok(minute)) =
                (d.get_str("tenant"), d.get_str("type"), d.get_datetime("minute"))
            else {
                continue;
            };
            let key = (t.to_owned(), minute.timestamp_millis());
            *out.counts.entry(key.clone()).or_default() += int(&d, "count").unwrap_or(0);
            applied.insert((owner.to_owned(), key.0, key.1), d);
        }
        // Counted unless its count document, as read above, already holds its range.
        let mut add_unless_applied = |p: i32, k: i64, owner: &str, key: (String, i64), n: i64| {
            let done = applied
                .get(&(owner.to_owned(), key.0.clone(), key.1))
                .and_then(|a| int(a, &applied_field(p)));
            if done.is_none_or(|done| k > done) {
                *out.counts.entry(key).or_default() += n;
            }
        };
        for (&p, part) in &progress.partitions {
            for c in &part.provisional {
                let in_window = c.minute_ms >= from_ms && c.minute_ms < to_ms;
                let ours = tenant.is_none_or(|t| t == c.tenant);
                if ours && in_window && event_type.is_none_or(|t| t == c.event_type) {
                    add_unless_applied(p, c.range, &c.tenant, (c.event_type.clone(), c.minute_ms), c.count);
                }
            }
        }
        // The tail: stored events past the provisional counts, in partitions where Redis has
        // appended entries since (or cannot say). One query, a clause per partition, each clause
        // a range of the `rollup_position` index.
        if let Some(query) = tail_query(progress, appended, &window) {
            let projection =
                doc! { "_id": 0, "partition": 1, "seq": 1, "tenant": 1, "type": 1, "timestamp": 1 };
            let mut tail = self
                .events
                .find(query.filter)
                .projection(projection)
                .hint(mongodb::options::Hint::Name(TAIL_INDEX.to_string()))
                .max_time(crate::READ_MAX_TIME)
                .await?;
            while let Some(d) = tail.try_next().await? {
                let (Ok(p), Some(k), Ok(owner), Ok(t), Ok(ts)) = (
                    d.get_i32("partition"),
                    d.get_str("seq").ok().and_then(range_of),
                    d.get_str("tenant"),
                    d.get_str("type"),
                    d.get_datetime("timestamp"),
                ) else {
                    continue;
                };
                add_unless_applied(p, k, owner, (t.to_owned(), minute_of(ts.timestamp_millis())), 1);
            }
        }
        Ok(out)
    }
}

/// What an analytics read counts: a tenant's (every tenant's with `None`) events of one type (of
/// every type with `None`) with timestamps in minutes `[from_ms, to_ms)`.
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    pub tenant: Option<&'a str>,
    pub event_type: Option<&'a str>,
    pub from_ms: i64,
    pub to_ms: i64,
}

impl Window<'_> {
    fn narrow(&self, filter: &mut Document) {
        if let Some(tenant) = self.tenant {
            filter.insert("tenant", tenant);
        }
        if let Some(t) = self.event_type {
            filter.insert("type", t);
        }
    }

    fn range(&self) -> Document {
        doc! { "$gte": DateTime::from_millis(self.from_ms), "$lt": DateTime::from_millis(self.to_ms) }
    }
}

/// The index of the stream positions, which the tail query names.
const TAIL_INDEX: &str = "rollup_position";

/// The events of `partition` with `seq` in `[from_seq, to_seq)`, in position order: one range of
/// the `rollup_position` index (the rollup job's counts and provisional counts).
pub fn position_query(partition: i32, from_seq: &str, to_seq: &str) -> Query {
    Query {
        filter: doc! { "partition": partition, "seq": { "$gte": from_seq, "$lt": to_seq } },
        sort: doc! { "seq": 1 },
        hint: None,
    }
}

/// What counting an event needs, all in `rollup_position`: the counts read no document.
fn position_projection() -> Document {
    doc! { "_id": 0, "seq": 1, "tenant": 1, "type": 1, "timestamp": 1 }
}

/// The count documents of `window` in `generation` (index `gen_tenant_minute_type`).
pub fn counts_query(generation: i64, window: &Window<'_>) -> Query {
    let mut filter = doc! { "gen": generation, "minute": window.range() };
    window.narrow(&mut filter);
    Query { filter, sort: Document::new(), hint: None }
}

/// The tail of an analytics read: the stored events of `window` past the provisional counts, in
/// the partitions where Redis has appended entries since (or cannot say); `None` when there is
/// none. One query, a clause per partition, each a range of `rollup_position`.
pub fn tail_query(
    progress: &Progress,
    appended: &BTreeMap<i32, (u64, u64)>,
    window: &Window<'_>,
) -> Option<Query> {
    let tails: Vec<Document> = progress
        .partitions
        .iter()
        .filter(|(p, part)| appended.get(p).is_none_or(|last| *last >= part.until))
        .map(|(&p, part)| doc! { "partition": p, "seq": { "$gte": sortable_seq_of(part.until) } })
        .collect();
    if tails.is_empty() {
        return None;
    }
    let mut filter = doc! { "$or": tails, "timestamp": window.range() };
    window.narrow(&mut filter);
    // Named: with a tenant, the planner may take `newest` (tenant, timestamp) and read the whole
    // window, where the tail is a short range at the end of each partition.
    Some(Query { filter, sort: Document::new(), hint: Some(TAIL_INDEX) })
}

/// Adds one event document (seq, tenant, type, timestamp) to per-(tenant, type, minute) range
/// counts; returns its range.
fn add(by_doc: &mut HashMap<(String, String, i64), BTreeMap<i64, i64>>, d: &Document) -> Option<i64> {
    let (Some(k), Ok(tenant), Ok(event_type), Ok(ts)) = (
        d.get_str("seq").ok().and_then(range_of),
        d.get_str("tenant"),
        d.get_str("type"),
        d.get_datetime("timestamp"),
    ) else {
        return None;
    };
    let key = (tenant.to_owned(), event_type.to_owned(), minute_of(ts.timestamp_millis()));
    *by_doc.entry(key).or_default().entry(k).or_default() += 1;
    Some(k)
}

/// An integer field of ours: written as Int64, kept as Int64 by MongoDB (`$inc` included).
fn int(d: &Document, key: &str) -> Option<i64> {
    d.get_i64(key).ok()
}

fn is_duplicate(e: &mongodb::error::Error) -> bool {
    matches!(&*e.kind, mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) if w.code == DUPLICATE_KEY)
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
