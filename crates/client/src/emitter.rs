//! Fire-and-forget: `emit` hands an event to a background thread that sends batches.
//!
//! The shape of sentry-rust's transport thread and posthog-rs's batching: a bounded channel
//! drained by one thread of its own (with its own single-threaded runtime, so the emitter works
//! from async and from plain sync code alike, and a runtime shutting down around it cannot cut a
//! flush short). `emit` never blocks and never panics: when the queue is full the event is refused
//! and counted. Batches go out at [`EmitterConfig::batch`] events or every
//! [`EmitterConfig::interval`], through a [`Client`], so they are retried like any `send_batch`.
//! Each event's [`Receipt`] tells its outcome. `flush` and `shutdown` wait (boundedly) for what is
//! queued; dropping the emitter flushes for [`EmitterConfig::drop_timeout`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::{Client, Error, Event};

/// A callback for batches that failed for good.
pub type ErrorCallback = Arc<dyn Fn(&Error) + Send + Sync>;

/// Settings of an [`Emitter`].
#[derive(Clone)]
pub struct EmitterConfig {
    /// Events waiting at most (default 10,000); past it `emit` refuses.
    pub capacity: usize,
    /// Events per batch (default 100).
    pub batch: usize,
    /// Longest an event waits for its batch to fill (default 500 ms).
    pub interval: Duration,
    /// How long dropping the emitter waits for queued events to be sent (default 5 s).
    pub drop_timeout: Duration,
    /// Called with every batch that failed for good.
    pub on_error: Option<ErrorCallback>,
}

impl Default for EmitterConfig {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            batch: 100,
            interval: Duration::from_millis(500),
            drop_timeout: Duration::from_secs(5),
            on_error: None,
        }
    }
}

impl std::fmt::Debug for EmitterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmitterConfig").field("capacity", &self.capacity).field("batch", &self.batch).finish()
    }
}

/// Why `emit` refused an event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EmitError {
    #[error("the emitter's queue is full; the event was dropped")]
    QueueFull,
    #[error("the emitter has shut down")]
    Closed,
}

/// Counters of an emitter.
#[derive(Debug, Default)]
pub struct Stats {
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

impl Stats {
    /// Events the server accepted.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
    /// Events whose batch failed for good.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    /// Events refused by `emit` (queue full or closed).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The outcome of one emitted event: its id once accepted, or why not.
pub type Outcome = Result<String, Arc<Error>>;

#[derive(Default)]
struct Slot {
    outcome: Mutex<Option<Outcome>>,
    ready: Condvar,
    notify: tokio::sync::Notify,
}

/// One event's outcome, to await or to wait on from sync code.
#[derive(Clone)]
pub struct Receipt(Arc<Slot>);

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Receipt")
    }
}

impl Receipt {
    fn settle(&self, outcome: Outcome) {
        *self.0.outcome.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(outcome);
        self.0.ready.notify_all();
        // Wakes every `outcome()` waiting: each registers before it looks at the slot.
        self.0.notify.notify_waiters();
    }

