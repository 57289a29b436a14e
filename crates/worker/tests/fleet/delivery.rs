//! Every event stored exactly once, by a fleet, under whatever group is configured.

use std::time::Duration;

use mongodb::bson::{Bson, doc};

use crate::helpers::{GROUP, Pipeline, STREAM, eventually};

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn two_workers_store_every_event_exactly_once_and_redelivery_is_harmless() {
    let p = Pipeline::start().await;
    let _a = p.worker("worker-a", &[("WORKER_BATCH_SIZE", "100")]);
    let _b = p.worker("worker-b", &[("WORKER_BATCH_SIZE", "100")]);
    let mut sent = p.publish("acme", "a", 1500).await;
    sent.extend(p.publish("globex", "g", 500).await);

    assert_eq!(p.wait_for_count(2000, WAIT).await, 2000);
    let stored = p.stored_ids().await;
    assert_eq!(stored.len(), 2000);
    assert!(stored.contains(&("acme".into(), "a-1499".into())));
    assert!(stored.contains(&("globex".into(), "g-0".into())));

    // The same ids again (a client retry, a replayed entry): stored once, still acknowledged.
    p.publish("acme", "a", 300).await;
    assert!(eventually(WAIT, || async { p.pending(GROUP).await == 0 && p.xlen(STREAM).await == 0 }).await);
    assert_eq!(p.stored_count().await, 2000, "a redelivered id must not be stored twice");

    // Both replicas took part.
    let consumers: redis::streams::StreamInfoConsumersReply =
        p.redis_query(redis::cmd("XINFO").arg("CONSUMERS").arg(STREAM).arg(GROUP)).await;
    let names: Vec<String> = consumers.consumers.into_iter().map(|c| c.name).collect();
    assert!(names.contains(&"worker-a".into()) && names.contains(&"worker-b".into()), "{names:?}");
}

#[tokio::test]
async fn a_non_default_group_name_is_the_one_used_and_nothing_is_lost() {
    // The system this replaces read from a hard-coded group while configured with another, and
    // lost a third of its events. Two workers under a non-default group must store every event.
    let p = Pipeline::start().await;
    let group = [("CONSUMER_GROUP", "billing-pipeline")];
    let _a = p.worker("w1", &group);
    let _b = p.worker("w2", &group);
    p.publish("acme", "e", 1000).await;
    assert_eq!(p.wait_for_count(1000, WAIT).await, 1000);
    assert_eq!(p.stored_ids().await.len(), 1000);

    let groups: redis::streams::StreamInfoGroupsReply =
        p.redis_query(redis::cmd("XINFO").arg("GROUPS").arg(STREAM)).await;
    let names: Vec<&str> = groups.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["billing-pipeline"], "only the configured group may exist");
    assert!(eventually(WAIT, || async { p.pending("billing-pipeline").await == 0 }).await);
}

