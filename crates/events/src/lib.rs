//! The evp event model, shared by `evp-ingest` and `evp-worker`.
//!
//! An event travels in three shapes, and each has a module:
//!
//! - [`input`]: the JSON a client POSTs. Bodies are parsed *borrowing* from the request bytes (the
//!   `data` object is kept as raw JSON and never re-parsed), and every event is validated against the
//!   contract: a batch yields one [`Problem`] per bad index so the client can fix all of them at once.
//! - [`entry`]: the Redis stream entry. A validated event plus its tenant and receive time is encoded
//!   as one compact JSON value in the field [`entry::FIELD`]; the worker decodes it back. This is the
//!   only place that knows the entry layout, so ingest and worker cannot drift.
//! - The MongoDB document is built by the worker from a decoded entry (it owns the BSON dependency).
//!
//! Nothing here does I/O; everything is unit tested.

pub mod entry;
pub mod input;

pub use entry::{DecodeError, EncodedEvent, StoredEvent};
pub use input::{Admission, BodyError, Limits, Problem, ValidEvent, admit_batch, admit_one, count_events};
