//! Metric names of `evp-ingest`, in one place (Prometheus conventions: `_total` counters, base
//! units, low-cardinality labels), the handles the request path records into, and the middleware
//! that counts HTTP requests.
//!
//! Looking a metric up by name and labels costs a label allocation, a hash and a registry lock;
//! at tens of thousands of requests a second that is several per cent of the ingest's CPU. So the
//! request path records into handles looked up once: [`IngestMetrics`] for the unlabelled
//! metrics, and a small per-route cache in [`RequestMetrics`]. Handles must be taken after the
//! recorder is installed (handles taken before it record nowhere).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::extract::MatchedPath;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode};
use metrics::{Counter, Histogram};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::Level;

/// The request-id header: set by the router's outermost layer when the client sent none, echoed
/// on the response, and on every log line of the request.
pub const REQUEST_ID: &str = "x-request-id";

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
/// Histogram: latency of one XADD pipeline (a batch request, or the single events coalesced into
/// one round trip).
pub const XADD_SECONDS: &str = "evp_ingest_redis_xadd_duration_seconds";
/// Histogram: events per XADD pipeline; above 1 for single events means requests shared a round
/// trip.
pub const PIPELINE_EVENTS: &str = "evp_ingest_redis_pipeline_events";
/// Histogram: events per accepted request.
pub const BATCH_EVENTS: &str = "evp_ingest_request_events";
/// Gauge: last sampled stream length.
pub const STREAM_BACKLOG: &str = "evp_ingest_stream_backlog";
/// Gauge, label `tenant`: the tenant's events appended and not yet stored, over every partition
/// (sampled with the backlog; `TENANT_BACKLOG_SHARE` caps it).
pub const TENANT_BACKLOG: &str = "evp_ingest_tenant_backlog";
/// Counters, labels `tenant`, `subscription`: a subscription's events handed out by polls, those
/// handed out again after a missed deadline, acknowledged, and handed back (nack).
pub const SUBSCRIPTION_DELIVERED: &str = "evp_ingest_subscription_delivered_total";
pub const SUBSCRIPTION_REDELIVERED: &str = "evp_ingest_subscription_redelivered_total";
pub const SUBSCRIPTION_ACKNOWLEDGED: &str = "evp_ingest_subscription_acknowledged_total";
pub const SUBSCRIPTION_NACKED: &str = "evp_ingest_subscription_nacked_total";
/// Gauge, labels `tenant`, `subscription`: the subscription's lag in seconds, as last computed (by
/// `GET /subscriptions*` and every 10 s by each replica).
pub const SUBSCRIPTION_LAG: &str = "evp_ingest_subscription_lag_seconds";
/// What the five metrics above start with. Their `subscription` label is a name tenants choose and
/// delete, so they live in the registry that forgets ([`evp_runtime::metrics`]): each replica
/// refreshes every existing subscription's series every 10 s
/// ([`crate::subscriptions::Subscriptions::spawn_lag_gauges`]), and a deleted subscription's
/// leave `/metrics` [`SUBSCRIPTION_FORGET_AFTER`] after its last refresh.
pub const SUBSCRIPTION_PREFIX: &str = "evp_ingest_subscription_";
/// How long a subscription's series stay without a refresh: six rounds of the 10 s refresh, so
/// a round or two lost to a slow MongoDB does not reset a live subscription's counters.
pub const SUBSCRIPTION_FORGET_AFTER: Duration = Duration::from_secs(60);

/// Counter: connections closed at once because `MAX_CONNECTIONS` were open.
pub const CONNECTIONS_REFUSED: &str = "evp_ingest_connections_refused_total";

/// Handles of the unlabelled metrics recorded on every accepted request.
#[derive(Debug, Clone)]
pub struct IngestMetrics {
    pub events_accepted: Counter,
    pub request_events: Histogram,
}

impl IngestMetrics {
    /// Registers the handles with the installed recorder.
    pub fn register() -> Self {
        Self {
            events_accepted: metrics::counter!(EVENTS_ACCEPTED),
            request_events: metrics::histogram!(BATCH_EVENTS),
        }
    }
}

/// Route label of requests no route matched: unknown paths share it, so a scanner cannot blow
/// up the number of series.
const UNMATCHED: &str = "unmatched";

/// Per-route handles for [`TrackRequests`], created on a route's first request.
#[derive(Debug, Default)]
pub struct RequestMetrics {
    routes: RwLock<HashMap<String, Arc<RouteMetrics>>>,
}

