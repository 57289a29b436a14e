//! `POST /events` and `POST /events/batch`.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use evp_events::input::{Admission, admit_batch, admit_one};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Tenant;
use crate::body::EventBody;
use crate::error::{ApiError, ErrorResponse};
use crate::metrics as m;
use crate::state::AppState;
use crate::stream_publisher::PublishError;

/// An event as a client sends it. Only `type` is required.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"type": "page_view", "id": "0192f0c4-7b1e-7cc3-9a52-3f5e8d2b1a10",
    "timestamp": "2026-11-22T10:15:00Z", "source": "web", "aggregate_id": "user-42",
    "data": {"path": "/pricing", "referrer": "https://example.com"}}))]
pub struct EventRequest {
    /// Event type: 1 to 128 characters of `[A-Za-z0-9_.:-]`.
    #[serde(rename = "type")]
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$", example = "page_view")]
    pub event_type: String,
    /// Idempotency key, 1 to 128 characters: an event sent twice with the same id is stored once.
    /// A UUIDv7 is generated when absent.
    #[schema(max_length = 128)]
    pub id: Option<String>,
    /// When the event happened, RFC 3339; defaults to the time it was received.
    #[schema(format = DateTime)]
    pub timestamp: Option<String>,
    /// Where the event came from; at most 256 characters.
    #[schema(max_length = 256)]
    pub source: Option<String>,
    /// The entity the event is about; at most 256 characters.
    #[schema(max_length = 256)]
    pub aggregate_id: Option<String>,
    /// Ties events of one flow together; at most 256 characters.
    #[schema(max_length = 256)]
    pub correlation_id: Option<String>,
    /// The id of the event that caused this one; at most 256 characters.
    #[schema(max_length = 256)]
    pub causation_id: Option<String>,
    /// Any JSON object; defaults to `{}`.
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
}

/// A batch: a JSON array of events, or an object with an `events` array. At most
/// `MAX_BATCH_EVENTS` events; all or nothing.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum BatchRequest {
    Array(Vec<EventRequest>),
    Wrapped { events: Vec<EventRequest> },
}

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
    request_body(content = EventRequest, content_type = "application/json",
        description = "One event. `Content-Encoding: gzip` is accepted."),
    responses(
        (status = 202, description = "Enqueued", body = Accepted),
        (status = 400, description = "`invalid_json` or `invalid_event`", body = ErrorResponse),
        (status = 401, description = "`unauthorized`: missing or unknown x-api-key", body = ErrorResponse),
        (status = 413, description = "`payload_too_large`", body = ErrorResponse),
        (status = 415, description = "`unsupported_media_type`", body = ErrorResponse),
        (status = 503, description = "Redis unreachable or backlog past its high-water mark; see Retry-After",
            body = ErrorResponse, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("api_key" = [])))]
pub async fn post_event(
    State(state): State<AppState>,
    tenant: Tenant,
    EventBody(body): EventBody,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    accept(&state, &tenant, &body, false).await
}

/// Ingest a batch of events, all or nothing.
///
/// One invalid event refuses the whole batch with 400, listing every problem by index, and nothing
/// is enqueued. Answers 202 once every event is in the Redis stream.
#[utoipa::path(post, path = "/events/batch", tag = "events",
    request_body(content = BatchRequest, content_type = "application/json",
        description = "An array of events or `{\"events\": [...]}`. `Content-Encoding: gzip` is accepted."),
    responses(
        (status = 202, description = "All enqueued", body = Accepted),
        (status = 400, description = "`invalid_json` or `invalid_event`, with one detail per bad index",
            body = ErrorResponse),
        (status = 401, description = "`unauthorized`", body = ErrorResponse),
        (status = 413, description = "`payload_too_large`: body, batch count or one event too large",
            body = ErrorResponse),
        (status = 415, description = "`unsupported_media_type`", body = ErrorResponse),
        (status = 503, description = "Redis unreachable or backlog past its high-water mark",
            body = ErrorResponse, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("api_key" = [])))]
pub async fn post_batch(
    State(state): State<AppState>,
    tenant: Tenant,
    EventBody(body): EventBody,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    accept(&state, &tenant, &body, true).await
}

async fn accept(
    state: &AppState,
    tenant: &Tenant,
    body: &[u8],
    batch: bool,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let result = admit_and_publish(state, tenant, body, batch).await;
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

async fn admit_and_publish(
    state: &AppState,
    tenant: &Tenant,
    body: &[u8],
    batch: bool,
) -> Result<Vec<String>, ApiError> {
    let high_water = state.config.stream_high_water;
    let backlog = state.publisher.backlog();
    if backlog >= high_water {
        return Err(ApiError::Unavailable(format!(
            "the stream backlog ({backlog} entries) is past its high-water mark ({high_water}); retry later"
        )));
    }
    let admission = Admission { tenant: &tenant.0, received_at_ms: now_ms(), limits: state.config.limits };
    let unavailable = |e: PublishError, events: usize| ApiError::StoreUnreachable {
        cause: format!("could not append {events} event(s) to the stream: {e}"),
    };
    if batch {
        let events = admit_batch(body, &admission)?;
        state.publisher.publish_batch(&events).await.map_err(|e| unavailable(e, events.len()))?;
        Ok(events.into_iter().map(|e| e.id).collect())
    } else {
        let event = admit_one(body, &admission)?;
        state.publisher.publish_one(event.payload).await.map_err(|e| unavailable(e, 1))?;
        Ok(vec![event.id])
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
