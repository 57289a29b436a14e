//! The ceilings of this machine, for the benchmark: a bare axum server that reads a POST body and
//! answers 202, with none of evp's work (no auth, validation, metrics or tracing).
//!
//! - Without a Redis URL it does nothing else: the HTTP ceiling.
//! - With one, it also appends the body to the `events` stream with one XADD per request through
//!   the same redis-rs `ConnectionManager` the ingest uses: the ceiling of "one HTTP request, one
//!   Redis append" on this machine, before any of evp's own work.
//!
//! It serves the way the ingest does: one server thread per CPU (or `TOKIO_WORKER_THREADS`), each
//! with its own single-threaded runtime and, with Redis, its own connection, under the ingest's
//! default connection bounds (`evp_ingest::shards`).
//!
//! `load-tests/bench.sh` drives both with the same wrk rounds as the ingest, so the ratios between
//! them say what the HTTP stack, the Redis append and evp's own work each cost.
//!
//!   cargo run --release -p evp-ingest --example http_ceiling -- 127.0.0.1:3999 [redis://127.0.0.1:6379]

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3999".into());
    let redis = args.next().map(redis::Client::open).transpose()?;
    let threads = match std::env::var("TOKIO_WORKER_THREADS") {
        Ok(n) => n.parse()?,
        Err(_) => std::thread::available_parallelism()?.get(),
    };
    // Called on each server thread: the Redis connection's tasks run on that thread's runtime.
    let make_app = move || {
        Ok(match &redis {
            None => Router::new().route("/events", post(|body: Bytes| async move { accepted(&body) })),
            Some(client) => {
                let conn = ConnectionManager::new_lazy_with_config(client.clone(), Default::default())?;
                Router::new().route("/events", post(append)).with_state(conn)
            }
        })
    };
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    // The ingest's own connection bounds (its defaults), so the ceiling pays for the same timers.
    let defaults = evp_ingest::IngestConfig::for_test("redis://127.0.0.1:6379", "mongodb://127.0.0.1:9", "k");
    let bounds = evp_ingest::shards::Bounds::of(&defaults);
    evp_ingest::shards::serve(listener, threads, make_app, CancellationToken::new(), Duration::ZERO, bounds)
        .await
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
