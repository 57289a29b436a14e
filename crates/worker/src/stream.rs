//! Every Redis command the worker sends, behind methods named for their intent.
//!
//! A [`StreamClient`] is one partition's stream and dead-letter stream (the only one with
//! `STREAM_PARTITIONS=1`); [`StreamClient::partitions`] gives one per partition, all on the same
//! connections. Every command names one partition's keys, which share a hash tag, so on a Redis
//! Cluster each command and each MULTI goes to the one master of that slot.
//!
//! Two kinds of connection ([`evp_runtime::redis_conn`]): a shared multiplexed one for short
//! commands (ack, claim, dead-letter, trim), and one dedicated connection per [`Reader`] for the
//! blocking XREADGROUP, which would otherwise hold up every command queued behind it.

use std::sync::Arc;
use std::time::Duration;

use evp_runtime::partitions::Partitions;
use evp_runtime::redis_conn::{RedisConn, RedisTarget};
use redis::streams::{
    StreamClaimReply, StreamId, StreamInfoConsumersReply, StreamInfoGroupsReply, StreamPendingCountReply,
    StreamPendingId, StreamPendingReply, StreamReadReply,
};
use redis::{RedisResult, Value};

use crate::config::WorkerConfig;
use evp_store::Fields;

/// A stream entry as read: its id, its fields, and how often it has been delivered so far.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub fields: Fields,
    pub deliveries: u64,
}

/// An entry on its way to the dead-letter stream.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub entry: Entry,
    /// Stored with the entry as `dlq_reason`: what went wrong, for a person.
    pub reason: String,
    /// The metric label: `undecodable`, `unstorable`, `refused` or `max_deliveries`.
    pub kind: &'static str,
}

