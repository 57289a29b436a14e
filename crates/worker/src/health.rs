//! The worker's HTTP listener (`WORKER_PORT`): liveness, readiness and Prometheus metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use evp_runtime::connect::mongo_ping;
use evp_runtime::health::{self, HealthReport, RollupHealth};
use evp_runtime::metrics::Handle as MetricsHandle;
use serde_json::json;

use crate::rollup_job::SharedStatus;
use crate::stream::StreamClient;
use evp_store::EventStore;

#[derive(Clone, Debug)]
pub struct HealthState {
    pub stream: StreamClient,
    pub store: EventStore,
    pub metrics: Option<MetricsHandle>,
    /// Set once indexes exist and the group is there: the worker is consuming.
    pub started: Arc<AtomicBool>,
    /// The rollup job's state, and the lag past which it is degraded.
    pub rollup: SharedStatus,
    pub rollup_max_lag: Duration,
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

/// 200 when Redis and MongoDB answer and the worker is consuming (`status` `degraded` while the
/// rollup job lags or fails); 503 otherwise.
async fn ready(State(state): State<HealthState>) -> (StatusCode, Json<HealthReport>) {
    let started = state.started.load(Ordering::Relaxed);
    let (code, Json(mut report)) =
        health::report(state.stream.ping(), mongo_ping(state.store.client()), Some(started)).await;
    let job = state.rollup.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let degraded = job.degraded(state.rollup_max_lag);
    if degraded && code == StatusCode::OK {
        report.status = "degraded".into();
    }
    report.rollup = Some(RollupHealth {
        leader: job.leader,
        rollup_lag_seconds: job.rollup_lag_seconds,
        last_error: job.last_error,
        degraded,
    });
    (code, Json(report))
}

async fn metrics(State(state): State<HealthState>) -> Response {
    health::metrics_response(state.metrics.as_ref())
}
