//! The state every handler sees.

use std::ops::Deref;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use evp_runtime::metrics::Handle as MetricsHandle;
use evp_store::reader::EventReader;
use evp_store::rollups::RollupStore;

use crate::analytics::{Pipeline, RateSampler};

use crate::config::IngestConfig;
use crate::metrics::IngestMetrics;
use crate::read::cursor_keys::CursorKeys;
use crate::stream_publisher::StreamPublisher;

/// Shared by every request. axum clones the state for each request (and each `State` extractor
/// clones it again), so it is one `Arc`: a clone is one atomic increment, where cloning the
/// fields one by one would cost several, plus the lock a `CancellationToken` takes on clone and
/// drop.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

/// What [`AppState`] points to.
#[derive(Debug)]
pub struct Shared {
    /// API keys are in `config.api_keys`.
    pub config: IngestConfig,
    pub publisher: StreamPublisher,
    /// Used by `/health` to report MongoDB (the ingest's read endpoints depend on it).
    pub mongo: mongodb::Client,
    /// The read API's queries.
    pub reader: EventReader,
    /// The analytics counts.
    pub rollups: RollupStore,
    /// The stream's and the group's state, for analytics.
    pub pipeline: Pipeline,
    /// Redis's counters sampled each second (shared by every server thread): the rates.
    pub rates: RateSampler,
    /// Analytics answers computed at once, for the whole process: many open dashboards wait their
    /// turn (or get 503) instead of piling queries onto MongoDB.
    pub analytics_slots: Arc<tokio::sync::Semaphore>,
    /// `TENANT_MAX_TYPES`.
    pub type_cap: crate::limiters::types::TypeCap,
    /// `READ_CONCURRENCY_PER_TENANT`, and the analytics answers' lines per tenant.
    pub read_slots: crate::limiters::reads::ReadSlots,
    /// Subscription polls: their places, and their reads (as many per tenant as the read slots).
    pub poll_slots: crate::limiters::polls::PollSlots,
    /// The tenants' subscriptions.
    pub subscriptions: crate::subscriptions::Subscriptions,
    /// `TENANT_RATE_LIMIT`, `TENANT_LIMITS`.
    pub rate_limiter: crate::limiters::rate::RateLimiter,
    /// Issues and checks the read API's page cursors.
    pub cursors: CursorKeys,
    /// The API keys created at runtime (`/admin/keys`), as this replica last read them.
    pub keys: crate::key_store::KeyStore,
    /// Renders `/metrics`; `None` when no recorder is installed (in-process tests).
    pub prometheus: Option<MetricsHandle>,
    /// Handles recorded into on every accepted request.
    pub metrics: IngestMetrics,
    /// Cancelled when shutdown begins; readiness turns 503 so load balancers stop sending.
    pub shutdown: CancellationToken,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }

    /// The state for a server thread: the same configuration, clients and metrics, with a Redis
    /// publisher on the calling thread's runtime ([`StreamPublisher::on_this_runtime`]).
    pub fn on_this_runtime(&self) -> Result<Self, redis::RedisError> {
        Ok(Self::new(Shared {
            config: self.config.clone(),
            publisher: self.publisher.on_this_runtime()?,
            mongo: self.mongo.clone(),
            reader: self.reader.clone(),
            rollups: self.rollups.clone(),
            pipeline: self.pipeline.on_this_runtime(self.config.redis_timeout)?,
            rates: self.rates.clone(),
            analytics_slots: self.analytics_slots.clone(),
            cursors: self.cursors.clone(),
            keys: self.keys.clone(),
            type_cap: self.type_cap.clone(),
            rate_limiter: self.rate_limiter.clone(),
            read_slots: self.read_slots.clone(),
            poll_slots: self.poll_slots.clone(),
            subscriptions: self.subscriptions.clone(),
            prometheus: self.prometheus.clone(),
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
        }))
    }
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}
