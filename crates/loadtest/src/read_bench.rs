//! Read-side timings. [`run`]: the read API's cost by depth: the first page of `GET /events` against a page deep in the
//! result (after `depth` pages), each requested `samples` times, p50 and p99. Keyset pages cost
//! the same wherever they are; an offset would grow with the depth. [`analytics`]: the answer time
//! of `GET /analytics/metrics`, which should not grow with the number of events stored.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

/// p50 and p99 of one page, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct PageLatency {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReadReport {
    /// Extra query parameters (a filter), as given.
    pub query: String,
    pub limit: usize,
    pub first: PageLatency,
    /// Which page the deep one is (1-based).
    pub deep_page: usize,
    pub deep: PageLatency,
    /// Seconds spent walking down to the deep page.
    pub walk_s: f64,
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

async fn get(client: &HttpClient, url: &str, key: &str) -> anyhow::Result<(Duration, serde_json::Value)> {
    let request = Request::get(url).header("x-api-key", key).body(Empty::new())?;
    let started = Instant::now();
    let response = client.request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let took = started.elapsed();
    anyhow::ensure!(status.is_success(), "{url}: {status} {}", String::from_utf8_lossy(&body));
    Ok((took, serde_json::from_slice(&body)?))
}

async fn latency(client: &HttpClient, url: &str, key: &str, samples: usize) -> anyhow::Result<PageLatency> {
    let mut histogram = Histogram::<u64>::new(3)?;
    for _ in 0..samples {
        let (took, _) = get(client, url, key).await?;
        histogram.record(took.as_micros() as u64)?;
    }
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(PageLatency { p50_ms: ms(0.50), p99_ms: ms(0.99) })
}

/// What to measure: pages of `limit`, the first against page `depth + 1`, `samples` times each;
/// the walk down to the deep page in pages of `walk_limit` (up to 1,000).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub limit: usize,
    pub depth: usize,
    pub samples: usize,
    pub walk_limit: usize,
}

/// Measures the first page and page `depth + 1` of `GET {base}/events?limit={limit}{query}`.
pub async fn run(base: &str, key: &str, query: &str, shape: Shape) -> anyhow::Result<ReadReport> {
    let Shape { limit, depth, samples, walk_limit } = shape;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let first_url = format!("{base}/events?limit={limit}{query}");
    let first = latency(&client, &first_url, key, samples).await?;

    // Down to the deep page in pages of `walk_limit` (a cursor is bound to the filters, not to the
    // page size): the same position as `depth` pages of `limit`, in fewer requests.
    let started = Instant::now();
    let mut remaining = depth * limit;
    let mut cursor: Option<String> = None;
    while remaining > 0 {
        let size = remaining.min(walk_limit.clamp(1, 1000));
        let mut url = format!("{base}/events?limit={size}{query}");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let (_, body) = get(&client, &url, key).await?;
        let next = body["next_cursor"].as_str().ok_or_else(|| {
            anyhow::anyhow!("the result ends before page {}; store more events or go less deep", depth + 1)
        })?;
        cursor = Some(next.to_string());
        remaining -= size;
    }
    let url = match &cursor {
        Some(cursor) => format!("{first_url}&cursor={cursor}"),
        None => first_url.clone(),
    };
    let walk_s = started.elapsed().as_secs_f64();
    let deep = latency(&client, &url, key, samples).await?;
    Ok(ReadReport { query: query.to_string(), limit, first, deep_page: depth + 1, deep, walk_s })
}

#[derive(Debug, Clone, Serialize)]
pub struct AnalyticsReport {
    pub query: String,
    pub latency: PageLatency,
    /// `total` of the last answer.
    pub total: i64,
}

/// Times `GET {base}/analytics/metrics?{query}`, `samples` times.
pub async fn analytics(
    base: &str,
    key: &str,
    query: &str,
    samples: usize,
) -> anyhow::Result<AnalyticsReport> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("{base}/analytics/metrics?{query}");
    let latency = latency(&client, &url, key, samples).await?;
    let (_, body) = get(&client, &url, key).await?;
    Ok(AnalyticsReport { query: query.to_string(), latency, total: body["total"].as_i64().unwrap_or(-1) })
}
