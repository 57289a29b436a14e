//! The worker's HTTP listener (`WORKER_PORT`): liveness, readiness and Prometheus metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};

use crate::bulk_writer::EventStore;
use crate::stream::StreamClient;

#[derive(Clone, Debug)]
pub struct HealthState {
    pub stream: StreamClient,
    pub store: EventStore,
    pub metrics: Option<PrometheusHandle>,
    /// Set once indexes exist and the group is there: the worker is consuming.
    pub started: Arc<AtomicBool>,
}

/// Liveness: the process is up.
pub const LIVE_PATH: &str = "/health/live";
/// Readiness: Redis and MongoDB answer and the worker is consuming (also served at `/health`).
pub const READY_PATH: &str = "/health/ready";
pub const HEALTH_PATH: &str = "/health";
pub const METRICS_PATH: &str = "/metrics";
/// Every path the listener serves.
pub const PATHS: [&str; 4] = [LIVE_PATH, READY_PATH, HEALTH_PATH, METRICS_PATH];

pub fn router(state: HealthState) -> Router {
    Router::new()
        .route(LIVE_PATH, get(|| async { Json(json!({"status": "ok"})) }))
        .route(READY_PATH, get(ready))
        .route(HEALTH_PATH, get(ready))
        .route(METRICS_PATH, get(metrics))
        .with_state(state)
}

/// 200 when Redis and MongoDB answer and the worker is consuming; 503 otherwise.
async fn ready(State(state): State<HealthState>) -> (StatusCode, Json<Value>) {
    let timeout = Duration::from_secs(2);
    let (redis, mongodb) = tokio::join!(
        tokio::time::timeout(timeout, state.stream.ping()),
        tokio::time::timeout(timeout, state.store.ping())
    );
    let redis_up = matches!(redis, Ok(Ok(())));
    let mongodb_up = matches!(mongodb, Ok(Ok(())));
    let started = state.started.load(Ordering::Relaxed);
    let ok = redis_up && mongodb_up && started;
    let word = |up: bool| if up { "up" } else { "down" };
    let body = json!({
        "status": if ok { "ok" } else { "unavailable" },
        "consuming": started,
        "dependencies": {"redis": {"status": word(redis_up)}, "mongodb": {"status": word(mongodb_up)}},
    });
    (if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}

async fn metrics(State(state): State<HealthState>) -> Response {
    let body = state.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
