//! The client for synchronous code: the async [`crate::Client`] run on a thread of its own.
//!
//! Calls hand their work to that thread's runtime and wait on a plain channel, at most
//! [`crate::ClientConfig::deadline`] plus one request timeout. Nothing runs on the caller's
//! runtime, so calling from inside a tokio runtime (even a current-thread one) cannot deadlock the
//! way `Handle::block_on` bridges do: the caller's thread waits, the client's thread works.

use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::{ClientConfig, Error, Event};

type Job = Box<dyn FnOnce(crate::Client) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A blocking client; cheap to clone (clones share the thread).
#[derive(Debug, Clone)]
pub struct Client {
    jobs: mpsc::UnboundedSender<Job>,
    timeout: Duration,
}

impl Client {
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> Result<Self, Error> {
        Self::with_config(ClientConfig::new(base_url, api_key))
    }

    pub fn with_config(config: ClientConfig) -> Result<Self, Error> {
        let timeout = config.deadline + config.request_timeout;
        let client = crate::Client::with_config(config)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Config(format!("cannot start the client's runtime: {e}")))?;
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        std::thread::Builder::new()
            .name("evp-client".into())
            .spawn(move || {
                runtime.block_on(async move {
                    // Each call runs as its own task, so calls from several threads overlap. The
                    // thread ends when every handle is dropped.
                    while let Some(job) = queue.recv().await {
                        tokio::spawn(job(client.clone()));
                    }
                })
            })
            .map_err(|e| Error::Config(format!("cannot start the client's thread: {e}")))?;
        Ok(Self { jobs, timeout })
    }

    /// Sends one event; returns its id.
    pub fn send(&self, event: Event) -> Result<String, Error> {
        self.call(move |client, done| Box::pin(async move { done_send(done, client.send(event).await) }))
    }

    /// Sends events; returns their ids in order.
    pub fn send_batch(&self, events: Vec<Event>) -> Result<Vec<String>, Error> {
        self.call(move |client, done| {
            Box::pin(async move { done_send(done, client.send_batch(events).await) })
        })
    }

    fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(
            crate::Client,
            SyncSender<Result<T, Error>>,
        ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
        + Send
        + 'static,
    ) -> Result<T, Error> {
        let (done, outcome) = sync_channel(1);
        let job: Job = Box::new(move |client| work(client, done));
        self.jobs.send(job).map_err(|_| Error::Config("the client's thread has stopped".into()))?;
        outcome.recv_timeout(self.timeout).unwrap_or_else(|_| {
            Err(Error::Unavailable { last: format!("no outcome within {:?}", self.timeout), attempts: 0 })
        })
    }
}

fn done_send<T>(done: SyncSender<Result<T, Error>>, outcome: Result<T, Error>) {
    let _ = done.send(outcome);
}
