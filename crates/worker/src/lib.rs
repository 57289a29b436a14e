//! `evp-worker`: moves events from the Redis stream into MongoDB, exactly once per (tenant, id).
//!
//! Run N replicas under one consumer group; each entry goes to one of them. The pieces:
//!
//! - [`stream_reader`] reads new entries with XREADGROUP, but only when a write slot is free:
//!   that is the backpressure. [`inflight_limit`] sets how many slots there are, between 1 and
//!   `WORKER_MAX_INFLIGHT`, following how fast MongoDB absorbs writes (AIMD).
//! - [`processor`] takes one batch from entries to acknowledgement: `evp_store` turns each entry
//!   into a document and bulk-writes them unordered, giving each a verdict (duplicates count as
//!   stored, so redelivery is harmless); transient failures are retried with [`backoff`] while the
//!   batch renews its claim on the entries; a document refused for good, or one that cannot be
//!   built, is dead-lettered alone; then one XACK covers every stored entry.
//! - [`pending_reclaimer`] claims entries idle longer than `WORKER_CLAIM_IDLE_MS` (their consumer
//!   died) and dead-letters those delivered `WORKER_MAX_DELIVERIES` times.
//! - [`trimmer`] trims entries every group has acknowledged, and publishes pending and lag.
//! - [`lease`] competes for the `rollups` lease (one leader among the replicas, fencing numbers);
//!   [`rollup_job`] runs on the leader: it counts closed stream ranges into the exact rollups
//!   (`evp_store::rollups`), builds a new generation on `rollups rebuild`, and reports its lag.
//! - [`stream`] holds every Redis command (the `evp-worker dlq` subcommands use
//!   `evp_runtime::dead_letters`, shared with the ingest's `/admin/dlq*`); [`health`] serves `/health/*` and `/metrics` on `WORKER_PORT`.
//!
//! Shutdown: the token stops reading; batches in flight are written and acknowledged (MongoDB
//! down: retried for a grace period, then left pending for another worker); then `run` returns.

pub mod backoff;
pub mod config;
pub mod health;
pub mod inflight_limit;
pub mod lease;
pub mod metrics;
pub mod pending_reclaimer;
pub mod processor;
pub mod rollup_job;
pub mod stream;
pub mod stream_reader;
pub mod trimmer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use evp_runtime::metrics::Handle as MetricsHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::WorkerConfig;

use crate::backoff::Backoff;
use crate::lease::Lease;
use crate::processor::Processor;
use crate::stream::StreamClient;
use crate::stream_reader::sleep_unless_cancelled;
use evp_store::EventStore;
use evp_store::rollups::RollupStore;
use tokio::sync::watch;

/// Runs a worker until `shutdown` is cancelled and its batches in flight are done. `listener`
/// serves health and metrics (`None` when `WORKER_PORT=0`).
pub async fn run(
    config: WorkerConfig,
    listener: Option<TcpListener>,
    metrics: Option<MetricsHandle>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let stream = StreamClient::new(&config).context("REDIS_URL")?;
    let mongo = evp_runtime::connect::mongo_client(&config.common.mongodb_uri, "evp-worker")
        .await
        .context("MONGODB_URI")?;
    let rollups = RollupStore::new(&mongo, &config.common.mongodb_database);
    let store = EventStore::new(mongo, &config.common.mongodb_database);
    let started = Arc::new(AtomicBool::new(false));
    let rollup_status = rollup_job::SharedStatus::default();

    let health_server = listener.map(|listener| {
        let state = health::HealthState {
            stream: stream.clone(),
            store: store.clone(),
            metrics,
            started: started.clone(),
            rollup: rollup_status.clone(),
            rollup_max_lag: config.rollup_max_lag,
        };
        let server = axum::serve(listener, health::router(state))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        tokio::spawn(server.into_future())
    });

    tracing::info!(
        stream = config.common.stream,
        group = config.group,
        consumer = config.consumer,
        batch_size = config.batch_size,
        max_inflight = config.max_inflight,
        "evp-worker starting"
    );
    if prepare(&stream, &store, &rollups, &config, &shutdown).await {
        started.store(true, Ordering::Relaxed);
        tracing::info!("consuming");
        let lease = Lease::new(
            stream.conn().clone(),
            &config.common.stream,
            "rollups",
            &config.consumer,
            config.lease_ttl,
        );
        let (grants, granted) = watch::channel(None);
        // The job stops first, then the lease is released, so a standby takes over at once.
        let job_stop = shutdown.child_token();
        let lease_stop = CancellationToken::new();
        let leasing = tokio::spawn(lease::hold(lease, grants, lease_stop.clone()));
        let job = tokio::spawn(rollup_job::run(stream.clone(), rollups, granted, rollup_status, job_stop));
        let processor = Processor::new(stream, store, config.clone(), shutdown.clone());
        let reader = tokio::spawn(stream_reader::run(processor.clone()));
        let reclaimer = tokio::spawn(pending_reclaimer::run(processor.clone()));
        let trimmer = tokio::spawn(trimmer::run(processor));
        let (reader, reclaimer, trimmer, job) = tokio::join!(reader, reclaimer, trimmer, job);
        lease_stop.cancel();
        leasing.await.context("lease holder")?;
        reader.context("stream reader")?;
        reclaimer.context("pending reclaimer")?;
        trimmer.context("trimmer")?;
        job.context("rollup job")?;
    }
    if let Some(server) = health_server {
        server.await.context("health listener")?.context("health listener")?;
    }
    tracing::info!("evp-worker stopped");
    Ok(())
}

/// Creates the indexes and the consumer group (on every partition), retrying until both exist. Writing before the
/// unique index exists could store an event twice, so nothing is read until then. Returns false
/// when shutdown came first.
async fn prepare(
    stream: &StreamClient,
    store: &EventStore,
    rollups: &RollupStore,
    config: &WorkerConfig,
    shutdown: &CancellationToken,
) -> bool {
    retry_until_ok("create MongoDB indexes", config, shutdown, || async {
        for name in store.ensure_indexes(&config.event_indexes).await? {
            tracing::warn!(index = %name, "an index of this name exists with other options; kept as it is");
        }
        rollups.ensure_indexes().await
    })
    .await
        && retry_until_ok("create the consumer group", config, shutdown, || async {
            for partition in stream.partitions() {
                partition.ensure_group().await?;
            }
            Ok::<(), redis::RedisError>(())
        })
        .await
}

/// Runs `op` until it succeeds (true) or shutdown comes first (false), backing off between tries.
async fn retry_until_ok<F, Fut, E>(
    what: &str,
    config: &WorkerConfig,
    shutdown: &CancellationToken,
    mut op: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut backoff = Backoff::new(config.backoff);
    loop {
        match op().await {
            Ok(()) => return true,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, ?delay, "cannot {what} yet; retrying");
                sleep_unless_cancelled(delay, shutdown).await;
                if shutdown.is_cancelled() {
                    return false;
                }
            }
        }
    }
}
