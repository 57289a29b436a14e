//! `TestApp`: an in-process ingest on port 0 with its own redis-server.

use std::net::SocketAddr;

use evp_ingest::IngestConfig;
use evp_testkit::RedisServer;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const KEYS: &str = "acme:key-acme,globex:key-globex,key-default";
/// A MongoDB URI nothing listens on, for tests that do not involve MongoDB.
pub const NO_MONGO: &str = "mongodb://127.0.0.1:9";

/// One XRANGE entry: its id and field-value pairs.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

pub struct TestApp {
    pub addr: SocketAddr,
    pub redis: RedisServer,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
    pub stream: String,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(NO_MONGO, |_| {}).await
    }

    pub async fn spawn_with(mongo_uri: &str, adjust: impl FnOnce(&mut IngestConfig)) -> Self {
        let redis = RedisServer::start();
        let mut config = IngestConfig::for_test(&redis.url(), mongo_uri, KEYS);
        adjust(&mut config);
        let stream = config.common.stream.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(evp_ingest::run(config, listener, None, shutdown.clone()));
        Self { addr, redis, http: reqwest::Client::new(), shutdown, task, stream }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs a JSON body with the given key.
    pub async fn post(&self, path: &str, key: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        json_post(&self.http, self.url(path), key, body).send().await.unwrap()
    }

    /// POSTs `body` to `path` with exactly these headers (no key or content type unless given).
    pub async fn post_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut request = self.http.post(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(body).send().await.unwrap()
    }

    /// The decoded payload of every entry in the events stream, oldest first.
    pub async fn entries(&self) -> Vec<Value> {
        let mut conn = self.redis.connection().await;
        let raw: Vec<StreamEntry> =
            redis::cmd("XRANGE").arg(&self.stream).arg("-").arg("+").query_async(&mut conn).await.unwrap();
        raw.into_iter()
            .map(|(_, fields)| {
                let (name, payload) = &fields[0];
                assert_eq!(name, "e");
                serde_json::from_slice(payload).unwrap()
            })
            .collect()
    }

    pub async fn entry_count(&self) -> usize {
        let mut conn = self.redis.connection().await;
        redis::cmd("XLEN").arg(&self.stream).query_async(&mut conn).await.unwrap()
    }
}

/// A POST of a JSON body with the given key, to send (or to add headers to first).
pub fn json_post(
    http: &reqwest::Client,
    url: String,
    key: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::RequestBuilder {
    http.post(url).header("x-api-key", key).header("content-type", "application/json").body(body)
}

/// Asserts the status and error code of a response and returns its JSON body.
pub async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "unexpected status");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    body
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}
