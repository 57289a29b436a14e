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
//!
//! Here: the client, acknowledging, claiming and dead-lettering, and the reader; `upkeep`:
//! trimming, departed consumers and the unstored counts' reconciliation.

use std::sync::Arc;
use std::time::Duration;

use evp_runtime::partitions::Partitions;
use evp_runtime::redis_conn::{RedisConn, RedisTarget};
use evp_runtime::unstored::{self, Keys};
use redis::streams::{StreamClaimReply, StreamId, StreamPendingCountReply, StreamPendingId, StreamReadReply};
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
    /// Stored with the entry as its reason ([`Stamp`]): what went wrong, for a person.
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
pub use evp_runtime::dead_letters::Stamp;
pub use upkeep::GroupState;

mod upkeep;

/// The tenant an entry was counted under, read leniently (empty when it has none).
fn entry_tenant(entry: &Entry) -> String {
    entry
        .fields
        .iter()
        .find(|(name, _)| name == evp_events::entry::FIELD)
        .map(|(_, payload)| unstored::tenant_of(payload))
        .unwrap_or_default()
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
    /// The partition's per-tenant counts ([`evp_runtime::unstored`]).
    counts: Arc<Keys>,
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
            counts: Arc::new(Keys::new(first, &config.group)),
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
                counts: Arc::new(Keys::new(p, &self.group)),
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

    /// Acknowledges stored entries, given as `(id, tenant)`, in one script that also takes them
    /// off their tenants' unstored counts ([`unstored::ACK_SCRIPT`]). Returns how many were still
    /// pending.
    pub async fn ack(&self, entries: &[(String, String)]) -> RedisResult<u64> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        let groups = unstored::by_tenant(entries.iter().map(|(id, tenant)| (id.as_str(), tenant.as_str())));
        unstored::add_ack(&mut pipe, &self.counts, &self.group, true, groups);
        let (acked,): (u64,) = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(acked)
    }

    /// Resets the idle time of entries this worker is still writing, without counting a
    /// delivery (XCLAIM ... JUSTID), so no other worker claims them meanwhile. Entries another
    /// worker has claimed since are left to it. Returns how many were renewed.
    pub async fn renew(&self, ids: &[String]) -> RedisResult<u64> {
        let mut parsed = ids.iter().filter_map(|id| EntryId::parse(id));
        let Some(first) = parsed.next() else { return Ok(0) };
        let (low, high) = parsed.fold((first, first), |(lo, hi), id| (lo.min(id), hi.max(id)));
        // Every entry this consumer holds in the range: its batches in flight, at most.
        let look_at = ids.len() + self.holds_at_most;
        let mut invocation = self.renew_script.key(&*self.stream);
        invocation
            .arg(&*self.group)
            .arg(&*self.consumer)
            .arg(low.to_string())
            .arg(high.to_string())
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
            let stamp = Stamp {
                reason: &letter.reason,
                deliveries: letter.entry.deliveries,
                source_id: &letter.entry.id,
                group: &self.group,
                consumer: &self.consumer,
                at: now_rfc3339,
            };
            for (name, value) in stamp.fields() {
                xadd.arg(name).arg(value);
            }
            xadd.ignore();
        }
        let tenants: Vec<String> = letters.iter().map(|l| entry_tenant(&l.entry)).collect();
        let groups =
            unstored::by_tenant(letters.iter().zip(&tenants).map(|(l, t)| (l.entry.id.as_str(), t.as_str())));
        unstored::add_ack(&mut pipe, &self.counts, &self.group, false, groups);
        pipe.ignore();
        pipe.exec_async(&mut self.conn.clone()).await
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

pub use evp_runtime::stream_state::EntryId;
