//! Metric names of `evp-ingest`, in one place (Prometheus conventions: `_total` counters, base
//! units, low-cardinality labels), and the middleware that counts HTTP requests.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

/// Counter, labels `route`, `method`, `status`.
pub const HTTP_REQUESTS: &str = "evp_ingest_http_requests_total";
/// Histogram, label `route`.
pub const HTTP_SECONDS: &str = "evp_ingest_http_request_duration_seconds";
/// Counter: events written to the stream.
pub const EVENTS_ACCEPTED: &str = "evp_ingest_events_accepted_total";
/// Counter, label `reason` (the error code): events in refused requests, as far as the body parses.
pub const EVENTS_REJECTED: &str = "evp_ingest_events_rejected_total";
/// Counter, label `reason` (the error code): requests to the event endpoints that were refused;
/// nothing of a refused request is enqueued.
pub const REQUESTS_REJECTED: &str = "evp_ingest_requests_rejected_total";
/// Histogram: latency of one XADD pipeline (one request).
pub const XADD_SECONDS: &str = "evp_ingest_redis_xadd_duration_seconds";
/// Histogram: events per accepted request.
pub const BATCH_EVENTS: &str = "evp_ingest_request_events";
/// Gauge: last sampled stream length.
pub const STREAM_BACKLOG: &str = "evp_ingest_stream_backlog";

/// Counts every request by matched route (not raw path: unknown paths share one label).
pub async fn track_requests(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS, "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!(HTTP_SECONDS, "route" => route).record(started.elapsed().as_secs_f64());
    response
}
