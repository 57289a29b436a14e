//! A subscription's reads of the stored events: [`SubscriptionStore::deliverable`] (a poll's
//! events), [`SubscriptionStore::edge_position`] (the lag's edges, a long poll's looks), both
//! window by window from where [`SubscriptionStore::start_of`] says the walk may start, and the
//! query shapes they send (`crates/ingest/tests/api/indexes.rs` asserts their plans).

use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::options::{FindOptions, Hint};

use super::SubscriptionStore;
use crate::indexes::Query;
use crate::reader::StoredRow;
use crate::windows::{Edge, Windows};
use evp_events::EntryId;

/// How far behind (append time) a read's start must be for the read to look for its tenant's first
/// position first ([`SubscriptionStore::start_of`]): closer, the windows find the events in a few
/// cheap reads anyway, and the look would be a query more per poll.
const FAR_BEHIND_MS: u64 = 3_600_000;

impl SubscriptionStore {
    /// The stored events of `tenant` in `partition` at stream positions `[from, before)` (sortable
    /// forms), of `types` (all when empty), oldest first, at most `limit`. The range is read window
    /// by window from `from` ([`Windows`], which says why, and why the result is exact). With
    /// types, each window is read as `how` says ([`TypedRead`]), and `how` is left as the windows
    /// read found best for the next read of the subscription: the result is the same either way.
    #[allow(clippy::too_many_arguments)]
    pub async fn deliverable(
        &self,
        tenant: &str,
        partition: i32,
        from: &str,
        before: &str,
        types: &[String],
        limit: usize,
        how: &mut TypedRead,
    ) -> mongodb::error::Result<Vec<StoredRow>> {
        let mut rows = Vec::new();
        let start = self.start_of(tenant, partition, from, before).await?;
        let mut windows = Windows::new(&start, before, Edge::Oldest);
        // The first position the walk met, of any type: from the beginning, the tenant's first.
        let mut first_met: Option<String> = None;
        let mut meet = |read: &[Document]| {
            if first_met.is_none() {
                first_met = read.first().and_then(|d| d.get_str("seq").ok()).map(str::to_owned);
            }
        };
        while let Some((lo, hi)) = windows.next() {
            let wanted = limit - rows.len();
            let query = deliverable_query(tenant, partition, &lo, &hi);
            let docs = if types.is_empty() {
                let docs = self.find(query, Some(wanted), None).await?;
                meet(&docs);
                windows.found(docs.len(), wanted - docs.len());
                docs
            } else if *how == TypedRead::Whole {
                // At most `wanted` events (so no more than a read without types holds); when
                // capped, the walk goes on just past the last one read.
                let docs = self.find(query, Some(wanted), None).await?;
                meet(&docs);
                if docs.len() == wanted {
                    resume(&mut windows, &docs);
                }
                let held = docs.len();
                let docs: Vec<Document> = docs.into_iter().filter(|d| is_of(d, types)).collect();
                how.learn(docs.len(), held);
                // The next window should hold the events still wanted, at this one's density.
                let next = (wanted - docs.len()).max(1) * held / docs.len().max(1);
                windows.found(held, next.clamp(1, limit));
                docs
            } else {
                let keys = self.keys(tenant, partition, &lo, &hi, Edge::Oldest, &mut windows).await?;
                meet(&keys);
                windows.found(keys.len(), limit);
                let matches: Vec<&str> = matching(&keys, types).collect();
                how.learn(matches.len(), keys.len());
                let seqs = &matches[..matches.len().min(wanted)];
                if seqs.is_empty() {
                    continue;
                }
                self.find(events_at_query(tenant, partition, seqs), None, None).await?
            };
            rows.extend(docs.into_iter().map(StoredRow::from_document));
            if rows.len() >= limit {
                break;
            }
        }
        if start.is_empty()
            && let Some(first) = first_met
        {
            // Read from the beginning without a usable record: the first event the walk met (of
            // any type: the windows and each read are in stream order) is the tenant's first in
            // the partition, so the next read from the beginning starts there. A hint; the answer
            // stands whether it is written or not.
            let _ = self.first_positions.lower_to(tenant, partition, &first).await;
        }
        Ok(rows)
    }

