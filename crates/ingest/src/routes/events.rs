//! `POST /events` and `POST /events/batch`.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use evp_events::input::{Admission, EventIn, admit_batch, admit_one, check_idempotency_key};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Tenant;
use crate::body::EventBody;
use crate::error::{ApiError, ErrorResponse};
use crate::metrics as m;
use crate::routes::now_ms;
use crate::routes::responses::EventsRefused;
use crate::state::AppState;
use crate::stream_publisher::PublishError;

/// A batch: a JSON array of events, or an object with an `events` array. At most
/// `MAX_BATCH_EVENTS` events; all or nothing. (Documentation only: the parser reads the two forms
/// itself, and each event as [`EventIn`], the schema named `EventRequest`.)
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum BatchRequest<'a> {
    Array(#[serde(borrow)] Batch<'a>),
    Wrapped(#[serde(borrow)] WrappedBatch<'a>),
}

/// `{"events": [...]}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct WrappedBatch<'a> {
    #[serde(borrow)]
    events: Batch<'a>,
}

/// 1 to `MAX_BATCH_EVENTS` (default 1,000) events.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(min_items = 1, max_items = 1000)]
#[allow(dead_code)]
pub struct Batch<'a>(#[serde(borrow)] Vec<EventIn<'a>>);

/// Header that makes a retried request safe for events sent without an `id`.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The events are in the Redis stream and will be stored.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"accepted": 1, "ids": ["0192f0c4-7b1e-7cc3-9a52-3f5e8d2b1a10"]}))]
pub struct Accepted {
    /// Number of events enqueued.
    pub accepted: usize,
    /// Event ids in request order: the client's own, or the generated UUIDv7s.
    pub ids: Vec<String>,
}

/// Ingest one event.
///
/// Answers 202 once the event is in the Redis stream. Send your own `id` when you may retry: a
/// retried event with the same id is stored once.
#[utoipa::path(post, path = "/events", tag = "events",
    request_body(content = EventIn, content_type = "application/json",
        description = "One event. `Content-Encoding: gzip` is accepted."),
    params(("Idempotency-Key" = Option<String>, Header, max_length = 128, min_length = 1, pattern = "^[ -~]{1,128}$",
        description = "When the event has no `id`, its id is derived from your tenant and this key, \
            so sending the same request again stores it once. The key is bound to the body first sent \
            with it for 24 hours: another body with the same key gets 422. 1 to 128 visible ASCII characters.")),
    responses(
        (status = 202, description = "Enqueued", body = Accepted),
        (status = 400, description = "`invalid_json` or `invalid_event`", body = ErrorResponse),
        EventsRefused,
    ),
    security(("api_key" = [])))]
pub async fn post_event(
    State(state): State<AppState>,
    tenant: Tenant,
    headers: HeaderMap,
    EventBody(body): EventBody,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    accept(&state, &tenant, &headers, &body, false).await
}

/// Ingest a batch of events, all or nothing.
///
/// One invalid event refuses the whole batch with 400, listing every problem by index, and nothing
/// is enqueued. Answers 202 once every event is in the Redis stream.
#[utoipa::path(post, path = "/events/batch", tag = "events",
    request_body(content = BatchRequest, content_type = "application/json",
        description = "An array of events or `{\"events\": [...]}`. `Content-Encoding: gzip` is accepted."),
    params(("Idempotency-Key" = Option<String>, Header, max_length = 128, min_length = 1, pattern = "^[ -~]{1,128}$",
        description = "Events without an `id` get ids derived from your tenant, this key and their index \
            in the batch, so sending the same request again stores each event once. The key is bound to the body \
            first sent with it for 24 hours: another body with the same key gets 422. 1 to 128 visible ASCII characters.")),
    responses(
        (status = 202, description = "All enqueued", body = Accepted),
        (status = 400, description = "`invalid_json` or `invalid_event`, with one detail per bad index",
            body = ErrorResponse),
        EventsRefused,
    ),
    security(("api_key" = [])))]
pub async fn post_batch(
    State(state): State<AppState>,
    tenant: Tenant,
    headers: HeaderMap,
    EventBody(body): EventBody,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    accept(&state, &tenant, &headers, &body, true).await
}

