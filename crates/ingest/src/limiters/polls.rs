//! Subscription polls per tenant on a replica: how many may be in progress, and how many of them
//! may read MongoDB at once.
//!
//! A long poll (`wait_ms`) spends nearly all its time waiting for events, and reads MongoDB only
//! in short bursts (a look every 100 ms, an attempt when something is there). Counting a waiting
//! poll as a read refused the fifth consumer of a tenant on a replica (429) while four others
//! waited, so a team running a few projections with two consumers each saw some of them retry
//! again and again, their partitions stalled, and none of it was MongoDB load. So a poll takes:
//!
//! - a **place** for its whole length: at most [`PLACES_PER_READ_SLOT`] ×
//!   `READ_CONCURRENCY_PER_TENANT` per tenant (256 by default; past it 429 `rate_limited`), the
//!   bound on the connections and tasks one tenant's polls hold;
//! - a **read slot** only while it reads: at most `READ_CONCURRENCY_PER_TENANT` per tenant, waited
//!   for in turn (first come, first served among the tenant's polls), and given back before the
//!   poll sleeps. So one tenant's polls never have more reads of MongoDB in flight on a replica
//!   than its `GET` reads may, however many of its consumers wait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::reads::{ReadSlot, ReadSlots};

/// Places (polls in progress, waiting ones included) per read slot of a tenant.
pub const PLACES_PER_READ_SLOT: usize = 64;

/// The polls of each tenant on this replica.
#[derive(Debug, Clone)]
pub struct PollSlots {
    per_tenant: usize,
    places: ReadSlots,
    reading: Arc<Mutex<HashMap<Arc<str>, Arc<Semaphore>>>>,
}

impl PollSlots {
    /// `per_tenant`: `READ_CONCURRENCY_PER_TENANT`.
    pub fn new(per_tenant: usize) -> Self {
        Self {
            per_tenant,
            places: ReadSlots::new(per_tenant.saturating_mul(PLACES_PER_READ_SLOT)),
            reading: Arc::default(),
        }
    }

    /// Reads of one tenant's polls at once (`READ_CONCURRENCY_PER_TENANT`).
    pub fn per_tenant(&self) -> usize {
        self.per_tenant
    }

    /// Polls of one tenant in progress at once.
    pub fn places_per_tenant(&self) -> usize {
        self.places.per_tenant()
    }

    /// A place for one of `tenant`'s polls, held for the whole poll, or `None` while it has
    /// [`places_per_tenant`](Self::places_per_tenant) in progress.
    pub fn enter(&self, tenant: &Arc<str>) -> Option<ReadSlot> {
        self.places.try_acquire(tenant)
    }

    /// A read slot of `tenant`'s, waited for in turn until `until`; `None` if none came free by
    /// then. Dropping it gives it back.
    pub async fn read(&self, tenant: &str, until: tokio::time::Instant) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut reading = self.reading.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match reading.get(tenant) {
                Some(s) => s.clone(),
                None => {
                    let s = Arc::new(Semaphore::new(self.per_tenant));
                    reading.insert(tenant.into(), s.clone());
                    s
                }
            }
        };
        tokio::time::timeout_at(until, semaphore.acquire_owned()).await.ok()?.ok()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn polls_wait_in_turn_for_a_tenants_read_slots_and_others_are_not_affected() {
        let slots = PollSlots::new(2);
        let soon = || tokio::time::Instant::now() + Duration::from_millis(50);
        let first = slots.read("a", soon()).await.expect("a first slot");
        let _second = slots.read("a", soon()).await.expect("a second slot");
        assert!(slots.read("a", soon()).await.is_none(), "a third read of a waits, here past its time");
        assert!(slots.read("b", soon()).await.is_some(), "b is not affected");
        // A read waiting gets the slot given back while it waits.
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.read("a", tokio::time::Instant::now() + Duration::from_secs(5)).await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        assert!(waiting.await.unwrap(), "the slot given back went to the read waiting");
    }

    #[test]
    fn a_tenant_has_places_for_many_more_polls_than_read_slots() {
        let slots = PollSlots::new(2);
        let a: Arc<str> = "a".into();
        let held: Vec<_> = (0..2 * PLACES_PER_READ_SLOT).map(|_| slots.enter(&a).expect("a place")).collect();
        assert!(slots.enter(&a).is_none(), "past {} polls of a", held.len());
        assert!(slots.enter(&"b".into()).is_some(), "b is not affected");
    }
}
