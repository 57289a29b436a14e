//! `STREAM_PARTITIONS` and `REDIS_WAIT_REPLICAS` on one redis-server: events go to the partition
//! their aggregate (else their id) hashes to; a batch whose partition fails gets 503 while the
//! other partitions' entries landed (a retry with the same ids is stored once by the workers);
//! without the replicas asked for, nothing gets a 202.

use std::collections::BTreeMap;
use std::time::Duration;

use evp_runtime::partitions::Partitions;
use serde_json::{Value, json};

use crate::helpers::{TestApp, expect_error};

async fn stream_ids(app: &TestApp, stream: &str) -> Vec<String> {
    let mut conn = app.redis.connection().await;
    let entries: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query_async(&mut conn).await.unwrap();
    entries
        .iter()
        .map(|(_, fields)| {
            serde_json::from_str::<Value>(&fields[0].1).unwrap()["id"].as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test]
async fn events_go_to_their_partition_and_an_aggregate_stays_in_one() {
    let app = TestApp::spawn_with(crate::helpers::NO_MONGO, |c| c.common.partitions = 4).await;
    let partitions = Partitions::new(&app.stream, 4);
    let events: Vec<Value> = (0..200)
        .map(|i| match i % 2 {
            0 => json!({"id": format!("b-{i}"), "type": "t", "aggregate_id": format!("order-{}", i % 10)}),
            _ => json!({"id": format!("b-{i}"), "type": "t"}),
        })
        .collect();
    assert_eq!(app.post("/events/batch", "key-acme", json!(events).to_string()).await.status(), 202);
    for i in 0..20 {
        let single = json!({"id": format!("s-{i}"), "type": "t", "aggregate_id": "order-2"});
        assert_eq!(app.post("/events", "key-acme", single.to_string()).await.status(), 202);
    }
    assert_eq!(app.entry_count().await, 0, "nothing in the single stream key");
    let mut found = BTreeMap::new();
    for partition in &partitions {
        for id in stream_ids(&app, &partition.stream).await {
            found.insert(id, partition.index);
        }
    }
    assert_eq!(found.len(), 220, "every event once");
    for event in &events {
        let id = event["id"].as_str().unwrap();
        let key = event["aggregate_id"].as_str().unwrap_or(id);
        assert_eq!(found[id], partitions.route(key).index, "{event}");
    }
    // One aggregate's events, batch and single alike, in one partition in the order sent: order-2
    // has every tenth event of the batch (b-2, b-12, ... b-192), then the 20 singles.
    let order_2 = partitions.route("order-2");
    let in_partition: Vec<String> = stream_ids(&app, &order_2.stream)
        .await
        .into_iter()
        .filter(|id| {
            id.starts_with("s-")
                || id.strip_prefix("b-").and_then(|n| n.parse::<usize>().ok()).is_some_and(|n| n % 10 == 2)
        })
        .collect();
    let expected: Vec<String> =
        (0..20).map(|k| format!("b-{}", 10 * k + 2)).chain((0..20).map(|i| format!("s-{i}"))).collect();
    assert_eq!(in_partition, expected, "order-2's events, in the order they were sent");
}

#[tokio::test]
async fn a_batch_whose_partition_fails_gets_503_and_the_others_land() {
    let app = TestApp::spawn_with(crate::helpers::NO_MONGO, |c| c.common.partitions = 4).await;
    let partitions = Partitions::new(&app.stream, 4);
    // Partition 2's key holds a string: every XADD to it fails.
    let broken = partitions.get(2).unwrap();
    let mut conn = app.redis.connection().await;
    let _: () =
        redis::cmd("SET").arg(&broken.stream).arg("not a stream").query_async(&mut conn).await.unwrap();
    let ids: Vec<String> = (0..40).map(|i| format!("p-{i}")).collect();
    let events: Vec<Value> = ids.iter().map(|id| json!({"id": id, "type": "t"})).collect();
    let resp = app.post("/events/batch", "key-acme", json!(events).to_string()).await;
    let body = expect_error(resp, 503, "service_unavailable").await;
    assert_may_have_landed(&body);
    for partition in partitions.iter().filter(|p| p.index != 2) {
        let landed = stream_ids(&app, &partition.stream).await;
        let routed: Vec<&String> =
            ids.iter().filter(|id| partitions.route(id).index == partition.index).collect();
        assert_eq!(landed.iter().collect::<Vec<_>>(), routed, "partition {} took its share", partition.index);
    }
    // Fixed, the same batch again: 202, and partition 2 gets its share.
    let _: () = redis::cmd("DEL").arg(&broken.stream).query_async(&mut conn).await.unwrap();
    assert_eq!(app.post("/events/batch", "key-acme", json!(events).to_string()).await.status(), 202);
    let routed: Vec<&String> = ids.iter().filter(|id| partitions.route(id).index == 2).collect();
    assert_eq!(stream_ids(&app, &broken.stream).await.iter().collect::<Vec<_>>(), routed);
}

#[tokio::test]
async fn without_the_replicas_asked_for_nothing_gets_a_202() {
    // One redis-server has no replica: WAIT 1 confirms nothing.
    let app = TestApp::spawn_with(crate::helpers::NO_MONGO, |c| {
        c.wait_replicas = 1;
        c.redis_timeout = Duration::from_millis(400);
    })
    .await;
    let single = app.post("/events", "key-acme", r#"{"id":"w-1","type":"t"}"#).await;
    assert_may_have_landed(&expect_error(single, 503, "service_unavailable").await);
    let batch =
        app.post("/events/batch", "key-acme", r#"[{"id":"w-2","type":"t"},{"id":"w-3","type":"t"}]"#).await;
    assert_may_have_landed(&expect_error(batch, 503, "service_unavailable").await);
    // The entries reached the master; what failed is the replicas' confirmation (WAIT). A retry
    // with the same ids is stored once by the workers.
    assert_eq!(stream_ids(&app, &app.stream).await, ["w-1", "w-2", "w-3"]);
    // Bad input still gets its 4xx.
    expect_error(app.post("/events", "key-acme", "{").await, 400, "invalid_json").await;
}

/// A 503 after an append that may have landed says so, and how to retry safely (no figure of the
/// stream in it).
fn assert_may_have_landed(body: &Value) {
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("some or all events may have been stored"), "{message}");
    assert!(message.contains("retry with the same ids or Idempotency-Key"), "{message}");
}
