//! The stream's upkeep, run by the trimmer ([`crate::trimmer`]): trimming what every group has
//! acknowledged, forgetting consumers that left, and reconciling the per-tenant unstored counts.

use std::time::Duration;

use evp_runtime::unstored;
use redis::RedisResult;
use redis::streams::{StreamInfoConsumersReply, StreamInfoGroupsReply, StreamPendingReply};

use super::{EntryId, StreamClient};

/// The consumer group's state after a trim.
#[derive(Debug, Clone, Copy, Default)]
pub struct GroupState {
    /// Entries delivered to the group and not yet acknowledged.
    pub pending: u64,
    /// Entries not yet delivered to the group, when Redis can tell.
    pub lag: Option<u64>,
    /// Entries removed by this trim.
    pub trimmed: u64,
}

impl StreamClient {
    /// Resets the partition's unstored counts when they drifted and nothing is unstored
    /// ([`unstored::RECONCILE_SCRIPT`]); true when they were reset.
    pub async fn reconcile_counts(&self) -> RedisResult<bool> {
        unstored::reconcile(&self.conn, &self.counts, &self.group).await
    }

    /// Trims entries that every consumer group has acknowledged, and reports this group's state.
    ///
    /// For each group, everything before its oldest pending entry (or, with nothing pending, up to
    /// its last delivered entry) is acknowledged; the stream is trimmed below the smallest such
    /// boundary over all groups, so an entry some group still needs is never removed. With no
    /// group at all nothing is trimmed.
    pub async fn trim_acknowledged(&self) -> RedisResult<Option<GroupState>> {
        let mut conn = self.conn.clone();
        let groups: StreamInfoGroupsReply =
            match redis::cmd("XINFO").arg("GROUPS").arg(&*self.stream).query_async(&mut conn).await {
                Ok(groups) => groups,
                Err(e) if e.to_string().contains("no such key") => return Ok(None),
                Err(e) => return Err(e),
            };
        let mut boundary: Option<EntryId> = None;
        let mut ours = None;
        for group in &groups.groups {
            let group_boundary = if group.pending > 0 {
                let summary: StreamPendingReply =
                    redis::cmd("XPENDING").arg(&*self.stream).arg(&group.name).query_async(&mut conn).await?;
                match summary {
                    StreamPendingReply::Data(data) => EntryId::parse(&data.start_id),
                    _ => EntryId::parse(&group.last_delivered_id).map(EntryId::next),
                }
            } else {
                EntryId::parse(&group.last_delivered_id).map(EntryId::next)
            };
            // An id we cannot read means we cannot prove anything is safe to trim.
            let Some(group_boundary) = group_boundary else { return Ok(None) };
            boundary = Some(boundary.map_or(group_boundary, |b| b.min(group_boundary)));
            if group.name == *self.group {
                ours = Some(GroupState {
                    pending: group.pending as u64,
                    lag: group.lag.map(|l| l as u64),
                    trimmed: 0,
                });
            }
        }
        let Some(boundary) = boundary else { return Ok(None) };
        let trimmed: u64 = redis::cmd("XTRIM")
            .arg(&*self.stream)
            .arg("MINID")
            .arg(boundary.to_string())
            .query_async(&mut conn)
            .await?;
        Ok(Some(GroupState { trimmed, ..ours.unwrap_or_default() }))
    }

    /// Removes consumers of this group that hold no pending entries and have been idle for at
    /// least `idle` (replicas that went away). A consumer with pending entries is never removed.
    pub async fn remove_departed_consumers(&self, idle: Duration) -> RedisResult<usize> {
        let mut conn = self.conn.clone();
        let reply: StreamInfoConsumersReply = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&*self.stream)
            .arg(&*self.group)
            .query_async(&mut conn)
            .await?;
        let mut removed = 0;
        for consumer in reply.consumers {
            if consumer.pending == 0
                && consumer.idle as u128 >= idle.as_millis()
                && consumer.name != *self.consumer
            {
                let still_pending: u64 = redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&*self.stream)
                    .arg(&*self.group)
                    .arg(&consumer.name)
                    .query_async(&mut conn)
                    .await?;
                if still_pending > 0 {
                    tracing::error!(
                        consumer = consumer.name,
                        still_pending,
                        "removed a consumer that had just received entries"
                    );
                }
                removed += 1;
            }
        }
        Ok(removed)
    }
}
