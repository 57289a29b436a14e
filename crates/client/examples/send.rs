//! Sends one event and a batch to a running evp (`scripts/up.sh`):
//! `cargo run -p evp-client --example send`.
#![allow(clippy::unwrap_used)]

use evp_client::{Client, Event};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), evp_client::Error> {
    let client = Client::new("http://127.0.0.1:3000", "demo-key")?;
    let id = client.send(Event::new("page_view").source("example").data(json!({"path": "/pricing"}))).await?;
    println!("sent {id}");
    let ids = client
        .send_batch((0..3).map(|i| Event::new("example.batch").data(json!({"i": i}))).collect())
        .await?;
    println!("sent {ids:?}");
    Ok(())
}
