//! A subscription's lag (`lag_seconds`: `GET /subscriptions`, the dashboard, the gauges every
//! 10 s), found so that it costs what was appended since it was last found, not the whole backlog.
//!
//! Per partition, the lag is the append time of the newest deliverable event of the
//! subscription's types minus that of the oldest not acknowledged: two edges of `[from, horizon)`,
//! each found by a walk from its end ([`SubscriptionStore::edge_position`]). For types that are
//! rare, or no longer sent, the walk from the newest end crosses every key of the range, and for a
//! subscription nobody consumes that range is everything appended since it stopped: three such
//! subscriptions took `GET /subscriptions` from 7 ms to 18.8 s after 60 s at 15,000 events/s, and
//! the stand-in from 30% to 64% of the machine (docs/PERFORMANCE.md).
//!
//! **Exact.** [`Edges`] remembers, per (subscription, partition), the edges found for
//! `[from₀, before₀)`. Below a horizon no more events appear, and within a generation `from` only
//! moves forward. So for `[from, before)` with `from₀ ≤ from` and `before₀ ≤ before`, the events
//! of the types are those of `[from, before₀)` (a part of `[from₀, before₀)`) and those of the
//! new stretch `[max(from, before₀), before)`:
//! - newest: the newest of the new stretch; else the remembered newest if it is at or past
//!   `from` (it is the newest of the part); else none (the part holds none);
//! - oldest: the remembered oldest if it is at or past `from` (nothing of the part lies before
//!   it); else, when none was remembered (the part holds none), the oldest of the new stretch
//!   (none, without a walk, when the walk for the newest found none there); else (the consumer
//!   acknowledged past it) a walk from `from`.
//!
//! What remains is one walk of the new stretch per subscription each time its lag is found: for a
//! subscription of rare types that nobody consumes, about what a consumer's polls would read.
//!
//! A reset (a new generation), a horizon that went back, a subscription made again under the same
//! name, or a replica that has not found them yet finds both edges by whole walks, as before.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use evp_events::EntryId;
use evp_store::subscriptions::{Edge, Subscription, SubscriptionStore};

use super::{Subscriptions, keep_series};
use crate::error::ApiError;
use crate::metrics as m;
use crate::routes::read::bounded;

/// Most (subscription, partition) edges a replica remembers; past it, it forgets them all (the next
/// lags are found by whole walks). Subscriptions are bounded per tenant, so this is only a cap.
const MAX_REMEMBERED: usize = 100_000;

/// The edges last found per (subscription id, partition).
pub type Edges = HashMap<(String, i32), Found>;

/// The edges of a partition's `[from, before)` for a subscription as it was then.
#[derive(Debug, Clone)]
pub struct Found {
    created_ms: i64,
    generation: i64,
    from: String,
    before: String,
    newest: Option<String>,
    oldest: Option<String>,
}

impl Subscriptions {
    /// The subscription's lag in seconds: per partition, the append time of the newest
    /// deliverable event minus that of the oldest not acknowledged (0 when caught up); the largest.
    pub async fn lag_seconds(
        &self,
        sub: &Subscription,
        horizons: &BTreeMap<i32, EntryId>,
    ) -> Result<f64, ApiError> {
        let mut lag_ms = 0_i64;
        for (p, part) in sub.partitions.iter().enumerate() {
            let Some(horizon) = horizons.get(&(p as i32)) else { continue };
            let before = horizon.sortable();
            if part.delivery.is_none() && part.from >= before {
                // Caught up: `[from, before)` is empty, so no query (each costs the server a range
                // read, and the gauges ask for every subscription every 10 s).
                continue;
            }
            let (newest, oldest) = self.edges(sub, p as i32, &part.from, &before).await?;
            let ms = |seq: Option<&String>| seq.and_then(|s| EntryId::parse(s)).map(|id| id.ms as i64);
            let Some(newest) = ms(newest.as_ref()) else { continue };
            let oldest = match &part.delivery {
                // (A poll's claim, not yet read, holds no events: count 0.)
                Some(d) if d.count > 0 => Some(d.first_ms),
                _ => ms(oldest.as_ref()),
            };
            if let Some(oldest) = oldest {
                lag_ms = lag_ms.max(newest - oldest);
            }
        }
        let lag = lag_ms.max(0) as f64 / 1000.0;
        let labels = [("tenant", sub.tenant.clone()), ("subscription", sub.name.clone())];
        metrics::gauge!(m::SUBSCRIPTION_LAG, &labels).set(lag);
        Ok(lag)
    }