async fn accept(
    state: &AppState,
    tenant: &Tenant,
    headers: &HeaderMap,
    body: &[u8],
    batch: bool,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let result = admit_and_publish(state, tenant, headers, body, batch).await;
    match &result {
        Ok(ids) => {
            state.metrics.events_accepted.increment(ids.len() as u64);
            state.metrics.request_events.record(ids.len() as f64);
        }
        Err(e) => {
            metrics::counter!(m::REQUESTS_REJECTED, "reason" => e.code()).increment(1);
            let events = evp_events::count_events(body, batch) as u64;
            metrics::counter!(m::EVENTS_REJECTED, "reason" => e.code()).increment(events);
        }
    }
    let ids = result?;
    Ok((StatusCode::ACCEPTED, Json(Accepted { accepted: ids.len(), ids })))
}

/// Validates everything first, so bad input gets its 4xx whatever the backlog; only then does a
/// valid request meet the limits, cheapest first: the type cap, the high-water mark (503 for
/// everyone), the tenant's backlog share and then its rate (429 for that tenant; a request refused
/// before the rate takes none of it), and Redis.
async fn admit_and_publish(
    state: &AppState,
    tenant: &Tenant,
    headers: &HeaderMap,
    body: &[u8],
    batch: bool,
) -> Result<Vec<String>, ApiError> {
    // The key was checked when the headers came; the body may have taken up to
    // HTTP_BODY_TIMEOUT_MS more. Nothing is accepted with a key revoked or expired meanwhile.
    if !tenant.still_named_by(state, headers) {
        return Err(ApiError::Unauthorized("the API key was revoked or expired while the body was sent"));
    }
    let idempotency_key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => Some(
            check_idempotency_key(value.as_bytes())
                .map_err(|problem| ApiError::from(evp_events::BodyError::InvalidEvents(vec![problem])))?,
        ),
    };
    let admission = Admission { idempotency_key, ..Admission::new(&tenant.0, now_ms(), state.config.limits) };
    let unavailable = |e: PublishError, events: usize| ApiError::StoreUnreachable {
        maybe_stored: e.may_have_appended(),
        cause: format!("could not append {events} event(s) to the stream: {e}"),
    };
    if batch {
        let events = admit_batch(body, &admission)?;
        within_type_cap(state, tenant, &events, true).await?;
        below_high_water(state)?;
        within_backlog_share(state, tenant, events.len())?;
        within_rate(state, tenant, events.len()).await?;
        if let Some(key) = idempotency_key {
            same_body_as_first_use(state, &tenant.0, key, body, batch).await?;
        }
        state.publisher.publish_batch(&tenant.0, &events).await.map_err(|e| unavailable(e, events.len()))?;
        Ok(events.into_iter().map(|e| e.id).collect())
    } else {
        let event = admit_one(body, &admission)?;
        within_type_cap(state, tenant, std::slice::from_ref(&event), false).await?;
        below_high_water(state)?;
        within_backlog_share(state, tenant, 1)?;
        within_rate(state, tenant, 1).await?;
        if let Some(key) = idempotency_key {
            same_body_as_first_use(state, &tenant.0, key, body, batch).await?;
        }
        state
            .publisher
            .publish_one(tenant.0.clone(), event.payload, event.route)
            .await
            .map_err(|e| unavailable(e, 1))?;
        Ok(vec![event.id])
    }
}

/// 400 `invalid_event` naming `type` for each event whose type is new past `TENANT_MAX_TYPES`.
async fn within_type_cap(
    state: &AppState,
    tenant: &Tenant,
    events: &[evp_events::EncodedEvent],
    batch: bool,
) -> Result<(), ApiError> {
    let check = state.type_cap.check(state.publisher.conn(), &tenant.0, events, batch);
    let unchecked = |cause: String| ApiError::StoreUnreachable { maybe_stored: false, cause };
    match tokio::time::timeout(state.config.redis_timeout, check).await {
        Ok(Ok(None)) => Ok(()),
        Ok(Ok(Some(problems))) => Err(evp_events::BodyError::InvalidEvents(problems).into()),
        Ok(Err(e)) => Err(unchecked(e.to_string())),
        Err(_) => Err(unchecked("the type cap was not checked in time".into())),
    }
}

