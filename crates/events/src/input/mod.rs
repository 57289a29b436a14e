//! Request bodies: parsing and validation of events as clients send them.
//!
//! Parsing borrows from the body: strings without escapes are `&str` slices of the request, and
//! `data` stays raw JSON that is copied once, into the stream entry. Validation collects every
//! problem of every event before answering, because a client fixing a 1,000-event batch wants the
//! whole list, not one error per round trip.

//!
//! - this module: the body's shape (one event, an array, `{"events": [...]}`), the size limits, and
//!   the outcome ([`BodyError`] with every [`Problem`]);
//! - [`fields`]: the rules of each field of one event ([`EventIn`]);
//! - [`idempotency`]: the `Idempotency-Key` header and the ids derived from it.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::entry::{self, EncodedEvent, ValidEvent};

mod fields;
mod idempotency;

pub use fields::{EventIn, MAX_ID_CHARS, MAX_OPTIONAL_CHARS, MAX_TYPE_CHARS, is_event_type};
use fields::{check, validate};
pub use idempotency::{MAX_IDEMPOTENCY_KEY_CHARS, check_idempotency_key, derived_id};

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
    pub(super) fn default_id(&self, index: usize) -> String {
        match self.idempotency_key {
            Some(key) => derived_id(self.tenant, key, index),
            None => uuid::Uuid::now_v7().to_string(),
        }
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

pub(super) fn is_object(raw: &RawValue) -> bool {
    raw.get().trim_start().starts_with('{')
}

/// serde_json's message for a body-level error, position included (it helps find a stray comma).
fn json_message(e: &serde_json::Error) -> String {
    format!("the body is not valid JSON: {e}")
}

/// serde_json's message for an error inside one event; the position is relative to the event, not
/// the body, so it would mislead.
pub(super) fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(cut) => s[..cut].to_string(),
        None => s,
    }
}
#[cfg(test)]
mod tests;
