//! The read side: a tenant's events, by filter and newest first, or an aggregate's in stream order.
//!
//! Both listings are **keyset** pages: each page starts strictly after the last event of the
//! previous one in a total order, so page 1,000 costs what page 1 costs (an index seek, then
//! `limit` entries), and paging returns each matching event exactly once, even while new events
//! arrive (they land before the first page, or in a later one, never twice) and however many events
//! share a timestamp:
//!
//! - newest first: (`timestamp` descending, `event_id` descending); `event_id` is unique per
//!   tenant, so the order is total. Served by the `newest*` indexes.
//! - an aggregate: (`seq`, `partition`) ascending, the order the events were appended to the
//!   stream. An aggregate's events are in one partition, whose entry ids (`seq`) only grow; after
//!   a change of `STREAM_PARTITIONS` (done on a drained system) its later events are in another
//!   partition with later ids, so `seq` first keeps them in order across the change, and
//!   `partition` breaks the tie of equal ids on two partitions. Served by `aggregate_order`.
//!   Events stored before positions were recorded have none and are not listed there (they still
//!   are by the newest-first listing).
//!
//! Every query carries the tenant, so nothing here can return another tenant's event.

use evp_events::EntryId;
use futures::TryStreamExt;
use mongodb::Collection;
use mongodb::bson::{Bson, DateTime, Document, doc};
use mongodb::error::ErrorKind;
use mongodb::options::{FindOptions, Hint};

pub use crate::indexes::Query;
use crate::indexes::{LEGACY_UNIQUE_INDEX, ListingFilter, event_key};

/// MongoDB's error code for a bad argument, here a hint naming no index.
const BAD_VALUE: i32 = 2;

/// Filters of the newest-first listing; all optional, combined with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    pub event_type: Option<String>,
    pub source: Option<String>,
    pub aggregate_id: Option<String>,
    pub correlation_id: Option<String>,
    /// Inclusive, Unix milliseconds.
    pub from_ms: Option<i64>,
    /// Exclusive, Unix milliseconds.
    pub to_ms: Option<i64>,
}

impl Filters {
    /// The filters given that an index serves ([`ListingFilter`]), with their values.
    pub fn listing(&self) -> impl Iterator<Item = (ListingFilter, &str)> {
        [
            (ListingFilter::Type, &self.event_type),
            (ListingFilter::Source, &self.source),
            (ListingFilter::AggregateId, &self.aggregate_id),
            (ListingFilter::CorrelationId, &self.correlation_id),
        ]
        .into_iter()
        .filter_map(|(filter, value)| Some((filter, value.as_deref()?)))
    }
}

/// The last event of a newest-first page: the next page starts after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewestKey {
    pub timestamp_ms: i64,
    pub event_id: String,
}

/// The last event of an aggregate page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamKey {
    pub partition: i32,
    pub seq: String,
}

/// A stored event as the read side returns it: the document layout of SPEC's "MongoDB data" is
/// read here, once, so nothing outside this crate names a stored field.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    pub event_id: String,
    pub event_type: String,
    pub timestamp: DateTime,
    pub received_at: DateTime,
    pub source: Option<String>,
    pub aggregate_id: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    /// The event's `data`, as stored (an empty document when it had none).
    pub data: Document,
    /// Where it was appended: partition and stream position (`None` for events stored before
    /// positions were recorded).
    pub position: Option<(i32, EntryId)>,
}

impl StoredRow {
    /// The row of a stored document, taking its `data` (no copy of it is made). A field missing
    /// from a document evp did not write reads as empty, never as an error.
    pub fn from_document(mut doc: Document) -> Self {
        let data = match doc.remove("data") {
            Some(Bson::Document(data)) => data,
            _ => Document::new(),
        };
        let text = |field: &str| doc.get_str(field).ok().map(str::to_string);
        let date = |field: &str| doc.get_datetime(field).copied().unwrap_or(DateTime::from_millis(0));
        let position = match (doc.get_i32("partition"), doc.get_str("seq").ok().and_then(EntryId::parse)) {
            (Ok(partition), Some(seq)) => Some((partition, seq)),
            _ => None,
        };
        Self {
            event_id: text("event_id").unwrap_or_default(),
            event_type: text("type").unwrap_or_default(),
            timestamp: date("timestamp"),
            received_at: date("received_at"),
            source: text("source"),
            aggregate_id: text("aggregate_id"),
            correlation_id: text("correlation_id"),
            causation_id: text("causation_id"),
            data,
            position,
        }
    }

    /// Where a newest-first page that ends with this row resumes.
    pub fn newest_key(&self) -> NewestKey {
        NewestKey { timestamp_ms: self.timestamp.timestamp_millis(), event_id: self.event_id.clone() }
    }

    /// Where an aggregate page that ends with this row resumes (`None` without a position, which
    /// no row of an aggregate page lacks: its query requires `seq`).
    pub fn stream_key(&self) -> Option<StreamKey> {
        self.position.map(|(partition, seq)| StreamKey { partition, seq: seq.sortable() })
    }
}

