//! `/subscriptions*`: a tenant's subscriptions (define, list, show, delete) and their consumption
//! (poll, ack, nack, reset). The state changes are [`crate::subscriptions`]'s; here the requests
//! are checked (400 naming the field) and scoped to the key's tenant (another tenant's name is 404).

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Tenant, Viewer};
use crate::body::EventBody;
use crate::error::{ApiError, ErrorResponse};
use crate::routes::read::{bounded, read_slot};
use crate::routes::responses::{BodyRefused, MongoDown, NoSubscription, ReadsBusy, Unauthorized};
use crate::state::AppState;
use crate::subscriptions::view::{Delivered, SubscriptionList, SubscriptionView};
use crate::subscriptions::{Horizons, MAX_TYPES, StartAt};

/// Longest a poll may wait, in ms.
const MAX_WAIT_MS: u64 = 30_000;
/// Most events one poll delivers.
const MAX_EVENTS: usize = 1_000;
/// Longest error text a nack keeps, in characters.
const MAX_ERROR_CHARS: usize = 2_000;

/// An event type a subscription delivers: a string of `[A-Za-z0-9_.:-]{1,128}` in the document.
#[derive(Debug, Deserialize)]
pub struct EventTypeName(pub String);

impl utoipa::PartialSchema for EventTypeName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[A-Za-z0-9_.:-]{1,128}$"))
            .into()
    }
}

impl ToSchema for EventTypeName {}

/// A subscription's definition.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"types": ["signed_up", "plan_changed"], "start": "beginning"}))]
pub struct Definition {
    /// The event types to deliver (each `[A-Za-z0-9_.:-]{1,128}`, at most 100); absent or empty:
    /// every type.
    #[schema(max_items = 100)]
    pub types: Option<Vec<EventTypeName>>,
    /// `beginning` (default: every stored event) or `now` (events appended from now on).
    #[schema(pattern = "^(beginning|now)$")]
    pub start: Option<String>,
}

/// A poll.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"consumer": "projector-1", "max": 100, "wait_ms": 5000}))]
pub struct Poll {
    /// Who polls (`[A-Za-z0-9_.-]{1,64}`): partitions are held per consumer.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub consumer: String,
    /// Most events to deliver, 1–1000 (default 100).
    #[schema(minimum = 1, maximum = 1000)]
    pub max: Option<u64>,
    /// Wait up to this long (ms, 0–30000, default 0) for something deliverable.
    #[schema(minimum = 0, maximum = 30000)]
    pub wait_ms: Option<u64>,
}

/// An acknowledgement.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// The `ack` token of a poll's answer.
    #[schema(min_length = 1)]
    pub ack: String,
}

/// A delivery handed back.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Nack {
    /// The `ack` token of a poll's answer.
    #[schema(min_length = 1)]
    pub ack: String,
    /// What went wrong (kept as the subscription's `last_error`, at most 2,000 characters).
    pub error: String,
}

/// Where to move the checkpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"to": "beginning"}))]
pub struct Reset {
    /// `beginning`, `now`, or an RFC 3339 time (of appending).
    #[schema(
        pattern = "^(beginning|now|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2}))$"
    )]
    pub to: String,
}

/// The path of a route on one subscription.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct Named {
    /// The subscription's name
    pub name: String,
}

/// Whether `name` is a subscription (or consumer) name: 1–64 characters of `[A-Za-z0-9_.-]`.
pub fn is_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn checked_name(name: &str) -> Result<(), ApiError> {
    if is_name(name) {
        Ok(())
    } else {
        Err(ApiError::InvalidQuery {
            message: "name: a subscription's name is 1 to 64 characters of [A-Za-z0-9_.-]".into(),
            parameter: Some("name"),
        })
    }
}

/// The body as `T`, which must be a JSON object (serde would also read a struct from an array).
fn json<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(format!("not {what}: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::InvalidJson(format!("not {what}: expected a JSON object")));
    }
    serde_json::from_value(value).map_err(|e| ApiError::InvalidJson(format!("not {what}: {e}")))
}

