//! Request bodies: parsing and validation of events as clients send them.
//!
//! Parsing borrows from the body: strings without escapes are `&str` slices of the request, and
//! `data` stays raw JSON that is copied once, into the stream entry. Validation collects every
//! problem of every event before answering, because a client fixing a 1,000-event batch wants the
//! whole list, not one error per round trip.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::data;
use crate::entry::{self, EncodedEvent, ValidEvent};

/// Longest accepted `type` and `id`, in characters.
pub const MAX_TYPE_CHARS: usize = 128;
/// Longest accepted client-supplied `id`, in characters.
pub const MAX_ID_CHARS: usize = 128;
/// Longest accepted optional string (`source`, `aggregate_id`, ...), in characters.
pub const MAX_OPTIONAL_CHARS: usize = 256;
/// Longest accepted `Idempotency-Key` header, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 128;

/// Size limits that are configuration, not contract constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded stream entry for one event (`MAX_EVENT_BYTES`).
    pub max_event_bytes: usize,
    /// Most events in one batch (`MAX_BATCH_EVENTS`).
    pub max_batch_events: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_event_bytes: 65_536, max_batch_events: 1_000 }
    }
}

/// What an accepted request is stamped with before it becomes stream entries.
#[derive(Debug, Clone, Copy)]
pub struct Admission<'a> {
    /// Tenant named by the request's API key; never taken from the body.
    pub tenant: &'a str,
    /// Time the request was received, in Unix milliseconds; the default `timestamp`.
    pub received_at_ms: i64,
    pub limits: Limits,
    /// The request's `Idempotency-Key` (already checked with [`check_idempotency_key`]): events
    /// without an `id` get one derived from the tenant, this key and their index
    /// ([`derived_id`]), so a retried request stores each event once.
    pub idempotency_key: Option<&'a str>,
}

impl<'a> Admission<'a> {
    /// An admission without an idempotency key.
    pub fn new(tenant: &'a str, received_at_ms: i64, limits: Limits) -> Self {
        Self { tenant, received_at_ms, limits, idempotency_key: None }
    }

    /// The id of an event sent without one, at `index` in its request (0 for a single event).
    fn default_id(&self, index: usize) -> String {
        match self.idempotency_key {
            Some(key) => derived_id(self.tenant, key, index),
            None => uuid::Uuid::now_v7().to_string(),
        }
    }
}

/// Namespace of the ids derived from an `Idempotency-Key` (a fixed random UUID).
const IDEMPOTENCY_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f0e_4c1b_9a7d_4e52_b1c3_8d2f_5a60_e917);

/// The id given to the event at `index` of a request sent by `tenant` with `Idempotency-Key: key`
/// and no `id` of its own: a UUIDv5 of the three, so the same request sent again gets the same ids.
pub fn derived_id(tenant: &str, key: &str, index: usize) -> String {
    let name = format!("{tenant}\n{key}\n{index}");
    uuid::Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, name.as_bytes()).to_string()
}

/// Checks an `Idempotency-Key` header value: 1 to 128 visible ASCII characters.
pub fn check_idempotency_key(value: &[u8]) -> Result<&str, Problem> {
    let ok = !value.is_empty()
        && value.len() <= MAX_IDEMPOTENCY_KEY_CHARS
        && value.iter().all(|b| (0x20..0x7f).contains(b));
    match std::str::from_utf8(value) {
        Ok(key) if ok => Ok(key),
        _ => Err(Problem {
            index: None,
            field: Some("Idempotency-Key"),
            message: format!(
                "the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} visible ASCII characters"
            ),
        }),
    }
}

/// One thing wrong with one event (or with the request as a whole when `index` is `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// Position of the event in the batch; absent for single-event requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub index: Option<usize>,
    /// The offending field (or request header, or query parameter), when one is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub field: Option<&'static str>,
    /// What is wrong, for a person.
    pub message: String,
}

