//! The dead-letter streams (`<stream>:dlq` of every partition): list, replay to the partition's
//! stream, purge. One implementation behind both `evp-worker dlq …` and the ingest's
//! `/admin/dlq*`.
//!
//! A dead letter's id is its entry id in its dead-letter stream; with more than one partition it
//! is prefixed by the partition, `<partition>:<entry id>`, so ids stay unique and pages run
//! partition by partition in order.
//!
//! A dead letter keeps the entry's original fields and adds a [`Stamp`]: `dlq_reason`, `dlq_deliveries`,
//! `dlq_source_id`, `dlq_group`, `dlq_consumer` and `dlq_at`. Replaying copies the original fields
//! back to the main stream as a new entry and deletes the dead letter in one script
//! ([`crate::unstored::REPLAY_SCRIPT`], which also counts it as its tenant's unstored event), so
//! an entry is never in both streams nor in neither, and two replays racing move it once. "All" means the dead letters present when the
//! command starts (read in pages), so entries that fail again while it runs are not replayed in a
//! loop.

use crate::partitions::{Partition, Partitions};
use crate::redis_conn::RedisConn;
use redis::streams::{StreamId, StreamRangeReply};
use redis::{RedisResult, Value};
use serde::Serialize;
use serde_json::Value as Json;

/// Prefix of the fields the dead-letter stream adds to an entry's original fields.
pub const DLQ_PREFIX: &str = "dlq_";
const REASON: &str = "dlq_reason";
const DELIVERIES: &str = "dlq_deliveries";
const SOURCE_ID: &str = "dlq_source_id";
const GROUP: &str = "dlq_group";
const CONSUMER: &str = "dlq_consumer";
const AT: &str = "dlq_at";

/// What a dead letter adds to its entry's own fields: written by the worker ([`Stamp::fields`]),
/// read back here ([`DeadLetters::page`]), so the two name the fields once.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    /// What went wrong, for a person.
    pub reason: &'a str,
    /// Deliveries the entry had.
    pub deliveries: u64,
    /// Its id in the main stream.
    pub source_id: &'a str,
    pub group: &'a str,
    pub consumer: &'a str,
    /// When, RFC 3339.
    pub at: &'a str,
}

impl Stamp<'_> {
    /// The stamp's fields and values, for an `XADD` that also holds the entry's own.
    pub fn fields(&self) -> [(&'static str, String); 6] {
        [
            (REASON, self.reason.to_owned()),
            (DELIVERIES, self.deliveries.to_string()),
            (SOURCE_ID, self.source_id.to_owned()),
            (GROUP, self.group.to_owned()),
            (CONSUMER, self.consumer.to_owned()),
            (AT, self.at.to_owned()),
        ]
    }
}
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
    /// Its id (what replay and purge take): the entry id in the dead-letter stream, prefixed by
    /// `<partition>:` when there is more than one partition.
    pub id: String,
    /// The partition it came from (0 with one partition).
    pub partition: u32,
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

/// The dead letters of every partition.
#[derive(Clone)]
pub struct DeadLetters {
    conn: RedisConn,
    partitions: Partitions,
    /// The workers' consumer group, whose unstored counts a replayed entry joins.
    group: String,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters").field("partitions", &self.partitions.len()).finish()
    }
}

impl DeadLetters {
    /// On `conn`, for `partitions` (each one's dead letters are in its `<stream>:dlq`) and the
    /// workers' consumer `group`.
    pub fn new(conn: RedisConn, partitions: Partitions, group: &str) -> Self {
        Self { conn, partitions, group: group.to_string() }
    }

    /// Whether `id` has the shape of a dead letter's id here (not whether it exists).
    pub fn is_valid_id(&self, id: &str) -> bool {
        self.parse_id(id).is_some()
    }

