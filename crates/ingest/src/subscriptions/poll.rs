//! One attempt of a poll: claim the consumer's partitions, read their events below the horizon,
//! commit each claim as its delivery (the waiting between attempts is [`super::wait`]). Reading,
//! the slow part, happens between two short compare-and-sets, so consumers of one subscription do
//! not keep invalidating each other's changes. A subscription with types reads its windows the way
//! its last read found best ([`TypedReads`]).

use std::collections::{BTreeMap, HashMap};

use evp_events::EntryId;
use evp_store::reader::StoredRow;
use evp_store::subscriptions::{InFlight, Subscription, TypedRead};

use super::token::Token;
use super::view::{Delivered, SubscriptionEvent};
use super::wait::{Quiet, Watched};
use super::{ATTEMPTS, Subscriptions, assignment, back_off, busy};
use crate::error::ApiError;
use crate::metrics as m;
use crate::routes::read::bounded;

impl Subscriptions {
    /// One poll, in three steps so that the slow part (reading events) holds no compare-and-set
    /// open, and consumers of one subscription do not keep invalidating each other's:
    /// 1. claim: take the consumer's partitions and mark each free one in flight to it (a
    ///    placeholder delivery, so nobody else reads it meanwhile);
    /// 2. read each claimed partition's events in `[from, horizon)`;
    /// 3. commit: each claim becomes its delivery (or is let go, moving the checkpoint up to the
    ///    horizon when nothing of the subscription lies below it), if it is still this poll's
    ///    (a reset meanwhile drops it). A read that fails lets every claim go instead, so a retry
    ///    does not wait out the ack timeout.
    pub(super) async fn poll_once(
        &self,
        tenant: &str,
        name: &str,
        consumer: &str,
        max: usize,
        horizons: &BTreeMap<i32, EntryId>,
        known: Option<&Quiet>,
    ) -> Result<(Delivered, Quiet), ApiError> {
        let (generation, quiet, mut claimed) = self.claim(tenant, name, consumer, horizons, known).await?;
        let claims = &claimed.claims;
        let types = &quiet.types;
        let mut reads = Vec::with_capacity(claims.len());
        let mut budget = max;
        let mut how = self.typed_read(tenant, name);
        for claim in claims {
            let rows = if budget == 0 {
                None // No room in this poll: let the claim go untouched.
            } else {
                let asked = budget;
                let read = bounded(self.store.deliverable(
                    tenant,
                    claim.partition,
                    &claim.from,
                    &claim.before,
                    types,
                    asked,
                    &mut how,
                ))
                .await;
                let rows = match read {
                    Ok(rows) => rows,
                    Err(e) => {
                        // Let every claim go, so the next poll can take them at once instead of
                        // after the ack timeout (best effort: if this fails too, they expire).
                        let _ = self.let_go(tenant, name, generation, claims).await;
                        claimed.settled = true;
                        return Err(e);
                    }
                };
                budget -= rows.len();
                Some((rows, asked))
            };
            reads.push(rows);
        }
        if !types.is_empty() {
            self.learned(tenant, name, how);
        }
        let delivered = self.commit(tenant, name, generation, claims, reads).await?;
        claimed.settled = true;
        Ok((delivered, quiet))
    }

    /// How the subscription's last read found its windows best read (the first read: by keys).
    fn typed_read(&self, tenant: &str, name: &str) -> TypedRead {
        let reads = self.typed_reads.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        reads.get(tenant).and_then(|t| t.get(name)).copied().unwrap_or_default()
    }

    /// Remembers which way the subscription's read just ended, for its next one.
    fn learned(&self, tenant: &str, name: &str, how: TypedRead) {
        let mut reads = self.typed_reads.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let tenants = reads.entry(tenant.to_owned()).or_default();
        if tenants.len() >= super::MAX_PER_TENANT as usize && !tenants.contains_key(name) {
            tenants.clear(); // Deleted subscriptions' entries: forgotten, so no tenant grows it.
        }
        tenants.insert(name.to_owned(), how);
    }