/// Why a body was refused. Nothing from a refused body is enqueued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Not JSON, or not the expected top-level shape.
    #[error("{0}")]
    InvalidJson(String),
    /// Valid JSON, but at least one event breaks the rules.
    #[error("{} invalid event(s)", .0.len())]
    InvalidEvents(Vec<Problem>),
    /// Too many events, or an event larger than `MAX_EVENT_BYTES`. Any other problems found in
    /// the same body are listed too.
    #[error("{message}")]
    TooLarge { message: String, problems: Vec<Problem> },
}

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

/// `{"events": [...]}`, the wrapped batch form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wrapped<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

/// Parses, validates and encodes the body of `POST /events`: one event object.
pub fn admit_one(body: &[u8], admission: &Admission<'_>) -> Result<EncodedEvent, BodyError> {
    // Fast path: a well-formed event object is parsed once, straight from the body. Anything else
    // (not UTF-8, not an object, a syntax or field error) takes the general path below, which
    // parses again to tell a body that is not JSON from an event that breaks the rules.
    if let Ok(text) = std::str::from_utf8(body)
        && text.trim_start().starts_with('{')
        && let Ok(input) = serde_json::from_str::<EventIn<'_>>(text)
    {
        let mut admitted = Admitted::with_capacity(1);
        let event = check(input, admission, 0, None, &mut admitted.problems);
        admitted.add(Some(event), None, 0, admission);
        return admitted.finish().map(|mut encoded| encoded.remove(0));
    }
    let raw: &RawValue =
        serde_json::from_slice(body).map_err(|e| BodyError::InvalidJson(json_message(&e)))?;
    if !is_object(raw) {
        return Err(BodyError::InvalidJson("expected one event as a JSON object".into()));
    }
    let mut encoded = admit_all(&[raw], admission, false)?;
    Ok(encoded.remove(0))
}

/// Parses, validates and encodes the body of `POST /events/batch`: a JSON array of events or
/// `{"events": [...]}`. All or nothing: any problem refuses the whole batch.
pub fn admit_batch(body: &[u8], admission: &Admission<'_>) -> Result<Vec<EncodedEvent>, BodyError> {
    let raws = split_batch(body)?;
    if raws.is_empty() {
        return Err(BodyError::InvalidEvents(vec![Problem {
            index: None,
            field: None,
            message: "the batch holds no events".into(),
        }]));
    }
    if raws.len() > admission.limits.max_batch_events {
        return Err(BodyError::TooLarge {
            message: format!(
                "the batch holds {} events; at most {} are allowed (MAX_BATCH_EVENTS)",
                raws.len(),
                admission.limits.max_batch_events
            ),
            problems: Vec::new(),
        });
    }
    admit_all(&raws, admission, true)
}

/// How many events a body holds as far as it parses, for counting refused events: 1 for a single
/// event, the array length for a batch, 0 when the body is not JSON of the expected shape.
pub fn count_events(body: &[u8], batch: bool) -> usize {
    if batch {
        split_batch(body).map_or(0, |events| events.len())
    } else {
        usize::from(serde_json::from_slice::<&RawValue>(body).is_ok_and(is_object))
    }
}

fn split_batch(body: &[u8]) -> Result<Vec<&RawValue>, BodyError> {
    let shape = "expected a JSON array of events or an object {\"events\": [...]}";
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => serde_json::from_slice(body).map_err(|e| BodyError::InvalidJson(json_message(&e))),
        Some(b'{') => serde_json::from_slice::<Wrapped<'_>>(body).map(|w| w.events).map_err(|e| {
            if e.is_data() {
                BodyError::InvalidJson(format!("{shape}: {e}"))
            } else {
                BodyError::InvalidJson(json_message(&e))
            }
        }),
        Some(_) => {
            // Either malformed or another JSON type; let the parser say which.
            match serde_json::from_slice::<&RawValue>(body) {
                Err(e) => Err(BodyError::InvalidJson(json_message(&e))),
                Ok(_) => Err(BodyError::InvalidJson(shape.into())),
            }
        }
        None => Err(BodyError::InvalidJson("the body is empty".into())),
    }
}

