//! The blocking client from plain threads and from inside tokio runtimes, against a real ingest
//! (on a runtime of its own, so that blocking a test's runtime cannot stall it) and Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use evp_client::blocking::Client;
use evp_client::{ClientConfig, Error, Event};
use evp_ingest::IngestConfig;
use evp_testkit::RedisServer;

mod common;

use common::StreamEntry;

/// An ingest serving on a thread and runtime of its own; returns its URL and its Redis.
fn ingest() -> (String, RedisServer) {
    let redis = RedisServer::start();
    let config = IngestConfig::for_test(&redis.url(), "mongodb://127.0.0.1:9", "acme:key-acme");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(format!("http://{}", listener.local_addr().unwrap())).unwrap();
            let _ = evp_ingest::run(config, listener, None, tokio_util::sync::CancellationToken::new()).await;
        })
    });
    (rx.recv().unwrap(), redis)
}

fn stream_ids(redis: &RedisServer) -> Vec<String> {
    let mut conn = redis.client().get_connection().unwrap();
    let entries: Vec<StreamEntry> =
        redis::cmd("XRANGE").arg("events").arg("-").arg("+").query(&mut conn).unwrap();
    entries
        .into_iter()
        .map(|(_, fields)| {
            serde_json::from_slice::<serde_json::Value>(&fields[0].1).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn from_plain_threads() {
    let (url, redis) = ingest();
    let client = Client::new(&url, "key-acme").unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                let mut ids = vec![client.send(Event::new("threaded").id(format!("t{t}-single"))).unwrap()];
                ids.extend(
                    client
                        .send_batch((0..50).map(|i| Event::new("threaded").id(format!("t{t}-{i}"))).collect())
                        .unwrap(),
                );
                ids
            })
        })
        .collect();
    let sent: HashSet<String> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert_eq!(sent.len(), 204);
    assert_eq!(stream_ids(&redis).into_iter().collect::<HashSet<_>>(), sent);
    let err = client.send(Event::new("bad type")).unwrap_err();
    assert_eq!(err.code(), Some("invalid_event"), "errors reach the caller");
}

#[tokio::test(flavor = "current_thread")]
async fn from_inside_a_current_thread_runtime() {
    let (url, redis) = ingest();
    let client = Client::new(&url, "key-acme").unwrap();
    // Called right on the runtime's only thread: the work happens on the client's own thread.
    let id = client.send(Event::new("inside")).unwrap();
    assert_eq!(stream_ids(&redis), [id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_inside_a_multi_thread_runtime_every_call_is_bounded() {
    let (url, redis) = ingest();
    let client = Client::new(&url, "key-acme").unwrap();
    let ids = client.send_batch(vec![Event::new("a"), Event::new("b")]).unwrap();
    assert_eq!(stream_ids(&redis), ids);

    let mut config = ClientConfig::new("http://127.0.0.1:9", "key-acme");
    config.deadline = Duration::from_millis(800);
    let unreachable = Client::with_config(config).unwrap();
    let started = Instant::now();
    assert!(matches!(unreachable.send(Event::new("lost")), Err(Error::Unavailable { .. })));
    assert!(started.elapsed() < Duration::from_secs(7), "the call was bounded: {:?}", started.elapsed());
}
