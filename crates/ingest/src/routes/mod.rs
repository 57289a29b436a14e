//! Handlers, one module per area. Each handler carries its `#[utoipa::path]`, so the OpenAPI
//! document is generated from the code that serves it.

pub mod admin;
pub mod analytics;
pub mod dashboard;
pub mod events;
pub mod health;
pub mod keys;
pub mod read;
pub mod responses;
pub mod subscriptions;
pub mod whoami;

pub use evp_runtime::now_ms;