#[tokio::test]
async fn documents_have_the_contract_shape_and_indexes_exist() {
    let p = Pipeline::start().await;
    let worker = p.worker("w", &[]);
    let body = br#"[{"type":"order.placed","id":"o-1","timestamp":"2026-01-02T03:04:05.678Z","source":"shop",
        "aggregate_id":"order-9","correlation_id":"c-1","causation_id":"cause-1","data":{"total":12.5,"items":[{"sku":"a"}]}},
        {"type":"minimal"}]"#;
    let adm = evp_events::input::Admission::new("acme", 1_767_323_045_000, evp_events::Limits::default());
    let payloads: Vec<Vec<u8>> =
        evp_events::input::admit_batch(body, &adm).unwrap().into_iter().map(|e| e.payload).collect();
    let entry_ids = p.publish_raw(&payloads).await;
    assert_eq!(p.wait_for_count(2, WAIT).await, 2);

    let coll = p.collection().await;
    let full = coll.find_one(doc! {"event_id": "o-1"}).await.unwrap().unwrap();
    assert_eq!(full.get_str("_id").unwrap(), "acme:o-1", "_id carries (tenant, event id)");
    assert_eq!(full.get_str("tenant").unwrap(), "acme");
    assert_eq!(full.get_str("type").unwrap(), "order.placed");
    assert_eq!(full.get_datetime("timestamp").unwrap().timestamp_millis(), 1_767_323_045_678);
    assert_eq!(full.get_datetime("received_at").unwrap().timestamp_millis(), 1_767_323_045_000);
    for (field, value) in [
        ("source", "shop"),
        ("aggregate_id", "order-9"),
        ("correlation_id", "c-1"),
        ("causation_id", "cause-1"),
    ] {
        assert_eq!(full.get_str(field).unwrap(), value);
    }
    // Its place in the stream, zero-padded so that it sorts in stream order.
    assert_eq!(full.get_i32("partition").unwrap(), 0);
    let (ms, seq) = entry_ids[0].split_once('-').unwrap();
    let expected_seq = format!("{:020}-{:020}", ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap());
    assert_eq!(full.get_str("seq").unwrap(), expected_seq);
    let data = full.get_document("data").unwrap();
    assert_eq!(data.get("total"), Some(&Bson::Double(12.5)));
    assert_eq!(data.get_array("items").unwrap().len(), 1);

    let minimal = coll.find_one(doc! {"type": "minimal"}).await.unwrap().unwrap();
    assert!(minimal.get_document("data").unwrap().is_empty());
    assert!(!minimal.contains_key("source"));
    assert!(matches!(minimal.get("timestamp"), Some(Bson::DateTime(_))));

    // The default EVENT_INDEXES (`type`): the fixed set plus the `type` listing; partial where
    // only events with an optional field need an entry.
    use futures::TryStreamExt;
    let indexes: Vec<mongodb::IndexModel> = coll.list_indexes().await.unwrap().try_collect().await.unwrap();
    // (name, keys with directions, partial)
    type Index = (String, Vec<(String, i32)>, bool);
    let mut found: Vec<Index> = indexes
        .iter()
        .map(|i| {
            let options = i.options.as_ref().unwrap();
            let keys = i.keys.iter().map(|(k, v)| (k.clone(), v.as_i32().unwrap_or(0))).collect();
            (options.name.clone().unwrap(), keys, options.partial_filter_expression.is_some())
        })
        .collect();
    found.sort();
    let keys = |pairs: &[(&str, i32)]| pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect::<Vec<_>>();
    let mut expected = vec![
        ("_id_".to_string(), keys(&[("_id", 1)]), false),
        (
            "aggregate_order".into(),
            keys(&[("tenant", 1), ("aggregate_id", 1), ("seq", 1), ("partition", 1)]),
            true,
        ),
        ("newest".into(), keys(&[("tenant", 1), ("timestamp", -1), ("event_id", -1)]), false),
        (
            "newest_by_type".into(),
            keys(&[("tenant", 1), ("type", 1), ("timestamp", -1), ("event_id", -1)]),
            false,
        ),
        (
            "rollup_position".into(),
            keys(&[("partition", 1), ("seq", 1), ("tenant", 1), ("type", 1), ("timestamp", 1)]),
            false,
        ),
        ("tenant_position".into(), keys(&[("tenant", 1), ("partition", 1), ("seq", 1), ("type", 1)]), false),
    ];
    expected.sort();
    assert_eq!(found, expected);

    let (status, body) = worker.get("/health/ready").await;
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = worker.get("/metrics").await;
    assert!(metrics.contains("evp_worker_events_written_total 2"), "{metrics}");
    assert!(metrics.contains("evp_worker_events_acked_total 2"), "{metrics}");
    assert!(metrics.contains("evp_worker_write_duration_seconds_bucket"), "{metrics}");
    assert!(metrics.contains("evp_worker_batch_events_bucket"), "{metrics}");
}

#[tokio::test]
async fn a_bad_variable_stops_start_up_with_one_line_naming_it() {
    for (k, v) in [("WORKER_BATCH_SIZE", "0"), ("WORKER_MAX_INFLIGHT", "x"), ("REDIS_URL", "nope")] {
        let out = evp_testkit::program(crate::helpers::BIN, [(k, v)]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{k}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(k), "{stderr}");
    }
}
