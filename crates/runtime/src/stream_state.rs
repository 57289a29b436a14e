//! What Redis knows about the stream and the consumer group, read the same way by the worker (the
//! rollup job's closed frontier) and the ingest (the analytics `pipeline` section).
//!
//! - [`acknowledged_frontier`]: the id below which every entry is acknowledged by the group and
//!   below which no new entry can ever be appended. Read in one MULTI (`XINFO GROUPS` and the
//!   `XPENDING` summary), so no entry can be delivered between the two reads unseen.
//! - [`snapshot`]: length, entries added, pending, lag, entries read, consumers and dead letters,
//!   for the pipeline panel; the counters Redis keeps (`entries-added`, `entries-read`) give the
//!   rates without a write on the hot path.

use std::collections::HashMap;

use crate::redis_conn::RedisConn;
use redis::streams::{StreamInfoConsumersReply, StreamInfoGroupsReply, StreamPendingReply};
use redis::{RedisResult, Value};

pub use evp_events::EntryId;

/// The exclusive frontier of `group` on `stream`: every entry with a smaller id has been delivered
/// and acknowledged, and no entry with a smaller id can be appended any more (Redis gives new
/// entries ids above the last delivered one). `None` when the stream or the group is missing.
///
/// It is the smaller of the oldest pending entry and the id after the group's last delivered
/// entry; both are read in one transaction.
pub async fn acknowledged_frontier(
    conn: &RedisConn,
    stream: &str,
    group: &str,
) -> RedisResult<Option<EntryId>> {
    let mut pipe = redis::pipe();
    pipe.atomic().cmd("XINFO").arg("GROUPS").arg(stream).cmd("XPENDING").arg(stream).arg(group);
    let reply: RedisResult<(StreamInfoGroupsReply, StreamPendingReply)> =
        pipe.query_async(&mut conn.clone()).await;
    let (groups, pending) = match reply {
        Ok(reply) => reply,
        Err(e) if is_missing(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(ours) = groups.groups.iter().find(|g| g.name == group) else { return Ok(None) };
    let Some(delivered) = EntryId::parse(&ours.last_delivered_id) else { return Ok(None) };
    let mut frontier = delivered.next();
    if let StreamPendingReply::Data(data) = pending
        && let Some(oldest) = EntryId::parse(&data.start_id)
    {
        frontier = frontier.min(oldest);
    }
    Ok(Some(frontier))
}

fn is_missing(e: &redis::RedisError) -> bool {
    let text = e.to_string();
    text.contains("no such key") || text.contains("NOGROUP")
}

/// A consumer of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerState {
    pub name: String,
    pub pending: u64,
    pub idle_ms: u64,
}

/// The stream and the group at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Entries in the stream (not yet trimmed).
    pub length: u64,
    /// Entries ever appended (`entries-added`, Redis ≥ 7).
    pub entries_added: Option<u64>,
    /// The id of the last entry appended (none while the stream does not exist).
    pub last_generated: Option<EntryId>,
    /// Entries delivered to the group and not acknowledged.
    pub pending: u64,
    /// Entries not yet delivered to the group (Redis ≥ 7).
    pub lag: Option<u64>,
    /// Entries the group has read (`entries-read`, Redis ≥ 7).
    pub entries_read: Option<u64>,
    pub consumers: Vec<ConsumerState>,
    /// Entries in the dead-letter stream.
    pub dead_letters: u64,
}

/// Reads [`Snapshot`]; a missing stream or group reads as empty.
pub async fn snapshot(conn: &RedisConn, stream: &str, dlq: &str, group: &str) -> RedisResult<Snapshot> {
    let mut conn = conn.clone();
    let mut pipe = redis::pipe();
    pipe.cmd("EXISTS").arg(stream).cmd("XLEN").arg(dlq);
    let (exists, dead_letters): (bool, u64) = pipe.query_async(&mut conn).await?;
    let mut out = Snapshot { dead_letters, ..Default::default() };
    if !exists {
        return Ok(out);
    }
    let info: HashMap<String, Value> =
        redis::cmd("XINFO").arg("STREAM").arg(stream).query_async(&mut conn).await?;
    out.length = info.get("length").and_then(number).unwrap_or(0);
    out.entries_added = info.get("entries-added").and_then(number);
    out.last_generated = info.get("last-generated-id").and_then(|v| match v {
        Value::BulkString(b) => EntryId::parse(std::str::from_utf8(b).ok()?),
        Value::SimpleString(s) => EntryId::parse(s),
        _ => None,
    });
    let groups: StreamInfoGroupsReply =
        redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(&mut conn).await?;
    let Some(ours) = groups.groups.into_iter().find(|g| g.name == group) else { return Ok(out) };
    out.pending = ours.pending as u64;
    out.lag = ours.lag.map(|l| l as u64);
    out.entries_read = ours.entries_read.map(|r| r as u64);
    let consumers: StreamInfoConsumersReply =
        redis::cmd("XINFO").arg("CONSUMERS").arg(stream).arg(group).query_async(&mut conn).await?;
    out.consumers = consumers
        .consumers
        .into_iter()
        .map(|c| ConsumerState { name: c.name, pending: c.pending as u64, idle_ms: c.idle as u64 })
        .collect();
    Ok(out)
}

fn number(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}
