//! The appender: sends one partition's appends (a batch's MULTI/EXEC, or the single events' append
//! script), counted as their tenants' unstored events, then `WAIT`s for replicas when asked to.

use std::time::{Duration, Instant};

use evp_events::entry::FIELD;
use evp_runtime::redis_conn::RedisConn;
use evp_runtime::unstored::{self, Keys};

use super::{PipelineMetrics, PublishError, bounded};

/// `XADD <stream> * e <payload>`, its buffer sized once: built argument by argument, a command's
/// buffer grows (and copies the payload) several times.
fn xadd(stream: &str, payload: &[u8]) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(5, "XADD*".len() + stream.len() + FIELD.len() + payload.len());
    cmd.arg("XADD").arg(stream).arg("*").arg(FIELD).arg(payload);
    cmd
}

/// Sends pipelines of XADDs to one partition, and `WAIT`s for replicas when asked to.
#[derive(Clone)]
pub(super) struct Appender {
    pub(super) conn: RedisConn,
    pub(super) wait_replicas: u32,
    pub(super) timeout: Duration,
    pub(super) metrics: PipelineMetrics,
}

impl Appender {
    /// All of `tenant`'s `payloads` or none, counted with them, in one MULTI/EXEC (then `WAIT`).
    pub(super) async fn atomic<'p>(
        &self,
        keys: &Keys,
        tenant: &str,
        payloads: impl ExactSizeIterator<Item = &'p [u8]>,
    ) -> Result<(), PublishError> {
        let n = payloads.len();
        let mut pipe = redis::Pipeline::with_capacity(n + 5);
        if self.wait_replicas == 0 {
            pipe.atomic();
            for payload in payloads {
                pipe.add_command(xadd(&keys.stream, payload)).ignore();
            }
            unstored::count_batch(&mut pipe, keys, tenant, n);
            return self.timed(n, pipe.exec_async(&mut self.conn.clone())).await;
        }
        // MULTI … EXEC, then WAIT on the same connection: WAIT inside the transaction would not wait.
        pipe.cmd("MULTI").ignore();
        for payload in payloads {
            pipe.add_command(xadd(&keys.stream, payload)).ignore();
        }
        unstored::count_batch(&mut pipe, keys, tenant, n);
        pipe.cmd("EXEC").ignore();
        self.add_wait(&mut pipe);
        let (confirmed,): (i64,) = self.timed(n, pipe.query_async(&mut self.conn.clone())).await?;
        self.confirmed(confirmed)
    }

    /// One XADD per `(tenant, payload)`, each with its own reply, in one script that counts those
    /// appended (then `WAIT`, whose failure fails them all).
    pub(super) async fn independent(
        &self,
        keys: &Keys,
        singles: &[(&str, &[u8])],
    ) -> Result<Vec<redis::Value>, PublishError> {
        let mut pipe = redis::Pipeline::with_capacity(2);
        pipe.ignore_errors();
        let bytes: usize = singles.iter().map(|(t, p)| t.len() + p.len() + 16).sum();
        let mut eval =
            redis::Cmd::with_capacity(6 + 2 * singles.len(), unstored::APPEND_SCRIPT.len() + 200 + bytes);
        eval.arg("EVAL")
            .arg(unstored::APPEND_SCRIPT)
            .arg(3)
            .arg(&keys.stream)
            .arg(&keys.unstored)
            .arg(&keys.totals);
        for (tenant, payload) in singles {
            eval.arg(*tenant).arg(*payload);
        }
        pipe.add_command(eval);
        if self.wait_replicas > 0 {
            self.add_wait(&mut pipe);
        }
        let mut replies: Vec<redis::Value> =
            self.timed(singles.len(), pipe.query_async(&mut self.conn.clone())).await?;
        if self.wait_replicas > 0 {
            match replies.pop() {
                Some(redis::Value::Int(confirmed)) => self.confirmed(confirmed)?,
                other => return Err(PublishError::Refused(format!("WAIT answered {other:?}"))),
            }
        }
        let replies = match replies.pop() {
            Some(redis::Value::Array(replies)) => replies,
            Some(redis::Value::ServerError(e)) => return Err(PublishError::Refused(e.to_string())),
            other => return Err(PublishError::Refused(format!("the append script answered {other:?}"))),
        };
        if replies.len() != singles.len() {
            return Err(PublishError::Refused(format!(
                "{} replies to {} XADDs",
                replies.len(),
                singles.len()
            )));
        }
        Ok(replies)
    }

    /// `WAIT <replicas> <ms>`: at most half the request's timeout, so a missing replica costs a
    /// 503 in time rather than a timeout.
    fn add_wait(&self, pipe: &mut redis::Pipeline) {
        pipe.cmd("WAIT").arg(self.wait_replicas).arg((self.timeout / 2).as_millis() as u64);
    }

    fn confirmed(&self, confirmed: i64) -> Result<(), PublishError> {
        if confirmed < i64::from(self.wait_replicas) {
            return Err(PublishError::Replicas { wanted: self.wait_replicas, got: confirmed });
        }
        Ok(())
    }

    async fn timed<T>(
        &self,
        events: usize,
        call: impl Future<Output = Result<T, redis::RedisError>>,
    ) -> Result<T, PublishError> {
        let started = Instant::now();
        let result = bounded(self.timeout, call).await;
        self.metrics.seconds.record(started.elapsed().as_secs_f64());
        self.metrics.events.record(events as f64);
        result
    }
}
