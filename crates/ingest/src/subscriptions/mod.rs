//! Subscriptions: a tenant's named, checkpointed reading of its stored events, for projections
//! written by the user (SPEC "Subscriptions").
//!
//! - this module: the state changes (define, poll, ack, nack, reset) over the stored state of
//!   [`evp_store::subscriptions`], each a read followed by a compare-and-set, retried when another
//!   request (on this replica or another) changed the subscription in between;
//! - [`assignment`]: which partitions a consumer holds (its share of them), and the consumers seen;
//! - [`poll`]: a poll's attempt in three steps (claim, read, commit), so reading holds no
//!   compare-and-set open;
//! - [`wait`]: a long poll, whose looks between attempts write nothing;
//! - [`lag`]: `lag_seconds`, found from the edges found last time, and the gauges;
//! - [`token`]: the ack token, naming the deliveries it acknowledges;
//! - [`view`]: the answers (a subscription as listed, a delivery's events).
//!
//! **Why it is exact** (ARCHITECTURE, "Subscriptions"):
//! - *Nothing is skipped for being stored late.* A partition is read only below its horizon, the
//!   consumer group's acknowledged frontier in Redis: every entry below it was acknowledged by the
//!   workers, which acknowledge only after the write (or the dead letter), and Redis gives new
//!   entries ids above it. So below the horizon the stored events of a partition are final, and
//!   reading `[checkpoint, horizon)` in `seq` order sees every one of them.
//! - *At least once, in append order per partition.* A partition has at most one delivery in
//!   flight. Its checkpoint moves only when that delivery is acknowledged, to the end of what the
//!   delivery covered; nack and a missed deadline leave it, so the same events go out again.
//! - *One consumer per partition.* A partition is held by one consumer until the consumer is not
//!   heard from for `SUBSCRIPTION_ACK_TIMEOUT_MS`; every hand-out is a compare-and-set on the
//!   subscription's version, so two replicas cannot both hand out a partition.
//! - *Acknowledged means not again.* An ack is accepted only while the delivery it names is still
//!   the partition's delivery in flight (and the generation, bumped by reset, is the same): a
//!   delivery given to another consumer since answers 409, and its events go to that consumer.

mod assignment;
mod lag;
mod poll;
pub mod token;
pub mod view;
mod wait;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use evp_events::EntryId;
use evp_store::subscriptions::{LastError, PartitionState, Subscription, SubscriptionStore};
use mongodb::bson::DateTime;

use crate::error::ApiError;
use crate::metrics as m;
use crate::routes::read::bounded;
use token::Token;

/// Most subscriptions one tenant may have.
pub const MAX_PER_TENANT: u64 = 100;
/// Most consumers one subscription keeps track of at once.
pub const MAX_CONSUMERS: usize = 100;
/// Most event types one subscription may name.
pub const MAX_TYPES: usize = 100;
/// How often a long poll looks again while nothing is deliverable.
const LOOK_AGAIN: Duration = Duration::from_millis(100);
/// How often a long poll makes a full attempt while nothing is deliverable (in between it only
/// watches its partitions' horizons, `wait::Quiet`).
const LOOK_AGAIN_FULLY: Duration = Duration::from_secs(1);
/// Compare-and-set attempts before a change gives up (503: the subscription is that busy).
const ATTEMPTS: usize = 50;

/// A short random pause before attempt `n` after a lost compare-and-set, so that requests racing
/// for one subscription do not keep colliding.
async fn back_off(attempt: usize) {
    if attempt > 0 {
        let most = 2 * attempt.min(25) as u64;
        tokio::time::sleep(Duration::from_millis(1 + rand::random::<u64>() % most)).await;
    }
}

/// Where a subscription starts, or is reset to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Beginning,
    Now,
    /// Unix ms of append time.
    Time(i64),
}

impl StartAt {
    /// The checkpoint (sortable stream position, inclusive) it means at `now_ms`.
    fn from(self, now_ms: i64) -> String {
        match self {
            Self::Beginning => String::new(),
            Self::Now => EntryId::new(now_ms.max(0) as u64, 0).sortable(),
            Self::Time(ms) => EntryId::new(ms.max(0) as u64, 0).sortable(),
        }
    }
}

/// The subscriptions of this deployment.
#[derive(Debug, Clone)]
pub struct Subscriptions {
    store: SubscriptionStore,
    partitions: u32,
    ack_timeout: Duration,
    /// The horizons as last read from Redis, and when: shared by every poll of this replica.
    horizons: Arc<tokio::sync::Mutex<Option<(tokio::time::Instant, Horizons)>>>,
    /// Per tenant, what each consumer's last poll found quiet ([`wait`]), so that its next poll
    /// starts from it; at most [`QUIET_PER_TENANT`] consumers a tenant.
    quiet: Arc<std::sync::Mutex<HashMap<String, QuietByConsumer>>>,
    /// How each typed subscription's last read found its windows best read ([`poll`]).
    typed_reads: poll::TypedReads,
    /// The edges each subscription's lag was last found from ([`lag`]).
    edges: Arc<std::sync::Mutex<lag::Edges>>,
}

