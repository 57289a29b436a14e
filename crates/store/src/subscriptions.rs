//! The `subscriptions` collection and the query that feeds a subscription.
//!
//! - [`Subscription`]: one document per (tenant, name) holding the whole state of a subscription:
//!   its definition, each partition's checkpoint (`from`, inclusive) and the delivery in flight
//!   there, the consumers seen, the last error. Every change is a compare-and-set on `version`
//!   ([`SubscriptionStore::replace`]), so two ingest replicas never hand out one partition twice.
//! - [`SubscriptionStore::deliverable`]: a partition's stored events of the tenant (and types) in
//!   `[from, horizon)`, in stream order, served by the `tenant_position` index: an exact prefix
//!   (tenant, partition) and a range (seq), in the index's order, so a read examines only its own
//!   tenant's keys ([`deliverable_query`] says when it names the index), window by window
//!   ([`crate::windows`]) so that a read costs what it delivers even on a server that does not stop a
//!   range scan at the limit.
//!
//! The logic (who holds which partition, tokens, the horizon) is the ingest's; this module only
//! knows the layout.

use futures::TryStreamExt;
use mongodb::bson::{DateTime, Document, doc};
use mongodb::options::{FindOptions, Hint, IndexOptions, ReplaceOptions};
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use crate::indexes::{Query, TENANT_POSITION_INDEX};
use crate::reader::StoredRow;
pub use crate::windows::Edge;
use crate::windows::Windows;

/// A subscription's state, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    /// `<tenant>:<name>`.
    #[serde(rename = "_id")]
    pub id: String,
    pub tenant: String,
    pub name: String,
    /// Sorted; empty means every type.
    pub types: Vec<String>,
    /// `beginning` or `now`, as created.
    pub start: String,
    pub created_at: DateTime,
    /// Bumped by every change (the compare-and-set).
    pub version: i64,
    /// Bumped by every reset: a token of an earlier generation is stale.
    pub generation: i64,
    /// Indexed by partition number.
    pub partitions: Vec<PartitionState>,
    pub consumers: Vec<ConsumerSeen>,
    pub last_error: Option<LastError>,
}

/// One partition of a subscription.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionState {
    /// The checkpoint: the first stream position (sortable form) not yet acknowledged; `""` is
    /// the beginning.
    pub from: String,
    /// The consumer holding the partition, while `held_until` (Unix ms) is not past.
    pub holder: Option<String>,
    pub held_until: i64,
    /// The delivery in flight, if any.
    pub delivery: Option<InFlight>,
}

