//! Acknowledged entries are trimmed; an entry any group has not acknowledged never is.

use std::time::Duration;

use crate::helpers::{GROUP, Pipeline, STREAM, eventually};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn trimming_keeps_every_entry_some_group_still_needs() {
    let p = Pipeline::start().await;
    p.publish("acme", "t", 10).await;
    // A consumer that read the first five and never acknowledged them.
    let held = p.read_as_ghost("ghost", 5).await;
    let w = p.worker("w", &[("WORKER_CLAIM_IDLE_MS", "600000")]);
    assert_eq!(p.wait_for_count(5, WAIT).await, 5);

    // Several trim rounds later nothing is gone: the oldest entry is still unacknowledged.
    w.wait_for_trim_rounds(3.0).await;
    assert_eq!(p.xlen(STREAM).await, 10);

    // Acknowledge three of the held entries: those go, the two unacknowledged ones stay.
    let _: u64 = p.redis_query(redis::cmd("XACK").arg(STREAM).arg(GROUP).arg(&held[..3])).await;
    assert!(eventually(WAIT, || async { p.xlen(STREAM).await == 7 }).await);
    let remaining: redis::streams::StreamRangeReply =
        p.redis_query(redis::cmd("XRANGE").arg(STREAM).arg("-").arg("+")).await;
    let remaining: Vec<String> = remaining.ids.into_iter().map(|e| e.id).collect();
    assert_eq!(&remaining[..2], &held[3..], "unacknowledged entries must survive trimming");

    let _: u64 = p.redis_query(redis::cmd("XACK").arg(STREAM).arg(GROUP).arg(&held[3..])).await;
    assert!(
        eventually(WAIT, || async { p.xlen(STREAM).await == 0 }).await,
        "everything acknowledged is trimmed"
    );
    // Entries acknowledged by hand were never uncounted: a drift, reset once nothing is unstored.
    assert!(eventually(WAIT, || async { p.unstored().await.is_empty() }).await);
    assert_eq!(w.metric("evp_worker_unstored_counts_reconciled_total").await, 1.0);

    // Another group that has read nothing yet holds everything from its position on.
    let _: () = p.redis_query(redis::cmd("XGROUP").arg("CREATE").arg(STREAM).arg("audit").arg("$")).await;
    p.publish("acme", "u", 5).await;
    assert_eq!(p.wait_for_count(10, WAIT).await, 10);
    assert!(eventually(WAIT, || async { p.pending(GROUP).await == 0 }).await);
    w.wait_for_trim_rounds(3.0).await;
    assert_eq!(p.xlen(STREAM).await, 5, "entries the audit group has not read were trimmed");
}

#[tokio::test]
async fn departed_consumers_are_forgotten_only_when_they_hold_nothing() {
    let p = Pipeline::start().await;
    p.publish("acme", "c", 4).await;
    p.read_as_ghost("holder", 2).await;
    p.read_as_ghost("finished", 2).await;
    let _: u64 =
        p.redis_query(redis::cmd("XACK").arg(STREAM).arg(GROUP).arg(p.read_ids_of("finished").await)).await;
    let env =
        evp_runtime::config::Env::from_pairs([("REDIS_URL", p.redis.url()), ("CONSUMER_NAME", "me".into())]);
    let config = evp_worker::WorkerConfig::from_env(&env).unwrap();
    let client = evp_worker::stream::StreamClient::new(&config).unwrap();

    let removed = client.remove_departed_consumers(Duration::ZERO).await.unwrap();
    assert_eq!(removed, 1);
    let consumers: redis::streams::StreamInfoConsumersReply =
        p.redis_query(redis::cmd("XINFO").arg("CONSUMERS").arg(STREAM).arg(GROUP)).await;
    let names: Vec<String> = consumers.consumers.into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["holder"], "a consumer with pending entries must never be removed");
    assert_eq!(p.pending_of("holder").await, 2);
}
