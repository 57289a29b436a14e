//! Every query shape evp sends to MongoDB is served by an index, asserted on the server's own plan
//! (`explain`): the read API's listings and lookups, the analytics counts and tail, the rollup
//! job's range scans. A collection scan or an in-memory sort fails the test; so does a server
//! whose `explain` says nothing (`plan_problem`), so this test cannot pass vacuously. And a
//! `GET /events` filter with no index is refused, never answered by a scan.

use std::collections::BTreeMap;

use evp_store::indexes::{Query, plan_problem};
use evp_store::reader::{Filters, NewestKey, StreamKey, aggregate_query, newest_query};
use evp_store::rollups::{self, PartitionProgress, Progress, RollupStore, Window};
use mongodb::bson::doc;
use serde_json::json;

use crate::helpers::{TestApp, expect_error};
use crate::read::ReadApp;

/// Every shape, named, with the collection it runs on.
fn shapes() -> Vec<(String, &'static str, Query)> {
    let mut out = Vec::new();
    let by = |f: fn(&mut Filters)| {
        let mut filters = Filters::default();
        f(&mut filters);
        filters
    };
    let after = NewestKey { timestamp_ms: 1_763_632_802_000, event_id: "acme-010".into() };
    for (name, filters) in [
        ("no filter", Filters::default()),
        ("type", by(|f| f.event_type = Some("a".into()))),
        ("source", by(|f| f.source = Some("web".into()))),
        ("aggregate_id", by(|f| f.aggregate_id = Some("agg-1".into()))),
        ("correlation_id", by(|f| f.correlation_id = Some("cor-1".into()))),
        ("from/to", by(|f| (f.from_ms, f.to_ms) = (Some(1_763_632_800_000), Some(1_763_632_803_000)))),
        ("type and source", by(|f| (f.event_type, f.source) = (Some("a".into()), Some("web".into())))),
        ("type and from", by(|f| (f.event_type, f.from_ms) = (Some("a".into()), Some(1_763_632_800_000)))),
    ] {
        out.push((format!("GET /events, {name}"), "events", newest_query("acme", &filters, None)));
        out.push((
            format!("GET /events, {name}, next page"),
            "events",
            newest_query("acme", &filters, Some(&after)),
        ));
    }
    let stream_key = StreamKey { partition: 0, seq: "00000000000000000001-00000000000000000000".into() };
    out.push(("an aggregate".into(), "events", aggregate_query("acme", "agg-1", None)));
    out.push((
        "an aggregate, next page".into(),
        "events",
        aggregate_query("acme", "agg-1", Some(&stream_key)),
    ));
    let by_id = Query {
        filter: doc! { "_id": evp_store::indexes::event_key("acme", "acme-001") },
        sort: doc! {},
        hint: None,
    };
    out.push(("GET /events/{id}".into(), "events", by_id));

    let before = evp_events::EntryId::new(2_000_000_000_000, 0).sortable();
    let query = evp_store::subscriptions::deliverable_query("acme", 0, "", &before);
    out.push(("a subscription's read (and, with types, its keys)".into(), "events", query));
    let (first, second) =
        (evp_events::EntryId::new(1, 0).sortable(), evp_events::EntryId::new(2, 0).sortable());
    let query = evp_store::subscriptions::events_at_query("acme", 0, &[&first, &second]);
    out.push(("a subscription's read with types, the events at its keys".into(), "events", query));
    let (from, to) = (rollups::range_start_seq(0), rollups::range_start_seq(2_000_000_000));
    out.push(("rollup job: count ranges".into(), "events", rollups::position_query(0, &from, &to)));
    for (name, tenant, event_type) in [
        ("a tenant", Some("acme"), None),
        ("a tenant's type", Some("acme"), Some("a")),
        ("every tenant", None, None),
    ] {
        let window = Window { tenant, event_type, from_ms: 1_763_632_800_000, to_ms: 1_763_636_400_000 };
        out.push((format!("analytics counts, {name}"), "event_counts", rollups::counts_query(1, &window)));
        for partitions in [1, 4] {
            let progress = Progress {
                generation: 1,
                partitions: (0..partitions)
                    .map(|p| {
                        (
                            p,
                            PartitionProgress {
                                next: 5,
                                until: evp_events::EntryId::new(5_000, 0),
                                provisional: Vec::new(),
                            },
                        )
                    })
                    .collect(),
            };
            let tail = rollups::tail_query(&progress, &BTreeMap::new(), &window).expect("a tail");
            out.push((format!("analytics tail, {name}, {partitions} partitions"), "events", tail));
        }
    }
    out
}

