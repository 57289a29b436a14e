//! The ceilings of this machine, for the benchmark: a bare axum server that reads a POST body and
//! answers 202, with none of evp's work (no auth, validation, metrics or tracing).
//!
//! - Without a Redis URL it does nothing else: the HTTP ceiling.
//! - With one, it also appends the body to the `events` stream with one XADD per request through
//!   the same redis-rs `ConnectionManager` the ingest uses: the ceiling of "one HTTP request, one
//!   Redis append" on this machine, before any of evp's own work.
//!
//! `load-tests/bench.sh` drives both with the same wrk run as the ingest, so the ratios between
//! them say what the HTTP stack, the Redis append and evp's own work each cost.
//!
//!   cargo run --release -p evp-ingest --example http_ceiling -- 127.0.0.1:3999 [redis://127.0.0.1:6379]

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use redis::aio::ConnectionManager;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3999".into());
    let app = match args.next() {
        None => Router::new().route("/events", post(|body: Bytes| async move { accepted(&body) })),
        Some(redis_url) => {
            let conn = ConnectionManager::new(redis::Client::open(redis_url)?).await?;
            Router::new().route("/events", post(append)).with_state(conn)
        }
    };
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn append(State(mut conn): State<ConnectionManager>, body: Bytes) -> (StatusCode, String) {
    let added: redis::RedisResult<String> =
        redis::cmd("XADD").arg("events").arg("*").arg("e").arg(&body[..]).query_async(&mut conn).await;
    match added {
        Ok(_) => accepted(&body),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

fn accepted(body: &[u8]) -> (StatusCode, String) {
    (StatusCode::ACCEPTED, body.len().to_string())
}
