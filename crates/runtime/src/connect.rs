//! Building MongoDB clients the same way in every program, and their ping (Redis connections are
//! in [`crate::redis_conn`]).

use std::time::Duration;

/// How long a server may take to answer the driver's monitoring `hello` (the driver uses the
/// connect timeout for it) before the driver declares it down, clears its connection pool and
/// interrupts every operation in flight on it ("interrupted due to server monitor timeout"). A
/// busy server answers late, not never; one that runs requests one at a time, as nx-27017 does,
/// answers a `hello` only after whatever it is doing: a count over 300k events took it 16 s, and
/// at the 2 s this used to be, whole bulk writes were thrown away and redone, which made it busier
/// still (docs/PERFORMANCE.md). 30 s matches the worker's own write timeout. A dead server is
/// still noticed at once (a refused or reset connection is not a timeout), and
/// [`SERVER_SELECTION_TIMEOUT`] bounds how long any operation waits for a usable one.
pub const MONGO_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an operation waits for a usable server before it fails: requests and health checks
/// never hang on a dead server.
pub const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// A MongoDB client that fails fast when the server is gone and is patient with a busy one (see
/// [`MONGO_CONNECT_TIMEOUT`]). No connection is made until first use.
pub async fn mongo_client(uri: &str, app_name: &str) -> mongodb::error::Result<mongodb::Client> {
    let mut options = mongodb::options::ClientOptions::parse(uri).await?;
    options.server_selection_timeout = Some(SERVER_SELECTION_TIMEOUT);
    options.connect_timeout = Some(MONGO_CONNECT_TIMEOUT);
    options.app_name = Some(app_name.to_string());
    mongodb::Client::with_options(options)
}

/// Whether MongoDB answers (`ping` on `admin`).
pub async fn mongo_ping(client: &mongodb::Client) -> mongodb::error::Result<()> {
    client.database("admin").run_command(mongodb::bson::doc! { "ping": 1 }).await.map(|_| ())
}
