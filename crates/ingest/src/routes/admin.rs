//! `/admin/dlq*`: the dead letters, for operators (`ADMIN_KEYS`; a tenant key gets 403). The same
//! operations as `evp-worker dlq …`, from the same code (`evp_runtime::dead_letters`).

use axum::Json;
use axum::extract::{RawQuery, State};
use evp_runtime::dead_letters::{DeadLetter, Selection};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Operator;
use crate::body::EventBody;
use crate::error::{ApiError, ErrorResponse};
use crate::read::{PageQuery, invalid};
use crate::routes::read::bounded_from;
use crate::routes::responses::{BodyRefused, OperatorOnly, RedisDown};
use crate::state::AppState;

/// Most ids one replay or purge may name.
pub const MAX_IDS: usize = 10_000;

/// A page of dead letters, oldest first.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"dead_letters": [{"id": "1795474600000-0", "partition": 0, "reason": "not stored after 5 deliveries",
    "deliveries": 6, "source_id": "1795474500000-3", "consumer": "worker-1", "at": "2026-11-23T23:10:00Z",
    "event": {"v": 1, "tenant": "acme", "id": "u-1", "type": "signup", "ts": 1_795_474_500_000_i64, "rcv": 1_795_474_500_000_i64, "data": {}},
    "raw": null}], "next_cursor": null, "total": 1}))]
pub struct DlqPage {
    pub dead_letters: Vec<DeadLetter>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
    /// Dead letters in the stream now.
    pub total: u64,
}

/// Which dead letters: `{"ids": [...]}` or `{"all": true}` (those present when the call starts).
/// Its OpenAPI schema (written below) says exactly what [`selection`] accepts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionBody {
    pub ids: Option<Vec<String>>,
    pub all: Option<bool>,
}

/// A dead-letter id as the schema states it: `<ms>-<seq>`, each part fitting 64 bits, prefixed
/// by `<partition>:` with more than one partition (`STREAM_PARTITIONS`).
const ID_PATTERN: &str = "^([0-9]{1,3}:)?[0-9]{1,19}-[0-9]{1,19}$";

impl utoipa::PartialSchema for SelectionBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            AdditionalProperties, ArrayBuilder, ObjectBuilder, OneOfBuilder, SchemaType, Type,
        };
        let id = ObjectBuilder::new().schema_type(SchemaType::new(Type::String)).pattern(Some(ID_PATTERN));
        let ids = ObjectBuilder::new()
            .schema_type(SchemaType::new(Type::Object))
            .property("ids", ArrayBuilder::new().items(id).min_items(Some(1)).max_items(Some(MAX_IDS)))
            .required("ids")
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .description(Some("These dead letters (ids not there are skipped)."));
        let all = ObjectBuilder::new()
            .schema_type(SchemaType::new(Type::Object))
            .property(
                "all",
                ObjectBuilder::new().schema_type(SchemaType::new(Type::Boolean)).enum_values(Some([true])),
            )
            .required("all")
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .description(Some("Every dead letter present when the call starts."));
        OneOfBuilder::new()
            .item(ids)
            .item(all)
            .examples([serde_json::json!({"ids": ["1795474600000-0"]})])
            .into()
    }
}