/// The problems of every shape's plan on `r`'s database, by name.
async fn problems(r: &ReadApp) -> Vec<String> {
    let db = r.mongo.client().await.database(&r.database);
    let mut out = Vec::new();
    for (name, collection, query) in shapes() {
        match evp_store::indexes::explain(&db, collection, &query, Some(101)).await {
            Ok(plan) => out.extend(plan_problem(&plan).map(|problem| format!("{name}: {problem}"))),
            // A hint naming an index that is not there.
            Err(e) => out.push(format!("{name}: not planned: {e}")),
        }
    }
    out
}

async fn with_data() -> ReadApp {
    let r = ReadApp::start().await;
    let events: Vec<_> = (0..40)
        .map(|i| {
            let event_type = ["a", "b"][i % 2];
            json!({"id": format!("acme-{i:03}"), "type": event_type, "source": "web",
                "aggregate_id": format!("agg-{}", i % 4), "correlation_id": format!("cor-{}", i % 6),
                "timestamp": "2026-11-20T10:00:01Z"})
        })
        .collect();
    r.send("key-acme", &events).await;
    r.store_stream().await;
    RollupStore::new(&r.mongo.client().await, &r.database).ensure_indexes().await.unwrap();
    r
}

#[tokio::test]
async fn every_query_shape_is_served_by_an_index() {
    let r = with_data().await;
    let problems = problems(&r).await;
    assert!(problems.is_empty(), "query shapes not served by an index:\n{}", problems.join("\n"));
}

#[tokio::test]
async fn the_check_fails_when_an_index_is_missing() {
    let r = with_data().await;
    let events = r.mongo.client().await.database(&r.database).collection::<mongodb::bson::Document>("events");
    events.drop_index("newest").await.unwrap();
    events.drop_index("rollup_position").await.unwrap();
    let problems = problems(&r).await;
    for shape in [
        "GET /events, no filter:",
        "GET /events, from/to:",
        "rollup job: count ranges:",
        "analytics tail, a tenant, 4 partitions:",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(shape)),
            "{shape} not caught:\n{}",
            problems.join("\n")
        );
    }
    assert!(
        !problems.iter().any(|p| p.starts_with("GET /events, type:") || p.starts_with("an aggregate")),
        "shapes whose index is still there pass:\n{}",
        problems.join("\n")
    );
}

