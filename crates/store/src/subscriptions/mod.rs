//! The `subscriptions` collection and the query that feeds a subscription.
//!
//! - this module: [`Subscription`], one document per (tenant, name) holding the whole state of a
//!   subscription: its definition, each partition's checkpoint (`from`, inclusive) and the
//!   delivery in flight there, the consumers seen, the last error. Every change is a
//!   compare-and-set on `version` ([`SubscriptionStore::replace`]), so two ingest replicas never
//!   hand out one partition twice.
//! - `reads`: [`SubscriptionStore::deliverable`], a partition's stored events of the tenant (and
//!   types) in `[from, horizon)`, in stream order, served by the `tenant_position` index: an exact
//!   prefix (tenant, partition) and a range (seq), in the index's order, so a read examines only
//!   its own tenant's keys (with types: the keys first, then the matching events, or, for types
//!   that are most of the events, the events themselves: [`TypedRead`]), window by window
//!   ([`crate::windows`]) so that a read costs what it delivers even on a server that does not
//!   stop a range scan at the limit. A read from the beginning, or from long before the tenant's
//!   events, starts at the tenant's first position once an empty read proves nothing lies below
//!   it ([`SubscriptionStore::start_of`], [`crate::first_positions`]). The lag's edges
//!   ([`SubscriptionStore::edge_position`]) are found by the same walk.
//!
//! The logic (who holds which partition, tokens, the horizon) is the ingest's; this module only
//! knows the layout.

mod reads;

use futures::TryStreamExt;
use mongodb::bson::{DateTime, Document, doc};
use mongodb::options::{FindOptions, IndexOptions, ReplaceOptions};
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use crate::first_positions::FirstPositions;
pub use crate::windows::Edge;
pub use reads::{KEYS_PER_READ, TypedRead, deliverable_query, events_at_query};

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
    first_positions: FirstPositions,
}

impl SubscriptionStore {
    pub fn new(client: &mongodb::Client, database: &str) -> Self {
        let db = client.database(database);
        Self {
            subscriptions: db.collection("subscriptions"),
            events: db.collection("events"),
            first_positions: FirstPositions::new(&db),
        }
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
}
