//! `evp-loadtest`: drives `evp-ingest` at a target rate and proves every accepted event was stored
//! exactly once.
//!
//! - [`generator`] builds request bodies whose ids identify the run and the event.
//! - [`driver`] sends them with a fixed concurrency, on a schedule when a rate is set, recording
//!   latencies in an HDR histogram and printing progress every second.
//! - [`verify`] waits until the consumer group has stored everything (or counts in MongoDB when
//!   it cannot watch the group), then checks every accepted id once for missing and duplicates.
//! - [`read_bench`] times the read API's first page against a page deep in the result.
//! - [`mongo_bench`] measures the MongoDB server's own bulk-insert rate with the worker's document
//!   shape and insert code, the ceiling the worker fleet is compared against.
//! - [`report`] is the printed and JSON report.
//! - [`subscribe_bench`] runs consumers of a subscription and times its deliveries.

pub mod driver;
pub mod generator;
pub mod mongo_bench;
pub mod read_bench;
pub mod report;
pub mod subscribe_bench;
pub mod verify;
