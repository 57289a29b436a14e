//! The analytics side: where the rollups stand ([`RollupStore::progress`]) and a window's exact
//! counts ([`RollupStore::counts`]): count documents, provisional counts, and the stored events of
//! the tail, each event once.

use std::collections::{BTreeMap, HashMap};

use futures::TryStreamExt;
use mongodb::bson::{Bson, DateTime, Document, doc};

use super::{
    MinuteCounts, PartitionProgress, Progress, Provisional, RANGE_MS, RollupStore, applied_field, int,
    minute_of, progress_id, range_of,
};
use crate::indexes::Query;
use evp_events::EntryId;

impl RollupStore {
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
                until: EntryId::new(u64::try_from(next * RANGE_MS).unwrap_or(0), 0),
                provisional: Vec::new(),
            };
            let provisional = found.as_ref().and_then(|d| d.get_document("provisional").ok());
            if let Some(prov) = provisional.filter(|prov| int(prov, "next") == Some(next))
                && let Some(until) = prov.get_str("until").ok().and_then(EntryId::parse)
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
        appended: &BTreeMap<i32, EntryId>,
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
const TAIL_INDEX: &str = crate::indexes::POSITION_INDEX;

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
    appended: &BTreeMap<i32, EntryId>,
    window: &Window<'_>,
) -> Option<Query> {
    let tails: Vec<Document> = progress
        .partitions
        .iter()
        .filter(|(p, part)| appended.get(p).is_none_or(|last| *last >= part.until))
        .map(|(&p, part)| doc! { "partition": p, "seq": { "$gte": part.until.sortable() } })
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
