//! The fire-and-forget emitter against a real `evp-ingest` (in process) and `redis-server`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use evp_client::{Client, ClientConfig, EmitError, Emitter, EmitterConfig, Error, Event};
use serde_json::json;
use tokio_util::sync::CancellationToken;

mod common;

use common::stream_ids;

async fn ingest() -> common::Ingest {
    common::ingest(|_| {}).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_then_shutdown_are_all_in_the_stream_once() {
    let ingest = ingest().await;
    let emitter =
        Emitter::new(Client::new(&ingest.url, "key-acme").unwrap(), EmitterConfig::default()).unwrap();
    let mut receipts = Vec::new();
    for i in 0..10_000 {
        receipts
            .push(emitter.emit(Event::new("emitted").data(json!({"i": i}))).expect("the queue holds 10,000"));
    }
    let flushed =
        tokio::task::spawn_blocking(move || emitter.shutdown(Duration::from_secs(60))).await.unwrap();
    assert!(flushed, "shutdown delivered everything in time");
    let stored = stream_ids(&ingest.redis).await;
    assert_eq!(stored.len(), 10_000);
    assert_eq!(stored.iter().collect::<HashSet<_>>().len(), 10_000, "each once");
    // Every receipt names its event's id, in emit order.
    let mut ids = Vec::new();
    for receipt in &receipts {
        ids.push(receipt.outcome().await.unwrap());
    }
    assert_eq!(ids, stored);
}

#[test]
fn a_full_queue_refuses_and_counts_without_blocking() {
    // An address where nothing listens: every batch fails and is retried until its deadline, so
    // nothing leaves the queue for a while.
    let mut config = ClientConfig::new("http://127.0.0.1:9", "k");
    config.deadline = Duration::from_secs(3);
    let emitter = Emitter::new(
        Client::with_config(config).unwrap(),
        EmitterConfig { capacity: 10, batch: 5, interval: Duration::from_secs(60), ..Default::default() },
    )
    .unwrap();
    let started = Instant::now();
    let mut refused = 0;
    for _ in 0..100 {
        match emitter.emit(Event::new("x")) {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e, EmitError::QueueFull);
                refused += 1;
            }
        }
    }
    assert!(started.elapsed() < Duration::from_millis(500), "emit blocked: {:?}", started.elapsed());
    assert!(refused >= 80, "only {refused} refused with room for 10 (+ one batch in hand)");
    assert_eq!(emitter.stats().dropped(), refused);
    // Shutting down gives up within its timeout (nothing can be delivered), without hanging.
    let started = Instant::now();
    assert!(!emitter.shutdown(Duration::from_millis(300)));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_emitter_delivers_what_it_held() {
    let ingest = ingest().await;
    let url = ingest.url.clone();
    let ids = tokio::task::spawn_blocking(move || {
        let emitter = Emitter::new(
            Client::new(&url, "key-acme").unwrap(),
            EmitterConfig { interval: Duration::from_secs(60), batch: 1000, ..Default::default() },
        )
        .unwrap();
        let receipts: Vec<_> =
            (0..500).map(|i| emitter.emit(Event::new("held").id(format!("h-{i}"))).unwrap()).collect();
        drop(emitter);
        receipts
            .iter()
            .map(|r| r.wait_timeout(Duration::from_secs(1)).expect("settled by the drop").unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(ids, (0..500).map(|i| format!("h-{i}")).collect::<Vec<_>>());
    assert_eq!(stream_ids(&ingest.redis).await, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_reaches_the_receipts_and_the_error_callback() {
    let ingest = ingest().await;
    let errors = Arc::new(AtomicUsize::new(0));
    let seen = errors.clone();
    let emitter = Emitter::new(
        Client::new(&ingest.url, "key-acme").unwrap(),
        EmitterConfig {
            interval: Duration::from_millis(50),
            on_error: Some(Arc::new(move |e: &Error| {
                assert_eq!(e.code(), Some("invalid_event"));
                seen.fetch_add(1, Ordering::Relaxed);
            })),
            ..Default::default()
        },
    )
    .unwrap();
    let bad = emitter.emit(Event::new("bad type")).unwrap();
    match bad.outcome().await {
        Err(e) => assert_eq!(e.code(), Some("invalid_event")),
        Ok(id) => panic!("accepted {id}"),
    }
    assert_eq!(errors.load(Ordering::Relaxed), 1);
    assert_eq!(emitter.stats().failed(), 1);
    let good = emitter.emit(Event::new("fine")).unwrap();
    assert!(good.outcome().await.is_ok());
    tokio::task::spawn_blocking(move || emitter.shutdown(Duration::from_secs(10))).await.unwrap();
}

/// The whole way: 10,000 events through the emitter, with Redis stopped for two seconds in the
/// middle, into MongoDB through a worker (in process): each event stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_redis_outage_into_mongodb_each_event_is_stored_once() {
    use mongodb::bson::{Document, doc};

    let mut ingest = ingest().await;
    let mongo = evp_testkit::MongoServer::start().await;
    let database = mongo.unique_database("emitter");
    let env = evp_runtime::config::Env::from_pairs([
        ("REDIS_URL", ingest.redis.url()),
        ("MONGODB_URI", mongo.uri().to_string()),
        ("MONGODB_DATABASE", database.clone()),
        ("CONSUMER_NAME", "w".to_string()),
        ("WORKER_BLOCK_MS", "200".to_string()),
        ("WORKER_CLAIM_IDLE_MS", "1000".to_string()),
    ]);
    let stop_worker = CancellationToken::new();
    let worker = tokio::spawn(evp_worker::run(
        evp_worker::WorkerConfig::from_env(&env).unwrap(),
        None,
        None,
        stop_worker.clone(),
    ));

    let mut config = ClientConfig::new(&ingest.url, "key-acme");
    config.deadline = Duration::from_secs(30);
    config.backoff = (Duration::from_millis(50), Duration::from_millis(500));
    let emitter =
        Arc::new(Emitter::new(Client::with_config(config).unwrap(), EmitterConfig::default()).unwrap());
    let emit = |range: std::ops::Range<u32>| {
        let emitter = emitter.clone();
        range
            .map(move |i| emitter.emit(Event::new("through").id(format!("e-{i}"))).unwrap())
            .collect::<Vec<_>>()
    };
    let events = mongo.client().await.database(&database).collection::<Document>("events");
    let stored_within = |n: u64, within: Duration| {
        let events = events.clone();
        async move {
            let deadline = Instant::now() + within;
            loop {
                let stored = events.count_documents(doc! {"tenant": "acme"}).await.unwrap();
                if stored >= n || Instant::now() > deadline {
                    return stored;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let mut receipts = emit(0..5000);
    for receipt in &receipts {
        receipt.outcome().await.unwrap();
    }
    // The test's Redis keeps nothing across a restart, so let the worker store these first.
    assert_eq!(stored_within(5000, Duration::from_secs(60)).await, 5000);
    ingest.redis.stop();
    receipts.extend(emit(5000..10_000));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = receipts[5000..].iter().filter(|r| r.wait_timeout(Duration::ZERO).is_none()).count();
    assert!(waiting > 0, "the outage did not hold anything up, so it tested nothing");
    ingest.redis.restart();
    let emitter = Arc::try_unwrap(emitter).unwrap();
    assert!(tokio::task::spawn_blocking(move || emitter.shutdown(Duration::from_secs(60))).await.unwrap());
    for receipt in &receipts {
        receipt.outcome().await.expect("every event accepted in the end");
    }

    assert_eq!(stored_within(10_000, Duration::from_secs(90)).await, 10_000, "every event stored");
    let distinct: Vec<mongodb::bson::Bson> =
        events.distinct("event_id", doc! {"tenant": "acme"}).await.unwrap();
    assert_eq!(distinct.len(), 10_000, "none twice");
    stop_worker.cancel();
    worker.await.unwrap().unwrap();
}
