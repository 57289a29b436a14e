//! `evp-loadtest subscribe`: consumers of one subscription (evp-client's `Subscriber`) run until
//! they have acknowledged `--events` events (or `--duration` passed), and the figures: events/s
//! delivered and acknowledged, and the time from the ingest's receiving each event (its
//! `received_at`, just before the 202) to its delivery, p50 and p99.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evp_client::{Client, Delivered, Start, Subscriber, SubscriberConfig};
use hdrhistogram::Histogram;
use serde::Serialize;

/// What one subscribe run measured.
#[derive(Debug, Serialize)]
pub struct SubscribeReport {
    pub subscription: String,
    pub consumers: usize,
    pub events: u64,
    pub seconds: f64,
    pub events_per_s: f64,
    /// From `received_at` to delivery, ms.
    pub delivery_p50_ms: f64,
    pub delivery_p99_ms: f64,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub types: Vec<String>,
    pub consumers: usize,
    pub events: Option<u64>,
    pub duration: Option<Duration>,
    pub start_now: bool,
    pub batch: u32,
}

fn ms_of(rfc3339: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

pub async fn run(url: &str, key: &str, plan: &Plan) -> anyhow::Result<SubscribeReport> {
    let acked = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 3_600_000, 3)?));
    let started = Instant::now();
    let mut runs = Vec::new();
    let mut stops = Vec::new();
    for i in 0..plan.consumers {
        let mut config = SubscriberConfig::new(format!("bench-{i}"));
        config.types = plan.types.clone();
        config.start = if plan.start_now { Start::Now } else { Start::Beginning };
        config.batch = plan.batch;
        config.wait = Duration::from_secs(1);
        let subscriber = Subscriber::new(Client::new(url, key)?, &plan.name, config);
        stops.push(subscriber.stop_handle());
        let (acked, latencies) = (acked.clone(), latencies.clone());
        runs.push(tokio::spawn(async move {
            subscriber
                .run(|batch: Vec<Delivered>| {
                    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
                    {
                        let mut h = latencies.lock().expect("latencies");
                        for event in &batch {
                            if let Some(received) = ms_of(&event.received_at) {
                                let _ = h.record(u64::try_from(now as i64 - received).unwrap_or(0).max(1));
                            }
                        }
                    }
                    acked.fetch_add(batch.len() as u64, Ordering::SeqCst);
                    std::future::ready(Ok::<(), String>(()))
                })
                .await
        }));
    }
    let deadline = plan.duration.map(|d| started + d);
    loop {
        let done = plan.events.is_some_and(|n| acked.load(Ordering::SeqCst) >= n)
            || deadline.is_some_and(|d| Instant::now() >= d);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    for stop in &stops {
        stop.stop();
    }
    for run in runs {
        run.await??;
    }
    let events = acked.load(Ordering::SeqCst);
    let h = latencies.lock().expect("latencies");
    Ok(SubscribeReport {
        subscription: plan.name.clone(),
        consumers: plan.consumers,
        events,
        seconds,
        events_per_s: events as f64 / seconds,
        delivery_p50_ms: h.value_at_quantile(0.5) as f64,
        delivery_p99_ms: h.value_at_quantile(0.99) as f64,
    })
}
