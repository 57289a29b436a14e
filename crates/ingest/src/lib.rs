//! `evp-ingest`: the HTTP front door of evp.
//!
//! A request flows through these modules, in order:
//!
//! - [`router`] builds the axum router and the OpenAPI document from one list of handlers, and adds
//!   request ids, request metrics and logging ([`metrics::TrackRequests`]) and panic catching.
//! - [`connections`] bounds each connection in time (request head, idle) and their number.
//! - [`auth`] turns `x-api-key` into a [`auth::Tenant`] (401 otherwise), using the keys of
//!   [`keys`] (the environment's) and [`key_store`] (created at runtime, kept in MongoDB).
//! - [`body`] reads the body: JSON content type, size cap, gzip with a cap on the decompressed size.
//! - [`routes::events`] validates with `evp_events` (all or nothing) and hands the encoded entries to
//! - [`stream_publisher`], which appends them to the Redis stream in one atomic round trip; only then
//!   does the client get 202.
//! - [`limiters`] hold what one tenant may take of the shared deployment (distinct types).
//! - [`error`] is the single mapping from every refusal to status, code and JSON body.
//!
//! The read side: [`routes::read`] serves `GET /events*` and `GET /aggregates/{id}/events` with
//! the types and checks of [`read`] and the queries of `evp_store::reader`.
//!
//! Analytics: [`routes::analytics`] answers `GET /analytics/metrics` with [`analytics`]'s types,
//! the exact counts of `evp_store::rollups` and the pipeline's state from Redis.
//!
//! Subscriptions: [`routes::subscriptions`] checks the requests of `/subscriptions*`;
//! [`subscriptions`] hands out, acknowledges and resets deliveries over `evp_store::subscriptions`,
//! below each partition's horizon (why that is exact is written at its top).
//!
//! [`config`] reads the environment once; [`run`] serves until the shutdown token is cancelled, then
//! drains in-flight requests. `main.rs` is config, telemetry, bind, `run`.

pub mod analytics;
pub mod auth;
pub mod body;
pub mod config;
pub mod connections;
pub mod error;
pub mod key_store;
pub mod keys;
pub mod limiters;
pub mod metrics;
pub mod read;
pub mod router;
pub mod routes;
pub mod shards;
pub mod state;
pub mod stream_publisher;
pub mod subscriptions;

use anyhow::Context;
use evp_runtime::metrics::Handle as MetricsHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::IngestConfig;
pub use state::AppState;

/// Builds the shared state: the lazy Redis publisher and the MongoDB client (neither connects yet).
pub async fn build_state(
    config: IngestConfig,
    metrics: Option<MetricsHandle>,
    shutdown: CancellationToken,
) -> anyhow::Result<AppState> {
    let common = &config.common;
    let target = common.redis_target().context("REDIS_URL")?;
    let publisher = stream_publisher::StreamPublisher::new(
        target.clone(),
        common.partitions(),
        &config.group,
        config.wait_replicas,
        config.redis_timeout,
    )
    .context("REDIS_URL")?;
    let mongo =
        evp_runtime::connect::mongo_client(&common.mongodb_uri, "evp-ingest").await.context("MONGODB_URI")?;
    let metrics_handles = metrics::IngestMetrics::register();
    let reader = evp_store::reader::EventReader::new(&mongo, &common.mongodb_database);
    let cursors = read::cursor_keys::CursorKeys::new(
        &mongo.database(&common.mongodb_database),
        config.cursor_secret.as_deref(),
    );
    let keys = key_store::KeyStore::new(
        &mongo.database(&common.mongodb_database),
        config.limits.max_batch_events as u64,
    );
    let rollups = evp_store::rollups::RollupStore::new(&mongo, &common.mongodb_database);
    let type_cap = limiters::types::TypeCap::new(config.tenant_max_types, &common.stream);
    let rate_limiter = limiters::rate::RateLimiter::new(config.rate_limits.clone(), &common.stream);
    let read_slots = limiters::reads::ReadSlots::new(config.read_concurrency_per_tenant);
    let poll_slots = limiters::polls::PollSlots::new(config.read_concurrency_per_tenant);
    let subscriptions = subscriptions::Subscriptions::new(
        evp_store::subscriptions::SubscriptionStore::new(&mongo, &common.mongodb_database),
        common.partitions().len() as u32,
        config.subscription_ack_timeout,
    );
    let pipeline = analytics::Pipeline::new(target, common.partitions(), &config.group, config.redis_timeout)
        .context("REDIS_URL")?;
    Ok(AppState::new(state::Shared {
        config,
        publisher,
        mongo,
        reader,
        rollups,
        pipeline,
        rates: analytics::RateSampler::default(),
        analytics_slots: std::sync::Arc::new(tokio::sync::Semaphore::new(analytics::CONCURRENT_ANSWERS)),
        cursors,
        keys,
        type_cap,
        rate_limiter,
        read_slots,
        poll_slots,
        subscriptions,
        prometheus: metrics,
        metrics: metrics_handles,
        shutdown,
    }))
}

/// Creates the `events` indexes of `EVENT_INDEXES` (the workers do too), retrying until MongoDB
/// answers: every filter the ingest serves has its index even when the workers were given fewer.
fn spawn_index_creation(state: &AppState, shutdown: CancellationToken) {
    let store = evp_store::EventStore::new(state.mongo.clone(), &state.config.common.mongodb_database);
    let filters = state.config.event_indexes.clone();
    let subscriptions = state.subscriptions.store().clone();
    tokio::spawn(async move {
        loop {
            match store.ensure_indexes(&filters).await {
                Ok(_) => match subscriptions.ensure_indexes().await {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(error = %e, "creating the subscriptions index failed; retrying"),
                },
                Err(e) => tracing::warn!(error = %e, "creating the events indexes failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            }
        }
    });
}

/// Serves on `listener` until `shutdown` is cancelled, then stops accepting and waits for in-flight
/// requests (at most the configured drain timeout). Requests are served on `config.threads` server
/// threads of their own ([`shards`]); the caller's runtime accepts connections and keeps the
/// shared clients and the backlog monitor.
pub async fn run(
    config: IngestConfig,
    listener: TcpListener,
    metrics: Option<MetricsHandle>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (drain_timeout, threads) = (config.drain_timeout, config.threads);
    let bounds = shards::Bounds::of(&config);
    let state = build_state(config, metrics, shutdown.clone()).await?;
    state.publisher.spawn_backlog_monitor(state.config.backlog_poll, shutdown.clone());
    state.rates.spawn(state.pipeline.clone(), shutdown.clone());
    spawn_index_creation(&state, shutdown.clone());
    state.keys.spawn_refresh(state.config.key_refresh, shutdown.clone());
    state.subscriptions.spawn_lag_gauges(state.pipeline.clone(), shutdown.clone());
    if state.config.api_keys.tenants().next().is_none() && state.config.admin_keys.is_empty() {
        tracing::warn!(
            "no key in API_KEYS or ADMIN_KEYS: only keys made at runtime work. Make one with \
             `evp-ingest keys create --tenant <tenant>` (or `--role operator`), with the same MONGODB_URI"
        );
    }
    tracing::info!(addr = %listener.local_addr()?, threads, "evp-ingest listening; Swagger UI at /docs");
    let make_app = move || Ok(router::router(state.on_this_runtime().context("REDIS_URL")?));
    shards::serve(listener, threads, make_app, shutdown, drain_timeout, bounds).await?;
    tracing::info!("evp-ingest stopped");
    Ok(())
}