/// Another tenant's flood in the same partition and range: a subscription's read is planned on
/// `tenant_position`, which walks only its own tenant's keys, never on `rollup_position`, whose
/// range holds every tenant's, with types (the keys) or without. (The read names no index; this
/// holds the planner to it.)
#[tokio::test]
async fn a_subscription_read_walks_only_its_own_tenants_keys() {
    let r = ReadApp::start().await;
    let events = |tenant: &str, n: usize| -> Vec<_> {
        (0..n).map(|i| json!({"id": format!("{tenant}-{i:04}"), "type": "a"})).collect()
    };
    r.send("key-acme", &events("acme", 5)).await;
    for chunk in events("globex", 2_000).chunks(500) {
        r.send("key-globex", chunk).await;
    }
    r.send("key-acme", &events("acme-late", 5)).await;
    r.store_stream().await;
    let db = r.mongo.client().await.database(&r.database);
    let before = evp_events::EntryId::new(4_000_000_000_000, 0).sortable();
    let read = evp_store::subscriptions::deliverable_query("acme", 0, "", &before);
    let winning = || {
        let (db, read) = (db.clone(), read.clone());
        async move {
            let plan = evp_store::indexes::explain(&db, "events", &read, Some(101)).await.unwrap();
            let winning = plan.get_document("queryPlanner").and_then(|p| p.get_document("winningPlan"));
            winning.map(|w| w.to_string()).unwrap_or_else(|_| format!("no winning plan: {plan}"))
        }
    };
    let plan = winning().await;
    assert!(plan.contains("\"tenant_position\""), "planned on another index: {plan}");
    // Without it, the read is planned on another index: the check above can fail. (The fetch of a
    // typed read's events by position may use either `tenant_position` or `rollup_position`: a
    // position is one entry of the partition, so both find each event with one key; that it uses
    // an index at all is in `every_query_shape_is_served_by_an_index`.)
    db.collection::<mongodb::bson::Document>("events").drop_index("tenant_position").await.unwrap();
    assert!(!winning().await.contains("\"tenant_position\""));
}

#[tokio::test]
async fn a_filter_without_its_index_is_refused_naming_it_and_event_indexes() {
    // The default EVENT_INDEXES: `type` only.
    let app = TestApp::spawn().await;
    for parameter in ["source", "aggregate_id", "correlation_id"] {
        let url = app.url(&format!("/events?type=a&{parameter}=x"));
        let resp = app.http.get(url).header("x-api-key", "key-acme").send().await.unwrap();
        let body = expect_error(resp, 400, "invalid_query").await;
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("{parameter}:")), "{message}");
        assert!(message.contains("EVENT_INDEXES=type"), "{message}");
    }
}

/// The document the worker would store for `body` sent by `tenant`, at stream position `entry_id`.
fn document(tenant: &str, body: &str, entry_id: &str) -> mongodb::bson::RawDocumentBuf {
    use evp_events::input::{Admission, admit_one};
    let admitted =
        admit_one(body.as_bytes(), &Admission::new(tenant, 1_000, evp_events::Limits::default())).unwrap();
    let fields = vec![(evp_events::entry::FIELD.to_string(), admitted.payload)];
    evp_store::to_document(&fields, evp_store::Position { partition: 0, entry_id }).unwrap()
}

