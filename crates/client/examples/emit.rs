//! Fire-and-forget against a running evp (`scripts/up.sh`): `cargo run -p evp-client --example emit`.

use std::time::Duration;

use evp_client::{Client, Emitter, EmitterConfig, Event};
use serde_json::json;

fn main() -> Result<(), evp_client::Error> {
    let emitter = Emitter::new(Client::new("http://127.0.0.1:3000", "demo-key")?, EmitterConfig::default())?;
    let receipts: Vec<_> = (0..1000)
        .filter_map(|i| emitter.emit(Event::new("example.emitted").data(json!({"i": i}))).ok())
        .collect();
    let delivered = emitter.shutdown(Duration::from_secs(10));
    let stored = receipts.iter().filter(|r| matches!(r.wait_timeout(Duration::ZERO), Some(Ok(_)))).count();
    println!("delivered everything: {delivered}; {stored} of {} events accepted", receipts.len());
    Ok(())
}