    /// Step 1 of a poll: the consumer's partitions claimed; returns the generation, what a long
    /// poll may watch if nothing comes of it, and the claims. With `known` (what a long poll's
    /// looks found so far), a partition is claimed only when something of the subscription lies
    /// below its horizon past what they found empty (or its delivery is due again): a long poll's
    /// periodic attempt on a quiet subscription then writes nothing. (A first attempt does not
    /// probe: a consumer that is busy would pay one more read per partition for every poll.)
    async fn claim(
        &self,
        tenant: &str,
        name: &str,
        consumer: &str,
        horizons: &BTreeMap<i32, EntryId>,
        known: Option<&Quiet>,
    ) -> Result<(i64, Quiet, Claimed), ApiError> {
        for attempt in 0..ATTEMPTS {
            back_off(attempt).await;
            let mut sub = self.load(tenant, name).await?;
            let read = sub.clone();
            let now = evp_runtime::now_ms();
            let timeout_ms = self.ack_timeout.as_millis() as i64;
            assignment::seen(&mut sub, consumer, now, timeout_ms)?;
            let mut claims = Vec::new();
            let mut held = Vec::new();
            for p in assignment::assign(&mut sub, consumer, now, timeout_ms) {
                let part = &sub.partitions[p];
                if part.delivery.as_ref().is_some_and(|d| d.deadline > now) {
                    continue; // Its delivery is still in flight: nothing more from it until then.
                }
                // What the looks found empty is known only for the checkpoint they started from.
                let empty_until = known
                    .filter(|q| q.types == sub.types)
                    .and_then(|q| q.held.iter().find(|w| w.partition == p as i32 && w.from == part.from))
                    .map_or_else(|| part.from.clone(), |w| w.empty_until.clone());
                let watched = held.len();
                held.push(Watched { partition: p as i32, from: part.from.clone(), empty_until });
                let Some(horizon) = horizons.get(&(p as i32)) else { continue };
                let before = horizon.sortable();
                if part.delivery.is_none() && part.from >= before {
                    continue; // Caught up: nothing can be read below the horizon.
                }
                if known.is_some()
                    && part.delivery.is_none()
                    && !held[watched].look(self, tenant, &sub.types, before.clone()).await?
                {
                    continue; // Nothing of the subscription below the horizon: no claim to write.
                }
                let part = &mut sub.partitions[p];
                let id = format!("{:016x}", rand::random::<u64>());
                let missed = part.delivery.as_ref().map_or(0, |d| d.count.max(0) as usize);
                part.delivery = Some(InFlight {
                    id: id.clone(),
                    consumer: consumer.to_owned(),
                    to: part.from.clone(),
                    count: 0,
                    deadline: now + timeout_ms,
                    first_ms: 0,
                });
                claims.push(Claim { partition: p as i32, id, from: part.from.clone(), before, missed });
            }
            if claims.is_empty() && !worth_writing(&read, &sub, consumer, now, timeout_ms) {
                // An idle poll of a caught-up consumer: nothing to claim, and its holdings were
                // refreshed recently enough. Writing would only contend with the others.
                let claimed = self.claimed(tenant, name, sub.generation, claims);
                return Ok((sub.generation, Quiet { types: sub.types, held }, claimed));
            }
            sub.version += 1;
            // Armed before the write: a poll dropped while it is in flight lets go what may have landed.
            let mut claimed = self.claimed(tenant, name, sub.generation, claims);
            if bounded(self.store.replace(&sub)).await? {
                return Ok((sub.generation, Quiet { types: sub.types, held }, claimed));
            }
            claimed.settled = true; // Lost the compare-and-set: nothing was claimed.
        }
        Err(busy())
    }

    fn claimed(&self, tenant: &str, name: &str, generation: i64, claims: Vec<Claim>) -> Claimed {
        Claimed {
            subs: self.clone(),
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            generation,
            claims,
            settled: false,
        }
    }

    /// Lets `claims` go: a commit with nothing read, which clears only the deliveries that are
    /// still these claims and moves no checkpoint.
    async fn let_go(
        &self,
        tenant: &str,
        name: &str,
        generation: i64,
        claims: &[Claim],
    ) -> Result<Delivered, ApiError> {
        self.commit(tenant, name, generation, claims, claims.iter().map(|_| None).collect()).await
    }

