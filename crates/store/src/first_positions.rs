//! `first_positions`: per (tenant, partition), a stream position at or below the tenant's first
//! stored event there, so that a subscription's read from the beginning (or from long before its
//! tenant's events) starts next to them instead of crossing the empty stretch before them.
//!
//! - [`FirstPositions::record`] (the worker, just before each bulk insert, through
//!   [`crate::EventStore::insert`]): `$min` of the batch's positions per (tenant, partition),
//!   written only when the batch holds a position lower than this process has recorded already:
//!   about once per (tenant, partition) per worker process, and again for a redelivered older entry.
//! - [`FirstPositions::recorded`] and [`FirstPositions::lower_to`]: read it, and set it right (the
//!   subscription's read, [`crate::subscriptions::SubscriptionStore::start_of`]).
//!
//! **A hint, never trusted.** A read starts at the recorded position only after an empty read of
//! the tenant's events of the partition in `[from, recorded)`, below the horizon, where no more
//! documents can appear: that stretch holds none of the tenant's events now and never will, so the
//! walk from the recorded position returns exactly what the walk from `from` would. A record that
//! is missing or too high (events stored before the record existed, a write that failed) costs one
//! read of what lies below it, never an event: the read then starts at `from`, as it would without
//! a record, and lowers the record to the first event it found.
//!
//! **Why.** On a server that fetches every match of a range before it applies the limit
//! (secantusd-rs), the first window after a long empty stretch holds all of a tenant's events of
//! the partition ([`crate::windows`]): past about two million, one read passes the read timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mongodb::Collection;
use mongodb::bson::{Document, RawDocumentBuf, doc};

/// The collection.
pub const COLLECTION: &str = "first_positions";

/// Most (tenant, partition) pairs a process remembers having recorded; past it, it forgets them all
/// (which costs one write per pair again, nothing else).
const MAX_KNOWN: usize = 100_000;

/// The records, and what this process has written to them.
#[derive(Debug, Clone)]
pub struct FirstPositions {
    records: Collection<Document>,
    /// Per (tenant, partition), a position this process has `$min`-ed into the record: the record
    /// is at or below it, so a batch at or above it has nothing to write.
    known: Arc<Mutex<HashMap<(String, i32), String>>>,
}

impl FirstPositions {
    pub fn new(database: &mongodb::Database) -> Self {
        Self { records: database.collection(COLLECTION), known: Arc::default() }
    }

    fn key(tenant: &str, partition: i32) -> String {
        format!("{tenant}:{partition}")
    }

    /// Lowers each (tenant, partition)'s record to the lowest position (`seq`) among `docs` (stored
    /// event documents), where that is below what this process has recorded.
    pub async fn record(&self, docs: &[&RawDocumentBuf]) -> mongodb::error::Result<()> {
        let mut lowest: HashMap<(&str, i32), &str> = HashMap::new();
        for d in docs {
            let (Ok(tenant), Ok(partition), Ok(seq)) =
                (d.get_str("tenant"), d.get_i32("partition"), d.get_str("seq"))
            else {
                continue;
            };
            let low = lowest.entry((tenant, partition)).or_insert(seq);
            if seq < *low {
                *low = seq;
            }
        }
        let wanted: Vec<((&str, i32), &str)> = {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            lowest
                .into_iter()
                .filter(|((tenant, partition), seq)| {
                    known.get(&((*tenant).to_owned(), *partition)).is_none_or(|k| *seq < k.as_str())
                })
                .collect()
        };
        for ((tenant, partition), seq) in wanted {
            self.lower_to(tenant, partition, seq).await?;
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            if known.len() >= MAX_KNOWN {
                known.clear();
            }
            known.insert((tenant.to_owned(), partition), seq.to_owned());
        }
        Ok(())
    }

    /// Lowers the record of (`tenant`, `partition`) to `seq`, creating it if there is none.
    pub async fn lower_to(&self, tenant: &str, partition: i32, seq: &str) -> mongodb::error::Result<()> {
        let filter = doc! { "_id": Self::key(tenant, partition) };
        let update = doc! {
            "$min": { "seq": seq },
            "$setOnInsert": { "tenant": tenant, "partition": partition },
        };
        match self.records.update_one(filter.clone(), update.clone()).upsert(true).await {
            // Two first upserts raced and one lost: the record exists now, so this is an update.
            Err(e) if crate::is_duplicate(&e) => self.records.update_one(filter, update).await.map(|_| ()),
            result => result.map(|_| ()),
        }
    }

    /// The recorded position of (`tenant`, `partition`), if there is a record.
    pub async fn recorded(&self, tenant: &str, partition: i32) -> mongodb::error::Result<Option<String>> {
        let found = self
            .records
            .find_one(doc! { "_id": Self::key(tenant, partition) })
            .projection(doc! { "seq": 1 })
            .await?;
        Ok(found.and_then(|d| d.get_str("seq").ok().map(str::to_owned)))
    }
}