fn admit_all(
    raws: &[&RawValue],
    admission: &Admission<'_>,
    indexed: bool,
) -> Result<Vec<EncodedEvent>, BodyError> {
    let mut admitted = Admitted::with_capacity(raws.len());
    for (i, raw) in raws.iter().enumerate() {
        let index = indexed.then_some(i);
        let before = admitted.problems.len();
        let event = validate(raw, admission, i, index, &mut admitted.problems);
        admitted.add(event, index, before, admission);
    }
    admitted.finish()
}

/// The outcome of a body so far: the encoded events, or every problem found.
struct Admitted {
    encoded: Vec<EncodedEvent>,
    problems: Vec<Problem>,
    too_large: bool,
}

impl Admitted {
    fn with_capacity(events: usize) -> Self {
        Self { encoded: Vec::with_capacity(events), problems: Vec::new(), too_large: false }
    }

    /// Encodes `event` (validated with `problems_before` problems already on the list) and checks
    /// its size; once anything is wrong, only problems are collected.
    fn add(
        &mut self,
        event: Option<ValidEvent<'_>>,
        index: Option<usize>,
        problems_before: usize,
        admission: &Admission<'_>,
    ) {
        let Some(event) = event.filter(|_| self.problems.len() == problems_before) else { return };
        let entry = entry::encode(&event, admission.tenant, admission.received_at_ms);
        if entry.payload.len() > admission.limits.max_event_bytes {
            self.too_large = true;
            self.problems.push(Problem {
                index,
                field: None,
                message: format!(
                    "the event is {} bytes encoded; at most {} are allowed (MAX_EVENT_BYTES)",
                    entry.payload.len(),
                    admission.limits.max_event_bytes
                ),
            });
        } else if self.problems.is_empty() {
            self.encoded.push(entry);
        }
    }

    fn finish(self) -> Result<Vec<EncodedEvent>, BodyError> {
        match (self.problems.is_empty(), self.too_large) {
            (true, _) => Ok(self.encoded),
            (false, true) => Err(BodyError::TooLarge {
                message: "an event is larger than MAX_EVENT_BYTES".into(),
                problems: self.problems,
            }),
            (false, false) => Err(BodyError::InvalidEvents(self.problems)),
        }
    }
}

/// Checks one event, pushing each problem found; returns the event when it parsed at all.
fn validate<'a>(
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
fn check<'a>(
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

fn is_object(raw: &RawValue) -> bool {
    raw.get().trim_start().starts_with('{')
}

/// serde_json's message for a body-level error, position included (it helps find a stray comma).
fn json_message(e: &serde_json::Error) -> String {
    format!("the body is not valid JSON: {e}")
}

