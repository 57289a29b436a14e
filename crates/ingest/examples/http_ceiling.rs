//! The HTTP ceiling of this machine, for the benchmark: a bare axum server that reads a POST body
//! and answers 202, with none of evp's work (no auth, validation, Redis, metrics or tracing).
//! `load-tests/bench.sh` drives it with the same wrk run as the ingest, so the ratio between the
//! two is what evp's own work costs.
//!
//!   cargo run --release -p evp-ingest --example http_ceiling -- 127.0.0.1:3999

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3999".into());
    let app = Router::new()
        .route("/events", post(|body: Bytes| async move { (StatusCode::ACCEPTED, body.len().to_string()) }));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await
}