/// Queries on the `events` collection.
#[derive(Debug, Clone)]
pub struct EventReader {
    events: Collection<Document>,
}

impl EventReader {
    pub fn new(client: &mongodb::Client, database: &str) -> Self {
        Self { events: client.database(database).collection("events") }
    }

    /// One newest-first page of `tenant`'s events matching `filters`, after `after`. Returns at
    /// most `limit` documents, plus whether more follow (one extra is read to know).
    pub async fn newest(
        &self,
        tenant: &str,
        filters: &Filters,
        after: Option<&NewestKey>,
        limit: usize,
    ) -> mongodb::error::Result<(Vec<StoredRow>, bool)> {
        self.page(newest_query(tenant, filters, after), limit).await
    }

    /// One page of an aggregate's events in stream order, after `after`.
    pub async fn aggregate(
        &self,
        tenant: &str,
        aggregate_id: &str,
        after: Option<&StreamKey>,
        limit: usize,
    ) -> mongodb::error::Result<(Vec<StoredRow>, bool)> {
        self.page(aggregate_query(tenant, aggregate_id, after), limit).await
    }

    /// One stored event of `tenant`, by `_id`. An event stored before `_id` carried (tenant, id)
    /// is found through the old unique index while a deployment keeps it; once it is dropped,
    /// that lookup is refused (code 2, a hint to no index) and is a miss.
    pub async fn get(&self, tenant: &str, event_id: &str) -> mongodb::error::Result<Option<StoredRow>> {
        if let Some(found) = self.events.find_one(doc! { "_id": event_key(tenant, event_id) }).await? {
            return Ok(Some(StoredRow::from_document(found)));
        }
        let legacy = self
            .events
            .find_one(doc! { "tenant": tenant, "event_id": event_id })
            .hint(Hint::Name(LEGACY_UNIQUE_INDEX.to_string()))
            .max_time(crate::READ_MAX_TIME)
            .await;
        match legacy {
            Err(e) if matches!(&*e.kind, ErrorKind::Command(c) if c.code == BAD_VALUE) => Ok(None),
            other => Ok(other?.map(StoredRow::from_document)),
        }
    }

    /// The server's plan (`explain`, queryPlanner) for a page of `query`, so that a test can
    /// check that every query shape is served by an index.
    pub async fn explain(&self, query: &Query, limit: usize) -> mongodb::error::Result<Document> {
        let db = self.events.client().database(&self.events.namespace().db);
        crate::indexes::explain(&db, self.events.name(), query, Some(limit as i64 + 1)).await
    }

    async fn page(&self, query: Query, limit: usize) -> mongodb::error::Result<(Vec<StoredRow>, bool)> {
        let options = FindOptions::builder()
            .sort(query.sort)
            .limit(limit as i64 + 1)
            .max_time(crate::READ_MAX_TIME)
            .build();
        let mut docs: Vec<Document> =
            self.events.find(query.filter).with_options(options).await?.try_collect().await?;
        let more = docs.len() > limit;
        docs.truncate(limit);
        Ok((docs.into_iter().map(StoredRow::from_document).collect(), more))
    }
}

/// The query of a newest-first page.
pub fn newest_query(tenant: &str, filters: &Filters, after: Option<&NewestKey>) -> Query {
    let mut filter = doc! { "tenant": tenant };
    for (listing, value) in filters.listing() {
        filter.insert(listing.field(), value);
    }
    let mut range = Document::new();
    if let Some(from) = filters.from_ms {
        range.insert("$gte", DateTime::from_millis(from));
    }
    if let Some(to) = filters.to_ms {
        range.insert("$lt", DateTime::from_millis(to));
    }
    let mut clauses = Vec::new();
    if !range.is_empty() {
        clauses.push(doc! { "timestamp": range });
    }
    if let Some(key) = after {
        let at = DateTime::from_millis(key.timestamp_ms);
        clauses.push(doc! { "$or": [
            { "timestamp": { "$lt": at } },
            { "timestamp": at, "event_id": { "$lt": key.event_id.as_str() } },
        ] });
    }
    if !clauses.is_empty() {
        filter.insert("$and", clauses);
    }
    Query { filter, sort: doc! { "timestamp": -1, "event_id": -1 }, hint: None }
}

/// The query of a page of an aggregate's stream.
pub fn aggregate_query(tenant: &str, aggregate_id: &str, after: Option<&StreamKey>) -> Query {
    let mut filter = doc! { "tenant": tenant, "aggregate_id": aggregate_id, "seq": { "$exists": true } };
    if let Some(key) = after {
        filter.insert(
            "$or",
            [
                doc! { "seq": { "$gt": key.seq.as_str() } },
                doc! { "seq": key.seq.as_str(), "partition": { "$gt": key.partition } },
            ],
        );
    }
    Query { filter, sort: doc! { "seq": 1, "partition": 1 }, hint: None }
}
