//! One Redis connection type for one Redis server and for a Redis Cluster (`REDIS_CLUSTER`).
//!
//! - [`RedisTarget`] is where Redis is: the `REDIS_URL` of one server, or the seed nodes of a
//!   cluster. It makes the two kinds of connection every program needs.
//! - [`RedisTarget::shared`]: a multiplexed connection for short commands, shared by many tasks,
//!   connecting on first use (a program starts, and reports itself not ready, while Redis is
//!   down) and reconnecting by itself: redis-rs's `ConnectionManager` for one server, its
//!   `cluster_async::ClusterConnection` for a cluster, which follows MOVED/ASK, refreshes its slot
//!   map when a master fails over, and routes each command (and each pipeline, whose keys all share
//!   a slot here) to the master that owns the slot.
//! - [`RedisTarget::dedicated`]: a connection of its own for a blocking command (XREADGROUP …
//!   BLOCK), whose response timeout is above the block time; on the shared connection a blocked
//!   read would hold up every command queued behind it.
//!
//! [`RedisConn`] is either kind behind redis-rs's `ConnectionLike`, so every command and script is
//! written once.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// Where Redis is.
#[derive(Clone)]
pub enum RedisTarget {
    /// One server (`REDIS_CLUSTER=false`).
    Single(redis::Client),
    /// A Redis Cluster, reached through its seed nodes.
    Cluster { seeds: Vec<String> },
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single(_) => f.write_str("RedisTarget::Single"),
            Self::Cluster { seeds } => write!(f, "RedisTarget::Cluster({} seeds)", seeds.len()),
        }
    }
}

impl RedisTarget {
    /// From `REDIS_URL` (one URL, or with `cluster` a comma-separated list of seed URLs).
    pub fn new(redis_url: &str, cluster: bool) -> RedisResult<Self> {
        if cluster {
            let seeds: Vec<String> =
                redis_url.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
            // Refuse a malformed seed now rather than on first use.
            ClusterClient::new(seeds.clone())?;
            Ok(Self::Cluster { seeds })
        } else {
            Ok(Self::Single(redis::Client::open(redis_url)?))
        }
    }

    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }

    /// A shared connection: connecting and every command bounded by `timeout`, reconnecting by
    /// itself after Redis (or a node) comes back. No connection is made until first use.
    pub fn shared(&self, timeout: Duration) -> RedisResult<RedisConn> {
        match self {
            Self::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                Ok(RedisConn::Single(ConnectionManager::new_lazy_with_config(client.clone(), config)?))
            }
            Self::Cluster { seeds } => {
                let client = cluster_client(seeds, timeout)?;
                let config =
                    ClusterConfig::new().set_connection_timeout(timeout).set_response_timeout(timeout);
                Ok(RedisConn::Cluster(client.get_pending_async_connection_with_config(config)))
            }
        }
    }

    /// A connection of its own for blocking reads of up to `block`: its response timeout is
    /// `block` plus a margin, so a blocked read is never cut short.
    pub async fn dedicated(&self, block: Duration) -> RedisResult<RedisConn> {
        let connect = Duration::from_secs(2);
        let respond = block + Duration::from_secs(5);
        match self {
            Self::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect))
                    .set_response_timeout(Some(respond));
                Ok(RedisConn::Plain(client.get_multiplexed_async_connection_with_config(&config).await?))
            }
            Self::Cluster { seeds } => {
                let client = cluster_client(seeds, respond)?;
                let config =
                    ClusterConfig::new().set_connection_timeout(connect).set_response_timeout(respond);
                Ok(RedisConn::Cluster(client.get_async_connection_with_config(config).await?))
            }
        }
    }
}

fn cluster_client(seeds: &[String], timeout: Duration) -> RedisResult<ClusterClient> {
    ClusterClient::builder(seeds.to_vec())
        .connection_timeout(timeout)
        .response_timeout(timeout)
        // A failover takes a few seconds: retries with backoff ride it out within the caller's
        // own timeout, which bounds every call anyway.
        .retries(6)
        .min_retry_wait(50)
        .max_retry_wait(1000)
        .build()
}

/// A connection to one Redis server or to a cluster; cheap to clone (clones share the socket).
#[derive(Clone)]
pub enum RedisConn {
    /// One server, reconnecting by itself.
    Single(ConnectionManager),
    /// One server, a connection of its own ([`RedisTarget::dedicated`]).
    Plain(MultiplexedConnection),
    /// A cluster.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "RedisConn::Single",
            Self::Plain(_) => "RedisConn::Plain",
            Self::Cluster(_) => "RedisConn::Cluster",
        })
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Plain(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Plain(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

impl RedisConn {
    /// Whether Redis answers `PING` (on a cluster: every master answers).
    pub async fn ping(&self) -> RedisResult<()> {
        redis::cmd("PING").exec_async(&mut self.clone()).await
    }
}