/// A tenant's remembered quiet, by (subscription, consumer).
type QuietByConsumer = HashMap<(String, String), wait::Remembered>;

/// Most consumers per tenant whose quiet a replica remembers; past it the tenant's are forgotten
/// (its consumers' next polls then make a full first attempt), so no tenant can grow it further.
const QUIET_PER_TENANT: usize = 1_000;

/// Each partition's horizon (partitions without a consumer group yet are absent).
pub type Horizons = Arc<BTreeMap<i32, EntryId>>;

/// How old a horizon a poll may use: one read of Redis serves every poll of a replica that looks
/// within this time.
const HORIZONS_MAX_AGE: Duration = Duration::from_millis(50);

impl Subscriptions {
    pub fn new(store: SubscriptionStore, partitions: u32, ack_timeout: Duration) -> Self {
        let (horizons, quiet, typed_reads, edges) = Default::default();
        Self { store, partitions, ack_timeout, horizons, quiet, typed_reads, edges }
    }

    /// Each partition's horizon as read at most [`HORIZONS_MAX_AGE`] ago, read once for all the
    /// polls of this replica that ask meanwhile (the first reads, the others wait for its read).
    /// Polls waiting on quiet subscriptions look every 100 ms; without this each one would read
    /// every partition's state from Redis each time, so Redis's load would grow with the number
    /// of waiting consumers. Why it stays exact: an older horizon is still a horizon (nothing can
    /// be appended below it), so using one only delays a delivery, by at most that age.
    pub async fn horizons(&self, pipeline: &crate::analytics::Pipeline) -> Result<Horizons, ApiError> {
        crate::routes::read::bounded_from("Redis", async {
            let mut cached = self.horizons.lock().await;
            if let Some((at, horizons)) = cached.as_ref()
                && at.elapsed() < HORIZONS_MAX_AGE
            {
                return Ok(horizons.clone());
            }
            let fresh = Arc::new(pipeline.frontiers().await?);
            *cached = Some((tokio::time::Instant::now(), fresh.clone()));
            Ok::<_, redis::RedisError>(fresh)
        })
        .await
    }

    pub fn store(&self) -> &SubscriptionStore {
        &self.store
    }

    pub fn ack_timeout(&self) -> Duration {
        self.ack_timeout
    }

    /// Creates `name` (true), or finds it defined the same way (false); 409 when it exists with
    /// another definition, or the tenant has [`MAX_PER_TENANT`] already.
    pub async fn define(
        &self,
        tenant: &str,
        name: &str,
        types: Vec<String>,
        start: StartAt,
        now_ms: i64,
    ) -> Result<(bool, Subscription), ApiError> {
        let start_name = if start == StartAt::Now { "now" } else { "beginning" };
        let same = |existing: &Subscription| existing.types == types && existing.start == start_name;
        if let Some(existing) = bounded(self.store.get(tenant, name)).await? {
            return if same(&existing) { Ok((false, existing)) } else { Err(redefined(name)) };
        }
        if bounded(self.store.count(tenant)).await? >= MAX_PER_TENANT {
            return Err(ApiError::Conflict(format!(
                "tenant {tenant} has {MAX_PER_TENANT} subscriptions, the most it may have; delete one first"
            )));
        }
        let from = start.from(now_ms);
        let sub = Subscription {
            id: Subscription::key(tenant, name),
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            types: types.clone(),
            start: start_name.to_owned(),
            created_at: DateTime::from_millis(now_ms),
            version: 0,
            generation: 0,
            partitions: (0..self.partitions)
                .map(|_| PartitionState { from: from.clone(), ..Default::default() })
                .collect(),
            consumers: Vec::new(),
            last_error: None,
        };
        if bounded(self.store.create(&sub)).await? {
            return Ok((true, sub));
        }
        // Created meanwhile by another request.
        match bounded(self.store.get(tenant, name)).await? {
            Some(existing) if same(&existing) => Ok((false, existing)),
            _ => Err(redefined(name)),
        }
    }

    /// Acknowledges the deliveries `ack` names: each partition's checkpoint moves past them.
    pub async fn ack(&self, tenant: &str, name: &str, ack: &str) -> Result<(), ApiError> {
        self.settle(tenant, name, ack, None).await
    }

    /// Hands the deliveries `ack` names back for redelivery, recording `error`.
    pub async fn nack(&self, tenant: &str, name: &str, ack: &str, error: &str) -> Result<(), ApiError> {
        self.settle(tenant, name, ack, Some(error)).await
    }