/// Each partition's horizon: the consumer group's acknowledged frontier in Redis (as the polls of
/// this replica last read it, at most 50 ms ago).
async fn horizons(state: &AppState) -> Result<Horizons, ApiError> {
    state.subscriptions.horizons(&state.pipeline).await
}

async fn view(
    state: &AppState,
    tenant: &str,
    name: &str,
    with_tenant: bool,
) -> Result<SubscriptionView, ApiError> {
    let subs = &state.subscriptions;
    let sub = subs.load(tenant, name).await?;
    let horizons = horizons(state).await?;
    let lag = subs.lag_seconds(&sub, &horizons).await?;
    let timeout_ms = subs.ack_timeout().as_millis() as i64;
    Ok(SubscriptionView::new(&sub, lag, evp_runtime::now_ms(), timeout_ms, with_tenant))
}

/// Defines a subscription of this tenant's events.
///
/// The same definition again answers 200 with the subscription as it is.
#[utoipa::path(put, path = "/subscriptions/{name}", tag = "subscriptions", request_body = Definition,
    params(("name" = String, Path, pattern = "^[A-Za-z0-9_.-]{1,64}$", description = "The subscription's name")),
    responses(
        (status = 201, description = "Created", body = SubscriptionView),
        (status = 200, description = "It exists with this definition", body = SubscriptionView),
        (status = 400, description = "`invalid_json` naming the field, or `invalid_query` for a bad name", body = ErrorResponse),
        (status = 409, description = "`conflict`: it exists with another definition, or the tenant has 100 subscriptions",
            body = ErrorResponse),
        Unauthorized, BodyRefused, MongoDown,
    ),
    security(("api_key" = [])))]
pub async fn define(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(name): Path<String>,
    EventBody(body): EventBody,
) -> Result<(StatusCode, Json<SubscriptionView>), ApiError> {
    checked_name(&name)?;
    let definition: Definition = json(&body, "a subscription's definition")?;
    let mut types: Vec<String> = definition.types.unwrap_or_default().into_iter().map(|t| t.0).collect();
    if types.len() > MAX_TYPES || !types.iter().all(|t| evp_events::input::is_event_type(t)) {
        return Err(ApiError::InvalidJson(format!(
            "types: at most {MAX_TYPES} event types, each 1 to 128 characters of [A-Za-z0-9_.:-]"
        )));
    }
    types.sort();
    types.dedup();
    let start = match definition.start.as_deref() {
        None | Some("beginning") => StartAt::Beginning,
        Some("now") => StartAt::Now,
        Some(other) => {
            return Err(ApiError::InvalidJson(format!("start: \"beginning\" or \"now\", got {other:?}")));
        }
    };
    let (created, _) =
        state.subscriptions.define(&tenant.0, &name, types, start, evp_runtime::now_ms()).await?;
    if created {
        tracing::info!(tenant = %tenant.0, subscription = name, "subscription created");
    }
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(view(&state, &tenant.0, &name, false).await?)))
}

/// The tenant's subscriptions (every tenant's, with `tenant`, for an operator key).
#[utoipa::path(get, path = "/subscriptions", tag = "subscriptions",
    responses((status = 200, description = "The subscriptions, by name", body = SubscriptionList), Unauthorized, ReadsBusy,
        MongoDown),
    security(("api_key" = [])))]
pub async fn list(State(state): State<AppState>, viewer: Viewer) -> Result<Json<SubscriptionList>, ApiError> {
    let _slot = read_slot(&state, &viewer.reader())?;
    let (tenant, with_tenant) = match &viewer {
        Viewer::Tenant(t) => (Some(&*t.0), false),
        Viewer::Operator(_) => (None, true),
    };
    let subs = bounded(state.subscriptions.store().list(tenant)).await?;
    let horizons = horizons(&state).await?;
    let now = evp_runtime::now_ms();
    let timeout_ms = state.subscriptions.ack_timeout().as_millis() as i64;
    let mut out = Vec::with_capacity(subs.len());
    for sub in &subs {
        let lag = state.subscriptions.lag_seconds(sub, &horizons).await?;
        out.push(SubscriptionView::new(sub, lag, now, timeout_ms, with_tenant));
    }
    Ok(Json(SubscriptionList { subscriptions: out }))
}

