//! POST /events and /events/batch: what is accepted ends up in Redis, exactly as sent, for the
//! key's tenant; what is refused leaves nothing behind.

use serde_json::{Value, json};

use crate::helpers::{TestApp, expect_error, gzip};

#[tokio::test]
async fn single_event_is_in_the_stream_before_202() {
    let app = TestApp::spawn().await;
    let resp = app
        .post("/events", "key-acme", r#"{"type":"page_view","id":"e-1","source":"web","data":{"path":"/"}}"#)
        .await;
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({"accepted": 1, "ids": ["e-1"]}));

    let entries = app.entries().await;
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(
        (e["tenant"].as_str(), e["id"].as_str(), e["type"].as_str()),
        (Some("acme"), Some("e-1"), Some("page_view"))
    );
    assert_eq!(e["source"], "web");
    assert_eq!(e["data"], json!({"path": "/"}));
    assert!(e["rcv"].as_i64().unwrap() > 1_600_000_000_000, "received_at recorded: {e}");
    assert_eq!(e["ts"], e["rcv"], "timestamp defaults to the receive time");
}

#[tokio::test]
async fn concurrent_single_events_each_land_once_with_their_own_outcome() {
    // Single events from concurrent requests share Redis pipelines; each request must still get
    // 202 only for its own event, and every event must be in the stream exactly once.
    let app = TestApp::spawn().await;
    let app = &app;
    let requests = (0..300).map(|n| {
        let body = json!({"type": "burst", "id": format!("c-{n}"), "data": {"n": n}}).to_string();
        let key = if n % 2 == 0 { "key-acme" } else { "key-globex" };
        async move { (n, app.post("/events", key, body).await) }
    });
    for (n, resp) in futures::future::join_all(requests).await {
        assert_eq!(resp.status(), 202, "request {n}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body, json!({"accepted": 1, "ids": [format!("c-{n}")]}));
    }
    let mut stored: Vec<(String, String, i64)> = app
        .entries()
        .await
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                e["tenant"].as_str().unwrap().to_owned(),
                e["data"]["n"].as_i64().unwrap(),
            )
        })
        .collect();
    stored.sort_by_key(|(_, _, n)| *n);
    let expected: Vec<(String, String, i64)> = (0..300)
        .map(|n| (format!("c-{n}"), if n % 2 == 0 { "acme" } else { "globex" }.to_owned(), n))
        .collect();
    assert_eq!(stored, expected);
}

