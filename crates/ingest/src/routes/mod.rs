//! Handlers, one module per area. Each handler carries its `#[utoipa::path]`, so the OpenAPI
//! document is generated from the code that serves it.

pub mod admin;
pub mod analytics;
pub mod dashboard;
pub mod events;
pub mod health;
pub mod read;
pub mod whoami;

/// Now, in Unix milliseconds (the receive time of events, the default end of analytics windows).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
