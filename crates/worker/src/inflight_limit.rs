//! The adaptive limit on bulk writes in flight: additive increase, multiplicative decrease.
//!
//! `WORKER_MAX_INFLIGHT` is the ceiling, and the limit starts there. A saturated MongoDB gets no
//! faster from more concurrent writes, only slower for each (and, past its monitoring timeouts,
//! it makes the driver drop connections with writes in flight), so the limit follows what the
//! server absorbs:
//!
//! - a write that fails transiently (an error, a timeout) halves the limit;
//! - a write much slower per document than the fastest recent ones ([`SLOW_FACTOR`] × the
//!   baseline) halves it too, at most once per such write's duration, so one slow spell is one cut;
//! - every other write adds `1 / limit`, so the limit grows by one per round of writes.
//!
//! The limit never goes below 1 nor above the ceiling. It is carried out with the semaphore the
//! reader and the reclaimer take a permit from: growing adds a permit; shrinking records a debt,
//! and the next permits acquired while in debt are forgotten instead of used, so writes already in
//! flight finish undisturbed. `evp_worker_inflight_limit` shows the limit.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics as m;

/// A write this many times slower per document than the baseline counts as congestion.
pub const SLOW_FACTOR: f64 = 3.0;
/// Writes faster than this never count as slow (timer noise, tiny batches).
const SLOW_FLOOR: Duration = Duration::from_millis(50);
/// The baseline (fastest time per document) is forgotten this often, so it follows the server.
const BASELINE_WINDOW: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct InflightLimit {
    semaphore: Arc<Semaphore>,
    max: usize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    limit: usize,
    /// Permits to forget as they come back (the limit was cut while they were in use).
    debt: usize,
    /// Fractions of a permit earned by fast writes.
    credit: f64,
    /// Fastest seconds per document seen since `since`.
    baseline: Option<f64>,
    since: Instant,
    /// No second cut before this instant.
    quiet_until: Instant,
}

impl InflightLimit {
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        metrics::gauge!(m::INFLIGHT_LIMIT).set(max as f64);
        let now = Instant::now();
        Self {
            semaphore: Arc::new(Semaphore::new(max)),
            max,
            state: Mutex::new(State {
                limit: max,
                debt: 0,
                credit: 0.0,
                baseline: None,
                since: now,
                quiet_until: now,
            }),
        }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    /// Waits for a write slot; `None` once the semaphore is closed.
    pub async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        loop {
            let permit = self.semaphore.clone().acquire_owned().await.ok()?;
            let mut state = self.lock();
            if state.debt > 0 {
                state.debt -= 1;
                permit.forget();
                continue;
            }
            return Some(permit);
        }
    }

    /// A write of `docs` documents succeeded in `took`.
    pub fn succeeded(&self, docs: usize, took: Duration) {
        let now = Instant::now();
        let per_doc = took.as_secs_f64() / docs.max(1) as f64;
        let mut state = self.lock();
        if now.duration_since(state.since) > BASELINE_WINDOW {
            state.baseline = None;
            state.since = now;
        }
        let baseline = *state.baseline.get_or_insert(per_doc);
        if per_doc < baseline {
            state.baseline = Some(per_doc);
        }
        if took > SLOW_FLOOR && per_doc > SLOW_FACTOR * baseline {
            if now >= state.quiet_until {
                state.quiet_until = now + took;
                self.cut(&mut state, "writes slowed down");
            }
            return;
        }
        state.credit += 1.0 / state.limit as f64;
        if state.credit >= 1.0 {
            state.credit -= 1.0;
            self.grow(&mut state);
        }
    }

    /// A write failed transiently (an error or a timeout).
    pub fn failed(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        if now >= state.quiet_until {
            state.quiet_until = now + Duration::from_secs(1);
            self.cut(&mut state, "a write failed");
        }
    }

    fn cut(&self, state: &mut State, why: &str) {
        let new = (state.limit / 2).max(1);
        if new < state.limit {
            tracing::debug!(from = state.limit, to = new, why, "lowering the limit on writes in flight");
            state.debt += state.limit - new;
            state.limit = new;
            state.credit = 0.0;
            metrics::gauge!(m::INFLIGHT_LIMIT).set(new as f64);
        }
    }

    fn grow(&self, state: &mut State) {
        if state.limit < self.max {
            state.limit += 1;
            if state.debt > 0 {
                state.debt -= 1;
            } else {
                self.semaphore.add_permits(1);
            }
            metrics::gauge!(m::INFLIGHT_LIMIT).set(state.limit as f64);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Duration = Duration::from_millis(100);

    #[tokio::test]
    async fn failures_halve_down_to_one_and_fast_writes_grow_one_per_round() {
        let limit = InflightLimit::new(8);
        limit.failed();
        assert_eq!(limit.limit(), 4);
        limit.failed();
        assert_eq!(limit.limit(), 4, "one cut per second at most");
        limit.lock().quiet_until = Instant::now();
        limit.failed();
        limit.lock().quiet_until = Instant::now();
        limit.failed();
        limit.lock().quiet_until = Instant::now();
        limit.failed();
        assert_eq!(limit.limit(), 1, "never below one");

        // Additive increase: one more per `limit` fast writes.
        limit.succeeded(100, FAST);
        assert_eq!(limit.limit(), 2);
        limit.succeeded(100, FAST);
        assert_eq!(limit.limit(), 2);
        limit.succeeded(100, FAST);
        assert_eq!(limit.limit(), 3);
        for _ in 0..100 {
            limit.succeeded(100, FAST);
        }
        assert_eq!(limit.limit(), 8, "never above the ceiling");
    }

    #[tokio::test]
    async fn a_write_much_slower_per_document_than_the_baseline_halves_the_limit() {
        let limit = InflightLimit::new(8);
        limit.succeeded(100, FAST);
        limit.succeeded(100, FAST * 2);
        assert_eq!(limit.limit(), 8, "twice as slow is not congestion");
        limit.succeeded(100, FAST * 4);
        assert_eq!(limit.limit(), 4);
        limit.succeeded(10, FAST);
        assert_eq!(limit.limit(), 4, "a slow write per document, but the cut for this spell is done");
    }

    #[tokio::test]
    async fn a_cut_takes_effect_as_permits_come_back() {
        let limit = InflightLimit::new(4);
        let held: Vec<_> = futures::future::join_all((0..4).map(|_| limit.acquire())).await;
        limit.failed();
        assert_eq!(limit.limit(), 2);
        drop(held);
        let a = limit.acquire().await.unwrap();
        let b = limit.acquire().await.unwrap();
        let third = tokio::time::timeout(Duration::from_millis(100), limit.acquire()).await;
        assert!(third.is_err(), "only two writes may be in flight after the cut");
        drop((a, b));
        limit.succeeded(10, FAST);
        limit.succeeded(10, FAST);
        assert_eq!(limit.limit(), 3);
        let _held: Vec<_> = futures::future::join_all((0..3).map(|_| limit.acquire())).await;
    }
}
