//! The async client: one call, retried until it is answered for good or its deadline passes.

use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::{HeaderValue, RETRY_AFTER};
use serde::Deserialize;

use crate::error::{Detail, Error};
use crate::event::Event;

/// Settings of a [`Client`]; [`ClientConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The ingest's base URL, e.g. `http://127.0.0.1:3000`.
    pub base_url: String,
    pub api_key: String,
    /// Longest one `send`/`send_batch` call may take, retries included (default 10 s).
    pub deadline: Duration,
    /// Longest one HTTP request may take before it counts as a timeout and is retried (5 s).
    pub request_timeout: Duration,
    /// Most events per request; larger batches are split (the server's `MAX_BATCH_EVENTS`, 1000).
    pub max_batch: usize,
    /// First and largest pause between attempts (100 ms, 5 s); each pause is jittered.
    pub backoff: (Duration, Duration),
    /// Send bodies gzip-compressed (`Content-Encoding: gzip`); off by default.
    pub gzip: bool,
}

impl ClientConfig {
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_string(),
            api_key: api_key.into(),
            deadline: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            max_batch: 1000,
            backoff: (Duration::from_millis(100), Duration::from_secs(5)),
            gzip: false,
        }
    }
}

/// Sends events to `evp-ingest`. Cheap to clone; clones share one connection pool.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    config: ClientConfig,
    key: HeaderValue,
}

#[derive(Deserialize)]
struct Accepted {
    ids: Vec<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorFields,
}

#[derive(Deserialize)]
struct ErrorFields {
    code: String,
    message: String,
    #[serde(default)]
    details: Vec<Detail>,
}

/// The outcome of one attempt.
enum Attempt {
    /// A 2xx answer's body (empty for 204).
    Done(Vec<u8>),
    /// Worth another try, after at least this long (the server's `Retry-After`).
    Retry {
        why: String,
        after: Option<Duration>,
    },
    Fail(Error),
}

impl Client {
    /// A client with the default settings.
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> Result<Self, Error> {
        Self::with_config(ClientConfig::new(base_url, api_key))
    }

