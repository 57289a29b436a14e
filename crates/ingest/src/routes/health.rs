//! `/health`, `/health/live`, `/health/ready` and `/metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use evp_runtime::connect::mongo_ping;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::state::AppState;

/// The health report: every dependency's status (evp_runtime's shape, shared with the worker).
pub use evp_runtime::health::{Dependencies, DependencyStatus, HealthReport};

/// A one-word status.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub struct Status {
    pub status: String,
}

/// Status of every dependency; 503 when one is down.
#[utoipa::path(get, path = "/health", tag = "health", responses(
    (status = 200, description = "Every dependency is up", body = HealthReport),
    (status = 503, description = "A dependency is down", body = HealthReport)))]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<HealthReport>) {
    let (status, Json(mut report)) =
        evp_runtime::health::report(state.publisher.ping(), mongo_ping(&state.mongo), None).await;
    report.keys_stale = Some(state.keys.is_stale());
    (status, Json(report))
}

/// Liveness: the process is serving.
#[utoipa::path(get, path = "/health/live", tag = "health",
    responses((status = 200, description = "Alive", body = Status)))]
pub async fn live() -> Json<Status> {
    Json(Status { status: "ok".into() })
}

/// Readiness: Redis is reachable and the service is not shutting down.
#[utoipa::path(get, path = "/health/ready", tag = "health", responses(
    (status = 200, description = "Ready to accept events", body = Status),
    (status = 503, description = "Redis unreachable, or shutting down", body = Status)))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Status>) {
    let not_ready = |why: &str| (StatusCode::SERVICE_UNAVAILABLE, Json(Status { status: why.into() }));
    if state.shutdown.is_cancelled() {
        return not_ready("shutting_down");
    }
    match state.publisher.ping().await {
        Ok(()) => (StatusCode::OK, Json(Status { status: "ok".into() })),
        Err(_) => not_ready("redis_unreachable"),
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    evp_runtime::health::metrics_response(state.prometheus.as_ref())
}