#[derive(Debug)]
struct RouteMetrics {
    route: String,
    duration: Histogram,
    /// By method and status: a route sees a handful of combinations, so a scan beats a hash.
    requests: RwLock<Vec<(Method, StatusCode, Counter)>>,
}

impl RequestMetrics {
    fn route(&self, route: &str) -> Arc<RouteMetrics> {
        if let Some(found) = self.routes.read().unwrap_or_else(|e| e.into_inner()).get(route) {
            return found.clone();
        }
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        routes
            .entry(route.to_owned())
            .or_insert_with(|| {
                Arc::new(RouteMetrics {
                    route: route.to_owned(),
                    duration: metrics::histogram!(HTTP_SECONDS, "route" => route.to_owned()),
                    requests: RwLock::default(),
                })
            })
            .clone()
    }
}

impl RouteMetrics {
    fn requests(&self, method: &Method, status: StatusCode) -> Counter {
        let found = |list: &[(Method, StatusCode, Counter)]| {
            list.iter().find(|(m, s, _)| m == method && *s == status).map(|(_, _, c)| c.clone())
        };
        if let Some(counter) = found(&self.requests.read().unwrap_or_else(|e| e.into_inner())) {
            return counter;
        }
        let mut list = self.requests.write().unwrap_or_else(|e| e.into_inner());
        if let Some(counter) = found(&list) {
            return counter;
        }
        let counter = metrics::counter!(HTTP_REQUESTS, "route" => self.route.clone(),
            "method" => method.as_str().to_owned(), "status" => status.as_str().to_owned());
        list.push((method.clone(), status, counter.clone()));
        counter
    }
}

/// The internal cause of a failed response, for [`TrackRequests`] to log: responses carry
/// only a public message, the log line carries what went wrong.
#[derive(Debug, Clone)]
pub struct FailureCause(pub String);

/// Counts and times every request by matched route (not raw path: unknown paths share one label),
/// and logs it: server errors at `warn` (503) or `error` (other 5xx), with their internal cause;
/// every response at `debug`. Each line carries the request's `request_id`, method, route, status
/// and latency, so this is the one place a request is logged (no per-request span: creating,
/// entering and closing one cost about a tenth of the ingest's throughput on single events).
///
/// Applied per route (it needs the matched route). A plain tower layer rather than
/// `axum::middleware::from_fn`: that boxes the middleware's future and clones the inner service
/// into a boxed `Next` on every request.
#[derive(Debug, Clone, Default)]
pub struct TrackRequestsLayer {
    cache: Arc<RequestMetrics>,
}

impl<S> Layer<S> for TrackRequestsLayer {
    type Service = TrackRequests<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TrackRequests { inner, cache: self.cache.clone() }
    }
}

/// The service of [`TrackRequestsLayer`].
#[derive(Debug, Clone)]
pub struct TrackRequests<S> {
    inner: S,
    cache: Arc<RequestMetrics>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for TrackRequests<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Tracked<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let route = self.cache.route(req.extensions().get::<MatchedPath>().map_or(UNMATCHED, |p| p.as_str()));
        let method = req.method().clone();
        let request_id = req.headers().get(REQUEST_ID).cloned();
        Tracked { inner: self.inner.call(req), route, method, request_id, started: Instant::now() }
    }
}

pin_project! {
    /// The response future of [`TrackRequests`]: records and logs once the response is ready.
    #[derive(Debug)]
    pub struct Tracked<F> {
        #[pin]
        inner: F,
        route: Arc<RouteMetrics>,
        method: Method,
        request_id: Option<HeaderValue>,
        started: Instant,
    }
}

impl<F, B, E> Future for Tracked<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let elapsed = this.started.elapsed();
        let status = response.status();
        this.route.requests(this.method, status).increment(1);
        this.route.duration.record(elapsed.as_secs_f64());
        if status.is_server_error() || tracing::enabled!(Level::DEBUG) {
            log_response(&this.route.route, this.method, this.request_id.as_ref(), &response, elapsed);
        }
        Poll::Ready(Ok(response))
    }
}

fn log_response<B>(
    route: &str,
    method: &Method,
    request_id: Option<&HeaderValue>,
    response: &Response<B>,
    elapsed: Duration,
) {
    let request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or("");
    let status = response.status().as_u16();
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    let cause = response.extensions().get::<FailureCause>().map(|c| c.0.as_str());
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        tracing::warn!(request_id, %method, route, status, latency_ms, error = cause, "request refused: service unavailable");
    } else if response.status().is_server_error() {
        tracing::error!(request_id, %method, route, status, latency_ms, error = cause, "request failed");
    } else {
        tracing::debug!(request_id, %method, route, status, latency_ms, "request finished");
    }
}
