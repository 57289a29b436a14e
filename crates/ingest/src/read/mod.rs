//! The read API's request and response types, and their validation.
//!
//! - [`cursor`]: opaque page cursors bound to the tenant, the route and the filters.
//! - [`cursor_keys`]: their signing secret (`CURSOR_SECRET`), shared by the replicas through
//!   MongoDB, and its rotation.
//! - [`ListQuery`] (`GET /events`) and [`PageQuery`] (`GET /aggregates/{id}/events`) are both
//!   what the query string is parsed into (unknown and repeated parameters refused) and what the
//!   OpenAPI document says of it. [`ListQuery::filters`] checks each value and names the parameter
//!   at fault.
//! - [`StoredEvent`] is an event as answered, built from the store's typed row ([`StoredRow`]).
//!
//! The queries themselves are `evp_store::reader`'s; the handlers are in `routes::read`.

pub mod cursor;
pub mod cursor_keys;

use evp_store::reader::{Filters, StoredRow};
use mongodb::bson::{Bson, DateTime, Document};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;

/// Events in a page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// Most events in a page.
pub const MAX_LIMIT: usize = 1000;

/// Query parameters of the listings.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only events of this type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
    /// Only events from this source.
    pub source: Option<String>,
    /// Only events of this aggregate.
    pub aggregate_id: Option<String>,
    /// Only events with this correlation id.
    pub correlation_id: Option<String>,
    /// Events at or after this time, RFC 3339.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// Events before this time, RFC 3339; must be after `from`.
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// Events per page, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page, with the same filters.
    pub cursor: Option<String>,
}

/// 400 `invalid_query` naming `parameter` (also analytics' and `/admin/dlq`'s).
pub fn invalid(parameter: &'static str, message: String) -> ApiError {
    ApiError::InvalidQuery { message: format!("{parameter}: {message}"), parameter: Some(parameter) }
}

impl ListQuery {
    /// Parses a query string; unknown and repeated parameters are refused, naming them.
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        parse_query(raw)
    }

    /// Events per page.
    pub fn limit(&self) -> Result<usize, ApiError> {
        parse_limit(self.limit.as_deref())
    }

    /// The filters of `GET /events`, checked.
    pub fn filters(&self) -> Result<Filters, ApiError> {
        let time =
            |parameter, raw: &Option<String>| raw.as_deref().map(|s| parse_time(parameter, s)).transpose();
        let filters = Filters {
            event_type: self.event_type.clone(),
            source: self.source.clone(),
            aggregate_id: self.aggregate_id.clone(),
            correlation_id: self.correlation_id.clone(),
            from_ms: time("from", &self.from)?,
            to_ms: time("to", &self.to)?,
        };
        if let (Some(from), Some(to)) = (filters.from_ms, filters.to_ms)
            && from >= to
        {
            return Err(invalid("to", "must be after from".into()));
        }
        Ok(filters)
    }
}

/// Query parameters of a listing that only pages: an aggregate's stream, the dead letters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page (events, dead letters), 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageQuery {
    /// Parses a query string; unknown and repeated parameters are refused, naming them.
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        parse_query(raw)
    }

    /// Events per page.
    pub fn limit(&self) -> Result<usize, ApiError> {
        parse_limit(self.limit.as_deref())
    }
}

/// Parses a query string into `T`; unknown and repeated parameters are refused, naming them.
pub fn parse_query<T: serde::de::DeserializeOwned>(raw: Option<&str>) -> Result<T, ApiError> {
    serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::InvalidQuery { message: format!("bad query string: {e}"), parameter: None })
}

/// An RFC 3339 date-time parameter, as Unix milliseconds (also analytics' `from` and `to`).
pub fn parse_time(parameter: &'static str, raw: &str) -> Result<i64, ApiError> {
    OffsetDateTime::parse(raw, &Rfc3339)
        .ok()
        .and_then(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok())
        .ok_or_else(|| invalid(parameter, format!("must be an RFC 3339 date-time, got {raw:?}")))
}

/// A `limit` parameter: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent (also `/admin/dlq`'s).
pub fn parse_limit(raw: Option<&str>) -> Result<usize, ApiError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(invalid("limit", format!("must be a whole number from 1 to {MAX_LIMIT}, got {raw:?}"))),
        },
    }
}

