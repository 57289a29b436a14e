//! Building MongoDB clients the same way in every program, and their ping (Redis connections are
//! in [`crate::redis_conn`]).

use std::time::Duration;

/// How long an operation waits for a usable server before it fails: requests and health checks
/// never hang on a dead server.
pub const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// A MongoDB client that fails fast when the server is gone ([`SERVER_SELECTION_TIMEOUT`]); every
/// other timeout is the driver's default. No connection is made until first use.
pub async fn mongo_client(uri: &str, app_name: &str) -> mongodb::error::Result<mongodb::Client> {
    let mut options = mongodb::options::ClientOptions::parse(uri).await?;
    options.server_selection_timeout = Some(SERVER_SELECTION_TIMEOUT);
    options.app_name = Some(app_name.to_string());
    mongodb::Client::with_options(options)
}

/// Whether MongoDB answers (`ping` on `admin`).
pub async fn mongo_ping(client: &mongodb::Client) -> mongodb::error::Result<()> {
    client.database("admin").run_command(mongodb::bson::doc! { "ping": 1 }).await.map(|_| ())
}
