//! Synchronous code against a running evp (`scripts/up.sh`):
//! `cargo run -p evp-client --example blocking`.

use evp_client::Event;
use evp_client::blocking::Client;

fn main() -> Result<(), evp_client::Error> {
    let client = Client::new("http://127.0.0.1:3000", "demo-key")?;
    let id = client.send(Event::new("example.blocking").source("cli"))?;
    println!("sent {id}");
    Ok(())
}
