//! The state every handler sees.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::ApiKeys;
use crate::config::IngestConfig;
use crate::stream_publisher::StreamPublisher;

/// Cheap to clone: everything shared is behind an `Arc` or is a handle.
#[derive(Clone, Debug)]
pub struct AppState {
    pub config: Arc<IngestConfig>,
    pub api_keys: Arc<ApiKeys>,
    pub publisher: StreamPublisher,
    /// Used by `/health` to report MongoDB (the ingest's read endpoints depend on it).
    pub mongo: mongodb::Client,
    /// Renders `/metrics`; `None` when no recorder is installed (in-process tests).
    pub metrics: Option<PrometheusHandle>,
    /// Cancelled when shutdown begins; readiness turns 503 so load balancers stop sending.
    pub shutdown: CancellationToken,
}
