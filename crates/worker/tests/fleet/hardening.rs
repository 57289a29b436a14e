//! What one bad entry or one bad batch may not do: stall the others, be retried forever, or hold
//! its entries after the batch is gone.

use std::time::Duration;

use evp_events::input::{Admission, Limits, admit_batch};

use crate::helpers::{GROUP, Pipeline, STREAM, eventually};

const WAIT: Duration = Duration::from_secs(60);

/// An entry as a client other than the ingest could write it, with `data` as given.
fn raw_entry(id: &str, data: &str) -> Vec<u8> {
    format!(r#"{{"v":1,"tenant":"acme","id":"{id}","type":"raw","ts":1,"rcv":1,"data":{data}}}"#).into_bytes()
}

#[tokio::test]
async fn documents_mongodb_cannot_take_are_dead_lettered_alone_and_their_batch_is_stored() {
    let p = Pipeline::start().await;
    p.publish("acme", "before", 20).await;
    // Over MongoDB's 16 MiB limit, a NUL in a key, an integer past 64 bits: all in one batch with
    // good events on both sides.
    let huge = raw_entry("huge", &format!(r#"{{"pad":"{}"}}"#, "p".repeat(17 * 1024 * 1024)));
    let bad = p
        .publish_raw(&[
            huge,
            raw_entry("nul", r#"{"a\u0000b":1}"#),
            raw_entry("wide", r#"{"n":18446744073709551615}"#),
        ])
        .await;
    p.publish("acme", "after", 20).await;

    let w = p.worker("w", &[("WORKER_BATCH_SIZE", "500"), ("WORKER_MAX_DELIVERIES", "100")]);
    assert_eq!(p.wait_for_count(40, WAIT).await, 40, "log:\n{}", w.process.log());
    assert!(
        eventually(Duration::from_secs(20), || async { p.xlen(&format!("{STREAM}:dlq")).await == 3 }).await,
        "the three were not dead-lettered within seconds (max deliveries is 100, so this is not the \
         delivery budget running out); log:\n{}",
        w.process.log()
    );
    assert!(eventually(WAIT, || async { p.pending(GROUP).await == 0 }).await, "everything was acknowledged");
    assert_eq!(p.stored_ids().await.len(), 40);

    let letters: redis::streams::StreamRangeReply =
        p.redis_query(redis::cmd("XRANGE").arg(format!("{STREAM}:dlq")).arg("-").arg("+")).await;
    let field = |i: usize, name: &str| -> String { letters.ids[i].get(name).unwrap() };
    let sources: Vec<String> = (0..3).map(|i| field(i, "dlq_source_id")).collect();
    assert_eq!(sources, bad);
    assert!(field(0, "dlq_reason").contains("MongoDB stores at most"), "{}", field(0, "dlq_reason"));
    assert!(field(1, "dlq_reason").contains("NUL character"), "{}", field(1, "dlq_reason"));
    assert!(field(2, "dlq_reason").contains("signed 64-bit"), "{}", field(2, "dlq_reason"));
    assert!((0..3).all(|i| field(i, "dlq_reason").starts_with("unstorable: ")));
    assert_eq!(w.metric("evp_worker_events_dead_lettered_total").await, 3.0);
    assert_eq!(w.metric("evp_worker_write_retries_total").await, 0.0, "nothing was retried as an outage");
}

#[tokio::test]
async fn a_panicking_batch_releases_its_entries_and_another_worker_stores_them() {
    let p = Pipeline::start().await;
    p.publish("acme", "p", 10).await;
    // This worker panics while writing the batch holding p-3, and never reclaims on its own.
    let a = p.worker(
        "panics",
        &[
            ("EVP_TEST_PANIC_ON_EVENT_ID", "p-3"),
            ("WORKER_CLAIM_IDLE_MS", "600000"),
            ("WORKER_BATCH_SIZE", "100"),
        ],
    );
    assert!(
        eventually(WAIT, || async { a.process.log().contains("EVP_TEST_PANIC_ON_EVENT_ID") }).await,
        "the hook did not fire; log:\n{}",
        a.process.log()
    );
    assert_eq!(p.pending_of("panics").await, 10, "the panicking batch held all ten");

    // Its claim is no longer renewed, so a second worker claims the entries once idle and stores them.
    let _b = p.worker("rescuer", &[("WORKER_CLAIM_IDLE_MS", "1000")]);
    assert_eq!(p.wait_for_count(10, WAIT).await, 10, "log of the panicking worker:\n{}", a.process.log());
    assert!(eventually(WAIT, || async { p.pending(GROUP).await == 0 }).await);
    assert_eq!(p.stored_ids().await.len(), 10);
    assert_eq!(a.metric("evp_worker_inflight_batches").await, 0.0, "the in-flight count came down");
    let mut a = a;
    assert!(a.process.is_running(), "a panicking batch must not take the worker down");
}

#[tokio::test]
async fn renewing_a_claim_never_takes_entries_another_consumer_has_claimed() {
    let p = Pipeline::start().await;
    p.publish("acme", "r", 5).await;
    let ids = p.read_as_ghost("me", 5).await;
    // Another consumer took two of them over (say, this one was slow and they went idle).
    let _: Vec<String> = p
        .redis_query(
            redis::cmd("XCLAIM").arg(STREAM).arg(GROUP).arg("other").arg(0).arg(&ids[1..3]).arg("JUSTID"),
        )
        .await;
    let env =
        evp_runtime::config::Env::from_pairs([("REDIS_URL", p.redis.url()), ("CONSUMER_NAME", "me".into())]);
    let client =
        evp_worker::stream::StreamClient::new(&evp_worker::WorkerConfig::from_env(&env).unwrap()).unwrap();

    assert_eq!(client.renew(&ids).await.unwrap(), 3);
    assert_eq!(
        p.read_ids_of("other").await,
        ids[1..3],
        "the renewal left the other consumer's entries alone"
    );
    assert_eq!(p.read_ids_of("me").await, [ids[0].clone(), ids[3].clone(), ids[4].clone()]);
}

#[tokio::test]
async fn a_request_retried_with_the_same_idempotency_key_is_stored_once() {
    let p = Pipeline::start().await;
    let body = br#"[{"type":"a"},{"type":"b"},{"type":"c"}]"#;
    let adm = Admission { idempotency_key: Some("req-1"), ..Admission::new("acme", 1, Limits::default()) };
    for _attempt in 0..2 {
        let payloads: Vec<Vec<u8>> =
            admit_batch(body, &adm).unwrap().into_iter().map(|e| e.payload).collect();
        p.publish_raw(&payloads).await;
    }
    let _w = p.worker("w", &[]);
    // Trimmed to nothing: all six entries were acknowledged.
    assert!(eventually(WAIT, || async { p.xlen(STREAM).await == 0 }).await);
    assert_eq!(p.stored_ids().await.len(), 3, "six entries, three events, each stored once");
}
