//! The report: printed for people, written as JSON for scripts.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::driver::Outcome;
use crate::verify::Verification;

#[derive(Debug, Serialize)]
pub struct Report {
    pub run_id: String,
    pub url: String,
    pub events_per_request: u64,
    pub concurrency: usize,
    /// Target events/s; 0 = as fast as possible.
    pub target_rate: f64,
    pub sent: u64,
    pub accepted: u64,
    /// Refused events by HTTP status.
    pub rejected: BTreeMap<u16, u64>,
    /// Events whose request got no HTTP answer.
    pub errors: u64,
    pub duration_s: f64,
    /// Accepted events per second.
    pub events_per_s: f64,
    pub requests_per_s: f64,
    pub latency_ms: Latency,
    pub verify: Option<Verification>,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Report {
    pub fn new(
        run_id: &str,
        url: &str,
        events_per_request: u64,
        concurrency: usize,
        target_rate: f64,
        outcome: &Outcome,
    ) -> Self {
        let secs = outcome.elapsed.as_secs_f64().max(1e-9);
        let ms = |q: f64| outcome.latency_us.value_at_quantile(q) as f64 / 1000.0;
        Self {
            run_id: run_id.to_string(),
            url: url.to_string(),
            events_per_request,
            concurrency,
            target_rate,
            sent: outcome.sent,
            accepted: outcome.accepted,
            rejected: outcome.rejected.clone(),
            errors: outcome.errors,
            duration_s: secs,
            events_per_s: outcome.accepted as f64 / secs,
            requests_per_s: outcome.latency_us.len() as f64 / secs,
            latency_ms: Latency {
                p50: ms(0.50),
                p95: ms(0.95),
                p99: ms(0.99),
                max: outcome.latency_us.max() as f64 / 1000.0,
            },
            verify: None,
        }
    }

    pub fn print(&self) {
        let refused: u64 = self.rejected.values().sum::<u64>() + self.errors;
        println!("run {}  ->  {}", self.run_id, self.url);
        println!(
            "  sent {}   accepted {}   rejected {}{}",
            self.sent,
            self.accepted,
            refused,
            if refused > 0 {
                format!("  (by status: {:?}, no answer: {})", self.rejected, self.errors)
            } else {
                String::new()
            }
        );
        println!(
            "  {:.0} events/s ({:.0} requests/s, {} per request, concurrency {}) over {:.2}s",
            self.events_per_s,
            self.requests_per_s,
            self.events_per_request,
            self.concurrency,
            self.duration_s
        );
        println!(
            "  latency ms  p50 {:.2}   p95 {:.2}   p99 {:.2}   max {:.2}",
            self.latency_ms.p50, self.latency_ms.p95, self.latency_ms.p99, self.latency_ms.max
        );
        if let Some(v) = &self.verify {
            println!(
                "  verify: {} stored of {} accepted; missing {}, duplicates {}, unexpected {}{}",
                v.stored,
                v.expected,
                v.missing,
                v.duplicates,
                v.unexpected,
                if v.complete { "" } else { "  (gave up waiting)" }
            );
            println!(
                "  stored {:.0} events/s end to end (first request to last event stored, seen by {}); \
                 last event stored {:.2}s after the last response",
                v.processing_events_per_s, v.seen_by, v.lag_s
            );
            match v.drain_events_per_s {
                Some(rate) => {
                    println!("  the consumer group drained the backlog left at the end at {rate:.0} events/s")
                }
                None => println!(
                    "  drain rate: n/a (no backlog left when sending ended, or the group was not watched)"
                ),
            }
            if !v.missing_examples.is_empty() {
                println!("  missing, for example: {}", v.missing_examples.join(", "));
            }
            println!("  {}", if v.ok() { "OK: every accepted event stored exactly once" } else { "FAIL" });
        }
    }
}