/// Renews a consumer's claim on some of its pending entries, atomically skipping any that another
/// consumer has claimed since: XCLAIM with min-idle 0 alone would take those back.
/// KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] lowest id, ARGV[4] highest id,
/// ARGV[5] how many of the consumer's entries to look at in that range, ARGV[6..] the ids.
const RENEW_SCRIPT: &str = r"
local wanted = {}
for i = 6, #ARGV do wanted[ARGV[i]] = true end
local mine = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[2])
local keep = {}
for _, p in ipairs(mine) do
  if wanted[p[1]] then keep[#keep + 1] = p[1] end
end
for i = 1, #keep, 1000 do
  local args = {KEYS[1], ARGV[1], ARGV[2], 0}
  for j = i, math.min(i + 999, #keep) do args[#args + 1] = keep[j] end
  args[#args + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(args))
end
return #keep
";
pub use evp_runtime::dead_letters::DLQ_PREFIX;

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

/// Shared handle for the short stream commands of one partition.
#[derive(Clone)]
pub struct StreamClient {
    target: RedisTarget,
    conn: RedisConn,
    all: Arc<Partitions>,
    partition: u32,
    stream: Arc<str>,
    dlq: Arc<str>,
    group: Arc<str>,
    consumer: Arc<str>,
    renew_script: Arc<redis::Script>,
    /// Most entries this consumer holds at once (batches in flight × batch size).
    holds_at_most: usize,
}

impl std::fmt::Debug for StreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamClient").field("stream", &self.stream).field("group", &self.group).finish()
    }
}

impl StreamClient {
    /// Creates the client of partition 0; connects on first use, so a worker starts even while
    /// Redis is down.
    pub fn new(config: &WorkerConfig) -> RedisResult<Self> {
        let target = config.common.redis_target()?;
        let conn = target.shared(Duration::from_secs(5))?;
        let all = config.common.partitions();
        let first = all.first();
        Ok(Self {
            target,
            conn,
            partition: first.index,
            stream: Arc::from(first.stream.as_str()),
            dlq: Arc::from(first.dlq.as_str()),
            all: Arc::new(all),
            group: Arc::from(config.group.as_str()),
            consumer: Arc::from(config.consumer.as_str()),
            renew_script: Arc::new(redis::Script::new(RENEW_SCRIPT)),
            holds_at_most: config.max_inflight * config.batch_size,
        })
    }

    /// One client per partition, in partition order, sharing this one's connection.
    pub fn partitions(&self) -> Vec<StreamClient> {
        self.all
            .iter()
            .map(|p| Self {
                partition: p.index,
                stream: Arc::from(p.stream.as_str()),
                dlq: Arc::from(p.dlq.as_str()),
                ..self.clone()
            })
            .collect()
    }

    /// This client's partition number (stored with each event as `partition`).
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// This partition's stream.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// A reader on its own connection, for blocking reads of up to `block`, of any partition.
    pub async fn reader(&self, block: Duration) -> RedisResult<Reader> {
        Ok(Reader {
            conn: self.target.dedicated(block).await?,
            group: self.group.clone(),
            consumer: self.consumer.clone(),
        })
    }

    /// The shared connection, for callers that read stream state ([`evp_runtime::stream_state`])
    /// or hold a lease.
    pub fn conn(&self) -> &RedisConn {
        &self.conn
    }

    /// The consumer group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    pub async fn ping(&self) -> RedisResult<()> {
        self.conn.ping().await
    }

    /// Creates the consumer group at the start of the stream (and the stream itself) when missing.
    pub async fn ensure_group(&self) -> RedisResult<()> {
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&*self.stream)
            .arg(&*self.group)
            .arg("0")
            .arg("MKSTREAM")
            .exec_async(&mut self.conn.clone())
            .await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Acknowledges entries, all in one XACK.
    pub async fn ack(&self, ids: &[String]) -> RedisResult<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        redis::cmd("XACK")
            .arg(&*self.stream)
            .arg(&*self.group)
            .arg(ids)
            .query_async(&mut self.conn.clone())
            .await
    }

    /// Resets the idle time of entries this worker is still writing, without counting a
    /// delivery (XCLAIM ... JUSTID), so no other worker claims them meanwhile. Entries another
    /// worker has claimed since are left to it. Returns how many were renewed.
    pub async fn renew(&self, ids: &[String]) -> RedisResult<u64> {
        let mut parsed = ids.iter().filter_map(|id| parse_id(id));
        let Some(first) = parsed.next() else { return Ok(0) };
        let (low, high) = parsed.fold((first, first), |(lo, hi), id| (lo.min(id), hi.max(id)));
        // Every entry this consumer holds in the range: its batches in flight, at most.
        let look_at = ids.len() + self.holds_at_most;
        let mut invocation = self.renew_script.key(&*self.stream);
        invocation
            .arg(&*self.group)
            .arg(&*self.consumer)
            .arg(format!("{}-{}", low.0, low.1))
            .arg(format!("{}-{}", high.0, high.1))
            .arg(look_at)
            .arg(ids);
        invocation.invoke_async(&mut self.conn.clone()).await
    }

    /// Pending entries of any consumer idle for at least `min_idle`, oldest first.
    pub async fn idle_pending(&self, min_idle: Duration, count: usize) -> RedisResult<Vec<StreamPendingId>> {
        let reply: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&*self.stream)
            .arg(&*self.group)
            .arg("IDLE")
            .arg(min_idle.as_millis() as u64)
            .arg("-")
            .arg("+")
            .arg(count)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(reply.ids)
    }

    /// Takes over entries still idle for `min_idle` (a delivery is counted). Entries another
    /// worker renewed or claimed first are not returned.
    pub async fn claim(&self, min_idle: Duration, ids: &[String]) -> RedisResult<Vec<StreamId>> {
        let reply: StreamClaimReply = redis::cmd("XCLAIM")
            .arg(&*self.stream)
            .arg(&*self.group)
            .arg(&*self.consumer)
            .arg(min_idle.as_millis() as u64)
            .arg(ids)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(reply.ids)
    }

    /// Moves entries to the dead-letter stream and acknowledges them on the main stream, in one
    /// MULTI/EXEC: an entry is never acknowledged without its dead letter, nor dead-lettered twice.
    pub async fn dead_letter(&self, letters: &[DeadLetter], now_rfc3339: &str) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for letter in letters {
            let xadd = pipe.cmd("XADD").arg(&*self.dlq).arg("*");
            for (name, value) in &letter.entry.fields {
                xadd.arg(name).arg(value);
            }
            xadd.arg("dlq_reason")
                .arg(&letter.reason)
                .arg("dlq_deliveries")
                .arg(letter.entry.deliveries)
                .arg("dlq_source_id")
                .arg(&letter.entry.id)
                .arg("dlq_group")
                .arg(&*self.group)
                .arg("dlq_consumer")
                .arg(&*self.consumer)
                .arg("dlq_at")
                .arg(now_rfc3339)
                .ignore();
        }
        let ids: Vec<&str> = letters.iter().map(|l| l.entry.id.as_str()).collect();
        pipe.cmd("XACK").arg(&*self.stream).arg(&*self.group).arg(ids).ignore();
        pipe.exec_async(&mut self.conn.clone()).await
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
        let mut boundary: Option<(u64, u64)> = None;
        let mut ours = None;
        for group in &groups.groups {
            let group_boundary = if group.pending > 0 {
                let summary: StreamPendingReply =
                    redis::cmd("XPENDING").arg(&*self.stream).arg(&group.name).query_async(&mut conn).await?;
                match summary {
                    StreamPendingReply::Data(data) => parse_id(&data.start_id),
                    _ => parse_id(&group.last_delivered_id).map(next_id),
                }
            } else {
                parse_id(&group.last_delivered_id).map(next_id)
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
        let Some((ms, seq)) = boundary else { return Ok(None) };
        let trimmed: u64 = redis::cmd("XTRIM")
            .arg(&*self.stream)
            .arg("MINID")
            .arg(format!("{ms}-{seq}"))
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

/// A consumer's blocking reader, on its own connection.
pub struct Reader {
    conn: RedisConn,
    group: Arc<str>,
    consumer: Arc<str>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").field("consumer", &self.consumer).finish()
    }
}

impl Reader {
    /// XREADGROUP on `stream`: `from` is `>` for new entries, or an id to re-read this consumer's
    /// own pending entries after it (which does not block). `block`: how long to wait for new
    /// entries (`None`: not at all).
    pub async fn read(
        &mut self,
        stream: &str,
        from: &str,
        count: usize,
        block: Option<Duration>,
    ) -> RedisResult<Vec<Entry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(&*self.group).arg(&*self.consumer).arg("COUNT").arg(count);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        let reply: Option<StreamReadReply> =
            cmd.arg("STREAMS").arg(stream).arg(from).query_async(&mut self.conn).await?;
        let ids = reply.and_then(|r| r.keys.into_iter().next()).map(|k| k.ids).unwrap_or_default();
        Ok(ids.into_iter().map(|id| to_entry(id, 1)).collect())
    }
}

/// Converts a reply entry; `deliveries` is what the caller knows of its delivery count.
pub fn to_entry(id: StreamId, deliveries: u64) -> Entry {
    let fields = id.map.into_iter().map(|(name, value)| (name, value_bytes(value))).collect();
    Entry { id: id.id, fields, deliveries }
}

fn value_bytes(value: Value) -> Vec<u8> {
    match value {
        Value::BulkString(bytes) => bytes,
        Value::SimpleString(s) => s.into_bytes(),
        other => format!("{other:?}").into_bytes(),
    }
}

pub use evp_runtime::stream_state::{next_id, parse_id};
