//! Shared by the client's test binaries: an in-process ingest on port 0 with its own Redis.
#![allow(dead_code)]

use evp_ingest::IngestConfig;
use evp_testkit::RedisServer;
use tokio_util::sync::CancellationToken;

/// One XRANGE entry: its id and field-value pairs.
pub type StreamEntry = (String, Vec<(String, Vec<u8>)>);

pub struct Ingest {
    pub url: String,
    pub redis: RedisServer,
    _shutdown: tokio_util::sync::DropGuard,
}

/// An ingest for tenant `acme` (key `key-acme`), on the calling runtime.
pub async fn ingest(adjust: impl FnOnce(&mut IngestConfig)) -> Ingest {
    let redis = RedisServer::start();
    let mut config = IngestConfig::for_test(&redis.url(), "mongodb://127.0.0.1:9", "acme:key-acme");
    adjust(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(evp_ingest::run(config, listener, None, shutdown.clone()));
    Ingest { url, redis, _shutdown: shutdown.drop_guard() }
}

/// The event ids in the stream, in order.
pub async fn stream_ids(redis: &RedisServer) -> Vec<String> {
    let mut conn = redis.connection().await;
    let entries: Vec<StreamEntry> =
        redis::cmd("XRANGE").arg("events").arg("-").arg("+").query_async(&mut conn).await.unwrap();
    ids_of(entries)
}

/// The event ids of XRANGE entries.
pub fn ids_of(entries: Vec<StreamEntry>) -> Vec<String> {
    entries
        .into_iter()
        .map(|(_, fields)| {
            let payload: serde_json::Value = serde_json::from_slice(&fields[0].1).unwrap();
            payload["id"].as_str().unwrap().to_string()
        })
        .collect()
}
