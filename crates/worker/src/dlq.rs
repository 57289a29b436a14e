//! Operating the dead-letter stream: list, replay to the main stream, purge.
//!
//! A dead letter keeps the entry's original fields and adds `dlq_reason`, `dlq_deliveries`,
//! `dlq_source_id`, `dlq_group`, `dlq_consumer` and `dlq_at`. Replaying copies the original fields
//! back to the main stream as a new entry and deletes the dead letter, atomically, so an entry is
//! never in both streams nor in neither. `--all` works on the dead letters present when it starts,
//! so entries that fail again while it runs are not replayed in a loop.

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamRangeReply};
use serde_json::{Value, json};

use crate::stream::{DLQ_PREFIX, to_entry};

/// Which dead letters a command applies to.
#[derive(Debug, Clone)]
pub enum Selection {
    All,
    Ids(Vec<String>),
}

#[derive(Debug)]
pub struct DeadLetters {
    conn: MultiplexedConnection,
    stream: String,
    dlq: String,
}

impl DeadLetters {
    pub async fn connect(redis_url: &str, stream: &str) -> redis::RedisResult<Self> {
        let conn = redis::Client::open(redis_url)?.get_multiplexed_async_connection().await?;
        Ok(Self { conn, stream: stream.to_string(), dlq: format!("{stream}:dlq") })
    }

    /// The oldest `count` dead letters, as JSON objects (the event decoded when it is JSON).
    pub async fn list(&mut self, count: usize) -> redis::RedisResult<Vec<Value>> {
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.dlq)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn)
            .await?;
        Ok(reply.ids.into_iter().map(describe).collect())
    }

    /// Number of dead letters.
    pub async fn len(&mut self) -> redis::RedisResult<u64> {
        redis::cmd("XLEN").arg(&self.dlq).query_async(&mut self.conn).await
    }

    /// Moves the selected dead letters back to the main stream; returns how many moved.
    pub async fn replay(&mut self, selection: &Selection) -> redis::RedisResult<usize> {
        let mut moved = 0;
        for letter in self.select(selection).await? {
            let entry = to_entry(letter, 0);
            let mut pipe = redis::pipe();
            pipe.atomic();
            let xadd = pipe.cmd("XADD").arg(&self.stream).arg("*");
            for (name, value) in entry.fields.iter().filter(|(name, _)| !name.starts_with(DLQ_PREFIX)) {
                xadd.arg(name).arg(value);
            }
            xadd.ignore();
            pipe.cmd("XDEL").arg(&self.dlq).arg(&entry.id).ignore();
            pipe.exec_async(&mut self.conn).await?;
            moved += 1;
        }
        Ok(moved)
    }

    /// Deletes the selected dead letters; returns how many were deleted.
    pub async fn purge(&mut self, selection: &Selection) -> redis::RedisResult<usize> {
        let ids: Vec<String> = self.select(selection).await?.into_iter().map(|l| l.id).collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let mut deleted = 0;
        for chunk in ids.chunks(1000) {
            let n: usize = redis::cmd("XDEL").arg(&self.dlq).arg(chunk).query_async(&mut self.conn).await?;
            deleted += n;
        }
        Ok(deleted)
    }

    async fn select(&mut self, selection: &Selection) -> redis::RedisResult<Vec<StreamId>> {
        match selection {
            Selection::Ids(ids) => {
                let mut found = Vec::new();
                for id in ids {
                    let reply: StreamRangeReply = redis::cmd("XRANGE")
                        .arg(&self.dlq)
                        .arg(id)
                        .arg(id)
                        .query_async(&mut self.conn)
                        .await?;
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
                    .query_async(&mut self.conn)
                    .await?;
                let Some(end) = last.ids.into_iter().next().map(|l| l.id) else { return Ok(Vec::new()) };
                let reply: StreamRangeReply = redis::cmd("XRANGE")
                    .arg(&self.dlq)
                    .arg("-")
                    .arg(&end)
                    .query_async(&mut self.conn)
                    .await?;
                Ok(reply.ids)
            }
        }
    }
}

fn describe(letter: StreamId) -> Value {
    let entry = to_entry(letter, 0);
    let mut meta = serde_json::Map::new();
    let mut original = serde_json::Map::new();
    for (name, value) in &entry.fields {
        let text = String::from_utf8_lossy(value).into_owned();
        match name.strip_prefix(DLQ_PREFIX) {
            Some(key) => {
                meta.insert(key.to_string(), Value::String(text));
            }
            None => {
                let parsed = serde_json::from_str(&text).unwrap_or(Value::String(text));
                original.insert(name.clone(), parsed);
            }
        }
    }
    json!({"id": entry.id, "dead_letter": meta, "fields": original})
}
