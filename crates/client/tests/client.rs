//! The async client against a real `evp-ingest` (in process, on port 0) and a real `redis-server`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use evp_client::{Client, ClientConfig, Error, Event};
use serde_json::json;

mod common;

use common::{ingest, stream_ids};

#[tokio::test]
async fn send_and_send_batch_return_the_ids_the_stream_holds() {
    let ingest = ingest(|_| {}).await;
    let client = Client::new(&ingest.url, "key-acme").unwrap();
    let one =
        client.send(Event::new("signup").aggregate_id("user-1").data(json!({"plan": "pro"}))).await.unwrap();
    assert_eq!(uuid::Uuid::parse_str(&one).unwrap().get_version_num(), 7, "a client-generated UUIDv7");
    let own = client.send(Event::new("login").id("my-own-id")).await.unwrap();
    assert_eq!(own, "my-own-id");

    // 2,500 events with a server limit of 1,000: split into three requests, ids in order.
    let events: Vec<Event> = (0..2500).map(|i| Event::new("bulk").data(json!({"i": i}))).collect();
    let ids = client.send_batch(events).await.unwrap();
    assert_eq!(ids.len(), 2500);
    let mut expected = vec![one, own];
    expected.extend(ids);
    assert_eq!(stream_ids(&ingest.redis).await, expected);
}

#[tokio::test]
async fn a_refusal_comes_back_at_once_with_the_servers_code_and_details() {
    let ingest = ingest(|_| {}).await;
    let client = Client::new(&ingest.url, "key-acme").unwrap();
    let started = Instant::now();
    let err = client
        .send_batch(vec![
            Event::new("ok"),
            Event::new("bad type"),
            Event::new("x").data(json!({"n": [1, 2]})),
        ])
        .await
        .unwrap_err();
    match &err {
        Error::Api { status, code, details, attempts, .. } => {
            assert_eq!((*status, code.as_str(), *attempts), (400, "invalid_event", 1), "not retried");
            assert_eq!(details[0].index, Some(1));
            assert_eq!(details[0].field.as_deref(), Some("type"));
        }
        other => panic!("expected Api, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    let err = Client::new(&ingest.url, "wrong").unwrap().send(Event::new("a")).await.unwrap_err();
    assert_eq!(err.code(), Some("unauthorized"));
    assert!(stream_ids(&ingest.redis).await.is_empty(), "nothing was enqueued");
}

#[tokio::test]
async fn the_client_retries_through_a_redis_outage_and_nothing_is_stored_twice() {
    let mut ingest = ingest(|_| {}).await;
    let mut config = ClientConfig::new(&ingest.url, "key-acme");
    config.deadline = Duration::from_secs(30);
    config.backoff = (Duration::from_millis(50), Duration::from_millis(500));
    let client = Client::with_config(config).unwrap();
    let before = client
        .send_batch((0..100).map(|i| Event::new("before").data(json!({"i": i}))).collect())
        .await
        .unwrap();

    ingest.redis.stop();
    let sender = {
        let client = client.clone();
        tokio::spawn(async move {
            client.send_batch((0..100).map(|i| Event::new("during").data(json!({"i": i}))).collect()).await
        })
    };
    // The ingest answers 503 meanwhile; the client keeps trying.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!sender.is_finished(), "the client gave up while Redis was down");
    ingest.redis.restart();
    let during = sender.await.unwrap().expect("delivered once Redis came back");

    // Redis restarted empty (no persistence): what is there now is what was sent after it came
    // back, with the ids the client fixed before its first attempt. (Were an attempt to land after
    // its answer timed out, its retry would append the same ids again, which the worker's unique
    // index stores once; the ids cannot change between attempts.)
    let stored: HashSet<String> = stream_ids(&ingest.redis).await.into_iter().collect();
    assert_eq!(stored, during.iter().cloned().collect::<HashSet<_>>());
    assert_eq!((before.len(), during.len()), (100, 100));
}

#[tokio::test]
async fn a_deadline_bounds_the_retries_and_honours_retry_after() {
    let mut ingest = ingest(|_| {}).await;
    ingest.redis.stop();
    let mut config = ClientConfig::new(&ingest.url, "key-acme");
    config.deadline = Duration::from_millis(2500);
    let client = Client::with_config(config).unwrap();
    let started = Instant::now();
    let err = client.send(Event::new("a")).await.unwrap_err();
    let took = started.elapsed();
    match err {
        // Retry-After: 1 from the ingest: at most three attempts fit in 2.5 s.
        Error::Unavailable { attempts, ref last } => {
            assert!((2..=3).contains(&attempts), "{attempts} attempts: {last}");
            assert!(last.contains("503"), "{last}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(took < Duration::from_millis(2500), "the deadline held: {took:?}");
}

#[tokio::test]
async fn a_rate_limited_batch_is_retried_after_retry_after_and_stored_once() {
    // 10 events/s with a burst of 10: the first batch of 10 empties the bucket, so the second gets
    // 429 with Retry-After: 1, and the client sends it again once a second has passed.
    let ingest = ingest(|c| {
        let limit = evp_ingest::limiters::rate::Limit { rate: 10.0, burst: 10 };
        c.rate_limits.per_tenant.insert("acme".into(), limit);
    })
    .await;
    let client = Client::new(&ingest.url, "key-acme").unwrap();
    let batch = || (0..10).map(|i| Event::new("limited").data(json!({"i": i}))).collect::<Vec<_>>();
    let first = client.send_batch(batch()).await.unwrap();
    let started = Instant::now();
    let second = client.send_batch(batch()).await.unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "retried only after Retry-After: {waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    let mut expected = first;
    expected.extend(second);
    assert_eq!(
        stream_ids(&ingest.redis).await,
        expected,
        "each event once, the refused attempt enqueued nothing"
    );
}

#[tokio::test]
async fn gzip_bodies_are_accepted() {
    let ingest = ingest(|_| {}).await;
    let mut config = ClientConfig::new(&ingest.url, "key-acme");
    config.gzip = true;
    let client = Client::with_config(config).unwrap();
    let events: Vec<Event> =
        (0..300).map(|i| Event::new("zipped").data(json!({"pad": "x".repeat(200), "i": i}))).collect();
    let ids = client.send_batch(events).await.unwrap();
    assert_eq!(stream_ids(&ingest.redis).await, ids);
}

#[test]
fn bad_configuration_is_refused() {
    assert!(matches!(Client::new("localhost:3000", "k"), Err(Error::Config(_))));
    assert!(matches!(Client::new("http://x", "bad\nkey"), Err(Error::Config(_))));
}
