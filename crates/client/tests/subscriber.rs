//! The `Subscriber` runner against the real ingest, a worker storing into a real MongoDB-protocol
//! server (both in process): a handler that fails twice then succeeds, a graceful stop, and the
//! blocking variant.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use evp_client::{Client, Delivered, Event, Subscriber, SubscriberConfig};
use tokio_util::sync::CancellationToken;

struct System {
    ingest: common::Ingest,
    _mongo: evp_testkit::MongoServer,
    _worker: tokio_util::sync::DropGuard,
}

impl System {
    /// `GET path` with acme's key, as JSON.
    async fn get(&self, path: &str) -> serde_json::Value {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.ingest.url))
            .header("x-api-key", "key-acme")
            .send()
            .await
            .unwrap();
        response.json().await.unwrap()
    }

    /// Waits until the worker has stored and acknowledged everything the tenant sent (its
    /// unstored count is 0 in both partitions), so that the subscription's horizon no longer
    /// moves and what a poll can deliver no longer grows under the test's feet. The counts are
    /// read from Redis, where they change with the append and the acknowledgement themselves
    /// (`GET /analytics/metrics` shows a sample up to 250 ms old: right after a send, still 0).
    async fn settled(&self) {
        let partitions = evp_runtime::partitions::Partitions::new("events", 2);
        let keys =
            || partitions.iter().map(|p| evp_runtime::unstored::Keys::new(p, "evp-workers-group").unstored);
        let mut unstored = 0;
        for _ in 0..1200 {
            unstored = self.ingest.redis.hash_field_sum(keys(), "acme").await;
            if unstored == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the worker did not store everything within a minute: {unstored} unstored");
    }
}

async fn system() -> System {
    let mongo = evp_testkit::MongoServer::start().await;
    let database = mongo.unique_database("subscriber");
    let (uri, db) = (mongo.uri().to_string(), database.clone());
    let ingest = common::ingest(move |c| {
        c.common.mongodb_uri = uri;
        c.common.mongodb_database = db;
        c.common.partitions = 2;
        c.subscription_ack_timeout = Duration::from_secs(5);
    })
    .await;
    let env = evp_runtime::config::Env::from_pairs([
        ("REDIS_URL", ingest.redis.url()),
        ("MONGODB_URI", mongo.uri().to_string()),
        ("MONGODB_DATABASE", database),
        ("STREAM_PARTITIONS", "2".to_string()),
        ("CONSUMER_NAME", "w".to_string()),
        ("WORKER_BLOCK_MS", "200".to_string()),
    ]);
    let stop = CancellationToken::new();
    tokio::spawn(evp_worker::run(
        evp_worker::WorkerConfig::from_env(&env).unwrap(),
        None,
        None,
        stop.clone(),
    ));
    System { ingest, _mongo: mongo, _worker: stop.drop_guard() }
}

fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| Event::new("order_placed").id(format!("o-{i}")).aggregate_id(format!("cart-{}", i % 5)))
        .collect()
}

/// Each aggregate's event ids, in the order given.
fn by_aggregate<'a>(events: impl Iterator<Item = (&'a str, &'a str)>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (aggregate, id) in events {
        out.entry(aggregate.to_owned()).or_default().push(id.to_owned());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_fails_twice_then_succeeds_gets_every_event_in_order_and_stops_gracefully() {
    let sys = system().await;
    let client = Client::new(&sys.ingest.url, "key-acme").unwrap();
    let sent = events(300);
    client.send_batch(sent.clone()).await.unwrap();
    // All stored and acknowledged before the first poll: a redelivery then holds exactly the
    // batch handed back (while the worker is still storing, the horizon moves, and a redelivery
    // may hold more).
    sys.settled().await;

    let mut config = SubscriberConfig::new("projector-1");
    config.types = vec!["order_placed".into()];
    config.backoff = (Duration::from_millis(50), Duration::from_millis(200));
    let subscriber = Subscriber::new(client.clone(), "carts", config);
    let stop = subscriber.stop_handle();
    let seen: Arc<Mutex<Vec<Delivered>>> = Arc::default();
    let mut calls = 0;
    let mut first_batch: Option<Vec<String>> = None;
    let handler = {
        let seen = seen.clone();
        move |batch: Vec<Delivered>| {
            calls += 1;
            let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
            // The first two calls fail: the same batch must come back each time.
            let failing = calls <= 2;
            if failing {
                assert!(first_batch.get_or_insert(ids.clone()) == &ids, "a handed-back batch comes again");
            }
            let (seen, stop, calls) = (seen.clone(), stop.clone(), calls);
            async move {
                if failing {
                    return Err(format!("projection store down (call {calls})"));
                }
                let mut seen = seen.lock().unwrap();
                seen.extend(batch);
                if seen.len() >= 300 {
                    stop.stop();
                }
                Ok(())
            }
        }
    };
    // Spawned: the run is Send.
    let run = tokio::spawn(async move { subscriber.run(handler).await });
    let stats =
        tokio::time::timeout(Duration::from_secs(90), run).await.expect("the run stopped").unwrap().unwrap();
    assert_eq!(stats.nacked, 2);
    assert_eq!(stats.events, 300, "{stats:?}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 300, "every event once");
    let got = by_aggregate(seen.iter().map(|e| (e.aggregate_id.as_deref().unwrap(), e.id.as_str())));
    let expected: Vec<(String, String)> =
        sent.iter().enumerate().map(|(i, _)| (format!("cart-{}", i % 5), format!("o-{i}"))).collect();
    assert_eq!(
        got,
        by_aggregate(expected.iter().map(|(a, i)| (a.as_str(), i.as_str()))),
        "in order per aggregate"
    );

    // The server kept the handler's error, and everything is acknowledged.
    let view = sys.get("/subscriptions/carts").await;
    assert_eq!(view["last_error"]["message"], "projection store down (call 2)", "{view}");
    assert_eq!(view["pending"], 0, "the batch in hand was acknowledged before the run ended: {view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blocking_runner_serves_a_synchronous_handler() {
    let sys = system().await;
    let client = Client::new(&sys.ingest.url, "key-acme").unwrap();
    client.send_batch(events(50)).await.unwrap();
    let mut config = SubscriberConfig::new("sync");
    config.batch = 20;
    let subscriber = Subscriber::new(client, "sync-view", config);
    let stop = subscriber.stop_handle();
    let stats = tokio::task::spawn_blocking(move || {
        let mut count = 0;
        subscriber.run_blocking(|batch: &[Delivered]| {
            count += batch.len();
            if count >= 50 {
                stop.stop();
            }
            Ok::<(), String>(())
        })
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(stats.events, 50);
    assert!(stats.acknowledged >= 3, "batches of at most 20: {stats:?}");
}
