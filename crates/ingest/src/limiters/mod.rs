//! What one tenant may take of the shared deployment, each policy in a module of its own (as
//! PostHog capture's `limiters/`). Every check runs after the request's input is validated, so bad
//! input always gets its own 4xx first, and before anything is enqueued, so a refused request
//! leaves nothing behind.
//!
//! - [`rate`]: each tenant's events per second and burst, one bucket per tenant in Redis that
//!   the replicas lease tokens from in chunks (no round trip per request).
//! - [`reads`]: at most `READ_CONCURRENCY_PER_TENANT` reads per tenant in progress on a replica,
//!   and analytics answers taken in turn across tenants.
//! - [`polls`]: subscription polls, which take a read slot of their own only while they read, so
//!   consumers waiting for events do not take each other's places.
//! - [`types`]: at most `TENANT_MAX_TYPES` distinct event types per tenant, shared by every replica
//!   through one Redis set per tenant; known types are answered from memory.

pub mod polls;
pub mod rate;
pub mod reads;
pub mod types;