    pub fn with_config(config: ClientConfig) -> Result<Self, Error> {
        if !(config.base_url.starts_with("http://") || config.base_url.starts_with("https://")) {
            return Err(Error::Config(format!("{:?} is not an http(s) URL", config.base_url)));
        }
        if config.max_batch == 0 {
            return Err(Error::Config("max_batch must be at least 1".into()));
        }
        let key = HeaderValue::from_str(&config.api_key)
            .map_err(|_| Error::Config("the API key is not a valid header value".into()))?;
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Self { http, config, key })
    }

    /// Sends one event; returns its id.
    pub async fn send(&self, mut event: Event) -> Result<String, Error> {
        let id = event.ensure_id();
        let body = serde_json::to_vec(&event).map_err(|e| Error::Config(e.to_string()))?;
        self.post("/events", body).await?;
        Ok(id)
    }

    /// Sends events, all or nothing per request of at most `max_batch`; returns their ids in order.
    pub async fn send_batch(&self, mut events: Vec<Event>) -> Result<Vec<String>, Error> {
        let ids: Vec<String> = events.iter_mut().map(Event::ensure_id).collect();
        let mut accepted = Vec::with_capacity(ids.len());
        for (chunk, chunk_ids) in events.chunks(self.config.max_batch).zip(ids.chunks(self.config.max_batch))
        {
            let body = serde_json::to_vec(chunk).map_err(|e| Error::Config(e.to_string()))?;
            match self.post("/events/batch", body).await {
                Ok(_) => accepted.extend_from_slice(chunk_ids),
                Err(e) if accepted.is_empty() => return Err(e),
                Err(e) => return Err(Error::Partial { accepted, source: Box::new(e) }),
            }
        }
        Ok(accepted)
    }

    /// POSTs `body` until it is answered for good or the deadline passes; the accepted ids.
    async fn post(&self, path: &str, body: Vec<u8>) -> Result<Vec<String>, Error> {
        let (bytes, attempts) = self.request(reqwest::Method::POST, path, body, Duration::ZERO).await?;
        serde_json::from_slice::<Accepted>(&bytes)
            .map(|a| a.ids)
            .map_err(|e| Error::Unavailable { last: format!("unreadable 2xx answer: {e}"), attempts })
    }

    /// Sends `value` as JSON with `method` to `path` (retried like every call) and reads the
    /// answer as `T`, or `None` when it has no body (204). The server may take `longer` than a
    /// request's timeout to answer (a long poll's wait).
    pub(crate) async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        value: &impl serde::Serialize,
        longer: Duration,
    ) -> Result<Option<T>, Error> {
        let body = serde_json::to_vec(value).map_err(|e| Error::Config(e.to_string()))?;
        let (bytes, attempts) = self.request(method, path, body, longer).await?;
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Unavailable { last: format!("unreadable 2xx answer: {e}"), attempts })
    }

    /// Sends until answered for good or the deadline passes: the 2xx body and the attempts made.
    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
        longer: Duration,
    ) -> Result<(Vec<u8>, u32), Error> {
        let body = if self.config.gzip { gzip(&body)? } else { body };
        let deadline = Instant::now() + self.config.deadline + longer;
        let url = format!("{}{path}", self.config.base_url);
        let (first, cap) = self.config.backoff;
        let mut pause = first;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (why, after) = match self.attempt(&method, &url, body.clone(), attempts, longer).await {
                Attempt::Done(bytes) => return Ok((bytes, attempts)),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry { why, after } => (why, after),
            };
            // Full jitter on the exponential pause, never shorter than the server asked for.
            let jittered = Duration::from_secs_f64(rand::rng().random_range(0.0..=pause.as_secs_f64()));
            let wait = after.map_or(jittered, |a| a.max(jittered));
            if Instant::now() + wait >= deadline {
                return Err(Error::Unavailable { last: why, attempts });
            }
            tokio::time::sleep(wait).await;
            pause = (pause * 2).min(cap);
        }
    }

    async fn attempt(
        &self,
        method: &reqwest::Method,
        url: &str,
        body: Vec<u8>,
        attempts: u32,
        longer: Duration,
    ) -> Attempt {
        let mut request = self
            .http
            .request(method.clone(), url)
            .timeout(self.config.request_timeout + longer)
            .header("x-api-key", self.key.clone())
            .header("content-type", "application/json");
        if self.config.gzip {
            request = request.header("content-encoding", "gzip");
        }
        let response = match request.body(body).send().await {
            Ok(response) => response,
            // Timeouts and connection errors: the request may or may not have landed; the ids are
            // fixed, so sending it again stores each event once.
            Err(e) => return Attempt::Retry { why: e.to_string(), after: None },
        };
        let status = response.status();
        let after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => return Attempt::Retry { why: e.to_string(), after },
        };
        if status.is_success() {
            return Attempt::Done(bytes.to_vec());
        }
        let parsed = serde_json::from_slice::<ErrorBody>(&bytes).ok().map(|b| b.error);
        if status == StatusCode::SERVICE_UNAVAILABLE
            || status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error()
        {
            let why =
                parsed.map_or_else(|| status.to_string(), |e| format!("{status} {}: {}", e.code, e.message));
            return Attempt::Retry { why, after };
        }
        let (code, message, details) = match parsed {
            Some(e) => (e.code, e.message, e.details),
            None => (String::from("unknown"), String::from_utf8_lossy(&bytes).into_owned(), Vec::new()),
        };
        Attempt::Fail(Error::Api { status: status.as_u16(), code, message, details, attempts })
    }
}

fn gzip(body: &[u8]) -> Result<Vec<u8>, Error> {
    use std::io::Write;
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
    encoder.write_all(body).and_then(|()| encoder.finish()).map_err(|e| Error::Config(format!("gzip: {e}")))
}
