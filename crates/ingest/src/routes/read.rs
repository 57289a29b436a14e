//! `GET /events`, `GET /events/{id}`, `GET /aggregates/{aggregate_id}/events`.
//!
//! Every query is the authenticated tenant's; parameters are checked before MongoDB is asked
//! (400 `invalid_query` naming the parameter); a read MongoDB does not answer within
//! [`READ_TIMEOUT`] is a 503 with `Retry-After`, while writes keep working.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use evp_store::reader::{NewestKey, StoredRow, StreamKey};
use serde::{Deserialize, Serialize};

use crate::auth::Tenant;
use crate::error::{ApiError, ErrorResponse};
use crate::limiters::reads::ReadSlot;
use crate::read::cursor_keys::Cursors;
use crate::read::{EventPage, ListQuery, PageQuery, StoredEvent, aggregate_scope, invalid, listing_scope};
use crate::routes::responses::{MongoDown, ReadsBusy, Unauthorized};
use crate::state::AppState;

/// Longest a read waits for MongoDB before answering 503.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What a newest-first cursor holds: the last event's timestamp (ms) and id.
#[derive(Serialize, Deserialize)]
struct NewestPosition(i64, String);

/// What an aggregate cursor holds: the last event's partition and stream position.
#[derive(Serialize, Deserialize)]
struct StreamPosition(i32, String);

/// Awaits a read of `source` (MongoDB, Redis) for at most [`READ_TIMEOUT`]; a failure or a
/// timeout is a 503 with `Retry-After`, its cause logged, never sent.
pub async fn bounded_from<T, E: std::fmt::Display>(
    source: &str,
    read: impl Future<Output = Result<T, E>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(ApiError::ReadUnavailable { cause: format!("{source} read failed: {e}") }),
        Err(_) => {
            Err(ApiError::ReadUnavailable { cause: format!("{source} read took over {READ_TIMEOUT:?}") })
        }
    }
}

/// A slot for one of `tenant`'s reads: 429 `rate_limited` (Retry-After: 1) while it has
/// `READ_CONCURRENCY_PER_TENANT` in progress on this replica.
pub fn read_slot(state: &AppState, tenant: &Arc<str>) -> Result<ReadSlot, ApiError> {
    state.read_slots.try_acquire(tenant).ok_or_else(|| ApiError::RateLimited {
        message: format!(
            "tenant {tenant} has {} reads in progress on this replica (READ_CONCURRENCY_PER_TENANT); retry after 1 s",
            state.read_slots.per_tenant()
        ),
        retry_after: Some(Duration::from_secs(1)),
        policy: None,
    })
}

/// [`bounded_from`] for MongoDB.
pub async fn bounded<T>(read: impl Future<Output = mongodb::error::Result<T>>) -> Result<T, ApiError> {
    bounded_from("MongoDB", read).await
}

/// The cursor secrets, loaded from MongoDB on the first read (bounded like any read).
async fn cursors(state: &AppState) -> Result<Cursors<'_>, ApiError> {
    match tokio::time::timeout(READ_TIMEOUT, state.cursors.ready()).await {
        Ok(Ok(cursors)) => Ok(cursors),
        Ok(Err(e)) => Err(ApiError::ReadUnavailable { cause: e.to_string() }),
        Err(_) => Err(ApiError::ReadUnavailable { cause: "the cursor secret was not read in time".into() }),
    }
}

/// The position in `cursor`, when one was given; 400 when it was not issued for `scope`.
fn position<T: serde::de::DeserializeOwned>(
    cursors: &Cursors<'_>,
    scope: &str,
    cursor: Option<&str>,
) -> Result<Option<T>, ApiError> {
    cursor
        .map(|cursor| {
            cursors.open(scope, cursor).map_err(|m| ApiError::InvalidQuery {
                message: format!("cursor: {m}"),
                parameter: Some("cursor"),
            })
        })
        .transpose()
}

/// Room kept at the end of a page's body for `],"next_cursor":"…"}`.
const PAGE_TAIL_BYTES: usize = 1_024;