    /// `(partition, entry id)` of a dead letter's id.
    fn parse_id<'a>(&self, id: &'a str) -> Option<(&Partition, &'a str)> {
        let (partition, entry) = match id.split_once(':') {
            Some((p, entry)) if self.partitions.len() > 1 => (self.partitions.get(p.parse().ok()?)?, entry),
            None if self.partitions.len() == 1 => (self.partitions.get(0)?, id),
            _ => return None,
        };
        crate::stream_state::EntryId::parse(entry).map(|_| (partition, entry))
    }

    fn letter_id(&self, partition: &Partition, entry: &str) -> String {
        if self.partitions.len() > 1 { format!("{}:{entry}", partition.index) } else { entry.to_string() }
    }

    /// Number of dead letters.
    pub async fn len(&self) -> RedisResult<u64> {
        let mut total = 0;
        for partition in &self.partitions {
            let n: u64 = redis::cmd("XLEN").arg(&partition.dlq).query_async(&mut self.conn.clone()).await?;
            total += n;
        }
        Ok(total)
    }

    /// Up to `limit` dead letters after the id `after` (from the first when `None`), partition by
    /// partition, oldest first within each, and whether more follow. An `after` that is not a
    /// dead letter's id reads as the start.
    pub async fn page(&self, after: Option<&str>, limit: usize) -> RedisResult<(Vec<DeadLetter>, bool)> {
        let after = after.and_then(|id| self.parse_id(id));
        let first = after.map_or(0, |(p, _)| p.index);
        let mut found = Vec::new();
        for partition in self.partitions.iter().skip(first as usize) {
            let start = match after {
                Some((p, id)) if p.index == partition.index => format!("({id}"),
                _ => "-".to_string(),
            };
            let reply: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&partition.dlq)
                .arg(start)
                .arg("+")
                .arg("COUNT")
                .arg(limit + 1 - found.len())
                .query_async(&mut self.conn.clone())
                .await?;
            found.extend(reply.ids.into_iter().map(|letter| self.describe(partition, letter)));
            if found.len() > limit {
                break;
            }
        }
        let more = found.len() > limit;
        found.truncate(limit);
        Ok((found, more))
    }

    /// Moves the selected dead letters back to their partition's stream; returns how many moved.
    pub async fn replay(&self, selection: &Selection) -> RedisResult<usize> {
        let script = redis::Script::new(crate::unstored::REPLAY_SCRIPT);
        let mut moved = 0;
        for (partition, letters) in self.select(selection).await? {
            let keys = crate::unstored::Keys::new(&partition, &self.group);
            for letter in letters {
                let tenant = letter
                    .map
                    .get(evp_events::entry::FIELD)
                    .map(|payload| crate::unstored::tenant_of(&bytes(payload)))
                    .unwrap_or_default();
                let mut invocation = script.key(&partition.dlq);
                invocation.key(&keys.stream).key(&keys.unstored).key(&keys.totals);
                invocation.arg(&letter.id).arg(tenant);
                for (name, value) in &letter.map {
                    if !name.starts_with(DLQ_PREFIX) {
                        invocation.arg(name).arg(bytes(value));
                    }
                }
                let n: usize = invocation.invoke_async(&mut self.conn.clone()).await?;
                moved += n;
            }
        }
        Ok(moved)
    }

    /// Deletes the selected dead letters; returns how many were deleted.
    pub async fn purge(&self, selection: &Selection) -> RedisResult<usize> {
        let mut deleted = 0;
        for (partition, letters) in self.select(selection).await? {
            let ids: Vec<String> = letters.into_iter().map(|l| l.id).collect();
            for chunk in ids.chunks(1000) {
                let n: usize = redis::cmd("XDEL")
                    .arg(&partition.dlq)
                    .arg(chunk)
                    .query_async(&mut self.conn.clone())
                    .await?;
                deleted += n;
            }
        }
        Ok(deleted)
    }

    /// The selected dead letters that exist, by partition.
    async fn select(&self, selection: &Selection) -> RedisResult<Vec<(Partition, Vec<StreamId>)>> {
        let mut out = Vec::new();
        for partition in &self.partitions {
            let letters = match selection {
                Selection::Ids(ids) => {
                    let mut found = Vec::new();
                    for id in ids {
                        let Some((p, entry)) = self.parse_id(id) else { continue };
                        if p.index != partition.index {
                            continue;
                        }
                        let reply: StreamRangeReply = redis::cmd("XRANGE")
                            .arg(&partition.dlq)
                            .arg(entry)
                            .arg(entry)
                            .query_async(&mut self.conn.clone())
                            .await?;
                        found.extend(reply.ids);
                    }
                    found
                }
                Selection::All => self.all_of(partition).await?,
            };
            if !letters.is_empty() {
                out.push((partition.clone(), letters));
            }
        }
        Ok(out)
    }

    /// Every dead letter of `partition` present now: the end is fixed first, so letters added
    /// while a command works are not part of it.
    async fn all_of(&self, partition: &Partition) -> RedisResult<Vec<StreamId>> {
        let mut conn = self.conn.clone();
        let last: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&partition.dlq)
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
                .arg(&partition.dlq)
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

    fn describe(&self, partition: &Partition, letter: StreamId) -> DeadLetter {
        let id = self.letter_id(partition, &letter.id);
        DeadLetter { id, partition: partition.index, ..describe(letter) }
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
        reason: field(REASON),
        deliveries: field(DELIVERIES).and_then(|d| d.parse().ok()),
        source_id: field(SOURCE_ID),
        consumer: field(CONSUMER),
        at: field(AT),
        raw: if event.is_none() { payload } else { None },
        event,
        id: letter.id,
        partition: 0,
    }
}
