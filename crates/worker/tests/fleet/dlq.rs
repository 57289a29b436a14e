//! Dead letters: poison entries and exhausted deliveries go to `<stream>:dlq` with their reason,
//! the worker keeps going, and `evp-worker dlq` lists, replays and purges them.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{GROUP, Pipeline, STREAM, eventually};

const WAIT: Duration = Duration::from_secs(90);
const DLQ: &str = "events:dlq";

#[tokio::test]
async fn poison_entries_are_dead_lettered_and_the_rest_of_the_batch_is_stored() {
    let p = Pipeline::start().await;
    let mut conn = p.redis.connection().await;
    let _: String = redis::cmd("XADD")
        .arg(STREAM)
        .arg("*")
        .arg("e")
        .arg("{not json")
        .query_async(&mut conn)
        .await
        .unwrap();
    p.publish("acme", "good", 50).await;
    let _: String = redis::cmd("XADD")
        .arg(STREAM)
        .arg("*")
        .arg("unexpected")
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut w = p.worker("w", &[]);

    assert_eq!(p.wait_for_count(50, WAIT).await, 50);
    assert!(eventually(WAIT, || async { p.xlen(DLQ).await == 2 && p.pending(GROUP).await == 0 }).await);
    assert!(w.process.is_running());

    let (code, out) = p.cli(&["dlq", "list"]);
    assert_eq!(code, 0);
    let letters: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(letters.len(), 2);
    for letter in &letters {
        let meta = letter;
        assert!(meta["reason"].as_str().unwrap().starts_with("undecodable"), "{letter}");
        assert!(meta["source_id"].as_str().unwrap().contains('-'), "{letter}");
        assert_eq!(meta["consumer"], "w");
    }
    assert_eq!(letters[0]["raw"], "{not json", "original fields are kept");
    assert_eq!(letters[1]["other_fields"]["unexpected"], "x");

    // More events after the poison ones are stored too: the worker kept going.
    p.publish("acme", "later", 20).await;
    assert_eq!(p.wait_for_count(70, WAIT).await, 70);

    let (code, out) = p.cli(&["dlq", "purge", "--all"]);
    assert_eq!((code, out.trim()), (0, "purged 2 dead letter(s)"));
    assert_eq!(p.xlen(DLQ).await, 0);
}

#[tokio::test]
async fn entries_past_max_deliveries_are_dead_lettered_then_replayed_and_stored() {
    let p = Pipeline::start().await;
    p.publish("acme", "stuck", 3).await;
    let ids = p.read_as_ghost("ghost", 3).await;
    // As if each had already been delivered 5 times and never stored.
    let _: redis::Value = p
        .redis_query(
            redis::cmd("XCLAIM")
                .arg(STREAM)
                .arg(GROUP)
                .arg("ghost")
                .arg(0)
                .arg(&ids)
                .arg("RETRYCOUNT")
                .arg(5)
                .arg("JUSTID"),
        )
        .await;
    assert_eq!(p.unstored().await.get("acme"), Some(&3));
    let w = p.worker("w", &[("WORKER_CLAIM_IDLE_MS", "300"), ("WORKER_MAX_DELIVERIES", "5")]);

    assert!(eventually(WAIT, || async { p.xlen(DLQ).await == 3 }).await);
    assert!(
        eventually(WAIT, || async { p.pending(GROUP).await == 0 }).await,
        "dead letters are acknowledged"
    );
    assert_eq!(p.stored_count().await, 0);
    assert_eq!(p.unstored().await.get("acme"), None, "dead letters are no longer the tenant's backlog");

    let (_, out) = p.cli(&["dlq", "list", "--count", "10"]);
    let letters: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(letters.len(), 3);
    assert_eq!(letters[0]["reason"], "not stored after 5 deliveries");
    assert_eq!(letters[0]["deliveries"], 6);
    assert_eq!(letters[0]["event"]["id"], "stuck-0", "the event is shown decoded");

    // Replay one by id, then the rest.
    let first = letters[0]["id"].as_str().unwrap();
    let (code, out) = p.cli(&["dlq", "replay", first]);
    assert_eq!((code, out.trim()), (0, "replayed 1 dead letter(s) to events"));
    assert_eq!(p.wait_for_count(1, WAIT).await, 1);
    let (code, out) = p.cli(&["dlq", "replay", "--all"]);
    assert_eq!((code, out.trim()), (0, "replayed 2 dead letter(s) to events"));
    assert_eq!(p.wait_for_count(3, WAIT).await, 3);
    assert_eq!(p.xlen(DLQ).await, 0);
    let stored = p.stored_ids().await;
    for i in 0..3 {
        assert!(stored.contains(&("acme".to_string(), format!("stuck-{i}"))));
    }
    // Replayed entries were counted again, and uncounted once stored.
    p.assert_counts_settled(&w).await;
    let totals: std::collections::HashMap<String, i64> =
        p.redis_query(redis::cmd("HGETALL").arg(crate::helpers::counts().totals)).await;
    assert_eq!((totals["a:acme"], totals["s:acme"]), (6, 3), "3 appended, 3 replayed; 3 stored");
}

#[tokio::test]
async fn the_dlq_command_refuses_an_ambiguous_selection() {
    let p = Pipeline::start().await;
    let out = std::process::Command::new(crate::helpers::BIN).args(["dlq", "replay"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "replay needs ids or --all");
    let out = std::process::Command::new(crate::helpers::BIN)
        .args(["dlq", "purge", "--all", "1-1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "ids and --all conflict");
    let (code, out) = p.cli(&["dlq", "replay", "--all"]);
    assert_eq!((code, out.trim()), (0, "replayed 0 dead letter(s) to events"));
}
