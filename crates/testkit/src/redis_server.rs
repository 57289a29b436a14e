//! A real `redis-server` on a free loopback port.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{ChildGuard, free_port};

/// A `redis-server` child process with no persistence, in its own temporary directory.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    process: ChildGuard,
}

impl RedisServer {
    /// Starts a server and waits until it accepts connections.
    pub fn start() -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("temp dir");
        let process = Self::spawn(port, &dir);
        Self { port, dir, process }
    }

    fn spawn(port: u16, dir: &TempDir) -> ChildGuard {
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        let mut cmd = Command::new(&bin);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path());
        let log = dir.path().join("redis.log");
        let mut process = ChildGuard::spawn("redis-server", cmd, &log)
            .unwrap_or_else(|e| panic!("cannot start {bin} (install redis-server): {e}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        process.wait_for_port(addr, Duration::from_secs(10)).expect("redis-server did not start");
        process
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A client for assertions, from the same crate the binaries use.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("redis url")
    }

    /// A multiplexed async connection for assertions. Its answers may take up to 30 s (redis-rs
    /// defaults to 500 ms, which a 10,000-entry `XRANGE` on a busy two-core machine can exceed).
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(std::time::Duration::from_secs(30)))
            .set_connection_timeout(Some(std::time::Duration::from_secs(10)));
        self.client()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("connect to test redis")
    }

    /// The sum of `field` over the hashes `keys` (a missing hash or field counts 0): a tenant's
    /// unstored count over every partition, say, read exactly rather than from a sampled figure.
    pub async fn hash_field_sum(&self, keys: impl IntoIterator<Item = String>, field: &str) -> i64 {
        let mut connection = self.connection().await;
        let mut sum = 0;
        for key in keys {
            let n: Option<i64> =
                redis::cmd("HGET").arg(&key).arg(field).query_async(&mut connection).await.expect("HGET");
            sum += n.unwrap_or(0);
        }
        sum
    }

    /// Kills the server (simulates an outage). Data is lost: persistence is off.
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port after [`stop`](Self::stop).
    pub fn restart(&mut self) {
        self.process.kill();
        self.process = Self::spawn(self.port, &self.dir);
    }
}
