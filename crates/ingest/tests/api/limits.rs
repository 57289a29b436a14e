//! Size limits (413), the gzip bomb, and the backlog high-water mark (503).

use std::time::Duration;

use evp_testkit::eventually;
use serde_json::{Value, json};

use crate::helpers::{NO_MONGO, TestApp, expect_error, gzip, json_post};

#[tokio::test]
async fn body_batch_and_event_limits_get_413_and_enqueue_nothing() {
    let app = TestApp::spawn_with(NO_MONGO, |c| {
        c.max_body_bytes = 4096;
        c.limits.max_batch_events = 10;
        c.limits.max_event_bytes = 512;
    })
    .await;

    let big_body = json!([{"type": "a", "data": {"pad": "x".repeat(5000)}}]).to_string();
    expect_error(app.post("/events/batch", "key-acme", big_body).await, 413, "payload_too_large").await;

    let eleven: Vec<Value> = (0..11).map(|_| json!({"type": "a"})).collect();
    let body = expect_error(
        app.post("/events/batch", "key-acme", serde_json::to_string(&eleven).unwrap()).await,
        413,
        "payload_too_large",
    )
    .await;
    assert!(body["error"]["message"].as_str().unwrap().contains("MAX_BATCH_EVENTS"), "{body}");

    let one_big = json!([{"type": "a"}, {"type": "b", "data": {"pad": "x".repeat(600)}}]).to_string();
    let body =
        expect_error(app.post("/events/batch", "key-acme", one_big).await, 413, "payload_too_large").await;
    assert_eq!(body["error"]["details"][0]["index"], 1, "{body}");

    let ten: Vec<Value> = (0..10).map(|_| json!({"type": "a"})).collect();
    assert_eq!(
        app.post("/events/batch", "key-acme", serde_json::to_string(&ten).unwrap()).await.status(),
        202
    );
    assert_eq!(app.entry_count().await, 10, "only the batch within every limit was enqueued");
}

