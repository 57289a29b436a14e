//! The refusals many routes share, written once for the OpenAPI document: each type lists its
//! responses (`#[derive(IntoResponses)]`), and a route's `responses(...)` names the types next to
//! the answers that are its own.
//!
//! - [`Unauthorized`]: every keyed route;
//! - [`OperatorOnly`]: `/admin/*` (401 and 403);
//! - [`BodyRefused`]: routes that take a JSON body (413, 415);
//! - [`ReadsBusy`]: the tenant's read slots (429);
//! - [`MongoDown`], [`RedisDown`]: the 503 of a route that needs the one or the other;
//! - [`EventsRefused`]: what both event-writing routes answer besides 202 and 400;
//! - [`NoSubscription`]: the 404 of a route on one subscription.

#![allow(dead_code)] // The variants exist for the document; no handler builds them.

use utoipa::IntoResponses;

use crate::error::ErrorResponse;

#[derive(Debug, IntoResponses)]
pub enum Unauthorized {
    #[response(status = 401, description = "`unauthorized`: no key, or an unknown, revoked or expired one")]
    Unauthorized(ErrorResponse),
}

#[derive(Debug, IntoResponses)]
pub enum OperatorOnly {
    #[response(status = 401, description = "`unauthorized`: no key, or an unknown, revoked or expired one")]
    Unauthorized(ErrorResponse),
    #[response(status = 403, description = "`forbidden`: a tenant key")]
    Forbidden(ErrorResponse),
}

#[derive(Debug, IntoResponses)]
pub enum BodyRefused {
    #[response(status = 413, description = "`payload_too_large`: the body is larger than MAX_BODY_BYTES")]
    TooLarge(ErrorResponse),
    #[response(status = 415, description = "`unsupported_media_type`: not `application/json`")]
    NotJson(ErrorResponse),
}

#[derive(Debug, IntoResponses)]
pub enum ReadsBusy {
    #[response(status = 429, description = "`rate_limited`: this tenant has READ_CONCURRENCY_PER_TENANT reads \
        in progress on this replica",
        headers(("Retry-After" = u64, description = "Seconds to wait")))]
    Busy(ErrorResponse),
}

#[derive(Debug, IntoResponses)]
pub enum MongoDown {
    #[response(status = 503, description = "MongoDB unreachable",
        headers(("Retry-After" = u64, description = "Seconds to wait")))]
    Down(ErrorResponse),
}

#[derive(Debug, IntoResponses)]
pub enum RedisDown {
    #[response(status = 503, description = "Redis unreachable",
        headers(("Retry-After" = u64, description = "Seconds to wait")))]
    Down(ErrorResponse),
}

#[derive(Debug, IntoResponses)]
pub enum EventsRefused {
    #[response(status = 401, description = "`unauthorized`: no key, or an unknown, revoked or expired one")]
    Unauthorized(ErrorResponse),
    #[response(
        status = 408,
        description = "`request_timeout`: the body did not arrive within \
        HTTP_BODY_TIMEOUT_MS; nothing is enqueued"
    )]
    Timeout(ErrorResponse),
    #[response(
        status = 413,
        description = "`payload_too_large`: the body, the batch's count or one event \
        is too large (MAX_BODY_BYTES, MAX_BATCH_EVENTS, MAX_EVENT_BYTES)"
    )]
    TooLarge(ErrorResponse),
    #[response(status = 415, description = "`unsupported_media_type`: not `application/json`")]
    NotJson(ErrorResponse),
    #[response(
        status = 422,
        description = "`idempotency_key_reused`: the Idempotency-Key was first sent \
        with another body in the last 24 hours; nothing is enqueued"
    )]
    KeyReused(ErrorResponse),
    #[response(status = 429, description = "`rate_limited`: the tenant is past its events/s and burst, or \
        its events not yet stored would pass its share of the backlog (TENANT_BACKLOG_SHARE); nothing is \
        enqueued",
        headers(
            ("Retry-After" = u64, description = "Seconds until the request would fit"),
            ("RateLimit-Policy" = String, description = "IETF: the tenant's events per second"),
            ("RateLimit" = String, description = "IETF: what remains now")))]
    RateLimited(ErrorResponse),
    #[response(status = 503, description = "Redis unreachable, or the backlog past its high-water mark; \
        see Retry-After",
        headers(("Retry-After" = u64, description = "Seconds to wait")))]
    Unavailable(ErrorResponse),
}

#[derive(Debug, IntoResponses)]
pub enum NoSubscription {
    #[response(status = 404, description = "`not_found`: no such subscription of this tenant")]
    NotFound(ErrorResponse),
}
