//! Each tenant's unstored count (`evp_runtime::unstored`): exact through repeated
//! acknowledgements, and reconciled when something outside evp changed the stream.

use std::time::Duration;

use evp_runtime::unstored;

use crate::helpers::{GROUP, Pipeline, STREAM, counts, eventually};

const WAIT: Duration = Duration::from_secs(60);

/// Runs the worker's acknowledgement script for `(id, tenant)` pairs; returns what it answers.
async fn ack(p: &Pipeline, entries: &[(&str, &str)]) -> u64 {
    let mut pipe = redis::pipe();
    unstored::add_ack(&mut pipe, &counts(), GROUP, true, unstored::by_tenant(entries.iter().copied()));
    let (acked,): (u64,) = pipe.query_async(&mut p.redis.connection().await).await.unwrap();
    acked
}

#[tokio::test]
async fn an_entry_acknowledged_twice_is_uncounted_once() {
    let p = Pipeline::start().await;
    p.publish("a", "x", 3).await;
    p.publish("b", "y", 2).await;
    let ids = p.read_as_ghost("ghost", 5).await;
    assert_eq!(p.unstored().await, [("a".to_string(), 3), ("b".to_string(), 2)].into());

    let first = [(ids[0].as_str(), "a"), (ids[3].as_str(), "b")];
    assert_eq!(ack(&p, &first).await, 2);
    // The same entries again (a retried ack whose reply was lost, or a second worker's ack after a
    // redelivery), with one more: only the new one counts.
    let again = [(ids[0].as_str(), "a"), (ids[3].as_str(), "b"), (ids[1].as_str(), "a")];
    assert_eq!(ack(&p, &again).await, 1);
    assert_eq!(p.unstored().await, [("a".to_string(), 1), ("b".to_string(), 1)].into());

    // An entry whose tenant cannot be read is acknowledged and uncounted from no one.
    assert_eq!(ack(&p, &[(ids[4].as_str(), "")]).await, 1);
    assert_eq!(p.unstored().await, [("a".to_string(), 1), ("b".to_string(), 1)].into());
    assert_eq!(ack(&p, &[(ids[2].as_str(), "a")]).await, 1);
    assert_eq!(p.unstored().await, [("b".to_string(), 1)].into(), "a count at zero is removed");
}

#[tokio::test]
async fn an_entry_deleted_by_hand_is_a_drift_reconciled_once_nothing_is_unstored() {
    let p = Pipeline::start().await;
    p.publish("acme", "gone", 1).await;
    let entries: redis::streams::StreamRangeReply =
        p.redis_query(redis::cmd("XRANGE").arg(STREAM).arg("-").arg("+")).await;
    let _: u64 = p.redis_query(redis::cmd("XDEL").arg(STREAM).arg(&entries.ids[0].id)).await;
    assert_eq!(p.unstored().await.get("acme"), Some(&1), "counted, though no longer in the stream");

    let w = p.worker("w", &[]);
    p.publish("acme", "kept", 4).await;
    assert_eq!(p.wait_for_count(4, WAIT).await, 4);
    let reconciled =
        eventually(WAIT, || async { w.metric("evp_worker_unstored_counts_reconciled_total").await == 1.0 })
            .await;
    assert!(reconciled, "the drift was not reconciled: {:?}", p.unstored().await);
    assert!(p.unstored().await.is_empty());

    // From then on the counts are exact again, with nothing more to reconcile.
    p.publish("acme", "later", 5).await;
    assert_eq!(p.wait_for_count(9, WAIT).await, 9);
    assert!(eventually(WAIT, || async { p.unstored().await.is_empty() }).await);
    w.wait_for_trim_rounds(2.0).await;
    assert_eq!(w.metric("evp_worker_unstored_counts_reconciled_total").await, 1.0);
}
