//! MongoDB: indexes at start-up, and unordered bulk inserts whose every document gets a verdict.
//!
//! A failure is either **transient** (the network, a timeout, an election, a write concern not
//! met: the same write will succeed later, so it is retried with backoff and never costs an entry
//! its delivery budget) or **permanent** (MongoDB refuses this document and always will: it goes to
//! the dead-letter stream at once, alone, while the rest of its batch is stored and acknowledged).
//! [`classify`] is the one place that decides which.

use mongodb::bson::{Document, RawDocumentBuf, doc};
use mongodb::error::{Error, ErrorKind};
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};

/// MongoDB's duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;

/// Server error codes that mean "not now" rather than "never": elections, shutdowns, interrupted
/// or timed-out operations, write conflicts, network trouble between members.
const TRANSIENT_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    50,    // MaxTimeMSExpired
    64,    // WriteConcernFailed
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    112,   // WriteConflict
    189,   // PrimarySteppedDown
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

/// What became of one document of a bulk write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Newly inserted.
    Written,
    /// Already stored (same tenant and event id): counts as stored, so redelivery is harmless.
    Duplicate,
    /// Not written this time, for a reason that passes: write it again.
    Transient(String),
    /// MongoDB refuses this document and always will.
    Refused(String),
}

/// Whether a whole-batch failure is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Transient,
    /// The driver cannot send the batch as it is (a document it cannot encode or that is too
    /// large): retrying it unchanged can never succeed.
    Permanent,
}

/// The verdict on a write error reported for one document.
pub fn classify(code: i32, message: &str) -> Verdict {
    let reason = format!("{message} (code {code})");
    if code == DUPLICATE_KEY {
        // Only our (tenant, event_id) index makes a duplicate "already stored"; a clash on another
        // unique index (one an operator added) means this event is *not* stored.
        if message.contains("event_id") { Verdict::Duplicate } else { Verdict::Refused(reason) }
    } else if TRANSIENT_CODES.contains(&code) {
        Verdict::Transient(reason)
    } else {
        Verdict::Refused(reason)
    }
}

/// Whether a failure of the whole bulk write can succeed if retried.
pub fn classify_batch_error(error: &Error) -> Failure {
    match *error.kind {
        ErrorKind::InvalidArgument { .. } | ErrorKind::BsonSerialization(_) | ErrorKind::Bson(_) => {
            Failure::Permanent
        }
        _ => Failure::Transient,
    }
}

/// The `events` collection.
#[derive(Clone, Debug)]
pub struct EventStore {
    client: mongodb::Client,
    events: Collection<RawDocumentBuf>,
}

impl EventStore {
    pub fn new(client: mongodb::Client, database: &str) -> Self {
        let events = client.database(database).collection("events");
        Self { client, events }
    }

    /// Uniqueness on (tenant, event_id) makes redelivery harmless; the others serve the read API
    /// ([`crate::reader`]) without a collection scan or an in-memory sort: the newest-first
    /// listing, alone and per filter, each ending in the (timestamp, event_id) order the keyset
    /// cursor walks; and an aggregate's events in stream order.
    ///
    /// Before the read API, two other indexes were created, (tenant, timestamp) and (tenant, type,
    /// timestamp); the ones below supersede them, and an operator may drop them. So does
    /// `aggregate_order` supersede `aggregate_stream` (tenant, aggregate_id, partition, seq), made
    /// before partitions existed.
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let named = |keys: Document, name: &str, unique: bool| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_string()).unique(unique).build())
                .build()
        };
        let newest = |field: Option<&str>, name: &str| {
            let mut keys = doc! { "tenant": 1 };
            if let Some(field) = field {
                keys.insert(field, 1);
            }
            keys.insert("timestamp", -1);
            keys.insert("event_id", -1);
            named(keys, name, false)
        };
        self.events
            .create_indexes([
                named(doc! { "tenant": 1, "event_id": 1 }, "tenant_event_id_unique", true),
                newest(None, "newest"),
                newest(Some("type"), "newest_by_type"),
                newest(Some("source"), "newest_by_source"),
                newest(Some("aggregate_id"), "newest_by_aggregate"),
                newest(Some("correlation_id"), "newest_by_correlation"),
                named(
                    doc! { "tenant": 1, "aggregate_id": 1, "seq": 1, "partition": 1 },
                    "aggregate_order",
                    false,
                ),
                // The rollup job's range scans, covered: no document is fetched to count.
                named(
                    doc! { "partition": 1, "seq": 1, "tenant": 1, "type": 1, "timestamp": 1 },
                    "rollup_position",
                    false,
                ),
            ])
            .await?;
        Ok(())
    }

    pub fn client(&self) -> &mongodb::Client {
        &self.client
    }

    /// Inserts every document, unordered, and returns one verdict per document in order. `Err`
    /// means the batch as a whole failed ([`classify_batch_error`] says whether to retry it);
    /// retrying is safe because duplicates count as stored.
    pub async fn insert(&self, docs: &[&RawDocumentBuf]) -> Result<Vec<Verdict>, Error> {
        match self.events.insert_many(docs.iter().copied()).ordered(false).await {
            Ok(_) => Ok(vec![Verdict::Written; docs.len()]),
            Err(e) => match *e.kind {
                ErrorKind::InsertMany(ref failure) if failure.write_concern_error.is_none() => {
                    let mut verdicts = vec![Verdict::Written; docs.len()];
                    for error in failure.write_errors.iter().flatten() {
                        if let Some(verdict) = verdicts.get_mut(error.index) {
                            *verdict = classify(error.code, &error.message);
                        }
                    }
                    Ok(verdicts)
                }
                _ => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_errors_are_told_apart() {
        let real = "E11000 duplicate key error collection: evp.events index: tenant_event_id_unique dup key";
        let nx = "UNIQUE constraint failed: index 'idx_events_tenant_event_id'";
        assert_eq!(classify(11000, real), Verdict::Duplicate);
        assert_eq!(classify(11000, nx), Verdict::Duplicate);
        assert!(matches!(classify(11000, "E11000 index: data_sku_unique dup key"), Verdict::Refused(_)));
        assert!(matches!(classify(121, "Document failed validation"), Verdict::Refused(_)));
        assert!(matches!(classify(10334, "object to insert too large"), Verdict::Refused(_)));
        for code in [91, 189, 10107, 11600, 11602, 112] {
            assert!(matches!(classify(code, "x"), Verdict::Transient(_)), "{code}");
        }
    }

    #[test]
    fn network_errors_are_transient() {
        let io: Error = ErrorKind::Io(std::sync::Arc::new(std::io::ErrorKind::ConnectionReset.into())).into();
        assert_eq!(classify_batch_error(&io), Failure::Transient);
    }
}