#[tokio::test]
async fn a_duplicate_is_stored_only_when_the_index_that_clashed_carries_tenant_and_id() {
    use evp_store::Verdict;
    let r = ReadApp::start().await;
    let first = document("acme", r#"{"type":"t","id":"e-1","data":{"sku":"s-1"}}"#, "1-0");
    assert_eq!(r.store.insert(&[&first]).await.unwrap(), [Verdict::Written]);
    // Redelivered: the same (tenant, id), so `_id` clashes and it counts as stored.
    assert_eq!(r.store.insert(&[&first]).await.unwrap(), [Verdict::Duplicate]);
    // The same id in another tenant is another event.
    let other_tenant = document("globex", r#"{"type":"t","id":"e-1"}"#, "2-0");
    assert_eq!(r.store.insert(&[&other_tenant]).await.unwrap(), [Verdict::Written]);

    // An operator's unique index on something else, named to mention event_id: a clash there
    // means the event is NOT stored.
    let db = r.mongo.client().await.database(&r.database);
    let events = db.collection::<mongodb::bson::Document>("events");
    let unique = |keys, name: &str| {
        let options = mongodb::options::IndexOptions::builder().unique(true).name(name.to_string()).build();
        mongodb::IndexModel::builder().keys(keys).options(options).build()
    };
    events.create_index(unique(doc! { "data.sku": 1 }, "event_id_sku")).await.unwrap();
    let clash = document("acme", r#"{"type":"t","id":"e-2","data":{"sku":"s-1"}}"#, "3-0");
    assert!(matches!(r.store.insert(&[&clash]).await.unwrap()[..], [Verdict::Refused(_)]));
    assert!(r.store.insert(&[&clash]).await.is_ok());
    assert_eq!(events.count_documents(doc! { "event_id": "e-2" }).await.unwrap(), 0);
}

#[tokio::test]
async fn events_stored_before_id_carried_tenant_and_id_stay_unique_and_readable_while_the_old_index_stays() {
    use evp_store::Verdict;
    let r = ReadApp::start().await;
    let db = r.mongo.client().await.database(&r.database);
    let events = db.collection::<mongodb::bson::Document>("events");
    let options = mongodb::options::IndexOptions::builder()
        .unique(true)
        .name(evp_store::indexes::LEGACY_UNIQUE_INDEX.to_string())
        .build();
    let legacy =
        mongodb::IndexModel::builder().keys(doc! { "tenant": 1, "event_id": 1 }).options(options).build();
    events.create_index(legacy).await.unwrap();
    // An earlier release's `aggregate_order` was not partial: the name is taken, the index kept.
    events.drop_index("aggregate_order").await.unwrap();
    let keys = doc! { "tenant": 1, "aggregate_id": 1, "seq": 1, "partition": 1 };
    let named = mongodb::options::IndexOptions::builder().name("aggregate_order".to_string()).build();
    events.create_index(mongodb::IndexModel::builder().keys(keys).options(named).build()).await.unwrap();
    let kept = r.store.ensure_indexes(&evp_store::EventIndexes::all()).await.unwrap();
    assert_eq!(kept, ["aggregate_order"], "start-up goes on, naming the index it kept");
    // As an earlier release stored it: the driver's ObjectId `_id`.
    let mut old =
        mongodb::bson::Document::try_from(document("acme", r#"{"type":"t","id":"old-1"}"#, "1-0")).unwrap();
    old.remove("_id");
    events.insert_one(old).await.unwrap();

    let resp = r.get("key-acme", "/events/old-1").await;
    assert_eq!(resp.status(), 200, "found through the old unique index");
    // Sent again after the upgrade: the old index clashes, and it counts as stored, once.
    let again = document("acme", r#"{"type":"t","id":"old-1"}"#, "2-0");
    assert_eq!(r.store.insert(&[&again]).await.unwrap(), [Verdict::Duplicate]);
    assert_eq!(events.count_documents(doc! { "event_id": "old-1" }).await.unwrap(), 1);

    // Once an operator drops it, the old document is no longer found by id (a miss, not a 503).
    events.drop_index(evp_store::indexes::LEGACY_UNIQUE_INDEX).await.unwrap();
    expect_error(r.get("key-acme", "/events/old-1").await, 404, "not_found").await;
}

#[tokio::test]
async fn the_ingest_creates_the_indexes_of_the_filters_it_serves() {
    // No worker has run on this database: the ingest itself creates what its EVENT_INDEXES serve.
    let mongo = evp_testkit::MongoServer::start().await;
    let database = mongo.unique_database("ingest_indexes");
    let db = database.clone();
    let _app = TestApp::spawn_with(mongo.uri(), move |c| {
        c.common.mongodb_database = db;
        c.event_indexes = "type,source".parse().unwrap();
    })
    .await;
    let events = mongo.client().await.database(&database).collection::<mongodb::bson::Document>("events");
    let created = evp_testkit::eventually(std::time::Duration::from_secs(20), || async {
        let names = events.list_index_names().await.unwrap_or_default();
        [
            "newest",
            "newest_by_type",
            "newest_by_source",
            "rollup_position",
            "tenant_position",
            "aggregate_order",
        ]
        .iter()
        .all(|n| names.iter().any(|have| have == n))
    })
    .await;
    assert!(created, "indexes: {:?}", events.list_index_names().await);
}