/// serde_json's message for an error inside one event; the position is relative to the event, not
/// the body, so it would mislead.
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(cut) => s[..cut].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn admission() -> Admission<'static> {
        Admission::new("acme", NOW, Limits::default())
    }

    fn problems(err: BodyError) -> Vec<Problem> {
        match err {
            BodyError::InvalidEvents(p) | BodyError::TooLarge { problems: p, .. } => p,
            other => panic!("expected event problems, got {other:?}"),
        }
    }

    #[test]
    fn minimal_event_gets_uuid_v7_and_receive_time() {
        let e = admit_one(br#"{"type":"page_view"}"#, &admission()).unwrap();
        let id = uuid::Uuid::parse_str(&e.id).unwrap();
        assert_eq!(id.get_version_num(), 7);
        let stored = crate::entry::decode(&e.payload).unwrap();
        assert_eq!(stored.timestamp_ms, NOW);
        assert_eq!(stored.received_at_ms, NOW);
        assert_eq!(stored.tenant, "acme");
    }

    #[test]
    fn client_id_and_timestamp_are_kept() {
        let body = br#"{"type":"a.b:c-d_e","id":"k-1","timestamp":"2024-05-01T12:00:00.123+02:00"}"#;
        let e = admit_one(body, &admission()).unwrap();
        assert_eq!(e.id, "k-1");
        let stored = crate::entry::decode(&e.payload).unwrap();
        assert_eq!(stored.timestamp_ms, 1_714_557_600_123);
    }

    #[test]
    fn type_rules() {
        for bad in ["", "has space", "émoji", &"x".repeat(129)] {
            let body = serde_json::json!({ "type": bad }).to_string();
            let p = problems(admit_one(body.as_bytes(), &admission()).unwrap_err());
            assert_eq!(p[0].field, Some("type"), "{bad:?}");
        }
        let ok = serde_json::json!({ "type": "x".repeat(128) }).to_string();
        assert!(admit_one(ok.as_bytes(), &admission()).is_ok());
    }

    #[test]
    fn every_problem_of_an_event_is_reported() {
        let body = serde_json::json!({
            "type": "ok", "id": "", "timestamp": "yesterday", "source": "s".repeat(257), "data": [1]
        })
        .to_string();
        let p = problems(admit_one(body.as_bytes(), &admission()).unwrap_err());
        let fields: Vec<_> = p.iter().filter_map(|p| p.field).collect();
        assert_eq!(fields, ["id", "timestamp", "source", "data"]);
    }

    #[test]
    fn missing_type_and_unknown_fields_are_invalid_events() {
        let p = problems(admit_one(br#"{"data":{}}"#, &admission()).unwrap_err());
        assert!(p[0].message.contains("missing field `type`"), "{p:?}");
        let p = problems(admit_one(br#"{"type":"a","tenant":"other"}"#, &admission()).unwrap_err());
        assert!(p[0].message.contains("unknown field `tenant`"), "{p:?}");
    }

    #[test]
    fn malformed_json_and_wrong_shapes() {
        assert!(matches!(admit_one(b"{\"type\":", &admission()), Err(BodyError::InvalidJson(_))));
        assert!(matches!(admit_one(b"[]", &admission()), Err(BodyError::InvalidJson(_))));
        assert!(matches!(admit_one(br#"{"type":"a"} {}"#, &admission()), Err(BodyError::InvalidJson(_))));
        assert!(matches!(admit_one(b"{\"type\":\"a\xff\"}", &admission()), Err(BodyError::InvalidJson(_))));
        assert!(matches!(admit_batch(b"42", &admission()), Err(BodyError::InvalidJson(_))));
        assert!(matches!(admit_batch(b"", &admission()), Err(BodyError::InvalidJson(_))));
        assert!(matches!(admit_batch(br#"{"evnts":[]}"#, &admission()), Err(BodyError::InvalidJson(_))));
        assert!(matches!(admit_batch(b"[", &admission()), Err(BodyError::InvalidJson(_))));
    }

    #[test]
    fn batch_forms_and_per_index_problems() {
        let a = admit_batch(br#"[{"type":"a"},{"type":"b"}]"#, &admission()).unwrap();
        let b = admit_batch(br#" {"events":[{"type":"a"},{"type":"b"}]}"#, &admission()).unwrap();
        assert_eq!((a.len(), b.len()), (2, 2));

        let p = problems(
            admit_batch(br#"[{"type":"a"},{"type":"b c"},7,{"type":"d"}]"#, &admission()).unwrap_err(),
        );
        let indexes: Vec<_> = p.iter().map(|p| p.index).collect();
        assert_eq!(indexes, [Some(1), Some(2)]);
        assert!(matches!(admit_batch(b"[]", &admission()), Err(BodyError::InvalidEvents(_))));
    }

    #[test]
    fn size_limits() {
        let limits = Limits { max_event_bytes: 200, max_batch_events: 2 };
        let adm = Admission { limits, ..admission() };
        assert!(matches!(
            admit_batch(br#"[{"type":"a"},{"type":"a"},{"type":"a"}]"#, &adm),
            Err(BodyError::TooLarge { .. })
        ));
        let big =
            serde_json::json!([{"type": "a"}, {"type": "b", "data": {"pad": "p".repeat(300)}}]).to_string();
        let p = problems(admit_batch(big.as_bytes(), &adm).unwrap_err());
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].index, Some(1));
        let one = serde_json::json!({"type": "b", "data": {"pad": "p".repeat(300)}}).to_string();
        let p = problems(admit_one(one.as_bytes(), &adm).unwrap_err());
        assert_eq!((p.len(), p[0].index), (1, None));
        assert!(p[0].message.contains("MAX_EVENT_BYTES"), "{p:?}");
    }

    #[test]
    fn refused_bodies_are_counted_by_their_events() {
        assert_eq!(count_events(br#"[{"type":"a"},{"type":"b c"},7]"#, true), 3);
        assert_eq!(count_events(br#"{"events":[{"type":"a"}]}"#, true), 1);
        assert_eq!(count_events(b"[", true), 0);
        assert_eq!(count_events(br#"{"type":"bad type"}"#, false), 1);
        assert_eq!(count_events(b"nope", false), 0);
    }

    #[test]
    fn escaped_strings_and_null_optionals() {
        let body = br#"{"type":"a","source":"line\nbreak","data":null,"aggregate_id":null}"#;
        let e = admit_one(body, &admission()).unwrap();
        let stored = crate::entry::decode(&e.payload).unwrap();
        assert_eq!(stored.source.as_deref(), Some("line\nbreak"));
        assert_eq!(stored.aggregate_id, None);
        assert!(stored.data.is_none());
    }

    #[test]
    fn data_mongodb_cannot_store_exactly_is_an_invalid_event() {
        for (body, expected) in [
            (r#"{"type":"x","data":{"a\u0000b":1}}"#, "contains a NUL character"),
            (r#"{"type":"x","data":{"n":1e400}}"#, "number out of range"),
            (r#"{"type":"x","data":{"n":18446744073709551615}}"#, "does not fit a signed 64-bit"),
        ] {
            let p = problems(admit_one(body.as_bytes(), &admission()).unwrap_err());
            assert_eq!((p.len(), p[0].field), (1, Some("data")), "{body}: {p:?}");
            assert!(p[0].message.contains(expected), "{body}: {p:?}");
        }
        let deep = format!(
            r#"[{{"type":"ok"}},{{"type":"x","data":{}1{}}}]"#,
            "{\"a\":".repeat(150),
            "}".repeat(150)
        );
        let p = problems(admit_batch(deep.as_bytes(), &admission()).unwrap_err());
        assert_eq!((p.len(), p[0].index, p[0].field), (1, Some(1), Some("data")), "{p:?}");
        assert!(p[0].message.contains("nested more than 100 levels"), "{p:?}");
    }

    #[test]
    fn an_idempotency_key_derives_the_same_ids_for_the_same_request() {
        let body = br#"[{"type":"a"},{"type":"b","id":"own"},{"type":"c"}]"#;
        let keyed = |tenant, key| Admission {
            idempotency_key: Some(key),
            ..Admission::new(tenant, NOW, Limits::default())
        };
        let ids = |adm: &Admission<'_>| {
            admit_batch(body, adm).unwrap().into_iter().map(|e| e.id).collect::<Vec<_>>()
        };
        let first = ids(&keyed("acme", "req-1"));
        assert_eq!(first, ids(&keyed("acme", "req-1")), "a retry gets the same ids");
        assert_eq!(first[1], "own", "an event's own id wins");
        assert_ne!(first[0], first[2], "each index its own id");
        assert_ne!(first, ids(&keyed("acme", "req-2")));
        assert_ne!(first[0], ids(&keyed("other", "req-1"))[0], "tenants never share derived ids");
        let single = admit_one(br#"{"type":"a"}"#, &keyed("acme", "req-1")).unwrap();
        assert_eq!(single.id, first[0], "a single event is index 0");
        assert_ne!(ids(&admission()), ids(&admission()), "without a key, fresh ids each time");
    }

    #[test]
    fn idempotency_keys_are_checked() {
        assert_eq!(check_idempotency_key(b"abc-123 x").unwrap(), "abc-123 x");
        for bad in [&b""[..], &[b'k'; 129][..], b"caf\xc3\xa9", b"tab\there"] {
            assert_eq!(check_idempotency_key(bad).unwrap_err().field, Some("Idempotency-Key"), "{bad:?}");
        }
    }
}
