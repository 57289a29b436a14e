//! The read API against a real MongoDB-protocol server: events go in through the ingest, are
//! stored by the worker's own write path (`evp_store`, with their stream positions), and come back
//! through `GET /events*`.

use std::collections::HashSet;

use evp_store::{EventIndexes, EventStore, Position, to_document};
use evp_testkit::MongoServer;
use serde_json::{Value, json};

use crate::helpers::{TestApp, expect_error};

/// The operator key (`ADMIN_KEYS`) of [`ReadApp`].
pub const OPS_KEY: &str = "ops-key";

/// An ingest with its own Redis, and a MongoDB database of the test's own.
pub struct ReadApp {
    pub app: TestApp,
    pub store: EventStore,
    pub database: String,
    pub mongo: MongoServer,
}

impl ReadApp {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// The same, with `adjust` applied to the ingest's configuration last.
    pub async fn start_with(adjust: impl FnOnce(&mut evp_ingest::IngestConfig) + Send + 'static) -> Self {
        let mongo = MongoServer::start().await;
        let database = mongo.unique_database("read");
        let db = database.clone();
        let app = TestApp::spawn_with(mongo.uri(), move |c| {
            c.common.mongodb_database = db;
            c.admin_keys = evp_ingest::keys::AdminKeys::parse(OPS_KEY, &c.api_keys).unwrap();
            c.event_indexes = EventIndexes::all();
            adjust(c);
        })
        .await;
        let store = EventStore::new(mongo.client().await, &database);
        store.ensure_indexes(&EventIndexes::all()).await.unwrap();
        Self { app, store, database, mongo }
    }

    /// Sends a batch as `key`; returns the ids.
    pub async fn send(&self, key: &str, events: &[Value]) -> Vec<String> {
        let resp = self.app.post("/events/batch", key, serde_json::to_string(events).unwrap()).await;
        assert_eq!(resp.status(), 202);
        let body: Value = resp.json().await.unwrap();
        body["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
    }

    /// Stores everything in the stream as a worker does (documents with their stream positions),
    /// then empties the stream.
    pub async fn store_stream(&self) {
        self.store_stream_in(|_| 0).await;
    }

    /// The same, with the partition of the `i`-th entry given by `partition_of(i)`.
    pub async fn store_stream_in(&self, partition_of: impl Fn(usize) -> i32) {
        let mut conn = self.app.redis.connection().await;
        let entries: Vec<(String, evp_store::Fields)> = redis::cmd("XRANGE")
            .arg(&self.app.stream)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        let docs: Vec<_> = entries
            .iter()
            .enumerate()
            .map(|(i, (id, fields))| {
                to_document(fields, Position { partition: partition_of(i), entry_id: id }).unwrap()
            })
            .collect();
        if !docs.is_empty() {
            self.store.insert(&docs.iter().collect::<Vec<_>>()).await.unwrap();
        }
        let _: () = redis::cmd("DEL").arg(&self.app.stream).query_async(&mut conn).await.unwrap();
    }

    pub async fn get(&self, key: &str, path_and_query: &str) -> reqwest::Response {
        self.app.http.get(self.app.url(path_and_query)).header("x-api-key", key).send().await.unwrap()
    }

    pub async fn page(&self, key: &str, path_and_query: &str) -> Value {
        let resp = self.get(key, path_and_query).await;
        assert_eq!(resp.status(), 200, "{path_and_query}");
        resp.json().await.unwrap()
    }

    /// Every page of a listing with `limit`, following cursors; returns the events in order.
    async fn all_pages(&self, key: &str, path: &str, query: &str, limit: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10_000 {
            let mut url = format!("{path}?limit={limit}{query}");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let page = self.page(key, &url).await;
            let events = page["events"].as_array().unwrap();
            assert!(events.len() <= limit);
            out.extend(events.iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return out,
            }
        }
        panic!("paging did not end");
    }
}

pub fn ids(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect()
}

/// 60 events for acme and 40 for globex, interleaved, on five timestamps (many ties), with types,
/// sources, aggregates and correlation ids in rotation.
fn mixed(tenant: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let (event_type, source) = (["a", "b", "c"][i % 3], ["web", "app"][i % 2]);
            json!({"id": format!("{tenant}-{i:03}"), "type": event_type,
                "timestamp": format!("2026-11-20T10:00:0{}Z", i % 5), "source": source,
                "aggregate_id": format!("agg-{}", i % 4), "correlation_id": format!("cor-{}", i % 6),
                "data": {"i": i, "nested": {"z": 1, "a": [1.5, "x", null]}}})
        })
        .collect()
}

