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
//! - [`Emitter`] (fire-and-forget): [`Emitter::emit`] never blocks and never panics; a bounded
//!   queue (10,000 events; when full the event is refused and counted) is sent in background
//!   batches (100 events or 500 ms) by a thread of its own; each event's [`Receipt`] can be awaited
//!   or waited on with a timeout; `flush`, `shutdown`, and dropping the emitter deliver what is
//!   queued, for a bounded time.
//! - [`blocking::Client`]: the same for synchronous code, every call bounded by a timeout, safe
//!   to call from inside a tokio runtime.
//! - [`Subscriber`]: runs a projection of your own over a subscription: polls, hands each batch to
//!   your handler, acknowledges on `Ok`, hands back with the error and backs off on `Err`, stops
//!   gracefully; [`Subscriber::run_blocking`] for synchronous handlers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), evp_client::Error> {
//! let client = evp_client::Client::new("http://127.0.0.1:3000", "demo-key")?;
//! let id = client.send(evp_client::Event::new("signup").aggregate_id("user-42")).await?;
//! # Ok(()) }
//! ```

pub mod blocking;
mod client;
mod emitter;
mod error;
mod event;
mod subscriber;

pub use client::{Client, ClientConfig};
pub use emitter::{EmitError, Emitter, EmitterConfig, ErrorCallback, Outcome, Receipt, Stats};
pub use error::{Detail, Error};
pub use event::Event;
pub use subscriber::{Delivered, RunStats, Start, StopHandle, Subscriber, SubscriberConfig};
