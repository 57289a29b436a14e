//! A long poll (`wait_ms`): attempts ([`super::poll`]) and, between them, looks that cost no
//! write. A consumer waiting on a quiet subscription watches the partitions it holds and makes a
//! full attempt only when one has something below its horizon, and once a second for what the
//! looks cannot see; the horizons come from the replica's shared reading
//! ([`Subscriptions::horizons`]). A poll that found nothing leaves its watch for the consumer's
//! next poll on this replica, so a consumer polling again and again (as `Subscriber` does) writes
//! nothing either. Each look or attempt holds one of the tenant's poll read slots
//! ([`crate::limiters::polls`]) while it reads, and the poll sleeps without one.

use std::collections::BTreeMap;
use std::time::Duration;

use evp_events::EntryId;
use evp_store::subscriptions::Edge;

use super::view::Delivered;
use super::{LOOK_AGAIN, LOOK_AGAIN_FULLY, Subscriptions};
use crate::error::ApiError;
use crate::limiters::polls::PollSlots;
use crate::routes::read::bounded;

/// How long a poll's first round waits for one of the tenant's poll read slots (a later round
/// waits until the poll's deadline).
const SLOT_WAIT: Duration = Duration::from_secs(1);

impl Subscriptions {
    /// One poll: up to `max` events of the partitions this consumer holds (or can take), below
    /// their horizons. Waits up to `wait` for something to be deliverable. Each round's reads of
    /// MongoDB (a look, an attempt) hold one of the tenant's poll read slots (`slots`), waited
    /// for in turn with its other polls'; the poll sleeps without one. No slot within
    /// [`SLOT_WAIT`] for the first round is 429 (the tenant's polls keep MongoDB that busy); none
    /// by the deadline for a later one ends the poll with nothing. Each later round first asks
    /// `key_holds` whether the poll's key still names its tenant: a key revoked or expired while
    /// the poll waits ends it with 401.
    #[allow(clippy::too_many_arguments)]
    pub async fn poll(
        &self,
        tenant: &str,
        name: &str,
        consumer: &str,
        max: usize,
        wait: Duration,
        pipeline: &crate::analytics::Pipeline,
        slots: &PollSlots,
        key_holds: impl Fn() -> bool,
    ) -> Result<Delivered, ApiError> {
        let deadline = tokio::time::Instant::now() + wait;
        // What the last attempt that delivered nothing left to watch, and when it was made (by
        // this poll, or by the consumer's last poll).
        let mut quiet = self.recall(tenant, name, consumer);
        for round in 0.. {
            if round > 0 && !key_holds() {
                return Err(ApiError::Unauthorized(
                    "the API key was revoked or expired while the poll waited",
                ));
            }
            let horizons = self.horizons(pipeline).await?;
            let until = if round == 0 { tokio::time::Instant::now() + SLOT_WAIT } else { deadline };
            let Some(reading) = slots.read(tenant, until).await else {
                if round == 0 {
                    return Err(ApiError::RateLimited {
                        message: format!(
                            "tenant {tenant}'s polls had {} reads in progress on this replica \
                             (READ_CONCURRENCY_PER_TENANT) and none ended within {} s; retry after 1 s",
                            slots.per_tenant(),
                            SLOT_WAIT.as_secs()
                        ),
                        retry_after: Some(Duration::from_secs(1)),
                        policy: None,
                    });
                }
                break;
            };
            // (attempt, probe): attempt at once the first time and when a watched partition has
            // something; otherwise only every LOOK_AGAIN_FULLY, claiming only what has something.
            let (attempt, probe) = match &mut quiet {
                None => (true, false),
                Some((q, at)) => {
                    if self.anything_below(tenant, q, &horizons).await? {
                        (true, false)
                    } else {
                        (at.elapsed() >= LOOK_AGAIN_FULLY, true)
                    }
                }
            };
            if attempt {
                let known = if probe { quiet.as_ref().map(|(q, _)| q) } else { None };
                let (delivered, watch) =
                    self.poll_once(tenant, name, consumer, max, &horizons, known).await?;
                if !delivered.events.is_empty() {
                    return Ok(delivered);
                }
                quiet = Some((watch, tokio::time::Instant::now()));
            }
            drop(reading);
            if tokio::time::Instant::now() + LOOK_AGAIN > deadline {
                break;
            }
            tokio::time::sleep(LOOK_AGAIN).await;
        }
        if let Some(quiet) = quiet {
            self.remember(tenant, name, consumer, quiet);
        }
        Ok(Delivered { events: Vec::new(), ack: None })
    }

