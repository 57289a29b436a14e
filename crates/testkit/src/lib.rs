//! Dev-only fixtures that start real servers for integration tests.
//!
//! - [`RedisServer`]: a `redis-server` child process (binary overridable with `REDIS_SERVER_BIN`).
//! - [`RedisCluster`]: a loopback Redis Cluster (three masters with a replica each by default),
//!   whose nodes can be SIGKILLed to force a failover.
//! - [`eventually`]: polls a condition until it holds or a deadline passes.
//! - [`MongoServer`]: `MONGODB_TEST_URI` when set, else a `mongod` on PATH, else `secantusd-rs`
//!   (crate `secantus-mdb`: MongoDB's wire protocol and semantics over WiredTiger, installed pinned
//!   by `scripts/deps.sh`; found through `SECANTUSD_BIN`, the install place, or PATH).
//!
//! Each fixture binds a free loopback port, keeps its data and log in a temporary directory, waits
//! until the server answers, prints the end of the server's log when the test fails, and kills and
//! reaps the process on drop. Nothing here is a mock: tests talk to the servers over TCP with the
//! same client crates the binaries use.

mod mongo;
mod process;
mod redis_cluster;
mod redis_server;

pub use mongo::{MongoKind, MongoServer, secantus_binary};
pub use process::{ChildGuard, free_port, program, workspace_root};
pub use redis_cluster::{ClusterNode, RedisCluster, SlotMove};
pub use redis_server::RedisServer;

/// Polls `check` every 100 ms until it holds or `within` passes; returns whether it held (checked
/// once more at the deadline).
pub async fn eventually<F, Fut>(within: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    check().await
}