    /// The newest and oldest deliverable events' positions in `[from, before)` of partition `p`,
    /// from what was found last time where it still holds (the module map says why that is exact).
    async fn edges(
        &self,
        sub: &Subscription,
        p: i32,
        from: &str,
        before: &str,
    ) -> Result<(Option<String>, Option<String>), ApiError> {
        let key = (sub.id.clone(), p);
        let created_ms = sub.created_at.timestamp_millis();
        let last = self.edges.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned().filter(|f| {
            f.created_ms == created_ms
                && f.generation == sub.generation
                && f.from.as_str() <= from
                && f.before.as_str() <= before
        });
        let store: &SubscriptionStore = &self.store;
        let edge = |e: Edge, lo: String| async move {
            bounded(store.edge_position(e, &sub.tenant, p, &lo, before, &sub.types)).await
        };
        // A range in which the walk from the newest end found nothing holds nothing: no walk from
        // the oldest end of it.
        let (newest, oldest) = match last {
            None => match edge(Edge::Newest, from.to_owned()).await? {
                None => (None, None),
                newest => (newest, edge(Edge::Oldest, from.to_owned()).await?),
            },
            Some(last) => {
                let stretch = last.before.as_str().max(from).to_owned();
                let fresh_newest = edge(Edge::Newest, stretch.clone()).await?;
                let oldest = match last.oldest {
                    Some(o) if o.as_str() >= from => Some(o),
                    None if fresh_newest.is_none() => None,
                    None => edge(Edge::Oldest, stretch).await?,
                    Some(_) => edge(Edge::Oldest, from.to_owned()).await?,
                };
                (fresh_newest.or(last.newest.filter(|n| n.as_str() >= from)), oldest)
            }
        };
        let found = Found {
            created_ms,
            generation: sub.generation,
            from: from.to_owned(),
            before: before.to_owned(),
            newest: newest.clone(),
            oldest: oldest.clone(),
        };
        let mut edges = self.edges.lock().unwrap_or_else(|e| e.into_inner());
        if edges.len() >= MAX_REMEMBERED {
            edges.clear();
        }
        edges.insert(key, found);
        Ok((newest, oldest))
    }

    /// Forgets the edges of subscriptions not in `kept` (deleted ones).
    fn forget_edges_except(&self, kept: &[Subscription]) {
        let ids: std::collections::HashSet<&str> = kept.iter().map(|s| s.id.as_str()).collect();
        self.edges.lock().unwrap_or_else(|e| e.into_inner()).retain(|(id, _), _| ids.contains(id.as_str()));
    }

    /// Every 10 s: every subscription's series refreshed (so they stay in the registry that
    /// forgets, [`m::SUBSCRIPTION_PREFIX`], and a deleted one's leave it), then each one's lag into
    /// its gauge (so it is current without a dashboard open); errors are left for the next round.
    pub fn spawn_lag_gauges(
        &self,
        pipeline: crate::analytics::Pipeline,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
                let Ok(subs) = bounded(this.store.list(None)).await else { continue };
                subs.iter().for_each(keep_series);
                this.forget_edges_except(&subs);
                let Ok(horizons) = this.horizons(&pipeline).await else { continue };
                for sub in &subs {
                    let _ = this.lag_seconds(sub, &horizons).await;
                }
            }
        });
    }
}