/// One subscription: lag, pending, consumers and the last error.
#[utoipa::path(get, path = "/subscriptions/{name}", tag = "subscriptions",
    params(Named),
    responses(
        (status = 200, description = "The subscription", body = SubscriptionView),
        Unauthorized, NoSubscription, ReadsBusy, MongoDown,
    ),
    security(("api_key" = [])))]
pub async fn show(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(Named { name }): Path<Named>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let _slot = read_slot(&state, &tenant.0)?;
    Ok(Json(view(&state, &tenant.0, &name, false).await?))
}

/// Deletes a subscription, its checkpoints with it.
#[utoipa::path(delete, path = "/subscriptions/{name}", tag = "subscriptions",
    params(Named),
    responses(
        (status = 204, description = "Deleted"),
        Unauthorized, NoSubscription, MongoDown,
    ),
    security(("api_key" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(Named { name }): Path<Named>,
) -> Result<StatusCode, ApiError> {
    state.subscriptions.delete(&tenant.0, &name).await?;
    tracing::info!(tenant = %tenant.0, subscription = name, "subscription deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Takes the next events of the partitions this consumer holds.
///
/// Events come in append order within each partition (so in order per aggregate), only once they
/// can no longer be preceded by an event stored late. Acknowledge them with `ack` once processed;
/// not acknowledged within SUBSCRIPTION_ACK_TIMEOUT_MS, they are delivered again. A poll whose key
/// is revoked or expires while it waits ends with 401 once this replica knows (KEY_REFRESH_MS).
#[utoipa::path(post, path = "/subscriptions/{name}/poll", tag = "subscriptions", request_body = Poll,
    params(Named),
    responses(
        (status = 200, description = "The events (maybe none) and their ack token", body = Delivered),
        (status = 400, description = "`invalid_json` naming the field", body = ErrorResponse),
        (status = 409, description = "`conflict`: the subscription has 100 consumers", body = ErrorResponse),
        (status = 429, description = "`rate_limited`: this tenant has 64 × READ_CONCURRENCY_PER_TENANT polls \
            in progress on this replica, or its polls' READ_CONCURRENCY_PER_TENANT reads of MongoDB stayed busy \
            for a second", body = ErrorResponse,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "MongoDB or Redis unreachable", body = ErrorResponse,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        Unauthorized, NoSubscription, BodyRefused,
    ),
    security(("api_key" = [])))]
pub async fn poll(
    State(state): State<AppState>,
    tenant: Tenant,
    headers: HeaderMap,
    Path(Named { name }): Path<Named>,
    EventBody(body): EventBody,
) -> Result<Json<Delivered>, ApiError> {
    let poll: Poll = json(&body, "a poll")?;
    if !is_name(&poll.consumer) {
        return Err(ApiError::InvalidJson("consumer: 1 to 64 characters of [A-Za-z0-9_.-]".into()));
    }
    let max = poll.max.unwrap_or(100);
    if !(1..=MAX_EVENTS as u64).contains(&max) {
        return Err(ApiError::InvalidJson(format!("max: 1 to {MAX_EVENTS}, got {max}")));
    }
    let wait_ms = poll.wait_ms.unwrap_or(0);
    if wait_ms > MAX_WAIT_MS {
        return Err(ApiError::InvalidJson(format!("wait_ms: 0 to {MAX_WAIT_MS}, got {wait_ms}")));
    }
    let slots = &state.poll_slots;
    let _place = slots.enter(&tenant.0).ok_or_else(|| ApiError::RateLimited {
        message: format!(
            "tenant {} has {} polls in progress on this replica ({} per READ_CONCURRENCY_PER_TENANT); retry after 1 s",
            tenant.0,
            slots.places_per_tenant(),
            crate::limiters::polls::PLACES_PER_READ_SLOT,
        ),
        retry_after: Some(Duration::from_secs(1)),
        policy: None,
    })?;
    let wait = Duration::from_millis(wait_ms);
    // Asked again before each round of the wait: the key still names this tenant.
    let key_holds = || tenant.still_named_by(&state, &headers);
    let delivered = state
        .subscriptions
        .poll(&tenant.0, &name, &poll.consumer, max as usize, wait, &state.pipeline, slots, key_holds)
        .await?;
    Ok(Json(delivered))
}

/// Acknowledges a poll's events: the checkpoint moves past them.
#[utoipa::path(post, path = "/subscriptions/{name}/ack", tag = "subscriptions", request_body = Ack,
    params(Named),
    responses(
        (status = 204, description = "Acknowledged"),
        (status = 400, description = "`invalid_json`: not an ack token of this server", body = ErrorResponse),
        (status = 409, description = "`conflict`: the delivery was given to another consumer since (or the \
            subscription was reset); its events will be delivered again", body = ErrorResponse),
        Unauthorized, NoSubscription, BodyRefused, MongoDown,
    ),
    security(("api_key" = [])))]