    fn peek(&self) -> Option<Outcome> {
        self.0.outcome.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Waits (async) for the outcome.
    pub async fn outcome(&self) -> Outcome {
        loop {
            let notified = self.0.notify.notified();
            if let Some(outcome) = self.peek() {
                return outcome;
            }
            notified.await;
        }
    }

    /// Waits (blocking the thread) for the outcome, at most `timeout`; `None` when it is not known yet.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Outcome> {
        let deadline = Instant::now() + timeout;
        let mut guard = self.0.outcome.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if let Some(outcome) = guard.as_ref() {
                return Some(outcome.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            guard =
                self.0.ready.wait_timeout(guard, left).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
    }
}

enum Message {
    Event(Event, Receipt),
    /// Send everything queued before this, then answer.
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// Sends events in the background; see the module documentation.
pub struct Emitter {
    queue: mpsc::Sender<Message>,
    stats: Arc<Stats>,
    drop_timeout: Duration,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter")
            .field("queued", &(self.queue.max_capacity() - self.queue.capacity()))
            .finish()
    }
}

impl Emitter {
    /// Starts the background thread. The batches go through `client`.
    pub fn new(client: Client, config: EmitterConfig) -> Result<Self, Error> {
        let (queue, receiver) = mpsc::channel(config.capacity.max(1));
        let stats = Arc::new(Stats::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Config(format!("cannot start the emitter's runtime: {e}")))?;
        let worker = Worker { client, config: config.clone(), stats: stats.clone() };
        let thread = std::thread::Builder::new()
            .name("evp-emitter".into())
            .spawn(move || runtime.block_on(worker.run(receiver)))
            .map_err(|e| Error::Config(format!("cannot start the emitter's thread: {e}")))?;
        Ok(Self { queue, stats, drop_timeout: config.drop_timeout, thread: Some(thread) })
    }

    /// Queues `event` without blocking; its receipt tells the outcome.
    pub fn emit(&self, event: Event) -> Result<Receipt, EmitError> {
        let receipt = Receipt(Arc::new(Slot::default()));
        match self.queue.try_send(Message::Event(event, receipt.clone())) {
            Ok(()) => Ok(receipt),
            Err(e) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                Err(match e {
                    mpsc::error::TrySendError::Full(_) => EmitError::QueueFull,
                    mpsc::error::TrySendError::Closed(_) => EmitError::Closed,
                })
            }
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Sends everything queued so far; true when that finished within `timeout`. Blocks the
    /// calling thread (call it from `spawn_blocking` in async code).
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        let deadline = Instant::now() + timeout;
        loop {
            match self.queue.try_send(Message::Flush(done.clone())) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Full(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(_) => return false,
            }
        }
        wait.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_ok()
    }

    /// Flushes, then stops the background thread; true when everything was sent within `timeout`.
    pub fn shutdown(mut self, timeout: Duration) -> bool {
        self.stop(timeout)
    }

    fn stop(&mut self, timeout: Duration) -> bool {
        let flushed = self.flush(timeout);
        // Closing the queue ends the thread once it has drained it.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.queue, closed));
        if let Some(thread) = self.thread.take()
            && flushed
        {
            let _ = thread.join();
        }
        flushed
    }
}

impl Drop for Emitter {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop(self.drop_timeout);
        }
    }
}

/// The background side.
struct Worker {
    client: Client,
    config: EmitterConfig,
    stats: Arc<Stats>,
}

impl Worker {
    async fn run(self, mut receiver: mpsc::Receiver<Message>) {
        let mut batch: Vec<(Event, Receipt)> = Vec::with_capacity(self.config.batch);
        let mut flushes = Vec::new();
        loop {
            let first = if batch.is_empty() {
                receiver.recv().await
            } else {
                match tokio::time::timeout(self.config.interval, receiver.recv()).await {
                    Ok(message) => message,
                    Err(_) => {
                        self.send(&mut batch).await;
                        continue;
                    }
                }
            };
            let Some(message) = first else { break };
            self.take(message, &mut batch, &mut flushes);
            // Whatever else is already queued joins this batch.
            while batch.len() < self.config.batch
                && let Ok(message) = receiver.try_recv()
            {
                self.take(message, &mut batch, &mut flushes);
            }
            if batch.len() >= self.config.batch || !flushes.is_empty() {
                self.send(&mut batch).await;
            }
            if batch.is_empty() {
                for done in flushes.drain(..) {
                    let _ = done.try_send(());
                }
            }
        }
        self.send(&mut batch).await;
        for done in flushes {
            let _ = done.try_send(());
        }
    }

    fn take(
        &self,
        message: Message,
        batch: &mut Vec<(Event, Receipt)>,
        flushes: &mut Vec<std::sync::mpsc::SyncSender<()>>,
    ) {
        match message {
            Message::Event(event, receipt) => batch.push((event, receipt)),
            Message::Flush(done) => flushes.push(done),
        }
    }

    async fn send(&self, batch: &mut Vec<(Event, Receipt)>) {
        while !batch.is_empty() {
            let take = batch.len().min(self.config.batch);
            let chunk: Vec<(Event, Receipt)> = batch.drain(..take).collect();
            let (events, receipts): (Vec<Event>, Vec<Receipt>) = chunk.into_iter().unzip();
            match self.client.send_batch(events).await {
                Ok(ids) => {
                    self.stats.sent.fetch_add(ids.len() as u64, Ordering::Relaxed);
                    for (receipt, id) in receipts.iter().zip(ids) {
                        receipt.settle(Ok(id));
                    }
                }
                Err(e) => {
                    self.stats.failed.fetch_add(receipts.len() as u64, Ordering::Relaxed);
                    if let Some(on_error) = &self.config.on_error {
                        on_error(&e);
                    }
                    let e = Arc::new(e);
                    for receipt in &receipts {
                        receipt.settle(Err(e.clone()));
                    }
                }
            }
        }
    }
}
