//! Building database clients the same way in every program.

use std::time::Duration;

/// A MongoDB client that fails fast: server selection and connecting are bounded, so a request or
/// a health check never hangs on a dead server. No connection is made until first use.
pub async fn mongo_client(uri: &str, app_name: &str) -> mongodb::error::Result<mongodb::Client> {
    let mut options = mongodb::options::ClientOptions::parse(uri).await?;
    options.server_selection_timeout = Some(Duration::from_secs(2));
    options.connect_timeout = Some(Duration::from_secs(2));
    options.app_name = Some(app_name.to_string());
    mongodb::Client::with_options(options)
}
