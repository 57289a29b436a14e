//! Building database clients the same way in every program, and the one ping of each.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A MongoDB client that fails fast: server selection and connecting are bounded, so a request or
/// a health check never hangs on a dead server. No connection is made until first use.
pub async fn mongo_client(uri: &str, app_name: &str) -> mongodb::error::Result<mongodb::Client> {
    let mut options = mongodb::options::ClientOptions::parse(uri).await?;
    options.server_selection_timeout = Some(Duration::from_secs(2));
    options.connect_timeout = Some(Duration::from_secs(2));
    options.app_name = Some(app_name.to_string());
    mongodb::Client::with_options(options)
}

/// Whether MongoDB answers (`ping` on `admin`).
pub async fn mongo_ping(client: &mongodb::Client) -> mongodb::error::Result<()> {
    client.database("admin").run_command(mongodb::bson::doc! { "ping": 1 }).await.map(|_| ())
}

/// How the shared Redis connections are made: connecting and every command bounded by `timeout`,
/// one quick retry, reconnecting by itself after Redis comes back.
pub fn redis_manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

/// A shared multiplexed Redis connection that connects on first use, so a program starts (and
/// reports itself not ready) while Redis is down.
pub fn redis_manager(client: &redis::Client, timeout: Duration) -> redis::RedisResult<ConnectionManager> {
    ConnectionManager::new_lazy_with_config(client.clone(), redis_manager_config(timeout))
}

/// Whether Redis answers `PING`.
pub async fn redis_ping(conn: &ConnectionManager) -> redis::RedisResult<()> {
    redis::cmd("PING").exec_async(&mut conn.clone()).await
}
