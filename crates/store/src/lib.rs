//! `evp-store`: the MongoDB side of evp, shared by the worker (which writes), the ingest (which
//! reads) and the load tool (which measures the database the way the worker writes to it).
//!
//! - [`bson_writer`]: BSON written straight into one buffer, `data` from its JSON in one pass.
//! - [`document`]: a Redis stream entry → the BSON document of SPEC's "MongoDB data", checked
//!   against the same data rules as the ingest and encoded one by one, so one bad document is
//!   refused alone.
//! - [`indexes`]: the `events` collection's index set, `_id` = (tenant, event id), the listing
//!   filters a deployment indexes (`EVENT_INDEXES`), and the check that a query plan uses them.
//! - [`bulk_writer`]: the `events` collection: indexes created at start-up, and unordered bulk
//!   inserts in which every document gets a verdict (written, duplicate, transient, refused).
//! - [`first_positions`]: per (tenant, partition), a position at or below the tenant's first
//!   stored event, recorded by each insert: a hint that lets a subscription's read from the
//!   beginning start next to the tenant's events.
//! - [`reader`]: the read API's queries (the ingest's `GET /events*`): keyset pages newest first
//!   by filter, an aggregate's events in stream order, one event; all scoped to a tenant.
//! - [`rollups`]: the exact per-(tenant, type, minute) counts in `event_counts`, the job's steps
//!   (count closed ranges, apply each once under a fencing number, advance) and the analytics read;
//!   why they are exact is written at its top.
//! - [`subscriptions`]: the `subscriptions` collection (a subscription's whole state, changed by
//!   compare-and-set) and the stream-order query that feeds one.
//! - [`windows`]: a range of stream positions cut into windows of append time, so that a
//!   subscription's read costs what it returns on a server that does not stop a scan at the limit.
//!
//! No Redis here, and nothing about retrying: the worker's processor decides what to do with each
//! verdict.

pub mod bson_writer;
pub mod bulk_writer;
pub mod document;
pub mod first_positions;
pub mod indexes;
pub mod reader;
pub mod rollups;
pub mod subscriptions;
pub mod windows;

/// Longest a read for a client (a page, an analytics answer) may run on the server (`maxTimeMS`):
/// a client that gave up must not leave its query running, nor a pile of them queue up.
pub const READ_MAX_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// MongoDB's duplicate-key error code.
pub const DUPLICATE_KEY: i32 = 11000;

/// Whether `e` is a write refused as a duplicate key.
pub fn is_duplicate(e: &mongodb::error::Error) -> bool {
    matches!(&*e.kind, mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) if w.code == DUPLICATE_KEY)
}

pub use bulk_writer::{EventStore, Failure, Verdict};
pub use document::{Fields, Position, Unusable, to_document};
pub use indexes::{EventIndexes, ListingFilter};
