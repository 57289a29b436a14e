//! `evp-store`: the MongoDB side of evp, shared by the worker (which writes) and the load tool
//! (which measures the database the way the worker writes to it).
//!
//! - [`document`]: a Redis stream entry → the BSON document of SPEC's "MongoDB data", checked
//!   against the same data rules as the ingest and encoded one by one, so one bad document is
//!   refused alone.
//! - [`bulk_writer`]: the `events` collection: indexes created at start-up, and unordered bulk
//!   inserts in which every document gets a verdict (written, duplicate, transient, refused).
//!
//! No Redis here, and nothing about retrying: the worker's processor decides what to do with each
//! verdict.

pub mod bulk_writer;
pub mod document;

pub use bulk_writer::{EventStore, Failure, Verdict};
pub use document::{Fields, Unusable, to_document};
