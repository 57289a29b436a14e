//! Integration tests of `evp-ingest` over real HTTP against a real `redis-server` (and, for health,
//! a real MongoDB-protocol server). One test binary, so the crate links once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod analytics;
mod binary;
mod connections;
mod cursors;
mod events;
mod health;
mod helpers;
mod indexes;
mod keys;
mod limits;
mod partitions;
mod read;
mod subscription_reads;