/// The expected newest-first order of events: timestamp descending, then id descending.
fn newest_first(mut events: Vec<Value>) -> Vec<String> {
    events.sort_by(|a, b| {
        (b["timestamp"].as_str(), b["id"].as_str()).cmp(&(a["timestamp"].as_str(), a["id"].as_str()))
    });
    ids(&events)
}

#[tokio::test]
async fn paging_returns_each_of_the_tenants_events_exactly_once_newest_first() {
    let r = ReadApp::start().await;
    let (acme, globex) = (mixed("acme", 60), mixed("globex", 40));
    for chunk in 0..4 {
        r.send("key-acme", &acme[chunk * 15..(chunk + 1) * 15]).await;
        r.send("key-globex", &globex[chunk * 10..(chunk + 1) * 10]).await;
    }
    r.store_stream().await;

    let got = r.all_pages("key-acme", "/events", "", 7).await;
    assert_eq!(ids(&got), newest_first(acme.clone()), "all of acme's, in order, once");
    let got = r.all_pages("key-globex", "/events", "", 1000).await;
    assert_eq!(ids(&got), newest_first(globex.clone()));

    // The stored shape: what was sent, plus received_at.
    let one = &r.page("key-acme", "/events/acme-007").await;
    assert_eq!(one["type"], "b");
    assert_eq!(one["timestamp"], "2026-11-20T10:00:02Z");
    assert!(one["received_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(one["source"], "app");
    assert_eq!(one["aggregate_id"], "agg-3");
    assert_eq!(one["correlation_id"], "cor-1");
    assert!(one.get("causation_id").is_none());
    assert_eq!(one["data"], json!({"i": 7, "nested": {"z": 1, "a": [1.5, "x", null]}}));
    // Keys come back in the order sent (compared as text: a parsed JSON value sorts its keys).
    let body = r#"{"type":"ordered","id":"ordered-1","data":{"z":1,"a":{"y":true,"b":-9007199254740993}}}"#;
    assert_eq!(r.app.post("/events", "key-acme", body).await.status(), 202);
    r.store_stream().await;
    let raw = r.get("key-acme", "/events/ordered-1").await.text().await.unwrap();
    assert!(raw.contains(r#""data":{"z":1,"a":{"y":true,"b":-9007199254740993}}"#), "{raw}");
    expect_error(r.get("key-globex", "/events/acme-007").await, 404, "not_found").await;
    expect_error(r.get("key-acme", "/events/nope").await, 404, "not_found").await;
}

#[tokio::test]
async fn new_events_arriving_between_pages_never_repeat_or_hide_an_event() {
    let r = ReadApp::start().await;
    let first = mixed("acme", 30);
    r.send("key-acme", &first).await;
    r.store_stream().await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut round = 0;
    loop {
        let url = match &cursor {
            None => "/events?limit=4".to_string(),
            Some(c) => format!("/events?limit=4&cursor={c}"),
        };
        let page = r.page("key-acme", &url).await;
        seen.extend(ids(page["events"].as_array().unwrap()));
        // Between pages: newer events, and one as old as the oldest page already read.
        round += 1;
        let late = vec![
            json!({"id": format!("new-{round}"), "type": "a", "timestamp": "2026-11-21T00:00:00Z"}),
            json!({"id": format!("old-{round}"), "type": "a", "timestamp": "2026-11-20T10:00:00Z"}),
        ];
        r.send("key-acme", &late).await;
        r.store_stream().await;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an event came twice: {seen:?}");
    for id in ids(&first) {
        assert!(unique.contains(&id), "{id} was present from the start and never listed");
    }
    assert!(!seen.iter().any(|id| id.starts_with("new-")), "events newer than the first page come before it");
}

#[tokio::test]
async fn every_filter_alone_and_combined() {
    let r = ReadApp::start().await;
    let acme = mixed("acme", 60);
    r.send("key-acme", &acme).await;
    r.send("key-globex", &mixed("globex", 20)).await;
    r.store_stream().await;

    let expect =
        |keep: &dyn Fn(&Value) -> bool| newest_first(acme.iter().filter(|e| keep(e)).cloned().collect());
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("&type=b", expect(&|e| e["type"] == "b")),
        ("&source=web", expect(&|e| e["source"] == "web")),
        ("&aggregate_id=agg-2", expect(&|e| e["aggregate_id"] == "agg-2")),
        ("&correlation_id=cor-5", expect(&|e| e["correlation_id"] == "cor-5")),
        (
            "&from=2026-11-20T10:00:01Z&to=2026-11-20T10:00:03Z",
            expect(&|e| {
                let t = e["timestamp"].as_str().unwrap();
                ("2026-11-20T10:00:01Z".."2026-11-20T10:00:03Z").contains(&t)
            }),
        ),
        (
            "&type=a&source=app&from=2026-11-20T10:00:02Z",
            expect(&|e| {
                e["type"] == "a"
                    && e["source"] == "app"
                    && e["timestamp"].as_str() >= Some("2026-11-20T10:00:02Z")
            }),
        ),
        ("&type=nothing", vec![]),
    ];
    for (query, expected) in cases {
        assert!(!expected.is_empty() || query.contains("nothing"), "{query} selects nothing");
        let got = r.all_pages("key-acme", "/events", query, 3).await;
        assert_eq!(ids(&got), expected, "{query}");
    }
}

#[tokio::test]
async fn cursors_cannot_be_altered_moved_to_other_filters_or_used_by_another_tenant() {
    let r = ReadApp::start().await;
    r.send("key-acme", &mixed("acme", 10)).await;
    r.send("key-globex", &mixed("globex", 10)).await;
    r.store_stream().await;
    let page = r.page("key-acme", "/events?limit=3&type=a").await;
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    assert_eq!(
        r.page("key-acme", &format!("/events?limit=3&type=a&cursor={cursor}")).await["events"][0]["type"],
        "a"
    );

    let mut altered = cursor.clone().into_bytes();
    altered[2] = if altered[2] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    for (key, query) in [
        ("key-acme", format!("/events?type=a&cursor={altered}")),
        ("key-acme", format!("/events?type=b&cursor={cursor}")),
        ("key-acme", format!("/events?cursor={cursor}")),
        ("key-globex", format!("/events?type=a&cursor={cursor}")),
        ("key-acme", format!("/aggregates/agg-1/events?cursor={cursor}")),
        ("key-acme", "/events?cursor=garbage".to_string()),
    ] {
        let body = expect_error(r.get(key, &query).await, 400, "invalid_query").await;
        assert_eq!(body["error"]["details"][0]["field"], "cursor", "{query}: {body}");
    }
}

#[tokio::test]
async fn an_aggregates_events_come_in_stream_order_even_when_timestamps_go_backwards() {
    let r = ReadApp::start().await;
    // Sent one request at a time, each with an earlier timestamp than the one before.
    let mut sent = Vec::new();
    for i in 0..9 {
        let e = json!({"id": format!("step-{i}"), "type": "moved", "aggregate_id": "order-1",
            "timestamp": format!("2026-11-20T10:00:{:02}Z", 50 - i * 5)});
        sent.extend(
            r.send("key-acme", &[e, json!({"type": "noise", "aggregate_id": "order-2"})])
                .await
                .into_iter()
                .take(1),
        );
    }
    r.send("key-globex", &[json!({"id": "step-x", "type": "moved", "aggregate_id": "order-1"})]).await;
    r.store_stream().await;

    let got = r.all_pages("key-acme", "/aggregates/order-1/events", "", 2).await;
    assert_eq!(ids(&got), sent, "the order they were appended in, not their timestamps");
    // Timestamp order would be the reverse: step-8 has the earliest timestamp.
    let by_time = r.all_pages("key-acme", "/events", "&aggregate_id=order-1", 100).await;
    assert_eq!(
        ids(&by_time),
        sent,
        "newest first by timestamp is the send order here, so oldest first is not"
    );
    let body =
        expect_error(r.get("key-acme", "/aggregates/order-1/events?type=moved").await, 400, "invalid_query")
            .await;
    assert!(body["error"]["message"].as_str().unwrap().contains("unknown field `type`"), "{body}");
}

#[tokio::test]
async fn every_bad_parameter_is_400_naming_it() {
    let r = ReadApp::start().await;
    for (query, named) in [
        ("/events?limit=0", Some("limit")),
        ("/events?limit=1001", Some("limit")),
        ("/events?limit=ten", Some("limit")),
        ("/events?from=yesterday", Some("from")),
        ("/events?to=2026-13-01T00:00:00Z", Some("to")),
        ("/events?from=2026-11-20T10:00:00Z&to=2026-11-20T10:00:00Z", Some("to")),
        ("/events?from=2026-11-21T00:00:00Z&to=2026-11-20T00:00:00Z", Some("to")),
        ("/events?colour=red", None),
        ("/events?type=a&type=b", None),
        ("/aggregates/x/events?limit=-1", Some("limit")),
    ] {
        let body = expect_error(r.get("key-acme", query).await, 400, "invalid_query").await;
        let message = body["error"]["message"].as_str().unwrap();
        match named {
            Some(name) => assert_eq!(body["error"]["details"][0]["field"], name, "{query}: {body}"),
            None => assert!(message.contains("colour") || message.contains("type"), "{query}: {body}"),
        }
    }
    expect_error(r.app.http.get(r.app.url("/events")).send().await.unwrap(), 401, "unauthorized").await;
}

#[tokio::test]
async fn reads_get_503_while_mongodb_is_down_and_writes_go_on() {
    let app = TestApp::spawn().await;
    for path in ["/events", "/events/x", "/aggregates/a/events"] {
        let resp = app.http.get(app.url(path)).header("x-api-key", "key-acme").send().await.unwrap();
        assert_eq!(resp.headers()["retry-after"], "1", "{path}");
        expect_error(resp, 503, "service_unavailable").await;
    }
    assert_eq!(app.post("/events", "key-acme", r#"{"type":"still_written"}"#).await.status(), 202);
    assert_eq!(app.entry_count().await, 1);
}

#[tokio::test]
async fn an_aggregate_keeps_its_order_across_a_change_of_the_partition_count() {
    // Its first events were stored from partition 5 (of 8), the later ones from partition 1 (of
    // 2, after the drained restart with a new STREAM_PARTITIONS): later entries, lower partition.
    let r = ReadApp::start().await;
    let mut sent = Vec::new();
    for i in 0..6 {
        let e = json!({"id": format!("m-{i}"), "type": "moved", "aggregate_id": "order-9"});
        sent.extend(r.send("key-acme", &[e]).await);
    }
    r.store_stream_in(|i| if i < 3 { 5 } else { 1 }).await;
    let got = r.all_pages("key-acme", "/aggregates/order-9/events", "", 2).await;
    assert_eq!(ids(&got), sent, "append order, not partition order");
}

#[tokio::test]
async fn a_tenants_read_flood_is_held_to_its_slots_while_another_reads_and_writes() {
    let r = ReadApp::start_with(|c| c.read_concurrency_per_tenant = 2).await;
    let app = &r.app;
    let read =
        |key: &'static str| app.http.get(app.url("/events?limit=1000")).header("x-api-key", key).send();
    // acme: 60 reads at once.
    let flood = futures::future::join_all((0..60).map(|_| read("key-acme")));
    // globex meanwhile: reads and writes, every one answered.
    let other = async {
        let mut statuses = Vec::new();
        for i in 0..10 {
            statuses.push(read("key-globex").await.unwrap().status().as_u16());
            let body = format!(r#"{{"type":"steady","id":"g-{i}"}}"#);
            statuses.push(app.post("/events", "key-globex", body).await.status().as_u16());
        }
        statuses
    };
    let (flooded, others) = tokio::join!(flood, other);
    let mut refused = 0;
    for resp in flooded {
        let resp = resp.unwrap();
        match resp.status().as_u16() {
            200 => {}
            429 => {
                assert_eq!(resp.headers()["retry-after"], "1");
                let body = expect_error(resp, 429, "rate_limited").await;
                assert!(body["error"]["message"].as_str().unwrap().contains("READ_CONCURRENCY_PER_TENANT"));
                refused += 1;
            }
            other => panic!("acme got {other}"),
        }
    }
    assert!(refused > 0, "60 reads at once never met the bound of 2");
    assert!(others.iter().all(|s| *s == 200 || *s == 202), "globex: {others:?}");
    // Nothing holds a slot once the reads are done.
    assert_eq!(read("key-acme").await.unwrap().status(), 200);
}

/// `GET /subscriptions*` are reads too (each computes the lag, with reads of MongoDB): one
/// tenant's flood of them is held to its slots, and another tenant's are answered meanwhile.
#[tokio::test]
async fn a_tenants_flood_of_subscription_reads_is_held_to_its_slots() {
    let r = ReadApp::start_with(|c| c.read_concurrency_per_tenant = 2).await;
    let app = &r.app;
    for key in ["key-acme", "key-globex"] {
        let url = app.url("/subscriptions/projection");
        let resp = app.http.put(url).header("x-api-key", key).json(&json!({})).send().await.unwrap();
        assert_eq!(resp.status(), 201);
    }
    let get =
        |key: &'static str, path: &'static str| app.http.get(app.url(path)).header("x-api-key", key).send();
    let flood =
        futures::future::join_all((0..60).map(|i| {
            get("key-acme", if i % 2 == 0 { "/subscriptions" } else { "/subscriptions/projection" })
        }));
    let other = async {
        let mut statuses = Vec::new();
        for _ in 0..10 {
            statuses.push(get("key-globex", "/subscriptions").await.unwrap().status().as_u16());
            statuses.push(get("key-globex", "/subscriptions/projection").await.unwrap().status().as_u16());
        }
        statuses
    };
    let (flooded, others) = tokio::join!(flood, other);
    let mut refused = 0;
    for resp in flooded {
        let resp = resp.unwrap();
        if resp.status() == 429 {
            let body = expect_error(resp, 429, "rate_limited").await;
            assert!(body["error"]["message"].as_str().unwrap().contains("READ_CONCURRENCY_PER_TENANT"));
            refused += 1;
        } else {
            assert_eq!(resp.status(), 200);
        }
    }
    assert!(refused > 0, "60 reads at once never met the bound of 2");
    assert!(others.iter().all(|s| *s == 200), "globex: {others:?}");
    assert_eq!(get("key-acme", "/subscriptions").await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_page_ends_early_before_max_page_bytes_and_paging_still_lists_every_event_once() {
    let r = ReadApp::start_with(|c| c.max_page_bytes = 8_000).await;
    // 30 events of about 1 KB of JSON each: at most 7 fit in 8,000 bytes.
    let events: Vec<Value> = (0..30)
        .map(|i| json!({"id": format!("big-{i:02}"), "type": "big", "data": {"pad": "x".repeat(1000)}}))
        .collect();
    r.send("key-acme", &events).await;
    r.store_stream().await;
    let resp = r.get("key-acme", "/events?limit=100").await;
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap();
    assert!(body.len() <= 8_000, "{} bytes", body.len());
    let first: Value = serde_json::from_slice(&body).unwrap();
    let n = first["events"].as_array().unwrap().len();
    assert!((1..30).contains(&n), "{n} events in the first page");
    assert!(first["next_cursor"].is_string(), "cut short, with a cursor");
    let all = r.all_pages("key-acme", "/events", "", 100).await;
    let mut got = ids(&all);
    got.sort();
    let mut sent: Vec<String> = (0..30).map(|i| format!("big-{i:02}")).collect();
    sent.sort();
    assert_eq!(got, sent, "every event once across the shortened pages");
}