/// The scope a newest-first cursor is bound to: the tenant and the whole filter set, taken from
/// `Filters`' derived `Debug` (every field, by name), so a filter added there is in the scope
/// without a change here, and a cursor never carries across two values of it.
pub fn listing_scope(tenant: &str, filters: &Filters) -> String {
    format!("events\n{tenant}\n{filters:?}")
}

/// The scope an aggregate cursor is bound to.
pub fn aggregate_scope(tenant: &str, aggregate_id: &str) -> String {
    format!("aggregate\n{tenant}\n{aggregate_id}")
}

/// An event as read back.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "0192f0c4-7b1e-7cc3-9a52-3f5e8d2b1a10", "type": "page_view",
    "timestamp": "2026-11-22T10:15:00Z", "received_at": "2026-11-22T10:15:00.120Z", "source": "web",
    "aggregate_id": "user-42", "data": {"path": "/pricing"}}))]
pub struct StoredEvent {
    /// The event's id (the client's, or the one generated at ingest).
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// When the event happened (as sent, or the receive time), RFC 3339, millisecond precision.
    pub timestamp: String,
    /// When the ingest received it, RFC 3339.
    pub received_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregate_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// The data as sent.
    #[schema(value_type = Object)]
    pub data: Data,
}

/// `data` as stored, written back as the JSON it came from: keys in their order, numbers as
/// numbers (the worker stored them literally, `evp_store::document`).
#[derive(Debug)]
pub struct Data(pub Document);

impl Serialize for Data {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_document(&self.0, s)
    }
}

fn serialize_document<S: serde::Serializer>(doc: &Document, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(doc.len()))?;
    for (key, value) in doc {
        map.serialize_entry(key, &Json(value))?;
    }
    map.end()
}

/// A BSON value as plain JSON. Only the types the worker writes into `data` occur; anything else
/// (written by some other program) is given as its relaxed Extended JSON text.
struct Json<'a>(&'a Bson);

impl Serialize for Json<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match self.0 {
            Bson::Null => s.serialize_unit(),
            Bson::Boolean(b) => s.serialize_bool(*b),
            Bson::Int32(n) => s.serialize_i32(*n),
            Bson::Int64(n) => s.serialize_i64(*n),
            Bson::Double(f) => s.serialize_f64(*f),
            Bson::String(text) => s.serialize_str(text),
            Bson::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&Json(item))?;
                }
                seq.end()
            }
            Bson::Document(doc) => serialize_document(doc, s),
            other => s.serialize_str(&other.to_string()),
        }
    }
}

impl From<StoredRow> for StoredEvent {
    /// The answer's shape of a stored row, taking its `data` (no copy of it is made).
    fn from(row: StoredRow) -> Self {
        let date = |d: DateTime| d.try_to_rfc3339_string().unwrap_or_default();
        Self {
            id: row.event_id,
            event_type: row.event_type,
            timestamp: date(row.timestamp),
            received_at: date(row.received_at),
            source: row.source,
            aggregate_id: row.aggregate_id,
            correlation_id: row.correlation_id,
            causation_id: row.causation_id,
            data: Data(row.data),
        }
    }
}

/// One page of events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    pub events: Vec<StoredEvent>,
    /// Pass as `cursor` (with the same filters) for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field of the filter set changes a listing's scope. The destructuring names every
    /// field, so a new filter does not compile here until it has its line below.
    #[test]
    fn every_filter_is_in_a_cursors_scope() {
        let base = Filters::default();
        let Filters { event_type: _, source: _, aggregate_id: _, correlation_id: _, from_ms: _, to_ms: _ } =
            base;
        let one = || Some("x".to_string());
        let variants = [
            Filters { event_type: one(), ..Filters::default() },
            Filters { source: one(), ..Filters::default() },
            Filters { aggregate_id: one(), ..Filters::default() },
            Filters { correlation_id: one(), ..Filters::default() },
            Filters { from_ms: Some(1), ..Filters::default() },
            Filters { to_ms: Some(1), ..Filters::default() },
        ];
        let mut scopes: Vec<String> = variants.iter().map(|f| listing_scope("acme", f)).collect();
        scopes.push(listing_scope("acme", &Filters::default()));
        scopes.push(listing_scope("globex", &Filters::default()));
        let distinct: std::collections::HashSet<&String> = scopes.iter().collect();
        assert_eq!(
            distinct.len(),
            scopes.len(),
            "each filter, and the tenant, changes the scope: {scopes:#?}"
        );
    }
}