pub async fn ack(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(Named { name }): Path<Named>,
    EventBody(body): EventBody,
) -> Result<StatusCode, ApiError> {
    let ack: Ack = json(&body, "an ack")?;
    state.subscriptions.ack(&tenant.0, &name, &ack.ack).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Hands a poll's events back: they are delivered again, and `error` becomes `last_error`.
#[utoipa::path(post, path = "/subscriptions/{name}/nack", tag = "subscriptions", request_body = Nack,
    params(Named),
    responses(
        (status = 204, description = "Handed back"),
        (status = 400, description = "`invalid_json`: not an ack token of this server, or no `error`", body = ErrorResponse),
        (status = 409, description = "`conflict`: the delivery was given to another consumer since", body = ErrorResponse),
        Unauthorized, NoSubscription, BodyRefused, MongoDown,
    ),
    security(("api_key" = [])))]
pub async fn nack(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(Named { name }): Path<Named>,
    EventBody(body): EventBody,
) -> Result<StatusCode, ApiError> {
    let nack: Nack = json(&body, "a nack")?;
    let error: String = nack.error.chars().take(MAX_ERROR_CHARS).collect();
    state.subscriptions.nack(&tenant.0, &name, &nack.ack, &error).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Moves the checkpoint (rebuild a projection): every event appended from that point is
/// delivered again.
#[utoipa::path(post, path = "/subscriptions/{name}/reset", tag = "subscriptions", request_body = Reset,
    params(Named),
    responses(
        (status = 204, description = "Moved; deliveries in flight are dropped (their acks get 409)"),
        (status = 400, description = "`invalid_json`: `to` is not `beginning`, `now` or an RFC 3339 time", body = ErrorResponse),
        Unauthorized, NoSubscription, BodyRefused, MongoDown,
    ),
    security(("api_key" = [])))]
pub async fn reset(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(Named { name }): Path<Named>,
    EventBody(body): EventBody,
) -> Result<StatusCode, ApiError> {
    let reset: Reset = json(&body, "a reset")?;
    let to = match reset.to.as_str() {
        "beginning" => StartAt::Beginning,
        "now" => StartAt::Now,
        other => StartAt::Time(crate::read::parse_time("to", other).map_err(|_| {
            ApiError::InvalidJson(format!("to: \"beginning\", \"now\" or an RFC 3339 time, got {other:?}"))
        })?),
    };
    state.subscriptions.reset(&tenant.0, &name, to).await?;
    tracing::info!(tenant = %tenant.0, subscription = name, to = reset.to, "subscription reset");
    Ok(StatusCode::NO_CONTENT)
}