    /// Step 3 of a poll: each claim that is still this poll's becomes its delivery.
    async fn commit(
        &self,
        tenant: &str,
        name: &str,
        generation: i64,
        claims: &[Claim],
        mut reads: Vec<Option<(Vec<StoredRow>, usize)>>,
    ) -> Result<Delivered, ApiError> {
        if claims.is_empty() {
            return Ok(Delivered { events: Vec::new(), ack: None });
        }
        for attempt in 0..ATTEMPTS {
            back_off(attempt).await;
            let mut sub = self.load(tenant, name).await?;
            if sub.generation != generation {
                // Reset since the claim: what was read is from before the reset's checkpoint.
                return Ok(Delivered { events: Vec::new(), ack: None });
            }
            let mut handed = Vec::new();
            let mut redelivered = 0_u64;
            for (claim, rows) in claims.iter().zip(&reads) {
                let Some(part) = sub.partitions.get_mut(claim.partition as usize) else { continue };
                if part.delivery.as_ref().is_none_or(|d| d.id != claim.id) {
                    continue; // Not this poll's any more.
                }
                let delivery = part.delivery.as_mut().expect("checked above");
                match rows {
                    None => part.delivery = None,
                    Some((rows, _)) if rows.is_empty() => {
                        // Nothing of this subscription below the horizon: the checkpoint can move
                        // up to it, so later reads start there.
                        part.delivery = None;
                        if part.from == claim.from && part.from < claim.before {
                            part.from = claim.before.clone();
                        }
                    }
                    Some((rows, asked)) => {
                        let last =
                            rows.last().and_then(|r| r.position).map(|(_, seq)| seq).unwrap_or_default();
                        let want_more = rows.len() < *asked;
                        // A short read covered everything below the horizon; a full one ends after its last.
                        delivery.to = if want_more { claim.before.clone() } else { last.next().sortable() };
                        delivery.count = rows.len() as i64;
                        delivery.first_ms =
                            rows.first().and_then(|r| r.position).map_or(0, |(_, seq)| seq.ms as i64);
                        redelivered += rows.len().min(claim.missed) as u64;
                        handed.push((claim.partition, claim.id.clone()));
                    }
                }
            }
            sub.version += 1;
            if bounded(self.store.replace(&sub)).await? {
                let mut events = Vec::new();
                for (claim, rows) in claims.iter().zip(reads.iter_mut()) {
                    if handed.iter().any(|(p, id)| *p == claim.partition && *id == claim.id) {
                        let (rows, _) = rows.take().unwrap_or_default();
                        events.extend(rows.into_iter().map(SubscriptionEvent::from));
                    }
                }
                let labels = [("tenant", tenant.to_owned()), ("subscription", name.to_owned())];
                metrics::counter!(m::SUBSCRIPTION_DELIVERED, &labels).increment(events.len() as u64);
                metrics::counter!(m::SUBSCRIPTION_REDELIVERED, &labels).increment(redelivered);
                let ack = (!handed.is_empty()).then(|| Token { generation, deliveries: handed }.encode());
                return Ok(Delivered { events, ack });
            }
        }
        Err(busy())
    }
}

/// A poll's claims, let go if the poll ends before it settles them: a poll whose request is
/// dropped (the client went away or timed out) between its claim and its commit would otherwise
/// leave its partitions in flight to nobody until the ack timeout, and the consumer's next poll
/// would get nothing meanwhile. Letting go is a commit with nothing read: it clears only the
/// deliveries that are still these claims (whatever the commit that was cut off managed to
/// write, including a delivery whose token never reached the consumer) and moves no checkpoint,
/// so the events are delivered again, none skipped.
struct Claimed {
    subs: Subscriptions,
    tenant: String,
    name: String,
    generation: i64,
    claims: Vec<Claim>,
    /// Committed, let go already, or never written.
    settled: bool,
}

impl Drop for Claimed {
    fn drop(&mut self) {
        if self.settled || self.claims.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let subs = self.subs.clone();
        let (tenant, name, generation) =
            (std::mem::take(&mut self.tenant), std::mem::take(&mut self.name), self.generation);
        let claims = std::mem::take(&mut self.claims);
        tracing::debug!(tenant, subscription = name, "a poll ended before its commit; letting its claims go");
        runtime.spawn(async move {
            let _ = subs.let_go(&tenant, &name, generation, &claims).await;
        });
    }
}

/// Per tenant, how each of its subscriptions with types reads its windows
/// ([`evp_store::subscriptions::TypedRead`]): what the last read found, so the next starts the
/// best way. Only a cost: a read returns the same events either way, so a replica that forgot
/// (or never saw the subscription) reads by keys first and learns again in one window.
pub(super) type TypedReads = std::sync::Arc<std::sync::Mutex<HashMap<String, HashMap<String, TypedRead>>>>;

/// A partition claimed by a poll (step 1), to be read and then committed as its delivery.
struct Claim {
    partition: i32,
    /// The placeholder delivery's id.
    id: String,
    /// The checkpoint and the horizon the read covers, `[from, before)`.
    from: String,
    before: String,
    /// Events the expired delivery it replaces held (counted as redelivered).
    missed: usize,
}

/// Whether a poll that claims nothing must still write: the holders changed, or the consumer's
/// last write of its liveness is older than a quarter of the ack timeout (so it keeps its
/// partitions, and shows as live, with room to spare).
fn worth_writing(
    read: &Subscription,
    now_state: &Subscription,
    consumer: &str,
    now: i64,
    timeout_ms: i64,
) -> bool {
    let holders = |s: &Subscription| s.partitions.iter().map(|p| p.holder.clone()).collect::<Vec<_>>();
    let names = |s: &Subscription| s.consumers.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    let last_seen = read.consumers.iter().find(|c| c.name == consumer).map_or(i64::MIN, |c| c.last_seen);
    let expiring = read
        .partitions
        .iter()
        .any(|p| p.holder.as_deref() == Some(consumer) && p.held_until - now < timeout_ms * 3 / 4);
    holders(read) != holders(now_state)
        || names(read) != names(now_state)
        || last_seen < now - timeout_ms / 4
        || expiring
}