    /// The position (sortable form) of the newest or oldest deliverable event in `[from, before)`,
    /// for the lag: window by window from that edge, as [`deliverable`](Self::deliverable) reads,
    /// until one holds an event of `types` (any, when empty).
    pub async fn edge_position(
        &self,
        edge: Edge,
        tenant: &str,
        partition: i32,
        from: &str,
        before: &str,
        types: &[String],
    ) -> mongodb::error::Result<Option<String>> {
        let from = self.start_of(tenant, partition, from, before).await?;
        let mut windows = Windows::new(&from, before, edge);
        while let Some((lo, hi)) = windows.next() {
            let found = if types.is_empty() {
                let mut query = deliverable_query(tenant, partition, &lo, &hi);
                query.sort = order(edge);
                let docs = self.find(query, Some(1), Some(doc! { "seq": 1, "_id": 0 })).await?;
                docs.first().and_then(|d| d.get_str("seq").ok()).map(str::to_owned)
            } else {
                let keys = self.keys(tenant, partition, &lo, &hi, edge, &mut windows).await?;
                windows.found(keys.len(), KEYS_PER_WINDOW);
                matching(&keys, types).next().map(str::to_owned)
            };
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// Where a read of `tenant`'s events of `partition` in `[from, before)` may start, `before` being
    /// at or below the partition's horizon: `from`, or, when `from` is the beginning or more than
    /// `FAR_BEHIND_MS` (an hour) before `before`, the tenant's recorded first position, if an empty read
    /// shows that none of the tenant's events lies in `[from, recorded)`. Below the horizon no
    /// more documents appear, so that stretch stays empty, and a read from the recorded position
    /// returns exactly what a read from `from` would ([`crate::first_positions`] says why the
    /// record is only a hint). When the look finds an event from the beginning, that event is the
    /// tenant's first: the record is lowered to it (and so does a read from the beginning that
    /// found no record, [`deliverable`](Self::deliverable), from the first event it met).
    pub async fn start_of(
        &self,
        tenant: &str,
        partition: i32,
        from: &str,
        before: &str,
    ) -> mongodb::error::Result<String> {
        let far_behind = match (EntryId::parse(from), EntryId::parse(before)) {
            (Some(from), Some(before)) => from.ms.saturating_add(FAR_BEHIND_MS) < before.ms,
            _ => from.is_empty(),
        };
        if !far_behind {
            return Ok(from.to_owned());
        }
        let Some(recorded) = self.first_positions.recorded(tenant, partition).await? else {
            return Ok(from.to_owned());
        };
        let start = recorded.min(before.to_owned());
        if start.as_str() <= from {
            return Ok(from.to_owned());
        }
        let below = deliverable_query(tenant, partition, from, &start);
        let found = self.find(below, Some(1), Some(doc! { "seq": 1, "_id": 0 })).await?;
        let Some(first) = found.first().and_then(|d| d.get_str("seq").ok()) else {
            return Ok(start);
        };
        if from.is_empty() {
            // A hint; the read goes on from `from` whether it is written or not.
            let _ = self.first_positions.lower_to(tenant, partition, first).await;
        }
        Ok(from.to_owned())
    }

    /// The keys (`seq`, `type`) of the window `[from, before)` of `windows`, from `edge`: the first
    /// read of a window with types, [`deliverable_query`] projected to what `tenant_position`
    /// holds, so MongoDB answers from the index alone. At most [`KEYS_PER_READ`], and then
    /// `windows` goes on past the last one. The types are matched by the reader, not in the
    /// filter: a filter on `type` would let the planner weigh `newest_by_type` (which bounds tenant
    /// and type too), and, when the types are rare, prefer it, sort in memory, and cache that plan
    /// for the shape.
    async fn keys(
        &self,
        tenant: &str,
        partition: i32,
        from: &str,
        before: &str,
        edge: Edge,
        windows: &mut Windows,
    ) -> mongodb::error::Result<Vec<Document>> {
        let mut query = deliverable_query(tenant, partition, from, before);
        query.sort = order(edge);
        let projection = doc! { "seq": 1, "type": 1, "_id": 0 };
        let keys = self.find(query, Some(KEYS_PER_READ), Some(projection)).await?;
        if keys.len() == KEYS_PER_READ {
            resume(windows, &keys);
        }
        Ok(keys)
    }

    /// A find of stream positions, which `tenant_position` serves in order.
    async fn find(
        &self,
        query: Query,
        limit: Option<usize>,
        projection: Option<Document>,
    ) -> mongodb::error::Result<Vec<Document>> {
        let options = FindOptions::builder()
            .sort(query.sort)
            .hint(query.hint.map(|name| Hint::Name(name.to_owned())))
            .limit(limit.map(|l| l as i64))
            .projection(projection)
            .max_time(crate::READ_MAX_TIME)
            .build();
        self.events.find(query.filter).with_options(options).await?.try_collect().await
    }
}

/// Keys a window of a read with types should hold, when no poll's `max` says (the lag's edges).
const KEYS_PER_WINDOW: usize = 1000;
/// The most keys one read of a window returns (about 1 MB): a window that holds more (the first
/// one after a long empty stretch, or a burst) is read on from its last key.
pub const KEYS_PER_READ: usize = 10_000;

/// How a read with types takes a window's events. Both return exactly the window's events of the
/// types in stream order; they differ in what they cost, which depends on how much of the
/// tenant's events the types are.
///
/// On secantusd-rs a read of keys costs nearly as much as a read of whole events (it fetches the
/// documents of a covered query too), and a fetch by position (`$in`) more than twice as much per
/// event as a range: with 220,000 events stored, 1,500 keys 8.1 ms, the same 1,500 events
/// 12.8 ms, 1,000 of them by position 21.1 ms (docs/PERFORMANCE.md). So for types that are most
/// of the events, reading the window's events and dropping the others costs a third to a half of
/// reading its keys and then fetching; for rare types, fetching only the matches is what keeps a
/// read from costing the other types' events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TypedRead {
    /// The window's keys first (`seq`, `type`: from the index alone on MongoDB), then the events
    /// of the types by position ([`events_at_query`]).
    #[default]
    ByKeys,
    /// The window's events ([`deliverable_query`]), at most as many as the read still wants
    /// (read on past the last when capped), those of other types dropped by the reader.
    Whole,
}

impl TypedRead {
    /// After a window of `held` keys or events of which `matched` were of the types: the next
    /// window is read whole while the types are at least half of what windows hold.
    fn learn(&mut self, matched: usize, held: usize) {
        if held > 0 {
            *self = if 2 * matched >= held { Self::Whole } else { Self::ByKeys };
        }
    }
}

/// A read of a window was capped at `read` (keys or events, in the walk's order): the walk goes on
/// just past the last, sizing the next window by the width they span.
fn resume(windows: &mut Windows, read: &[Document]) {
    fn seq(d: Option<&Document>) -> Option<&str> {
        d?.get_str("seq").ok()
    }
    if let (Some(first), Some(last)) = (seq(read.first()), seq(read.last())) {
        windows.resume_after(first, last);
    }
}

/// Whether a stored event (or its keys) is of one of `types`.
fn is_of(doc: &Document, types: &[String]) -> bool {
    doc.get_str("type").is_ok_and(|t| types.iter().any(|w| w == t))
}

/// Stream order from `edge`.
fn order(edge: Edge) -> Document {
    let direction = if edge == Edge::Oldest { 1 } else { -1 };
    doc! { "partition": direction, "seq": direction }
}

/// The positions among `keys` of an event of `types`, in the keys' order.
fn matching<'k>(keys: &'k [Document], types: &'k [String]) -> impl Iterator<Item = &'k str> {
    keys.iter().filter(|k| is_of(k, types)).filter_map(|k| k.get_str("seq").ok())
}

/// The query of a subscription's read without types (and, projected, of a read's keys with
/// types; whole, of a read with types that reads its windows whole): a partition's events of the
/// tenant in `[from, before)`, in stream order. It names no index, and needs none: `tenant_position`
/// matches it exactly (two equalities, then the range, in its sort order), and every other index
/// would have to sort or walk the tenant's other partitions' keys. No query of a subscription
/// names an index, since one that does fails outright once the index is gone (an unhinted one
/// only slows down), and the stand-in never routes a hinted find through an index.
/// `crates/ingest/tests/api/indexes.rs` asserts the plans of both shapes.
pub fn deliverable_query(tenant: &str, partition: i32, from: &str, before: &str) -> Query {
    Query {
        filter: doc! { "tenant": tenant, "partition": partition, "seq": { "$gte": from, "$lt": before } },
        sort: doc! { "partition": 1, "seq": 1 },
        hint: None,
    }
}

/// The second read of a window with types: the events at the matching positions, in stream order
/// (each position is one entry of the partition's stream, so one event).
pub fn events_at_query(tenant: &str, partition: i32, seqs: &[&str]) -> Query {
    Query {
        filter: doc! { "tenant": tenant, "partition": partition, "seq": { "$in": seqs } },
        sort: doc! { "partition": 1, "seq": 1 },
        hint: None,
    }
}
