//! The coalescer of single events: takes every single event queued at that moment and sends them
//! as one script of independent XADDs per partition, each with its own reply.

use std::sync::Arc;

use evp_runtime::partitions::Partitions;
use evp_runtime::unstored::Keys;
use futures::future::join_all;
use tokio::sync::{Semaphore, mpsc};

use super::{Appender, MAX_COALESCED, MAX_PIPELINES, PublishError, Single};

/// Sends queued single events as pipelines, at most [`MAX_PIPELINES`] at a time.
pub(super) struct Coalescer {
    pub(super) appender: Appender,
    /// Each partition's per-tenant counts, by partition index.
    pub(super) counts: Arc<[Keys]>,
}

impl Coalescer {
    pub(super) async fn run(self, mut queue: mpsc::Receiver<Single>, partitions: Arc<Partitions>) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(MAX_PIPELINES));
        loop {
            // Take a pipeline slot first: while every slot is busy, events keep queueing and the
            // next pipeline takes them all.
            let Ok(slot) = slots.clone().acquire_owned().await else { return };
            let mut batch = Vec::with_capacity(MAX_COALESCED);
            if queue.recv_many(&mut batch, MAX_COALESCED).await == 0 {
                return; // every publisher is gone
            }
            let this = this.clone();
            let partitions = partitions.clone();
            tokio::spawn(async move {
                this.send(batch, &partitions).await;
                drop(slot);
            });
        }
    }

    /// One pipeline per partition among `batch`, sent concurrently.
    pub(super) async fn send(&self, mut batch: Vec<Single>, partitions: &Partitions) {
        // A request that gave up (timed out, or its client went away) has answered 503 or
        // nothing: its event must not be appended behind its back.
        batch.retain(|single| !single.reply.is_closed());
        if batch.is_empty() {
            return;
        }
        if partitions.len() == 1 {
            return self.send_to(&self.counts[0], batch).await;
        }
        let mut by_partition: Vec<Vec<Single>> = (0..partitions.len()).map(|_| Vec::new()).collect();
        for single in batch {
            by_partition[partitions.for_hash(single.route).index as usize].push(single);
        }
        let sends = self
            .counts
            .iter()
            .zip(by_partition)
            .filter(|(_, singles)| !singles.is_empty())
            .map(|(keys, singles)| self.send_to(keys, singles));
        join_all(sends).await;
    }

    async fn send_to(&self, keys: &Keys, batch: Vec<Single>) {
        let singles: Vec<(&str, &[u8])> = batch.iter().map(|s| (&*s.tenant, s.payload.as_slice())).collect();
        let outcome = self.appender.independent(keys, &singles).await;
        drop(singles);
        match outcome {
            Ok(replies) => {
                for (single, reply) in batch.into_iter().zip(replies) {
                    let outcome = match reply {
                        redis::Value::ServerError(e) => Err(PublishError::Refused(e.to_string())),
                        _ => Ok(()),
                    };
                    let _ = single.reply.send(outcome);
                }
            }
            Err(e) => batch.into_iter().for_each(|single| drop(single.reply.send(Err(e.clone())))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use evp_runtime::redis_conn::RedisTarget;
    use evp_testkit::RedisServer;
    use tokio::sync::oneshot;

    use super::super::StreamPublisher;
    use super::*;

    fn single(payload: &str) -> (Single, oneshot::Receiver<Result<(), PublishError>>) {
        let (reply, outcome) = oneshot::channel();
        (Single { tenant: Arc::from("acme"), payload: payload.as_bytes().to_vec(), route: 0, reply }, outcome)
    }

    #[tokio::test]
    async fn an_event_whose_request_gave_up_is_not_sent_and_the_others_get_their_own_replies() {
        let redis = RedisServer::start();
        let target = RedisTarget::new(&redis.url(), false).unwrap();
        let publisher =
            StreamPublisher::new(target, Partitions::new("events", 1), "g", 0, Duration::from_secs(2))
                .unwrap();
        let coalescer = publisher.coalescer();
        let (kept, kept_outcome) = single("kept");
        let (abandoned, abandoned_outcome) = single("abandoned");
        drop(abandoned_outcome); // the request timed out or its client went away
        let (also_kept, also_kept_outcome) = single("also kept");
        coalescer.send(vec![kept, abandoned, also_kept], &publisher.partitions).await;

        assert!(kept_outcome.await.unwrap().is_ok());
        assert!(also_kept_outcome.await.unwrap().is_ok());
        let mut conn = redis.connection().await;
        let entries: Vec<(String, Vec<(String, String)>)> =
            redis::cmd("XRANGE").arg("events").arg("-").arg("+").query_async(&mut conn).await.unwrap();
        let payloads: Vec<&str> = entries.iter().map(|(_, fields)| fields[0].1.as_str()).collect();
        assert_eq!(payloads, ["kept", "also kept"]);
        let counted: u64 =
            redis::cmd("HGET").arg("events:unstored:g").arg("acme").query_async(&mut conn).await.unwrap();
        assert_eq!(counted, 2, "the two appended events are counted, the abandoned one is not");
    }
}