/// A page's JSON body, written once from the documents: the events in order while the body stays
/// within `max_bytes` (`MAX_PAGE_BYTES`; at least one event, whatever its size), then
/// `next_cursor`, after the last event written, when more follow (or the page was cut short).
fn page<K>(
    rows: Vec<StoredRow>,
    more: bool,
    max_bytes: usize,
    key: impl Fn(&StoredRow) -> K,
    cursor: impl FnOnce(&K) -> String,
) -> Response {
    let mut body = Vec::with_capacity(max_bytes.min(64 * 1024));
    body.extend_from_slice(b"{\"events\":[");
    let mut last: Option<K> = None;
    let mut cut = false;
    for row in rows {
        let start = body.len();
        if last.is_some() {
            body.push(b',');
        }
        let position = key(&row);
        // Serializing a plain struct of strings, numbers and a BSON document into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut body, &StoredEvent::from(row));
        if last.is_some() && body.len() + PAGE_TAIL_BYTES > max_bytes {
            body.truncate(start);
            cut = true;
            break;
        }
        last = Some(position);
    }
    body.extend_from_slice(b"],\"next_cursor\":");
    let next_cursor = if more || cut { last.as_ref().map(cursor) } else { None };
    let _ = serde_json::to_writer(&mut body, &next_cursor);
    body.push(b'}');
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The tenant's stored events, newest first.
///
/// Ordered by `timestamp`, newest first, ties broken by `id`. Filters combine with AND. Pages are
/// keyset pages: follow `next_cursor` (with the same filters) until it is `null`; every matching
/// event comes exactly once, even while new events arrive, and a deep page costs what the first
/// does.
#[utoipa::path(get, path = "/events", tag = "read", params(ListQuery),
    responses(
        (status = 200, description = "One page", body = EventPage),
        (status = 400, description = "`invalid_query`: an unknown or repeated parameter, a bad value, \
            a filter this deployment keeps no index for (`EVENT_INDEXES`), or a cursor issued for other \
            filters or another tenant", body = ErrorResponse),
        Unauthorized, ReadsBusy, MongoDown,
    ),
    security(("api_key" = [])))]
pub async fn list_events(
    State(state): State<AppState>,
    tenant: Tenant,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(raw.as_deref())?;
    let _slot = read_slot(&state, &tenant.0)?;
    let limit = query.limit()?;
    let filters = query.filters()?;
    let indexed = &state.config.event_indexes;
    if let Some((filter, _)) = filters.listing().find(|(filter, _)| !indexed.contains(*filter)) {
        return Err(invalid(
            filter.parameter(),
            format!(
                "this deployment keeps no index for this filter, and a filter is never answered by a \
                 scan; EVENT_INDEXES={indexed} names the filters it serves"
            ),
        ));
    }
    let scope = listing_scope(&tenant.0, &filters);
    let cursors = cursors(&state).await?;
    let after = position(&cursors, &scope, query.cursor.as_deref())?
        .map(|NewestPosition(timestamp_ms, event_id)| NewestKey { timestamp_ms, event_id });
    let (rows, more) = bounded(state.reader.newest(&tenant.0, &filters, after.as_ref(), limit)).await?;
    Ok(page(rows, more, state.config.max_page_bytes, StoredRow::newest_key, |last| {
        cursors.issue(&scope, &NewestPosition(last.timestamp_ms, last.event_id.clone()))
    }))
}

/// One stored event of the tenant.
#[utoipa::path(get, path = "/events/{id}", tag = "read",
    params(("id" = String, Path, description = "The event's id")),
    responses(
        (status = 200, description = "The event", body = StoredEvent),
        (status = 404, description = "`not_found`: no such event for this tenant", body = ErrorResponse),
        Unauthorized, ReadsBusy, MongoDown,
    ),
    security(("api_key" = [])))]
pub async fn get_event(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<StoredEvent>, ApiError> {
    let _slot = read_slot(&state, &tenant.0)?;
    match bounded(state.reader.get(&tenant.0, &id)).await? {
        Some(row) => Ok(Json(StoredEvent::from(row))),
        None => Err(ApiError::NotFound(format!("no event {id:?}"))),
    }
}

/// An aggregate's events, oldest first, in the order they were appended to the stream.
///
/// The order is the stream's, not the events' timestamps (which clients set and can lie): what
/// rebuilding an aggregate's state needs. Events stored before
/// stream positions were recorded are not listed here (they are by `GET /events`).
#[utoipa::path(get, path = "/aggregates/{aggregate_id}/events", tag = "read",
    params(("aggregate_id" = String, Path, description = "The aggregate"), PageQuery),
    responses(
        (status = 200, description = "One page", body = EventPage),
        (status = 400, description = "`invalid_query`", body = ErrorResponse),
        Unauthorized, ReadsBusy, MongoDown,
    ),
    security(("api_key" = [])))]
pub async fn aggregate_events(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(aggregate_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = PageQuery::parse(raw.as_deref())?;
    let limit = query.limit()?;
    let _slot = read_slot(&state, &tenant.0)?;
    let scope = aggregate_scope(&tenant.0, &aggregate_id);
    let cursors = cursors(&state).await?;
    let after = position(&cursors, &scope, query.cursor.as_deref())?
        .map(|StreamPosition(partition, seq)| StreamKey { partition, seq });
    let (rows, more) =
        bounded(state.reader.aggregate(&tenant.0, &aggregate_id, after.as_ref(), limit)).await?;
    Ok(page(rows, more, state.config.max_page_bytes, StoredRow::stream_key, |last| {
        // Every row of an aggregate page has a position (its query requires `seq`).
        let StreamKey { partition, seq } =
            last.clone().unwrap_or(StreamKey { partition: 0, seq: String::new() });
        cursors.issue(&scope, &StreamPosition(partition, seq))
    }))
}