/// A delivery handed out and not yet acknowledged or handed back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InFlight {
    /// Random; the ack token names it.
    pub id: String,
    pub consumer: String,
    /// Where the checkpoint moves when it is acknowledged (exclusive end, sortable form).
    pub to: String,
    pub count: i64,
    /// Unix ms after which it is redelivered.
    pub deadline: i64,
    /// Append time (Unix ms) of its first event, for the lag.
    pub first_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsumerSeen {
    pub name: String,
    /// Unix ms.
    pub last_seen: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastError {
    pub message: String,
    pub at: DateTime,
    pub consumer: String,
}

impl Subscription {
    pub fn key(tenant: &str, name: &str) -> String {
        format!("{tenant}:{name}")
    }
}

/// Reads and writes subscriptions, and the events they deliver.
#[derive(Debug, Clone)]
pub struct SubscriptionStore {
    subscriptions: Collection<Subscription>,
    events: Collection<Document>,
}

impl SubscriptionStore {
    pub fn new(client: &mongodb::Client, database: &str) -> Self {
        let db = client.database(database);
        Self { subscriptions: db.collection("subscriptions"), events: db.collection("events") }
    }

    /// The index listing a tenant's subscriptions.
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let by_tenant = IndexModel::builder()
            .keys(doc! { "tenant": 1, "name": 1 })
            .options(IndexOptions::builder().name("tenant_name".to_string()).build())
            .build();
        self.subscriptions.create_index(by_tenant).await.map(|_| ())
    }

    pub async fn get(&self, tenant: &str, name: &str) -> mongodb::error::Result<Option<Subscription>> {
        self.subscriptions.find_one(doc! { "_id": Subscription::key(tenant, name) }).await
    }

    /// A tenant's subscriptions by name, or every tenant's (`None`, for operators).
    pub async fn list(&self, tenant: Option<&str>) -> mongodb::error::Result<Vec<Subscription>> {
        let filter = tenant.map_or_else(Document::new, |t| doc! { "tenant": t });
        let options = FindOptions::builder().sort(doc! { "tenant": 1, "name": 1 }).limit(10_000).build();
        self.subscriptions.find(filter).with_options(options).await?.try_collect().await
    }

    pub async fn count(&self, tenant: &str) -> mongodb::error::Result<u64> {
        self.subscriptions.count_documents(doc! { "tenant": tenant }).await
    }

    /// Inserts `sub`; false when one of that name exists already.
    pub async fn create(&self, sub: &Subscription) -> mongodb::error::Result<bool> {
        match self.subscriptions.insert_one(sub).await {
            Ok(_) => Ok(true),
            Err(e) if crate::is_duplicate(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes a subscription; false when there was none.
    pub async fn delete(&self, tenant: &str, name: &str) -> mongodb::error::Result<bool> {
        let result = self.subscriptions.delete_one(doc! { "_id": Subscription::key(tenant, name) }).await?;
        Ok(result.deleted_count == 1)
    }

    /// Replaces the stored state with `sub` (whose `version` must be one past the stored one)
    /// only if nobody changed it since it was read: false when someone did (read again, retry).
    pub async fn replace(&self, sub: &Subscription) -> mongodb::error::Result<bool> {
        let filter = doc! { "_id": &sub.id, "version": sub.version - 1 };
        let result = self
            .subscriptions
            .replace_one(filter, sub)
            .with_options(ReplaceOptions::builder().build())
            .await?;
        Ok(result.matched_count == 1)
    }

    /// The stored events of `tenant` in `partition` at stream positions `[from, before)` (sortable
    /// forms), of `types` (all when empty), oldest first, at most `limit`. Without types the range
    /// is read window by window from `from` ([`Windows`], which says why and why it is exact);
    /// with types it names its index, and a hinted find is a whole-collection scan on a server
    /// that needs the windows, so they would only repeat it.
    pub async fn deliverable(
        &self,
        tenant: &str,
        partition: i32,
        from: &str,
        before: &str,
        types: &[String],
        limit: usize,
    ) -> mongodb::error::Result<Vec<StoredRow>> {
        let mut rows = Vec::new();
        let mut windows = Windows::new(from, before, Edge::Oldest, types.is_empty());
        while let Some((lo, hi)) = windows.next() {
            let wanted = limit - rows.len();
            let docs = self
                .find_positions(deliverable_query(tenant, partition, &lo, &hi, types), wanted, None)
                .await?;
            windows.found(docs.len(), wanted);
            rows.extend(docs.into_iter().map(StoredRow::from_document));
            if rows.len() >= limit {
                break;
            }
        }
        Ok(rows)
    }

    /// The position (sortable form) of the newest or oldest deliverable event in `[from, before)`,
    /// for the lag: window by window from that edge ([`Windows`]) as [`deliverable`](Self::deliverable)
    /// reads, until one holds an event.
    pub async fn edge_position(
        &self,
        edge: Edge,
        tenant: &str,
        partition: i32,
        from: &str,
        before: &str,
        types: &[String],
    ) -> mongodb::error::Result<Option<String>> {
        let direction = match edge {
            Edge::Oldest => 1,
            Edge::Newest => -1,
        };
        for (lo, hi) in Windows::new(from, before, edge, types.is_empty()) {
            let mut query = deliverable_query(tenant, partition, &lo, &hi, types);
            query.sort = doc! { "partition": direction, "seq": direction };
            let docs = self.find_positions(query, 1, Some(doc! { "seq": 1, "_id": 0 })).await?;
            if let Some(seq) = docs.first().and_then(|d| d.get_str("seq").ok()) {
                return Ok(Some(seq.to_owned()));
            }
        }
        Ok(None)
    }

    /// A find of stream positions, which `tenant_position` serves in order.
    async fn find_positions(
        &self,
        query: Query,
        limit: usize,
        projection: Option<Document>,
    ) -> mongodb::error::Result<Vec<Document>> {
        let options = FindOptions::builder()
            .sort(query.sort)
            .hint(query.hint.map(|name| Hint::Name(name.to_owned())))
            .limit(limit as i64)
            .projection(projection)
            .max_time(crate::READ_MAX_TIME)
            .build();
        self.events.find(query.filter).with_options(options).await?.try_collect().await
    }
}

/// The query of a subscription's read: a partition's events of the tenant (and types) in
/// `[from, before)`, in stream order, on `tenant_position`.
///
/// Without types it names no index: `tenant_position` matches it exactly (two equalities, then
/// the range, in its sort order), and every other index would have to sort or walk other
/// tenants' keys. With types it names the index: `newest_by_type` then also bounds the tenant and
/// the types, and when the types are rare the planner's trial can prefer it, sorting in memory,
/// and cache that plan for the shape. A hint is kept to where it is needed, since a query naming an
/// index fails outright once the index is gone (an unhinted one only slows down).
/// `crates/ingest/tests/api/indexes.rs` asserts the plans of both.
pub fn deliverable_query(tenant: &str, partition: i32, from: &str, before: &str, types: &[String]) -> Query {
    Query {
        filter: position_filter(tenant, partition, from, before, types),
        sort: doc! { "partition": 1, "seq": 1 },
        hint: (!types.is_empty()).then_some(TENANT_POSITION_INDEX),
    }
}

/// `{tenant, partition, seq: [from, before), type}`: `tenant_position`'s prefix and range, with the
/// types filtered from its keys before any document is fetched.
fn position_filter(tenant: &str, partition: i32, from: &str, before: &str, types: &[String]) -> Document {
    let mut filter =
        doc! { "tenant": tenant, "partition": partition, "seq": { "$gte": from, "$lt": before } };
    if !types.is_empty() {
        filter.insert("type", doc! { "$in": types });
    }
    filter
}
