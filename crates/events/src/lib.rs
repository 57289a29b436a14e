//! The evp event model, shared by `evp-ingest` and `evp-worker`.
//!
//! An event travels in three shapes, and each has a module:
//!
//! - [`input`]: the JSON a client POSTs ([`input::EventIn`], whose schema the OpenAPI document is
//!   derived from with the `openapi` feature). Bodies are parsed *borrowing* from the request
//!   bytes (`data` stays raw JSON, walked once by [`data::check`] and copied once into the entry),
//!   and every event is validated against the contract: a batch yields one [`Problem`] per bad
//!   index so the client can fix all of them at once.
//! - [`entry`]: the Redis stream entry. A validated event plus its tenant and receive time is encoded
//!   as one compact JSON value in the field [`entry::FIELD`]; the worker decodes it back. This is the
//!   only place that knows the entry layout, so ingest and worker cannot drift.
//! - [`entry_id`]: a stream entry's id and the sortable form documents store it in.
//! - [`data`]: what MongoDB can store exactly as sent (numbers, nesting, keys). Checked at ingest,
//!   and again by the worker before converting, so the two cannot disagree.
//! - The MongoDB document is built by the worker from a decoded entry (it owns the BSON dependency).
//!
//! Nothing here does I/O; everything is unit tested.

pub mod data;
pub mod entry;
pub mod entry_id;
pub mod input;

pub use entry::{DecodeError, EncodedEvent, StoredEvent, ValidEvent};
pub use entry_id::EntryId;
pub use input::{Admission, BodyError, Limits, Problem, admit_batch, admit_one, count_events};