    async fn settle(&self, tenant: &str, name: &str, ack: &str, error: Option<&str>) -> Result<(), ApiError> {
        let token = Token::decode(ack)?;
        for attempt in 0..ATTEMPTS {
            back_off(attempt).await;
            let mut sub = self.load(tenant, name).await?;
            let now = evp_runtime::now_ms();
            if sub.generation != token.generation {
                return Err(stale("the subscription was reset since this delivery"));
            }
            let mut consumer = None;
            let mut settled = 0_u64;
            for (p, id) in &token.deliveries {
                let current = sub.partitions.get(*p as usize).and_then(|part| part.delivery.as_ref());
                match current {
                    Some(d) if d.id == *id => {
                        consumer = Some(d.consumer.clone());
                        settled += d.count.max(0) as u64;
                    }
                    _ => return Err(stale("this delivery was given to another consumer since")),
                }
            }
            for (p, _) in &token.deliveries {
                let part = &mut sub.partitions[*p as usize];
                if let Some(d) = part.delivery.take()
                    && error.is_none()
                {
                    part.from = d.to;
                }
            }
            let consumer = consumer.unwrap_or_default();
            if let Some(message) = error {
                sub.last_error = Some(LastError {
                    message: message.to_owned(),
                    at: DateTime::from_millis(now),
                    consumer: consumer.clone(),
                });
            }
            let timeout_ms = self.ack_timeout.as_millis() as i64;
            if let Some(c) = sub.consumers.iter_mut().find(|c| c.name == consumer) {
                c.last_seen = now;
            }
            for part in sub.partitions.iter_mut().filter(|p| p.holder.as_deref() == Some(consumer.as_str())) {
                part.held_until = now + timeout_ms;
            }
            sub.version += 1;
            if bounded(self.store.replace(&sub)).await? {
                let labels = [("tenant", tenant.to_owned()), ("subscription", name.to_owned())];
                let counter =
                    if error.is_some() { m::SUBSCRIPTION_NACKED } else { m::SUBSCRIPTION_ACKNOWLEDGED };
                metrics::counter!(counter, &labels).increment(settled);
                return Ok(());
            }
        }
        Err(busy())
    }

    /// Moves every partition's checkpoint to `to` and drops the deliveries in flight (their tokens
    /// get 409): the subscription delivers again from there.
    pub async fn reset(&self, tenant: &str, name: &str, to: StartAt) -> Result<(), ApiError> {
        for attempt in 0..ATTEMPTS {
            back_off(attempt).await;
            let mut sub = self.load(tenant, name).await?;
            let from = to.from(evp_runtime::now_ms());
            for part in &mut sub.partitions {
                part.from = from.clone();
                part.delivery = None;
            }
            sub.generation += 1;
            sub.version += 1;
            if bounded(self.store.replace(&sub)).await? {
                return Ok(());
            }
        }
        Err(busy())
    }

    pub async fn delete(&self, tenant: &str, name: &str) -> Result<(), ApiError> {
        if bounded(self.store.delete(tenant, name)).await? { Ok(()) } else { Err(not_found(name)) }
    }

    /// The stored state, with a partition for each of this deployment's (more may have been added
    /// since it was created: they start at the beginning, holding only events appended since).
    pub async fn load(&self, tenant: &str, name: &str) -> Result<Subscription, ApiError> {
        let mut sub = bounded(self.store.get(tenant, name)).await?.ok_or_else(|| not_found(name))?;
        while sub.partitions.len() < self.partitions as usize {
            sub.partitions.push(PartitionState::default());
        }
        Ok(sub)
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!("no subscription {name:?}"))
}

fn redefined(name: &str) -> ApiError {
    ApiError::Conflict(format!(
        "subscription {name:?} exists with another definition; delete it first, or use another name"
    ))
}

fn stale(why: &str) -> ApiError {
    ApiError::Conflict(format!(
        "{why}: it cannot be acknowledged any more, and its events will be delivered again"
    ))
}

fn busy() -> ApiError {
    ApiError::ReadUnavailable { cause: "the subscription changed on every attempt; retry".into() }
}

/// Touches each of the subscription's series without changing it (counters from 0 on a replica
/// that has not served it yet), so that the registry keeps them.
fn keep_series(sub: &Subscription) {
    let labels = [("tenant", sub.tenant.clone()), ("subscription", sub.name.clone())];
    for counter in [
        m::SUBSCRIPTION_DELIVERED,
        m::SUBSCRIPTION_REDELIVERED,
        m::SUBSCRIPTION_ACKNOWLEDGED,
        m::SUBSCRIPTION_NACKED,
    ] {
        metrics::counter!(counter, &labels).increment(0);
    }
    metrics::gauge!(m::SUBSCRIPTION_LAG, &labels).increment(0.0);
}
