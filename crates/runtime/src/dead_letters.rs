//! The dead-letter stream (`<EVENTS_STREAM>:dlq`): list, replay to the main stream, purge. One
//! implementation behind both `evp-worker dlq …` and the ingest's `/admin/dlq*`.
//!
//! A dead letter keeps the entry's original fields and adds `dlq_reason`, `dlq_deliveries`,
//! `dlq_source_id`, `dlq_group`, `dlq_consumer` and `dlq_at`. Replaying copies the original fields
//! back to the main stream as a new entry and deletes the dead letter in one MULTI/EXEC, so an
//! entry is never in both streams nor in neither. "All" means the dead letters present when the
//! command starts (read in pages), so entries that fail again while it runs are not replayed in a
//! loop.

use redis::aio::ConnectionManager;
use redis::streams::{StreamId, StreamRangeReply};
use redis::{RedisResult, Value};
use serde::Serialize;
use serde_json::Value as Json;

/// Prefix of the fields the dead-letter stream adds to an entry's original fields.
pub const DLQ_PREFIX: &str = "dlq_";
/// Dead letters read per round trip by "all".
const PAGE: usize = 500;

/// Which dead letters a command applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    Ids(Vec<String>),
}

/// One dead letter, for people and for the admin API.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadLetter {
    /// Its id in the dead-letter stream (what replay and purge take).
    pub id: String,
    /// Why it was dead-lettered.
    pub reason: Option<String>,
    /// Deliveries it had when it was dead-lettered.
    pub deliveries: Option<u64>,
    /// Its id in the main stream.
    pub source_id: Option<String>,
    /// The consumer that dead-lettered it, and when (RFC 3339).
    pub consumer: Option<String>,
    pub at: Option<String>,
    /// The event as it was in the stream (the entry's JSON), when it is JSON.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub event: Option<Json>,
    /// The entry's payload as text, when it is not JSON.
    pub raw: Option<String>,
    /// Any other field the entry had (an entry something else wrote), as text.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub other_fields: std::collections::BTreeMap<String, String>,
}

/// The dead letters of one stream.
#[derive(Clone)]
pub struct DeadLetters {
    conn: ConnectionManager,
    stream: String,
    dlq: String,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters").field("dlq", &self.dlq).finish()
    }
}

impl DeadLetters {
    /// On `conn`, for the stream named `stream` (its dead letters are in `<stream>:dlq`).
    pub fn new(conn: ConnectionManager, stream: &str) -> Self {
        Self { conn, stream: stream.to_string(), dlq: format!("{stream}:dlq") }
    }

    /// Number of dead letters.
    pub async fn len(&self) -> RedisResult<u64> {
        redis::cmd("XLEN").arg(&self.dlq).query_async(&mut self.conn.clone()).await
    }

    /// Up to `limit` dead letters after the id `after` (from the oldest when `None`), oldest
    /// first, and whether more follow.
    pub async fn page(&self, after: Option<&str>, limit: usize) -> RedisResult<(Vec<DeadLetter>, bool)> {
        let start = after.map_or_else(|| "-".to_string(), |id| format!("({id}"));
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.dlq)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(limit + 1)
            .query_async(&mut self.conn.clone())
            .await?;
        let more = reply.ids.len() > limit;
        Ok((reply.ids.into_iter().take(limit).map(describe).collect(), more))
    }

    /// Moves the selected dead letters back to the main stream; returns how many moved.
    pub async fn replay(&self, selection: &Selection) -> RedisResult<usize> {
        let mut moved = 0;
        for letter in self.select(selection).await? {
            let mut pipe = redis::pipe();
            pipe.atomic();
            let xadd = pipe.cmd("XADD").arg(&self.stream).arg("*");
            for (name, value) in &letter.map {
                if !name.starts_with(DLQ_PREFIX) {
                    xadd.arg(name).arg(bytes(value));
                }
            }
            xadd.ignore();
            pipe.cmd("XDEL").arg(&self.dlq).arg(&letter.id).ignore();
            pipe.exec_async(&mut self.conn.clone()).await?;
            moved += 1;
        }
        Ok(moved)
    }

    /// Deletes the selected dead letters; returns how many were deleted.
    pub async fn purge(&self, selection: &Selection) -> RedisResult<usize> {
        let ids: Vec<String> = self.select(selection).await?.into_iter().map(|l| l.id).collect();
        let mut deleted = 0;
        for chunk in ids.chunks(1000) {
            let n: usize =
                redis::cmd("XDEL").arg(&self.dlq).arg(chunk).query_async(&mut self.conn.clone()).await?;
            deleted += n;
        }
        Ok(deleted)
    }

    async fn select(&self, selection: &Selection) -> RedisResult<Vec<StreamId>> {
        let mut conn = self.conn.clone();
        match selection {
            Selection::Ids(ids) => {
                let mut found = Vec::new();
                for id in ids {
                    let reply: StreamRangeReply =
                        redis::cmd("XRANGE").arg(&self.dlq).arg(id).arg(id).query_async(&mut conn).await?;
                    found.extend(reply.ids);
                }
                Ok(found)
            }
            Selection::All => {
                // Fix the end first: letters added while we work are not part of this run.
                let last: StreamRangeReply = redis::cmd("XREVRANGE")
                    .arg(&self.dlq)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn)
                    .await?;
                let Some(end) = last.ids.into_iter().next().map(|l| l.id) else { return Ok(Vec::new()) };
                let mut found: Vec<StreamId> = Vec::new();
                loop {
                    let start = found.last().map_or_else(|| "-".to_string(), |l| format!("({}", l.id));
                    let reply: StreamRangeReply = redis::cmd("XRANGE")
                        .arg(&self.dlq)
                        .arg(start)
                        .arg(&end)
                        .arg("COUNT")
                        .arg(PAGE)
                        .query_async(&mut conn)
                        .await?;
                    let n = reply.ids.len();
                    found.extend(reply.ids);
                    if n < PAGE {
                        return Ok(found);
                    }
                }
            }
        }
    }
}

fn bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::BulkString(bytes) => bytes.clone(),
        other => text(other).unwrap_or_default().into_bytes(),
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn describe(letter: StreamId) -> DeadLetter {
    let field = |name: &str| letter.map.get(name).and_then(text);
    let payload = field(evp_events::entry::FIELD);
    let event = payload.as_deref().and_then(|p| serde_json::from_str::<Json>(p).ok());
    let other_fields = letter
        .map
        .iter()
        .filter(|(name, _)| !name.starts_with(DLQ_PREFIX) && name.as_str() != evp_events::entry::FIELD)
        .map(|(name, value)| (name.clone(), text(value).unwrap_or_default()))
        .collect();
    DeadLetter {
        other_fields,
        reason: field("dlq_reason"),
        deliveries: field("dlq_deliveries").and_then(|d| d.parse().ok()),
        source_id: field("dlq_source_id"),
        consumer: field("dlq_consumer"),
        at: field("dlq_at"),
        raw: if event.is_none() { payload } else { None },
        event,
        id: letter.id,
    }
}