#[tokio::test]
async fn a_gzip_bomb_is_refused_by_its_decompressed_size() {
    let app = TestApp::spawn_with(NO_MONGO, |c| c.max_body_bytes = 1 << 20).await;
    // 64 MiB of spaces inside a valid JSON array compresses to about 64 KiB.
    let mut bomb = b"[".to_vec();
    bomb.resize(64 << 20, b' ');
    bomb.push(b']');
    let compressed = gzip(&bomb);
    assert!(compressed.len() < (1 << 20), "the compressed body itself is within the limit");
    let resp = app
        .post_with(
            "/events/batch",
            &[("x-api-key", "key-acme"), ("content-type", "application/json"), ("content-encoding", "gzip")],
            compressed,
        )
        .await;
    let body = expect_error(resp, 413, "payload_too_large").await;
    assert!(body["error"]["message"].as_str().unwrap().contains("decompresses"), "{body}");
    // The service is still up and serving.
    assert_eq!(app.post("/events", "key-acme", r#"{"type":"after"}"#).await.status(), 202);
    assert_eq!(app.entry_count().await, 1);
}

#[tokio::test]
async fn backlog_past_the_high_water_mark_gets_503_with_retry_after() {
    let app = TestApp::spawn_with(NO_MONGO, |c| {
        c.stream_high_water = 5;
        c.tenant_backlog_share = 1.0; // one tenant may fill it all
    })
    .await;
    let five: Vec<Value> = (0..5).map(|_| json!({"type": "a"})).collect();
    assert_eq!(
        app.post("/events/batch", "key-acme", serde_json::to_string(&five).unwrap()).await.status(),
        202
    );

    // The backlog is sampled in the background; within a few polls the ingest must refuse.
    let mut refused = None;
    let mut accepted_before_refusal = 0;
    for _ in 0..100 {
        let resp = app.post("/events", "key-acme", r#"{"type":"b"}"#).await;
        if resp.status() == 503 {
            refused = Some(resp);
            break;
        }
        assert_eq!(resp.status(), 202);
        accepted_before_refusal += 1;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let resp = refused.expect("the ingest kept accepting past the high-water mark");
    assert_eq!(resp.headers()["retry-after"], "1");
    let body = expect_error(resp, 503, "service_unavailable").await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("high-water"), "{body}");
    assert!(!message.chars().any(|c| c.is_ascii_digit()), "no figure of the shared stream: {message}");
    let backlog = app.entry_count().await;

    // Draining the stream (as workers acknowledging, uncounting and trimming entries do) lets
    // events in again.
    let mut conn = app.redis.connection().await;
    let counts = format!("{}:unstored:evp-workers-group", app.stream);
    let _: () = redis::cmd("DEL").arg(&app.stream).arg(counts).query_async(&mut conn).await.unwrap();
    let accepted = eventually(Duration::from_secs(3), || async {
        app.post("/events", "key-acme", r#"{"type":"c"}"#).await.status() == 202
    })
    .await;
    assert!(accepted, "the ingest did not accept again after the backlog drained");
    assert_eq!(backlog, 5 + accepted_before_refusal, "a refused request must enqueue nothing");
}

#[tokio::test]
async fn bad_input_gets_its_4xx_even_past_the_high_water_mark() {
    let app = TestApp::spawn_with(NO_MONGO, |c| {
        c.stream_high_water = 1;
        c.tenant_backlog_share = 1.0;
        c.limits.max_batch_events = 3;
    })
    .await;
    assert_eq!(app.post("/events", "key-acme", r#"{"type":"fills"}"#).await.status(), 202);
    // Wait until the ingest refuses valid input: the backlog monitor has seen the high water.
    let refusing = eventually(Duration::from_secs(4), || async {
        app.post("/events", "key-acme", r#"{"type":"probe"}"#).await.status() == 503
    })
    .await;
    assert!(refusing, "the ingest never reached its high-water mark");
    let before = app.entry_count().await;

    expect_error(app.post("/events", "key-acme", "{not json").await, 400, "invalid_json").await;
    expect_error(app.post("/events", "key-acme", r#"{"type":"bad type"}"#).await, 400, "invalid_event").await;
    expect_error(
        app.post("/events", "key-acme", r#"{"type":"x","data":{"n":1e400}}"#).await,
        400,
        "invalid_event",
    )
    .await;
    let four = r#"[{"type":"a"},{"type":"a"},{"type":"a"},{"type":"a"}]"#;
    expect_error(app.post("/events/batch", "key-acme", four).await, 413, "payload_too_large").await;
    let resp = app
        .post_with("/events", &[("x-api-key", "key-acme"), ("content-type", "text/plain")], r#"{"type":"a"}"#)
        .await;
    expect_error(resp, 415, "unsupported_media_type").await;
    expect_error(app.post("/events", "no-such-key", r#"{"type":"a"}"#).await, 401, "unauthorized").await;
    // And valid input is still refused with 503: the refusals above were not luck.
    expect_error(app.post("/events", "key-acme", r#"{"type":"ok"}"#).await, 503, "service_unavailable").await;
    assert_eq!(app.entry_count().await, before, "nothing refused was enqueued");
}

#[tokio::test]
async fn a_tenants_new_type_past_the_cap_is_refused_and_known_types_keep_working() {
    let app = TestApp::spawn_with(crate::helpers::NO_MONGO, |c| c.tenant_max_types = 3).await;
    for t in ["a", "b", "c"] {
        assert_eq!(app.post("/events", "key-acme", format!(r#"{{"type":"{t}"}}"#)).await.status(), 202);
    }
    let queued = app.entry_count().await;
    let body =
        expect_error(app.post("/events", "key-acme", r#"{"type":"d"}"#).await, 400, "invalid_event").await;
    assert_eq!(body["error"]["details"][0]["field"], "type", "{body}");
    let message = body["error"]["details"][0]["message"].as_str().unwrap();
    assert!(message.contains("TENANT_MAX_TYPES=3") && message.contains("\"d\""), "{message}");
    // A batch with one new type is refused whole, naming that event alone.
    let batch = app.post("/events/batch", "key-acme", r#"[{"type":"a"},{"type":"e"},{"type":"b"}]"#).await;
    let body = expect_error(batch, 400, "invalid_event").await;
    let details = body["error"]["details"].as_array().unwrap();
    assert_eq!(details.len(), 1, "{body}");
    assert_eq!((details[0]["index"].as_u64(), details[0]["field"].as_str()), (Some(1), Some("type")));
    assert_eq!(app.entry_count().await, queued, "nothing enqueued");
    // Known types keep working, and the cap is per tenant.
    assert_eq!(app.post("/events/batch", "key-acme", r#"[{"type":"c"},{"type":"a"}]"#).await.status(), 202);
    assert_eq!(app.post("/events", "key-globex", r#"{"type":"d"}"#).await.status(), 202);
    // The set is in Redis, shared by every replica: a fresh replica's memory knows nothing.
    let mut conn = app.redis.connection().await;
    let known: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{}:types:acme", app.stream))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut known = known;
    known.sort();
    assert_eq!(known, ["a", "b", "c"]);
}

/// A second ingest replica on the same Redis as `app`, with the same configuration change.
async fn second_replica(
    app: &TestApp,
    adjust: impl FnOnce(&mut evp_ingest::IngestConfig),
) -> (String, tokio_util::sync::CancellationToken) {
    let mut config = evp_ingest::IngestConfig::for_test(&app.redis.url(), NO_MONGO, crate::helpers::KEYS);
    adjust(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(evp_ingest::run(config, listener, None, shutdown.clone()));
    (url, shutdown)
}

#[tokio::test]
async fn a_flooding_tenant_gets_its_limit_across_two_replicas_and_the_other_only_202s() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let limit = |c: &mut evp_ingest::IngestConfig| {
        c.rate_limits
            .per_tenant
            .insert("acme".into(), evp_ingest::limiters::rate::Limit { rate: 200.0, burst: 200 });
    };
    let app = TestApp::spawn_with(NO_MONGO, limit).await;
    let (second, stop_second) = second_replica(&app, limit).await;
    let replicas = [app.url(""), second];
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    let window = std::time::Duration::from_secs(3);
    let (accepted, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let batch = serde_json::to_string(&vec![json!({"type": "flood"}); 20]).unwrap();

    // acme floods both replicas with batches of 20, four at a time, as fast as answers come.
    let flood: Vec<_> = (0..4)
        .map(|w| {
            let (http, batch, replicas) = (http.clone(), batch.clone(), replicas.clone());
            let (accepted, refused) = (accepted.clone(), refused.clone());
            tokio::spawn(async move {
                let mut n = w;
                while started.elapsed() < window {
                    let resp = http
                        .post(format!("{}/events/batch", replicas[n % 2]))
                        .header("x-api-key", "key-acme")
                        .header("content-type", "application/json")
                        .body(batch.clone())
                        .send()
                        .await
                        .unwrap();
                    match resp.status().as_u16() {
                        202 => accepted.fetch_add(20, Ordering::Relaxed),
                        429 => {
                            let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                            assert!((1..=2).contains(&retry), "Retry-After {retry}");
                            assert_eq!(resp.headers()["ratelimit-policy"], "\"tenant\";q=200;w=1");
                            let body: Value = resp.json().await.unwrap();
                            assert_eq!(body["error"]["code"], "rate_limited");
                            assert!(
                                body["error"]["message"].as_str().unwrap().contains("TENANT_LIMITS"),
                                "{body}"
                            );
                            refused.fetch_add(20, Ordering::Relaxed)
                        }
                        other => panic!("acme got {other}"),
                    };
                    n += 1;
                }
            })
        })
        .collect();
    // globex sends one event every 10 ms meanwhile, and gets 202 every time.
    let mut steady = 0;
    while started.elapsed() < window {
        let resp = json_post(
            &http,
            format!("{}/events", replicas[steady % 2]),
            "key-globex",
            r#"{"type":"steady"}"#,
        )
        .send()
        .await
        .unwrap();
        assert_eq!(resp.status(), 202, "globex is never refused");
        steady += 1;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    for f in flood {
        f.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (accepted, refused) = (accepted.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
    // The limit over the window: the burst plus the rate for the time, within 20%.
    let allowed = 200.0 + 200.0 * elapsed;
    eprintln!(
        "acme: {accepted} accepted of {allowed:.0} allowed in {elapsed:.2}s, {refused} refused; globex: {steady}"
    );
    assert!(
        (accepted as f64) >= 0.8 * allowed && (accepted as f64) <= 1.2 * allowed,
        "acme accepted {accepted} in {elapsed:.2}s where {allowed:.0} are allowed ({refused} refused)"
    );
    assert!(refused > 5 * accepted, "acme offered far more than its limit: {refused} refused");
    // A refused request enqueues nothing: the stream holds exactly what got 202.
    let by_tenant = app.entries().await.iter().fold((0, 0), |(a, g), e| match e["tenant"].as_str() {
        Some("acme") => (a + 1, g),
        Some("globex") => (a, g + 1),
        _ => (a, g),
    });
    assert_eq!(by_tenant, (accepted, steady as u64));
    stop_second.cancel();
}

/// Each tenant's events not yet stored, as the ingest counted them in Redis.
async fn unstored(app: &TestApp) -> std::collections::HashMap<String, u64> {
    let keys = evp_runtime::unstored::Keys::new(
        evp_runtime::partitions::Partitions::new(&app.stream, 1).first(),
        "evp-workers-group",
    );
    let mut conn = app.redis.connection().await;
    redis::cmd("HGETALL").arg(keys.unstored).query_async(&mut conn).await.unwrap()
}

#[tokio::test]
async fn a_tenant_past_its_backlog_share_gets_429_while_another_is_served_until_the_high_water_mark() {
    // No worker runs: nothing is stored, so every accepted event stays in the backlog. MongoDB
    // serves only the analytics answers that show what each replica has sampled.
    let mongo = evp_testkit::MongoServer::start().await;
    let database = mongo.unique_database("share");
    let share = |c: &mut evp_ingest::IngestConfig| {
        c.stream_high_water = 40;
        c.tenant_backlog_share = 0.5; // 20 events each
        c.common.mongodb_uri = mongo.uri().to_string();
        c.common.mongodb_database = database.clone();
    };
    let app = TestApp::spawn_with(mongo.uri(), share).await;
    let (second, stop_second) = second_replica(&app, share).await;
    let replicas = [app.url(""), second];
    let http = reqwest::Client::new();
    let post = |replica: &str, path: &str, key: &str, body: String| {
        http.post(format!("{replica}{path}"))
            .header("x-api-key", key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // Until both replicas have sampled `tenant`'s backlog at `n` (their own analytics answer says
    // so; the stream length is sampled in the same round, just before), so each check below meets
    // the last append.
    let settle = |tenant: &'static str, n: u64| {
        let (http, replicas) = (&http, &replicas);
        async move {
            for replica in replicas {
                let sampled = evp_testkit::eventually(std::time::Duration::from_secs(10), || async move {
                    let resp = http
                        .get(format!("{replica}/analytics/metrics"))
                        .header("x-api-key", format!("key-{tenant}"))
                        .send()
                        .await
                        .unwrap();
                    let body: Value = resp.json().await.unwrap();
                    body["pipeline"]["unstored"] == n
                })
                .await;
                assert!(sampled, "{replica} never sampled {tenant}'s backlog at {n}");
            }
        }
    };
    let five = serde_json::to_string(&vec![json!({"type": "flood"}); 5]).unwrap();

    // acme, through both replicas, gets 202 up to its share and then 429, whole batches only.
    let mut accepted = 0;
    let refusal = loop {
        let resp =
            post(&replicas[accepted / 5 % 2], "/events/batch", "key-acme", five.clone()).await.unwrap();
        if resp.status() != 202 {
            break resp;
        }
        accepted += 5;
        assert!(accepted <= 20, "acme was accepted past its share");
        settle("acme", accepted as u64).await;
    };
    assert_eq!(accepted, 20);
    assert_eq!(refusal.headers()["retry-after"], "1");
    let body = expect_error(refusal, 429, "rate_limited").await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("TENANT_BACKLOG_SHARE") && message.contains("acme"), "{message}");
    assert!(!message.contains("40"), "no figure of the shared stream: {message}");
    let single = post(&replicas[1], "/events", "key-acme", r#"{"type":"one"}"#.into()).await.unwrap();
    expect_error(single, 429, "rate_limited").await;
    // Bad input still gets its own 4xx first.
    let bad = post(&replicas[0], "/events", "key-acme", r#"{"type":"bad type"}"#.into()).await.unwrap();
    expect_error(bad, 400, "invalid_event").await;

    // globex is served as before, through its own share, until the whole stream's mark.
    for i in 0..20 {
        let resp =
            post(&replicas[i % 2], "/events", "key-globex", r#"{"type":"steady"}"#.into()).await.unwrap();
        assert_eq!(resp.status(), 202, "globex event {i}");
    }
    settle("globex", 20).await;
    let past = post(&replicas[0], "/events", "key-globex", r#"{"type":"steady"}"#.into()).await.unwrap();
    expect_error(past, 503, "service_unavailable").await;
    assert_eq!(unstored(&app).await, [("acme".to_string(), 20), ("globex".to_string(), 20)].into());
    assert_eq!(app.entry_count().await, 40, "refused requests enqueued nothing");

    // A worker stores and acknowledges acme's events (its acknowledgement script): acme is
    // admitted again.
    let mut conn = app.redis.connection().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&app.stream)
        .arg("evp-workers-group")
        .arg("0")
        .query_async(&mut conn)
        .await
        .unwrap();
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("evp-workers-group")
        .arg("w")
        .arg("STREAMS")
        .arg(&app.stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut acme = Vec::new();
    for entry in read.keys.into_iter().flat_map(|k| k.ids) {
        let payload: Vec<u8> = entry.get("e").unwrap();
        if evp_runtime::unstored::tenant_of(&payload) == "acme" {
            acme.push(entry.id);
        }
    }
    assert_eq!(acme.len(), 20);
    let keys = evp_runtime::unstored::Keys::new(
        evp_runtime::partitions::Partitions::new(&app.stream, 1).first(),
        "evp-workers-group",
    );
    let mut ack = redis::pipe();
    let ids: Vec<&str> = acme.iter().map(String::as_str).collect();
    evp_runtime::unstored::add_ack(&mut ack, &keys, "evp-workers-group", true, [("acme", ids)]);
    let (acked,): (u64,) = ack.query_async(&mut conn).await.unwrap();
    assert_eq!(acked, 20);
    let _: u64 =
        redis::cmd("XTRIM").arg(&app.stream).arg("MAXLEN").arg(20).query_async(&mut conn).await.unwrap();
    assert_eq!(unstored(&app).await, [("globex".to_string(), 20)].into());
    settle("acme", 0).await;
    // The stream's length is sampled beside the tenants' counts, and may still show the entries
    // trimmed just now for one round (a 503 that enqueues nothing): admitted within a few rounds.
    let admitted = evp_testkit::eventually(std::time::Duration::from_secs(5), || async {
        post(&replicas[1], "/events/batch", "key-acme", five.clone()).await.unwrap().status() == 202
    })
    .await;
    assert!(admitted, "acme is admitted once its events are stored");
    stop_second.cancel();
}
