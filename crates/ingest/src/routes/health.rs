//! `/health`, `/health/live`, `/health/ready` and `/metrics`.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::state::AppState;

/// Longest a dependency check may take before the dependency counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The status of each dependency.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"status": "ok", "dependencies": {
    "redis": {"status": "up", "latency_ms": 0}, "mongodb": {"status": "up", "latency_ms": 1}}}))]
pub struct HealthReport {
    /// `ok` when every dependency is up, else `unavailable`.
    pub status: String,
    pub dependencies: Dependencies,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Dependencies {
    pub redis: DependencyStatus,
    pub mongodb: DependencyStatus,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DependencyStatus {
    /// `up` or `down`.
    pub status: String,
    /// Round trip of the check, when it succeeded.
    pub latency_ms: Option<u64>,
    /// Why the check failed.
    pub error: Option<String>,
}

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
    let redis = check(state.publisher.ping());
    let mongodb = check(async {
        state.mongo.database("admin").run_command(mongodb::bson::doc! { "ping": 1 }).await.map(|_| ())
    });
    let (redis, mongodb) = tokio::join!(redis, mongodb);
    let all_up = redis.status == "up" && mongodb.status == "up";
    let status = if all_up { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let report = HealthReport {
        status: if all_up { "ok" } else { "unavailable" }.into(),
        dependencies: Dependencies { redis, mongodb },
    };
    (status, Json(report))
}

async fn check<E: std::fmt::Display>(call: impl Future<Output = Result<(), E>>) -> DependencyStatus {
    let started = Instant::now();
    let error = match tokio::time::timeout(CHECK_TIMEOUT, call).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {CHECK_TIMEOUT:?}")),
    };
    DependencyStatus {
        status: if error.is_none() { "up" } else { "down" }.into(),
        latency_ms: error.is_none().then(|| started.elapsed().as_millis() as u64),
        error,
    }
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
    let body = state.prometheus.as_ref().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
