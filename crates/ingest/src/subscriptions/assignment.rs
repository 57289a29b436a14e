//! Which partitions a consumer holds: each live consumer takes free partitions up to its share
//! (`ceil(partitions / live consumers)`) and lets go of those beyond it that have nothing in
//! flight; a partition whose holder went quiet for the ack timeout is free, once its delivery's
//! deadline (if any) has passed. Consumers are remembered while heard from.

use evp_store::subscriptions::{ConsumerSeen, PartitionState, Subscription};

use super::MAX_CONSUMERS;
use crate::error::ApiError;

/// The partitions `consumer` may deliver from now, after taking free ones up to its share and
/// letting go of what it holds beyond it (and is not delivering).
pub fn assign(sub: &mut Subscription, consumer: &str, now: i64, timeout_ms: i64) -> Vec<usize> {
    let live = sub.consumers.iter().filter(|c| c.last_seen + timeout_ms >= now).count().max(1);
    let share = sub.partitions.len().div_ceil(live);
    let held_by =
        |part: &PartitionState, who: &str| part.holder.as_deref() == Some(who) && part.held_until >= now;
    let mut mine: Vec<usize> =
        (0..sub.partitions.len()).filter(|&p| held_by(&sub.partitions[p], consumer)).collect();
    // Beyond its share (others joined): let go of what is not in flight.
    while mine.len() > share {
        let Some(pos) = mine.iter().rposition(|&p| sub.partitions[p].delivery.is_none()) else { break };
        let p = mine.remove(pos);
        sub.partitions[p].holder = None;
    }
    // Free partitions (never held, or their holder went quiet), up to its share; a partition
    // whose quiet holder left a delivery in flight is taken once that delivery's deadline passed.
    for p in 0..sub.partitions.len() {
        if mine.len() >= share {
            break;
        }
        let part = &sub.partitions[p];
        let free = part.holder.is_none() || part.held_until < now;
        let delivery_done =
            part.delivery.as_ref().is_none_or(|d| d.deadline <= now || d.consumer == consumer);
        if free && delivery_done && !mine.contains(&p) {
            mine.push(p);
        }
    }
    for &p in &mine {
        let part = &mut sub.partitions[p];
        part.holder = Some(consumer.to_owned());
        part.held_until = now + timeout_ms;
    }
    mine.sort_unstable();
    mine
}

/// Notes that `consumer` was heard from; consumers quiet for ten ack timeouts are forgotten.
pub fn seen(sub: &mut Subscription, consumer: &str, now: i64, timeout_ms: i64) -> Result<(), ApiError> {
    sub.consumers.retain(|c| c.last_seen + 10 * timeout_ms >= now || c.name == consumer);
    let known = sub.consumers.len();
    match sub.consumers.iter_mut().find(|c| c.name == consumer) {
        Some(c) => c.last_seen = now,
        None if known >= MAX_CONSUMERS => {
            return Err(ApiError::Conflict(format!(
                "subscription {} has {MAX_CONSUMERS} consumers, the most it keeps; reuse a consumer name",
                sub.name
            )));
        }
        None => sub.consumers.push(ConsumerSeen { name: consumer.to_owned(), last_seen: now }),
    }
    Ok(())
}
