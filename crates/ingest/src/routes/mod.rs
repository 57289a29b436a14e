//! Handlers, one module per area. Each handler carries its `#[utoipa::path]`, so the OpenAPI
//! document is generated from the code that serves it.

pub mod analytics;
pub mod events;
pub mod health;
pub mod read;