#[tokio::test]
async fn an_xadd_redis_refuses_is_503_and_nothing_is_half_written() {
    let app = TestApp::spawn().await;
    let mut conn = app.redis.connection().await;
    // The stream's key holding a string makes Redis refuse every XADD (WRONGTYPE).
    let _: () = redis::cmd("SET").arg(&app.stream).arg("not a stream").query_async(&mut conn).await.unwrap();
    let resp = app.post("/events", "key-acme", r#"{"type":"refused","id":"r-1"}"#).await;
    let body = expect_error(resp, 503, "service_unavailable").await;
    assert!(body["error"]["message"].as_str().unwrap().contains("nothing was accepted"), "{body}");
    let resp = app.post("/events/batch", "key-acme", r#"[{"type":"refused"},{"type":"refused"}]"#).await;
    let body = expect_error(resp, 503, "service_unavailable").await;
    assert!(body["error"]["message"].as_str().unwrap().contains("nothing was accepted"), "{body}");
    let kind: String = redis::cmd("TYPE").arg(&app.stream).query_async(&mut conn).await.unwrap();
    assert_eq!(kind, "string", "nothing was written over the key");

    let _: () = redis::cmd("DEL").arg(&app.stream).query_async(&mut conn).await.unwrap();
    let resp = app.post("/events", "key-acme", r#"{"type":"accepted","id":"r-2"}"#).await;
    assert_eq!(resp.status(), 202);
    let ids: Vec<Value> = app.entries().await.iter().map(|e| e["id"].clone()).collect();
    assert_eq!(ids, [json!("r-2")]);
}

#[tokio::test]
async fn generated_ids_are_uuid_v7_and_returned_in_order() {
    let app = TestApp::spawn().await;
    let resp = app
        .post("/events/batch", "key-acme", r#"[{"type":"a"},{"type":"b","id":"mine"},{"type":"c"}]"#)
        .await;
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    let ids: Vec<&str> = body["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(body["accepted"], 3);
    assert_eq!(ids[1], "mine");
    for id in [ids[0], ids[2]] {
        assert_eq!(&id[14..15], "7", "UUIDv7 expected, got {id}");
    }
    let stored: Vec<String> =
        app.entries().await.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(stored, ids);
}

#[tokio::test]
async fn both_batch_forms_are_accepted() {
    let app = TestApp::spawn().await;
    assert_eq!(app.post("/events/batch", "key-acme", r#"[{"type":"a"}]"#).await.status(), 202);
    assert_eq!(
        app.post("/events/batch", "key-acme", r#"{"events":[{"type":"b"},{"type":"c"}]}"#).await.status(),
        202
    );
    let types: Vec<Value> = app.entries().await.iter().map(|e| e["type"].clone()).collect();
    assert_eq!(types, [json!("a"), json!("b"), json!("c")]);
}

#[tokio::test]
async fn an_invalid_event_refuses_the_whole_batch_and_names_each_index() {
    let app = TestApp::spawn().await;
    let batch = json!([
        {"type": "ok"},
        {"type": "has space"},
        {"type": "ok", "timestamp": "tuesday"},
        {"type": "ok", "data": "not an object"},
        {"type": "ok"}
    ]);
    let body =
        expect_error(app.post("/events/batch", "key-acme", batch.to_string()).await, 400, "invalid_event")
            .await;
    let details = body["error"]["details"].as_array().unwrap();
    let indexed: Vec<(i64, &str)> =
        details.iter().map(|d| (d["index"].as_i64().unwrap(), d["field"].as_str().unwrap())).collect();
    assert_eq!(indexed, [(1, "type"), (2, "timestamp"), (3, "data")]);
    assert_eq!(app.entry_count().await, 0, "nothing of a refused batch may be enqueued");
}

#[tokio::test]
async fn malformed_json_is_invalid_json() {
    let app = TestApp::spawn().await;
    expect_error(app.post("/events", "key-acme", r#"{"type": "a""#).await, 400, "invalid_json").await;
    expect_error(app.post("/events/batch", "key-acme", r#"[{"type":"a"},]"#).await, 400, "invalid_json")
        .await;
    expect_error(app.post("/events/batch", "key-acme", r#""a string""#).await, 400, "invalid_json").await;
    expect_error(app.post("/events", "key-acme", "").await, 400, "invalid_json").await;
    let body =
        expect_error(app.post("/events", "key-acme", r#"{"data":{}}"#).await, 400, "invalid_event").await;
    assert!(body["error"]["message"].as_str().unwrap().contains("type"), "{body}");
    assert_eq!(app.entry_count().await, 0);
}

#[tokio::test]
async fn api_keys_name_tenants_and_unknown_keys_get_401() {
    let app = TestApp::spawn().await;
    for key in ["key-acme", "key-globex", "key-default"] {
        assert_eq!(app.post("/events", key, r#"{"type":"t"}"#).await.status(), 202);
    }
    let tenants: Vec<Value> = app.entries().await.iter().map(|e| e["tenant"].clone()).collect();
    assert_eq!(tenants, [json!("acme"), json!("globex"), json!("default")]);

    // A tenant in the body is refused, never honoured.
    expect_error(
        app.post("/events", "key-acme", r#"{"type":"t","tenant":"globex"}"#).await,
        400,
        "invalid_event",
    )
    .await;
    expect_error(app.post("/events", "wrong", r#"{"type":"t"}"#).await, 401, "unauthorized").await;
    expect_error(app.post("/events", "key-acme2", r#"{"type":"t"}"#).await, 401, "unauthorized").await;
    let no_key =
        app.post_with("/events/batch", &[("content-type", "application/json")], r#"[{"type":"t"}]"#).await;
    expect_error(no_key, 401, "unauthorized").await;
    assert_eq!(app.entry_count().await, 3);
}

#[tokio::test]
async fn gzip_bodies_are_accepted() {
    let app = TestApp::spawn().await;
    let batch: Vec<Value> = (0..200).map(|i| json!({"type": "zipped", "id": format!("z-{i}")})).collect();
    let resp = app
        .post_with(
            "/events/batch",
            &[
                ("x-api-key", "key-globex"),
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            gzip(serde_json::to_string(&batch).unwrap().as_bytes()),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let entries = app.entries().await;
    assert_eq!(entries.len(), 200);
    assert_eq!(entries[199]["id"], "z-199");

    let garbage = app
        .post_with(
            "/events",
            &[
                ("x-api-key", "key-globex"),
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            "definitely not gzip",
        )
        .await;
    expect_error(garbage, 400, "invalid_json").await;
}

#[tokio::test]
async fn non_json_content_types_and_encodings_get_415() {
    let app = TestApp::spawn().await;
    let send = |ct: Option<&'static str>, ce: Option<&'static str>| {
        let mut req =
            app.http.post(app.url("/events")).header("x-api-key", "key-acme").body(r#"{"type":"a"}"#);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        if let Some(ce) = ce {
            req = req.header("content-encoding", ce);
        }
        req.send()
    };
    expect_error(send(Some("text/plain"), None).await.unwrap(), 415, "unsupported_media_type").await;
    expect_error(send(None, None).await.unwrap(), 415, "unsupported_media_type").await;
    expect_error(send(Some("application/json"), Some("br")).await.unwrap(), 415, "unsupported_media_type")
        .await;
    assert_eq!(send(Some("application/json; charset=utf-8"), None).await.unwrap().status(), 202);
    assert_eq!(app.entry_count().await, 1);
}

#[tokio::test]
async fn data_mongodb_cannot_store_exactly_is_refused_with_400_naming_the_field() {
    let app = TestApp::spawn().await;
    let deep = format!(r#"{{"type":"x","data":{}1{}}}"#, r#"{"a":"#.repeat(150), "}".repeat(150));
    for (body, expected) in [
        (r#"{"type":"x","data":{"a\u0000b":1}}"#.to_string(), "NUL character"),
        (r#"{"type":"x","data":{"n":1e400}}"#.to_string(), "number out of range"),
        (r#"{"type":"x","data":{"n":[9223372036854775808]}}"#.to_string(), "signed 64-bit"),
        (deep, "nested more than 100 levels"),
    ] {
        let body_json =
            expect_error(app.post("/events", "key-acme", body.clone()).await, 400, "invalid_event").await;
        let detail = &body_json["error"]["details"][0];
        assert_eq!(detail["field"], "data", "{body_json}");
        assert!(detail["message"].as_str().unwrap().contains(expected), "{body_json}");
        let batch = format!(r#"[{{"type":"fine"}},{body}]"#);
        let body_json =
            expect_error(app.post("/events/batch", "key-acme", batch).await, 400, "invalid_event").await;
        assert_eq!(body_json["error"]["details"][0]["index"], 1, "{body_json}");
    }
    assert_eq!(app.entry_count().await, 0, "nothing refused was enqueued");
}

#[tokio::test]
async fn an_idempotency_key_sent_again_with_another_body_gets_422_and_enqueues_nothing() {
    let app = TestApp::spawn().await;
    let send = |tenant_key: &'static str, body: &'static str| {
        app.http
            .post(app.url("/events/batch"))
            .header("x-api-key", tenant_key)
            .header("content-type", "application/json")
            .header("idempotency-key", "checkout-9")
            .body(body)
            .send()
    };
    let first = r#"[{"type":"a"},{"type":"b"}]"#;
    assert_eq!(send("key-acme", first).await.unwrap().status(), 202);
    assert_eq!(send("key-acme", first).await.unwrap().status(), 202, "the same body again is a retry");
    let queued = app.entry_count().await;
    let other = r#"[{"type":"a"},{"type":"b"},{"type":"c"}]"#;
    let body = expect_error(send("key-acme", other).await.unwrap(), 422, "idempotency_key_reused").await;
    assert!(body["error"]["message"].as_str().unwrap().contains("different request body"), "{body}");
    assert_eq!(app.entry_count().await, queued, "nothing enqueued");
    // Keys are per tenant: another tenant may use the same key for its own body.
    assert_eq!(send("key-globex", other).await.unwrap().status(), 202);
    // Bad input is still its 4xx first.
    expect_error(send("key-acme", "[{").await.unwrap(), 400, "invalid_json").await;
}

#[tokio::test]
async fn an_idempotency_key_gives_a_retried_request_the_same_ids() {
    let app = TestApp::spawn().await;
    let send = |key: &'static str, tenant_key: &'static str| {
        let app = &app;
        async move {
            let resp = app
                .post_with(
                    "/events/batch",
                    &[
                        ("x-api-key", tenant_key),
                        ("content-type", "application/json"),
                        ("idempotency-key", key),
                    ],
                    r#"[{"type":"a"},{"type":"b","id":"own"},{"type":"c"}]"#,
                )
                .await;
            assert_eq!(resp.status(), 202);
            let body: Value = resp.json().await.unwrap();
            body["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    let first = send("order-17-attempt", "key-acme").await;
    let retry = send("order-17-attempt", "key-acme").await;
    assert_eq!(first, retry, "a retry carries the same ids, so the worker stores each event once");
    assert_eq!(first[1], "own");
    assert_ne!(first, send("another-request", "key-acme").await);
    assert_ne!(first[0], send("order-17-attempt", "key-globex").await[0], "ids are per tenant");
    let stored: Vec<String> =
        app.entries().await.iter().take(6).map(|e| e["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(stored[..3], stored[3..], "both attempts reached the stream with the same ids");

    let resp = app
        .post_with(
            "/events",
            &[
                ("x-api-key", "key-acme"),
                ("content-type", "application/json"),
                ("idempotency-key", &"x".repeat(129)),
            ],
            r#"{"type":"a"}"#,
        )
        .await;
    let body = expect_error(resp, 400, "invalid_event").await;
    assert_eq!(body["error"]["details"][0]["field"], "Idempotency-Key", "{body}");
}