impl utoipa::ToSchema for SelectionBody {}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Replayed {
    pub replayed: usize,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Purged {
    pub purged: usize,
}

fn is_entry_id(id: &str) -> bool {
    let id = match id.split_once(':') {
        Some((partition, rest))
            if (1..=3).contains(&partition.len()) && partition.bytes().all(|b| b.is_ascii_digit()) =>
        {
            rest
        }
        Some(_) => return false,
        None => id,
    };
    id.split_once('-').is_some_and(|(ms, seq)| {
        [ms, seq].iter().all(|p| (1..=19).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
    })
}

async fn redis<T>(call: impl Future<Output = redis::RedisResult<T>>) -> Result<T, ApiError> {
    bounded_from("Redis", call).await
}

fn selection(body: &[u8]) -> Result<Selection, ApiError> {
    let parsed: SelectionBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::InvalidJson(format!("expected {{\"ids\": [...]}} or {{\"all\": true}}: {e}"))
    })?;
    match (parsed.ids, parsed.all) {
        (Some(ids), None | Some(false)) if !ids.is_empty() => {
            if ids.len() > MAX_IDS {
                return Err(ApiError::InvalidJson(format!(
                    "at most {MAX_IDS} ids at once, got {}",
                    ids.len()
                )));
            }
            if let Some(bad) = ids.iter().find(|id| !is_entry_id(id)) {
                return Err(ApiError::InvalidJson(format!("not a dead-letter id: {bad:?}")));
            }
            Ok(Selection::Ids(ids))
        }
        (None, Some(true)) => Ok(Selection::All),
        _ => Err(ApiError::InvalidJson(
            "expected exactly one of a non-empty \"ids\" list or \"all\": true".into(),
        )),
    }
}

/// Dead letters, oldest first.
///
/// Each with its reason, deliveries, where it came from, and the event as it was in the stream.
#[utoipa::path(get, path = "/admin/dlq", tag = "admin", params(PageQuery),
    responses(
        (status = 200, description = "One page", body = DlqPage),
        (status = 400, description = "`invalid_query`", body = ErrorResponse),
        OperatorOnly, RedisDown,
    ),
    security(("api_key" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _operator: Operator,
    RawQuery(raw): RawQuery,
) -> Result<Json<DlqPage>, ApiError> {
    let query = PageQuery::parse(raw.as_deref())?;
    let limit = query.limit()?;
    let letters = state.pipeline.dead_letters();
    if let Some(cursor) = &query.cursor
        && !(is_entry_id(cursor) && letters.is_valid_id(cursor))
    {
        return Err(invalid("cursor", format!("not a cursor of this listing: {cursor:?}")));
    }
    let (dead_letters, more) = redis(letters.page(query.cursor.as_deref(), limit)).await?;
    let total = redis(letters.len()).await?;
    let next_cursor = if more { dead_letters.last().map(|l| l.id.clone()) } else { None };
    Ok(Json(DlqPage { dead_letters, next_cursor, total }))
}

/// Moves dead letters back to the main stream, to be stored again (after fixing the cause).
#[utoipa::path(post, path = "/admin/dlq/replay", tag = "admin", request_body = SelectionBody,
    responses(
        (status = 200, description = "How many were replayed (ids not found are skipped)", body = Replayed),
        (status = 400, description = "`invalid_json`: not `{\"ids\": [...]}` or `{\"all\": true}`", body = ErrorResponse),
        OperatorOnly, BodyRefused, RedisDown,
    ),
    security(("api_key" = [])))]
pub async fn replay(
    State(state): State<AppState>,
    operator: Operator,
    EventBody(body): EventBody,
) -> Result<Json<Replayed>, ApiError> {
    let selection = selection(&body)?;
    let replayed = redis(state.pipeline.dead_letters().replay(&selection)).await?;
    tracing::info!(operator = %operator.key_id, replayed, "dead letters replayed through /admin/dlq/replay");
    Ok(Json(Replayed { replayed }))
}

/// Deletes dead letters for good.
#[utoipa::path(post, path = "/admin/dlq/purge", tag = "admin", request_body = SelectionBody,
    responses(
        (status = 200, description = "How many were deleted", body = Purged),
        (status = 400, description = "`invalid_json`: not `{\"ids\": [...]}` or `{\"all\": true}`", body = ErrorResponse),
        OperatorOnly, BodyRefused, RedisDown,
    ),
    security(("api_key" = [])))]
pub async fn purge(
    State(state): State<AppState>,
    operator: Operator,
    EventBody(body): EventBody,
) -> Result<Json<Purged>, ApiError> {
    let selection = selection(&body)?;
    let purged = redis(state.pipeline.dead_letters().purge(&selection)).await?;
    tracing::info!(operator = %operator.key_id, purged, "dead letters purged through /admin/dlq/purge");
    Ok(Json(Purged { purged }))
}
