//! The one health report every evp program serves, the dependency checks behind it, and the
//! `/metrics` response.
//!
//! `/health` (and the worker's `/health/ready`) answer [`HealthReport`]: `status` is `ok` when
//! every dependency is up (200), else `unavailable` (503); each dependency says `up` or `down`,
//! with the check's latency or its error.

use std::time::{Duration, Instant};

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::metrics::Handle;

/// Longest a dependency check may take before the dependency counts as down.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The status of each dependency.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({"status": "ok", "dependencies": {
    "redis": {"status": "up", "latency_ms": 0}, "mongodb": {"status": "up", "latency_ms": 1}}})))]
pub struct HealthReport {
    /// `ok` when every dependency is up, else `unavailable`.
    pub status: String,
    pub dependencies: Dependencies,
    /// Workers only: whether the worker has created its indexes and group and is consuming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consuming: Option<bool>,
    /// Workers only: the rollup job. While its lag exceeds `ROLLUP_MAX_LAG_S` or it keeps
    /// failing, `status` is `degraded` (still 200: a lagging job is no reason to restart a worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollup: Option<RollupHealth>,
    /// Ingest only: true while the API keys made at runtime cannot be reloaded (MongoDB), so the
    /// last ones read are served: a key created or revoked meanwhile is not yet followed here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_stale: Option<bool>,
}

/// The rollup job as one worker sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RollupHealth {
    /// Whether this worker holds the rollup lease and runs the job.
    pub leader: bool,
    /// Seconds of stream time the rollups trail the acknowledged events (the leader only).
    pub rollup_lag_seconds: Option<f64>,
    /// The job's last error, cleared by a good round.
    pub last_error: Option<String>,
    /// Lag past `ROLLUP_MAX_LAG_S`, or failing rounds in a row.
    pub degraded: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Dependencies {
    pub redis: DependencyStatus,
    pub mongodb: DependencyStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DependencyStatus {
    /// `up` or `down`.
    pub status: String,
    /// Round trip of the check, when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Why the check failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl DependencyStatus {
    pub fn is_up(&self) -> bool {
        self.status == "up"
    }
}

/// Runs one check, bounded by [`CHECK_TIMEOUT`].
pub async fn check<E: std::fmt::Display>(call: impl Future<Output = Result<(), E>>) -> DependencyStatus {
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

/// Checks Redis and MongoDB at once and answers 200 with `ok` when both are up (and, for a
/// worker, it is consuming), else 503 with `unavailable`.
pub async fn report<R, M, RE, ME>(
    redis: R,
    mongodb: M,
    consuming: Option<bool>,
) -> (StatusCode, Json<HealthReport>)
where
    R: Future<Output = Result<(), RE>>,
    M: Future<Output = Result<(), ME>>,
    RE: std::fmt::Display,
    ME: std::fmt::Display,
{
    let (redis, mongodb) = tokio::join!(check(redis), check(mongodb));
    let ok = redis.is_up() && mongodb.is_up() && consuming != Some(false);
    let report = HealthReport {
        status: if ok { "ok" } else { "unavailable" }.into(),
        dependencies: Dependencies { redis, mongodb },
        consuming,
        rollup: None,
        keys_stale: None,
    };
    (if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(report))
}

/// `/metrics`: the Prometheus text format (empty when no recorder is installed, as in tests).
pub fn metrics_response(handle: Option<&Handle>) -> Response {
    let body = handle.map(Handle::render).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
