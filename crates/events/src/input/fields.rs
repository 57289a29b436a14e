//! The rules of one event's fields, as the client sends them: [`EventIn`] is both what the parser
//! reads and what the OpenAPI document's schema is derived from.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Admission, Problem, is_object, strip_position};
use crate::data;
use crate::entry::ValidEvent;

/// Longest accepted `type` and `id`, in characters.
pub const MAX_TYPE_CHARS: usize = 128;
/// Longest accepted client-supplied `id`, in characters.
pub const MAX_ID_CHARS: usize = 128;
/// Longest accepted optional string (`source`, `aggregate_id`, ...), in characters.
pub const MAX_OPTIONAL_CHARS: usize = 256;
/// An event as a client sends it. Only `type` is required.
///
/// This is the type the parser reads, borrowing from the request body; the OpenAPI document's
/// schema is derived from it, so the two cannot drift.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = EventRequest, example = json!({"type": "page_view",
    "id": "0192f0c4-7b1e-7cc3-9a52-3f5e8d2b1a10", "timestamp": "2026-11-22T10:15:00Z", "source": "web",
    "aggregate_id": "user-42", "data": {"path": "/pricing", "referrer": "https://example.com"}})))]
#[serde(deny_unknown_fields)]
pub struct EventIn<'a> {
    /// Event type: 1 to 128 characters of `[A-Za-z0-9_.:-]`.
    #[serde(rename = "type", borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[A-Za-z0-9_.:-]{1,128}$",
        example = "page_view"))]
    pub event_type: Cow<'a, str>,
    /// Idempotency key, 1 to 128 characters: an event sent twice with the same id is stored once.
    /// When absent, the id is derived from the request's `Idempotency-Key` header if it has one,
    /// else a UUIDv7 is generated.
    #[serde(default, borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, min_length = 1, max_length = 128))]
    pub id: Option<Cow<'a, str>>,
    /// When the event happened, RFC 3339; defaults to the time it was received.
    #[serde(default, borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub timestamp: Option<Cow<'a, str>>,
    /// Where the event came from; at most 256 characters.
    #[serde(default, borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, max_length = 256))]
    pub source: Option<Cow<'a, str>>,
    /// The entity the event is about; at most 256 characters.
    #[serde(default, borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, max_length = 256))]
    pub aggregate_id: Option<Cow<'a, str>>,
    /// Ties events of one flow together; at most 256 characters.
    #[serde(default, borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, max_length = 256))]
    pub correlation_id: Option<Cow<'a, str>>,
    /// The id of the event that caused this one; at most 256 characters.
    #[serde(default, borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, max_length = 256))]
    pub causation_id: Option<Cow<'a, str>>,
    /// Any JSON object (`null` or absent: `{}`), stored exactly as sent: numbers must fit a
    /// signed 64-bit integer or be finite doubles, nesting at most 100 levels, and no key may
    /// contain a NUL character.
    #[serde(default, borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::data::StorableObject>))]
    pub data: Option<&'a RawValue>,
}
/// Checks one event, pushing each problem found; returns the event when it parsed at all.
pub(super) fn validate<'a>(
    raw: &'a RawValue,
    admission: &Admission<'_>,
    position: usize,
    index: Option<usize>,
    problems: &mut Vec<Problem>,
) -> Option<ValidEvent<'a>> {
    if !is_object(raw) {
        problems.push(Problem { index, field: None, message: "an event must be a JSON object".into() });
        return None;
    }
    match serde_json::from_str(raw.get()) {
        Ok(input) => Some(check(input, admission, position, index, problems)),
        Err(e) => {
            problems.push(Problem { index, field: None, message: strip_position(&e) });
            None
        }
    }
}

/// Checks the fields of a parsed event, pushing each problem found, and fills in `id` and
/// `timestamp`. `position` is the event's place in its request (0 for a single event).
pub(super) fn check<'a>(
    input: EventIn<'a>,
    admission: &Admission<'_>,
    position: usize,
    index: Option<usize>,
    problems: &mut Vec<Problem>,
) -> ValidEvent<'a> {
    let mut report =
        |field: Option<&'static str>, message: String| problems.push(Problem { index, field, message });
    let t = &input.event_type;
    if !is_event_type(t) {
        report(Some("type"), format!("type must be 1 to {MAX_TYPE_CHARS} characters of [A-Za-z0-9_.:-]"));
    }
    if let Some(id) = &input.id {
        let n = id.chars().count();
        if n == 0 || n > MAX_ID_CHARS {
            report(Some("id"), format!("id must be 1 to {MAX_ID_CHARS} characters"));
        }
    }
    let received_at_ms = admission.received_at_ms;
    let timestamp_ms = match &input.timestamp {
        None => received_at_ms,
        Some(s) => match OffsetDateTime::parse(s, &Rfc3339) {
            Ok(t) => i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(received_at_ms),
            Err(_) => {
                report(Some("timestamp"), format!("timestamp must be an RFC 3339 date-time, got {s:?}"));
                received_at_ms
            }
        },
    };
    for (field, value) in [
        ("source", &input.source),
        ("aggregate_id", &input.aggregate_id),
        ("correlation_id", &input.correlation_id),
        ("causation_id", &input.causation_id),
    ] {
        if value.as_ref().is_some_and(|v| v.chars().count() > MAX_OPTIONAL_CHARS) {
            report(Some(field), format!("{field} must be at most {MAX_OPTIONAL_CHARS} characters"));
        }
    }
    if let Some(data) = input.data {
        if !is_object(data) {
            report(Some("data"), "data must be a JSON object".into());
        } else if let Err(message) = data::check(data.get()) {
            report(Some("data"), message);
        }
    }

    ValidEvent {
        id: input.id.unwrap_or_else(|| Cow::Owned(admission.default_id(position))),
        event_type: input.event_type,
        timestamp_ms,
        source: input.source,
        aggregate_id: input.aggregate_id,
        correlation_id: input.correlation_id,
        causation_id: input.causation_id,
        data: input.data,
    }
}

/// Whether `t` is a valid event type: 1 to [`MAX_TYPE_CHARS`] characters of `[A-Za-z0-9_.:-]`.
pub fn is_event_type(t: &str) -> bool {
    !t.is_empty() && t.len() <= MAX_TYPE_CHARS && t.bytes().all(is_type_byte)
}

fn is_type_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')
}
