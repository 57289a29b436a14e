//! `evp-client`: send events to `evp-ingest` from your own Rust code.
//!
//! - [`Event`]: an event as sent, built with [`Event::new`] and setters.
//! - [`Client`] (async): [`Client::send`] and [`Client::send_batch`] return the events' ids. Events
//!   without an id get a UUIDv7 here, before the first attempt, so a retry can never store an
//!   event twice. 503, 429, timeouts and connection errors are retried with jittered exponential
//!   backoff, honouring `Retry-After`, until the call's deadline; any other 4xx comes back at once
//!   as [`Error::Api`] with the server's code, message and details. Batches larger than the
//!   server's limit are split.
//!
//! Not in this version yet: the blocking client and the fire-and-forget `Emitter` that SPEC also
//! promises.
//!
//! ```no_run
//! # async fn demo() -> Result<(), evp_client::Error> {
//! let client = evp_client::Client::new("http://127.0.0.1:3000", "demo-key")?;
//! let id = client.send(evp_client::Event::new("signup").aggregate_id("user-42")).await?;
//! # Ok(()) }
//! ```

mod client;
mod error;
mod event;

pub use client::{Client, ClientConfig};
pub use error::{Detail, Error};
pub use event::Event;
