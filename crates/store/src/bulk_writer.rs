//! MongoDB: indexes at start-up, and unordered bulk inserts whose every document gets a verdict.
//!
//! A failure is either **transient** (the network, a timeout, an election, a write concern not
//! met: the same write will succeed later, so it is retried with backoff and never costs an entry
//! its delivery budget) or **permanent** (MongoDB refuses this document and always will: it goes to
//! the dead-letter stream at once, alone, while the rest of its batch is stored and acknowledged).
//! [`classify`] is the one place that decides which.

use mongodb::Collection;
use mongodb::bson::RawDocumentBuf;
use mongodb::error::{Error, ErrorKind};

use crate::DUPLICATE_KEY;
use crate::first_positions::FirstPositions;
use crate::indexes::{EventIndexes, LEGACY_UNIQUE_INDEX};

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

/// IndexOptionsConflict, IndexKeySpecsConflict: an index of that name exists with other options.
const INDEX_CONFLICTS: &[i32] = &[85, 86];

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
        // Only the index that carries (tenant, event id) makes a duplicate "already stored": `_id`,
        // or the unique index of deployments from before. A clash on another unique index (one an
        // operator added) means this event is *not* stored.
        match duplicate_index(message) {
            Some("_id_" | LEGACY_UNIQUE_INDEX) => Verdict::Duplicate,
            _ => Verdict::Refused(reason),
        }
    } else if TRANSIENT_CODES.contains(&code) {
        Verdict::Transient(reason)
    } else {
        Verdict::Refused(reason)
    }
}

/// The index named in a duplicate-key message (`E11000 duplicate key error collection: evp.events
/// index: _id_ dup key: { … }`).
fn duplicate_index(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once(" index: ")?;
    rest.split_whitespace().next()
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
    first_positions: FirstPositions,
}

impl EventStore {
    /// Writes are journaled (`j: true`) unless `MONGODB_URI` says otherwise: the worker
    /// acknowledges an entry in Redis once MongoDB has acknowledged its document, so that
    /// acknowledgement must survive a crash of the server (an unjournaled write can be lost with
    /// the last ~100 ms of a killed mongod). The URI's `w` (e.g. `majority`) is kept.
    pub fn new(client: mongodb::Client, database: &str) -> Self {
        let db = client.database(database);
        let mut concern = db.write_concern().cloned().unwrap_or_default();
        if concern.journal.is_none() {
            concern.journal = Some(true);
        }
        let events = db.collection_with_options(
            "events",
            mongodb::options::CollectionOptions::builder().write_concern(concern).build(),
        );
        Self { client, events, first_positions: FirstPositions::new(&db) }
    }

    /// The indexes of [`crate::indexes`] for `filters` (`EVENT_INDEXES`). Indexes of earlier
    /// layouts are left alone: an operator drops them (docs/OPERATIONS.md). An index whose name
    /// is taken by one with other options (an earlier release's non-partial `aggregate_order`) is
    /// kept as it is, and its name returned, so that the caller can say so: it still serves.
    pub async fn ensure_indexes(&self, filters: &EventIndexes) -> mongodb::error::Result<Vec<String>> {
        let mut kept = Vec::new();
        for model in filters.models() {
            let name = model.options.as_ref().and_then(|o| o.name.clone()).unwrap_or_default();
            match self.events.create_index(model).await {
                Ok(_) => {}
                Err(e) if matches!(&*e.kind, ErrorKind::Command(c) if INDEX_CONFLICTS.contains(&c.code)) => {
                    kept.push(name)
                }
                Err(e) => return Err(e),
            }
        }
        Ok(kept)
    }

    pub fn client(&self) -> &mongodb::Client {
        &self.client
    }

    /// Inserts every document, unordered, and returns one verdict per document in order. `Err`
    /// means the batch as a whole failed ([`classify_batch_error`] says whether to retry it);
    /// retrying is safe because duplicates count as stored.
    ///
    /// First, the tenants' first positions ([`crate::first_positions`]) are lowered where the batch
    /// goes below them; that record is only a hint, so a failure to write it is logged and does
    /// not hold the batch up.
    pub async fn insert(&self, docs: &[&RawDocumentBuf]) -> Result<Vec<Verdict>, Error> {
        if let Err(e) = self.first_positions.record(docs).await {
            tracing::warn!(error = %e, "could not record the tenants' first stream positions (a hint for subscriptions' reads); storing the batch anyway");
        }
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
        let id =
            r#"E11000 duplicate key error collection: evp.events index: _id_ dup key: { _id: "t:event_id" }"#;
        let legacy =
            "E11000 duplicate key error collection: evp.events index: tenant_event_id_unique dup key";
        assert_eq!(classify(11000, id), Verdict::Duplicate);
        assert_eq!(classify(11000, legacy), Verdict::Duplicate);
        let other = r#"E11000 duplicate key error collection: evp.events index: event_id_sku dup key: { event_id: "x" }"#;
        assert!(matches!(classify(11000, other), Verdict::Refused(_)), "an operator's index naming event_id");
        assert!(matches!(classify(11000, "E11000 duplicate key error"), Verdict::Refused(_)));
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