/// 429 `rate_limited` when `events` more would take the tenant's events not yet stored past
/// `TENANT_BACKLOG_SHARE` of `STREAM_HIGH_WATER` (as last sampled, so every replica may accept up
/// to one sampling interval's worth more). Checked before the rate, so a refusal here costs the
/// tenant none of its rate.
fn within_backlog_share(state: &AppState, tenant: &Tenant, events: usize) -> Result<(), ApiError> {
    let unstored = state.publisher.tenant_backlog(&tenant.0);
    let limit = state.config.tenant_backlog_limit();
    if unstored + events as u64 <= limit {
        return Ok(());
    }
    // The tenant's own figures only: the limit is a share of everyone's high-water mark.
    let message = if unstored == 0 {
        format!(
            "a request of {events} events is more than tenant {} may have waiting to be stored ({limit}, \
             TENANT_BACKLOG_SHARE of STREAM_HIGH_WATER) and can never be accepted whole; send smaller batches",
            tenant.0
        )
    } else {
        format!(
            "tenant {} has {unstored} events not yet stored, and {events} more would pass its share of the \
             backlog ({limit}, TENANT_BACKLOG_SHARE of STREAM_HIGH_WATER); nothing was accepted, retry after 1 s",
            tenant.0
        )
    };
    Err(ApiError::RateLimited {
        message,
        retry_after: (unstored > 0).then_some(std::time::Duration::from_secs(1)),
        policy: None,
    })
}

/// 429 `rate_limited` when `events` more would take the tenant past its rate and burst.
async fn within_rate(state: &AppState, tenant: &Tenant, events: usize) -> Result<(), ApiError> {
    let conn = state.publisher.conn();
    let take = async {
        match &tenant.1 {
            Some(key) => state.rate_limiter.take_for_key(conn, key, events as u64).await,
            None => state.rate_limiter.take(conn, &tenant.0, events as u64).await,
        }
    };
    let (whose, variables) = match &tenant.1 {
        Some(_) => ("this key", "the key's rate_limit and burst"),
        None => ("tenant", "TENANT_RATE_LIMIT, TENANT_BURST or TENANT_LIMITS"),
    };
    let unchecked = |cause: String| ApiError::StoreUnreachable { maybe_stored: false, cause };
    let refused = match tokio::time::timeout(state.config.redis_timeout, take).await {
        Ok(Ok(Ok(()))) => return Ok(()),
        Ok(Ok(Err(refused))) => refused,
        Ok(Err(e)) => return Err(unchecked(e.to_string())),
        Err(_) => return Err(unchecked("the rate limit was not checked in time".into())),
    };
    let limit = refused.limit;
    let message = match refused.retry_after {
        Some(after) => format!(
            "{whose} (tenant {}) is past its limit of {} events/s with a burst of {} ({variables}); nothing was \
             accepted, retry after {} s",
            tenant.0,
            limit.rate,
            limit.burst,
            after.as_secs_f64().ceil().max(1.0)
        ),
        None => format!(
            "a request of {events} events is larger than the burst of {} of {whose} (tenant {}; {variables}) and \
             can never be accepted whole; send smaller batches",
            limit.burst, tenant.0
        ),
    };
    Err(ApiError::RateLimited {
        message,
        retry_after: refused.retry_after,
        policy: Some((limit.rate, limit.burst)),
    })
}

/// 422 when `key` was first used (within 24 h) with another body: a new request under an old key
/// would otherwise get the old request's ids and its events would be dropped as duplicates. The
/// digest covers the route and the body as received (decompressed).
async fn same_body_as_first_use(
    state: &AppState,
    tenant: &str,
    key: &str,
    body: &[u8],
    batch: bool,
) -> Result<(), ApiError> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(if batch { b"batch\n" as &[u8] } else { b"single\n" });
    hasher.update(body);
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let first = state.publisher.remember_idempotency_key(tenant, key, &digest).await.map_err(|e| {
        ApiError::StoreUnreachable {
            maybe_stored: false,
            cause: format!("could not check the Idempotency-Key: {e}"),
        }
    })?;
    match first {
        Some(first) if first != digest => Err(ApiError::IdempotencyKeyReused),
        _ => Ok(()),
    }
}

/// 503 while the stream backlog is at or past `STREAM_HIGH_WATER`.
fn below_high_water(state: &AppState) -> Result<(), ApiError> {
    let high_water = state.config.stream_high_water;
    let backlog = state.publisher.backlog();
    if backlog >= high_water {
        // No figure in the message: the backlog is every tenant's.
        return Err(ApiError::Unavailable(
            "the event stream is past its high-water mark (STREAM_HIGH_WATER); nothing was accepted, retry later"
                .into(),
        ));
    }
    Ok(())
}
