//! `/admin/dlq*` against a real Redis: only operator keys (`ADMIN_KEYS`) pass; listing in pages,
//! oldest first; replay puts the original entry back on the main stream and removes the letter;
//! purge deletes; bad bodies are 400 and change nothing. Also the keys' reach: an operator key has
//! no tenant's events, and sees analytics over every tenant; and `/dashboard` is one page.

use std::time::Duration;

use evp_runtime::dead_letters::DeadLetters;
use evp_runtime::partitions::Partitions;
use evp_runtime::redis_conn::RedisTarget;
use serde_json::{Value, json};

use crate::helpers::{TestApp, expect_error};

const OPS: &str = "ops-key";

async fn app() -> TestApp {
    TestApp::spawn_with(crate::helpers::NO_MONGO, |c| {
        c.admin_keys = evp_ingest::keys::AdminKeys::parse(OPS, &c.api_keys).unwrap();
    })
    .await
}

/// Adds `n` dead letters as a worker would (original field `e`, plus the `dlq_*` fields).
async fn dead_letters(app: &TestApp, n: usize) -> Vec<String> {
    let mut conn = app.redis.connection().await;
    let mut ids = Vec::new();
    for i in 0..n {
        let payload =
            json!({"v": 1, "tenant": "acme", "id": format!("dead-{i}"), "type": "t", "ts": 1, "rcv": 1});
        let id: String = redis::cmd("XADD")
            .arg(format!("{}:dlq", app.stream))
            .arg("*")
            .arg("e")
            .arg(payload.to_string())
            .arg("dlq_reason")
            .arg(format!("reason {i}"))
            .arg("dlq_deliveries")
            .arg(6)
            .query_async(&mut conn)
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

async fn get(app: &TestApp, key: &str, path: &str) -> reqwest::Response {
    app.http.get(app.url(path)).header("x-api-key", key).send().await.unwrap()
}

#[tokio::test]
async fn only_operator_keys_reach_admin() {
    let app = app().await;
    for path in ["/admin/dlq", "/admin/dlq/replay", "/admin/dlq/purge"] {
        let post = path != "/admin/dlq";
        let send = |key: Option<&str>| {
            let mut req = if post {
                app.http.post(app.url(path)).body(r#"{"all":true}"#)
            } else {
                app.http.get(app.url(path))
            };
            req = req.header("content-type", "application/json");
            if let Some(key) = key {
                req = req.header("x-api-key", key);
            }
            req.send()
        };
        expect_error(send(None).await.unwrap(), 401, "unauthorized").await;
        expect_error(send(Some("nope")).await.unwrap(), 401, "unauthorized").await;
        expect_error(send(Some("key-acme")).await.unwrap(), 403, "forbidden").await;
        assert_eq!(send(Some(OPS)).await.unwrap().status(), 200, "{path}");
    }
    // An operator key names no tenant: it cannot send or read a tenant's events.
    expect_error(app.post("/events", OPS, r#"{"type":"x"}"#).await, 403, "forbidden").await;
    expect_error(get(&app, OPS, "/events").await, 403, "forbidden").await;
    assert_eq!(app.entry_count().await, 0);
}

#[tokio::test]
async fn list_pages_replay_and_purge() {
    let app = app().await;
    let ids = dead_letters(&app, 5).await;
    let page: Value = get(&app, OPS, "/admin/dlq?limit=2").await.json().await.unwrap();
    assert_eq!(page["total"], 5);
    let first: Vec<&str> =
        page["dead_letters"].as_array().unwrap().iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(first, [ids[0].as_str(), ids[1].as_str()], "oldest first");
    assert_eq!(page["dead_letters"][0]["reason"], "reason 0");
    assert_eq!(page["dead_letters"][0]["deliveries"], 6);
    assert_eq!(page["dead_letters"][0]["event"]["id"], "dead-0", "the event, decoded");
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest: Value =
        get(&app, OPS, &format!("/admin/dlq?limit=10&cursor={cursor}")).await.json().await.unwrap();
    assert_eq!(rest["dead_letters"].as_array().unwrap().len(), 3);
    assert_eq!(rest["next_cursor"], Value::Null);

    let replay = app.post("/admin/dlq/replay", OPS, json!({"ids": [ids[1]]}).to_string()).await;
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.json::<Value>().await.unwrap(), json!({"replayed": 1}));
    let entries = app.entries().await;
    assert_eq!(entries.len(), 1, "the original entry is back on the main stream");
    assert_eq!(entries[0]["id"], "dead-1");

    let purge = app.post("/admin/dlq/purge", OPS, json!({"ids": [ids[0], "1-1"]}).to_string()).await;
    assert_eq!(purge.json::<Value>().await.unwrap(), json!({"purged": 1}), "an id not there is skipped");
    let purge_all = app.post("/admin/dlq/purge", OPS, r#"{"all":true}"#).await;
    assert_eq!(purge_all.json::<Value>().await.unwrap(), json!({"purged": 3}));
    let conn = RedisTarget::new(&app.redis.url(), false).unwrap().shared(Duration::from_secs(2)).unwrap();
    assert_eq!(
        DeadLetters::new(conn, Partitions::new(&app.stream, 1), "evp-workers-group").len().await.unwrap(),
        0
    );
    assert_eq!(app.entries().await.len(), 1, "purging replays nothing");
}

#[tokio::test]
async fn bad_admin_requests_are_400_and_change_nothing() {
    let app = app().await;
    dead_letters(&app, 2).await;
    for body in [
        "{}",
        r#"{"ids": []}"#,
        r#"{"all": false}"#,
        r#"{"ids": ["1-1"], "all": true}"#,
        r#"{"ids": ["not-an-id"]}"#,
        r#"{"all": true, "extra": 1}"#,
        "[1]",
        "not json",
    ] {
        expect_error(app.post("/admin/dlq/replay", OPS, body).await, 400, "invalid_json").await;
        expect_error(app.post("/admin/dlq/purge", OPS, body).await, 400, "invalid_json").await;
    }
    for query in ["limit=0", "limit=1001", "cursor=abc", "colour=red"] {
        expect_error(get(&app, OPS, &format!("/admin/dlq?{query}")).await, 400, "invalid_query").await;
    }
    let page: Value = get(&app, OPS, "/admin/dlq").await.json().await.unwrap();
    assert_eq!(page["total"], 2, "nothing was replayed or purged");
    assert_eq!(app.entries().await.len(), 0);
}

#[tokio::test]
async fn the_dashboard_is_one_self_contained_page() {
    let app = app().await;
    let resp = app.http.get(app.url("/dashboard")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let policy = resp.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"), "{policy}");
    let html = resp.text().await.unwrap();
    assert!(
        html.contains("uPlot") && html.contains("evp.dashboard.key"),
        "the chart library and the app are inlined"
    );
    assert!(!html.contains("/*UPLOT_JS*/") && !html.contains("/*DASHBOARD_JS*/"));
    for outside in ["src=\"http", "href=\"http", "src=\"//", "@import"] {
        assert!(!html.contains(outside), "nothing is loaded from outside: found {outside}");
    }
}

#[tokio::test]
async fn dead_letters_of_every_partition_page_in_order_and_replay_to_their_own_partition() {
    let app = TestApp::spawn_with(crate::helpers::NO_MONGO, |c| {
        c.admin_keys = evp_ingest::keys::AdminKeys::parse(OPS, &c.api_keys).unwrap();
        c.common.partitions = 4;
    })
    .await;
    let partitions = Partitions::new(&app.stream, 4);
    let mut conn = app.redis.connection().await;
    // Two letters in partition 1, none in 0 and 2, three in 3.
    let mut expected = Vec::new();
    for (p, n) in [(1u32, 2), (3, 3)] {
        for i in 0..n {
            let payload =
                json!({"v": 1, "tenant": "acme", "id": format!("d-{p}-{i}"), "type": "t", "ts": 1, "rcv": 1});
            let id: String = redis::cmd("XADD")
                .arg(&partitions.get(p).unwrap().dlq)
                .arg("*")
                .arg("e")
                .arg(payload.to_string())
                .arg("dlq_reason")
                .arg("r")
                .query_async(&mut conn)
                .await
                .unwrap();
            expected.push(format!("{p}:{id}"));
        }
    }
    // Pages of two, each after the previous page's cursor: every letter once, partition by partition.
    let (mut seen, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let path = match &cursor {
            Some(c) => format!("/admin/dlq?limit=2&cursor={c}"),
            None => "/admin/dlq?limit=2".to_string(),
        };
        let page: Value = get(&app, OPS, &path).await.json().await.unwrap();
        assert_eq!(page["total"], 5);
        for letter in page["dead_letters"].as_array().unwrap() {
            let id = letter["id"].as_str().unwrap().to_string();
            assert_eq!(letter["partition"].as_u64().unwrap().to_string(), id.split(':').next().unwrap());
            seen.push(id);
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, expected);
    // An unprefixed id is not a cursor of a partitioned listing.
    let bare = expected[0].split_once(':').unwrap().1;
    expect_error(get(&app, OPS, &format!("/admin/dlq?cursor={bare}")).await, 400, "invalid_query").await;

    // Replayed by id, a letter goes back to its own partition's stream.
    let replay = app.post("/admin/dlq/replay", OPS, json!({"ids": [expected[2]]}).to_string()).await;
    assert_eq!(replay.json::<Value>().await.unwrap(), json!({"replayed": 1}));
    let back: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&partitions.get(3).unwrap().stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(serde_json::from_str::<Value>(&back[0].1[0].1).unwrap()["id"], "d-3-0");
    let purge = app.post("/admin/dlq/purge", OPS, r#"{"all":true}"#).await;
    assert_eq!(purge.json::<Value>().await.unwrap(), json!({"purged": 4}));
}

#[tokio::test]
async fn whoami_names_the_keys_tenant_and_role() {
    let app = crate::helpers::TestApp::spawn_with(crate::helpers::NO_MONGO, |c| {
        c.admin_keys = evp_ingest::keys::AdminKeys::parse("ops-key", &c.api_keys).unwrap();
    })
    .await;
    let whoami = |key: &'static str| app.http.get(app.url("/whoami")).header("x-api-key", key).send();
    let tenant: serde_json::Value = whoami("key-acme").await.unwrap().json().await.unwrap();
    assert_eq!(tenant, serde_json::json!({"tenant": "acme", "role": "tenant"}));
    let operator: serde_json::Value = whoami("ops-key").await.unwrap().json().await.unwrap();
    assert_eq!(operator, serde_json::json!({"tenant": null, "role": "operator"}));
    crate::helpers::expect_error(whoami("nope").await.unwrap(), 401, "unauthorized").await;
}