    /// What the consumer's last poll found quiet, taken (a poll that delivers, or fails, leaves
    /// nothing behind).
    fn recall(&self, tenant: &str, name: &str, consumer: &str) -> Option<Remembered> {
        let mut quiet = self.quiet.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        quiet.get_mut(tenant)?.remove(&(name.to_owned(), consumer.to_owned()))
    }

    fn remember(&self, tenant: &str, name: &str, consumer: &str, remembered: Remembered) {
        let mut quiet = self.quiet.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let tenants = quiet.entry(tenant.to_owned()).or_default();
        if tenants.len() >= super::QUIET_PER_TENANT {
            tenants.clear();
        }
        tenants.insert((name.to_owned(), consumer.to_owned()), remembered);
    }

    /// Whether any of the watched partitions has something deliverable below its horizon now,
    /// past what earlier looks found empty: limit-1 indexed reads (window by window) per partition
    /// whose horizon moved, and no write. Nothing can appear below a horizon, so a range found
    /// empty stays empty, and the next look starts where this one ended: a wait reads each key
    /// of the tenant once, however long it lasts.
    async fn anything_below(
        &self,
        tenant: &str,
        quiet: &mut Quiet,
        horizons: &BTreeMap<i32, EntryId>,
    ) -> Result<bool, ApiError> {
        let Quiet { types, held } = quiet;
        for watched in held {
            let Some(horizon) = horizons.get(&watched.partition) else { continue };
            if watched.look(self, tenant, types, horizon.sortable()).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// What a long poll watches between attempts that delivered nothing: the partitions the consumer
/// held (with no delivery in flight), their checkpoints as the attempt found them and how far
/// past them the looks found nothing of the subscription, and the subscription's types. Between
/// full attempts, every [`LOOK_AGAIN`], it only asks whether one of them has something below its
/// new horizon ([`Subscriptions::anything_below`]); a full attempt (which reads the subscription
/// and may write it) is made when one has, and at least every [`LOOK_AGAIN_FULLY`], for what the
/// watch cannot see: partitions freed by another consumer, a delivery's deadline passing, a nack
/// or a reset. So a consumer waiting on a quiet subscription writes nothing while other tenants'
/// events move the horizons.
#[derive(Debug)]
pub(super) struct Quiet {
    pub(super) types: Vec<String>,
    pub(super) held: Vec<Watched>,
}

/// What a poll that delivered nothing leaves for the consumer's next one: its watch, and when its
/// last full attempt was made.
pub(super) type Remembered = (Quiet, tokio::time::Instant);

/// A partition a long poll watches: `[from, empty_until)` holds nothing of the subscription.
#[derive(Debug)]
pub(super) struct Watched {
    pub(super) partition: i32,
    pub(super) from: String,
    pub(super) empty_until: String,
}

impl Watched {
    /// Whether the subscription (of `types`) has an event in `[empty_until, before)`, where
    /// `before` is the partition's horizon: limit-1 indexed reads window by window from
    /// `empty_until` (`edge_position`), none when the range is empty. When it has none, the range
    /// is known empty from then on (nothing can appear below a horizon), so `empty_until` moves up
    /// to `before`.
    pub(super) async fn look(
        &mut self,
        subs: &Subscriptions,
        tenant: &str,
        types: &[String],
        before: String,
    ) -> Result<bool, ApiError> {
        if self.empty_until >= before {
            return Ok(false);
        }
        let first =
            subs.store.edge_position(Edge::Oldest, tenant, self.partition, &self.empty_until, &before, types);
        if bounded(first).await?.is_some() {
            return Ok(true);
        }
        self.empty_until = before;
        Ok(false)
    }
}
