//! The sender: `concurrency` tasks take request numbers from a shared counter; with a target rate,
//! request `i` is not sent before `start + i × batch / rate`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::generator::Generator;

/// How the run is driven.
#[derive(Debug, Clone)]
pub struct Plan {
    pub url: String,
    pub key: String,
    pub generator: Generator,
    /// Events per second; 0 means as fast as the server answers.
    pub rate: f64,
    pub concurrency: usize,
    /// Stop after this long (when the run is bounded by time).
    pub duration: Option<Duration>,
    /// Print a progress line every second.
    pub progress: bool,
}

/// What the sender saw.
#[derive(Debug)]
pub struct Outcome {
    pub sent: u64,
    pub accepted: u64,
    /// Events refused, by HTTP status.
    pub rejected: BTreeMap<u16, u64>,
    /// Events whose request failed without an HTTP answer.
    pub errors: u64,
    /// Request numbers answered with 202.
    pub accepted_requests: Vec<u64>,
    pub started: Instant,
    pub elapsed: Duration,
    /// Request latencies in microseconds.
    pub latency_us: Histogram<u64>,
}

/// A request not answered within this long counts as failed.
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
}

pub async fn run(plan: Plan) -> anyhow::Result<Outcome> {
    // hyper's own pooled client rather than reqwest: the load generator shares the machine with
    // what it measures, and reqwest's per-request work (URL handling, redirect and retry layers)
    // cost more CPU per single-event request than the ingest spends answering it.
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(plan.concurrency).build_http();
    let path = if plan.generator.batch > 1 { "events/batch" } else { "events" };
    let url: Uri = format!("{}/{path}", plan.url.trim_end_matches('/')).parse()?;
    anyhow::ensure!(
        url.scheme_str() == Some("http"),
        "--url must be an http:// URL (evp-loadtest speaks plain HTTP; put it next to the ingest or behind \
         a TLS-terminating proxy), got {}",
        plan.url
    );
    let key = HeaderValue::from_str(&plan.key)?;
    let next = Arc::new(AtomicU64::new(0));
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let deadline = plan.duration.map(|d| started + d);
    let total_requests = plan.generator.requests().unwrap_or(u64::MAX);

    let progress = plan.progress.then(|| {
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut last = 0;
            loop {
                tick.tick().await;
                let accepted = counters.accepted.load(Ordering::Relaxed);
                eprintln!(
                    "[{:>4.0}s] sent {:>9}  accepted {:>9}  refused {:>7}  {:>8} events/s",
                    started.elapsed().as_secs_f64(),
                    counters.sent.load(Ordering::Relaxed),
                    accepted,
                    counters.refused.load(Ordering::Relaxed),
                    accepted - last
                );
                last = accepted;
            }
        })
    });

    let mut tasks = Vec::with_capacity(plan.concurrency);
    for _ in 0..plan.concurrency {
        let (client, url, key, plan, next, counters) =
            (client.clone(), url.clone(), key.clone(), plan.clone(), next.clone(), counters.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut accepted_requests = Vec::new();
            let mut rejected: BTreeMap<u16, u64> = BTreeMap::new();
            let mut errors = 0;
            loop {
                let request = next.fetch_add(1, Ordering::Relaxed);
                if request >= total_requests || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                if plan.rate > 0.0 {
                    let due = started
                        + Duration::from_secs_f64(request as f64 * plan.generator.batch as f64 / plan.rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let events = plan.generator.events_of(request).count() as u64;
                let body = plan.generator.body(request);
                counters.sent.fetch_add(events, Ordering::Relaxed);
                let t0 = Instant::now();
                let mut request_builder = Request::post(url.clone());
                if let Some(headers) = request_builder.headers_mut() {
                    headers.insert("x-api-key", key.clone());
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                }
                let response = match request_builder.body(Full::new(Bytes::from(body))) {
                    Ok(request) => tokio::time::timeout(TIMEOUT, async {
                        let response = client.request(request).await?;
                        let status = response.status().as_u16();
                        response.into_body().collect().await?;
                        anyhow::Ok(status)
                    })
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|answered| answered),
                    Err(e) => Err(e.into()),
                };
                match response {
                    Ok(status) => {
                        let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                        if status == 202 {
                            counters.accepted.fetch_add(events, Ordering::Relaxed);
                            accepted_requests.push(request);
                        } else {
                            counters.refused.fetch_add(events, Ordering::Relaxed);
                            *rejected.entry(status).or_default() += events;
                        }
                    }
                    Err(_) => {
                        counters.refused.fetch_add(events, Ordering::Relaxed);
                        errors += events;
                    }
                }
            }
            (hist, accepted_requests, rejected, errors)
        }));
    }

    let mut outcome = Outcome {
        sent: 0,
        accepted: 0,
        rejected: BTreeMap::new(),
        errors: 0,
        accepted_requests: Vec::new(),
        started,
        elapsed: Duration::ZERO,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    };
    for task in tasks {
        let (hist, accepted, rejected, errors) = task.await?;
        outcome.latency_us.add(&hist)?;
        outcome.accepted_requests.extend(accepted);
        for (status, n) in rejected {
            *outcome.rejected.entry(status).or_default() += n;
        }
        outcome.errors += errors;
    }
    outcome.elapsed = started.elapsed();
    if let Some(progress) = progress {
        progress.abort();
    }
    outcome.sent = counters.sent.load(Ordering::Relaxed);
    outcome.accepted = counters.accepted.load(Ordering::Relaxed);
    outcome.accepted_requests.sort_unstable();
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_https_url_is_refused_before_anything_is_sent() {
        let plan = Plan {
            url: "https://ingest.example.com".into(),
            key: "k".into(),
            generator: Generator::new("r", 1, Some(1), 0),
            rate: 0.0,
            concurrency: 1,
            duration: None,
            progress: false,
        };
        let err = run(plan).await.unwrap_err().to_string();
        assert!(err.contains("must be an http:// URL"), "{err}");
    }
}
