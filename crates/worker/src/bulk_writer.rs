//! MongoDB: indexes at start-up, and unordered bulk inserts that treat duplicates as stored.

use mongodb::bson::{Document, doc};
use mongodb::error::{Error, ErrorKind};
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};

/// MongoDB's duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;

/// What one bulk write did, per document.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Newly inserted.
    pub written: usize,
    /// Already stored (same tenant and event id): counts as stored.
    pub duplicates: usize,
    /// Refused for a reason of their own: index in the batch, and the server's message. These
    /// entries stay pending and are retried until they reach the delivery limit.
    pub failed: Vec<(usize, String)>,
}

/// The `events` collection.
#[derive(Clone, Debug)]
pub struct EventStore {
    client: mongodb::Client,
    events: Collection<Document>,
}

impl EventStore {
    pub fn new(client: mongodb::Client, database: &str) -> Self {
        let events = client.database(database).collection("events");
        Self { client, events }
    }

    /// Uniqueness on (tenant, event_id) makes redelivery harmless; the other two serve the
    /// tenant's newest-first listing, with and without a type filter.
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let named = |keys: Document, name: &str, unique: bool| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_string()).unique(unique).build())
                .build()
        };
        self.events
            .create_indexes([
                named(doc! { "tenant": 1, "event_id": 1 }, "tenant_event_id_unique", true),
                named(doc! { "tenant": 1, "timestamp": -1 }, "tenant_timestamp", false),
                named(doc! { "tenant": 1, "type": 1, "timestamp": -1 }, "tenant_type_timestamp", false),
            ])
            .await?;
        Ok(())
    }

    pub async fn ping(&self) -> mongodb::error::Result<()> {
        self.client.database("admin").run_command(doc! { "ping": 1 }).await.map(|_| ())
    }

    /// Inserts every document, unordered. `Err` means the batch as a whole failed (network,
    /// timeout, write concern) and must be retried; retrying is safe because duplicates count as
    /// stored.
    pub async fn insert(&self, docs: &[Document]) -> Result<WriteOutcome, Error> {
        match self.events.insert_many(docs).ordered(false).await {
            Ok(result) => Ok(WriteOutcome { written: result.inserted_ids.len(), ..Default::default() }),
            Err(e) => match *e.kind {
                ErrorKind::InsertMany(ref failure) if failure.write_concern_error.is_none() => {
                    let mut outcome = WriteOutcome::default();
                    for error in failure.write_errors.iter().flatten() {
                        if error.code == DUPLICATE_KEY {
                            outcome.duplicates += 1;
                        } else {
                            outcome
                                .failed
                                .push((error.index, format!("{} (code {})", error.message, error.code)));
                        }
                    }
                    outcome.written = docs.len() - outcome.duplicates - outcome.failed.len();
                    Ok(outcome)
                }
                _ => Err(e),
            },
        }
    }
}
