//! Process plumbing shared by the evp programs, so each `main.rs` stays a few lines.
//!
//! - [`config`]: typed reading of environment variables; an error names the variable and the fault.
//! - [`connect`]: MongoDB clients with bounded timeouts, and their ping.
//! - [`redis_conn`]: where Redis is (one server or a cluster) and the shared and dedicated
//!   connections to it, behind one connection type.
//! - [`partitions`]: `STREAM_PARTITIONS`: each partition's keys and the routing of an event.
//! - [`dead_letters`]: list, replay and purge the dead-letter stream (`evp-worker dlq` and the
//!   ingest's `/admin/dlq*` share it).
//! - [`health`]: the one health report (`/health`) and `/metrics` response every program serves.
//! - [`telemetry`]: the tracing subscriber (`LOG_FORMAT=json|pretty`), installed once per process.
//! - [`metrics`]: the Prometheus recorder, installed once per process by `main` (never by tests).
//! - [`stream_state`]: what Redis knows of the stream and the consumer group (the acknowledged
//!   frontier the rollups close ranges at, and the pipeline snapshot analytics reports).
//! - [`unstored`]: each tenant's events not yet stored, counted exactly next to each partition's
//!   stream (`TENANT_BACKLOG_SHARE`), and its appended and stored totals.
//! - [`shutdown`]: SIGTERM / SIGINT turned into a cancellation token that every task watches.
//! - [`now_ms`]: the one wall clock, in Unix milliseconds.

pub mod config;
pub mod connect;
pub mod dead_letters;
pub mod health;
pub mod metrics;
pub mod partitions;
pub mod redis_conn;
pub mod shutdown;
pub mod stream_state;
pub mod telemetry;
pub mod unstored;

/// Now, in Unix milliseconds (receive times, analytics windows, the rollups' retirement clock).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
