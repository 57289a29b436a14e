//! [`Subscriber`]: runs a projection of your own over a subscription (SPEC "Subscriptions"), the
//! loop pupsourcing's processor and Marten's daemon give their users.
//!
//! It defines the subscription (`PUT`, the same definition again is fine), then polls, hands each
//! batch to your handler, and acknowledges it when the handler returns `Ok`; on `Err` it hands the
//! batch back with the error's text (it becomes the subscription's `last_error`) and backs off,
//! doubling the pause up to a cap, before polling again (the same events come back). Calls are
//! retried like every [`Client`] call. [`StopHandle::stop`] ends the run after the batch in hand
//! is handled and acknowledged. [`Subscriber::run_blocking`] is the same for synchronous handlers.
//!
//! Delivery is at least once: make the handler idempotent (upsert by event id).

use std::fmt::Display;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::{Client, Error};

/// Where a new subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// Every stored event (the default).
    Beginning,
    /// Events appended from its creation on.
    Now,
}

/// Settings of a [`Subscriber`].
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// This process's consumer name (`[A-Za-z0-9_.-]{1,64}`); partitions are held per consumer.
    pub consumer: String,
    /// The event types to deliver; empty: every type.
    pub types: Vec<String>,
    pub start: Start,
    /// Most events per batch, 1–1000 (100).
    pub batch: u32,
    /// How long one poll waits for events (2 s).
    pub wait: Duration,
    /// First and largest pause after a failed batch (500 ms, 30 s).
    pub backoff: (Duration, Duration),
}

impl SubscriberConfig {
    pub fn new(consumer: impl Into<String>) -> Self {
        Self {
            consumer: consumer.into(),
            types: Vec::new(),
            start: Start::Beginning,
            batch: 100,
            wait: Duration::from_secs(2),
            backoff: (Duration::from_millis(500), Duration::from_secs(30)),
        }
    }
}

/// A delivered event: the stored event, and where it was appended.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Delivered {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub timestamp: String,
    pub received_at: String,
    pub source: Option<String>,
    pub aggregate_id: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
    /// The stream partition; an aggregate's events are all in one.
    pub partition: i32,
    /// The stream entry id (`<ms>-<n>`): a partition's events come in this order.
    pub seq: String,
}

#[derive(Deserialize)]
struct Polled {
    events: Vec<Delivered>,
    ack: Option<String>,
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Batches the handler returned `Ok` for (and that were acknowledged).
    pub acknowledged: u64,
    /// Batches handed back after the handler failed.
    pub nacked: u64,
    /// Events acknowledged.
    pub events: u64,
}

/// Ends a run after the batch in hand ([`Subscriber::stop_handle`]).
#[derive(Debug, Clone, Default)]
pub struct StopHandle {
    stopped: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl StopHandle {
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Waits up to `pause`, or less when stopped.
    async fn sleep(&self, pause: Duration) {
        let notified = self.notify.notified();
        if !self.is_stopped() {
            let _ = tokio::time::timeout(pause, notified).await;
        }
    }
}

/// Runs a handler over a subscription's events; see the module's documentation.
#[derive(Debug, Clone)]
pub struct Subscriber {
    client: Client,
    name: String,
    config: SubscriberConfig,
    stop: StopHandle,
}

impl Subscriber {
    pub fn new(client: Client, name: impl Into<String>, config: SubscriberConfig) -> Self {
        Self { client, name: name.into(), config, stop: StopHandle::default() }
    }

    /// A handle that ends [`run`](Self::run) once the batch in hand is done.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Runs until stopped: each batch to `handler`, acknowledged on `Ok`, handed back on `Err`.
    /// Returns an error when the server refuses for good (a 4xx, e.g. the name defined otherwise)
    /// or stays unavailable past the client's deadline.
    ///
    /// The handler gets each batch by value and returns a future (so the run can be spawned:
    /// it is `Send` when the handler and its futures are).
    pub async fn run<F, Fut, E>(&self, mut handler: F) -> Result<RunStats, Error>
    where
        F: FnMut(Vec<Delivered>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
    {
        self.define().await?;
        let mut stats = RunStats::default();
        let mut pause = self.config.backoff.0;
        while !self.stop.is_stopped() {
            let polled = tokio::select! {
                polled = self.poll() => polled?,
                () = self.stop.notify.notified() => break,
            };
            let Some(ack) = polled.ack else { continue };
            let count = polled.events.len() as u64;
            match handler(polled.events).await {
                Ok(()) => {
                    self.settle("ack", &serde_json::json!({ "ack": ack })).await?;
                    stats.acknowledged += 1;
                    stats.events += count;
                    pause = self.config.backoff.0;
                }
                Err(e) => {
                    self.settle("nack", &serde_json::json!({ "ack": ack, "error": e.to_string() })).await?;
                    stats.nacked += 1;
                    self.stop.sleep(pause).await;
                    pause = (pause * 2).min(self.config.backoff.1);
                }
            }
        }
        Ok(stats)
    }

    /// [`run`](Self::run) for a synchronous handler, on a thread and runtime of its own (so it
    /// may be called from anywhere, an async runtime included); returns when the run ends.
    pub fn run_blocking<F, E>(&self, mut handler: F) -> Result<RunStats, Error>
    where
        F: FnMut(&[Delivered]) -> Result<(), E> + Send,
        E: Display,
    {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| Error::Config(format!("cannot start the subscriber's runtime: {e}")))?;
                    runtime.block_on(self.run(|events: Vec<Delivered>| std::future::ready(handler(&events))))
                })
                .join()
                .unwrap_or_else(|_| Err(Error::Config("the handler panicked".into())))
        })
    }

    async fn define(&self) -> Result<(), Error> {
        let definition = serde_json::json!({ "types": self.config.types, "start": self.config.start });
        let path = format!("/subscriptions/{}", self.name);
        self.client
            .call::<serde_json::Value>(Method::PUT, &path, &definition, Duration::ZERO)
            .await
            .map(|_| ())
    }

    async fn poll(&self) -> Result<Polled, Error> {
        let body = serde_json::json!({
            "consumer": self.config.consumer,
            "max": self.config.batch,
            "wait_ms": self.config.wait.as_millis() as u64,
        });
        let path = format!("/subscriptions/{}/poll", self.name);
        let polled = self.client.call::<Polled>(Method::POST, &path, &body, self.config.wait).await?;
        Ok(polled.unwrap_or(Polled { events: Vec::new(), ack: None }))
    }

    /// Acks or nacks; a 409 (the delivery was given to another consumer since) is not an error of
    /// the run: those events are that consumer's now.
    async fn settle(&self, what: &str, body: &serde_json::Value) -> Result<(), Error> {
        let path = format!("/subscriptions/{}/{what}", self.name);
        match self.client.call::<serde_json::Value>(Method::POST, &path, body, Duration::ZERO).await {
            Err(Error::Api { status: 409, .. }) | Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
