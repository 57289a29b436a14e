//! Integration tests of `evp-worker`: the real binary, several replicas, against a real
//! `redis-server` and a real MongoDB-protocol server, with crashes and outages in between.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod counts;
mod delivery;
mod dlq;
mod failures;
mod hardening;
mod helpers;
mod rollups;
mod subscriptions;
mod trimming;
