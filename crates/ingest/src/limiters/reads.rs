//! `READ_CONCURRENCY_PER_TENANT`: reads one tenant may have in progress at once on a replica, and
//! the analytics answers shared fairly among tenants.
//!
//! A read holds a MongoDB connection and server time for as long as it runs. Without a bound per
//! tenant, one tenant's dashboard wall or scraper fills the replica's pool and every other
//! tenant's reads queue behind it. Past its bound a tenant gets 429 `rate_limited` with
//! `Retry-After: 1` at once (its reads are short, so a second is enough to try again), while other
//! tenants' reads go on.
//!
//! Analytics answers are costlier still, so a replica computes at most a few at a time; a tenant
//! waits for those in its own line (one of its answers at a time), so a tenant with many open
//! dashboards queues behind itself, and each other tenant's answer is next in line after at most
//! one of its.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Reads in progress, per tenant, on this replica.
#[derive(Debug, Clone)]
pub struct ReadSlots {
    per_tenant: usize,
    in_progress: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    /// One analytics answer at a time per tenant.
    analytics_lines: Arc<Mutex<HashMap<Arc<str>, Line>>>,
}

/// A tenant's line for analytics answers: one at a time.
type Line = Arc<tokio::sync::Mutex<()>>;

/// A read in progress; dropping it frees the tenant's slot.
#[derive(Debug)]
pub struct ReadSlot {
    tenant: Arc<str>,
    in_progress: Arc<Mutex<HashMap<Arc<str>, usize>>>,
}

impl Drop for ReadSlot {
    fn drop(&mut self) {
        let mut map = self.in_progress.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.tenant);
            }
        }
    }
}

impl ReadSlots {
    pub fn new(per_tenant: usize) -> Self {
        Self { per_tenant, in_progress: Arc::default(), analytics_lines: Arc::default() }
    }

    /// The most reads one tenant may have in progress.
    pub fn per_tenant(&self) -> usize {
        self.per_tenant
    }

    /// A slot for one of `tenant`'s reads, or `None` while it has `READ_CONCURRENCY_PER_TENANT`
    /// in progress.
    pub fn try_acquire(&self, tenant: &Arc<str>) -> Option<ReadSlot> {
        let mut map = self.in_progress.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(tenant.clone()).or_default();
        if *n >= self.per_tenant {
            return None;
        }
        *n += 1;
        Some(ReadSlot { tenant: tenant.clone(), in_progress: self.in_progress.clone() })
    }

    /// The line `tenant`'s analytics answers wait in, one at a time.
    pub fn analytics_line(&self, tenant: &Arc<str>) -> Line {
        let mut lines = self.analytics_lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.entry(tenant.clone()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_holds_at_most_its_slots_and_others_are_not_affected() {
        let slots = ReadSlots::new(2);
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let first = slots.try_acquire(&a).unwrap();
        let _second = slots.try_acquire(&a).unwrap();
        assert!(slots.try_acquire(&a).is_none(), "a third read of a waits");
        assert!(slots.try_acquire(&b).is_some(), "b is not affected");
        drop(first);
        assert!(slots.try_acquire(&a).is_some(), "a slot freed is a slot again");
    }
}
